"""Leaderboards and robustness reports from hand-made stores: numbers, marks, tests, files, CLI errors."""
import io

import matplotlib.image
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
from fusionbench.report.collect import Column, Selection, open_store, parse_columns, setting_values
from fusionbench.report.contrast import drop_contrasts, relative_drop_contrast
from fusionbench.report.leaderboard import (
    BUDGET_KNOBS,
    budget_caption,
    build_leaderboards,
    render_markdown,
    to_frame,
)
from fusionbench.report.robustness import Point, RobustRow, _point_text, build_robustness
from fusionbench.report.robustness import render_markdown as render_robustness
from fusionbench.report.significance import holm
from fusionbench.runner import RunRequest, resolve
from fusionbench.store import ResultStore, RunSummary

# test ranks per strategy and seed: 10 hand-made users, repeated 6 times (60 samples, the same order in
# every run; repeating keeps every mean and lets scipy's Wilcoxon use its fast normal approximation, n > 50)
HAND = {
    "sasrec": {0: [0, 1, 2, 3, 4, 5, 6, 7, 8, 30], 1: [0, 0, 2, 9, 4, 25, 6, 1, 8, 3],
               2: [1, 1, 2, 3, 40, 5, 6, 7, 0, 2]},
    "gru4rec": {0: [10, 11, 12, 13, 14, 5, 16, 17, 18, 30], 1: [20, 11, 2, 13, 14, 15, 16, 17, 18, 19]},
    "mmsr": {0: [0, 0, 0, 1, 1, 2, 3, 0, 4, 2], 1: [0, 1, 0, 0, 2, 2, 3, 0, 4, 9], 2: [0, 0, 1, 1, 1, 2, 0, 0, 4, 2]},
}
RANKS = {strategy: {seed: np.tile(r, 6) for seed, r in seeds.items()} for strategy, seeds in HAND.items()}
COLUMNS = parse_columns("HR,NDCG,MRR", "5,20")
MISSING = {"name": "missing", "apply_to": "test", "options": {"mode": "item", "modalities": ["image", "text"]}}


def hand(ranks, column: Column) -> np.ndarray:
    """Per-sample metric, written out independently of fusionbench.metrics."""
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < column.k
    gain = {"HR": np.ones_like(r), "NDCG": 1 / np.log2(r + 2), "MRR": 1 / (r + 1)}[column.metric]
    return np.where(hit, gain, 0.0)


def add_run(store, strategy, seed, ranks, protocol="loo", perturbation=None, checksum="c0", test_metrics=None,
            aggregator=None, train=None, history=None, **options):
    config = resolve(RunRequest(strategy=strategy, dataset="beauty", protocol=protocol, seed=seed,
                                aggregator=aggregator, strategy_options=options, train_options=train or {}))
    config["dataset_checksum"] = checksum
    if perturbation is not None:
        config["perturbation"] = perturbation
    run = store.start(config, checksum, {}, "rev")
    ranks = np.asarray(ranks)
    store.finish(run, {"test": test_metrics or summarize(torch.from_numpy(ranks))}, {"test": ranks},
                 RunSummary(history=history or []))
    return run


@pytest.fixture()
def store(tmp_path):
    s = ResultStore(tmp_path / "r.db")
    for strategy, seeds in RANKS.items():
        for seed, ranks in seeds.items():
            add_run(s, strategy, seed, ranks)
    # neither a running nor a failed run enters the leaderboard
    unfinished = resolve(RunRequest(strategy="sasrec", dataset="beauty", seed=7))
    unfinished["dataset_checksum"] = "c0"
    s.start(unfinished, "c0", {}, "rev")
    unfinished["seed"] = 8
    s.fail(s.start(unfinished, "c0", {}, "rev"), "boom")
    yield s
    s.close()


def board(store, **kw):
    boards = build_leaderboards(store, "beauty", kw.pop("protocol", "loo"), kw.pop("columns", COLUMNS), **kw)
    assert len(boards) == 1
    return boards[0]


def test_cells_are_mean_and_std_over_seeds_in_percent(store):
    b = board(store)
    assert [row.group.label for row in b.rows] == ["gru4rec", "sasrec", "mmsr + han"]  # baselines first
    for row in b.rows:
        seeds = RANKS[row.group.strategy]
        assert row.group.seeds == tuple(seeds)  # configs differing only by seed share one row
        for column in COLUMNS:
            per_seed = 100 * np.array([hand(seeds[s], column).mean() for s in seeds])
            cell = row.cells[column.name]
            assert cell.mean == pytest.approx(per_seed.mean(), rel=1e-6)
            assert cell.std == pytest.approx(per_seed.std(ddof=1), rel=1e-6)
    text = render_markdown([b])
    # HR@5 per seed: sasrec 50, 60, 60 -> 56.67 ± 5.77, the best baseline; mmsr 100, 90, 100 -> 96.67 ± 5.77
    cells = {c[0]: c[1:] for c in ([x.strip() for x in line.split("|")[1:-1]] for line in text.splitlines()
                                    if line.startswith("| "))}
    assert cells["sasrec"][0] == "<u>56.67 ± 5.77</u> †" and cells["sasrec"][-1] == "3"
    assert cells["mmsr + han"][0] == "**96.67 ± 5.77**"
    assert "Table: beauty, protocol loo" in text and "seeds" in text


