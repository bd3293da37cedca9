"""Stress-test perturbations (specs/protocol.md §4): properties of each, and what strategies make of them."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionbench.context import CODE_SENTINEL, SeqBatch
from fusionbench.data.splits import Samples
from fusionbench.options import OptionError
from fusionbench.perturb import PerturbContext
from fusionbench.perturb.base import keyed_uniform, mix32, round_count
from fusionbench.perturb.disorder import disorder_moves
from fusionbench.perturb.mismatch import random_derangement, shift_rows, swap_source
from fusionbench.perturb.missing import channel_stream, missing_items
from fusionbench.registry import PERTURBATIONS, STRATEGIES
from strategies.fusion import ModalityInputs
from strategies.msgraph import build_msgraph
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context

CHANNELS = ("image", "text")
SETTINGS = settings(max_examples=60, deadline=None)
# every (name, options) a run can ask for
VARIANTS = [("disorder", {}), ("mismatch", {"mode": "swap"}), ("mismatch", {"mode": "shift"}),
            ("missing", {"mode": "item"}), ("missing", {"mode": "occurrence"})]


def make(name, p, seed=0, **options):
    return PERTURBATIONS.create(name, PerturbContext(p, seed, CHANNELS), **options)


def keys(batch, pos=20):
    """Sample keys for a fixture batch: users 0..B-1, all at target position ``pos``."""
    return Samples(torch.arange(batch.size), torch.full((batch.size,), pos))


@st.composite
def histories(draw, n_items=25, max_rows=6, max_width=10):
    """A left-padded prefix-sample batch with its (user, target position) keys."""
    rows = draw(st.integers(1, max_rows))
    width = draw(st.integers(1, max_width))
    lengths = draw(st.lists(st.integers(1, width), min_size=rows, max_size=rows))
    items = torch.tensor(draw(st.lists(st.lists(st.integers(1, n_items), min_size=width, max_size=width),
                                       min_size=rows, max_size=rows)))
    items[torch.arange(width)[None, :] < (width - torch.tensor(lengths))[:, None]] = 0
    users = torch.tensor(draw(st.lists(st.integers(0, 10 ** 6), min_size=rows, max_size=rows, unique=True)))
    pos = torch.tensor([draw(st.integers(length, 500)) for length in lengths])
    target = torch.tensor(draw(st.lists(st.integers(1, n_items), min_size=rows, max_size=rows)))
    return SeqBatch(items=items, target=target), Samples(users, pos)


severities = st.floats(0.0, 1.0)
seeds = st.integers(0, 2 ** 31 - 1)


# ---- keyed randomness -------------------------------------------------------------------------------

def test_mix32_is_lowbias32():
    # reference values of Wellons' lowbias32 (uint32 arithmetic)
    got = mix32(torch.tensor([0, 1, 2, 12345, 2 ** 32 - 1])).tolist()
    assert got == [0, 1753845952, 3507691905, 2435775735, 1734902346]


def test_keyed_uniforms_are_uniform_and_uncorrelated():
    u = keyed_uniform(0, 7, torch.arange(20000)[:, None], 9, torch.arange(8)[None, :])
    assert u.shape == (20000, 8) and u.dtype == torch.float64
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    counts = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.005
    corr = torch.corrcoef(u.T) - torch.eye(8, dtype=torch.float64)
    assert corr.abs().max() < 0.04  # neighbouring keys are independent
    assert not torch.equal(u, keyed_uniform(1, 7, torch.arange(20000)[:, None], 9, torch.arange(8)[None, :]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_keyed_uniforms_are_the_same_on_cuda():
    key = torch.arange(100000)
    torch.testing.assert_close(keyed_uniform(3, 5, key).cuda(), keyed_uniform(3, 5, key.cuda()), rtol=0, atol=0)


# ---- disorder -----------------------------------------------------------------------------------------

@SETTINGS
@given(histories(), severities, seeds)
def test_disorder_permutes_chosen_positions_only_and_targets_never_move(case, p, seed):
    batch, samples = case
    out = make("disorder", p, seed).batch(batch, samples)
    assert torch.equal(out.target, batch.target)
    assert torch.equal(out.mask, batch.mask)                              # padding stays where it is
    assert torch.equal(out.items.sort(1).values, batch.items.sort(1).values)   # same items per row
    src, dst = disorder_moves(batch.items, samples.user, samples.pos, p, seed)
    for b, m in enumerate(batch.mask.sum(1).tolist()):
        k = round(p * m)
        assert set(src[b, :k].tolist()) == set(dst[b, :k].tolist())       # a permutation of k positions
        assert all(batch.items[b, c] > 0 for c in src[b, :k].tolist())    # of real positions
        assert torch.equal(src[b, k:], dst[b, k:])                        # the others stay
    changed = (out.items != batch.items).sum(1)
    assert (changed <= round_count(p, batch.mask.sum(1))).all()


@SETTINGS
@given(histories(), severities, seeds, st.integers(0, 4))
def test_disorder_of_a_sample_ignores_the_rest_of_its_batch(case, p, seed, extra):
    """Keys are (user, target position, offset from the target): a row subset, padded wider, is
    perturbed the same way (batches are trimmed to their longest row)."""
    batch, samples = case
    full = make("disorder", p, seed).batch(batch, samples)
    keep = torch.arange(0, batch.size, 2)
    sub = SeqBatch(torch.cat([torch.zeros(len(keep), extra, dtype=torch.long), batch.items[keep]], 1),
                   batch.target[keep])
    part = make("disorder", p, seed).batch(sub, samples.take(keep))
    assert torch.equal(part.items[:, extra:], full.items[keep])


@SETTINGS
@given(histories(), severities, seeds)
def test_disorder_moves_each_item_with_its_modality_data(case, p, seed):
    batch, samples = case
    tagged = SeqBatch(batch.items, batch.target, present={"text": batch.items % 2 == 0},
                      shown={"image": batch.items * 100})
    out = make("disorder", p, seed).batch(tagged, samples)
    assert torch.equal(out.present["text"], out.items % 2 == 0)
    assert torch.equal(out.shown["image"], out.items * 100)


def test_full_disorder_draws_every_order_equally_often():
    items = torch.tensor([[1, 2, 3]]).expand(6000, 3)
    src, dst = disorder_moves(items, torch.arange(6000), torch.full((6000,), 3), 1.0, seed=5)
    out = items.scatter(1, dst, items.gather(1, src))
    _, counts = torch.unique(out, dim=0, return_counts=True)
    assert counts.numel() == 6 and (counts / 6000 - 1 / 6).abs().max() < 0.02


# ---- mismatch ----------------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 300), severities, seeds)
def test_swap_is_a_derangement_of_exactly_round_p_n_items(n, p, seed):
    source = swap_source(n, p, seed)
    assert source[0] == 0 and torch.equal(source.sort().values, torch.arange(n + 1))   # a permutation
    moved = torch.nonzero(source != torch.arange(n + 1)).squeeze(1)
    k = round(p * n)
    expected = (2 if n >= 2 else 0) if k == 1 else k       # one item alone cannot be deranged
    assert moved.numel() == expected
    assert set(source[moved].tolist()) == set(moved.tolist())    # the chosen items swap among themselves


@SETTINGS
@given(severities, seeds, st.sampled_from([(), ("text",), ("image", "text")]))
def test_swap_moves_every_row_of_the_selected_tables_alike(p, seed, chosen):
    ctx = tiny_context()
    out = make("mismatch", p, seed, modalities=chosen).tables(ctx.modalities)
    source = swap_source(N_ITEMS, p, seed)
    for m, table in ctx.modalities.items():
        want = source if (not chosen or m in chosen) else torch.arange(N_ITEMS + 1)
        assert torch.equal(out[m].features, table.features[want])
        assert torch.equal(out[m].present, table.present[want])
        assert torch.equal(out[m].codes, table.codes[want])


def test_random_derangements_have_no_fixed_point_and_are_uniform():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([random_derangement(3, g) for _ in range(3000)])
    assert not (draws == torch.arange(3)).any()
    _, counts = torch.unique(draws, dim=0, return_counts=True)
    assert counts.numel() == 2 and abs(int(counts[0]) - 1500) < 150    # the two 3-cycles
    with pytest.raises(ValueError, match="cannot be deranged"):
        random_derangement(1, g)


@SETTINGS
@given(histories(), severities, seeds)
def test_shift_shows_the_previous_item_in_shifted_histories(case, p, seed):
    batch, samples = case
    out = make("mismatch", p, seed, mode="shift", modalities="text").batch(batch, samples)
    if p == 0.0:
        assert out is batch
        return
    assert torch.equal(out.items, batch.items) and torch.equal(out.target, batch.target)
    assert set(out.shown) == {"text"}
    shifted = shift_rows(samples.user, samples.pos, p, seed)
    previous = torch.cat([torch.zeros(batch.size, 1, dtype=torch.long), batch.items[:, :-1]], 1)
    assert torch.equal(out.shown["text"], torch.where(shifted[:, None], previous, batch.items))


def test_shift_hits_a_fraction_p_of_histories():
    rate = shift_rows(torch.arange(20000), torch.full((20000,), 7), 0.3, seed=1).double().mean()
    assert abs(float(rate) - 0.3) < 0.015


# ---- missing -----------------------------------------------------------------------------------------

@SETTINGS
@given(severities, seeds, st.sampled_from([(), ("image",)]))
def test_missing_items_removes_exactly_round_p_n_items(p, seed, chosen):
    ctx = tiny_context()
    out = make("missing", p, seed, modalities=chosen).tables(ctx.modalities)
    absent = missing_items(N_ITEMS, p, seed)
    assert int(absent.sum()) == round(p * N_ITEMS) and not absent[0]
    for m, table in ctx.modalities.items():
        if chosen and m not in chosen:
            assert out[m] is table
            continue
        assert torch.equal(out[m].present, table.present & ~absent)
        assert (out[m].features[absent] == 0).all() and (out[m].codes[absent] == CODE_SENTINEL).all()
        assert torch.equal(out[m].features[~absent], table.features[~absent])


@SETTINGS
@given(histories(), severities, seeds)
def test_missing_occurrences_hide_positions_independently_per_channel(case, p, seed):
    batch, samples = case
    out = make("missing", p, seed, mode="occurrence").batch(batch, samples)
    if p == 0.0:
        assert out is batch
        return
    assert torch.equal(out.items, batch.items) and set(out.present) == set(CHANNELS)
    offsets = batch.items.shape[1] - torch.arange(batch.items.shape[1])
    for m, mask in out.present.items():
        u = keyed_uniform(seed, channel_stream(m), samples.user[:, None], samples.pos[:, None], offsets[None, :])
        assert torch.equal(mask, u >= p)
    if p == 1.0:
        assert not any(mask.any() for mask in out.present.values())


def test_missing_occurrences_hide_a_fraction_p():
    batch = SeqBatch(torch.randint(1, 9, (4000, 10)), torch.ones(4000, dtype=torch.long))
    out = make("missing", 0.7, 3, mode="occurrence").batch(batch, Samples(torch.arange(4000), torch.full((4000,), 12)))
    hidden = {m: ~mask for m, mask in out.present.items()}
    assert all(abs(float(h.double().mean()) - 0.7) < 0.01 for h in hidden.values())
    both = (hidden["image"] & hidden["text"]).double().mean()
    assert abs(float(both) - 0.49) < 0.01    # channels are drawn independently


# ---- every perturbation ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, options", VARIANTS)
def test_zero_severity_returns_the_input_itself(name, options):
    ctx, batch = tiny_context(), tiny_batch()
    pert = make(name, 0.0, 4, **options)
    tables = pert.tables(ctx.modalities)
    assert all(tables[m] is ctx.modalities[m] for m in CHANNELS)
    assert pert.batch(batch, keys(batch)) is batch


@pytest.mark.parametrize("name, options", VARIANTS)
def test_same_seed_same_result_other_seed_other_result(name, options):
    ctx = tiny_context()
    batch = SeqBatch(torch.randint(1, N_ITEMS + 1, (64, 8)), torch.ones(64, dtype=torch.long))

    def outcome(seed):
        pert = make(name, 0.5, seed, **options)
        out = pert.batch(batch, keys(batch))
        tables = pert.tables(ctx.modalities)
        parts = [out.items, *(out.present or {}).values(), *(out.shown or {}).values()]
        return parts + [t.features for t in tables.values()]

    first, again, other = outcome(11), outcome(11), outcome(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def _perturbed_model(name, p, seed=0):
    """``name`` built on tables with every channel removed from round(p·n) items, and a fixture batch
    whose every occurrence loses each channel with probability p."""
    ctx = tiny_context()
    ctx = ctx.with_modalities(make("missing", p, seed).tables(ctx.modalities))
    batch = tiny_batch()
    batch = make("missing", p, seed, mode="occurrence").batch(batch, keys(batch))
    torch.manual_seed(0)
    return STRATEGIES.create(name, ctx), batch


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_scores_finitely_with_everything_missing(name):
    model, batch = _perturbed_model(name, 1.0)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.score(batch)[:, 1:]).all()
    model.train()
    assert torch.isfinite(model.loss(batch))


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_shifted_channels_reach_every_strategy_that_uses_them(name):
    torch.manual_seed(0)
    model = STRATEGIES.create(name, tiny_context()).eval()
    if "shifted_channels" in model.contract_skips:
        pytest.skip(f"{name}: {model.contract_skips['shifted_channels']}")
    batch = tiny_batch()
    shifted = make("mismatch", 1.0, mode="shift").batch(batch, keys(batch))
    with torch.no_grad():
        plain, moved = model.score(batch), model.score(shifted)
    assert torch.isfinite(moved[:, 1:]).all()
    assert torch.equal(plain, moved) != STRATEGIES.get(name).uses_modalities


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_a_trained_state_loads_onto_perturbed_tables(name):
    """What apply_to=test does for catalog-level perturbations: table data are never in the state dict,
    so the same weights on other tables give other scores (for strategies that use tables)."""
    ctx, batch = tiny_context(), tiny_batch()
    torch.manual_seed(0)
    trained = STRATEGIES.create(name, ctx).eval()
    if "tables_change_scores" in trained.contract_skips:
        pytest.skip(f"{name}: {trained.contract_skips['tables_change_scores']}")
    rebuilt = STRATEGIES.create(name, ctx.with_modalities(make("mismatch", 1.0).tables(ctx.modalities))).eval()
    rebuilt.load_state_dict(trained.state_dict())          # strict: the same keys
    with torch.no_grad():
        same = torch.equal(trained.score(batch), rebuilt.score(batch))
    assert same != STRATEGIES.get(name).uses_modalities


# ---- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("severity", [-0.1, 1.5, math.nan, "0.5", True])
def test_severity_outside_0_1_is_a_clear_error(severity):
    with pytest.raises(OptionError, match=r"perturbation 'disorder': severity must be a number in \[0, 1\]"):
        make("disorder", severity)


def test_unknown_mode_or_channel_is_a_clear_error():
    with pytest.raises(OptionError, match="perturbation 'mismatch': option 'mode' must be one of 'swap', 'shift'"):
        make("mismatch", 0.5, mode="rotate")
    with pytest.raises(OptionError, match="option 'modalities': unknown channel 'audio'; channels: image, text"):
        make("missing", 0.5, modalities="text,audio")
    with pytest.raises(OptionError, match="unknown channel 'text'; channels: none"):
        PERTURBATIONS.create("missing", PerturbContext(0.5, 0), modalities="text")


def test_sequence_perturbations_refuse_causal_rows():
    batch = tiny_batch()
    causal = SeqBatch(batch.items, targets=batch.items)
    with pytest.raises(ValueError, match="take prefix-sample batches"):
        make("disorder", 0.5).batch(causal, keys(batch))


# ---- SeqBatch.shown in the shared modality paths ---------------------------------------------------------

def test_modality_inputs_show_the_named_items_channel():
    ctx = tiny_context()
    inputs = ModalityInputs(ctx, 8).eval()
    items = tiny_batch().items
    other = torch.roll(items, 1, dims=1)
    with torch.no_grad():
        mixed = inputs.lookup(items, shown={"text": other})
        own, theirs = inputs.lookup(items), inputs.lookup(other)
    text = inputs.names.index("text")
    assert torch.equal(mixed[:, :, text], theirs[:, :, text])
    assert torch.equal(mixed[:, :, 1 - text], own[:, :, 1 - text])


def test_msgraph_shows_the_named_items_codes():
    ctx = tiny_context()
    codes = {m: t.codes for m, t in ctx.modalities.items()}
    n_codes = {m: t.n_codes for m, t in ctx.modalities.items()}
    items = tiny_batch().items
    plain = build_msgraph(items, codes, N_ITEMS, n_codes)
    same = build_msgraph(items, codes, N_ITEMS, n_codes, shown={"text": items})
    none = build_msgraph(items, codes, N_ITEMS, n_codes, shown={"text": torch.zeros_like(items)})
    hidden = build_msgraph(items, codes, N_ITEMS, n_codes, present={"text": torch.zeros_like(items, dtype=torch.bool)})
    for a, b in ((plain, same), (none, hidden)):
        assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))
    with pytest.raises(ValueError, match=r"shown\['text'\] must be a long"):
        build_msgraph(items, codes, N_ITEMS, n_codes, shown={"text": items.bool()})
