"""`fusionbench sweep --deadline`: the deadline's syntax, the cost estimate read from the store, which cells
are started, and the command end to end (a cell that would overrun is skipped, a later one still runs)."""
import re
import textwrap
import time
from datetime import datetime, timezone

import pytest
import torch
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.deadline import (
    SHARE_EVERY,
    CellCost,
    Deadline,
    epochs_left,
    parse_deadline,
    training_seconds_per_epoch,
    uncrowded_seconds,
)
from fusionbench.errors import UserInputError
from fusionbench.plan import identify
from fusionbench.runner import load_data
from fusionbench.store import ResultStore
from fusionbench.store.results import RunSummary
from fusionbench.sweep import read_sweep
from fusionbench.train import REFERENCE_WATCHED, TrainOptions


def wall(cost: CellCost, config: dict):
    """The seconds ``cost`` gives a cell of ``config`` that has not started (no checkpoint, no kept weights):
    the median expected wall time of the runs comparable with it."""
    return cost.estimate(config, "absent", "absent").seconds


TINY = """
[defaults]
dataset = "synthetic"

[defaults.set]
"data.n_users" = 60
"data.n_codes" = 3
"data.per_cell" = 2
"data.max_len" = 8
dim = 16
"train.epochs" = 1
"""

TWO_STRATEGIES = """
[[run]]
strategy = "sasrec"
seeds = [0, 1]

[[run]]
strategy = "gru4rec"
"""
NOW = 1_800_000_000.0
METRICS = {"HR@20": 0.1, "NDCG@20": 0.05, "MRR@20": 0.03}


@pytest.fixture(autouse=True)
def whole_core(monkeypatch):
    """Every estimate here at a whole core unless a test says otherwise: a loaded test machine must not
    move them."""
    monkeypatch.setattr("fusionbench.cpu_share.core_share", lambda: 1.0)


def cells_of(tmp_path, body):
    path = tmp_path / "sweep.toml"
    path.write_text(TINY + textwrap.dedent(body))
    return read_sweep(path), path


def history(ndcg):
    """A training history with these validation NDCG@20 values, one epoch each."""
    return [{"epoch": n, "loss": 1.0, "seconds": 1.0, "valid": {"NDCG@20": value}}
            for n, value in enumerate(ndcg, 1)]


def plant(store, config, wall, trained_from=None, asha_stopped=None, epochs=10, waited=None, versions=None):
    """A finished run of ``config`` (a resolved config with its dataset checksum) that took ``wall`` s
    over ``epochs`` epochs, each of whose 1 s of training waited ``waited`` s for a core (not recorded:
    ``None``), recorded with ``versions``."""
    run_id = store.start(config, config["dataset_checksum"], versions or {}, "test")
    epochs = history([0.01 * n for n in range(epochs)])
    if waited is not None:
        epochs = [dict(entry, wait_seconds=waited) for entry in epochs]
    store.finish(run_id, {"test": METRICS, "valid": METRICS}, {},
                 RunSummary(wall_seconds=wall, trained_from=trained_from, asha_stopped=asha_stopped,
                            history=epochs))


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("2h", 7200), ("2h30m", 9000), ("45s", 45),
                                           ("1h0m30s", 3630)])
def test_a_duration_counts_from_now(text, seconds):
    assert parse_deadline(text, now=NOW) == NOW + seconds


