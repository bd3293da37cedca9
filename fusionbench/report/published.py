r"""Published numbers beside ours: ``fusionbench leaderboard --published FILE``.

**File format** (``reports/published/*.csv``). UTF-8 CSV; lines starting with ``#`` are comments (the
source of the numbers), blank lines are skipped, then a header naming :data:`FIELDS` in this order and
one line per published cell:

``table``
    the paper's table as its caption names it (``Table 2``).
``dataset``
    our dataset name (``fusionbench list datasets``: the paper's "Sport" is ``sports``).
``paper_row``
    the row as the paper labels it (``SASRec^F``, ``NI(hohe)``).
``strategy``
    our strategy for the row, or ``-`` where fusionbench has none (shown as not implemented).
``aggregator``
    our aggregator (empty: the strategy's default; empty for strategies without one).
``options``
    ``;``-separated ``KEY=VALUE`` as ``--set`` takes them that make the row (``agg.update=sync``;
    empty: the defaults).
``metric``
    ``METRIC@K`` as the paper reports it (``HR@5``, ``MRR@20``).
``value``
    the published value in %, as printed.

A paper row may be listed under more than one configuration (the same label and values on each; e.g.
Table 4's ``ho`` both as MMSR's attention restricted to the homogeneous relations and as GCN on them,
since the caption leaves open which it was); each configuration is one *entry* of the table.
:func:`load_published` checks every line (an error names the file, the line and the field): the dataset,
strategy and aggregator must be registered and the options must resolve for them.

**Matching** (:func:`matches`). A report row of ours (a configuration up to its seed) stands for an entry
when its strategy and aggregator (the entry's, else the strategy's default) are the entry's, every option
the entry gives has the entry's resolved value, and every other option that is not a ``train.*`` option
(training budget and precision, ``record_test``) has its default: Table 4's full-model row is never an
ablation's. Several rows of ours may stand for one entry (other training options); each gets its line.

**The comparison.** For every published table and every (dataset, protocol) of the store whose dataset
the table has: one line per entry and row of ours, with per published metric ours (mean ± std over
seeds, %, as the leaderboard computes it: the stored test ranks, or under ``ratio-paper`` the stored
per-epoch maxima), the published value, and the ratio

.. math:: \rho = \bar m_{\mathrm{ours}} / m_{\mathrm{paper}},

plus NDCG of ours at the table's cutoffs without a published column (the paper's NDCG divides the
correct one by a constant: specs/protocol.md §3). A row trained with ``train.record_test=true`` gets a
second line with its test-selected values (:mod:`.trajectory`), except on a board ranked among unseen
items (``--ranking unseen``): the test scores recorded per epoch rank every item. An entry without a row of ours reads
``missing``, one without a strategy ``not implemented``; nothing is filled in from elsewhere. A line
per metric sums up the ordering: the paper's best entry, ours, and Kendall's :math:`\tau_b` between
the two orderings over the entries both have.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.metrics import METRICS
from fusionbench.registry import AGGREGATORS, DATASETS, STRATEGIES, UnknownPluginError
from fusionbench.report.collect import (
    LEAKY_LABEL,
    Column,
    RunGroup,
    option_view,
    options_off_default,
)
from fusionbench.report.leaderboard import Leaderboard, Row, diverged_line
from fusionbench.report.trajectory import RECORDED_LABEL, records_test, test_selected_values
from fusionbench.store import ResultStore, canonical_json

FIELDS = ("table", "dataset", "paper_row", "strategy", "aggregator", "options", "metric", "value")
NOT_IMPLEMENTED = "-"
MISSING = "missing"


class PublishedFileError(UserInputError):
    """A malformed published-numbers file; the message names the file, line and field."""


@dataclass(frozen=True)
class Entry:
    """One configuration of one paper row of one table on one dataset.

    ``options``: the ``KEY=VALUE`` pairs as written; ``resolved``: each key with the value a run resolves
    it to (so ``use_pos=false`` compares equal to a stored ``false``); ``strategy`` ``None``: not
    implemented here."""

    table: str
    dataset: str
    paper_row: str
    strategy: Optional[str]
    aggregator: Optional[str]
    options: tuple[tuple[str, str], ...]
    resolved: tuple[tuple[str, Any], ...] = field(compare=False, default=())

    @property
    def implemented(self) -> bool:
        return self.strategy is not None

    @property
    def options_text(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.options)

    @property
    def config_text(self) -> str:
        """``mmsr + gcn (agg.relations=homogeneous)``: the configuration that stands for the row."""
        if not self.implemented:
            return "not implemented"
        head = self.strategy + (f" + {self.aggregator}" if self.aggregator else "")
        return head + (f" ({', '.join(f'{k}={v}' for k, v in self.options)})" if self.options else "")


@dataclass(frozen=True)
class Published:
    """The cells of one published-numbers file: ``values[(entry, metric)]`` in %, entries in file order."""

    path: Path
    entries: tuple[Entry, ...]
    values: dict[tuple[Entry, str], float]

    def tables(self) -> list[str]:
        return list(dict.fromkeys(e.table for e in self.entries))

    def datasets(self, table: str) -> list[str]:
        return list(dict.fromkeys(e.dataset for e in self.entries if e.table == table))

    def metrics(self, table: str) -> list[str]:
        """The table's metrics in the order the file first gives them."""
        return list(dict.fromkeys(m for (e, m) in self.values if e.table == table))

    def value(self, entry: Entry, metric: str) -> float:
        """The published value (%), NaN where the paper gives none."""
        return self.values.get((entry, metric), math.nan)


