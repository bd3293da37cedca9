"""Ranks over datasets (`leaderboard --across`): Friedman, Iman–Davenport, Nemenyi CD, Holm–Wilcoxon, diagrams."""
import math
import sys

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from fusionbench.cli import main
from fusionbench.errors import UserInputError
from fusionbench.report import leaderboard_report
from fusionbench.report.across import (
    DEMSAR_Q05,
    build_across,
    cliques,
    column_ranks,
    critical_difference,
    friedman,
    friedman_from_mean_ranks,
    nemenyi_q,
    wilcoxon_holm,
)
from fusionbench.report.collect import parse_columns
from fusionbench.report.leaderboard import build_leaderboards
from fusionbench.report.significance import holm
from fusionbench.store import ResultStore
from test_published import RANKS, add

# rows A, B, C over N = 4 columns; B and C tie in the last column
HAND = np.array([[0.90, 0.80, 0.70],
                 [0.85, 0.86, 0.60],
                 [0.70, 0.60, 0.50],
                 [0.80, 0.70, 0.70]])


def test_friedman_on_a_hand_worked_example():
    r"""Ranks per column (1 = best): [1, 2, 3], [2, 1, 3], [1, 2, 3], [1, 2.5, 2.5]; mean ranks
    R = (1.25, 1.875, 2.875).

    chi2 without ties = 12N/(k(k+1)) [sum R^2 - k(k+1)^2/4] = 48/12 [13.34375 - 12] = 5.375.
    Tie correction: one group of t = 2 in column 4, C = 1 - (2^3 - 2)/(N k (k^2 - 1)) = 1 - 6/96 = 0.9375,
    so chi2_F = 5.375 / 0.9375 = 5.733333, p = exp(-chi2_F / 2) (2 df) = exp(-2.866667) = 0.056888.
    Iman–Davenport F_F = (N - 1) chi2_F / (N(k - 1) - chi2_F) = 17.2 / 2.266667 = 7.588235 on (2, 6) df.
    Nemenyi: q_0.05(k = 3) = 2.343, CD = 2.343 sqrt(3·4/(6·4)) = 1.6573: A and C (1.625 apart) are not
    separated, so all three rows form one clique."""
    ranks = column_ranks(HAND)
    np.testing.assert_array_equal(ranks, [[1, 2, 3], [2, 1, 3], [1, 2, 3], [1, 2.5, 2.5]])
    test = friedman(ranks)
    assert (test.n, test.k) == (4, 3)
    assert test.chi2 == pytest.approx(5.733333, abs=1e-6) and test.p == pytest.approx(0.056888, abs=1e-6)
    assert test.f == pytest.approx(7.588235, abs=1e-6)
    assert test.p_f == pytest.approx(stats.f.sf(7.588235, 2, 6), rel=1e-6)
    scipy_test = stats.friedmanchisquare(*HAND.T)                          # scipy's tie-corrected statistic
    assert test.chi2 == pytest.approx(scipy_test.statistic) and test.p == pytest.approx(scipy_test.pvalue)
    cd = critical_difference(3, 4)
    assert cd == pytest.approx(2.3437 * math.sqrt(0.5), abs=1e-4)
    assert cliques(ranks.mean(axis=0), cd) == [(0, 1, 2)]


def test_demsar_2006_worked_example_from_its_average_ranks():
    """Demšar (2006), §3.2.2: four classifiers on 14 data sets with average ranks 3.143, 2.000, 2.893 and
    1.964 give chi2_F = 9.28 and F_F = 3.69; with q_0.05 = 2.569, CD = 2.569 sqrt(4·5/(6·14)) = 1.25."""
    test = friedman_from_mean_ranks(np.array([3.143, 2.000, 2.893, 1.964]), 14)
    assert round(test.chi2, 2) == 9.28 and round(test.f, 2) == 3.69
    assert round(critical_difference(4, 14), 2) == 1.25


def test_the_nemenyi_critical_values_are_demsars_table():
    for k, q in DEMSAR_Q05.items():
        assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)   # the table keeps 3 decimals
    with pytest.raises(UserInputError, match="at least 2 rows"):
        nemenyi_q(1)


def test_friedman_matches_scipy_with_ties_and_handles_the_extremes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.integers(0, 4, size=(rng.integers(3, 9), rng.integers(3, 7))).astype(float)   # many ties
        if (values == values[:, :1]).all():
            continue
        ours, theirs = friedman(column_ranks(values)), stats.friedmanchisquare(*values.T)
        assert ours.chi2 == pytest.approx(theirs.statistic) and ours.p == pytest.approx(theirs.pvalue)
    same = friedman(column_ranks(np.ones((5, 3))))                        # every column a full tie
    assert (same.chi2, same.p) == (0.0, 1.0)
    agree = friedman(column_ranks(np.tile([3.0, 2.0, 1.0], (6, 1))))     # one order everywhere
    assert agree.chi2 == pytest.approx(12.0) and agree.f == math.inf and agree.p_f == 0.0
    with pytest.raises(UserInputError, match="at least 2 columns and 2 rows"):
        friedman(column_ranks(HAND[:1]))


