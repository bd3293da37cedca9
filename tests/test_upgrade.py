"""`fusionbench store upgrade`: stored runs keep their identity when options are added."""
import json
import sqlite3

import pandas as pd
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.runner import run_experiment, training_config
from fusionbench.store import ResultStore, canonical_json, config_hash
from fusionbench.store.upgrade import added_keys, upgrade_store
from test_stress import request


def as_if_written_before(path, run_id, edit):
    """Rewrite one stored run as an older version would have stored it (``edit`` changes its config in
    place); its checkpoint (run hash) and kept weights and ``trained_from`` references (training-config
    hash) are renamed to the old hashes. Returns the old run hash."""
    db = sqlite3.connect(path)
    old_hash, text = db.execute("SELECT config_hash, config FROM runs WHERE id=?", (run_id,)).fetchone()
    config = json.loads(text)
    old_trained = config_hash(training_config(config))
    edit(config)
    new_old, new_old_trained = config_hash(config), config_hash(training_config(config))
    with db:
        db.execute("UPDATE runs SET config_hash=?, config=? WHERE id=?", (new_old, canonical_json(config), run_id))
        db.execute("UPDATE runs SET trained_from=? WHERE trained_from=?", (new_old_trained, old_trained))
    db.close()
    for folder, before, after in (("checkpoints", old_hash, new_old), ("models", old_trained, new_old_trained)):
        file = path.parent / folder / f"{before}.pt"
        if file.exists():
            file.rename(file.with_name(f"{after}.pt"))
    return new_old


def test_added_keys_separates_additions_from_changes():
    old = {"a": 1, "o": {"x": [1, 2], "y": 0.5}, "gone": 1}
    new = {"a": 1, "o": {"x": (1, 2), "y": 0.25, "z": True}, "b": 2}
    assert added_keys(old, new) == (["b", "o.z"], ["gone", "o.y"])


