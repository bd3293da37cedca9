"""`fusionbench tune` (issue 26): search spaces beside the options, trials as stored runs that never rank a
test sample, the choice on validation only, resuming, the seed runs and `leaderboard --tuned`.

The tests without Ray build parts and run one trial in this process (`train_trial` with a list as its
reporter); the Ray tests (skipped where `ray.tune` is not importable) run the command itself."""
import json
import random
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

import fusionbench.train
from fusionbench.cli import main
from fusionbench.cpu_share import queue_wait
from fusionbench.errors import UserInputError
from fusionbench.metrics import summarize
from fusionbench.registry import AGGREGATORS, STRATEGIES
from fusionbench.runner import RunRequest, resolve
from fusionbench.space import (
    Choice,
    IntRange,
    LogUniform,
    Uniform,
    check_space,
    dimension_of,
    parse_space,
    space_from_table,
    space_table,
    strategy_space,
)
from fusionbench.store import ResultStore, RunSummary, config_hash
from fusionbench.train import epoch_record
from fusionbench.tune import (
    TrialSpec,
    TuneCost,
    TuneSettings,
    choose,
    chosen_config,
    default_config,
    default_trial,
    make_part,
    point_of,
    prepared,
    read_tune_file,
    rounded,
    same_point,
    search_points,
    stored_trials,
    train_trial,
)
from interrupt import interrupt_when

REPO = Path(__file__).resolve().parents[1]
TINY = {"data.n_users": "80", "data.n_codes": "3", "data.per_cell": "2", "data.max_len": "10",
        "features.reduce": "pca", "features.n_clusters": "4", "features.k": "2"}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def settings(**changes):
    return TuneSettings.build({"name": "t", "budget": 4, "max_epochs": 3, "grace_epochs": 1, "seeds": [0],
                               **changes}, lambda key: key)


def tiny_part(strategy="sasrec", **changes):
    return make_part(settings(**changes), strategy, dict(TINY), {}, "test", dataset="synthetic")


# -- search spaces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_point_of_every_strategy_space_resolves(name):
    """A space's ranges must be ones its options accept: the representative values of every key, and
    random combinations of them (cross-option rules such as dim divisible by heads), all resolve."""
    space = strategy_space(name)
    base = RunRequest(strategy=name, dataset="synthetic")

    def resolve_point(point):
        groups = {"strategy_options": {}, "train_options": {}, "aggregator_options": {}, "feature_options": {}}
        for key, value in point.items():
            prefix, _, option = key.rpartition(".")
            groups[{"": "strategy_options", "train": "train_options", "agg": "aggregator_options",
                    "features": "feature_options"}[prefix]][option] = value
        return resolve(RunRequest(strategy=name, dataset="synthetic", **groups))

    check_space(space, resolve_point, name)
    rng = random.Random(0)
    for _ in range(20):
        resolve_point({key: rng.choice(dim.probe()) for key, dim in space.items()})
    assert resolve(base)   # the defaults too
    if name != "pop":
        assert "train.lr" in space and isinstance(space["train.lr"], LogUniform)


def test_shared_knobs_strategy_knobs_and_aggregator_knobs_make_a_strategy_space():
    assert list(strategy_space("sasrec")) == ["train.lr", "train.weight_decay", "dropout", "dim", "layers"]
    assert strategy_space("sasrec")["train.weight_decay"].contains(0.0)   # the default is a point of the search
    difsr = strategy_space("difsr")
    assert difsr["aap_weight"] == Choice((0.0, 1.0, 5.0, 10.0, 20.0)) and difsr["layers"] == IntRange(1, 4)
    mmsr = strategy_space("mmsr")
    assert mmsr["agg.update"] == AGGREGATORS.get("han").search_space["update"]
    assert "agg.update" not in strategy_space("mmsr", "gcn")         # another aggregator, its own knobs
    assert strategy_space("pop") == {}                                # nothing to search: one trial
    assert "dropout" not in strategy_space("srgnn")                   # no such option, no shared knob
    assert "train.weight_decay" not in strategy_space("lightgcn")     # its own L2 term (reg) is searched
    fixed = strategy_space("sasrec", overrides={"dim": Choice((8, 16)), "layers": None},
                           fixed=("dropout", "train.weight_decay"))
    assert fixed == {"train.lr": LogUniform(1e-4, 1e-2), "dim": Choice((8, 16))}


def test_space_tables_round_trip_and_bad_tables_name_the_key():
    space = {"train.lr": LogUniform(1e-4, 1e-2), "dropout": Uniform(0.0, 0.5), "layers": IntRange(1, 3),
             "fusion": Choice(("sum", "gate"))}
    assert space_from_table(json.loads(json.dumps(space_table(space)))) == space
    assert parse_space({"dim": "default"}, "f: space") == {"dim": None}
    for table, message in [({"dim": [1, 2]}, "f: space.dim must be a table with one of"),
                           ({"lr": {"log_uniform": [0, 1]}}, "f: space.lr: log_uniform needs 0 < low < high"),
                           ({"layers": {"int": [1.5, 3]}}, "f: space.layers: int needs integers"),
                           ({"fusion": {"choice": ["sum"]}}, "f: space.fusion: choice needs two or more"),
                           ({"dropout": {"uniform": [0.5]}}, "f: space.dropout: uniform takes [low, high]")]:
        with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace(".", r"\.")):
            parse_space(table, "f: space")
    with pytest.raises(UserInputError, match="cannot search 'width', not an option of this run"):
        strategy_space("sasrec", overrides={"width": Choice((1, 2))})
    assert dimension_of({"int": [1, 3]}, "x").describe() == "int 1..3"


def test_a_range_the_options_reject_fails_before_any_trial_with_its_key_named():
    with pytest.raises(UserInputError, match=r"space key 'dropout' \(uniform \[0, 1.5\]\) reaches 1.5"):
        make_part(settings(), "sasrec", {}, {"dropout": {"uniform": [0.0, 1.5]}}, "f.toml: [[run]] 1",
                  dataset="synthetic")


def test_list_shows_each_strategy_space():
    out = invoke("list", "strategies").output
    assert ("      searched by fusionbench tune: train.lr log-uniform [0.0001, 0.01], train.weight_decay one of 0, "
            "1e-06, 1e-05, 0.0001, dropout uniform [0, 0.5]") in out
    assert "aap_weight one of 0, 1, 5, 10, 20" in out and "agg.update one of gate, sync" in out
    assert "      searched by fusionbench tune: agg.update one of gate" in invoke("list", "aggregators").output


