"""`fusionbench store export | import`: finished runs carried to another store, checked and atomic."""
import gzip
import json
import time

import numpy as np
import pytest

from fusionbench.report import leaderboard_report
from fusionbench.store import ResultStore
from test_store_admin import a_store, invoke


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store with a clean run, a test-only stress cell and an abandoned 'running' run, and its archive."""
    folder = tmp_path_factory.mktemp("source")
    path, clean, stressed, running, running_hash = a_store(folder)
    archive = folder / "runs.jsonl.gz"
    result = invoke("store", "export", "--store", path, "--out", archive)
    assert result.exit_code == 0, result.output
    return path, archive, clean, stressed, running_hash


def assert_same_reports(store_a, store_b):
    """The leaderboard and the robustness tables of two stores are the same text."""
    for robust in (False, True):
        assert (leaderboard_report(store_a, robust=robust, command="x")[0]
                == leaderboard_report(store_b, robust=robust, command="x")[0])


def test_export_holds_the_finished_runs_only(exported):
    path, archive, clean, stressed, running_hash = exported
    lines = gzip.decompress(archive.read_bytes()).decode().splitlines()
    assert json.loads(lines[0]) == {"fusionbench_archive": 1, "runs": 2}
    hashes = [json.loads(line)["config_hash"] for line in lines[1:]]
    assert hashes == [clean.config_hash, stressed.config_hash] and running_hash not in hashes


def test_imported_runs_match_and_give_the_same_leaderboard(exported, tmp_path):
    path, archive, clean, stressed, _ = exported
    target = tmp_path / "copy.db"
    result = invoke("store", "import", archive, "--store", target)
    assert result.exit_code == 0, result.output
    assert "added 2 runs" in result.output and "0 already there" in result.output
    source, copy = ResultStore(path), ResultStore(target)
    for outcome in (clean, stressed):
        a, b = source.run_id(outcome.config_hash), copy.run_id(outcome.config_hash)
        assert copy.status(outcome.config_hash) == "done"
        for split in ("valid", "test"):
            assert copy.metrics(b, split) == source.metrics(a, split)
            np.testing.assert_array_equal(copy.ranks(b, split), source.ranks(a, split))
        kept = ["config", "seed", "best_epoch", "epoch_seconds", "history", "trained_from", "git_rev", "versions"]
        digest = outcome.config_hash
        assert copy.runs(config_hash=digest)[kept].equals(source.runs(config_hash=digest)[kept])
    assert_same_reports(target, path)

    again = invoke("store", "import", archive, "--store", target)
    assert again.exit_code == 0 and "added 0 runs" in again.output and "2 already there" in again.output
    assert len(ResultStore(target).runs(status=None)) == 2


def test_an_archive_of_test_ranks_only_gives_the_same_reports(exported, tmp_path):
    path, archive, clean, _, _ = exported
    small = tmp_path / "test_ranks.jsonl.gz"
    assert invoke("store", "export", "--store", path, "--out", small, "--ranks", "test").exit_code == 0
    records = [json.loads(line) for line in gzip.decompress(small.read_bytes()).decode().splitlines()[1:]]
    # the test rankings (all items, and unseen items where the run ranked all) and every split's metrics
    assert all(set(r["ranks"]) <= {"test", "test_unseen"} and "test" in r["ranks"] for r in records)
    assert all({"valid", "test"} <= set(r["metrics"]) and set(r["ranks"]) <= set(r["metrics"]) for r in records)
    assert any("test_unseen" in r["ranks"] for r in records)
    target = tmp_path / "copy.db"
    assert invoke("store", "import", small, "--store", target).exit_code == 0
    source, copy = ResultStore(path), ResultStore(target)
    a, b = source.run_id(clean.config_hash), copy.run_id(clean.config_hash)
    np.testing.assert_array_equal(copy.ranks(b, "test"), source.ranks(a, "test"))
    assert copy.metrics(b, "valid") == source.metrics(a, "valid")
    assert_same_reports(target, path)


def test_import_replaces_an_unfinished_attempt_of_the_same_run(exported, tmp_path):
    path, archive, clean, _, _ = exported
    target = tmp_path / "t.db"
    config = json.loads(ResultStore(path).runs(config_hash=clean.config_hash).config[0])
    ResultStore(target).start(config, "abc", {}, "rev")
    assert ResultStore(target).status(clean.config_hash) == "running"
    assert invoke("store", "import", archive, "--store", target).exit_code == 0
    assert ResultStore(target).status(clean.config_hash) == "done"
    assert len(ResultStore(target).runs(status=None)) == 2


def rewrite(archive, out, edit):
    """Copy of ``archive`` with ``edit(lines)`` applied to its text lines."""
    lines = gzip.decompress(archive.read_bytes()).decode().splitlines()
    out.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode()))
    return out


def set_field(index, field, value):
    def edit(lines):
        record = json.loads(lines[index])
        record[field] = value
        return lines[:index] + [json.dumps(record)] + lines[index + 1:]
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:-1], "the header announces 2 runs, the file holds 1"),
    (lambda lines: ['{"something": 1}'] + lines[1:], "line 1: expected the header"),
    (lambda lines: lines[:2] + ["{not json"], "line 3: not valid JSON"),
    (set_field(2, "config_hash", "0123456789abcdef"), "line 3: field 'config_hash' '0123456789abcdef' does not match"),
    (set_field(1, "seed", "zero"), "line 2: field 'seed' must be a int"),
    (set_field(1, "status", "running"), "line 2: field 'status' must be 'done'"),
    (set_field(1, "ranks", {"test": "***"}), "line 2: field 'ranks' split 'test' is not base64"),
    (set_field(1, "metrics", {"test": {"HR5": 0.1}}), "line 2: field 'metrics' split 'test' must map"),
    (set_field(1, "colour", "red"), "line 2: unknown field 'colour'"),
])
def test_a_wrong_archive_is_an_error_naming_line_and_field_and_writes_nothing(exported, tmp_path, edit, message):
    _, archive, clean, _, _ = exported
    target = tmp_path / "t.db"
    ResultStore(target)  # an existing, empty store
    bad = rewrite(archive, tmp_path / "bad.jsonl.gz", edit)
    result = invoke("store", "import", bad, "--store", target)
    assert result.exit_code == 2 and message in result.output and str(bad) in result.output, result.output
    assert len(ResultStore(target).runs(status=None)) == 0


def test_not_an_archive_and_missing_files_are_errors(tmp_path):
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text("not gzip")
    result = invoke("store", "import", plain, "--store", tmp_path / "t.db")
    assert result.exit_code == 2 and "not a gzip-compressed fusionbench archive" in result.output
    result = invoke("store", "import", tmp_path / "none.jsonl.gz", "--store", tmp_path / "t.db")
    assert result.exit_code == 2 and "ARCHIVE" in result.output and "no such file" in result.output
    result = invoke("store", "export", "--store", tmp_path / "none.db", "--out", tmp_path / "x.jsonl.gz")
    assert result.exit_code == 2 and "--store" in result.output and not (tmp_path / "x.jsonl.gz").exists()


def test_since_keeps_the_runs_started_at_or_after_it(exported, tmp_path):
    import sqlite3

    path = tmp_path / "copy.db"
    with sqlite3.connect(exported[0]) as source, sqlite3.connect(path) as db:
        source.backup(db)
        db.execute("UPDATE runs SET started_at = '2020-01-01T00:00:00+00:00' WHERE config_hash = ?",
                    (exported[2].config_hash,))
    later = tmp_path / "later.jsonl.gz"
    result = invoke("store", "export", "--store", path, "--out", later, "--since", "2021-01-01T00:00")
    assert result.exit_code == 0 and "1 finished run" in result.output, result.output
    lines = gzip.decompress(later.read_bytes()).decode().splitlines()
    assert json.loads(lines[0])["runs"] == 1 and json.loads(lines[1])["config_hash"] == exported[3].config_hash
    both = invoke("store", "export", "--store", path, "--out", tmp_path / "both.jsonl.gz", "--since", "2020-01-01")
    assert both.exit_code == 0 and "2 finished runs" in both.output           # a run at the cut is kept
    bad = invoke("store", "export", "--store", path, "--out", tmp_path / "bad.jsonl.gz", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since expects an ISO time" in bad.output
    assert not (tmp_path / "bad.jsonl.gz").exists()


def test_a_kept_archive_exports_a_run_finished_within_the_interval_when_it_is_up(tmp_path):
    from fusionbench.store.archive import KeptArchive

    path, *_ = a_store(tmp_path)
    out = tmp_path / "kept.jsonl.gz"
    kept = KeptArchive(path, out, every_s=2.0)
    kept.close()
    assert kept.exports == 0 and not out.exists()            # nothing finished: nothing written
    kept.cell_finished()
    assert kept.exports == 1 and out.exists()                # the first finished cell: at once
    out.unlink()
    kept.cell_finished()                                      # within the interval: scheduled, not written
    assert kept.exports == 1 and not out.exists()
    deadline = time.monotonic() + 30
    while kept.exports < 2 and time.monotonic() < deadline:   # written when the interval is up, no close needed
        time.sleep(0.05)
    assert kept.exports == 2 and json.loads(gzip.decompress(out.read_bytes()).splitlines()[0])["runs"] == 2
    kept.cell_finished()
    kept.close()                                              # the pending export happens now, the timer is gone
    assert kept.exports == 3 and kept._timer is None
    time.sleep(2.5)
    assert kept.exports == 3


def test_an_interrupted_export_of_a_kept_archive_is_done_again_at_close(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM during an export leaves the archive as it was; close() (the sweep's ``finally``)
    still exports the runs it was writing."""
    from fusionbench.store import archive as archives

    path, *_ = a_store(tmp_path)
    out = tmp_path / "kept.jsonl.gz"
    kept = archives.KeptArchive(path, out, every_s=60.0)
    write = archives.export_runs

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(archives, "export_runs", write)
        raise KeyboardInterrupt

    monkeypatch.setattr(archives, "export_runs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kept.cell_finished()
    assert kept.exports == 0 and not out.exists()
    kept.close()
    assert kept.exports == 1 and json.loads(gzip.decompress(out.read_bytes()).splitlines()[0])["runs"] == 2
