"""Published numbers as data (reports/published/*.csv), ours beside them (`leaderboard --published`), and the
two selections of one recorded trajectory (`leaderboard --inflation`)."""
import csv
import io
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.errors import UserInputError
from fusionbench.metrics import summarize
from fusionbench.registry import STRATEGIES
from fusionbench.report import leaderboard_report
from fusionbench.report.collect import Column, done_runs, group_runs
from fusionbench.report.leaderboard import build_leaderboards
from fusionbench.report.published import (
    PublishedFileError,
    build_comparisons,
    columns_of,
    load_published,
    matches,
    not_run,
    to_frame,
)
from fusionbench.report.trajectory import build_inflation
from fusionbench.runner import RunRequest, resolve
from fusionbench.store import UNSEEN_TEST, ResultStore, RunSummary

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "reports" / "published"
SPEC = ROOT.parent / "shared" / "specs" / "protocol.md"
TABLES = {n: PUBLISHED / f"mmsr_table{n}.csv" for n in (2, 3, 4)}
HEADER = "table,dataset,paper_row,strategy,aggregator,options,metric,value\n"


@pytest.fixture(scope="module")
def tables():
    return {n: load_published(path) for n, path in TABLES.items()}


def value(published, dataset, paper_row, metric, **identity):
    found = [v for (e, m), v in published.values.items()
             if e.dataset == dataset and e.paper_row == paper_row and m == metric
             and all(getattr(e, k) == want for k, want in identity.items())]
    assert len(found) >= 1 and len(set(found)) == 1
    return found[0]


def test_published_files_hold_the_paper_tables_as_the_spec_transcribes_them(tables):
    """Cells read off specs/protocol.md §7 by hand, one per table region."""
    assert value(tables[2], "beauty", "MMSR", "HR@5") == 7.1563
    assert value(tables[2], "sports", "SASRec^F", "MRR@20") == 2.1427
    assert value(tables[2], "phone", "DIF-SR", "HR@20") == 14.6781
    assert value(tables[2], "kitchen", "MMGCN", "MRR@5") == 0.3154
    assert value(tables[3], "beauty", "GCN", "MRR@5") == 3.163          # printed 3.163 in the paper
    assert value(tables[3], "clothing", "HAN-GNN", "MRR@5") == 1.2642
    assert value(tables[4], "beauty", "he", "MRR@5") == 4.446           # printed 4.446 in the paper
    assert value(tables[4], "clothing", "w/o e^po", "HR@5") == 2.0665   # the ablation above the full model
    assert value(tables[4], "sports", "w/o e^ty", "MRR@5") == 1.9854
    assert value(tables[4], "sports", "ho", "HR@5", aggregator="gcn") == value(tables[4], "sports", "ho", "HR@5",
                                                                                aggregator="han") == 3.0306
    assert {n: len(t.values) for n, t in tables.items()} == {2: 6 * 12 * 4, 3: 3 * 8 * 2, 4: 3 * 12 * 2}


@pytest.mark.skipif(not SPEC.is_file(), reason=f"the shared specs are not at {SPEC}")
def test_every_published_cell_is_the_specs_cell(tables):
    """Table 2 against the spec's machine-readable copy, Tables 3 and 4 against its markdown tables."""
    text = SPEC.read_text()
    names = {"Beauty": "beauty", "Clothing": "clothing", "Sport": "sports", "Toys": "toys", "Kitchen": "kitchen",
             "Phone": "phone"}
    block = text.split("```csv\n", 1)[1].split("```", 1)[0]
    spec2 = {(names[r["dataset"]], r["model"], m): float(r[m])
             for r in csv.DictReader(io.StringIO(block)) for m in ("HR@5", "MRR@5", "HR@20", "MRR@20")}
    ours2 = {(e.dataset, e.paper_row, m): v for (e, m), v in tables[2].values.items()}
    assert ours2 == spec2
    for n in (3, 4):
        section = text.split(f"### Table {n}", 1)[1]
        rows = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")][2:]
        spec = {}
        for line in rows:
            label, *cells = [c.strip() for c in line.strip("|").split("|")]
            for i, dataset in enumerate(("beauty", "clothing", "sports")):
                spec[(dataset, label, "HR@5")], spec[(dataset, label, "MRR@5")] = map(float, cells[2 * i:2 * i + 2])
        assert {(e.dataset, e.paper_row, m): v for (e, m), v in tables[n].values.items()} == spec


