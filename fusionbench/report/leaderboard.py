"""Leaderboards: one table per dataset x protocol, rows = strategy variants, cells = mean ± std over seeds.

Only finished runs without a perturbation enter. A cell is the mean and the sample standard deviation
(ddof = 1; none with one seed) over the row's seeds of the metric in %, from the stored test ranks (under
``ratio-paper``, from the stored per-epoch maxima; see :func:`collect.seed_values`). Per column the
highest mean is bold and the highest mean among baselines (rows whose strategy is not in ``proposed``,
default :data:`PROPOSED`) is underlined. The best row (the first in table order among equal means) is
tested against every other row with the paired per-sample tests of :mod:`fusionbench.report.significance`;
Holm–Bonferroni runs over all comparisons of one table (columns x other rows), one family per test kind;
a cell gets the mark † when every test applicable to its metric (t-test, Wilcoxon, and McNemar for HR)
rejects at α after adjustment.

Rows may differ in budget: the caption says which of :data:`BUDGET_KNOBS` differ between the rows shown
and which rows hold which value (a knob a row's strategy lacks is ``n/a`` there, not a difference), and
``settings`` (``--columns``) adds one column per option key with each row's resolved value
(:func:`collect.setting_values`; seeds that disagree show every value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.report.collect import (
    LEAKY_LABEL,
    LEAKY_PROTOCOL,
    NOT_SET,
    RANKINGS,
    Column,
    Run,
    RunGroup,
    Selection,
    check_one_data_version,
    check_setting_keys,
    data_name,
    done_runs,
    group_runs,
    load_ranks,
    per_sample_values,
    perturbation_of,
    seed_values,
    setting_text,
    setting_values,
)
from fusionbench.report.significance import (
    ALPHA,
    SAMPLE_TESTS,
    SEED_TEST,
    Comparison,
    adjust,
    sample_tests,
    seed_means_test,
)
from fusionbench.store import ResultStore, canonical_json

PROPOSED = ("mmsr", "mdsrec")  # the strategies the paper proposes; every other strategy is a baseline
MARK = "†"
# the settings of a training budget; the caption names those that differ between the rows of a table
BUDGET_KNOBS = ("dim", "layers", "train.lr", "train.batch_size", "train.epochs", "train.patience", "train.precision",
                "features.modalities", "max_len")


@dataclass
class Cell:
    mean: float          # %
    std: float           # %, NaN with one seed
    best: bool = False
    best_baseline: bool = False
    below_best: bool = False  # significantly below the column's best row


@dataclass
class Row:
    group: RunGroup
    proposed: bool
    values: dict[str, np.ndarray]  # column -> per-seed values [n_seeds] (fractions)
    cells: dict[str, Cell]


@dataclass
class Leaderboard:
    dataset: str
    protocol: str
    columns: list[Column]
    rows: list[Row]
    comparisons: list[Comparison]
    settings: tuple[str, ...] = ()  # option keys shown as columns (--columns)
    ranking: str = "all"            # test ranks among all items or among unseen ones (collect.RANKINGS)
    not_run: tuple[str, ...] = ()   # strategies named by --strategy without a matching run in this table
    diverged: tuple[tuple[str, int, int], ...] = ()  # (row label, seed, epoch) of runs whose training loss ran away

    @property
    def leaky(self) -> bool:
        return self.protocol == LEAKY_PROTOCOL


def build_leaderboards(store: ResultStore, dataset: str | None, protocol: str | None, columns: list[Column],
                       proposed: tuple[str, ...] = PROPOSED, selection: Selection = Selection(),
                       settings: tuple[str, ...] = (), significance: bool = True,
                       ranking: str = "all", extra: Sequence[Run] = (),
                       labels: Mapping[str, str] | None = None) -> list[Leaderboard]:
    """One :class:`Leaderboard` per (dataset with its options, protocol) in the store, optionally filtered
    to one dataset name and one protocol, and to the runs ``selection`` keeps; ``settings`` are option keys
    (as ``--set`` names them, or ``aggregator``) to show per row, each an option of some run. Without
    ``significance`` the paired tests are skipped (no † marks, no comparisons): the reports that read only
    the cells' means (``--published``, ``--across``) need none. ``ranking``: read the test ranks among all
    items (``all``) or among the items outside each sample's history (``unseen``; ``collect.test_split``).
    ``extra``: runs of another store read beside (:func:`collect.done_runs`); ``labels``: row key -> the
    label of that row instead of its variant label (``leaderboard --tuned`` labels the default rows)."""
    if ranking not in RANKINGS:
        raise UserInputError(f"--ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    runs = [run for run in done_runs(store, dataset, protocol, selection, extra) if perturbation_of(run) is None]
    if not runs:
        raise UserInputError(f"{store.path}: every matching finished run is perturbed; "
                             "use --robustness for those")
    check_setting_keys(settings, runs, str(store.path))
    tables: dict[tuple[str, str], list] = {}
    for run in runs:
        tables.setdefault((data_name(run.config), run.config["protocol"]), []).append(run)
    if ranking != "all" and any(pr == LEAKY_PROTOCOL for _, pr in tables):
        raise UserInputError(f"--ranking {ranking}: {LEAKY_PROTOCOL} runs record test metrics among all items "
                             f"only; pick another --protocol")
    boards = []
    for (ds, pr), rs in sorted(tables.items()):
        boards.append(_build(store, ds, pr, rs, columns, proposed, settings, significance, ranking, labels))
        boards[-1].not_run = selection.not_run(rs)
    return boards


def _build(store: ResultStore, dataset: str, protocol: str, runs: list, columns: list[Column],
           proposed: tuple[str, ...], settings: tuple[str, ...], significance: bool = True,
           ranking: str = "all", labels: Mapping[str, str] | None = None) -> Leaderboard:
    where = f"dataset {dataset!r}, protocol {protocol!r}"
    check_one_data_version(runs, where)
    groups = group_runs(runs)
    for group in groups:
        group.label = (labels or {}).get(group.key, group.label)
    groups.sort(key=lambda g: (g.strategy in proposed, g.label))
    ranks = load_ranks(store, groups, where, ranking)
    rows = []
    for g in groups:
        values = {c.name: seed_values(store, g.runs, ranks[g.key], c) for c in columns}
        cells = {name: Cell(100 * v.mean(), 100 * v.std(ddof=1) if len(v) > 1 else math.nan)
                 for name, v in values.items()}
        rows.append(Row(g, g.strategy in proposed, values, cells))
    comparisons = []
    for column in columns:
        means = np.array([row.cells[column.name].mean for row in rows])
        for row in rows:
            row.cells[column.name].best = row.cells[column.name].mean == means.max()
        baselines = [row for row in rows if not row.proposed]
        if baselines:
            top = max(row.cells[column.name].mean for row in baselines)
            for row in baselines:
                row.cells[column.name].best_baseline = row.cells[column.name].mean == top
        best = rows[int(means.argmax())]
        comparisons += [c for other in rows if other is not best and significance
                        for c in compare_rows(best, other, column, ranks)]
    adjust(comparisons)
    for column in columns:
        needed = set(SAMPLE_TESTS if column.metric == "HR" else SAMPLE_TESTS[:2])
        for row in rows:
            passed = {c.test for c in comparisons
                      if c.column == column.name and c.other == row.group.label and c.significant}
            row.cells[column.name].below_best = needed <= passed
    return Leaderboard(dataset, protocol, columns, rows, comparisons, settings, ranking,
                       diverged=diverged_runs(store, groups))


def diverged_runs(store: ResultStore, groups: Sequence[RunGroup]) -> tuple[tuple[str, int, int], ...]:
    """``(row label, seed, epoch)`` for every run of ``groups`` whose stored training history diverged at
    that epoch (:func:`fusionbench.train.divergence_epoch`, at the default factor)."""
    from fusionbench.train import divergence_epoch

    found = []
    for group in groups:
        for run in group.runs:
            epoch = divergence_epoch((run.source or store).history(run.run_id))
            if epoch is not None:
                found.append((group.label, run.seed, epoch))
    return tuple(found)


def diverged_line(runs: Sequence[tuple[str, int, int]]) -> str:
    """The note under a table naming its runs whose training loss ran away (:func:`diverged_runs`; "" when
    none did)."""
    from fusionbench.train import TrainOptions

    if not runs:
        return ""
    named = "; ".join(f"{label} (seed {seed}, epoch {epoch})" for label, seed, epoch in runs)
    return (f"\nTraining loss diverged (an epoch's mean loss above {TrainOptions.diverge_factor:g} times the lowest "
            f"before it; the row's values are its best validation epoch's, as for every run): {named}.\n")


def shared_seeds(a: Row, b: Row) -> tuple[tuple[int, ...], list[int], list[int]]:
    """The seeds rows ``a`` and ``b`` both have (sorted) and their positions in each row's seeds (the
    order of :attr:`Row.values`): the seeds every paired comparison of the two rows is taken over."""
    shared = tuple(sorted(set(a.group.seeds) & set(b.group.seeds)))
    return shared, [a.group.seeds.index(s) for s in shared], [b.group.seeds.index(s) for s in shared]


def compare_rows(best: Row, other: Row, column: Column, ranks: dict[str, np.ndarray]) -> list[Comparison]:
    """The paired tests of row ``best`` against row ``other`` on ``column`` (:mod:`.significance`: per-sample
    tests on the per-sample values averaged over the seeds both rows have, and the t-test over those
    seeds' means), unadjusted; ``ranks``: :func:`collect.load_ranks` of both rows. A leaderboard tests
    its column's best row against every other; ``leaderboard --tuned`` a tuned row against its default."""
    shared, b, o = shared_seeds(best, other)
    base = dict(column=column.name, best=best.group.label, other=other.group.label, seeds=shared)
    if not shared:
        tests = SAMPLE_TESTS if column.metric == "HR" else SAMPLE_TESTS[:2]
        return [Comparison(test=t, n=0, statistic=math.nan, p=math.nan, **base) for t in (*tests, SEED_TEST)]
    x_best = per_sample_values(ranks[best.group.key][b], column).mean(axis=0)
    x_other = per_sample_values(ranks[other.group.key][o], column).mean(axis=0)
    out = [Comparison(test=t, n=len(x_best), statistic=s, p=p, **base)
           for t, (s, p) in sample_tests(x_best, x_other, binary=column.metric == "HR").items()]
    s, p = seed_means_test(best.values[column.name][b], other.values[column.name][o])
    out.append(Comparison(test=SEED_TEST, n=len(shared), statistic=s, p=p, **base))
    return out


def _label(board: Leaderboard, row: Row) -> str:
    return f"{row.group.label} — {LEAKY_LABEL}" if board.leaky else row.group.label


def _cell_text(cell: Cell) -> str:
    text = f"{cell.mean:.2f}" + ("" if math.isnan(cell.std) else f" ± {cell.std:.2f}")
    if cell.best_baseline:
        text = f"<u>{text}</u>"
    if cell.best:
        text = f"**{text}**"
    return text + (f" {MARK}" if cell.below_best else "")


def _value_order(values: tuple) -> tuple:
    """Sort key of a row's setting values: numbers by size, before anything else by text."""
    return tuple((0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))
                 for v in values)


