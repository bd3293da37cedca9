"""DIF-SR's auxiliary attribute predictor (AAP): the reference's multi-label BCE over each target item's
whole code set, checked against hand-worked numbers and an independent per-sample computation."""
import math

import pytest
import torch

from fusionbench.context import CODE_SENTINEL, ModalityTable, SeqBatch, StrategyContext
from fusionbench.registry import STRATEGIES
from fusionbench.strategy import CausalStrategy
from strategies.difsr import code_sets

S = CODE_SENTINEL
SMALL = dict(dim=16, heads=2, layers=1, attribute_dim=8)
# item 1: attr {0, 2}, text {1}; item 2: attr {1}, no text; item 3: no attr, text {0, 1}
CODES = {"attr": (3, [[S, S], [0, 2], [1, S], [S, S]]),
         "text": (2, [[S, S], [1, S], [S, S], [0, 1]])}


def hand_context(names=("attr", "text")) -> StrategyContext:
    g = torch.Generator().manual_seed(0)
    tables = {}
    for m in names:
        n_codes, rows = CODES[m]
        codes = torch.tensor(rows)
        present = (codes >= 0).any(1)
        tables[m] = ModalityTable(torch.randn(4, 5, generator=g) * present[:, None], present, codes, n_codes)
    return StrategyContext(n_items=3, max_len=4).with_modalities(tables)


def build(ctx, seed=0, **options):
    torch.manual_seed(seed)
    return STRATEGIES.create("difsr", ctx, **{**SMALL, **options}).eval()


def head(model, name):
    return model.aap[model.aap_names.index(name)]


def set_constant_logits(model, name, bias):
    """Zero weights: the head's logits are ``bias`` whatever the state."""
    with torch.no_grad():
        head(model, name).weight.zero_()
        head(model, name).bias.copy_(torch.tensor(bias))


BATCH = SeqBatch(items=torch.tensor([[0, 2, 3], [1, 3, 1], [0, 0, 2], [3, 2, 1]]), target=torch.tensor([1, 2, 3, 1]))


def test_code_sets_mark_every_valid_code_once():
    codes = torch.tensor([[S, S, S], [2, 0, S], [1, 1, S], [S, S, S], [0, 1, 2]])
    expected = torch.tensor([[0, 0, 0], [1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(code_sets(codes, 3), expected)
    assert code_sets(torch.empty(4, 0, dtype=torch.long), 5).shape == (4, 5)


def test_an_item_with_several_codes_has_all_of_them_as_positives():
    model = build(hand_context())
    labels = dict(zip(model.aap_names, (model.aap_labels0, model.aap_labels1)))
    assert labels["attr"].dtype == torch.bool and labels["attr"].shape == (4, 3)
    assert labels["attr"][1].tolist() == [True, False, True]          # item 1 holds codes 0 and 2
    assert labels["text"][3].tolist() == [True, True]                 # item 3 holds codes 0 and 1
    assert not labels["attr"][3].any() and not labels["text"][2].any() and not labels["attr"][0].any()


def test_aap_loss_matches_the_hand_worked_bce():
    """Logits fixed to attr (0, 2, -1), text (1, -2); BCE(z, y) = ln(1 + e^z) - y z.
    attr, item 1 (y = 1 0 1): (0.693147 + 2.126928 + 1.313262) / 3 = 1.377779
    attr, item 2 (y = 0 1 0): (0.693147 + 0.126928 + 0.313262) / 3 = 0.377779
    attr, item 3: no code, skipped -> (2 * 1.377779 + 0.377779) / 3 = 1.044446 over targets 1, 2, 1
    text, item 1 (y = 0 1):   (1.313262 + 2.126928) / 2 = 1.720095
    text, item 3 (y = 1 1):   (0.313262 + 2.126928) / 2 = 1.220095
    text, item 2: no code, skipped -> (2 * 1.720095 + 1.220095) / 3 = 1.553428 over targets 1, 3, 1
    sum over modalities: 2.597874"""
    model = build(hand_context(), aap_weight=10.0)
    set_constant_logits(model, "attr", [0.0, 2.0, -1.0])
    set_constant_logits(model, "text", [1.0, -2.0])
    with torch.no_grad():
        states = model.encode(BATCH)
        assert model.aap_loss(states, BATCH.target).item() == pytest.approx(2.597874, abs=1e-6)
        item_ce = CausalStrategy.loss(model, BATCH)
        torch.testing.assert_close(model.loss(BATCH), item_ce + 10.0 * 2.597874, rtol=0, atol=1e-5)
    attr_only = build(hand_context(["attr"]))
    set_constant_logits(attr_only, "attr", [0.0, 2.0, -1.0])
    with torch.no_grad():
        assert attr_only.aap_loss(states, BATCH.target).item() == pytest.approx(1.044446, abs=1e-6)


def test_aap_loss_equals_a_per_sample_reference():
    """Random heads and states against the formula written out per sample and per code."""
    model = build(hand_context())
    g = torch.Generator().manual_seed(3)
    states, targets = torch.randn(7, SMALL["dim"], generator=g), torch.tensor([1, 3, 2, 2, 1, 3, 0])
    expected = 0.0
    for name in model.aap_names:
        n_codes, rows = CODES[name]
        logits = head(model, name)(states).detach()
        per_sample = []
        for s, v in enumerate(targets.tolist()):
            held = {c for c in rows[v] if c != S}
            if held:
                per_sample.append(sum(math.log1p(math.exp(z)) - (c in held) * z
                                      for c, z in enumerate(logits[s].tolist())) / n_codes)
        expected += sum(per_sample) / len(per_sample)
    with torch.no_grad():
        assert model.aap_loss(states, targets).item() == pytest.approx(expected, rel=1e-6)


def test_items_without_codes_are_skipped():
    model = build(hand_context(["attr"]))
    states = torch.randn(3, SMALL["dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # item 3 (no attr code) neither adds a term nor counts in the mean
        torch.testing.assert_close(model.aap_loss(states, torch.tensor([1, 2, 3])),
                                   model.aap_loss(states[:2], torch.tensor([1, 2])), rtol=0, atol=0)
        assert model.aap_loss(states, torch.tensor([3, 3, 0])) == 0


def test_gradient_reaches_the_aap_heads():
    model = build(hand_context()).train()
    model.loss(BATCH).backward()
    for name in model.aap_names:
        for p in head(model, name).parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_zero_weight_gives_exactly_the_item_ce():
    model = build(hand_context(), aap_weight=0.0)
    assert not model.aap_names and len(model.aap) == 0
    assert not [b for b, _ in model.named_buffers() if b.startswith("aap_labels")]
    with torch.no_grad():
        assert torch.equal(model.loss(BATCH), CausalStrategy.loss(model, BATCH))
