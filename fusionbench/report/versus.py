r"""``leaderboard --versus KEY=VALUE``: every row of a leaderboard against its reference row, the same
configuration with option KEY at VALUE. An ablation reads this way: ``--versus features.modalities=none``
tests each strategy's channel variants (+ text, + image, all channels) against its own ID-only form, and
``--versus target=fused`` the ID item side against the fused one.

**Reference.** For a row :math:`r` whose option :math:`k` is not :math:`v`, :math:`\mathrm{ref}(r)` is the
row whose option :math:`k` is :math:`v` and whose configuration equals :math:`r`'s in every other respect
(:func:`fusionbench.report.collect.row_key` of both with :math:`k` left out; strategy and aggregator
included). Values are matched as ``--where`` matches them (:func:`collect.option_matches`: a list option
given as ``a,b``). A row without such a reference is listed, never compared with another row.

**Differences and tests.** Per column :math:`c` (test metric, %), over the seeds :math:`S` both rows have
(the seeds the tests pair on), :math:`m_c(r, s)` being row :math:`r`'s value on seed :math:`s`:

.. math:: \Delta_c(r) = \frac{1}{|S|} \sum_{s \in S} \big(m_c(r, s) - m_c(\mathrm{ref}(r), s)\big)

in percentage points (for rows with the same seeds, or without a common seed, the difference of the
table's means; the latter get no test), and the leaderboard's paired tests of :math:`r` against
:math:`\mathrm{ref}(r)` (:func:`fusionbench.report.leaderboard.compare_rows`: per-sample values averaged
over the seeds both rows share, and the t-test over those seeds' means), Holm–Bonferroni over every
comparison of one table, one family per test kind. ▲ / ▼: every test applicable to the metric rejects at
α after adjustment, with :math:`\Delta > 0` / :math:`< 0`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd
from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.report.collect import load_ranks, option_matches, option_view, row_key, without_option
from fusionbench.report.leaderboard import Leaderboard, Row, compare_rows, shared_seeds
from fusionbench.report.significance import ALPHA, SAMPLE_TESTS, Comparison, adjust
from fusionbench.store import ResultStore

ABOVE, BELOW = "▲", "▼"


@dataclass(frozen=True)
class Reference:
    """``--versus KEY=VALUE``: the option key (as ``--set`` names it) and the reference value (text)."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str) -> "Reference":
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--versus expects KEY=VALUE with KEY as in --set (e.g. features.modalities=none), "
                                 f"got {text!r}")
        return cls(key.strip(), value.strip())

    def __str__(self) -> str:
        return f"{self.key}={self.value}"

    def holds(self, row: Row) -> bool:
        """Whether ``row``'s configuration has the reference value (every seed shares the row's options)."""
        flat = option_view(row.group.config)
        return self.key in flat and option_matches(flat[self.key], self.value)


@dataclass
class Versus:
    """One row against its reference row (``reference`` None: the table has none for it)."""

    row: Row
    reference: Optional[Row]
    comparisons: tuple[Comparison, ...] = ()

    def delta(self, column: str) -> float:
        """:math:`\\Delta_c` in percentage points over the seeds both rows have (NaN without a reference)."""
        if self.reference is None:
            return math.nan
        shared, mine, theirs = shared_seeds(self.row, self.reference)
        if not shared:
            return self.row.cells[column].mean - self.reference.cells[column].mean
        return 100.0 * (self.row.values[column][mine].mean() - self.reference.values[column][theirs].mean())

    def mark(self, column: str, metric: str) -> str:
        """▲ / ▼ when every test applicable to ``metric`` rejects after adjustment, else empty."""
        needed = set(SAMPLE_TESTS if metric == "HR" else SAMPLE_TESTS[:2])
        passed = {c.test for c in self.comparisons if c.column == column and c.significant}
        if not self.comparisons or not needed <= passed:
            return ""
        return ABOVE if self.delta(column) > 0 else BELOW