def test_an_iso_time_is_taken_as_given():
    assert parse_deadline("2026-12-06T19:00Z") == datetime(2026, 12, 6, 19, tzinfo=timezone.utc).timestamp()
    assert parse_deadline("2026-12-06T20:00:00+01:00") == datetime(2026, 12, 6, 19, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("text", ["", "soon", "90", "2x", "h", "2026-13-01T00:00"])
def test_a_malformed_deadline_is_refused_by_name(text):
    with pytest.raises(UserInputError, match="--deadline"):
        parse_deadline(text, now=NOW)


def test_the_estimate_prefers_other_seeds_of_the_same_training(tmp_path):
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
        seeds = [0, 1, 2, 3]

        [[run]]
        strategy = "sasrec"
        set = { dim = 8 }

        [[run]]
        strategy = "gru4rec"

        [[run]]
        strategy = "sasrec"
        protocol = "ratio"
    """)
    (c0, _, _), (c1, _, _), (c2, _, _), (c3, _, _), (small, _, _), (gru, _, _), (ratio, _, _) = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, c0, 600.0)
    plant(store, c1, 800.0)
    plant(store, small, 100.0)
    plant(store, c2, 5.0, trained_from="abc")          # evaluated kept weights: not a training's cost
    cost = CellCost(store)
    assert wall(cost, c3) == 700.0         # seeds 0 and 1 of the same configuration
    other = dict(c3, strategy_options={**c3["strategy_options"], "dim": 32})
    assert wall(cost, other) == 600.0      # no same-config run: every sasrec run that trained
    assert wall(cost, ratio) == 600.0      # no run under its protocol: every sasrec run that trained
    assert wall(cost, gru) is None         # nothing comparable
    plant(store, dict(c3, tune={"name": "t", "trial": 0}), 5.0, asha_stopped=True)
    assert wall(cost, other) == 600.0      # a trial stopped early is not comparable either


def test_a_causal_strategy_is_estimated_from_runs_trained_with_the_same_pass_where_there_are_any(tmp_path,
                                                                                                  monkeypatch):
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = ["sasrec", "srgnn"]
        seeds = [0, 1, 2, 3]
    """)
    (s0, _, _), (s1, _, _), (s2, _, _), (s3, _, _), (g0, _, _), (g1, _, _), (g2, _, _), (g3, _, _) = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, s0, 900.0)                                               # stored before the record: one pass
    plant(store, s1, 700.0, versions={"causal_pass": "whole"})
    plant(store, g0, 300.0)
    plant(store, g1, 500.0, versions={"causal_pass": "grouped"})
    cost = CellCost(store)
    monkeypatch.setattr("fusionbench.deadline.causal_pass", lambda: "grouped")
    assert wall(cost, s3) == 800.0          # no grouped sasrec run: every one counts
    plant(store, s2, 400.0, versions={"causal_pass": "grouped"})
    assert wall(cost, s3) == 400.0          # the grouped one only
    assert wall(cost, g3) == 400.0          # srgnn trains on prefix samples: the pass is no matter
    monkeypatch.setattr("fusionbench.deadline.causal_pass", lambda: "whole")
    assert wall(cost, s3) == 800.0          # the two one-pass runs


def test_a_cell_starts_only_if_its_estimate_fits_the_time_left(tmp_path):
    cells, _ = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), (_, d1, _), _ = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, c0, 600.0)
    seed0, seed1, gru = cells
    clock = Deadline(store, NOW + 500, cells)
    assert clock.admit(seed0, now=NOW) is None                       # done: found in the store
    assert clock.admit(seed1, now=NOW) == ("expected to need 10 min at 100% of a core, 8 min left; estimated "
                                          "from runs of its settings")
    assert clock.admit(seed1, now=NOW - 100) is None                 # 600 s left
    assert clock.admit(gru, now=NOW) is None                         # no estimate: started
    assert clock.admit(gru, now=NOW + 501) == "the deadline has passed"
    checkpoint = store.checkpoint_path(d1)
    checkpoint.parent.mkdir(exist_ok=True)
    torch.save({"history": history([0.1] * 2)}, checkpoint)           # a resumed run needs the rest only
    assert clock.admit(seed1, now=NOW) is None


def test_without_a_run_on_its_dataset_the_estimate_scales_the_strategys_runs_elsewhere(tmp_path):
    cells, _ = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), _, (gru, _, _) = identify(cells)
    beauty = tmp_path / "beauty.toml"
    beauty.write_text('[[run]]\nstrategy = "sasrec"\ndataset = "beauty"\n')
    [(on_beauty, _, _)] = identify(read_sweep(beauty))
    store = ResultStore(tmp_path / "runs.db")
    plant(store, on_beauty, 6000.0)
    cost = CellCost(store)
    ratio = load_data(c0, None).n_interactions / load_data(on_beauty, None).n_interactions   # 382 / 198,502
    assert wall(cost, c0) == pytest.approx(6000.0 * ratio)
    assert wall(cost, gru) is None         # no gru4rec run anywhere
    plant(store, c0, 30.0)
    assert wall(cost, c0) == 30.0          # a run on its own dataset comes first