def test_bold_is_best_and_underline_best_baseline(store):
    b = board(store)
    for column in COLUMNS:
        means = {row.group.strategy: row.cells[column.name].mean for row in b.rows}
        best_baseline = max(means["sasrec"], means["gru4rec"])
        for row in b.rows:
            cell = row.cells[column.name]
            assert cell.best == (means[row.group.strategy] == max(means.values()))
            assert cell.best_baseline == (row.group.strategy != "mmsr" and means[row.group.strategy] == best_baseline)
    # with mmsr declared a baseline too, it is the underlined best baseline of HR@5
    b = board(store, proposed=())
    assert [r.group.strategy for r in b.rows if r.cells["HR@5"].best_baseline] == ["mmsr"]


def test_significance_matches_scipy_with_holm(store):
    close = RANKS["mmsr"][0].copy()
    close[:3] = 10  # mmsr's seed 0 with three misses: HR@5 95 %, below mmsr's 96.67 %, not significantly
    add_run(store, "sasrec", 0, close, dim=32)
    ranks = {**RANKS, "sasrec (dim=32)": {0: close}}
    b = board(store)
    best = next(r for r in b.rows if r.cells["HR@5"].best)
    assert best.group.strategy == "mmsr"
    by = {(c.column, c.other, c.test): c for c in b.comparisons}
    for other in ("sasrec", "gru4rec", "sasrec (dim=32)"):
        shared = sorted(set(ranks["mmsr"]) & set(ranks[other]))
        for column in (Column("HR", 5), Column("NDCG", 20)):
            x = np.mean([hand(ranks["mmsr"][s], column) for s in shared], axis=0)
            y = np.mean([hand(ranks[other][s], column) for s in shared], axis=0)
            # (NDCG per sample comes from fusionbench.metrics in float32, hence rel=1e-5)
            assert by[(column.name, other, "ttest")].p == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-5)
            wilcoxon = stats.wilcoxon(x, y, zero_method="zsplit").pvalue
            assert by[(column.name, other, "wilcoxon")].p == pytest.approx(wilcoxon, rel=1e-5)
            assert by[(column.name, other, "ttest-seeds")].n == len(shared)
        d = np.mean([hand(ranks["mmsr"][s], Column("HR", 5)) for s in shared], 0) - \
            np.mean([hand(ranks[other][s], Column("HR", 5)) for s in shared], 0)
        b_, c_ = int((d > 0).sum()), int((d < 0).sum())
        assert by[("HR@5", other, "mcnemar")].p == pytest.approx(stats.binomtest(b_, b_ + c_, 0.5).pvalue)
    assert ("NDCG@20", "sasrec", "mcnemar") not in by  # McNemar only for the binary HR
    for test in ("ttest", "wilcoxon", "mcnemar"):
        family = [c for c in b.comparisons if c.test == test]
        assert len(family) == (2 if test == "mcnemar" else 6) * 3  # columns x other rows
        np.testing.assert_allclose([c.p_holm for c in family], holm(np.array([c.p for c in family])))
    for row in b.rows:
        for column in COLUMNS:
            tests = ("ttest", "wilcoxon", "mcnemar") if column.metric == "HR" else ("ttest", "wilcoxon")
            expected = all(by[(column.name, row.group.label, t)].p_holm < 0.05 for t in tests) \
                if (column.name, row.group.label, "ttest") in by else False
            assert row.cells[column.name].below_best == expected
    gru, close = (next(r for r in b.rows if r.group.label == s) for s in ("gru4rec", "sasrec (dim=32)"))
    assert gru.cells["HR@5"].below_best and not close.cells["HR@5"].below_best  # both outcomes occur
    assert "† " not in render_markdown([b]).split("| mmsr")[1].split("\n")[0]  # never on the best row


@pytest.mark.parametrize("wilcoxon_p, marked", [(1e-6, True), (0.5, False)])
def test_a_mark_needs_every_test_to_reject(store, monkeypatch, wilcoxon_p, marked):
    import fusionbench.report.leaderboard as lb

    def fake(x, y, binary):
        out = {"ttest": (1.0, 1e-6), "wilcoxon": (1.0, wilcoxon_p)}
        return {**out, "mcnemar": (1.0, 1e-6)} if binary else out

    monkeypatch.setattr(lb, "sample_tests", fake)
    b = board(store)
    assert [row.cells["HR@5"].below_best for row in b.rows] == [marked, marked, False]


def test_holm_on_a_hand_case():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.02, np.nan, 0.04, 0.9])), [0.06, np.nan, 0.08, 0.9])


def test_csv_has_one_line_per_row_and_the_documented_columns(store):
    frame = to_frame([board(store)])
    flags = [f"{c.name}_{s}" for c in COLUMNS for s in ("mean", "std", "best", "best_baseline", "below_best")]
    assert list(frame.columns) == ["dataset", "protocol", "selection", "label", "strategy", "aggregator", "proposed",
                                   "seeds", "seed_list", *flags]
    assert frame["label"].tolist() == ["gru4rec", "sasrec", "mmsr + han"]
    assert frame["seed_list"].tolist() == ["0 1", "0 1 2", "0 1 2"]
    assert frame.loc[1, "HR@5_mean"] == pytest.approx(170 / 3)


def test_variant_labels_show_aggregator_and_non_default_options(tmp_path):
    s = ResultStore(tmp_path / "v.db")
    add_run(s, "sasrec", 0, RANKS["sasrec"][0])
    add_run(s, "sasrec", 0, RANKS["sasrec"][1], dim=32)
    add_run(s, "mmsr", 0, RANKS["mmsr"][0], aggregator="gcn")
    labels = [row.group.label for row in board(s).rows]
    assert labels == ["sasrec", "sasrec (dim=32)", "mmsr + gcn"]


