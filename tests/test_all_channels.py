"""Every strategy uses every modality channel it is given: image, text and attr together or any subset
(``features.modalities``), on the tiny context of the contract tests plus an attribute-id table."""
import itertools

import pytest
import torch

from fusionbench.context import ModalityTable
from fusionbench.registry import STRATEGIES
from strategy_fixtures import N_ITEMS, tiny_batch, tiny_context
from test_attr_encoding import attr_table

CHANNELS = ("image", "text", "attr")
SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(CHANNELS, r)]
FEATURE_STRATEGIES = [n for n in STRATEGIES.names() if STRATEGIES.get(n).uses_modalities]


def context(channels):
    ctx = tiny_context()
    tables = {**ctx.modalities, "attr": attr_table("ids")}
    return ctx.with_modalities({name: tables[name] for name in channels})


def build(name, ctx):
    torch.manual_seed(0)
    return STRATEGIES.create(name, ctx)


def permuted(table: ModalityTable, seed: int = 3) -> ModalityTable:
    """The same table with its item rows (1..n) shuffled: every item gets another item's entry."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(N_ITEMS, generator=g) + 1])
    return ModalityTable(table.features[order], table.present[order], table.codes[order], table.n_codes)


def test_the_tiny_context_has_all_three_channels():
    ctx = context(CHANNELS)
    assert sorted(ctx.modalities) == sorted(CHANNELS)
    assert ctx.modalities["image"].dim == 12 and ctx.modalities["text"].dim == 10 and ctx.modalities["attr"].dim == 0


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_takes_a_training_step_with_image_text_and_attr(name):
    model = build(name, context(CHANNELS))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model.loss(tiny_batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert moved, "one optimizer step changed no parameter"
    model.eval()
    with torch.no_grad():
        scores = model.score(tiny_batch())
    assert scores.shape == (6, N_ITEMS + 1) and torch.isfinite(scores[:, 1:]).all()


def outputs(model, batch):
    """Eval-mode scores and one train-mode loss (seeded: dropout draws the same masks every call)."""
    with torch.no_grad():
        scores = model.eval().score(batch)[:, 1:]
        torch.manual_seed(1)
        loss = model.train().loss(batch)
    return scores, loss


@pytest.mark.parametrize("channels", SUBSETS, ids="+".join)
@pytest.mark.parametrize("name", FEATURE_STRATEGIES)
def test_every_channel_given_reaches_the_scores_or_the_loss(name, channels):
    """Giving a channel's rows to other items changes the scores or the training loss, for every channel of
    every subset (the scores of bm3 read the ID graph only by design; its channels enter through the loss)."""
    ctx = context(channels)
    batch = tiny_batch()
    scores, loss = outputs(build(name, ctx), batch)
    unused = []
    for channel in channels:
        other = build(name, ctx.with_modalities({**ctx.modalities, channel: permuted(ctx.modalities[channel])}))
        other_scores, other_loss = outputs(other, batch)
        if torch.allclose(other_scores, scores) and torch.allclose(other_loss, loss):
            unused.append(channel)
    assert not unused, f"{name} ignores {unused} when given {channels}"


def test_modalities_none_builds_no_channel_and_cannot_be_mixed():
    """``features.modalities=none`` is the ID-only row of a modality ablation: a run of a feature strategy
    with it gets a context without any channel (and a hash of its own); ``none`` next to a channel is an
    error naming the option."""
    from fusionbench.errors import UserInputError
    from fusionbench.runner import RunRequest, build_context, load_data, resolve
    from fusionbench.store import config_hash
    from test_attr_encoding import TINY_SYNTHETIC

    request = RunRequest("late", dataset="synthetic", dataset_options=dict(TINY_SYNTHETIC),
                         feature_options={"modalities": "none"})
    config = resolve(request)
    data = load_data(config, None)
    assert build_context(config, data).modalities == {}
    everything = resolve(RunRequest("late", dataset="synthetic", dataset_options=dict(TINY_SYNTHETIC),
                                    feature_options={"n_clusters": "3", "k": "1"}))
    assert build_context(everything, data).modalities, "the default builds the data's channels"
    assert config_hash(config) != config_hash(everything)
    with pytest.raises(UserInputError, match="modalities.*'none'.*cannot be combined"):
        resolve(RunRequest("late", dataset="synthetic", feature_options={"modalities": "none,text"}))