def test_a_resumed_cell_estimated_from_another_dataset_compares_its_pace_with_their_scaled_pace(tmp_path):
    """The beauty run trained 10 epochs of 1 s in 6000 s; a synthetic cell whose epochs train at 1 s scaled by
    the datasets' interactions trains at the beauty run's pace there: each epoch left costs the beauty run's
    wall per epoch, scaled (the pace ratio is 1, not the interactions' ratio once more)."""
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
        set = { "train.epochs" = 50, "train.patience" = 3 }
    """)
    [(config, digest, trained)] = identify(cells)
    beauty = tmp_path / "beauty.toml"
    beauty.write_text('[[run]]\nstrategy = "sasrec"\ndataset = "beauty"\n')
    [(on_beauty, _, _)] = identify(read_sweep(beauty))
    store = ResultStore(tmp_path / "runs.db")
    plant(store, on_beauty, 6000.0, epochs=10)
    ratio = load_data(config, None).n_interactions / load_data(on_beauty, None).n_interactions
    store.checkpoint_path(digest).parent.mkdir(exist_ok=True)
    own = [dict(entry, seconds=ratio) for entry in history([0.1 * n for n in range(1, 7)])]
    torch.save({"history": own, "elapsed": 6.0}, store.checkpoint_path(digest))
    needed, basis = CellCost(store).estimate(config, digest, trained)
    assert basis == "runs on other datasets, scaled by interactions, at its own pace, 4 epochs left"
    assert needed == pytest.approx(4 * 600.0 * ratio)


def test_the_estimate_reads_other_stores_too_and_counts_a_run_held_by_several_once(tmp_path):
    cells, _ = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), (c1, _, _), (gru, _, _) = identify(cells)
    store, other = ResultStore(tmp_path / "runs.db"), ResultStore(tmp_path / "other.db")
    plant(other, c1, 600.0)
    plant(other, gru, 50.0)
    assert wall(CellCost(store), c0) is None                  # nothing in its own store
    cost = CellCost(store, others=[other])
    assert wall(cost, c0) == 600.0 and wall(cost, gru) == 50.0
    plant(store, c1, 600.0)                                               # the same run, in both stores
    plant(store, c0, 900.0)
    assert wall(cost, c0) == pytest.approx(750.0)              # median of 600 and 900, not of 600, 600, 900
    assert cost.estimate(gru, "absent", "absent").seconds == 50.0


def test_estimate_from_reaches_the_deadline_and_the_dry_run_and_is_checked(tmp_path):
    cells, path = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), _, _ = identify(cells)
    other_path = tmp_path / "other.db"
    plant(ResultStore(other_path), c0, 3600.0)
    store_path = tmp_path / "runs.db"
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--dry-run",
                                       "--estimate-from", str(other_path)])
    assert result.exit_code == 0, result.output
    assert ("3 cells, 0 done; the rest need about 2.0 h of one process with a core to itself, 1 left without an "
            "estimate") in result.output
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--deadline", "30m",
                                       "--estimate-from", str(other_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(r"2 of 3 cells not started here: sasrec \(dim=16, train.epochs=1\) seed 0 \(expected to "
                     r"need 60 min at 100% of a core, (2[0-9]|30) min left; estimated from runs of its settings\); "
                     r"sasrec \(dim=16, train.epochs=1\) "
                     r"seed 1", result.output)
    for bad, message in (([], "--estimate-from applies with --deadline or --dry-run"),
                         (["--dry-run"], f"--estimate-from {tmp_path / 'missing.db'}: no such file")):
        missing = str(tmp_path / "missing.db") if bad else str(other_path)
        result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--estimate-from",
                                           missing, *bad])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("ndcg, patience, typical, left", [
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 3, 10, 4),    # a typical run trains 4 epochs more
    ([0.1 * n for n in range(1, 10)], 3, 10, 3),   # still improving at 9: early stopping demands 3 more
    ([0.1] + [0.2] * 8, 10, 10, 3),                # 7 stale epochs of patience 10: 3 more, not 1
    ([0.1] * 6, 10, 40, 14),                       # the epoch budget (20) caps it
    ([0.1] * 11, 10, 10, 0),                       # 10 stale epochs: stopped, only the evaluation is left
])
def test_a_resumed_run_is_expected_to_train_the_epochs_a_typical_run_has_left(ndcg, patience, typical, left):
    opts = TrainOptions(epochs=20, patience=patience)
    assert epochs_left(history(ndcg), opts, False, typical) == left


def test_under_ratio_paper_the_references_stopping_count_decides_what_is_left():
    opts = TrainOptions(epochs=50, patience=2)
    improved_then_stale = [{"epoch": n, "loss": 1.0, "seconds": 1.0, "valid": dict.fromkeys(REFERENCE_WATCHED, 0.1)}
                           for n in (1, 2)]
    # the reference's one-epoch lag: the epoch after an improvement does not count, so 2 are still needed
    assert epochs_left(improved_then_stale, opts, True, 1) == 2
    assert epochs_left(improved_then_stale, opts, False, 1) == 1


def seed_1_beside_a_finished_seed_0(tmp_path):
    """``(store, config, digest, training)`` of SASRec's seed 1, with seed 0 finished in ``store``: 600 s over 10
    epochs, each of them 1 s of training."""
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
        seeds = [0, 1]
        set = { "train.epochs" = 50, "train.patience" = 3 }
    """)
    (c0, _, _), (c1, d1, t1) = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, c0, 600.0, epochs=10)
    store.checkpoint_path(d1).parent.mkdir(exist_ok=True)
    return store, c1, d1, t1