def test_selection_keeps_strategies_and_option_values(tmp_path):
    s = ResultStore(tmp_path / "v.db")
    add_run(s, "sasrec", 0, RANKS["sasrec"][0])
    add_run(s, "sasrec", 0, RANKS["sasrec"][1], dim=32)
    add_run(s, "mmsr", 0, RANKS["mmsr"][0], aggregator="gcn")
    add_run(s, "mmsr", 0, RANKS["mmsr"][1], aggregator="han", use_pos=False)
    labels = lambda strategies=None, *where: [  # noqa: E731
        row.group.label for row in board(s, selection=Selection.parse(strategies, where)).rows]
    assert labels("mmsr") == ["mmsr + gcn", "mmsr + han (use_pos=False)"]
    assert labels(None, "dim=32") == ["sasrec (dim=32)"]
    assert labels(None, "dim!=32") == ["sasrec", "mmsr + gcn", "mmsr + han (use_pos=False)"]  # no dim: kept
    assert labels("mmsr", "use_pos=false") == labels("mmsr", "use_pos=False") == ["mmsr + han (use_pos=False)"]
    assert labels("sasrec,mmsr", "aggregator=gcn") == ["mmsr + gcn"]
    for strategies, where, message in (("gru4rec", (), "--strategy 'gru4rec': no finished runs of it"),
                                       (None, ("dims=32",), "--where dims=32: no run in"),
                                       (None, ("dim=7",), "no finished run matches --strategy / --where"),
                                       (None, ("dim",), "--where expects key=value or key!=value"),
                                       ("sasrec,gru4recc", (), "--strategy 'gru4recc': no such strategy; "
                                                               "registered: .*gru4rec,")):
        with pytest.raises(UserInputError, match=message):
            labels(strategies, *where)


def test_at_default_keeps_the_runs_with_each_key_at_its_strategys_default(tmp_path):
    s = ResultStore(tmp_path / "v.db")
    add_run(s, "sasrec", 0, RANKS["sasrec"][0])
    add_run(s, "sasrec", 0, RANKS["sasrec"][1], dim=32)
    add_run(s, "sasrec", 0, RANKS["sasrec"][2], train={"precision": "bf16"})
    add_run(s, "mmsr", 0, RANKS["mmsr"][0], aggregator="gcn", dim=64)        # mmsr's default width is 128
    add_run(s, "mmsr", 0, RANKS["mmsr"][1], aggregator="han", use_pos=False)
    add_run(s, "gru4rec", 0, RANKS["gru4rec"][0])                          # has no option use_pos: kept
    labels = lambda at_default, *where: [  # noqa: E731
        row.group.label for row in board(s, selection=Selection.parse(None, where, at_default)).rows]
    assert labels("dim") == ["gru4rec", "sasrec", "sasrec (train.precision=bf16)", "mmsr + han (use_pos=False)"]
    assert labels("dim,use_pos") == ["gru4rec", "sasrec", "sasrec (train.precision=bf16)"]
    assert labels("dim, train.precision") == ["gru4rec", "sasrec", "mmsr + han (use_pos=False)"]
    assert labels("dim", "aggregator=han") == ["mmsr + han (use_pos=False)"]
    with pytest.raises(UserInputError, match="--at-default dims: no run in .* and no strategy named by "
                                             "--strategy has an option 'dims'"):
        labels("dims")
    # a key of a strategy named but not run yet is accepted (the report waits for its rows)
    b = board(s, selection=Selection.parse("sasrec,difsr", (), "aap_weight"))
    assert [row.group.label for row in b.rows] == ["sasrec", "sasrec (dim=32)", "sasrec (train.precision=bf16)"]
    assert b.not_run == ("difsr",)
    # and so is one that enters a config only when set (here han's projections), though no run sets it
    b = board(s, selection=Selection.parse("mmsr", (), "agg.projections,init,train.record_test"))
    assert [row.group.label for row in b.rows] == ["mmsr + gcn (dim=64)", "mmsr + han (use_pos=False)"]
    with pytest.raises(UserInputError, match="no finished run matches"):
        labels("use_pos", "aggregator=han")


def test_named_strategies_without_runs_are_listed_as_not_run(tmp_path):
    s = ResultStore(tmp_path / "v.db")
    add_run(s, "sasrec", 0, RANKS["sasrec"][0])
    add_run(s, "mmsr", 0, RANKS["mmsr"][0], aggregator="gcn")
    add_run(s, "mmsr", 0, RANKS["mmsr"][1], aggregator="han", dim=32)
    b = board(s, selection=Selection.parse("nova,mmsr,sasrec,trans2d", ("aggregator!=gcn",)))
    assert [row.group.label for row in b.rows] == ["sasrec", "mmsr + han (dim=32)"]
    assert b.not_run == ("nova", "trans2d")
    text = render_markdown([b])
    assert text.rstrip().endswith("Not run yet (named by --strategy, no finished run here matches): nova, trans2d.")
    b = board(s, selection=Selection.parse("sasrec,mmsr", ("aggregator=gcn",)))   # runs, but none matches
    assert [row.group.label for row in b.rows] == ["mmsr + gcn"] and b.not_run == ("sasrec",)
    assert board(s).not_run == () and "Not run yet" not in render_markdown([board(s)])