def test_every_published_row_maps_to_a_registered_strategy_or_is_marked_not_implemented(tables):
    for published in tables.values():
        for entry in published.entries:
            assert entry.strategy is None or entry.strategy in STRATEGIES.names(), entry
    table2 = {e.paper_row: e.strategy for e in tables[2].entries}
    assert table2 == {"GRU4Rec": "gru4rec", "SASRec": "sasrec", "SR-GNN": "srgnn", "MMGCN": "mmgcn", "MGAT": "mgat",
                      "BM3": "bm3", "GRU4Rec^F": "gru4recf", "SASRec^F": "sasrecf", "NOVA": "nova", "DIF-SR": "difsr",
                      "Trans2D": "trans2d", "MMSR": "mmsr"}
    assert {e.aggregator for e in tables[3].entries} == {"gcn", "sage", "gat", "graphormer", "rgat", "hgnn", "hgat",
                                                          "han"}
    full = [e for e in tables[4].entries if e.paper_row == "HAN-GNN (full)"]
    assert all((e.strategy, e.aggregator, e.options) == ("mmsr", "han", ()) for e in full)
    assert {dict(e.resolved).get("use_pos") for e in tables[4].entries if e.paper_row == "w/o e^po"} == {False}


def write(tmp_path, body, header=HEADER, name="t.csv"):
    path = tmp_path / name
    path.write_text("# a comment\n" + header + body)
    return path


@pytest.mark.parametrize("body, header, message", [
    ("Table 2,beauty,SASRec,sasrec,,,HR@5,6.19\n", "table,dataset,row,strategy,aggregator,options,metric,value\n",
     r"line 2: the header must be"),
    ("Table 2,beauty,SASRec,sasrec,,,HR@5\n", HEADER, r"line 3: expected 8 fields"),
    ("Table 2,beauty,SASRec,sasrec,,,HR@5,six\n", HEADER, r"line 3, field 'value': 'six' is not a number"),
    ("Table 2,beauty,SASRec,sasrec,,,HR@5,160\n", HEADER, r"line 3, field 'value': a published value is a percentage"),
    ("Table 2,beauty,SASRec,sasrec,,,HIT@5,6.19\n", HEADER, r"line 3, field 'metric': expected METRIC@K"),
    ("Table 2,beuaty,SASRec,sasrec,,,HR@5,6.19\n", HEADER, r"line 3, field 'dataset': unknown dataset 'beuaty'"),
    ("Table 2,beauty,SASRec,sasrek,,,HR@5,6.19\n", HEADER, r"line 3, field 'strategy': unknown strategy 'sasrek'"),
    ("Table 2,beauty,SASRec,sasrec,han,,HR@5,6.19\n", HEADER, r"field 'aggregator': strategy 'sasrec' takes no"),
    ("Table 3,beauty,X,mmsr,hann,,HR@5,6.19\n", HEADER, r"field 'aggregator': unknown aggregator 'hann'"),
    ("Table 4,beauty,X,mmsr,han,agg.update=sideways,HR@5,6.19\n", HEADER, r"line 3, field 'options': .*update"),
    ("Table 4,beauty,X,mmsr,han,use_pos,HR@5,6.19\n", HEADER, r"field 'options': expected KEY=VALUE"),
    ("Table 2,beauty,X,-,han,,HR@5,6.19\n", HEADER, r"field 'strategy': '-' \(not implemented\) takes no"),
    ("Table 2,beauty,SASRec,sasrec,,,HR@5,6.19\nTable 2,beauty,SASRec,sasrec,,,HR@5,6.2\n", HEADER,
     r"line 4, field 'metric': HR@5 of 'SASRec' \(beauty, Table 2\) is given twice \(first on line 3\)"),
    ("Table 4,beauty,ho,mmsr,han,agg.update=ho,HR@5,6.6\nTable 4,beauty,ho,mmsr,gcn,agg.relations=homogeneous,"
     "HR@5,6.7\n", HEADER, r"line 4, field 'value': 'ho' HR@5 .* is 6.7 here but 6.6 on line 3"),
    ("Table 2,,SASRec,sasrec,,,HR@5,6.19\n", HEADER, r"line 3, field 'dataset': empty"),
    ("", HEADER, r"a header but no values"),
])
def test_malformed_files_are_errors_naming_file_line_and_field(tmp_path, body, header, message):
    path = write(tmp_path, body, header)
    with pytest.raises(PublishedFileError, match=message) as err:
        load_published(path)
    assert str(path) in str(err.value)