def test_upgrade_gives_old_runs_the_identity_the_current_code_gives_them(tmp_path):
    path = tmp_path / "r.db"
    clean = run_experiment(request("early"), ResultStore(path), progress=False)
    stressed = run_experiment(request("early", PerturbationRequest("missing", 1.0, "test")), ResultStore(path),
                              progress=False)
    # as stored before the options 'ids' (strategy) and 'grad_clip' (train) existed
    drop = lambda config: (config["strategy_options"].pop("ids"), config["train"].pop("grad_clip"))  # noqa: E731
    old_clean = as_if_written_before(path, clean.run_id, drop)
    old_stressed = as_if_written_before(path, stressed.run_id, drop)
    assert not (tmp_path / "models" / f"{clean.config_hash}.pt").exists()
    assert not run_experiment(request("early"), ResultStore(tmp_path / "probe" / "r.db"), progress=False).skipped

    out = CliRunner().invoke(main, ["store", "upgrade", "--store", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "2 would be upgraded, 0 already current, 0 kept" in out.output
    assert "strategy_options.ids, train.grad_clip" in out.output
    assert set(ResultStore(path).runs().config_hash) == {old_clean, old_stressed}        # dry run wrote nothing

    results = {u.run_id: u for u in upgrade_store(ResultStore(path))}
    assert (results[clean.run_id].old_hash, results[clean.run_id].new_hash) == (old_clean, clean.config_hash)
    assert results[clean.run_id].added == ("strategy_options.ids", "train.grad_clip")
    runs = ResultStore(path).runs().set_index("id")
    assert runs.config_hash[clean.run_id] == clean.config_hash
    assert runs.config_hash[stressed.run_id] == stressed.config_hash
    assert runs.trained_from[stressed.run_id] == clean.config_hash                       # references follow
    stored = json.loads(runs.config[clean.run_id])
    assert stored == {**clean.config, "dataset_checksum": clean.config["dataset_checksum"]}
    assert (tmp_path / "models" / f"{clean.config_hash}.pt").exists()
    again = run_experiment(request("early"), ResultStore(path), progress=False)
    assert again.skipped and again.run_id == clean.run_id                                # found, not rerun
    assert {u.status for u in upgrade_store(ResultStore(path))} == {"current"}           # idempotent


def test_kept_weights_of_a_stress_cell_without_a_clean_run_follow_its_training_config(tmp_path):
    """A test-only cell that trained keeps its weights under the hash of its training config (the clean
    config), which is no stored run's hash: the upgrade must move them all the same."""
    path = tmp_path / "r.db"
    cell = run_experiment(request("early", PerturbationRequest("missing", 1.0, "test")), ResultStore(path),
                          progress=False)
    trained = config_hash(training_config(cell.config))
    assert trained != cell.config_hash and (tmp_path / "models" / f"{trained}.pt").exists()
    as_if_written_before(path, cell.run_id, lambda config: config["train"].pop("grad_clip"))
    assert not (tmp_path / "models" / f"{trained}.pt").exists()
    upgrade_store(ResultStore(path))
    assert (tmp_path / "models" / f"{trained}.pt").exists()
    other = run_experiment(request("early", PerturbationRequest("missing", 0.5, "test")), ResultStore(path),
                           progress=False)
    assert ResultStore(path).runs().set_index("id").trained_from[other.run_id] == trained   # reused, not retrained


def test_runs_whose_values_no_longer_resolve_are_kept_and_reported(tmp_path):
    path = tmp_path / "r.db"
    run = run_experiment(request("sasrec"), ResultStore(path), progress=False)
    old = as_if_written_before(path, run.run_id, lambda c: c["strategy_options"].update(retired_option=3))
    out = CliRunner().invoke(main, ["store", "upgrade", "--store", str(path)])
    assert out.exit_code == 0, out.output
    assert "0 upgraded, 0 already current, 1 kept" in out.output and "does not resolve" in out.output
    assert "retired_option" in out.output
    assert ResultStore(path).runs().config_hash.tolist() == [old]
    assert not pd.isna(ResultStore(path).runs().config.iloc[0])


def test_missing_store_is_a_clear_error(tmp_path):
    out = CliRunner().invoke(main, ["store", "upgrade", "--store", str(tmp_path / "none.db")])
    assert out.exit_code == 2 and "error: --store: no results file at" in out.output


def test_old_runs_of_causal_strategies_record_the_length_grouped_batches_they_trained_on(tmp_path):
    """Before ``train.batching`` existed every causal-row run grouped its rows by length: the upgrade says so,
    and a strategy that trains on prefix samples (untouched by the option) gets the default."""
    path = tmp_path / "r.db"
    causal = run_experiment(request("sasrec"), ResultStore(path), progress=False)
    prefix = run_experiment(request("srgnn", strategy_options={"dim": 16}), ResultStore(path), progress=False)
    drop = lambda config: config["train"].pop("batching")  # noqa: E731
    as_if_written_before(path, causal.run_id, drop)
    as_if_written_before(path, prefix.run_id, drop)
    results = {u.run_id: u for u in upgrade_store(ResultStore(path))}
    assert results[causal.run_id].status == results[prefix.run_id].status == "upgraded"
    configs = ResultStore(path).runs().set_index("id").config
    assert json.loads(configs[causal.run_id])["train"]["batching"] == "length"
    assert json.loads(configs[prefix.run_id])["train"]["batching"] == "uniform"
    assert ResultStore(path).runs().set_index("id").config_hash[prefix.run_id] == prefix.config_hash
    assert not run_experiment(request("sasrec"), ResultStore(path), progress=False).skipped  # uniform: new run
    found = run_experiment(request("sasrec", train_options={"epochs": 2, "lr": 0.01, "batching": "length"}),
                           ResultStore(path), progress=False)
    assert found.skipped and found.run_id == causal.run_id


def mmsr_request(**overrides):
    return request("mmsr", strategy_options={"dim": 16}, **overrides)


def test_old_mmsr_runs_move_their_update_rule_to_the_han_aggregator_option(tmp_path):
    """MMSR's own ``update`` is gone (issue 23). Stored mmsr runs held it beside ``agg.update``, the non-gate one
    winning: the upgrade folds it into ``agg.update``, so the run of the default command and the run of a
    Table 4 row are found again under the one option left; a pair that never built a model is kept."""
    path = tmp_path / "r.db"
    default = run_experiment(mmsr_request(), ResultStore(path), progress=False)
    sync = run_experiment(mmsr_request(aggregator_options={"update": "sync"}), ResultStore(path), progress=False)
    gcn = run_experiment(mmsr_request(aggregator="gcn"), ResultStore(path), progress=False)

    def before(rule):
        def edit(config):                       # as stored while MMSR had update, its table 4 rows set there
            config["strategy_options"]["update"] = rule
            if config["aggregator"] == "han":
                config["aggregator_options"]["update"] = "gate"
        return edit

    old = {default.run_id: as_if_written_before(path, default.run_id, before("gate")),
           sync.run_id: as_if_written_before(path, sync.run_id, before("sync")),
           gcn.run_id: as_if_written_before(path, gcn.run_id, before("gate"))}
    assert not set(old.values()) & {default.config_hash, sync.config_hash, gcn.config_hash}
    labels_before = labels(path)
    assert any(label.startswith("mmsr + han (") and "agg.update=sync" in label for label in labels_before)

    out = CliRunner().invoke(main, ["store", "upgrade", "--store", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "3 would be upgraded" in out.output and "strategy_options.update (removed)" in out.output

    results = {u.run_id: u for u in upgrade_store(ResultStore(path))}
    assert {u.status for u in results.values()} == {"upgraded"}
    assert results[sync.run_id].removed == ("strategy_options.update",)
    hashes = ResultStore(path).runs().set_index("id").config_hash
    for run in (default, sync, gcn):
        assert hashes[run.run_id] == run.config_hash
    assert (tmp_path / "models" / f"{config_hash(training_config(sync.config))}.pt").exists()   # weights follow
    again = run_experiment(mmsr_request(aggregator_options={"update": "sync"}), ResultStore(path), progress=False)
    assert again.skipped and again.run_id == sync.run_id                                # found, not rerun
    assert {u.status for u in upgrade_store(ResultStore(path))} == {"current"}
    assert labels(path) == labels_before                  # reports label old and upgraded runs alike


def labels(path):
    """Leaderboard row labels of a store's done runs, in run order."""
    from fusionbench.report.collect import done_runs, variant_labels

    runs = sorted(done_runs(ResultStore(path), None, None), key=lambda r: r.run_id)
    return variant_labels([run.config for run in runs])


def test_an_old_mmsr_update_pair_that_never_built_a_model_is_kept(tmp_path):
    path = tmp_path / "r.db"
    run = run_experiment(mmsr_request(), ResultStore(path), progress=False)

    def disagree(config):
        config["strategy_options"]["update"] = "he"
        config["aggregator_options"]["update"] = "ho"

    old = as_if_written_before(path, run.run_id, disagree)
    [result] = upgrade_store(ResultStore(path))
    assert result.status == "kept" and "update=he and agg.update=ho disagree" in result.reason
    assert list(ResultStore(path).runs().config_hash) == [old]