def test_runs_whose_training_loss_ran_away_are_named_under_the_table(tmp_path):
    def losses(*means):
        return [{"epoch": e, "loss": m, "seconds": 0.0, "valid": {"NDCG@20": 0.1}} for e, m in enumerate(means, 1)]

    s = ResultStore(tmp_path / "d.db")
    add_run(s, "sasrec", 0, RANKS["sasrec"][0], history=losses(9.0, 8.0, 7.9))
    add_run(s, "sasrec", 1, RANKS["sasrec"][1], history=losses(9.0, 8.0, 79.0))      # 9.9 times its lowest
    add_run(s, "gru4rec", 0, RANKS["gru4rec"][0], history=losses(9.0, 8.0, 7.0, 81.0, 90.0))
    add_run(s, "gru4rec", 1, RANKS["gru4rec"][1])                                      # no history stored
    b = board(s)
    assert b.diverged == (("gru4rec", 0, 4),)
    assert render_markdown([b]).rstrip().endswith("as for every run): gru4rec (seed 0, epoch 4).")
    add_run(s, "mmsr", 0, RANKS["mmsr"][0], aggregator="han", history=losses(658.6, 11024.7))
    assert board(s).diverged == (("gru4rec", 0, 4), ("mmsr + han", 0, 2))
    healthy = ResultStore(tmp_path / "h.db")
    add_run(healthy, "sasrec", 0, RANKS["sasrec"][0], history=losses(9.0, 8.0, 7.9))
    assert "diverged" not in render_markdown([board(healthy)])


# every budget knob pinned, so the caption below does not depend on the strategies' defaults
PINNED = {"lr": 0.001, "batch_size": 128, "epochs": 200, "patience": 10, "precision": "fp32"}


@pytest.fixture()
def budgets(tmp_path):
    """Rows that differ in dim (sasrec (dim=32)), precision (one sasrec row) and layers (sasrecf has 1,
    srgnn has no such option); sasrec's first row has seeds 0 and 1. Yields the store and run id -> name."""
    s = ResultStore(tmp_path / "b.db")
    ids = {add_run(s, "sasrec", seed, RANKS["sasrec"][seed], train=PINNED, dim=64, layers=2): "sasrec"
           for seed in (0, 1)}
    ids[add_run(s, "sasrec", 0, RANKS["sasrec"][2], train=PINNED, dim=32, layers=2)] = "dim32"
    ids[add_run(s, "sasrec", 0, RANKS["mmsr"][0], train={**PINNED, "precision": "bf16"}, dim=64, layers=2)] = "bf16"
    ids[add_run(s, "sasrecf", 0, RANKS["mmsr"][1], train=PINNED, dim=64, layers=1)] = "sasrecf"
    ids[add_run(s, "srgnn", 0, RANKS["gru4rec"][0], train=PINNED, dim=64)] = "srgnn"
    yield s, ids
    s.close()


def labels_by_name(b, ids):
    return {ids[run.run_id]: row.group.label for row in b.rows for run in row.group.runs}


def test_columns_show_each_rows_resolved_settings(budgets, store):
    s, ids = budgets
    keys = ("dim", "layers", "features.modalities", "train.precision")
    b = board(s, settings=keys)
    label = labels_by_name(b, ids)
    cells = {c[0]: c[1:] for c in ([x.strip() for x in line.split("|")[1:-1]] for line in
                                   render_markdown([b]).splitlines() if line.startswith("| "))}
    assert cells["strategy"][:4] == list(keys)
    assert cells[label["sasrec"]][:4] == ["64", "2", "n/a", "fp32"]     # sasrec has no modality features
    assert cells[label["dim32"]][:4] == ["32", "2", "n/a", "fp32"]
    assert cells[label["bf16"]][:4] == ["64", "2", "n/a", "bf16"]
    assert cells[label["sasrecf"]][:4] == ["64", "1", "all", "fp32"]    # [] = every modality
    assert cells[label["srgnn"]][:4] == ["64", "n/a", "n/a", "fp32"]    # srgnn has no layers option
    frame = to_frame([b]).set_index("label")
    assert frame.loc[label["srgnn"], "layers"] == "n/a" and frame.loc[label["bf16"], "train.precision"] == "bf16"
    # aggregator: the graph strategy's, n/a for the others (the CSV has its own aggregator column already)
    b = board(store, settings=("aggregator", "dim"))
    rows = {row.group.strategy: row for row in b.rows}
    assert setting_values(rows["mmsr"].group, "aggregator") == ("han",)
    assert setting_values(rows["sasrec"].group, "aggregator") == ()
    mmsr_dim = resolve(RunRequest(strategy="mmsr"))["strategy_options"]["dim"]
    assert setting_values(rows["mmsr"].group, "dim") == (mmsr_dim,)
    assert list(to_frame([b]).columns).count("aggregator") == 1 and "dim" in to_frame([b]).columns


def test_a_row_whose_seeds_disagree_shows_every_value(budgets):
    # seeds share every identity key of a row; only a config edited after grouping can make them disagree
    s, ids = budgets
    b = board(s, settings=("train.lr",))
    row = next(row for row in b.rows if ids[row.group.runs[0].run_id] == "sasrec")
    row.group.runs[1].config["train"]["lr"] = 0.01
    assert setting_values(row.group, "train.lr") == (0.001, 0.01)
    text = render_markdown([b])
    assert f"| {row.group.label} " in text and "| 0.001, 0.01 " in text
    assert "train.lr (0.001: the rest; 0.001, 0.01: sasrec)" in text