def _metric(text: str) -> Optional[Column]:
    name, sep, k = text.partition("@")
    if not sep or name not in METRICS or not k.isdigit() or int(k) < 1:
        return None
    return Column(name, int(k))


def _resolve_entry(table: str, dataset: str, paper_row: str, strategy: str, aggregator: str, options: str,
                   error) -> Entry:
    """The :class:`Entry` of one line's identity fields, checked against the registries (``error(field,
    message)`` raises naming the line)."""
    from fusionbench.runner import RunRequest, group_options, resolve

    if dataset not in DATASETS.names():
        error("dataset", f"unknown dataset {dataset!r}; known: {', '.join(DATASETS.names())}")
    if strategy == NOT_IMPLEMENTED:
        if aggregator or options:
            error("strategy", f"{NOT_IMPLEMENTED!r} (not implemented) takes no aggregator and no options")
        return Entry(table, dataset, paper_row, None, None, ())
    if strategy not in STRATEGIES.names():
        error("strategy", f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES.names())}, or "
                          f"{NOT_IMPLEMENTED!r} for a row fusionbench does not implement")
    default = STRATEGIES.get(strategy).default_aggregator
    if aggregator and not default:
        error("aggregator", f"strategy {strategy!r} takes no aggregator, got {aggregator!r}")
    if aggregator and aggregator not in AGGREGATORS.names():
        error("aggregator", f"unknown aggregator {aggregator!r}; known: {', '.join(AGGREGATORS.names())}")
    pairs = []
    for pair in (p.strip() for p in options.split(";") if p.strip()):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            error("options", f"expected KEY=VALUE pairs separated by ';', got {pair!r}")
        pairs.append((key.strip(), value.strip()))
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        error("options", f"a key is given twice in {options!r}")
    try:
        config = resolve(RunRequest(strategy=strategy, dataset=dataset, aggregator=aggregator or None,
                                    **group_options(dict(pairs), "options")))
    except (UserInputError, UnknownPluginError) as err:
        error("options", str(err))
    flat = option_view(config)
    unknown = [k for k in keys if k not in flat]
    if unknown:
        error("options", f"{unknown[0]!r} is not an option of {strategy}"
                         + (f" + {config['aggregator']}" if config.get("aggregator") else ""))
    return Entry(table, dataset, paper_row, strategy, config.get("aggregator"), tuple(pairs),
                 tuple((k, flat[k]) for k in keys))