def test_a_missing_file_names_the_option_and_not_implemented_rows_are_allowed(tmp_path):
    with pytest.raises(UserInputError, match="--published .*nope.csv: no such file"):
        load_published(tmp_path / "nope.csv")
    published = load_published(write(tmp_path, "Table 2,beauty,Caser,-,,,HR@5,3.1\n"))
    assert published.entries[0].strategy is None and not published.entries[0].implemented


def test_a_row_may_name_an_option_held_only_when_set_at_its_default(tmp_path):
    """MGAT's ``layout`` enters a resolved config only when set; ``layout=compact`` still names an option."""
    published = load_published(write(tmp_path, "Table 2,beauty,MGAT,mgat,,layout=compact,HR@5,4.09\n"))
    assert dict(published.entries[0].resolved) == {"layout": "compact"}
    with pytest.raises(PublishedFileError, match="field 'options': strategy 'mgat': unknown option 'layouts'"):
        load_published(write(tmp_path, "Table 2,beauty,MGAT,mgat,,layouts=compact,HR@5,4.09\n"))


# -- ours beside the paper ------------------------------------------------------------------------------------
RANKS = {0: np.tile([0, 1, 2, 3, 4, 5, 6, 7, 30, 50], 6), 1: np.tile([0, 0, 2, 9, 4, 25, 6, 1, 8, 3], 6),
         2: np.tile([1, 1, 2, 3, 40, 5, 6, 7, 0, 2], 6)}


def add(store, strategy, seed, ranks, protocol="loo", aggregator=None, train=None, history=None, metrics=None,
        dataset="beauty", **options):
    config = resolve(RunRequest(strategy=strategy, dataset=dataset, protocol=protocol, seed=seed,
                                aggregator=aggregator, strategy_options=options, train_options=train or {}))
    config["dataset_checksum"] = f"c-{dataset}"
    run = store.start(config, config["dataset_checksum"], {}, "rev")
    ranks = np.asarray(ranks)
    store.finish(run, {"test": metrics or summarize(torch.from_numpy(ranks))}, {"test": ranks},
                 RunSummary(history=history or []))
    return run


def hand(ranks, column: Column) -> float:
    r = np.asarray(ranks, dtype=np.float64)
    gain = {"HR": np.ones_like(r), "NDCG": 1 / np.log2(r + 2), "MRR": 1 / (r + 1)}[column.metric]
    return float(np.where(r < column.k, gain, 0.0).mean())


def entry(published, paper_row, **identity):
    found = [e for e in published.entries if e.paper_row == paper_row
             and all(getattr(e, k) == v for k, v in identity.items())]
    return found[0]


def test_a_row_of_ours_stands_for_an_entry_only_with_exactly_the_entrys_options(tmp_path, tables):
    store = ResultStore(tmp_path / "r.db")
    add(store, "mmsr", 0, RANKS[0], aggregator="han", train={"precision": "bf16"})        # budget: still the row
    add(store, "mmsr", 0, RANKS[0], aggregator="han", train={"precision": "bf16"}, use_pos=False)
    add(store, "mmsr", 0, RANKS[0], aggregator="han", train={"precision": "bf16"}, dim=64)    # another variant
    add(store, "mmsr", 0, RANKS[0], aggregator="gcn", train={"precision": "bf16"})
    add(store, "mmsr", 0, RANKS[0], aggregator="gcn")
    groups = {g.label: g for g in group_runs(done_runs(store, "beauty", "loo"))}
    full = entry(tables[4], "HAN-GNN (full)", dataset="beauty")
    no_pos = entry(tables[4], "w/o e^po", dataset="beauty")
    gcn = entry(tables[3], "GCN", dataset="beauty")
    ho_gcn = entry(tables[4], "ho", dataset="beauty", aggregator="gcn")
    assert [label for label, g in groups.items() if matches(full, g)] == ["mmsr + han (train.precision=bf16)"]
    assert [label for label, g in groups.items() if matches(no_pos, g)] == \
        ["mmsr + han (use_pos=False, train.precision=bf16)"]
    assert sorted(label for label, g in groups.items() if matches(gcn, g)) == \
        ["mmsr + gcn", "mmsr + gcn (train.precision=bf16)"]
    assert not any(matches(ho_gcn, g) for g in groups.values())
    assert ho_gcn.config_text == "mmsr + gcn (agg.relations=homogeneous)"      # how its missing line names it


