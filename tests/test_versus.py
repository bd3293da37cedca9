"""``leaderboard --versus KEY=VALUE``: each row against the row that differs from it only in that option
(a modality ablation against each strategy's ID-only row), with hand-checked differences and tests."""
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from fusionbench.cli import main
from fusionbench.errors import UserInputError
from fusionbench.metrics import summarize
from fusionbench.report import leaderboard_report
from fusionbench.report.collect import Column, Selection, option_matches, parse_columns
from fusionbench.report.leaderboard import build_leaderboards
from fusionbench.report.significance import holm
from fusionbench.report.versus import ABOVE, BELOW, Reference, versus_rows
from fusionbench.runner import RunRequest, resolve
from fusionbench.store import ResultStore

# 60 test samples per run: ranks of the ID-only rows, and of variants that are clearly better, clearly
# worse, or no different (the same ranks as their reference)
BASE = np.tile([3, 8, 1, 30, 5, 12, 2, 40, 7, 0], 6)
BETTER = np.tile([0, 1, 0, 4, 0, 2, 0, 9, 1, 0], 6)
WORSE = np.tile([25, 60, 30, 90, 44, 70, 21, 99, 35, 19], 6)
COLUMNS = parse_columns("HR,NDCG", "5")


def add(store, strategy, seed, ranks, modalities=None, **options):
    features = {} if modalities is None else {"modalities": modalities}
    config = resolve(RunRequest(strategy=strategy, dataset="toys", seed=seed, strategy_options=options,
                                feature_options=features))
    config["dataset_checksum"] = "c0"
    run = store.start(config, "c0", {}, "rev")
    store.finish(run, {"test": summarize(torch.from_numpy(ranks))}, {"test": ranks})


@pytest.fixture()
def store(tmp_path):
    """late: ID only, all channels (better), text (worse), image (= ID only), all channels at dim 32 (no
    ID-only row at dim 32); early: ID only and all channels (better), seeds 0 and 1 each."""
    s = ResultStore(tmp_path / "v.db")
    for seed in (0, 1):
        add(s, "late", seed, BASE, "none")
        add(s, "late", seed, BETTER)
        add(s, "late", seed, WORSE, "text")
        add(s, "late", seed, BASE, "image")
        add(s, "early", seed, np.roll(BASE, seed), "none")
        add(s, "early", seed, BETTER)
    add(s, "late", 0, BETTER, dim=32)
    yield s
    s.close()


def entries(store, versus="features.modalities=none"):
    board = build_leaderboards(store, "toys", "loo", COLUMNS)[0]
    return board, {e.row.group.label: e for e in versus_rows(store, board, Reference.parse(versus))}


def hand(ranks, column):
    r = np.asarray(ranks, dtype=np.float64)
    gain = np.ones_like(r) if column.metric == "HR" else 1 / np.log2(r + 2)
    return np.where(r < column.k, gain, 0.0)


def test_each_row_meets_the_row_that_differs_only_in_the_key(store):
    board, found = entries(store)
    assert set(found) == {"late", "late (features.modalities=text)", "late (features.modalities=image)",
                          "early", "late (dim=32)"}
    assert found["late"].reference.group.label == "late (features.modalities=none)"
    assert found["early"].reference.group.label == "early (features.modalities=none)"  # never across strategies
    assert found["late (dim=32)"].reference is None  # no ID-only row at dim 32: listed, not compared
    column = Column("NDCG", 5)
    base = np.mean([hand(BASE, column)] * 2)
    assert found["late"].delta("NDCG@5") == pytest.approx(100 * (hand(BETTER, column).mean() - base), rel=1e-5)
    assert found["late (features.modalities=image)"].delta("NDCG@5") == 0


def test_differences_are_taken_over_the_seeds_both_rows_have(store):
    """A row with seeds 0-2 against a reference with seed 0 only: the difference is seed 0's, the seed the
    tests pair on, not the row's three-seed mean minus the reference's one seed."""
    add(store, "late", 2, WORSE)                    # late (all channels) now: BETTER, BETTER, WORSE
    add(store, "early", 2, WORSE, "none")           # early (none) now has seed 2 too; early (all) has not
    _, found = entries(store)
    column = Column("NDCG", 5)
    late, early = found["late"], found["early"]
    assert [r.seed for r in late.row.group.runs] == [0, 1, 2] and late.reference.group.seeds == (0, 1)
    assert late.delta("NDCG@5") == pytest.approx(100 * (hand(BETTER, column).mean() - hand(BASE, column).mean()),
                                                 rel=1e-5)
    assert late.comparisons[0].seeds == (0, 1)
    base = np.mean([hand(np.roll(BASE, seed), column).mean() for seed in (0, 1)])
    assert early.delta("NDCG@5") == pytest.approx(100 * (hand(BETTER, column).mean() - base), rel=1e-5)