def load_published(path: Path, option: str = "--published") -> Published:
    """Read and check a published-numbers file (module docstring). Every error names the file, the line
    and the field; a missing file names ``option``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{option} {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PublishedFileError(f"{path}: not UTF-8 text ({err})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise PublishedFileError(f"{path}: no header and no values (expected a header {','.join(FIELDS)})")
    (header_line, header), *body = lines
    names = next(csv.reader([header]))
    if [n.strip() for n in names] != list(FIELDS):
        raise PublishedFileError(f"{path}, line {header_line}: the header must be {','.join(FIELDS)}, got {header!r}")
    if not body:
        raise PublishedFileError(f"{path}: a header but no values")
    entries: dict[Entry, int] = {}
    resolved: dict[tuple, Entry] = {}
    values: dict[tuple[Entry, str], float] = {}
    seen: dict[tuple, int] = {}
    published: dict[tuple, tuple[float, int]] = {}
    for number, line in body:
        def error(name: str, message: str, number: int = number):
            raise PublishedFileError(f"{path}, line {number}, field {name!r}: {message}")

        fields = next(csv.reader([line]))
        if len(fields) != len(FIELDS):
            raise PublishedFileError(f"{path}, line {number}: expected {len(FIELDS)} fields ({','.join(FIELDS)}), "
                                     f"got {len(fields)}")
        row = dict(zip(FIELDS, (f.strip() for f in fields)))
        for name in ("table", "dataset", "paper_row", "strategy", "metric", "value"):
            if not row[name]:
                error(name, "empty")
        identity = tuple(row[n] for n in FIELDS[:6])
        if identity not in resolved:
            resolved[identity] = _resolve_entry(*identity, error)
        entry = resolved[identity]
        entries.setdefault(entry, number)
        column = _metric(row["metric"])
        if column is None:
            error("metric", f"expected METRIC@K with METRIC in {', '.join(METRICS)} and K >= 1, got {row['metric']!r}")
        try:
            value = float(row["value"])
        except ValueError:
            error("value", f"{row['value']!r} is not a number")
        if not (math.isfinite(value) and 0 <= value <= 100):
            error("value", f"a published value is a percentage in [0, 100], got {row['value']!r}")
        key = (entry, column.name)
        if key in seen:
            error("metric", f"{column.name} of {entry.paper_row!r} ({entry.dataset}, {entry.table}) is given twice "
                            f"(first on line {seen[key]})")
        seen[key] = number
        cell = (entry.table, entry.dataset, entry.paper_row, column.name)
        if cell in published and published[cell][0] != value:
            error("value", f"{entry.paper_row!r} {column.name} ({entry.dataset}, {entry.table}) is {value} here but "
                           f"{published[cell][0]} on line {published[cell][1]}: one paper row has one value")
        published.setdefault(cell, (value, number))
        values[key] = value
    return Published(path, tuple(entries), values)


def matches(entry: Entry, group: RunGroup) -> bool:
    """Whether our report row ``group`` stands for ``entry`` (module docstring, Matching)."""
    config = group.config
    if not entry.implemented or config["strategy"] != entry.strategy or config.get("aggregator") != entry.aggregator:
        return False
    flat = option_view(config)
    given = dict(entry.resolved)
    if any(canonical_json(flat.get(k)) != canonical_json(v) for k, v in given.items()):
        return False
    off = options_off_default(config)
    if off is None:
        return False
    return all(k in given or k.startswith("train.") for k in off)


@dataclass
class Line:
    """One line of a comparison: an entry and a row of ours under one selection (``row`` ``None``:
    missing or not implemented)."""

    entry: Entry
    row: Optional[Row]
    selection: str                                    # "validation", LEAKY_LABEL or RECORDED_LABEL
    values: dict[str, np.ndarray] = field(default_factory=dict)   # column -> [n_seeds] fractions

    @property
    def ours(self) -> str:
        if self.row is None:
            return f"{MISSING}: {self.entry.config_text}" if self.entry.implemented else "not implemented"
        label = self.row.group.label
        return label if self.selection == "validation" else f"{label} — {self.selection}"

    @property
    def seeds(self) -> int:
        return 0 if self.row is None else len(self.row.group.seeds)

    def mean_std(self, column: str) -> tuple[float, float]:
        """Mean and std (ddof 1) over seeds in %; NaN without values (std: also with one seed)."""
        v = self.values.get(column)
        if v is None or not len(v):
            return math.nan, math.nan
        return 100 * float(v.mean()), 100 * float(v.std(ddof=1)) if len(v) > 1 else math.nan


@dataclass
class Comparison:
    """One published table beside one (dataset, protocol) table of ours."""

    table: str
    source: Path
    board: Leaderboard
    metrics: list[str]        # the published metrics, file order
    extra: list[str]          # ours only: NDCG at the table's cutoffs
    lines: list[Line]
    published: Published

    @property
    def dataset(self) -> str:
        return self.board.dataset

    @property
    def protocol(self) -> str:
        return self.board.protocol


def columns_of(files: list[Published]) -> list[Column]:
    """Every column the comparisons need: the published metrics and NDCG at their cutoffs."""
    names: list[str] = []
    for published in files:
        for table in published.tables():
            metrics = published.metrics(table)
            names += metrics + _ndcg(metrics)
    return [_metric(name) for name in dict.fromkeys(names)]


def _ndcg(metrics: list[str]) -> list[str]:
    ks = sorted({_metric(m).k for m in metrics})
    return [f"NDCG@{k}" for k in ks if f"NDCG@{k}" not in metrics]


def board_dataset(board: Leaderboard) -> str:
    """The registry name of a board's dataset (its rows share it)."""
    return board.rows[0].group.config["dataset"]