def test_cliques_are_maximal_runs_within_the_critical_difference():
    assert cliques(np.array([1.0, 1.5, 3.0, 3.2]), 1.0) == [(0, 1), (2, 3)]
    assert cliques(np.array([3.2, 1.0, 3.0, 1.5]), 1.0) == [(1, 3), (2, 0)]      # indices, rank order
    assert cliques(np.array([1.0, 1.9, 2.8]), 1.0) == [(0, 1), (1, 2)]           # overlapping groups
    assert cliques(np.array([1.0, 2.0, 3.0]), 0.5) == []                         # every pair separated


def test_pairwise_wilcoxon_is_scipys_with_holm_over_the_pairs():
    rng = np.random.default_rng(1)
    values = rng.random((12, 4)) + np.array([0.0, 0.1, 0.3, 0.3])
    mean = column_ranks(values).mean(axis=0)
    pairs = wilcoxon_holm(values, list("ABCD"), mean, cd=1.0)
    assert [(p.a, p.b) for p in pairs] == [("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")]
    raw = [stats.wilcoxon(values[:, a], values[:, b], zero_method="zsplit").pvalue
           for a, b in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))]
    np.testing.assert_allclose([p.p for p in pairs], raw)
    np.testing.assert_allclose([p.p_holm for p in pairs], holm(np.array(raw)))
    assert [p.nemenyi for p in pairs] == [abs(mean[a] - mean[b]) >= 1.0
                                          for a, b in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))]
    equal = wilcoxon_holm(np.ones((5, 2)), ["A", "B"], np.array([1.5, 1.5]), 1.0)
    assert (equal[0].p, equal[0].significant) == (1.0, False)


@pytest.fixture()
def two_datasets(tmp_path):
    """mmsr, sasrec and gru4rec on beauty and toys (loo, seed 0); late on beauty only; mmsr on beauty ratio."""
    store = ResultStore(tmp_path / "r.db")
    for dataset, order in (("beauty", (0, 1, 2)), ("toys", (0, 2, 1))):
        for strategy, seed_ranks in zip(("mmsr", "sasrec", "gru4rec"), order):
            add(store, strategy, 0, RANKS[seed_ranks] + ("mmsr" != strategy), dataset=dataset,
                aggregator="han" if strategy == "mmsr" else None)
    add(store, "late", 0, RANKS[1], dataset="beauty")
    add(store, "mmsr", 0, RANKS[0], protocol="ratio", aggregator="han")
    yield store
    store.close()


def test_across_ranks_the_rows_in_every_table_and_lists_the_others(two_datasets):
    boards = build_leaderboards(two_datasets, None, None, parse_columns("HR,MRR", "5,20"), significance=False)
    analyses, skipped = build_across(boards)
    assert len(analyses) == 1 and skipped == ["protocol ratio: one dataset table (beauty), nothing to compare over"]
    a = analyses[0]
    assert a.name == "loo" and a.tables == ["beauty/loo", "toys/loo"]
    assert a.columns[:2] == ["beauty · HR@5", "beauty · HR@20"] and len(a.columns) == 8
    assert sorted(a.labels) == ["gru4rec", "mmsr + han", "sasrec"]
    assert a.dropped == [("late", ["toys/loo"])]
    toys = {row.group.label: row for row in boards[2].rows}
    assert a.values.shape == (8, 3) and a.values[4, a.labels.index("sasrec")] == toys["sasrec"].cells["HR@5"].mean
    np.testing.assert_array_equal(a.ranks, column_ranks(a.values))
    assert a.cd == pytest.approx(critical_difference(3, 8))
    loo = [board for board in boards if board.protocol == "loo"]
    pooled, none = build_across(loo, pool_protocols=True)
    assert none == [] and pooled[0].name == "pooled" and pooled[0].columns[0] == "beauty · loo · HR@5"
    np.testing.assert_array_equal(pooled[0].values, a.values)


def test_across_needs_two_tables_under_one_protocol(two_datasets):
    with pytest.raises(UserInputError, match="--across needs two dataset tables or more under one protocol"):
        leaderboard_report(two_datasets.path, dataset="beauty", across=True)
    with pytest.raises(UserInputError, match="fewer than 2 rows are in every table"):
        leaderboard_report(two_datasets.path, across=True, pool_protocols=True)   # beauty/ratio has mmsr only


def test_cli_writes_the_report_and_the_diagram(two_datasets, tmp_path, monkeypatch):
    plot, out = tmp_path / "cd.png", tmp_path / "across.md"
    args = ["leaderboard", "--store", str(two_datasets.path), "--protocol", "loo", "--across", "--cd-plot", str(plot),
            "--output", str(out)]
    monkeypatch.setattr(sys, "argv", ["fusionbench", *args])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("<!-- generated by: fusionbench leaderboard") and "Friedman χ²_F" in text
    assert "Nemenyi (α = 0.05)" in text and "```\n" in text and "Holm" in text
    image = matplotlib.image.imread(plot)
    assert image.ndim == 3 and image.shape[0] > 50
    bad = CliRunner().invoke(main, [*args[:-4], "--cd-plot", str(tmp_path / "cd.jpg")])
    assert bad.exit_code == 2 and "--cd-plot" in bad.output and ".png" in bad.output
    csv = CliRunner().invoke(main, [*args[:-4], "--format", "csv"])
    assert csv.exit_code == 0 and csv.output.startswith("analysis,label,mean_rank")
