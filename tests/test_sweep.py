"""`fusionbench sweep`: the TOML file (expansion, errors), the local engine (resumable) and the Ray engine
(same stored results as the local one, weights shared within a task)."""
import dataclasses
import functools
import os
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.errors import UserInputError
from fusionbench.plan import run_local
from fusionbench.registry import STRATEGIES
from fusionbench.store import ResultStore
from fusionbench.sweep import ray_completed, read_sweep, run_ray, submission_order
from interrupt import interrupt_when

TINY = """
[defaults]
dataset = "synthetic"
seeds = [0]

[defaults.set]
"data.n_users" = 80
"data.n_codes" = 3
"data.per_cell" = 2
"data.max_len" = 10
dim = 16
"train.lr" = 0.01
"train.epochs" = 2
"""


SWEEPS = Path(__file__).resolve().parents[1] / "reports" / "sweeps"


def sweep_file(tmp_path, body, defaults=TINY):
    path = tmp_path / "sweep.toml"
    path.write_text(defaults + textwrap.dedent(body))
    return path


def test_a_sweep_file_expands_into_resolved_cells(tmp_path):
    path = sweep_file(tmp_path, """
        [[run]]
        strategy = "sasrec"
        seeds = [0, 1]

        [[run]]
        strategy = "gru4rec"
        set = { "train.epochs" = 1 }
        grid = { "train.lr" = [0.01, 0.02], dropout = [0.1, 0.2] }

        [[run]]
        strategy = "sasrec"
        perturbation = { name = "missing", severity = [0.5, 1], options = { mode = "occurrence" } }

        [[run]]
        strategy = "sasrec"        # the first table's seed 0 again: runs once

        [[run]]
        strategy = ["sasrec", "gru4rec"]
        perturbation = [{ name = "disorder", severity = 1 },
                        { name = "mismatch", severity = [0.3, 1], apply_to = "both" }]
    """)
    cells = read_sweep(path)
    assert [c.entry for c in cells] == [1, 1] + [2] * 4 + [3] * 2 + [5] * 6
    assert [(c.request.strategy, c.request.perturbation.name, c.request.perturbation.severity,
             c.request.perturbation.apply_to) for c in cells[-6:]] == [
        (s, "disorder", 1, "test") for s in ("sasrec",)] + [("sasrec", "mismatch", p, "both") for p in (0.3, 1)] + [
        ("gru4rec", "disorder", 1, "test")] + [("gru4rec", "mismatch", p, "both") for p in (0.3, 1)]
    assert [c.request.seed for c in cells[:2]] == [0, 1]
    gru = [c.request for c in cells if c.entry == 2]
    assert [(r.train_options["lr"], r.strategy_options["dropout"]) for r in gru] == [
        (0.01, 0.1), (0.01, 0.2), (0.02, 0.1), (0.02, 0.2)]
    assert {r.train_options["epochs"] for r in gru} == {1} and gru[0].dataset_options["n_users"] == 80
    assert gru[0].strategy_options["dim"] == 16              # the run's set adds to the defaults'
    stress = [c.request.perturbation for c in cells if c.entry == 3]
    assert [(p.name, p.severity, p.apply_to, dict(p.options)) for p in stress] == [
        ("missing", 0.5, "test", {"mode": "occurrence"}), ("missing", 1, "test", {"mode": "occurrence"})]


