"""`fusionbench store show | curves | remove`: what a store holds, learning curves, and forgetting runs with
their files."""
import json
import sqlite3

import matplotlib.image
import torch
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.deadline import CellCost
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.runner import resolve, run_experiment, training_config
from fusionbench.store import ResultStore, config_hash
from test_stress import request


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def a_store(tmp_path):
    """A clean early run, a test-only stress cell evaluating its weights, and an abandoned 'running' cell
    with a resume checkpoint. Returns (path, clean outcome, stressed outcome, running id, running hash)."""
    path = tmp_path / "r.db"
    clean = run_experiment(request("early"), ResultStore(path), progress=False)
    stressed = run_experiment(request("early", PerturbationRequest("missing", 1.0, "test")), ResultStore(path),
                              progress=False)
    config = resolve(request("sasrec"))
    config["dataset_checksum"] = "abc"
    running = ResultStore(path).start(config, "abc", {}, "rev")
    digest = config_hash(config)
    (tmp_path / "checkpoints" / f"{digest}.pt").write_bytes(b"resume state")
    return path, clean, stressed, running, digest


def count(path, table, run_id):
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id=?", (run_id,)).fetchone()[0]
    finally:
        db.close()


def test_show_lists_runs_with_label_perturbation_and_state(tmp_path):
    path, clean, stressed, running, _ = a_store(tmp_path)
    out = invoke("store", "show", "--store", path)
    assert out.exit_code == 0, out.output
    lines = {int(line.split("|")[1]): line for line in out.output.splitlines()[2:]}
    assert set(lines) == {clean.run_id, stressed.run_id, running}
    assert "| done " in lines[clean.run_id] and "| early (" in lines[clean.run_id]
    assert "| synthetic (max_len=10, n_codes=3, n_users=80, per_cell=2) / loo |" in lines[clean.run_id]
    history = clean.result.history
    assert f"{clean.result.best_epoch} / {len(history)}" in lines[clean.run_id]
    assert "missing p=1 (test" in lines[stressed.run_id]
    assert "running" in lines[running] and "resumable" in lines[running] and "| sasrec (" in lines[running]
    only = invoke("store", "show", "--store", path, "--status", "running")
    assert only.exit_code == 0 and len(only.output.splitlines()) == 3 and "resumable" in only.output
    assert "no runs with status 'failed'" in invoke("store", "show", "--store", path, "--status", "failed").output


def test_show_says_where_a_finished_runs_training_loss_ran_away(tmp_path):
    path, clean, _, _, _ = a_store(tmp_path)
    history = [{"epoch": 1, "loss": 9.1, "seconds": 1.0, "valid": {"NDCG@20": 0.003}},
               {"epoch": 2, "loss": 5736.1, "seconds": 1.0, "valid": {"NDCG@20": 0.002}}]
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE runs SET history=?, best_epoch=1 WHERE id=?", (json.dumps(history), clean.run_id))
    db.close()
    out = invoke("store", "show", "--store", path, "--status", "done")
    assert out.exit_code == 0, out.output
    [line] = [line for line in out.output.splitlines() if line.startswith(f"| {clean.run_id:>4} ")]
    assert "| 1 / 2, diverged at 2 " in line
    assert "diverged" not in out.output.replace(line, "")      # no other run reads as diverged