def _row_names(chosen: list[Row], rows: list[Row]) -> list[str]:
    """Short names of ``chosen`` among ``rows``: the strategy when all its rows are chosen, else the label."""
    ids = {id(row) for row in chosen}
    names: list[str] = []
    for row in chosen:
        whole = all(id(r) in ids for r in rows if r.group.strategy == row.group.strategy)
        name = row.group.strategy if whole else row.group.label
        if name not in names:
            names.append(name)
    return names


def _knob_groups(rows: list[Row], values: list[tuple]) -> str:
    """``"64: the rest; 128: mmsr; n/a: srgnn"``: rows by value (in value order), the value held by the
    most names (at least two) written as "the rest", rows without the knob last."""
    groups: dict[str, tuple[tuple, list[Row]]] = {}
    for row, value in zip(rows, values):
        groups.setdefault(canonical_json(value), (value, []))[1].append(row)
    held = sorted((g for g in groups.values() if g[0]), key=lambda g: _value_order(g[0]))
    names = [_row_names(chosen, rows) for _, chosen in held]
    rest = max(range(len(held)), key=lambda i: len(names[i]))
    parts = [f"{setting_text(value)}: {'the rest' if i == rest and len(names[i]) > 1 else ', '.join(names[i])}"
             for i, (value, _) in enumerate(held)]
    unset = [row for row, value in zip(rows, values) if not value]
    if unset:
        parts.append(f"{NOT_SET}: {', '.join(_row_names(unset, rows))}")
    return "; ".join(parts)


