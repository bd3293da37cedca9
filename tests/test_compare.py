"""`fusionbench compare`: one cell per (strategy, seed), the aggregator for graph strategies only, a
leaderboard of exactly the compared runs, resumable."""
import pytest
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.compare import parse_strategies, plan_cells
from fusionbench.errors import UserInputError
from fusionbench.runner import RunRequest
from fusionbench.store import ResultStore

TINY = ("--dataset", "synthetic", "--set", "data.n_users=80", "--set", "data.n_codes=3",
        "--set", "data.per_cell=2", "--set", "data.max_len=10", "--set", "train.lr=0.01",
        "--set", "features.reduce=pca", "--set", "features.n_clusters=4", "--set", "features.k=2",
        "--epochs", "1", "--quiet")


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cells_are_strategy_major_and_only_graph_strategies_get_the_aggregator():
    base = RunRequest(strategy="sasrec", dataset="synthetic", aggregator="gcn",
                      aggregator_options={"self_loops": False})
    cells = plan_cells(base, ["sasrec", "mmsr"], [0, 1])
    assert [(c.request.strategy, c.request.seed) for c in cells] == [("sasrec", 0), ("sasrec", 1), ("mmsr", 0),
                                                                      ("mmsr", 1)]
    assert [c.config["aggregator"] for c in cells] == [None, None, "gcn", "gcn"]
    assert cells[2].config["aggregator_options"]["self_loops"] is False


def test_an_aggregator_without_a_graph_strategy_and_unknown_strategies_are_errors():
    with pytest.raises(UserInputError, match="none of sasrec, late is a graph strategy"):
        plan_cells(RunRequest(strategy="sasrec", dataset="synthetic", aggregator="gcn"), ["sasrec", "late"], [0])
    with pytest.raises(UserInputError, match="--strategy: unknown strategy 'sasrek'"):
        parse_strategies("sasrec,sasrek")
    with pytest.raises(UserInputError, match="--strategy expects"):
        parse_strategies(" , ")


def test_compare_prints_the_leaderboard_of_exactly_its_runs_and_resumes(tmp_path):
    store = tmp_path / "c.db"
    other = invoke("run", "--strategy", "gru4rec", *TINY, "--store", str(store))
    assert other.exit_code == 0, other.output
    out = invoke("compare", "--strategy", "sasrec,late", "--seeds", "0,1", *TINY, "--store", str(store))
    assert out.exit_code == 0, out.output
    assert "sasrec, late on synthetic (loo): 4 runs, 0 already in" in out.output
    rows = [line for line in out.output.splitlines() if line.startswith("| ") and "strategy" not in line]
    assert sorted(row.split("|")[1].split()[0] for row in rows) == ["late", "sasrec"]   # not gru4rec
    assert all(row.rstrip(" |").endswith("2") for row in rows)                          # two seeds each
    assert "significantly below the column's best row" in out.output
    assert len(ResultStore(store).runs(status="done")) == 5
    again = invoke("compare", "--strategy", "sasrec,late", "--seeds", "0,1", *TINY, "--store", str(store))
    assert again.exit_code == 0 and "4 runs, 4 already in" in again.output
    assert len(ResultStore(store).runs(status="done")) == 5


def test_a_strategy_option_that_one_compared_strategy_lacks_exits_2_naming_it(tmp_path):
    out = invoke("compare", "--strategy", "sasrec,gru4rec", *TINY, "--set", "heads=1",
                 "--store", str(tmp_path / "c.db"))
    assert out.exit_code == 2
    assert "gru4rec" in out.output and "heads" in out.output
    assert not (tmp_path / "c.db").exists() or ResultStore(tmp_path / "c.db").runs(status=None).empty