def test_a_resumed_cell_is_costed_by_its_epochs_not_by_the_time_its_checkpoint_spent(tmp_path):
    store, c1, d1, t1 = seed_1_beside_a_finished_seed_0(tmp_path)
    cost = CellCost(store)
    assert cost.estimate(c1, d1, t1).seconds == 600.0                  # not started: a whole run
    # 6 improving epochs that took 5 hours on a loaded machine: 4 epochs of a typical 10 are left, 60 s each
    torch.save({"history": history([0.1 * n for n in range(1, 7)]), "elapsed": 18000.0}, store.checkpoint_path(d1))
    assert cost.estimate(c1, d1, t1).seconds == pytest.approx(240.0)


def test_a_resumed_cell_that_trains_slower_than_its_tier_is_costed_at_its_own_pace(tmp_path):
    """The tier's run trained 1 s per epoch; this cell's own epochs took 5 s, 1 s of it waiting for a
    core: each epoch left costs 4x the tier's (its validation share included)."""
    store, c1, d1, t1 = seed_1_beside_a_finished_seed_0(tmp_path)
    slow = [dict(entry, seconds=5.0, wait_seconds=1.0) for entry in history([0.1 * n for n in range(1, 7)])]
    torch.save({"history": slow, "elapsed": 30.0}, store.checkpoint_path(d1))
    assert CellCost(store).estimate(c1, d1, t1).seconds == pytest.approx(4 * 240.0)
    assert training_seconds_per_epoch(slow) == 4.0 and training_seconds_per_epoch([{"epoch": 1}]) is None