def test_marks_follow_holm_adjusted_paired_tests(store):
    _, found = entries(store)
    assert found["late"].mark("NDCG@5", "NDCG") == ABOVE and found["early"].mark("HR@5", "HR") == ABOVE
    assert found["late (features.modalities=text)"].mark("NDCG@5", "NDCG") == BELOW
    assert found["late (features.modalities=image)"].mark("HR@5", "HR") == ""  # identical ranks: no difference
    compared = [e for e in found.values() if e.reference is not None]
    for test in ("ttest", "wilcoxon"):
        family = [c for e in compared for c in e.comparisons if c.test == test]
        assert len(family) == len(compared) * len(COLUMNS)
        np.testing.assert_allclose([c.p_holm for c in family], holm(np.array([c.p for c in family])))
    by = {(c.column, c.test): c for c in found["late (features.modalities=text)"].comparisons}
    column = Column("NDCG", 5)
    x, y = hand(WORSE, column), hand(BASE, column)  # same ranks on both seeds: the seed average is one seed's
    assert by[("NDCG@5", "ttest")].p == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-5)
    assert by[("NDCG@5", "wilcoxon")].p == pytest.approx(stats.wilcoxon(x, y, zero_method="zsplit").pvalue, rel=1e-5)


def test_other_keys_pair_rows_the_same_way(store):
    _, found = entries(store, "dim=64")
    assert found["late (dim=32)"].reference.group.label == "late"


def test_list_options_match_as_set_writes_them():
    assert option_matches(["text", "image"], "text,image") and option_matches([], "")
    assert option_matches(["none"], "none") and not option_matches(["text"], "image")
    assert option_matches(64, "64") and option_matches(True, "true") and option_matches("ho", "ho")


def test_where_selects_list_options_as_set_writes_them(store):
    selection = Selection.parse("late", ["features.modalities=text"])
    kept = build_leaderboards(store, "toys", "loo", COLUMNS, selection=selection)
    assert [row.group.label for row in kept[0].rows] == ["late (features.modalities=text)"]


def test_markdown_and_csv(store, tmp_path):
    text, _ = leaderboard_report(store.path, metrics="HR,NDCG", ks="5", versus="features.modalities=none",
                                 significance=tmp_path / "sig.csv")
    section = text.split("Against the reference rows")[1]
    line = next(row for row in section.splitlines() if row.startswith("| late (features.modalities=text)"))
    assert BELOW in line and "late (features.modalities=none)" in line and "seeds 0, 1" in line
    assert "No reference row (features.modalities=none) on this table for: late (dim=32)." in section
    tests = pd.read_csv(tmp_path / "sig.csv")
    assert {"late (features.modalities=none)", "early (features.modalities=none)"} <= set(tests["other"])
    csv, _ = leaderboard_report(store.path, metrics="HR,NDCG", ks="5", versus="features.modalities=none", fmt="csv")
    frame = pd.read_csv(__import__("io").StringIO(csv))
    assert len(frame) == 4 * len(COLUMNS)  # rows with a reference x columns
    assert set(frame.columns) >= {"label", "reference", "column", "delta", "mark", "p_holm_ttest", "p_holm_wilcoxon"}


@pytest.mark.parametrize("args, message", [
    (("--versus", "features.modalities"), "--versus expects KEY=VALUE"),
    (("--versus", "dims=3"), "--versus dims=3: no row of toys / loo has an option 'dims'"),
    (("--versus", "dim=7"), "no row of toys / loo has dim = '7', so no row has a reference"),
    (("--versus", "dim=64", "--robustness"), "--versus compares the rows of a plain leaderboard, not with --robust"),
])
def test_cli_errors_name_the_option(store, args, message):
    result = CliRunner().invoke(main, ["leaderboard", "--store", str(store.path), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output


def test_reference_parse():
    assert Reference.parse(" target = id ") == Reference("target", "id")
    with pytest.raises(UserInputError):
        Reference.parse("=none")