# -- tune files and flags --------------------------------------------------------------------------
def tune_file(tmp_path, body):
    path = tmp_path / "my_tune.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_tune_file_gives_settings_and_one_part_per_strategy(tmp_path):
    path = tune_file(tmp_path, """
        [tune]
        budget = 8
        max_epochs = 20
        seeds = [1, 2]
        [defaults]
        dataset = "synthetic"
        [[run]]
        strategy = ["sasrec", "gru4rec"]
        set = { dim = 32 }
        [[run]]
        strategy = "mmsr"
        space = { "agg.update" = { choice = ["gate", "ho"] }, layers = "default" }
    """)
    settings, parts = read_tune_file(path)
    assert (settings.name, settings.budget, settings.max_epochs, settings.seeds) == ("my_tune", 8, 20, (1, 2))
    assert [p.label for p in parts] == ["sasrec", "gru4rec", "mmsr + han"]
    sasrec = resolve(parts[0].base)
    assert "dim" not in parts[0].space and sasrec["strategy_options"]["dim"] == 32
    assert sasrec["train"]["epochs"] == 20 and sasrec["train"]["select"] == "NDCG@20"
    assert sasrec["tune"]["name"] == "my_tune" and sasrec["tune"]["space"]["train.lr"] == {"log_uniform": [1e-4, 1e-2]}
    assert parts[2].space["agg.update"] == Choice(("gate", "ho")) and "layers" not in parts[2].space
    _, renamed = read_tune_file(path, name="other")
    assert resolve(renamed[0].base)["tune"]["name"] == "other"


@pytest.mark.parametrize("body, message", [
    ("[tunes]\n", "unknown top-level key(s) tunes"),
    ("[tune]\nbudgets = 3\n[[run]]\nstrategy='sasrec'\n", "[tune]: unknown key(s) budgets"),
    ("[tune]\nbudget = 0\n[[run]]\nstrategy='sasrec'\n", "[tune] budget must be >= 1, got 0"),
    ("[tune]\ngrace_epochs = 60\n[[run]]\nstrategy='sasrec'\n", "[tune] grace_epochs must be in 1..max_epochs (50)"),
    ("[tune]\nmetric = 'AUC'\n[[run]]\nstrategy='sasrec'\n", "[tune] metric must be one of"),
    ("[[run]]\nstrategy='sasrec'\nseeds=[0]\n", "[[run]] 1: unknown key(s) seeds"),
    ("[[run]]\nstrategy='nope'\n", "[[run]] 1 (nope): unknown strategy 'nope'"),
    ("[[run]]\nstrategy='sasrec'\nset={'train.epochs'=3}\n", "'train.epochs' cannot be set or searched"),
    ("[[run]]\nstrategy='sasrec'\nset={dim=32}\nspace={dim={choice=[8,16]}}\n",
     "'dim' is both fixed (set) and searched"),
    ("[[run]]\nstrategy='sasrec'\nspace={dim={choice=[33, 64]}}\n", "space key 'dim' (one of 33, 64) reaches 33"),
    ("[[run]]\nstrategy='sasrec'\n[[run]]\nstrategy='sasrec'\n", "[[run]] 2 (sasrec) repeats the tune of"),
    ("[[run]]\nstrategy='sasrec'\nspace={'train.exclude_history'={choice=[false, true]}}\n",
     "'train.exclude_history' cannot be searched"),
])
def test_tune_file_errors_name_the_file_the_table_and_the_key(tmp_path, body, message):
    path = tune_file(tmp_path, body)
    out = invoke("tune", path, "--store", tmp_path / "s.db", "--dry-run")
    assert out.exit_code == 2 and message in out.output and str(path) in out.output, out.output


def test_flags_and_files_do_not_mix_and_bad_flags_are_named(tmp_path):
    path = tune_file(tmp_path, "[[run]]\nstrategy = 'sasrec'\n")
    mixed = invoke("tune", path, "--budget", "3", "--store", tmp_path / "s.db")
    assert mixed.exit_code == 2 and "--budget applies without FILE" in mixed.output
    nothing = invoke("tune", "--store", tmp_path / "s.db")
    assert nothing.exit_code == 2 and "give a tune FILE or --strategy" in nothing.output
    for args, message in [(("--budget", "0"), "--budget must be >= 1"),
                          (("--reduction-factor", "1"), "--reduction-factor must be >= 2"),
                          (("--gpus-per-trial", "-1"), "--gpus-per-trial must be >= 0"),
                          (("--set", "train.select=HR@5"), "'train.select' cannot be set or searched"),
                          (("--name", "a b"), "--name must be a name"),
                          (("--protocol", "ratio-paper"), "'ratio-paper' selects on the test samples"),
                          (("--set", "train.record_test=true"), "'train.record_test' ranks the test samples")]:
        out = invoke("tune", "--strategy", "sasrec", "--dataset", "synthetic", "--store", tmp_path / "s.db", *args)
        assert out.exit_code == 2 and message in out.output, (args, out.output)