def budget_caption(rows: list[Row]) -> str:
    """The caption line naming which :data:`BUDGET_KNOBS` differ between ``rows``, with each value's rows;
    a knob a row lacks (``n/a``) is not a difference."""
    differ, same = [], []
    for knob in BUDGET_KNOBS:
        values = [setting_values(row.group, knob) for row in rows]
        held = {canonical_json(v) for v in values if v}
        if len(held) > 1:
            differ.append(f"{knob} ({_knob_groups(rows, values)})")
        elif held:
            same.append(knob)
    shared = f"same in every row that has them: {', '.join(same)}" if same else ""
    if not differ:
        return "Settings that differ between rows: none" + (f" ({shared})." if shared else ".")
    return f"Settings that differ between rows: {', '.join(differ)}." + (f" The {shared}." if shared else "")


def render_markdown(boards: list[Leaderboard], proposed: tuple[str, ...] = PROPOSED) -> str:
    """Markdown: per table a caption (with :func:`budget_caption`), the table, and a key."""
    parts = []
    for board in boards:
        names = [c.name for c in board.columns]
        body = [[_label(board, row), *(setting_text(setting_values(row.group, key)) for key in board.settings),
                 *(_cell_text(row.cells[n]) for n in names), len(row.group.seeds)]
                for row in board.rows]
        n_tests = sum(1 for c in board.comparisons if c.test == "ttest" and not math.isnan(c.p))
        selection = (f"{LEAKY_LABEL}: each metric is its own maximum over epochs on the test set; the tests use "
                     "the ranks of the checkpoint selected on test" if board.leaky
                     else "model selection on validation only")
        ranked = ("" if board.ranking == "all" else
                  ", each test target ranked among the items outside its history (--ranking unseen)")
        caption = (f"Table: {board.dataset}, protocol {board.protocol} ({selection}{ranked}). Test metrics in %, "
                   f"mean ± std over the seeds counted in the last column.\n{budget_caption(board.rows)}")
        key = (f"Bold: best per column; underlined: best baseline (strategies other than {', '.join(proposed)}); "
               f"{MARK}: significantly below the column's best row (two-sided α = {ALPHA}: paired t-test, Wilcoxon "
               "signed-rank with zsplit and, for HR, exact McNemar all reject after Holm–Bonferroni over the "
               f"{n_tests} comparisons of this table; per-sample metrics averaged over the seeds both rows share).")
        table = tabulate(body, headers=["strategy", *board.settings, *names, "seeds"], tablefmt="github",
                         disable_numparse=True)
        parts.append(f"{caption}\n\n{table}\n\n{key}\n{Selection.not_run_line(board.not_run)}"
                     f"{diverged_line(board.diverged)}")
    return "\n".join(parts)