def test_caption_names_the_budget_knobs_that_differ(budgets):
    s, ids = budgets
    b = board(s)
    label = labels_by_name(b, ids)
    # layers: sasrec's rows all have 2, so the strategy names them; srgnn has none (n/a, not a difference);
    # features.modalities: only sasrecf has it, so it does not differ
    assert budget_caption(b.rows) == (
        f"Settings that differ between rows: dim (32: {label['dim32']}; 64: the rest), "
        "layers (1: sasrecf; 2: sasrec; n/a: srgnn), "
        f"train.precision (bf16: {label['bf16']}; fp32: the rest). The same in every row that has them: "
        "train.lr, train.batch_size, train.epochs, train.patience, features.modalities, max_len.")
    assert render_markdown([b]).splitlines()[1] == budget_caption(b.rows)   # right under the "Table:" line
    same = board(s, selection=Selection.parse("sasrec", ["dim=64", "train.precision=fp32"]))
    assert budget_caption(same.rows) == (
        "Settings that differ between rows: none (same in every row that has them: dim, layers, train.lr, "
        "train.batch_size, train.epochs, train.patience, train.precision, max_len).")
    assert set(BUDGET_KNOBS) == {"dim", "layers", "train.lr", "train.batch_size", "train.epochs", "train.patience",
                                 "train.precision", "features.modalities", "max_len"}


def test_ratio_paper_is_labelled_leaky_and_uses_the_stored_maxima(store):
    for seed, hr5 in ((0, 0.9), (1, 0.7)):
        stored = summarize(torch.tensor(RANKS["sasrec"][seed]))
        add_run(store, "sasrec", seed, RANKS["sasrec"][seed], protocol="ratio-paper",
                test_metrics={**stored, "HR@5": hr5})
    b = board(store, protocol="ratio-paper", columns=[Column("HR", 5)])
    assert b.rows[0].cells["HR@5"].mean == pytest.approx(80.0)
    assert b.rows[0].cells["HR@5"].std == pytest.approx(np.std([90, 70], ddof=1))
    text = render_markdown([b])
    assert "| sasrec — test-selected (leaky)" in text and "protocol ratio-paper (test-selected (leaky)" in text
    assert to_frame([b])["selection"].tolist() == ["test-selected (leaky)"]
    with pytest.raises(UserInputError, match="no stored HR@50.*--k"):
        board(store, protocol="ratio-paper", columns=[Column("HR", 50)])


def test_runs_that_cannot_be_paired_are_an_error(store):
    add_run(store, "sasrec", 5, RANKS["sasrec"][0][:59])
    with pytest.raises(UserInputError, match="different lengths.*sasrec seed 5: 59"):
        board(store)


def test_two_data_versions_are_an_error(store):
    add_run(store, "sasrec", 5, RANKS["sasrec"][0], checksum="c1")
    with pytest.raises(UserInputError, match="2 versions of the data"):
        board(store)


def test_other_dataset_options_make_their_own_table(store):
    config = resolve(RunRequest(strategy="sasrec", dataset="beauty", seed=0, dataset_options={"root": "elsewhere"}))
    config["dataset_checksum"] = "c1"
    ranks = np.asarray(RANKS["sasrec"][0])
    store.finish(store.start(config, "c1", {}, "rev"), {"test": summarize(torch.from_numpy(ranks))},
                 {"test": ranks})
    boards = build_leaderboards(store, "beauty", "loo", COLUMNS)
    assert [b.dataset for b in boards] == ["beauty", "beauty (root=elsewhere)"]
    assert [len(b.rows) for b in boards] == [len(RANKS), 1]


def test_robustness_tables_drops_and_plots(store, tmp_path):
    rng = np.random.default_rng(0)
    perturbed = {}
    for seed in (0, 1):
        for strategy, severities in (("sasrec", (0.0, 0.5)), ("gru4rec", (0.5,)), ("mmsr", (0.5,))):
            for severity in severities:
                ranks = rng.integers(0, 30, 60)
                perturbed[strategy, severity, seed] = ranks
                add_run(store, strategy, seed, ranks, perturbation={**MISSING, "severity": severity})
        add_run(store, "sasrec", seed, rng.integers(0, 30, 60), perturbation={**MISSING, "severity": 0.5,
                                                                             "apply_to": "both"})
    column = Column("NDCG", 20)
    tables = build_robustness(store, "beauty", "loo", column)
    assert [(t.name, t.apply_to) for t in tables] == [("missing", "both"), ("missing", "test")]
    rows = {row.strategy: row for row in tables[1].rows}
    mean = {k: 100 * hand(v, column).mean() for k, v in perturbed.items()}

    sas = rows["sasrec"]
    assert sas.reference == "severity 0"
    at0, at5 = (np.mean([mean["sasrec", p, s] for s in (0, 1)]) for p in (0.0, 0.5))
    assert [p.severity for p in sas.points] == [0.0, 0.5]
    assert sas.points[1].mean == pytest.approx(at5, rel=1e-6)
    assert sas.points[1].std == pytest.approx(np.std([mean["sasrec", 0.5, s] for s in (0, 1)], ddof=1), rel=1e-6)
    assert sas.points[1].drop == pytest.approx(100 * (at0 - at5) / at0, rel=1e-6)

    gru = rows["gru4rec"]  # no severity 0: relative to the clean runs of the same config (seeds 0, 1)
    clean = 100 * np.mean([hand(RANKS["gru4rec"][s], column).mean() for s in (0, 1)])
    assert gru.reference == "clean run" and gru.reference_mean == pytest.approx(clean, rel=1e-6)
    assert gru.points[0].drop == pytest.approx(100 * (clean - gru.points[0].mean) / clean, rel=1e-6)

    text, written = leaderboard_report(store.path, robust=True, robustness_metric="NDCG@20",
                                       plot_dir=tmp_path / "plots")
    assert "perturbation missing (apply_to=test, modalities=image+text, mode=item)" in text
    assert "| p=0 " in text and "| p=0.5 " in text and "clean run" in text
    assert len(written) == 2
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(path).ndim == 3
    frame = pd.read_csv(io.StringIO(leaderboard_report(store.path, robust=True, fmt="csv")[0]))
    assert set(frame["perturbation"]) == {"missing"} and "drop_pct" in frame.columns
    # the leaderboard itself ignores perturbed runs
    assert [r.group.seeds for r in board(store).rows] == [(0, 1), (0, 1, 2), (0, 1, 2)]
    # a selection narrows the robustness rows too (their clean references included)
    chosen = build_robustness(store, "beauty", "loo", column, Selection.parse("gru4rec,mmsr"))
    assert [t.apply_to for t in chosen] == ["test"] and {r.strategy for r in chosen[0].rows} == {"gru4rec", "mmsr"}
    assert {r.strategy: r.reference for r in chosen[0].rows}["gru4rec"] == "clean run"
    assert chosen[0].not_run == () and "Not run yet" not in render_robustness(chosen)
    named = build_robustness(store, "beauty", "loo", column, Selection.parse("nova,gru4rec,trans2d"))
    assert [(t.apply_to, [r.strategy for r in t.rows], t.not_run) for t in named] == [
        ("test", ["gru4rec"], ("nova", "trans2d"))]
    assert render_robustness(named).rstrip().endswith(
        "Not run yet (named by --strategy, no finished perturbed run here): nova, trans2d.")
    # apply_to selects the split a perturbation touched; clean runs have none, so they stay as references
    test_only = build_robustness(store, "beauty", "loo", column, Selection.parse(None, ["apply_to!=both"]))
    assert [t.apply_to for t in test_only] == ["test"]
    assert {r.strategy: r.reference for r in test_only[0].rows}["gru4rec"] == "clean run"
    both = build_robustness(store, "beauty", "loo", column, Selection.parse(None, ["apply_to=both"]))
    assert [(t.apply_to, [r.strategy for r in t.rows]) for t in both] == [("both", ["sasrec"])]