def test_dry_run_shows_each_space_and_runs_nothing(tmp_path):
    out = invoke("tune", "--strategy", "sasrec,pop", "--dataset", "synthetic", "--budget", "5",
                 "--store", tmp_path / "s.db", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "tune 'synthetic_loo' on synthetic (loo): 2 strategies x 5 trials" in out.output
    rows = {line.split("|")[1].strip(): line for line in out.output.splitlines() if line.startswith("| ")}
    assert "0/5" in rows["sasrec"] and "train.lr log-uniform [0.0001, 0.01]" in rows["sasrec"]
    assert "0/1" in rows["pop"] and "| nothing: one trial at its defaults" in rows["pop"]
    assert ResultStore(tmp_path / "s.db").runs(status=None).empty


def test_the_beauty_tune_file_tunes_every_registered_strategy_with_one_budget():
    settings, parts = read_tune_file(REPO / "reports" / "sweeps" / "beauty_tune.toml")
    assert sorted(p.base.strategy for p in parts) == STRATEGIES.names()
    assert {(p.base.dataset, p.base.protocol, p.budget) for p in parts} == {("beauty", "loo", settings.budget)}
    assert settings.seeds == (0, 1, 2) and settings.name == "beauty_tune"


# -- one trial, in this process --------------------------------------------------------------------
def test_a_trial_reports_every_epoch_and_never_ranks_a_test_sample(monkeypatch, tmp_path):
    part = tiny_part("late")
    point = {"train.lr": 0.01, "dropout": 0.2, "dim": 32, "layers": 1, "fusion": "gate", "feature_dropout": 0.1}
    config = resolve(part.request(point))
    _, checksum, split, _ = prepared(config, None)
    ranked = []
    real = fusionbench.train.rank_samples

    def spy(model, data, samples, *args, **kwargs):
        ranked.append(samples)
        return real(model, data, samples, *args, **kwargs)

    monkeypatch.setattr(fusionbench.train, "rank_samples", spy)
    monkeypatch.setattr(fusionbench.train, "evaluate_trained", lambda *a, **k: pytest.fail("a trial ranked test"))
    reports = []
    train_trial(point, TrialSpec(part, str(tmp_path / "checkpoints")), reports.append)
    assert [r["epoch"] for r in reports] == [1, 2, 3] and [r["last"] for r in reports] == [False, False, True]
    assert ranked and all(samples is split.valid for samples in ranked)      # validation only, every epoch
    assert {r["run_hash"] for r in reports} == {config_hash({**config, "dataset_checksum": checksum})}
    assert all(set(r["valid"]) >= {"NDCG@20", "HR@5"} and r["train_seconds"] > 0 for r in reports)
    if queue_wait() is not None:       # the crowding of each epoch reaches the stored trial (deadline estimates)
        assert all(0.0 <= r["wait_seconds"] <= r["seconds"] for r in reports)
    assert config["strategy_options"]["fusion"] == "gate" and config["tune"]["name"] == "t"

    # a finished trial is replayed from its stored epochs, and nothing trains
    monkeypatch.setattr(fusionbench.train, "train", lambda *a, **k: pytest.fail("a replay trained"))
    history = [epoch_record(r) for r in reports[:2]]
    digest = reports[0]["run_hash"]
    replayed = []
    train_trial(point, TrialSpec(part, str(tmp_path), {digest: {"history": history, "last": False, "error": None}}),
                replayed.append)
    assert [(r["epoch"], r["last"], r["replayed"]) for r in replayed] == [(1, False, True), (2, False, True)]
    assert [r["valid"] for r in replayed] == [r["valid"] for r in reports[:2]]


def test_a_worker_loads_data_and_builds_tables_once_for_all_its_trials(monkeypatch, tmp_path):
    import fusionbench.tune

    calls = {"load_data": 0, "build_context": 0}
    for name in calls:
        real = getattr(fusionbench.tune, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(fusionbench.tune, name, counting)
    part = make_part(settings(), "late", {**TINY, "data.seed": "7"}, {}, "test", dataset="synthetic")
    for lr, dim in ((0.01, 16), (0.005, 32), (0.002, 16)):
        point = {"train.lr": lr, "dropout": 0.1, "dim": dim, "layers": 1, "fusion": "sum", "feature_dropout": 0.0}
        train_trial(point, TrialSpec(part, str(tmp_path)), lambda result: None)
    assert calls == {"load_data": 1, "build_context": 1}


def test_a_trial_whose_training_fails_reports_the_failure_with_every_metric_zero(monkeypatch, tmp_path):
    from fusionbench.errors import TrainingError

    def diverging(*args, on_epoch, **kwargs):
        on_epoch({"epoch": 1, "loss": 2.0, "seconds": 0.1, "valid": {"NDCG@20": 0.2}}, False)
        raise TrainingError("sasrec: non-finite loss nan at epoch 2, batch 0")

    monkeypatch.setattr(fusionbench.train, "train", diverging)
    reports = []
    train_trial({"train.lr": 0.01, "dropout": 0.1, "dim": 16, "layers": 1}, TrialSpec(tiny_part(), str(tmp_path)),
                reports.append)
    assert [(r["epoch"], r["last"], r.get("error")) for r in reports] == \
        [(1, False, None), (2, True, "sasrec: non-finite loss nan at epoch 2, batch 0")]
    assert set(reports[1]["valid"].values()) == {0.0} and "NDCG@20" in reports[1]["valid"]


def test_train_reports_restored_epochs_first_when_a_trial_resumes(tmp_path):
    """A killed trial resumes from its checkpoint: train() reports the restored epochs again (ASHA and the
    store see the whole history), then the new ones, with the same values as an uninterrupted run."""
    part = tiny_part()
    config = resolve(part.request({"train.lr": 0.01, "dropout": 0.1, "dim": 16, "layers": 1}))
    data, _, split, ctx = prepared(config, None)
    options = fusionbench.train.TrainOptions.build(config["train"])

    def run(epochs, checkpoint):
        seen = []
        model = STRATEGIES.create("sasrec", ctx, **config["strategy_options"])
        opts = fusionbench.train.TrainOptions.build({**config["train"], "epochs": epochs})
        result = fusionbench.train.train(model, data, split, opts, 0, config["max_len"], checkpoint=checkpoint,
                                         progress=False, on_epoch=lambda e, last: seen.append((e, last)),
                                         final_ranking=False)
        assert result.test_ranks is None and result.test == {}
        return seen

    whole = run(options.epochs, None)
    run(2, tmp_path / "c.pt")                              # killed after two epochs (its checkpoint stays)
    resumed = run(options.epochs, tmp_path / "c.pt")
    assert [(e["epoch"], last) for e, last in resumed] == [(1, False), (2, False), (3, True)]
    assert [e["valid"] for e, _ in resumed] == [e["valid"] for e, _ in whole]


# -- the choice ------------------------------------------------------------------------------------
def store_trial(store, part, point, history, stopped=False, test=None, wall=None):
    """A finished trial of ``part`` stored as the tune stores one; ``test`` plants test metrics on it."""
    config = resolve(part.request(point))
    config["dataset_checksum"] = "abc"
    run_id = store.start(config, "abc", {}, "rev")
    metric = config["tune"]["metric"]
    best = max(range(len(history)), key=lambda i: history[i]["valid"][metric])
    metrics = {"valid": history[best]["valid"], **({"test": test} if test else {})}
    store.finish(run_id, metrics, {}, RunSummary(wall_seconds=wall, best_epoch=best + 1, history=history,
                                                 asha_stopped=stopped))
    return run_id


def epochs(*values):
    return [{"epoch": i, "loss": 1.0, "seconds": 0.1, "valid": {"NDCG@20": v, "HR@20": v}}
            for i, v in enumerate(values, start=1)]


def test_the_choice_reads_validation_only_and_ignores_a_planted_test_best(tmp_path):
    store = ResultStore(tmp_path / "s.db")
    part = tiny_part()
    points = [{"train.lr": lr, "train.weight_decay": 0.0, "dropout": 0.1, "dim": 16, "layers": 1}
              for lr in (0.001, 0.002, 0.003)]
    perfect = dict.fromkeys(["HR@20", "NDCG@20", "MRR@20", "HR@5", "NDCG@5", "MRR@5"], 1.0)
    planted = store_trial(store, part, points[0], epochs(0.10, 0.20), test=perfect)       # best on test
    valid_best = store_trial(store, part, points[1], epochs(0.25, 0.30, 0.28), test=dict.fromkeys(perfect, 0.01))
    store_trial(store, part, points[2], epochs(0.05), stopped=True)
    trials = stored_trials(store, "t")
    assert [t.asha_stopped for t in trials] == [False, False, True]
    assert store.metrics(planted, "test")["NDCG@20"] == 1.0           # the plant is there to be read
    chosen = choose(trials)
    assert chosen.run_id == valid_best and chosen.best() == 0.30
    assert point_of(chosen.config, list(part.space)) == points[1]
    # an ASHA-stopped trial can be chosen when its best epoch is the best
    stopped = store_trial(store, part, {**points[2], "layers": 2}, epochs(0.31), stopped=True)
    assert choose(stored_trials(store, "t")).run_id == stopped


# -- the default configuration is a trial -----------------------------------------------------------
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_default_is_a_point_of_its_own_space(name):
    """The built-in spaces hold their strategy's defaults, so every tune evaluates the default board's
    configuration; rounding (as trial configs are) leaves the defaults as they are."""
    part = make_part(settings(), name, {}, {}, "test", dataset="synthetic")
    assert part.default_outside == {} and set(part.default) == set(part.space)
    assert all(rounded(value) == value for value in part.default.values())


def test_the_default_point_is_every_searched_key_at_its_default_under_the_fixed_options():
    assert tiny_part().default == {"train.lr": 0.001, "train.weight_decay": 0.0, "dropout": 0.5, "dim": 64, "layers": 2}
    fixed = make_part(settings(), "sasrec", {**TINY, "dim": "32"}, {"dropout": "default"}, "test",
                      dataset="synthetic")
    assert fixed.default == {"train.lr": 0.001, "train.weight_decay": 0.0, "layers": 2}
    assert make_part(settings(), "pop", {}, {}, "test", dataset="synthetic").default == {}


def test_a_fresh_part_evaluates_its_default_first_and_a_resumed_one_never_twice(tmp_path):
    store = ResultStore(tmp_path / "s.db")
    part = tiny_part()
    assert search_points(part, []) == [part.default]
    other = {"train.lr": 0.002, "train.weight_decay": 1e-5, "dropout": 0.1, "dim": 16, "layers": 1}
    store_trial(store, part, other, epochs(0.1))
    # the default trial was killed before it stored an epoch: it comes back, after the replayed trial
    assert search_points(part, stored_trials(store, "t")) == [other, part.default]
    default_id = store_trial(store, part, dict(part.default), epochs(0.05, 0.2))
    trials = stored_trials(store, "t")
    assert search_points(part, trials) == [other, part.default]         # replayed once, not added again
    assert default_trial(part, trials).run_id == default_id == choose(trials).run_id   # it can be chosen

    # an interrupted default trial is resumed, once
    store = ResultStore(tmp_path / "interrupted.db")
    config = {**resolve(part.request(part.default)), "dataset_checksum": "abc"}
    store.start(config, "abc", {}, "rev")
    assert search_points(part, stored_trials(store, "t")) == [part.default]


@pytest.mark.parametrize("search", ["tpe", "random"])
def test_each_searcher_proposes_the_default_point_first_then_samples(search):
    pytest.importorskip("ray.tune", reason="ray[tune] is not installed: pip install 'fusionbench[tune]'")
    from ray.tune.experiment import Experiment

    from fusionbench.tune_ray import searcher

    part = tiny_part(search=search)
    algorithm = searcher(settings(search=search), part, search_points(part, []), 0)
    space = {key: dim.to_ray() for key, dim in part.space.items()}
    if search == "tpe":
        algorithm.set_search_properties("valid/NDCG@20", "max", space)
        proposed = [algorithm.suggest(f"trial {i}") for i in range(3)]
    else:
        algorithm.add_configurations([Experiment("t", lambda config: None, config=space, num_samples=3)])
        proposed = [algorithm.next_trial().config for _ in range(3)]
    assert proposed[0] == part.default and part.default not in proposed[1:]
    assert all(all(part.space[key].contains(value) for key, value in point.items()) for point in proposed)


def test_a_default_outside_the_space_is_reported_and_not_evaluated(tmp_path, monkeypatch):
    path = tune_file(tmp_path, """
        [defaults]
        dataset = "synthetic"
        [[run]]
        strategy = "sasrec"
        space = { dim = { choice = [16, 32] } }
        [[run]]
        strategy = "gru4rec"
    """)
    _, (sasrec, gru4rec) = read_tune_file(path)
    assert sasrec.default_outside == {"dim": 64} and gru4rec.default_outside == {}
    assert search_points(sasrec, []) == [] and default_trial(sasrec, []) is None
    note = "sasrec: its default configuration is not a trial and is not evaluated (dim=64 lies outside one of 16, 32)"
    plan = invoke("tune", path, "--store", tmp_path / "s.db", "--dry-run")
    assert plan.exit_code == 0 and note in plan.output, plan.output
    rows = {line.split("|")[1].strip(): line for line in plan.output.splitlines() if line.startswith("| ")}
    assert "| not a trial: dim=64 lies outside one of 16, 32" in rows["sasrec"]
    assert "| first trial: train.lr=0.001, train.weight_decay=0, dropout=0.3, dim=64, layers=1" in rows["gru4rec"]
    import fusionbench.tune

    monkeypatch.setattr(fusionbench.tune, "run_tune", lambda *args, **kwargs: ([], TuneCost()))
    run = invoke("tune", path, "--store", tmp_path / "s.db", "--quiet")          # the tune's own header
    assert run.exit_code == 0 and note in run.output.splitlines()[1], run.output


def test_store_upgrade_keeps_a_trial_current_and_a_trial_keeps_its_tune_in_its_identity(tmp_path):
    from fusionbench.store.upgrade import upgrade_store

    store = ResultStore(tmp_path / "s.db")
    part = tiny_part()
    point = {"train.lr": 0.001, "dropout": 0.1, "dim": 16, "layers": 1}
    store_trial(store, part, point, epochs(0.1))
    assert [u.status for u in upgrade_store(store)] == ["current"]
    ordinary = {**{k: v for k, v in resolve(part.request(point)).items() if k != "tune"}, "dataset_checksum": "abc"}
    assert config_hash(ordinary) != store.runs().config_hash.iloc[0]     # never the ordinary run's identity


def test_a_store_from_before_tunes_gains_their_columns(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE runs (id INTEGER PRIMARY KEY, config_hash TEXT UNIQUE NOT NULL, config TEXT
        NOT NULL, dataset TEXT NOT NULL, protocol TEXT NOT NULL, strategy TEXT NOT NULL, aggregator TEXT, seed INTEGER
        NOT NULL, status TEXT NOT NULL, dataset_checksum TEXT, versions TEXT, git_rev TEXT, started_at TEXT,
        finished_at TEXT, wall_seconds REAL, peak_memory_mb REAL, best_epoch INTEGER, epoch_seconds REAL,
        eval_seconds REAL, history TEXT, error TEXT);
        INSERT INTO runs (config_hash, config, dataset, protocol, strategy, seed, status)
        VALUES ('h', '{}', 'synthetic', 'loo', 'sasrec', 0, 'done');""")
    db.commit()
    db.close()
    store = ResultStore(path)
    assert store.run_columns()[-3:] == ["trained_from", "tune", "asha_stopped"]
    row = store.runs().iloc[0]
    assert pd.isna(row.tune) and pd.isna(row.asha_stopped) and pd.isna(row.trained_from)


# -- leaderboard --tuned: each tuned row beside its default -----------------------------------------
def test_the_default_config_of_a_trial_is_what_fusionbench_run_resolves_with_the_fixed_options(tmp_path):
    store = ResultStore(tmp_path / "s.db")
    part = make_part(settings(), "sasrec", {**TINY, "train.batch_size": "64"}, {}, "test", dataset="synthetic")
    store_trial(store, part, {"train.lr": 0.005, "dropout": 0.1, "dim": 16, "layers": 1}, epochs(0.1))
    trial = stored_trials(store, "t")[0]
    default = default_config(trial.config)
    data = {k.split(".", 1)[1]: v for k, v in TINY.items() if k.startswith("data.")}
    run = resolve(RunRequest(strategy="sasrec", dataset="synthetic", dataset_options=data,
                             train_options={"batch_size": "64"}))
    assert default == {k: v for k, v in run.items() if k != "seed"}
    assert default["train"]["epochs"] == 200 and "tune" not in default            # its own epochs, no tune
    assert point_of(default, list(part.space)) == part.default


# test ranks of 120 samples per (row, seed): the tuned rows rank better than the default rows, pop between
_RNG = np.random.default_rng(7)
BOARD_RANKS = {(row, seed): _RNG.integers(0, {"tuned": 40, "default": 60, "pop": 50}[row.split()[-1]], size=120)
               for row in ("sasrec tuned", "sasrec default", "gru4rec tuned", "gru4rec default", "pop pop")
               for seed in (0, 1, 2)}


def seed_run(store, config, seed, ranks, n_epochs=1, wall=None):
    """A finished ordinary run of ``config`` on ``seed`` with these test ranks, ``n_epochs`` epochs long and
    ``wall`` seconds of wall time."""
    config = {**config, "seed": seed, "dataset_checksum": "abc"}
    store.finish(store.start(config, "abc", {}, "rev"), {"test": summarize(torch.from_numpy(ranks))}, {"test": ranks},
                 RunSummary(wall_seconds=wall, history=epochs(*[0.1] * n_epochs)))


def ndcg20(ranks):
    """Per-sample NDCG@20, written out independently of fusionbench.metrics."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < 20, 1 / np.log2(r + 2), 0.0)


@pytest.fixture()
def tuned_stores(tmp_path):
    """A tune 't' of sasrec, gru4rec and pop (trials and seed runs 0, 1 of the chosen configurations) in
    tune.db, which also holds runs of gru4rec's default configuration; defaults.db holds sasrec's default
    configuration on seeds 0, 1, 2 and nothing of gru4rec. Pop has nothing to search: its default is chosen.
    Costs: each part's default trial 1 epoch in 10 s, the other one 2 epochs (ASHA-stopped) in 30 s; the
    default runs 4, 5, 6 epochs in 20, 25, 30 s (seeds 0, 1, 2); pop's seed runs 1 epoch in 2 and 4 s."""
    tune, defaults = ResultStore(tmp_path / "tune.db"), ResultStore(tmp_path / "defaults.db")
    for strategy in ("sasrec", "gru4rec", "pop"):
        part = tiny_part(strategy)
        store_trial(tune, part, dict(part.default), epochs(0.10), wall=10.0)
        if part.space:
            store_trial(tune, part, {**part.default, "train.lr": 0.005, "layers": 1}, epochs(0.05, 0.20),
                        stopped=True, wall=30.0)
        trials = [t for t in stored_trials(tune, "t") if t.config["strategy"] == strategy]
        for seed in (0, 1):
            row = "pop pop" if strategy == "pop" else f"{strategy} tuned"
            seed_run(tune, chosen_config(choose(trials)), seed, BOARD_RANKS[(row, seed)], wall=2.0 + 2 * seed)
        if strategy != "pop":
            where, seeds = (defaults, (0, 1, 2)) if strategy == "sasrec" else (tune, (0, 1))
            for seed in seeds:
                seed_run(where, default_config(trials[0].config), seed, BOARD_RANKS[(f"{strategy} default", seed)],
                         n_epochs=4 + seed, wall=20.0 + 5 * seed)
    yield tmp_path / "tune.db", tmp_path / "defaults.db"
    tune.close()
    defaults.close()


def table_rows(text):
    """``{first cell: cells}`` of every markdown table line."""
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")[1:-1]]
                                              for line in text.splitlines() if line.startswith("| "))}


def test_tuned_rows_sit_beside_their_default_rows_with_a_default_vs_tuned_summary(tuned_stores, tmp_path):
    tune, defaults = tuned_stores
    tests = tmp_path / "tests.csv"
    out = invoke("leaderboard", "--store", tune, "--tuned", "t", "--defaults", defaults, "--metrics", "NDCG",
                 "--k", "20", "--significance", tests)
    assert out.exit_code == 0, out.output
    text = out.output
    rows = table_rows(text)
    sasrec_tuned = next(label for label in rows if label.startswith("sasrec (layers=1, train.epochs=3"))
    assert rows["sasrec (default)"][-1] == "3" and rows[sasrec_tuned][-1] == "2"          # seeds
    assert not any(label.startswith("gru4rec (default") for label in rows)     # its runs are in the other store
    assert "each row not labelled `(default…)` is the configuration chosen for its strategy" in text
    assert f"ordinary runs read from {defaults}; they trained at their own epoch budget (train.epochs 200, with " \
           "early stopping), while the tuned seed runs were capped at the tune's 3 epochs." in text
    assert "from 2 trials per strategy including the default configuration (pop: one, nothing to search)" in text
    # the default row takes part in the table's tests like any row
    compared = pd.read_csv(tests)
    assert "sasrec (default)" in set(compared.best) | set(compared.other)

    summary = table_rows(text.split("Default vs tuned", 1)[1].split("Tuning cost", 1)[0])
    default = 100 * np.mean([ndcg20(BOARD_RANKS[("sasrec default", s)]).mean() for s in (0, 1, 2)])
    tuned = 100 * np.mean([ndcg20(BOARD_RANKS[("sasrec tuned", s)]).mean() for s in (0, 1)])
    line = summary["sasrec"]
    assert line[0].startswith(f"{default:.2f} ± ") and line[1].startswith(f"{tuned:.2f} ± ")
    assert line[2].split()[0] == f"{tuned - default:+.2f}"                     # tuned minus default means
    assert line[3] == "seeds 0, 1"                                              # the seeds both rows have
    paired = [np.mean([ndcg20(BOARD_RANKS[(f"sasrec {row}", s)]) for s in (0, 1)], axis=0) for row in ("tuned",
                                                                                                      "default")]
    p = stats.ttest_rel(*paired).pvalue          # one strategy compared: Holm leaves it as it is
    assert line[4] == f"{p:.3g}" and (line[2].endswith("†") == (p < 0.05 and float(line[5]) < 0.05))
    assert line[-1] == "dim=64, dropout=0.5, layers=1, train.lr=0.005, train.weight_decay=0"
    assert summary["gru4rec"][:3] == ["-", summary["gru4rec"][1], "-"] and summary["gru4rec"][1] != "-"
    assert f"No finished run of the default configuration in {defaults}: gru4rec." in text
    assert summary["pop"][0] == "= tuned" and summary["pop"][2] == "+0.00"
    assert "The chosen configuration is the default one (one row, the same runs, for both): pop." in text
    pop = 100 * np.mean([ndcg20(BOARD_RANKS[("pop pop", s)]).mean() for s in (0, 1)])
    after = " > ".join(["pop", "sasrec"] if pop > tuned else ["sasrec", "pop"])
    before = " > ".join(["pop", "sasrec"] if pop > default else ["sasrec", "pop"])
    assert before != after and (f"By default NDCG@20: {before}. By tuned NDCG@20: {after}. Pairs of strategies in "
                                "the other order after tuning: 1 of 1.") in text


def test_the_cost_table_sets_each_tune_against_one_run_of_its_default_configuration(tuned_stores):
    tune, defaults = tuned_stores
    out = invoke("leaderboard", "--store", tune, "--tuned", "t", "--defaults", defaults, "--metrics", "NDCG",
                 "--k", "20")
    assert out.exit_code == 0, out.output
    costs = table_rows(out.output.split("Tuning cost per strategy", 1)[1])
    # sasrec: trials 1 + 2 epochs in 10 + 30 s; default runs (defaults.db) 5 epochs, 25 s on average
    assert costs["sasrec"] == ["2 (1)", "3", f"{40 / 60:.1f}", "5.0", f"{25 / 60:.1f}", "0.60", "1.60"]
    # gru4rec's default runs are not in --defaults: nothing to set its tune against
    assert costs["gru4rec"] == ["2 (1)", "3", f"{40 / 60:.1f}", "-", "-", "-", "-"]
    # pop: its default is chosen, so its seed runs are its default runs (1 epoch, 3 s on average)
    assert costs["pop"] == ["1 (0)", "1", f"{10 / 60:.1f}", "1.0", f"{3 / 60:.1f}", "1.00", f"{10 / 3:.2f}"]


def test_a_strategy_without_seed_runs_yet_is_named_with_its_chosen_point_and_validation_values(tmp_path):
    tune = ResultStore(tmp_path / "tune.db")
    for strategy in ("sasrec", "pop"):
        part = tiny_part(strategy)
        store_trial(tune, part, dict(part.default), epochs(0.10))
        if part.space:
            store_trial(tune, part, {**part.default, "train.lr": 0.005, "layers": 1}, epochs(0.05, 0.20))
    pop = [t for t in stored_trials(tune, "t") if t.config["strategy"] == "pop"]
    seed_run(tune, chosen_config(choose(pop)), 0, BOARD_RANKS[("pop pop", 0)])
    out = invoke("leaderboard", "--store", tmp_path / "tune.db", "--tuned", "t", "--metrics", "NDCG", "--k", "20")
    assert out.exit_code == 0, out.output
    assert ("Not shown (no finished seed run yet): sasrec (chosen so far: dim=64, dropout=0.5, layers=1, "
            "train.lr=0.005, train.weight_decay=0; validation NDCG@20 20.00 %, the default trial's 10.00 %).") \
        in out.output


def test_the_default_rows_come_from_the_tune_store_unless_defaults_names_another(tuned_stores):
    tune, defaults = tuned_stores
    out = invoke("leaderboard", "--store", tune, "--tuned", "t", "--metrics", "NDCG", "--k", "20")
    assert out.exit_code == 0, out.output
    rows = table_rows(out.output.split("Default vs tuned", 1)[0])
    assert rows["gru4rec (default)"][-1] == "2" and "sasrec (default)" not in rows
    assert f"No finished run of the default configuration in {tune}: sasrec." in out.output
    only = invoke("leaderboard", "--store", tune, "--tuned", "t", "--strategy", "sasrec", "--defaults", defaults)
    assert only.exit_code == 0 and set(table_rows(only.output.split("Default vs tuned", 1)[0])) >= \
        {"strategy", "sasrec (default)"} and "gru4rec" not in only.output.split("Default vs tuned", 1)[1]
    assert set(table_rows(only.output.split("Tuning cost per strategy", 1)[1])) == {"strategy", "sasrec"}


def test_two_tuned_parts_of_one_strategy_are_told_apart_by_their_fixed_options(tmp_path):
    from fusionbench.report.tuned import tuned_board

    store = ResultStore(tmp_path / "s.db")
    for sets in ({}, {"dim": "32"}):
        part = make_part(settings(), "sasrec", {**TINY, **sets}, {}, "test", dataset="synthetic")
        store_trial(store, part, dict(part.default), epochs(0.1))
        seed_run(store, chosen_config(stored_trials(store, "t")[-1]), 0, BOARD_RANKS[("sasrec tuned", 0)])
    board = tuned_board(store, "t", store)
    assert [p.label for p in board.parts] == ["sasrec", "sasrec (dim=32)"]
    assert board.parts[1].default_label == "sasrec (default, dim=32)" and all(p.default_tried for p in board.parts)


@pytest.mark.parametrize("args, message", [
    (("--tuned", "t", "--defaults", "nowhere.db"), "--defaults nowhere.db: no such file"),
    (("--defaults", "DEFAULTS"), "--defaults needs --tuned"),
    (("--tuned", "t", "--defaults", "DEFAULTS", "--across"), "--defaults adds default rows to the tuned leaderboard"),
])
def test_defaults_errors_name_the_option(tuned_stores, args, message):
    tune, defaults = tuned_stores
    out = invoke("leaderboard", "--store", tune, *(defaults if a == "DEFAULTS" else a for a in args))
    assert out.exit_code == 2 and message in out.output, out.output


# -- the command on Ray ----------------------------------------------------------------------------
TUNE = ("tune", "--strategy", "sasrec,late", "--dataset", "synthetic", "--budget", "4", "--max-epochs", "3",
        "--grace-epochs", "1", "--seeds", "0", *(a for k, v in TINY.items() for a in ("--set", f"{k}={v}")),
        "--quiet")


@pytest.fixture(scope="module")
def ray_session():
    pytest.importorskip("ray.tune", reason="ray[tune] is not installed: pip install 'fusionbench[tune]'")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def trial_rows(path):
    return ResultStore(path).runs(status=None).query("tune == tune")        # trials: tune is not NULL


def default_trials(path, strategy):
    """How many stored trials of ``strategy`` were made at its default point."""
    part = tiny_part(strategy)
    return sum(same_point(part, t.config, part.default) for t in stored_trials(ResultStore(path), "synthetic_loo")
               if t.config["strategy"] == strategy)


@pytest.mark.timeout(1200)   # about 50 s on an idle 2-core machine; Ray's start-up and trials slow down under load
def test_tune_runs_stores_trials_resumes_and_reports_the_seed_runs(ray_session, tmp_path):
    """The done-when command of issue 26 on a tiny synthetic set: 4 trials of sasrec and late, the first at
    the defaults, each a stored run with its epochs and no test metric; each chosen configuration then
    runs on seed 0 before the next strategy's trials, and `--archive` holds every finished run; a killed
    tune resumes without training its finished trials again or the default twice; a planted test-best
    trial is not chosen; `leaderboard --tuned` and an exported store show the same rows."""
    store, kept = tmp_path / "tune.db", tmp_path / "kept.jsonl.gz"
    args = (*TUNE, "--store", store, "--scratch", tmp_path / "scratch", "--archive", kept)
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert invoke("store", "import", kept, "--store", tmp_path / "kept.db").exit_code == 0   # --archive kept up
    assert len(ResultStore(tmp_path / "kept.db").runs()) == len(ResultStore(store).runs()) == 8 + 2
    trials = trial_rows(store)
    assert len(trials) == 8 and set(trials.status) == {"done"} and set(trials.tune) == {"synthetic_loo"}
    results = ResultStore(store)
    for row in trials.itertuples():
        history = json.loads(row.history)
        assert 1 <= len(history) <= 3 and json.loads(row.config)["train"]["epochs"] == 3
        assert results.metrics(row.id, "test") == {} and results.metrics(row.id, "valid")       # never tested
        assert row.asha_stopped in (0, 1) and (row.asha_stopped == 0 or len(history) < 3)
        with pytest.raises(KeyError):
            results.ranks(row.id, "test")
    assert "tune cost: 8 trials trained" in first.output
    assert default_trials(store, "sasrec") == default_trials(store, "late") == 1
    seeds = results.runs(status=None).query("tune != tune")
    assert sorted(seeds.strategy) == ["late", "sasrec"] and set(seeds.status) == {"done"}
    # each strategy's seed runs come right after its own trials: sasrec's row is complete before late's tune
    assert seeds[seeds.strategy == "sasrec"].id.max() < trials[trials.strategy == "late"].id.min()
    for strategy in ("sasrec", "late"):
        chosen = choose([t for t in stored_trials(results, "synthetic_loo") if t.config["strategy"] == strategy])
        seed_config = json.loads(seeds[seeds.strategy == strategy].config.iloc[0])
        assert seed_config == {**{k: v for k, v in chosen.config.items() if k != "tune"}, "seed": 0}

    # a kill: one sasrec trial was still running (no checkpoint), another had not started
    sasrec = trials[trials.strategy == "sasrec"].sort_values("id")
    running, gone, kept = sasrec.id.iloc[0], sasrec.id.iloc[1], sasrec.id.iloc[2:]
    db = sqlite3.connect(store)
    db.execute("UPDATE runs SET status='running' WHERE id=?", (int(running),))
    db.execute("DELETE FROM runs WHERE id=?", (int(gone),))
    db.commit()
    db.close()
    before = trial_rows(store).set_index("id")
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "tune cost: 2 trials trained" in again.output          # the killed one and one new; nothing else
    after = trial_rows(store).set_index("id")
    for run_id in [*kept, *trials[trials.strategy == "late"].id]:
        assert after.loc[run_id].finished_at == before.loc[run_id].finished_at     # not trained again
    assert (after.strategy == "sasrec").sum() == 4 and set(after.status) == {"done"}
    assert default_trials(store, "sasrec") == default_trials(store, "late") == 1

    # a planted configuration, best on test but worse on validation than the chosen one, is not chosen
    results = ResultStore(store)
    late = [t for t in stored_trials(results, "synthetic_loo") if t.config["strategy"] == "late"]
    chosen = choose(late)
    plant = min(late, key=lambda t: t.best())
    db = sqlite3.connect(store)
    db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)",
                   [(plant.run_id, "test", m, k, 1.0) for m in ("HR", "NDCG", "MRR") for k in (5, 10, 20)])
    db.commit()
    db.close()
    third = invoke(*args)
    assert third.exit_code == 0 and "tune cost: no trial trained" in third.output, third.output
    assert choose([t for t in stored_trials(ResultStore(store), "synthetic_loo")
                   if t.config["strategy"] == "late"]).run_id == chosen.run_id != plant.run_id

    board = invoke("leaderboard", "--store", store, "--tuned", "synthetic_loo", "--k", "5,10")
    assert board.exit_code == 0, board.output
    assert "Tuned (`synthetic_loo`): each row is the configuration chosen for its strategy by validation NDCG@20" \
        in board.output and "from 4 trials per strategy including the default configuration, tpe search, ASHA " \
        "scheduler" in board.output
    table, summary = board.output.split("Default vs tuned", 1)
    rows = [line for line in table.splitlines() if line.startswith("| late") or line.startswith("| sasrec")]
    assert len(rows) == 2 and f"No finished run of the default configuration in {store}: sasrec, late." in summary
    plain = invoke("leaderboard", "--store", store, "--k", "5,10")          # trials are never rows
    ordinary = ResultStore(store).runs().query("tune != tune")
    assert plain.exit_code == 0 and len([ln for ln in plain.output.splitlines() if ln.startswith("| ")]) \
        == 1 + len(ordinary)

    shown = invoke("store", "show", "--store", store)
    assert shown.output.count("| synthetic_loo") == 8 and "synthetic_loo, ASHA-stopped" in shown.output
    archive = tmp_path / "a.jsonl.gz"
    assert invoke("store", "export", "--store", store, "--out", archive, "--ranks", "test").exit_code == 0
    assert invoke("store", "import", archive, "--store", tmp_path / "copy.db").exit_code == 0
    copy = tmp_path / "copy.db"
    copied = invoke("leaderboard", "--store", copy, "--tuned", "synthetic_loo", "--k", "5,10")
    assert copied.output.split("\n", 1)[1] == board.output.split("\n", 1)[1].replace(str(store), str(copy))