def build_comparisons(store: ResultStore, files: list[Published], boards: list[Leaderboard]) -> list[Comparison]:
    """Every (published table, board) pair whose datasets agree, in file, table and board order."""
    out = []
    for published in files:
        for table in published.tables():
            metrics = published.metrics(table)
            extra = _ndcg(metrics)
            entries = [e for e in published.entries if e.table == table]
            for board in boards:
                chosen = [e for e in entries if e.dataset == board_dataset(board)]
                if chosen:
                    lines = [line for e in chosen for line in _lines(store, e, board, metrics + extra)]
                    out.append(Comparison(table, published.path, board, metrics, extra, lines, published))
    return out


def _lines(store: ResultStore, entry: Entry, board: Leaderboard, columns: list[str]) -> list[Line]:
    rows = [row for row in board.rows if matches(entry, row.group)]
    if not rows:
        return [Line(entry, None, "validation")]
    lines = []
    for row in rows:
        lines.append(Line(entry, row, LEAKY_LABEL if board.leaky else "validation",
                          {c: row.values[c] for c in columns}))
        # the per-epoch test scores rank every item: no test-selected line beside an ``unseen`` board
        if not board.leaky and board.ranking == "all" and records_test(row.group.config):
            lines.append(Line(entry, row, RECORDED_LABEL,
                              {c: test_selected_values(store, row.group.runs, _metric(c)) for c in columns}))
    return lines


def not_run(files: list[Published], comparisons: list[Comparison]) -> list[tuple[str, Path, str, int]]:
    """``(table, file, dataset, entries)`` of every published table × dataset without a board of ours."""
    done = {(c.source, c.table, board_dataset(c.board)) for c in comparisons}
    return [(table, p.path, ds, sum(1 for e in p.entries if e.table == table and e.dataset == ds))
            for p in files for table in p.tables() for ds in p.datasets(table) if (p.path, table, ds) not in done]


def _ratio(ours: float, paper: float) -> float:
    return ours / paper if paper and not math.isnan(ours) and not math.isnan(paper) else math.nan