def test_show_reads_a_running_runs_progress_from_its_checkpoint(tmp_path):
    path, _, _, running, digest = a_store(tmp_path)
    epochs = [{"epoch": n, "loss": 1.0, "seconds": s, "valid": {"NDCG@20": v}}
              for n, s, v in ((1, 30.0, 0.1), (2, 50.0, 0.3), (3, 40.0, 0.2))]
    torch.save({"history": epochs, "best_epoch": 2, "elapsed": 150.0}, tmp_path / "checkpoints" / f"{digest}.pt")
    out = invoke("store", "show", "--store", path, "--status", "running")
    assert out.exit_code == 0, out.output
    [line] = [line for line in out.output.splitlines() if line.startswith(f"| {running:>4} ")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[-4:-1] == ["resumable: 2 / 3 so far", "40.0", "2.5"]    # best / epochs, s per epoch, minutes
    assert cells[-1] == ""                          # no finished sasrec run in the store to estimate from


def test_show_gives_a_running_runs_minutes_left_as_the_dry_run_estimates_them(tmp_path):
    """Seed 1 of the clean early run, one epoch into its two, in a store of its own: its minutes left are
    CellCost's estimate from the store named by --estimate-from (seed 0's finished run, at seed 1's own
    pace), and empty without it."""
    path, clean, _, _, _ = a_store(tmp_path)
    config = resolve(request("early", seed=1))
    config["dataset_checksum"] = clean.config["dataset_checksum"]
    mine = ResultStore(tmp_path / "mine" / "runs.db")
    running = mine.start(config, config["dataset_checksum"], {}, "rev")
    digest = config_hash(config)
    epoch = {"epoch": 1, "loss": 1.0, "seconds": 600.0, "valid": {"NDCG@20": 0.1}}
    mine.checkpoint_path(digest).parent.mkdir()
    torch.save({"history": [epoch], "best_epoch": 1, "elapsed": 600.0}, mine.checkpoint_path(digest))
    expected = CellCost(mine, others=[ResultStore(path)]).estimate(config, digest,
                                                                    config_hash(training_config(config)))
    assert expected.seconds > 60 and expected.basis.startswith("runs of its settings, at its own pace")

    def left(*more):
        out = invoke("store", "show", "--store", tmp_path / "mine" / "runs.db", "--status", "running", *more)
        [line] = [line for line in out.output.splitlines() if line.startswith(f"| {running:>4} ")]
        return line.strip("|").split("|")[-1].strip()

    assert left() == ""                                          # nothing in its own store to estimate from
    assert left("--estimate-from", path) == f"{expected.seconds / 60:.1f}"
    out = invoke("store", "show", "--store", path, "--estimate-from", tmp_path / "missing.db")
    assert out.exit_code == 2 and f"--estimate-from {tmp_path / 'missing.db'}: no such file" in out.output


def test_remove_forgets_runs_and_the_weights_nothing_refers_to(tmp_path):
    path, clean, stressed, running, digest = a_store(tmp_path)
    weights = tmp_path / "models" / f"{clean.config_hash}.pt"
    assert ResultStore(path).runs().set_index("id").trained_from[stressed.run_id] == clean.config_hash

    out = invoke("store", "remove", "--store", path, "--id", stressed.run_id)
    assert out.exit_code == 0 and f"removed 1 run: {stressed.config_hash}" in out.output
    assert count(path, "metrics", stressed.run_id) == 0 and count(path, "ranks", stressed.run_id) == 0
    assert count(path, "metrics", clean.run_id) > 0 and weights.exists()      # the clean run still uses them

    assert invoke("store", "remove", "--store", path, "--id", clean.run_id).exit_code == 0
    assert not weights.exists()
    again = run_experiment(request("early"), ResultStore(path), progress=False)
    assert not again.skipped and again.result is not None and again.config_hash == clean.config_hash
    assert again.test == clean.test                                         # trained afresh, deterministically


def test_remove_refuses_running_runs_without_force_and_unknown_ids(tmp_path):
    path, clean, _, running, digest = a_store(tmp_path)
    checkpoint = tmp_path / "checkpoints" / f"{digest}.pt"
    refused = invoke("store", "remove", "--store", path, "--id", clean.run_id, "--id", running)
    assert refused.exit_code == 2 and f"--id {running}: marked 'running'" in refused.output
    assert "--force" in refused.output
    unknown = invoke("store", "remove", "--store", path, "--id", 999, "--id", clean.run_id)
    assert unknown.exit_code == 2 and "--id 999: no such run" in unknown.output
    assert len(ResultStore(path).runs(status=None)) == 3 and checkpoint.exists()    # nothing half-done

    forced = invoke("store", "remove", "--store", path, "--id", running, "--force")
    assert forced.exit_code == 0 and not checkpoint.exists()
    assert ResultStore(path).status(digest) is None
    missing = invoke("store", "remove", "--store", tmp_path / "none.db", "--id", 1)
    assert missing.exit_code == 2 and "--store" in missing.output


def test_remove_keeps_shared_weights_while_a_run_of_their_training_config_remains(tmp_path):
    """p = 0 sequence-level cells share one training, kept under its training hash (no run's own hash):
    removing the cell that evaluated them leaves them for the cell that trained them, and back."""
    path = tmp_path / "r.db"
    trained, evaluated = (run_experiment(request("early", PerturbationRequest(name, 0.0, "both", options)),
                                         ResultStore(path), progress=False)
                          for name, options in (("disorder", {}), ("mismatch", {"mode": "shift"})))
    weights = tmp_path / "models" / f"{config_hash(training_config(trained.config))}.pt"
    assert weights.exists() and weights.stem not in (trained.config_hash, evaluated.config_hash)
    assert invoke("store", "remove", "--store", path, "--id", evaluated.run_id).exit_code == 0
    assert weights.exists()
    assert invoke("store", "remove", "--store", path, "--id", trained.run_id).exit_code == 0
    assert not weights.exists()


def test_runs_show_remove_and_upgrade_find_a_runs_files_where_the_store_names_them(tmp_path, monkeypatch):
    """The store alone says where a run's checkpoint and kept weights live: move them elsewhere there and
    training, `store show`, `store upgrade` and `store remove` all follow."""
    from fusionbench.store.upgrade import upgrade_store
    from test_upgrade import as_if_written_before

    monkeypatch.setattr(ResultStore, "checkpoint_path", lambda self, h: self.path.parent / "resume" / f"{h}.state")
    monkeypatch.setattr(ResultStore, "weights_path", lambda self, h: self.path.parent / "kept" / f"{h}.state")
    path = tmp_path / "r.db"
    clean = run_experiment(request("early"), ResultStore(path), progress=False)
    stressed = run_experiment(request("early", PerturbationRequest("missing", 1.0, "test")), ResultStore(path),
                              progress=False)
    kept = tmp_path / "kept" / f"{clean.config_hash}.state"
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [kept.name] and not (tmp_path / "models").exists()
    assert not list((tmp_path / "resume").iterdir())                   # both finished: no resume state left
    config = resolve(request("sasrec"))
    config["dataset_checksum"] = "abc"
    running = ResultStore(path).start(config, "abc", {}, "rev")
    (tmp_path / "resume" / f"{config_hash(config)}.state").write_bytes(b"resume state")
    assert "resumable" in invoke("store", "show", "--store", path, "--status", "running").output

    # rewritten as stored before train.grad_clip existed (as_if_written_before renames files in the default
    # layout only: there are none), the kept weights renamed to the old training hash here; upgrading moves
    # them back
    drop = lambda config: config["train"].pop("grad_clip")  # noqa: E731
    old_clean = as_if_written_before(path, clean.run_id, drop)
    as_if_written_before(path, stressed.run_id, drop)
    kept.rename(kept.with_name(f"{old_clean}.state"))
    assert {u.status for u in upgrade_store(ResultStore(path)) if u.run_id != running} == {"upgraded"}
    assert kept.exists() and not kept.with_name(f"{old_clean}.state").exists() and not (tmp_path / "models").exists()

    assert invoke("store", "remove", "--store", path, "--id", clean.run_id, "--id", stressed.run_id,
                  "--id", running, "--force").exit_code == 0
    assert not list((tmp_path / "kept").iterdir()) and not list((tmp_path / "resume").iterdir())


def test_curves_put_runs_side_by_side_from_the_store_and_from_a_checkpoint(tmp_path):
    path, clean, stressed, running, digest = a_store(tmp_path)
    history = clean.result.history
    # the abandoned run's checkpoint holds two epochs of a history, as train() writes it
    state = {"history": [{"epoch": 1, "loss": 2.5, "valid": {"NDCG@20": 0.125}},
                         {"epoch": 2, "loss": 2.25, "valid": {"NDCG@20": 0.0625}}], "best_epoch": 1}
    torch.save(state, tmp_path / "checkpoints" / f"{digest}.pt")
    out = invoke("store", "curves", "--store", path, "--id", clean.run_id, "--id", running,
                 "--metric", "NDCG@20", "--plot", tmp_path / "c.png")
    assert out.exit_code == 0, out.output
    assert f"- run {clean.run_id}: early (" in out.output
    assert f"best epoch {clean.result.best_epoch} of {len(history)}" in out.output
    assert f"- run {running}: sasrec (" in out.output and "from its resume checkpoint, best epoch 1 of 2" in out.output
    rows = [line.split("|")[1:-1] for line in out.output.splitlines() if line.startswith("| ") and "epoch" not in line]
    assert len(rows) == max(len(history), 2)
    best = history[clean.result.best_epoch - 1]
    cells = [c.strip() for c in rows[clean.result.best_epoch - 1]]
    assert cells[1] == f"{best['loss']:.4f}" and cells[2] == f"{100 * best['valid']['NDCG@20']:.2f} *"
    assert [c.strip() for c in rows[0][3:]] == ["2.5000", "12.50 *"]
    assert [c.strip() for c in rows[1][3:]] == ["2.2500", "6.25"]
    assert all(c.strip() == "" for row in rows[2:] for c in row[3:])      # the shorter run leaves blanks
    assert matplotlib.image.imread(tmp_path / "c.png").shape[2] in (3, 4)


def test_curves_errors_name_the_option(tmp_path):
    path, clean, *_ = a_store(tmp_path)
    unknown = invoke("store", "curves", "--store", path, "--id", 999)
    assert unknown.exit_code == 2 and "--id 999: no such run" in unknown.output
    metric = invoke("store", "curves", "--store", path, "--id", clean.run_id, "--metric", "AUC@5")
    assert metric.exit_code == 2 and "--metric AUC@5: not in these runs' validation histories; there: " in metric.output