def test_a_test_only_table_without_severity_0_refers_to_the_same_models_at_severity_0(store):
    """Test-only cells of a variant and seed evaluate one trained model: a test-only table without
    severity 0 (mismatch) refers to another test-only table's severity 0 of the same variant (disorder),
    not to the clean run (which may hold other weights); a variant without such a cell, and a table whose
    perturbation also reached training, keep the clean run."""
    rng = np.random.default_rng(1)
    disorder = {**MISSING, "name": "disorder", "options": {}}
    mismatch = {**MISSING, "name": "mismatch", "options": {"mode": "swap"}}
    zero, swapped = {}, {}
    for seed in (0, 1):
        zero[seed], swapped[seed] = rng.integers(0, 30, 60), rng.integers(0, 30, 60)
        add_run(store, "sasrec", seed, zero[seed], perturbation={**disorder, "severity": 0.0})
        add_run(store, "sasrec", seed, swapped[seed], perturbation={**mismatch, "severity": 1.0})
        add_run(store, "gru4rec", seed, swapped[seed], perturbation={**mismatch, "severity": 1.0})
        add_run(store, "sasrec", seed, swapped[seed], perturbation={**mismatch, "severity": 1.0, "apply_to": "both"})
    column = Column("NDCG", 20)
    tables = {(t.name, t.apply_to): t for t in build_robustness(store, "beauty", "loo", column)}
    rows = {row.strategy: row for row in tables["mismatch", "test"].rows}
    at0 = 100 * np.mean([hand(zero[s], column).mean() for s in (0, 1)])
    at1 = 100 * np.mean([hand(swapped[s], column).mean() for s in (0, 1)])
    sas = rows["sasrec"]
    assert sas.reference == "disorder p=0" and sas.reference_seeds == (0, 1)
    assert sas.reference_mean == pytest.approx(at0, rel=1e-6)
    assert sas.points[0].drop == pytest.approx(100 * (at0 - at1) / at0, rel=1e-6)
    np.testing.assert_allclose(sas.reference_samples, [hand(zero[s], column) for s in (0, 1)])
    assert rows["gru4rec"].reference == "clean run"
    clean = 100 * np.mean([hand(RANKS["sasrec"][s], column).mean() for s in (0, 1, 2)])
    (both,) = tables["mismatch", "both"].rows
    assert both.reference == "clean run" and both.reference_mean == pytest.approx(clean, rel=1e-6)
    (own,) = [r for r in tables["disorder", "test"].rows]
    assert own.reference == "severity 0"
    text = render_robustness([tables["mismatch", "test"]])
    assert "| disorder p=0 " in text and "severity 0 of the one named" in text

def test_robustness_without_clean_reference_has_no_drop(tmp_path):
    s = ResultStore(tmp_path / "p.db")
    add_run(s, "mmsr", 0, RANKS["mmsr"][0], perturbation={**MISSING, "severity": 0.5})
    (row,) = build_robustness(s, None, None, Column("HR", 5))[0].rows
    assert row.reference == "none" and np.isnan(row.points[0].drop)


@pytest.mark.parametrize("drop, text", [(0.0, "4.11 (+0.0%)"), (25.0, "4.11 (-25.0%)"), (-4.0, "4.11 (+4.0%)")])
def test_a_cell_reads_its_change_with_the_sign_of_better_or_worse(drop, text):
    row = RobustRow("sasrec", "sasrec", "clean run", 4.11, [])
    assert _point_text(Point(0.3, (0,), 4.11, float("nan"), drop), row) == text