def test_a_cell_not_started_is_costed_at_the_pace_of_its_settings_started_on_another_seed(tmp_path):
    """Seed 0 of the default settings finished (600 s, 10 epochs of 1 s); seed 0 of a 5x slower setting is
    training: its seed 1 costs the default run's time at 5x, until a run of its own settings finishes."""
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"

        [[run]]
        strategy = "sasrec"
        set = { dim = 32 }
        seeds = [0, 1]
    """)
    (c0, _, _), (slow0, slow0_digest, _), (slow1, slow1_digest, slow1_trained) = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, c0, 600.0)
    cost = CellCost(store)
    assert cost.estimate(slow1, slow1_digest, slow1_trained) == (600.0, "runs of other settings")
    store.start(slow0, slow0["dataset_checksum"], {}, "test")
    store.checkpoint_path(slow0_digest).parent.mkdir(exist_ok=True)
    assert cost.estimate(slow1, slow1_digest, slow1_trained) == (600.0, "runs of other settings")  # no epoch yet
    slow = [dict(entry, seconds=5.0) for entry in history([0.1, 0.2])]
    torch.save({"history": slow, "elapsed": 10.0}, store.checkpoint_path(slow0_digest))
    assert cost.estimate(slow1, slow1_digest, slow1_trained) == (pytest.approx(3000.0),
                                                                 "runs of other settings, at seed 0's pace")
    resumed = cost.estimate(slow0, slow0_digest, "x")
    assert resumed.basis.startswith("runs of other settings, at its own pace,") and resumed.seconds == 0.0
    store.finish(store.run_id(slow0_digest), {"test": METRICS, "valid": METRICS}, {},
                 RunSummary(wall_seconds=2500.0, history=slow))
    assert cost.estimate(slow1, slow1_digest, slow1_trained) == (2500.0, "runs of its settings")


def test_every_estimate_names_the_runs_it_rests_on(tmp_path):
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
        seeds = [0, 1]

        [[run]]
        strategy = "sasrec"
        protocol = "ratio"
    """)
    (c0, _, _), (c1, d1, t1), (ratio, d_ratio, t_ratio) = identify(cells)
    beauty = tmp_path / "beauty.toml"
    beauty.write_text('[[run]]\nstrategy = "sasrec"\ndataset = "beauty"\n')
    [(on_beauty, _, _)] = identify(read_sweep(beauty))
    store = ResultStore(tmp_path / "runs.db")
    cost = CellCost(store)
    assert cost.estimate(c1, d1, t1) == (None, "no run of this strategy to estimate from")
    plant(store, on_beauty, 600.0)
    assert cost.estimate(c1, d1, t1).basis == "runs on other datasets, scaled by interactions"
    plant(store, c0, 600.0)
    assert cost.estimate(c1, d1, t1).basis == "runs of its settings"
    assert cost.estimate(ratio, d_ratio, t_ratio).basis == "runs under other protocols or aggregators"
    store.weights_path(t1).parent.mkdir(exist_ok=True)
    store.weights_path(t1).write_bytes(b"kept")
    assert cost.estimate(c1, d1, t1) == (0.0, "kept weights: evaluation only")


def test_a_test_only_cell_of_a_kept_training_always_starts(tmp_path):
    cells, _ = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
        perturbation = { name = "disorder", severity = 0.5 }
    """)
    [(config, _, trained)] = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, {k: v for k, v in config.items() if k != "perturbation"}, 3600.0)
    clock = Deadline(store, NOW + 60, cells)
    assert clock.admit(cells[0], now=NOW) is not None                # would train: an hour
    store.weights_path(trained).parent.mkdir(exist_ok=True)
    store.weights_path(trained).write_bytes(b"kept")                 # the clean run kept its weights
    assert clock.admit(cells[0], now=NOW) is None                    # evaluation only


def test_the_sweep_skips_a_cell_that_would_overrun_and_runs_the_next(tmp_path):
    cells, path = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), (_, d1, _), (_, d_gru, _) = identify(cells)
    store_path = tmp_path / "runs.db"
    plant(ResultStore(store_path), c0, 3600.0)
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--deadline", "30m",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(r"1 of 3 cells not started here: sasrec \(dim=16, train.epochs=1\) seed 1 "
                     r"\(expected to need 60 min at 100% of a core, (2[0-9]|30) min left; estimated from runs of its "
                     r"settings\)", result.output)
    store = ResultStore(store_path)
    assert store.status(d1) is None and store.status(d_gru) == "done"


def test_a_bad_deadline_fails_before_anything_is_written(tmp_path):
    _, path = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
    """)
    store_path = tmp_path / "runs.db"
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--deadline", "tonight"])
    assert result.exit_code == 2 and "--deadline 'tonight'" in result.output
    assert not store_path.exists()
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--deadline", "1h",
                                       "--engine", "ray"])
    assert result.exit_code == 2 and "--deadline applies to --engine local" in result.output


