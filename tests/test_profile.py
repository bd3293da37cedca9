"""``fusionbench bench profile`` and the training step it shares with ``fusionbench run``."""
import math

import pytest
import torch
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.data.splits import make_split
from fusionbench.devtools.profile import STEP_PARTS, labelled_parts, part_target, profile_training, sample_batches
from fusionbench.dropout import mask_draw
from fusionbench.errors import UserInputError
from fusionbench.length_groups import LENGTH_GROUPS
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, build_context, load_data, resolve
from fusionbench.train import epoch_batches, train_step
from strategies import backbones
from strategy_fixtures import tiny_batch, tiny_context


@pytest.fixture()
def folder(cycle_folder):
    """300 users walking i -> i + 1 (mod 30), so the first epoch has several batches of 16 causal rows."""
    return cycle_folder(300)


def request_for(folder) -> RunRequest:
    return RunRequest(strategy="sasrec", dataset="folder", dataset_options={"path": str(folder)},
                      strategy_options={"dim": 16, "heads": 1}, train_options={"batch_size": 16})


def test_profile_samples_every_nth_batch_and_labels_the_step_and_named_methods(folder):
    parts = ("hidden", "encode", "strategies.backbones:forward_positions")
    profile = profile_training(request_for(folder), every=4, repeats=2, parts=parts, top=5)
    assert profile.n_batches == math.ceil(300 / 16)        # one causal row per user
    assert profile.n_sampled == math.ceil(profile.n_batches / 4)
    assert len(profile.seconds) == 2 and all(s > 0 for s in profile.seconds)
    found = {p.label: p for p in profile.parts}
    assert list(found) == [*STEP_PARTS, *parts]
    for label in STEP_PARTS:
        assert found[label].calls == profile.n_sampled, label
    for label in ("hidden", "strategies.backbones:forward_positions"):      # once per length group of a step
        assert found[label].calls == LENGTH_GROUPS * profile.n_sampled, label
    # causal training reads hidden(), never encode(): listed, with no calls
    assert found["encode"].calls == 0 and found["encode"].ms_per_step == 0
    assert 0 < found["hidden"].ms_per_step <= found["step.forward"].ms_per_step
    fastest, median = profile.epoch_estimate
    assert fastest == pytest.approx(min(profile.seconds) * profile.n_batches / profile.n_sampled)
    assert fastest <= median
    assert "Self CPU" in profile.operators


def test_the_sample_is_spread_over_the_epochs_batch_sizes(folder):
    config = resolve(request_for(folder))
    data = load_data(config, None)
    split = make_split(data, config["protocol"])
    model = STRATEGIES.create("sasrec", build_context(config, data, split), **config["strategy_options"])
    sample, n_batches = sample_batches(model, config, data, split, every=4)
    epoch = list(epoch_batches(model, data, split, config["max_len"], 16, torch.Generator().manual_seed(0), None))
    sizes = sorted(int(batch.mask.sum()) for batch in epoch)      # real items
    assert n_batches == len(epoch) == 19
    # the middle batch of every 4 consecutive ones by size: positions 1, 5, 9, 13, 17
    assert sorted(int(batch.mask.sum()) for batch in sample) == [sizes[i] for i in (1, 5, 9, 13, 17)]
    # run in the epoch's order: each sampled batch is an epoch batch, at increasing positions
    positions = [next(i for i, b in enumerate(epoch) if torch.equal(b.items, batch.items)) for batch in sample]
    assert positions == sorted(positions)
    assert len(set(sizes)) > 3                      # the epoch's batches do differ in size


def test_labelled_parts_wrap_only_inside_the_block_and_change_no_result():
    ctx = tiny_context()
    model = STRATEGIES.create("sasrec", ctx, dim=16, heads=1).eval()
    batch = tiny_batch()
    plain = model.score(batch)
    function = backbones.forward_positions
    with labelled_parts(model, ("hidden", "encoder.forward", "strategies.backbones:forward_positions")):
        assert "hidden" in vars(model) and "forward" in vars(model.encoder)
        assert backbones.forward_positions is not function
        assert torch.equal(model.score(batch), plain)
    assert "hidden" not in vars(model) and "forward" not in vars(model.encoder)
    assert backbones.forward_positions is function


@pytest.mark.parametrize("path, expected", [
    ("nope", r"--part 'nope': SASRec.nope is not a method"),
    ("encoder", r"--part 'encoder': SASRec.encoder is not a method"),
    ("encoder.nope.forward", r"--part 'encoder.nope.forward': CausalTransformer has no attribute 'nope'"),
    ("aggregators.nope:f", r"--part 'aggregators.nope:f': no module 'aggregators.nope'"),
    ("aggregators.han:nope", r"--part 'aggregators.han:nope': module aggregators.han has no function 'nope'"),
])
def test_a_part_that_is_not_a_method_is_a_clear_error(path, expected):
    model = STRATEGIES.create("sasrec", tiny_context(), dim=16, heads=1)
    with pytest.raises(UserInputError, match=expected):
        part_target(model, path)


def test_train_step_updates_on_a_finite_loss_and_leaves_the_weights_on_a_non_finite_one():
    ctx = tiny_context()
    model = STRATEGIES.create("sasrec", ctx, dim=16, heads=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    batch = tiny_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train_step(model, optimizer, batch, bf16=False)
    assert math.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.loss = lambda b: torch.tensor(float("nan"), requires_grad=True)
    assert math.isnan(train_step(model, optimizer, batch, bf16=False))
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())


def test_cli_profile_prints_the_estimate_and_the_parts(folder):
    args = ["bench", "profile", "--strategy", "sasrec", "--dataset", "folder", "--set", f"data.path={folder}",
            "--set", "dim=16", "--set", "heads=1", "--set", "train.batch_size=16", "--every", "5", "--repeats", "1",
            "--part", "hidden", "--top", "3"]
    out = CliRunner().invoke(main, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "sampled 4 of 19 first-epoch batches" in out.output
    assert "extrapolated" in out.output
    assert f"dropout masks: {mask_draw()}\n" in out.output          # fp32: no bf16 products to name
    for label in (*STEP_PARTS, "hidden"):
        assert f"| {label}" in out.output


@pytest.mark.parametrize("option, value, expected", [
    ("--every", "0", "--every must be >= 1, got 0"),
    ("--repeats", "0", "--repeats must be >= 1, got 0"),
    ("--part", "nope", "--part 'nope'"),
])
def test_cli_profile_bad_options_exit_2_naming_the_option(folder, option, value, expected):
    args = ["bench", "profile", "--strategy", "sasrec", "--dataset", "folder", "--set", f"data.path={folder}",
            option, value]
    out = CliRunner().invoke(main, args, catch_exceptions=False)
    assert out.exit_code == 2
    assert f"error: {expected}" in out.output