@pytest.mark.parametrize("body, message", [
    ("[[run]]\nstrategy = 'sasrec'\nepochs = 3\n", "[[run]] 1: unknown key(s) epochs; allowed: strategy,"),
    ("[[run]]\naggregator = 'han'\n", "[[run]] 1: missing key 'strategy'"),
    ("[[run]]\nstrategy = 'sasrec'\ngrid = { dim = 16 }\n", "[[run]] 1: grid.dim must be a non-empty list"),
    ("[[run]]\nstrategy = 'sasrec'\nseeds = [0, 'x']\n", "[[run]] 1: seeds must be a list of integers, got 'x'"),
    ("[[run]]\nstrategy = 'sasrec'\nset = { dimm = 8 }\n",
     "[[run]] 1 (sasrec): strategy 'sasrec': unknown option 'dimm'"),
    ("[[run]]\nstrategy = 'sasrec'\nset = { 'trian.lr' = 0.1 }\n", "unknown option group 'trian'"),
    ("[[run]]\nstrategy = 'sasrec'\nperturbation = { name = 'missing' }\n", "perturbation needs name and severity"),
    ("[[run]]\nstrategy = 'sasrec'\nperturbation = { name = 'missing', severity = 2 }\n", "severity"),
    ("[[run]]\nstrategy = 'sasrec'\n[[run]]\nstrategy = 'nope'\n", "[[run]] 2 (nope): unknown strategy 'nope'"),
    ("[[run]\n", "not valid TOML"),
    ("[runs]\nstrategy = 'sasrec'\n", "unknown top-level key(s) runs"),
    ("[defaults]\nepochs = 3\n[[run]]\nstrategy = 'sasrec'\n", "[defaults]: unknown key(s) epochs"),
    ("", "needs at least one [[run]] table"),
])
def test_sweep_file_errors_name_the_file_the_table_and_the_key(tmp_path, body, message):
    path = sweep_file(tmp_path, body, defaults="" if body.startswith(("[defaults]", "seeds")) else TINY)
    with pytest.raises(UserInputError) as err:
        read_sweep(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_the_local_engine_runs_each_cell_once_and_a_rerun_skips_them(tmp_path):
    path = sweep_file(tmp_path, "[[run]]\nstrategy = 'sasrec'\nseeds = [0, 1]\n")
    args = ["sweep", str(path), "--store", str(tmp_path / "r.db"), "--quiet"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "2 cells, 0 already in the store" in first.output and "| sasrec " in first.output
    assert "| 2/2 " in first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "2 cells, 2 already in the store" in again.output
    assert len(ResultStore(tmp_path / "r.db").runs(status=None)) == 2
    listed = CliRunner().invoke(main, [*args, "--dry-run"])
    assert listed.exit_code == 0 and listed.output.count("| done ") == 2 and "2 cells, 2 done" in listed.output
    wrong = CliRunner().invoke(main, [*args, "--scratch", str(tmp_path)])
    assert wrong.exit_code == 2 and "--address, --scratch and --gpus-per-cell apply to --engine ray" in wrong.output
    on_cpu = CliRunner().invoke(main, [*args, "--engine", "ray", "--gpus-per-cell", "0.25"])
    assert on_cpu.exit_code == 2 and "> 0 needs --device cuda (got --device cpu)" in on_cpu.output


def test_archive_is_rewritten_after_each_finished_cell_and_imports_as_the_store(tmp_path):
    path = sweep_file(tmp_path, "[[run]]\nstrategy = ['sasrec', 'gru4rec']\nseeds = [0]\n")
    archive = tmp_path / "archived" / "sweep.jsonl.gz"
    args = ["sweep", str(path), "--store", str(tmp_path / "r.db"), "--quiet", "--archive", str(archive)]
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 2 and f"folder {archive.parent} does not exist" in missing.output
    assert not (tmp_path / "r.db").exists()                       # refused before anything is written
    archive.parent.mkdir()
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    copy = tmp_path / "copy.db"
    imported = CliRunner().invoke(main, ["store", "import", str(archive), "--store", str(copy)])
    assert imported.exit_code == 0 and "added 2 runs" in imported.output
    stored, restored = ResultStore(tmp_path / "r.db"), ResultStore(copy)
    assert sorted(stored.runs().config_hash) == sorted(restored.runs().config_hash)
    for digest in stored.runs().config_hash:
        np.testing.assert_array_equal(restored.ranks(restored.run_id(digest)), stored.ranks(stored.run_id(digest)))
    written = archive.stat().st_mtime_ns
    again = CliRunner().invoke(main, args)                        # every cell found done: nothing rewritten
    assert again.exit_code == 0 and archive.stat().st_mtime_ns == written


def test_groups_that_only_evaluate_are_submitted_first():
    groups = {"t1": ["train t1", "stress t1"], "t2": ["stress t2"], "t3": ["train t3"], "t4": ["stress t4"]}
    assert submission_order(groups, {"t1", "t3"}) == [["stress t2"], ["stress t4"], ["train t1", "stress t1"],
                                                      ["train t3"]]


def test_the_ray_engine_stores_what_the_local_engine_stores(tmp_path):
    import ray  # in the test extras: the Ray engine is always tested
    # sasrec and its test-only stress cell share one training (one task); gru4rec is a second task
    path = sweep_file(tmp_path, """
        [[run]]
        strategy = "sasrec"
        [[run]]
        strategy = "sasrec"
        perturbation = { name = "disorder", severity = 1, apply_to = "test" }
        [[run]]
        strategy = "gru4rec"
    """)
    local, remote = ResultStore(tmp_path / "local.db"), ResultStore(tmp_path / "ray.db")
    cells = read_sweep(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # as each Ray task (--cpus-per-cell 1), so the sums run in one order
    try:
        run_local(cells, local, progress=False)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray_cells = read_sweep(path)
        run_ray(ray_cells, remote, scratch=str(tmp_path / "scratch"), progress=False)
        again = read_sweep(path)
        run_ray(again, remote, scratch=str(tmp_path / "scratch"), progress=False)
        # a task that raises (not a training failure: here a device this machine lacks) fails its cells only
        broken = [dataclasses.replace(read_sweep(path)[0], request=dataclasses.replace(
            read_sweep(path)[0].request, seed=5, device="cuda:7"))]
        run_ray(broken, remote, scratch=str(tmp_path / "scratch"), progress=False)
        # at most max_running tasks at a time (`tune --concurrent`'s seed runs): three 0.3 s naps on 2 CPUs
        # overlap when all are submitted at once, and run one after the other under max_running=1
        def napping() -> tuple[float, float]:          # defined here, so Ray ships it by value
            start = time.time()
            time.sleep(0.3)
            return start, time.time()

        nap = ray.remote(num_cpus=1)(napping)
        spans = {limit: sorted(ray.get(ref) for _, ref in ray_completed(lambda i: nap.remote(), range(3), limit))
                 for limit in (None, 1)}
        with pytest.raises(UserInputError, match="--concurrent must be >= 1, got 0"):
            run_ray(broken, remote, progress=False, max_running=0)
        # GPUs the cluster lacks: refused before any task waits for them forever
        with pytest.raises(UserInputError, match="--gpus-per-cell 0.5: the Ray cluster has 0 GPUs"):
            run_ray(broken, remote, gpus_per_cell=0.5, progress=False)          # a cell still to run
    finally:
        ray.shutdown()
    assert [c.error for c in ray_cells] == [None] * 3
    assert [c.outcome.skipped for c in again] == [True] * 3
    assert broken[0].outcome is None and broken[0].error.startswith("Ray task failed: ")
    assert "cuda" in broken[0].error
    overlaps = {limit: sum(later[0] < earlier[1] for earlier, later in zip(s, s[1:])) for limit, s in spans.items()}
    assert overlaps[None] >= 1 and overlaps[1] == 0, spans
    runs = remote.runs()
    assert sorted(runs.config_hash) == sorted(local.runs().config_hash) and len(runs) == 3
    for cell, ray_cell in zip(cells, ray_cells):
        digest = cell.outcome.config_hash
        assert ray_cell.outcome.config_hash == digest and ray_cell.outcome.test == cell.outcome.test
        np.testing.assert_array_equal(remote.ranks(remote.run_id(digest)), local.ranks(local.run_id(digest)))
    stressed = remote.records([remote.run_id(ray_cells[1].outcome.config_hash)])[0]
    assert stressed["trained_from"] is not None               # evaluated the weights its task had just trained


@functools.cache
def committed_sweep(name: str) -> tuple:
    """The resolved cells of reports/sweeps/NAME.toml, read once per session."""
    return tuple(read_sweep(SWEEPS / f"{name}.toml"))


@pytest.mark.parametrize("name", ["beauty", "synthetic"])
def test_the_committed_sweep_files_still_resolve(name):
    """reports/sweeps/*.toml name the runs behind the reports: a renamed option or strategy breaks them."""
    cells = committed_sweep(name)
    assert cells and all(cell.request.dataset == name for cell in cells)


def test_the_beauty_sweep_trains_every_strategy_on_three_seeds():
    """The beauty leaderboard covers every registered strategy, seeds 0-2, without a perturbation."""
    clean = [cell.request for cell in committed_sweep("beauty") if cell.request.perturbation is None]
    for name in STRATEGIES.names():
        assert {r.seed for r in clean if r.strategy == name} == {0, 1, 2}, \
            f"reports/sweeps/beauty.toml should run {name!r} on seeds 0, 1 and 2"


def test_the_example_of_docs_sweeps_md_expands_as_the_page_says(tmp_path):
    """docs/sweeps.md's complete example, through the real parser: the cell count the page states, the order
    it describes, the duplicate run adding nothing and the test-only cells sharing the clean run's training."""
    from fusionbench.runner import training_config
    from fusionbench.store import config_hash

    page = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    (example,) = re.findall(r"^```toml\n(.*?)^```$", page, flags=re.S | re.M)
    (stated,) = re.findall(r"This file expands to \*\*(\d+) cells\*\*", page)
    path = tmp_path / "example.toml"
    path.write_text(example)
    cells = read_sweep(path)
    assert len(cells) == int(stated) == 20
    assert [c.entry for c in cells] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 8        # run 5: duplicates only
    key = [(c.request.strategy, c.request.seed) for c in cells]
    assert key[:4] == [("sasrec", 0), ("sasrec", 1), ("late", 0), ("late", 1)]
    assert [c.config["strategy_options"]["dim"] for c in cells[4:8]] == [64, 64, 128, 128]
    grid = [(c.config["train"]["lr"], c.config["strategy_options"]["dropout"]) for c in cells[8:12]]
    assert grid == [(0.001, 0.2), (0.001, 0.5), (0.002, 0.2), (0.002, 0.5)]
    assert {(c.config["train"]["epochs"], c.config["train"]["precision"]) for c in cells[8:12]} == {(10, "bf16")}
    stress = [(c.request.perturbation.name, c.request.perturbation.severity, c.request.seed) for c in cells[12:]]
    assert stress == [(name, p, seed) for name, p in [("missing", 0), ("missing", 0.5), ("missing", 1),
                                                      ("disorder", 0.5)] for seed in (0, 1)]
    clean_late = {c.request.seed: config_hash(c.config) for c in cells[2:4]}
    for cell in cells[12:18]:
        assert config_hash(training_config(cell.config)) == clean_late[cell.request.seed]


def _cell_group(cell):
    from fusionbench.report.collect import Run, RunGroup

    return RunGroup("", [Run(0, "", cell.request.seed, cell.config)])


def test_the_paper_tables_sweep_runs_every_published_row_first_on_beauty_then_toys_then_sports():
    """reports/sweeps/paper_tables.toml: every row of the published Tables 3 and 4 on beauty and of Table 2 on
    beauty, toys and sports, under ratio with record_test on seeds 0-2, datasets in that order, on beauty
    seed 0 of every row first (the graph-CF rows, the two clipped hohe rows of Table 4, the rest of Table 2's
    published rows, then the rest of Tables 3 and 4, then the project's other rows), with toys seed 0 of
    MMSR and SASRec^F between Table 2's strongest sequential baselines and its others, and beauty seed 0 of
    both under ratio-paper between Table 2's beauty rows and the rest of Tables 3 and 4; exact
    ratio-paper (without record_test) for mmsr and two baselines per dataset."""
    from fusionbench.report.published import load_published, matches

    every_cell = list(committed_sweep("paper_tables"))
    # the diagnostic pair (MMSR with the reference's initialisation, beauty and toys seed 0) sits between
    # Table 2's beauty rows and the exact ratio-paper cells; the order below is that of the other cells
    diagnostic = [i for i, c in enumerate(every_cell) if c.config["strategy_options"].get("init") == "uniform"]
    assert [(every_cell[i].request.dataset, every_cell[i].request.strategy, every_cell[i].request.seed)
            for i in diagnostic] == [("beauty", "mmsr", 0), ("toys", "mmsr", 0)]
    assert diagnostic == list(range(diagnostic[0], diagnostic[0] + 2))
    before, after = every_cell[diagnostic[0] - 1], every_cell[diagnostic[-1] + 1]
    assert before.request.strategy == "srgnn" and after.config["protocol"] == "ratio-paper"   # Table 2 beauty's last
    cells = [c for i, c in enumerate(every_cell) if i not in diagnostic]
    published = [load_published(SWEEPS.parent / "published" / f"mmsr_table{n}.csv") for n in (2, 3, 4)]
    wanted = [e for p in published for e in p.entries
              if e.dataset in (("beauty", "toys", "sports") if e.table == "Table 2" else ("beauty",))]
    recorded = [c for c in cells if c.config["protocol"] == "ratio"]
    assert all(c.config["train"].get("record_test") is True for c in recorded)
    for entry in wanted:
        seeds = {c.request.seed for c in recorded
                 if c.request.dataset == entry.dataset and matches(entry, _cell_group(c))}
        assert seeds == {0, 1, 2}, f"{entry.table} {entry.paper_row} ({entry.config_text}) on {entry.dataset}"
    leaky = [c for c in cells if c.config["protocol"] == "ratio-paper"]
    assert all("record_test" not in c.config["train"] for c in leaky)
    for dataset in ("beauty", "toys", "sports"):
        mine = [c for c in leaky if c.request.dataset == dataset]
        assert {c.request.strategy for c in mine} >= {"mmsr"} and len({c.request.strategy for c in mine}) == 3
        assert all({c.request.seed for c in mine if c.request.strategy == s} == {0, 1, 2} for s in
                   {c.request.strategy for c in mine})
    last_beauty = max(i for i, c in enumerate(cells) if c.request.dataset == "beauty")
    early_toys = [i for i, c in enumerate(cells[:last_beauty]) if c.request.dataset != "beauty"]
    assert [(cells[i].request.dataset, cells[i].request.strategy, cells[i].request.seed) for i in early_toys] == [
        ("toys", "mmsr", 0), ("toys", "sasrecf", 0)]                # MMSR with photos beside its published level
    later = [c.request.dataset for i, c in enumerate(cells) if i not in early_toys]
    assert later == sorted(later, key=("beauty", "toys", "sports").index)            # beauty, then toys, then sports
    beauty = [c for c in cells if c.request.dataset == "beauty" and c.config["protocol"] == "ratio"]
    first = [c.request.strategy for c in beauty if c.request.seed == 0]
    assert [c.request.seed for c in beauty[:len(first)]] == [0] * len(first)        # seed 0 of every row first
    graph_cf = {"pop", "lightgcn", "mmgcn", "mgat", "bm3"}                             # minutes each: they lead
    assert set(first[:len(graph_cf)]) == graph_cf and graph_cf.isdisjoint(first[len(graph_cf):])
    n = len(graph_cf)
    assert first[n:n + 2] == ["mmsr", "mmsr"]                        # then the two hohe orders, clipped
    baselines = {"sasrecf", "sasrec", "difsr", "nova", "trans2d", "gru4rec", "gru4recf", "srgnn"}
    assert set(first[n + 2:n + 2 + len(baselines)]) == baselines     # then Table 2's other published rows
    rest = first[n + 2 + len(baselines):]
    tables34 = rest[:[s == "mmsr" for s in rest].index(False)]      # then the rest of Tables 3 and 4
    assert len(tables34) > 10 and "mmsr" not in rest[len(tables34):]
    table2 = beauty[:n + 2 + len(baselines)]
    table2_end = max(cells.index(c) for c in table2)
    tables34_start = cells.index(beauty[n + 2 + len(baselines)])
    strongest = {"sasrecf", "sasrec", "difsr", "nova"}               # toys once these are in, before the others
    assert all((cells.index(c) < early_toys[0]) == (c.request.strategy in strongest)
               for c in table2 if c.request.strategy in baselines)
    assert early_toys[-1] < table2_end < tables34_start
    exact = [(c.request.strategy, c.request.seed) for c in cells[table2_end:tables34_start]
             if c.config["protocol"] == "ratio-paper"]
    assert exact == [("mmsr", 0), ("sasrecf", 0)]                    # and beauty's exact protocol for the same two


def test_the_paper_tables_sweep_dry_run_lists_its_cells(shared_data, tmp_path):
    out = CliRunner().invoke(main, ["sweep", str(SWEEPS / "paper_tables.toml"), "--store", str(tmp_path / "p.db"),
                                    "--dry-run", "--data-root", str(shared_data)])
    assert out.exit_code == 0, out.output
    assert f"{len(committed_sweep('paper_tables'))} cells, 0 done" in out.output
    # the cells span datasets and protocols: every label names both, as a leaderboard table holds one of each
    rows = [line for line in out.output.splitlines() if line.startswith("| ") and "to run" in line]
    assert rows and all(line[2:].split(":")[0] in {f"{d} / {p}" for d in ("beauty", "toys", "sports")
                                                   for p in ("ratio", "ratio-paper")} for line in rows)
    assert any(line.startswith("| beauty / ratio-paper: mmsr + han") for line in rows)


def test_a_local_ray_instance_runs_its_workers_at_the_drivers_niceness(monkeypatch):
    import ray

    from fusionbench.ray_start import WORKER_NICENESS, init_ray

    monkeypatch.setenv(WORKER_NICENESS, "")        # registers the variable's absence for the undo
    monkeypatch.delenv(WORKER_NICENESS)
    init_ray(None, False, num_cpus=1)                # Ray's own default would nice its workers to 15
    try:
        niceness = ray.remote(lambda: os.nice(0))
        assert ray.get(niceness.remote()) == os.nice(0)
    finally:
        ray.shutdown()


def test_a_failed_cell_is_named_and_the_sweep_goes_on(tmp_path):
    path = sweep_file(tmp_path, """
        [[run]]
        strategy = "sasrec"
        set = { "train.lr" = 1e30 }

        [[run]]
        strategy = "gru4rec"
    """)
    out = CliRunner().invoke(main, ["sweep", str(path), "--store", str(tmp_path / "r.db"), "--quiet"])
    assert out.exit_code == 1
    assert re.search(r"error: training failed: 1 of 2 cells failed: sasrec \(.*train.lr=1e\+30.*\) seed 0 \(.*epoch 1",
                     out.output), out.output
    assert set(ResultStore(tmp_path / "r.db").runs(status=None)["status"]) == {"failed", "done"}


def test_sigterm_stops_a_sweep_as_ctrl_c_does(tmp_path):
    """SIGTERM (``kill``) while the third cell trains: the sweep exits 143 after exporting the second
    cell's run, whose export was waiting for the archive's interval; the third run stays resumable."""
    import signal

    path = sweep_file(tmp_path, """
        [[run]]
        strategy = ["sasrec", "gru4rec"]

        [[run]]
        strategy = "sasrec"
        seeds = [1]
        set = { "train.epochs" = 500, "train.patience" = 500 }
    """)
    store_path, archive = tmp_path / "r.db", tmp_path / "runs.jsonl.gz"

    def third_cell_checkpointed() -> bool:
        if not store_path.exists():
            return False
        runs = ResultStore(store_path).runs(status=None)
        running = runs[runs["status"] == "running"]
        return (runs["status"] == "done").sum() == 2 and not running.empty and \
            ResultStore(store_path).checkpoint_path(running["config_hash"].iloc[0]).exists()

    status, _, err = interrupt_when(["sweep", str(path), "--store", str(store_path), "--quiet", "--archive",
                                     str(archive)], third_cell_checkpointed, signal.SIGTERM)
    assert status == 143 and "terminated (SIGTERM)" in err, err
    store = ResultStore(store_path)
    [digest] = store.runs(status="running")["config_hash"]
    assert store.checkpoint_path(digest).exists()            # kept, not recorded as failed: resumable
    imported = CliRunner().invoke(main, ["store", "import", str(archive), "--store", str(tmp_path / "copy.db")])
    assert imported.exit_code == 0 and "added 2 runs" in imported.output, imported.output