def test_the_dry_run_lists_what_each_cell_left_to_run_needs(tmp_path):
    cells, path = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), _, _ = identify(cells)
    store_path = tmp_path / "runs.db"
    plant(ResultStore(store_path), c0, 3600.0)
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = [[part.strip() for part in line.strip("|").split("|")] for line in result.output.splitlines()
            if line.startswith("| sasrec") or line.startswith("| gru4rec")]
    assert [row[1:] for row in rows] == [["0", "done", "", ""],
                                         ["1", "to run", "60", "runs of its settings"],
                                         ["0", "to run", "?", "no run of this strategy to estimate from"]]
    assert ("3 cells, 1 done; the rest need about 1.0 h of one process with a core to itself, 1 left without an "
            "estimate") in result.output


def test_the_dry_run_counts_a_training_once_for_the_cells_that_share_it(tmp_path):
    cells, path = cells_of(tmp_path, """
        [[run]]
        strategy = "sasrec"
        seeds = [0, 1]

        [[run]]
        strategy = "sasrec"
        seeds = [1]
        perturbation = { name = "disorder", severity = [0.5, 1] }
    """)
    (c0, _, _), _, _, _ = identify(cells)
    store_path = tmp_path / "runs.db"
    plant(ResultStore(store_path), c0, 3600.0)
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(store_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    needs = [[part.strip() for part in line.strip("|").split("|")[-2:]] for line in result.output.splitlines()
             if line.startswith("| sasrec")]
    # seed 1 trains; its test-only cells evaluate its weights
    assert needs == [["", ""], ["60", "runs of its settings"], ["0", "an earlier cell's training"],
                     ["0", "an earlier cell's training"]]


def test_a_run_counts_without_the_time_it_waited_for_a_core():
    epochs = [{"seconds": 2.0, "wait_seconds": 1.0}, {"seconds": 6.0, "wait_seconds": 1.0}]
    assert uncrowded_seconds(100.0, epochs) == 75.0                       # 2 of its 8 s of training waited
    assert uncrowded_seconds(100.0, [{"seconds": 2.0}]) == 100.0           # recorded before the wait was
    assert uncrowded_seconds(100.0, [*epochs, {"seconds": 2.0}]) == 75.0   # the epochs that record it decide


def test_estimates_are_the_uncrowded_times_over_the_share_of_a_core_now(tmp_path):
    cells, _ = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), (c1, _, _), _ = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, c0, 600.0, waited=0.5)                  # timed beside as many busy jobs as cores
    assert wall(CellCost(store), c1) == 300.0
    assert wall(CellCost(store, share=0.5), c1) == 600.0


def test_the_deadline_measures_the_share_of_a_core_once_a_minute_and_says_it(tmp_path, monkeypatch):
    cells, _ = cells_of(tmp_path, TWO_STRATEGIES)
    (c0, _, _), _, _ = identify(cells)
    store = ResultStore(tmp_path / "runs.db")
    plant(store, c0, 600.0)
    measured = []
    monkeypatch.setattr("fusionbench.cpu_share.core_share", lambda: measured.append(1) or 0.5)
    clock = Deadline(store, NOW + 900, cells)
    seed1 = cells[1]
    assert clock.admit(seed1, now=NOW).startswith("expected to need 20 min at 50% of a core, 15 min left;")
    assert clock.admit(seed1, now=NOW - 300) is None                 # 20 min left
    assert len(measured) == 1
    monotonic = time.monotonic()
    monkeypatch.setattr("time.monotonic", lambda: monotonic + SHARE_EVERY)
    clock.admit(seed1, now=NOW)
    assert len(measured) == 2