def to_frame(boards: list[Leaderboard]) -> pd.DataFrame:
    """One line per row: identity, seeds, the ``settings`` keys (``aggregator`` is always there), then per
    column mean/std (%) and the best/best_baseline/below_best flags."""
    lines = []
    for board in boards:
        for row in board.rows:
            line = {"dataset": board.dataset, "protocol": board.protocol,
                    "selection": LEAKY_LABEL if board.leaky else "validation",
                    "label": row.group.label, "strategy": row.group.strategy,
                    "aggregator": row.group.config.get("aggregator") or "", "proposed": row.proposed,
                    "seeds": len(row.group.seeds), "seed_list": " ".join(map(str, row.group.seeds))}
            line.update({key: setting_text(setting_values(row.group, key)) for key in board.settings
                         if key not in line})
            for column in board.columns:
                cell = row.cells[column.name]
                line.update({f"{column.name}_mean": cell.mean, f"{column.name}_std": cell.std,
                             f"{column.name}_best": cell.best, f"{column.name}_best_baseline": cell.best_baseline,
                             f"{column.name}_below_best": cell.below_best})
            lines.append(line)
    return pd.DataFrame(lines)


def comparisons_frame(boards: list[Leaderboard],
                      extra: Sequence[tuple[Leaderboard, Sequence[Comparison]]] = ()) -> pd.DataFrame:
    """Every test of every table: the long form behind the † marks; ``extra``: more tests of a table
    (``--versus``: rows against their reference rows, ``best`` = the row, ``other`` = its reference)."""
    fields = ["dataset", "protocol", "column", "best", "other", "test", "n", "seeds", "statistic", "p", "p_holm",
              "significant"]
    found = [*((b, b.comparisons) for b in boards), *extra]
    return pd.DataFrame([[b.dataset, b.protocol, c.column, c.best, c.other, c.test, c.n, " ".join(map(str, c.seeds)),
                          c.statistic, c.p, c.p_holm, c.significant] for b, tests in found for c in tests],
                        columns=fields)