@pytest.fixture()
def board_store(tmp_path):
    """beauty: mmsr + han (3 seeds, loo and ratio-paper), sasrec (seed 0, loo); toys: sasrec (loo)."""
    store = ResultStore(tmp_path / "r.db")
    for seed, ranks in RANKS.items():
        add(store, "mmsr", seed, ranks, aggregator="han")
        add(store, "mmsr", seed, ranks, protocol="ratio-paper", aggregator="han",
            metrics={**summarize(torch.from_numpy(ranks)), "HR@5": 0.9, "MRR@20": 0.5})
    add(store, "sasrec", 0, RANKS[1])
    add(store, "sasrec", 0, RANKS[2], dataset="toys")
    yield store
    store.close()


def test_ours_beside_the_paper_with_ratio_missing_rows_and_ndcg_ours_only(board_store, tables):
    boards = build_leaderboards(board_store, None, None, columns_of([tables[2]]), significance=False)
    found = build_comparisons(board_store, [tables[2]], boards)
    assert [(c.dataset, c.protocol) for c in found] == [("beauty", "loo"), ("beauty", "ratio-paper"), ("toys", "loo")]
    assert found[0].metrics == ["HR@5", "MRR@5", "HR@20", "MRR@20"] and found[0].extra == ["NDCG@5", "NDCG@20"]
    frame = to_frame(found).set_index(["dataset", "protocol", "paper_row", "metric"])
    mmsr = frame.loc[("beauty", "loo", "MMSR", "HR@5")]
    expected = [hand(RANKS[s], Column("HR", 5)) * 100 for s in (0, 1, 2)]
    assert mmsr.ours_mean == pytest.approx(np.mean(expected))
    assert mmsr.ours_std == pytest.approx(np.std(expected, ddof=1))
    assert mmsr.paper == 7.1563 and mmsr.ratio == pytest.approx(np.mean(expected) / 7.1563)
    assert mmsr.seeds == 3 and mmsr.ours == "mmsr + han"
    ndcg = frame.loc[("beauty", "loo", "MMSR", "NDCG@20")]
    assert math.isnan(ndcg.paper) and ndcg.ours_mean == pytest.approx(100 * np.mean([hand(RANKS[s], Column("NDCG", 20))
                                                                                    for s in (0, 1, 2)]))
    sasrec = frame.loc[("beauty", "loo", "SASRec", "MRR@20")]
    assert sasrec.seeds == 1 and math.isnan(sasrec.ours_std)
    gru = frame.loc[("beauty", "loo", "GRU4Rec", "HR@5")]                 # not run: missing, never filled
    assert gru.ours == "missing: gru4rec" and gru.seeds == 0 and math.isnan(gru.ours_mean) and math.isnan(gru.ratio)
    leaky = frame.loc[("beauty", "ratio-paper", "MMSR", "HR@5")]           # the stored per-epoch maxima
    assert leaky.ours_mean == pytest.approx(90.0) and leaky.selection == "test-selected (leaky)"
    assert "test-selected (leaky)" in leaky.ours
    assert [(t, ds, n) for t, _, ds, n in not_run([tables[2]], found)] == \
        [("Table 2", "clothing", 12), ("Table 2", "sports", 12), ("Table 2", "kitchen", 12), ("Table 2", "phone", 12)]


def test_the_markdown_view_labels_leaky_numbers_and_lists_datasets_not_run(board_store):
    text, _ = leaderboard_report(board_store.path, published_files=(TABLES[2], TABLES[3]), command="fusionbench x")
    assert text.startswith("<!-- generated by: fusionbench x -->\n")
    header = next(line for line in text.splitlines() if line.startswith("| paper row"))
    assert [c.strip() for c in header.strip("|").split("|")][:6] == ["paper row", "ours", "seeds", "HR@5 ours",
                                                                     "HR@5 paper", "HR@5 ratio"]
    assert "NDCG@5 paper" not in text and "NDCG@20 ours" in text
    assert "mmsr + han — test-selected (leaky)" in text
    assert "| GRU4Rec " in text and "missing: gru4rec" in text
    assert "Table 3 (mmsr_table3.csv) on clothing: 8 rows" in text
    assert "paper's best MMSR (7.1563)" in text
    only, _ = leaderboard_report(board_store.path, dataset="beauty", published_files=(TABLES[2],))
    assert "toys" not in only and "Published, with no runs" not in only       # other datasets were not asked for