def test_drop_contrast_by_hand():
    # A falls from 2 of 4 samples to 1 (D_A = 0.5), B keeps its 2 (D_B = 0): Δ = 0.5.
    # ψ = (b^p - 1 b^0) / 0.5 - (a^p - 0.5 a^0) / 0.5 = 0 - [-1, 0, 1, 0] = [1, 0, -1, 0]:
    # sd sqrt(2/3), SE sqrt(2/3) / 2
    a0, ap = np.array([1.0, 0, 1, 0]), np.array([0.0, 0, 1, 0])
    b0 = np.array([1.0, 1, 0, 0])
    drop_a, drop_b, delta, se = relative_drop_contrast(a0, ap, b0, b0.copy())
    assert (drop_a, drop_b, delta) == (0.5, 0.0, 0.5) and se == pytest.approx(np.sqrt(2 / 3) / 2)
    assert all(np.isnan(relative_drop_contrast(np.zeros(4), ap, b0, b0)))  # no reference signal: undefined


def test_drop_contrast_standard_error_matches_a_paired_bootstrap():
    # an independent estimate: resample the S paired samples, recompute D_A - D_B, take the spread
    rng = np.random.default_rng(0)
    size = 3000
    a0 = rng.random(size) * (rng.random(size) < 0.3)
    # A keeps half of its samples and draws the rest anew (R_A about 0.58), B loses a tenth of its own
    ap = np.where(rng.random(size) < 0.5, a0, rng.random(size) * (rng.random(size) < 0.05))
    b0 = rng.random(size) * (rng.random(size) < 0.3)
    bp = np.where(rng.random(size) < 0.9, b0, 0.0)
    _, _, delta, se = relative_drop_contrast(a0, ap, b0, bp)
    boot = []
    for _ in range(2000):
        i = rng.integers(0, size, size)
        boot.append(bp[i].mean() / b0[i].mean() - ap[i].mean() / a0[i].mean())
    assert delta == pytest.approx(bp.mean() / b0.mean() - ap.mean() / a0.mean())
    # within 8 %; leaving out the reference's own noise (ψ without the R factors) reads 22 % high here
    assert se == pytest.approx(np.std(boot, ddof=1), rel=0.08)


def test_drop_contrasts_from_the_store(store, tmp_path):
    # gru4rec and sasrec under `missing` at 0.5, seeds 0 and 1 (sasrec also has seed 2, which gru4rec lacks);
    # both refer to their clean runs
    rng = np.random.default_rng(1)
    cells = {}
    for strategy, seeds in (("gru4rec", (0, 1)), ("sasrec", (0, 1, 2))):
        for seed in seeds:
            cells[strategy, seed] = rng.integers(0, 30, 60)
            add_run(store, strategy, seed, cells[strategy, seed], perturbation={**MISSING, "severity": 0.5})
    column = Column("NDCG", 20)
    tables = build_robustness(store, "beauty", "loo", column)
    (c,) = drop_contrasts(tables, [("gru4rec", "sasrec")])
    shared = (0, 1)
    mean = lambda ranks: np.mean([hand(r, column) for r in ranks], axis=0)  # noqa: E731
    a0, ap = mean([RANKS["gru4rec"][s] for s in shared]), mean([cells["gru4rec", s] for s in shared])
    b0, bp = mean([RANKS["sasrec"][s] for s in shared]), mean([cells["sasrec", s] for s in shared])
    assert c.seeds == shared and c.n == 60 and c.severity == 0.5
    assert c.delta == pytest.approx(100 * ((1 - ap.mean() / a0.mean()) - (1 - bp.mean() / b0.mean())))
    assert c.p == pytest.approx(2 * stats.norm.sf(abs(c.delta / c.se))) and c.p_holm == pytest.approx(c.p)
    per_seed = [(1 - hand(cells[g, s], column).mean() / hand(RANKS[g][s], column).mean()) for g in ("gru4rec", "sasrec")
                for s in shared]
    assert c.p_seeds == pytest.approx(stats.ttest_rel(per_seed[:2], per_seed[2:]).pvalue)
    (swapped,) = drop_contrasts(tables, [("sasrec", "gru4rec")])
    assert swapped.delta == pytest.approx(-c.delta) and swapped.p == pytest.approx(c.p)
    with pytest.raises(UserInputError, match="--contrast gru4rec,nova: no robustness table has both rows; rows are "
                                             "gru4rec, sasrec"):
        drop_contrasts(tables, [("gru4rec", "nova")])

    sig = tmp_path / "contrasts.csv"
    text, written = leaderboard_report(store.path, robust=True, contrasts=("gru4rec,sasrec",), significance=sig)
    assert "drop contrasts on test NDCG@20" in text and "| gru4rec − sasrec " in text and sig in written
    frame = pd.read_csv(sig)
    assert list(frame[["a", "b", "seeds"]].iloc[0]) == ["gru4rec", "sasrec", 2]
    assert frame["delta"].iloc[0] == pytest.approx(c.delta)
    # a pair with a row named by --strategy but not run yet waits (listed), the others are contrasted
    text, _ = leaderboard_report(store.path, robust=True, strategies="gru4rec,sasrec,nova",
                                 contrasts=("gru4rec,sasrec", "nova,sasrec"))
    assert "| gru4rec − sasrec " in text and "nova − sasrec" not in text.split("Contrasts not run yet")[0]
    assert text.rstrip().endswith("Contrasts not run yet (a row named by --strategy has no perturbed run): "
                                  "nova − sasrec.")
    text, _ = leaderboard_report(store.path, robust=True, strategies="gru4rec,nova", contrasts=("nova,gru4rec",))
    assert "drop contrasts" not in text and "Contrasts not run yet" in text
    with pytest.raises(UserInputError, match="--contrast nova,sasrec: no robustness table has both rows"):
        leaderboard_report(store.path, robust=True, contrasts=("nova,sasrec",))   # nova not named: a typo?


def invoke(*args):
    return CliRunner().invoke(main, ["leaderboard", *map(str, args)])