def versus_rows(store: ResultStore, board: Leaderboard, reference: Reference, ranking: str = "all") -> list[Versus]:
    """Every row of ``board`` whose option is not the reference value, with its reference row and the paired
    tests of one against the other on every column (Holm over the table, per test kind)."""
    if not any(reference.key in option_view(row.group.config) for row in board.rows):
        known = sorted({k for row in board.rows for k, v in option_view(row.group.config).items() if v is not None})
        raise UserInputError(f"--versus {reference}: no row of {board.dataset} / {board.protocol} has an option "
                             f"{reference.key!r}; options there: {', '.join(known)}")
    bases = {row_key(without_option(row.group.config, reference.key)): row
             for row in board.rows if reference.holds(row)}
    if not bases:
        raise UserInputError(f"--versus {reference}: no row of {board.dataset} / {board.protocol} has "
                             f"{reference.key} = {reference.value!r}, so no row has a reference")
    where = f"dataset {board.dataset!r}, protocol {board.protocol!r}"
    entries = []
    for row in board.rows:
        if reference.holds(row):
            continue
        base = bases.get(row_key(without_option(row.group.config, reference.key)))
        entry = Versus(row, base)
        if base is not None:
            ranks = load_ranks(store, [row.group, base.group], where, ranking)
            entry.comparisons = tuple(c for column in board.columns
                                      for c in compare_rows(row, base, column, ranks))
        entries.append(entry)
    adjust([c for entry in entries for c in entry.comparisons])
    return entries


def render_markdown(entries: Sequence[Versus], board: Leaderboard, reference: Reference) -> str:
    """The rows against their references: an introduction stating the tests, one line per row with a
    reference (Δ per column with its mark), and the rows without one."""
    compared = [e for e in entries if e.reference is not None]
    n_tests = sum(1 for e in compared for c in e.comparisons if c.test == "ttest")
    body = [[e.row.group.label, e.reference.group.label,
             *(f"{e.delta(c.name):+.2f}" + (f" {e.mark(c.name, c.metric)}" if e.mark(c.name, c.metric) else "")
               for c in board.columns),
             e.comparisons[0].seeds_text if e.comparisons and e.comparisons[0].seeds else "-"]
            for e in compared]
    table = tabulate(body, headers=["row", f"reference ({reference})", *(f"Δ {c.name}" for c in board.columns),
                                    "paired on"], tablefmt="github", disable_numparse=True)
    intro = (f"Against the reference rows ({board.dataset}, protocol {board.protocol}): each row minus the row with "
             f"the same configuration but {reference}, test metrics in percentage points (means over the seeds both "
             f"rows have, those the tests pair on). {ABOVE} / {BELOW}: significantly above / below its reference "
             f"(two-sided α = {ALPHA}: paired t-test, Wilcoxon signed-rank with zsplit and, for HR, exact McNemar all "
             f"reject after Holm–Bonferroni over the {n_tests} comparisons of this table; per-sample values averaged "
             "over the seeds both rows share).")
    missing = [e.row.group.label for e in entries if e.reference is None]
    notes = [f"No reference row ({reference}) on this table for: {', '.join(missing)}."] if missing else []
    body_text = table if compared else "(no row has a reference on this table)"
    return "\n".join([intro, "", body_text, "", *notes]).rstrip() + "\n"


def to_frame(entries: Sequence[Versus], board: Leaderboard, reference: Reference) -> pd.DataFrame:
    """One line per row with a reference and column: Δ (points), the mark, and the Holm-adjusted p per test."""
    lines = []
    for e in entries:
        if e.reference is None:
            continue
        for column in board.columns:
            line = {"dataset": board.dataset, "protocol": board.protocol, "versus": str(reference),
                    "label": e.row.group.label, "reference": e.reference.group.label, "column": column.name,
                    "delta": e.delta(column.name), "mark": e.mark(column.name, column.metric)}
            line.update({f"p_holm_{c.test}": c.p_holm for c in e.comparisons if c.column == column.name})
            lines.append(line)
    return pd.DataFrame(lines)