@pytest.mark.timeout(600)    # about 35 s on an idle 2-core machine, most of it Ray's start-up
@pytest.mark.parametrize("signal_name, expected, message", [("SIGINT", 1, "Aborted!"),
                                                            ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_stops_the_whole_tune_and_leaves_the_trial_resumable(tmp_path, signal_name, expected,
                                                                                 message):
    """Ctrl-C or ``kill`` while the first trial trains stops the command: no choice is made from the
    trials finished so far (Ray Tune's own Ctrl-C handler would end the part quietly and let the tune go
    on to choose and to run seeds) and the trial stays ``running`` with its checkpoint, for the same
    command to resume. SIGTERM reaches the command through Ray, which installs its own handlers."""
    import signal

    pytest.importorskip("ray.tune", reason="ray[tune] is not installed: pip install 'fusionbench[tune]'")
    store_path, scratch = tmp_path / "tune.db", tmp_path / "scratch"
    fixed = {**TINY, "train.patience": "500"}
    args = ["tune", "--strategy", "sasrec", "--dataset", "synthetic", "--budget", "2", "--max-epochs", "400",
            "--grace-epochs", "400", "--seeds", "0", "--concurrent", "1",
            *(a for k, v in fixed.items() for a in ("--set", f"{k}={v}")), "--store", str(store_path),
            "--scratch", str(scratch), "--quiet"]

    def first_trial_checkpointed() -> bool:
        return store_path.exists() and bool(list(scratch.glob("checkpoints/*.pt"))) and \
            (ResultStore(store_path).runs(status=None)["status"] == "running").any()

    status, out, err = interrupt_when(args, first_trial_checkpointed, getattr(signal, signal_name), wait_s=480)
    assert status == expected and message in err, out + err
    assert "trials done" not in out and "tune cost" not in out and "seed runs" not in out, out
    [trial] = ResultStore(store_path).runs(status=None).itertuples()
    assert trial.status == "running" and trial.tune == "synthetic_loo"
    assert (scratch / "checkpoints" / f"{trial.config_hash}.pt").exists()

def test_a_changed_setting_under_the_same_name_is_an_error(tmp_path):
    store = tmp_path / "tune.db"
    part = tiny_part()
    store_trial(ResultStore(store), part, {"train.lr": 0.001, "dropout": 0.1, "dim": 16, "layers": 1}, epochs(0.1))
    out = invoke("tune", "--strategy", "sasrec", "--dataset", "synthetic", "--name", "t", "--budget", "4",
                 "--max-epochs", "5", "--grace-epochs", "1",
                 *(a for k, v in TINY.items() for a in ("--set", f"{k}={v}")), "--store", store)
    assert out.exit_code == 2 and "tune 't' in" in out.output and "has trials of sasrec made with other settings" \
        in out.output and "tune.max_epochs" in out.output and "give another --name" in out.output


def test_the_store_callback_makes_every_trial_a_run_and_marks_what_asha_stopped(tmp_path):
    """The driver's side of a trial, without running Ray: results become a run's history epoch by epoch; a
    trial that ends before its last epoch is ASHA-stopped; a failure result or a raised error is stored
    as failed; a replay or a duplicate of a stored run writes nothing; the ``on_stored`` hook runs after
    each write."""
    pytest.importorskip("ray.tune", reason="ray[tune] is not installed: pip install 'fusionbench[tune]'")
    from types import SimpleNamespace

    from fusionbench.tune import TuneCost, failure_result
    from fusionbench.tune_ray import StoreCallback

    store = ResultStore(tmp_path / "s.db")
    part = tiny_part()
    cost = TuneCost()
    stored = []                                                # the `tune --archive` hook: once per stored trial
    callback = StoreCallback(part, store, "abc", tmp_path / "checkpoints", cost, SimpleNamespace(update=lambda n: None),
                             on_stored=lambda: stored.append(len(store.runs(status=None).query("status != 'running'"))))
    points = {name: {"train.lr": lr, "dropout": 0.1, "dim": 16, "layers": 1}
              for name, lr in (("stopped", 0.001), ("whole", 0.002), ("failed", 0.003), ("raised", 0.004))}
    trials = {name: SimpleNamespace(trial_id=name, config=point, error_file=None) for name, point in points.items()}

    def result(epoch, value, last=False, **extra):
        return {"epoch": epoch, "loss": 1.0, "seconds": 0.5, "valid": {"NDCG@20": value, "HR@20": 2 * value},
                "last": last, "train_seconds": 0.6, "setup_seconds": 0.1, **extra}

    for epoch, value in ((1, 0.1), (2, 0.3)):
        callback.on_trial_result(0, [], trials["stopped"], result(epoch, value))
    callback.on_trial_complete(0, [], trials["stopped"])
    for epoch, value in ((1, 0.2), (2, 0.4), (3, 0.35)):
        callback.on_trial_result(0, [], trials["whole"], result(epoch, value, last=epoch == 3, wait_seconds=0.25))
    duplicate = SimpleNamespace(trial_id="twin", config=points["whole"], error_file=None)
    callback.on_trial_result(0, [], duplicate, result(1, 0.9))        # the same point while it runs: not stored
    callback.on_trial_complete(0, [], duplicate)
    callback.on_trial_complete(0, [], trials["whole"])
    replay = SimpleNamespace(trial_id="replay", config=points["whole"], error_file=None)
    callback.on_trial_result(0, [], replay, result(1, 0.2, replayed=True))     # a replay of a stored trial
    callback.on_trial_complete(0, [], replay)
    callback.on_trial_result(0, [], trials["failed"], result(1, 0.05))
    callback.on_trial_result(0, [], trials["failed"], failure_result("non-finite loss at epoch 2", 2, None))
    callback.on_trial_complete(0, [], trials["failed"])
    callback.on_trial_error(0, [], trials["raised"])

    runs = store.runs(status=None).set_index("id")
    by_lr = {json.loads(row.config)["train"]["lr"]: row for row in runs.itertuples()}
    stopped, whole, failed, raised = (by_lr[points[n]["train.lr"]] for n in ("stopped", "whole", "failed", "raised"))
    assert (stopped.status, stopped.asha_stopped, stopped.best_epoch) == ("done", 1, 2)
    assert (whole.status, whole.asha_stopped, whole.best_epoch) == ("done", 0, 2)
    assert store.metrics(whole.Index, "valid") == {"NDCG@20": 0.4, "HR@20": 0.8}
    assert store.metrics(whole.Index, "test") == {}
    assert [e["valid"]["NDCG@20"] for e in json.loads(whole.history)] == [0.2, 0.4, 0.35]
    assert [e["wait_seconds"] for e in json.loads(whole.history)] == [0.25] * 3       # the epoch's crowding
    assert set(json.loads(whole.history)[0]) == {"epoch", "loss", "seconds", "wait_seconds", "valid"}
    assert "wait_seconds" not in json.loads(stopped.history)[0]     # measured on Linux only: kept when reported
    assert failed.status == "failed" and failed.error == "non-finite loss at epoch 2"
    assert len(json.loads(failed.history)) == 1
    assert raised.status == "failed" and raised.error == "Ray trial failed: unknown error"
    assert len(runs) == 4 and set(runs.tune) == {"t"}
    assert callback.errors == [f"sasrec trial {raised.config_hash}: unknown error"]
    assert cost.epochs == 7 and cost.training_seconds == pytest.approx(0.6 * 7)   # replays and failures: none
    assert stored == [1, 2, 3, 4]                              # after each write; replays and duplicates: none