def _num(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _ours_text(line: Line, column: str) -> str:
    if line.row is None:
        return MISSING if line.entry.implemented else "—"
    mean, std = line.mean_std(column)
    return _num(mean) + ("" if math.isnan(std) else f" ± {std:.2f}")


def orderings(comparison: Comparison) -> list[str]:
    """Per published metric and selection: the paper's best entry, ours among the entries we have, and
    Kendall's tau-b between the two orderings (the first line of ours per entry)."""
    out = []
    for selection in dict.fromkeys(line.selection for line in comparison.lines if line.row is not None):
        first: dict[Entry, Line] = {}
        for line in comparison.lines:
            if line.row is not None and line.selection == selection:
                first.setdefault(line.entry, line)
        for metric in comparison.metrics:
            paper = {e: comparison.published.value(e, metric) for e in comparison.published.entries
                     if e.table == comparison.table and e.dataset == board_dataset(comparison.board)}
            paper = {e: v for e, v in paper.items() if not math.isnan(v)}
            if not paper:
                continue
            top = max(paper, key=paper.get)
            both = [e for e in first if e in paper]
            text = f"- {metric}, {selection}: paper's best {top.paper_row} ({paper[top]:.4f})"
            if both:
                ours = {e: first[e].mean_std(metric)[0] for e in both}
                best = max(ours, key=ours.get)
                text += (f"; ours' best {best.paper_row} ({ours[best]:.2f}) of the {len(both)} "
                         f"row{'s' if len(both) != 1 else ''} run")
                if len(both) >= 2:
                    tau = stats.kendalltau([paper[e] for e in both], [ours[e] for e in both]).statistic
                    text += f"; Kendall τ_b = {_num(float(tau))}"
            out.append(text)
    return out


def render_markdown(comparisons: list[Comparison], missing: list[tuple[str, Path, str, int]]) -> str:
    """Per comparison a caption, the table (ours | paper | ratio per published metric, NDCG ours only),
    and the orderings; then the published tables × datasets without runs of ours."""
    parts = []
    for c in comparisons:
        headers = ["paper row", "ours", "seeds"]
        for metric in c.metrics:
            headers += [f"{metric} ours", f"{metric} paper", f"{metric} ratio"]
        headers += [f"{name} ours" for name in c.extra]
        body = []
        for line in c.lines:
            cells = [line.entry.paper_row, line.ours, line.seeds]
            for metric in c.metrics:
                paper = c.published.value(line.entry, metric)
                cells += [_ours_text(line, metric), _num(paper, 4), _num(_ratio(line.mean_std(metric)[0], paper))]
            cells += [_ours_text(line, name) for name in c.extra]
            body.append(cells)
        if c.board.leaky:
            selection = (f"{LEAKY_LABEL}: each metric its own maximum over epochs on the test set, as the paper's "
                         "reference code selects")
        elif c.board.ranking == "all":
            selection = ("model selection on validation only; a row trained with train.record_test=true also as "
                         f"{RECORDED_LABEL}: each metric's maximum over its epochs' test scores, the same models")
        else:
            selection = ("model selection on validation only; each test target ranked among the items outside its "
                         "history (--ranking unseen), where the paper ranks every item; no test-selected lines, as "
                         "the test scores recorded per epoch rank every item")
        caption = (f"{c.table} of the MMSR paper ({c.source.name}) beside ours: {c.dataset}, protocol {c.protocol} "
                   f"({selection}). Ours: test metrics in %, mean ± std over the seeds counted; paper: as published "
                   "(%); ratio = ours / paper. NDCG is ours only (the paper's divides by a constant, "
                   f"specs/protocol.md §3). \"{MISSING}\": no run of ours for the row, nothing filled in.")
        table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
        order = orderings(c)
        shown = {line.row.group.label for line in c.lines if line.row is not None}
        parts.append(f"{caption}\n\n{table}\n" + ("\nOrderings:\n" + "\n".join(order) + "\n" if order else "")
                     + diverged_line([run for run in c.board.diverged if run[0] in shown]))
    if missing:
        listed = "; ".join(f"{table} ({path.name}) on {ds}: {n} rows" for table, path, ds, n in missing)
        parts.append(f"Published, with no runs of ours in the store: {listed}.\n")
    return "\n".join(parts)


def to_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    """One line per (comparison line, metric): identity, ours (mean, std %), paper (%), ratio; NDCG lines
    have no paper value."""
    records = []
    for c in comparisons:
        for line in c.lines:
            for metric in c.metrics + c.extra:
                mean, std = line.mean_std(metric)
                paper = c.published.value(line.entry, metric)
                records.append({"table": c.table, "dataset": c.dataset, "protocol": c.protocol,
                                "paper_row": line.entry.paper_row, "strategy": line.entry.strategy or NOT_IMPLEMENTED,
                                "aggregator": line.entry.aggregator or "", "options": line.entry.options_text,
                                "ours": line.ours, "selection": line.selection if line.row is not None else "",
                                "seeds": line.seeds, "metric": metric, "ours_mean": mean, "ours_std": std,
                                "paper": paper, "ratio": _ratio(mean, paper)})
    return pd.DataFrame(records)