# -- one trajectory, two selections ---------------------------------------------------------------------------
def trajectory(values_by_epoch):
    return [{"epoch": e + 1, "loss": 1.0, "seconds": 0.0, "valid": {"NDCG@20": 0.0}, "test": test}
            for e, test in enumerate(values_by_epoch)]


@pytest.fixture()
def recorded_store(tmp_path):
    """sasrec under ratio with record_test, 2 seeds: the epoch selected on validation has the stored test
    ranks' metrics; other epochs did better on HR@5."""
    store = ResultStore(tmp_path / "r.db")
    for seed in (0, 1):
        ranks = RANKS[seed]
        final = summarize(torch.from_numpy(ranks))
        epochs = [{**final, "HR@5": final["HR@5"] - 0.05}, final, {**final, "HR@5": final["HR@5"] + 0.1 * (seed + 1)}]
        add(store, "sasrec", seed, ranks, protocol="ratio", train={"record_test": True}, history=trajectory(epochs))
    add(store, "sasrec", 0, RANKS[2], protocol="ratio")                     # not recorded: not in the view
    yield store
    store.close()


def test_inflation_is_the_test_selected_maximum_minus_the_validation_selected_value(recorded_store):
    tables = build_inflation(recorded_store, None, None, [Column("HR", 5), Column("MRR", 20)])
    assert len(tables) == 1 and [row.group.label for row in tables[0].rows] == ["sasrec (train.record_test=True)"]
    row = tables[0].rows[0]
    valid = np.array([hand(RANKS[s], Column("HR", 5)) for s in (0, 1)])
    np.testing.assert_allclose(row.validation["HR@5"], valid)
    np.testing.assert_allclose(row.test["HR@5"], valid + [0.1, 0.2])
    np.testing.assert_allclose(row.test["MRR@20"], row.validation["MRR@20"])   # no epoch beat the selected one
    text, _ = leaderboard_report(recorded_store.path, inflation=True, metrics="HR", ks="5")
    assert "+15.00 ± 7.07" in text                                           # 10 and 20 points, paired per seed


def test_recorded_rows_get_a_test_selected_line_beside_the_paper(recorded_store, tables):
    text, _ = leaderboard_report(recorded_store.path, published_files=(TABLES[2],), fmt="csv")
    frame = pd.read_csv(io.StringIO(text))
    lines = frame[(frame.paper_row == "SASRec") & (frame.metric == "HR@5")]
    assert list(lines.selection) == ["validation", "validation", "test-selected (leaky)"]   # rows by label
    assert list(lines.ours) == ["sasrec", "sasrec (train.record_test=True)",
                                "sasrec (train.record_test=True) — test-selected (leaky)"]
    assert list(lines.seeds) == [1, 2, 2]
    recorded, leaky = lines.iloc[1], lines.iloc[2]
    assert leaky.ours_mean - recorded.ours_mean == pytest.approx(15.0)
    assert leaky.ratio == pytest.approx(leaky.ours_mean / 6.19)


def test_inflation_needs_recorded_runs(board_store):
    with pytest.raises(UserInputError, match="--inflation: no finished run .* train.record_test=true"):
        leaderboard_report(board_store.path, inflation=True)


def invoke(*args):
    return CliRunner().invoke(main, ["leaderboard", *map(str, args)])


def documented_command() -> list[str]:
    """The command reports/README.md gives for reports/paper_tables.md, as arguments after `fusionbench`."""
    text = (ROOT / "reports" / "README.md").read_text()
    block = text.split("fusionbench leaderboard --store runs/paper.db --published", 1)[1].split("```", 1)[0]
    return shlex.split("leaderboard --store runs/paper.db --published" + block.replace("\\\n", " "))