def test_cli_writes_outputs_atomically(store, tmp_path, monkeypatch):
    out, sig = tmp_path / "out" / "board.md", tmp_path / "sig.csv"
    args = ["--store", str(store.path), "--output", str(out), "--significance", str(sig)]
    monkeypatch.setattr("sys.argv", ["/bin/fusionbench", "leaderboard", *args])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    first, blank, table = out.read_text().split("\n", 2)
    assert first == f"<!-- generated by: fusionbench leaderboard {' '.join(args)} -->" and blank == ""
    assert table.startswith("Table: beauty, protocol loo")
    assert {"p", "p_holm", "test"} <= set(pd.read_csv(sig).columns)
    csv = invoke("--store", store.path, "--format", "csv", "--metrics", "hr", "--k", "10")
    assert csv.exit_code == 0 and "HR@10_mean" in csv.stdout.splitlines()[0]
    md = invoke("--store", store.path, "--metrics", "hr", "--k", "10", "--columns", "train.precision,dim")
    assert md.exit_code == 0, md.output
    header = next([c.strip() for c in line.split("|")[1:-1]] for line in md.stdout.splitlines()
                  if line.startswith("| strategy"))
    assert header == ["strategy", "train.precision", "dim", "HR@10", "seeds"]


@pytest.mark.parametrize("args, message", [
    (("--store", "{tmp}/none.db"), "--store {tmp}/none.db: no such file"),
    (("--store", "{db}", "--dataset", "toys"), "--dataset 'toys': no finished runs"),
    (("--store", "{db}", "--protocol", "ratio"), "--protocol 'ratio': no finished runs in {db}; protocols there: loo"),
    (("--store", "{db}", "--dataset", "beauty", "--protocol", "ratio"), "runs of dataset 'beauty' in"),
    (("--store", "{db}", "--metrics", "AUC"), "--metrics must list some of HR, NDCG, MRR"),
    (("--store", "{db}", "--k", "0"), "--k must be"),
    (("--store", "{db}", "--plot-dir", "{tmp}"), "--plot-dir needs --robustness"),
    (("--store", "{db}", "--robustness"), "no finished perturbed runs"),
    (("--store", "{db}", "--robustness", "--robustness-metric", "NDCG"), "--robustness-metric must be METRIC@K"),
    (("--store", "{db}", "--contrast", "early,late"), "--contrast needs --robustness"),
    (("--store", "{db}", "--robustness", "--significance", "{tmp}/s.csv"), "pass --contrast A,B"),
    (("--store", "{db}", "--robustness", "--contrast", "early"), "--contrast must be two different rows as A,B"),
    (("--store", "{junk}"), "not a fusionbench results store"),
    (("--store", "{db}", "--strategy", "nova"), "--strategy 'nova': no finished runs of it in {db}"),
    (("--store", "{db}", "--where", "dim=7"), "no finished run matches --strategy / --where"),
    (("--store", "{db}", "--at-default", "dims"), "--at-default dims: no run in {db} and no strategy named by "
                                                   "--strategy has an option 'dims'"),
    (("--store", "{db}", "--at-default", " ,"), "--at-default expects KEY[,KEY...]"),
    (("--store", "{db}", "--columns", "dim,dims"), "--columns dims: no run in {db} has an option 'dims'; options "
                                                   "there: "),
    (("--store", "{db}", "--columns", " , "), "--columns expects KEY[,KEY...]"),
    (("--store", "{db}", "--robustness", "--columns", "dim"), "--columns applies to leaderboards"),
])
def test_cli_errors_name_the_option(store, tmp_path, args, message):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all, just some bytes" * 4)
    fill = dict(tmp=tmp_path, db=store.path, junk=tmp_path / "junk.db")
    result = invoke(*(a.format(**fill) for a in args))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message.format(**fill) in result.output
    assert "beauty" in result.output or "--dataset" not in message


def test_open_store_does_not_create_a_missing_file(tmp_path):
    with pytest.raises(UserInputError):
        open_store(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_an_option_held_only_when_set_reads_its_default_where_a_run_leaves_it_out():
    """MGAT's ``layout`` enters a config only when set (runs stored before it existed keep their identity):
    such a run reads ``compact`` under ``--columns layout``, not ``n/a``, and ``--where layout=compact``
    keeps it; SASRec, which has no such option, reads ``n/a``; ``--columns`` accepts the key when no run
    set it."""
    from fusionbench.report.collect import Run, RunGroup, check_setting_keys, setting_text

    stored = resolve(RunRequest(strategy="mgat", dataset="beauty", seed=0))
    assert "layout" not in stored["strategy_options"]
    chosen = resolve(RunRequest(strategy="mgat", dataset="beauty", seed=0, strategy_options={"layout": "reference"}))
    sasrec = resolve(RunRequest(strategy="sasrec", dataset="beauty", seed=0))
    rows = [RunGroup(str(n), [Run(n, str(n), 0, config)]) for n, config in enumerate((stored, chosen, sasrec))]
    assert [setting_text(setting_values(row, "layout")) for row in rows] == ["compact", "reference", "n/a"]
    assert setting_values(rows[0], "train.exclude_history") == (False,)
    check_setting_keys(["layout"], rows[0].runs, "the store")              # no error: an option of mgat
    with pytest.raises(UserInputError, match="--columns layout: no run in the store"):
        check_setting_keys(["layout"], rows[2].runs, "the store")
    runs = [run for row in rows for run in row.runs]
    compact = Selection.parse("mgat", ["layout=compact"]).apply(runs, "the store")
    assert [run.config for run in compact] == [stored]                   # --where reads the default too
    assert len(Selection.parse("mgat", ["layout!=reference"]).apply(runs, "the store")) == 1