def test_the_paper_tables_report_regenerates_from_its_first_line(recorded_store, tmp_path, monkeypatch):
    """The documented command, on a tiny store: its report starts with the command, which regenerates it."""
    out = tmp_path / "paper_tables.md"
    args = [str(recorded_store.path) if a == "runs/paper.db" else str(out) if a == "reports/paper_tables.md"
            else str(ROOT / a) if a.startswith("reports/published/") else a for a in documented_command()]
    assert args.count("--published") == 3 and "--inflation" in args
    monkeypatch.setattr(sys, "argv", ["fusionbench", *args])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    first, _, body = out.read_text().partition("\n")
    command = first.removeprefix("<!-- generated by: ").removesuffix(" -->")
    assert shlex.split(command) == ["fusionbench", *args]
    assert "Table 2 of the MMSR paper" in body and "one trajectory, two selections" in body
    out.unlink()
    again = CliRunner().invoke(main, shlex.split(command)[1:])
    assert again.exit_code == 0 and out.read_text().partition("\n")[2] == body


@pytest.mark.parametrize("args, message", [
    (("--published", "nope.csv"), "--published nope.csv: no such file"),
    (("--published", TABLES[2], "--robustness"), "does not combine with --robustness"),
    (("--published", TABLES[2], "--significance", "s.csv"), "--significance and --columns apply to the plain"),
    (("--published", TABLES[2], "--inflation", "--format", "csv"), "--format csv writes one kind of table"),
    (("--cd-plot", "cd.png"), "--cd-plot needs --across"),
    (("--pool-protocols",), "--pool-protocols needs --across"),
])
def test_cli_errors_name_the_option(board_store, args, message):
    result = invoke("--store", board_store.path, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_ranked_among_unseen_items_the_comparison_reads_those_ranks_and_drops_the_test_selected_line(tmp_path):
    """Under --ranking unseen a recorded run's line holds its unseen-item ranks' metrics, and no test-selected
    line appears: the per-epoch test scores rank every item, so they would mix two rankings."""
    store = ResultStore(tmp_path / "u.db")
    config = resolve(RunRequest(strategy="sasrec", protocol="ratio", train_options={"record_test": True}))
    config["dataset_checksum"] = "c-beauty"
    everything, unseen = RANKS[0], np.maximum(RANKS[0] - 3, 0)
    run = store.start(config, "c-beauty", {}, "rev")
    history = trajectory([{**summarize(torch.from_numpy(everything)), "HR@5": 0.99}])
    metrics = {"test": summarize(torch.from_numpy(everything)), UNSEEN_TEST: summarize(torch.from_numpy(unseen))}
    store.finish(run, metrics, {"test": everything, UNSEEN_TEST: unseen}, RunSummary(history=history))
    store.close()
    text, _ = leaderboard_report(tmp_path / "u.db", published_files=(TABLES[2],), fmt="csv", ranking="unseen")
    frame = pd.read_csv(io.StringIO(text))
    line = frame[(frame.paper_row == "SASRec") & (frame.metric == "HR@5")]
    assert list(line.selection) == ["validation"]
    assert line.ours_mean.iloc[0] == pytest.approx(100 * hand(unseen, Column("HR", 5)))
    assert hand(unseen, Column("HR", 5)) != hand(everything, Column("HR", 5))
    md, _ = leaderboard_report(tmp_path / "u.db", published_files=(TABLES[2],), ranking="unseen")
    assert "outside its history (--ranking unseen)" in md and "test-selected (leaky)" not in md
    recorded, _ = leaderboard_report(tmp_path / "u.db", published_files=(TABLES[2],))
    assert "test-selected (leaky)" in recorded                          # ranking all: the line is there


def test_a_matched_row_whose_training_loss_ran_away_is_named_under_its_comparison(tmp_path):
    store = ResultStore(tmp_path / "d.db")
    ran_away = trajectory([{}, {}])
    for entry, loss in zip(ran_away, (659.0, 11024.7)):
        entry["loss"] = loss
    add(store, "sasrec", 0, RANKS[0], history=ran_away)
    add(store, "sasrec", 0, RANKS[1], history=ran_away, dim=32)       # matches no published row
    add(store, "gru4rec", 0, RANKS[2], history=trajectory([{}, {}]))  # a healthy loss
    store.close()
    text, _ = leaderboard_report(tmp_path / "d.db", published_files=(TABLES[2],))
    assert "Training loss diverged" in text and "): sasrec (seed 0, epoch 2).\n" in text
    assert "dim=32" not in text.split("Training loss diverged", 1)[1] and "gru4rec (seed" not in text
