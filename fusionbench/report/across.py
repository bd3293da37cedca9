r"""Across datasets: which strategies are separable at all over a whole table, not one column at a time
(``fusionbench leaderboard --across``), after Demšar, "Statistical Comparisons of Classifiers over
Multiple Data Sets", JMLR 7 (2006) 1–30.

**Blocks and treatments.** A *column* (block) is one dataset × metric of one protocol (with
``pool_protocols``: one dataset × protocol × metric); its value for a row is the row's leaderboard cell,
the mean over seeds (``ratio-paper``: of the stored per-epoch maxima). A *row* (treatment) is a report row,
matched across tables by its label; only rows present in every column enter (the others are listed).
There are N columns and k rows; an analysis needs two tables or more (N ≥ 2) and k ≥ 2 rows.

**Ranks.** In each column, rank 1 is the highest value and tied rows share the mean of the ranks they
span; :math:`R_j = \frac1N \sum_i r_{ij}` is row j's mean rank.

**Friedman test.**

.. math::
    \chi^2_F = \frac{12N}{k(k+1)} \Big[\sum_j R_j^2 - \frac{k(k+1)^2}{4}\Big] \Big/ C,\qquad
    C = 1 - \frac{\sum_i \sum_{g} (t_{ig}^3 - t_{ig})}{N k (k^2 - 1)},

:math:`t_{ig}` the sizes of the tie groups of column i (C = 1 without ties: Demšar's Eq.; with ties the
correction ``scipy.stats.friedmanchisquare`` applies), p from :math:`\chi^2_{k-1}`; and Iman and
Davenport's less conservative

.. math:: F_F = \frac{(N-1)\,\chi^2_F}{N(k-1) - \chi^2_F} \sim F_{k-1,\,(k-1)(N-1)} .

**Nemenyi post-hoc.** Two rows differ at level α when their mean ranks differ by at least

.. math:: CD = q_\alpha \sqrt{\frac{k(k+1)}{6N}},\qquad q_\alpha = \frac{Q_{1-\alpha}(k, \infty)}{\sqrt 2},

Q the studentized range quantile (``scipy.stats.studentized_range``; where scipy lacks it, Demšar's
Table 5(a), α = 0.05, k ≤ 10: :data:`DEMSAR_Q05`). A *clique* is a maximal run of rows, in mean-rank
order, whose mean ranks span less than CD: the bars of the critical-difference diagram.

**Holm–Wilcoxon post-hoc.** For every pair of rows, the Wilcoxon signed-rank test (two-sided,
``zero_method="zsplit"``) over their N paired column values; Holm–Bonferroni over the k(k−1)/2 pairs
(:func:`fusionbench.report.significance.holm`).

**Caveat.** The metrics of one dataset are not independent blocks (HR@5 and HR@20 move together), so
dataset × metric columns overstate N; with one metric (``--metrics HR --k 20``) the blocks are the datasets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from fusionbench.atomic import atomic_write
from fusionbench.errors import UserInputError
from fusionbench.report.leaderboard import Leaderboard
from fusionbench.report.significance import ALPHA, holm

PLOT_FORMATS = ("png", "svg", "pdf")
DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
"""Critical values q_0.05 of the two-tailed Nemenyi test (Demšar 2006, Table 5(a)), by k."""


def column_ranks(values: np.ndarray) -> np.ndarray:
    """``values [N, k]`` (higher is better) -> ranks ``[N, k]`` within each column, 1 = best, ties averaged."""
    return stats.rankdata(-np.asarray(values, dtype=np.float64), method="average", axis=1)


@dataclass(frozen=True)
class Friedman:
    n: int              # columns (blocks)
    k: int              # rows (treatments)
    chi2: float
    p: float
    f: float            # Iman–Davenport F_F
    p_f: float


def friedman(ranks: np.ndarray) -> Friedman:
    """The Friedman statistic (tie-corrected) and the Iman–Davenport F of ranks ``[N, k]`` (module docstring)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    n, k = ranks.shape
    if n < 2 or k < 2:
        raise UserInputError(f"the Friedman test needs at least 2 columns and 2 rows, got {n} and {k}")
    # each member of a tie group of size t adds t^2 - 1, so a group adds t^3 - t
    tied = (ranks[:, :, None] == ranks[:, None, :]).sum(axis=-1)
    correction = 1 - float((tied ** 2 - 1).sum()) / (n * k * (k * k - 1))
    return friedman_from_mean_ranks(ranks.mean(axis=0), n, correction)


def friedman_from_mean_ranks(mean_ranks: np.ndarray, n: int, correction: float = 1.0) -> Friedman:
    """The Friedman and Iman–Davenport tests from the mean ranks ``[k]`` over ``n`` columns and the tie
    correction C (1: no ties), as Demšar (2006) computes them from a table's average ranks."""
    mean = np.asarray(mean_ranks, dtype=np.float64)
    k = len(mean)
    if n < 2 or k < 2:
        raise UserInputError(f"the Friedman test needs at least 2 columns and 2 rows, got {n} and {k}")
    if correction <= 0:            # every column a full tie: the ranks say nothing
        return Friedman(n, k, 0.0, 1.0, 0.0, 1.0)
    chi2 = 12 * n / (k * (k + 1)) * (float(np.sum(mean ** 2)) - k * (k + 1) ** 2 / 4)
    chi2 = max(chi2 / correction, 0.0)
    p = float(stats.chi2.sf(chi2, k - 1))
    denominator = n * (k - 1) - chi2
    if denominator <= 1e-12:       # the same order in every column
        return Friedman(n, k, chi2, p, math.inf, 0.0)
    f = (n - 1) * chi2 / denominator
    return Friedman(n, k, chi2, p, f, float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))))


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """q_alpha of the Nemenyi test for k rows: the studentized range quantile (1 - alpha; k, inf) / sqrt(2)."""
    if k < 2:
        raise UserInputError(f"the Nemenyi test needs at least 2 rows, got {k}")
    try:
        from scipy.stats import studentized_range
    except ImportError:            # scipy < 1.7
        if alpha != 0.05 or k not in DEMSAR_Q05:
            raise UserInputError(f"no Nemenyi critical value for k = {k}, alpha = {alpha} without "
                                 "scipy.stats.studentized_range (scipy >= 1.7)") from None
        return DEMSAR_Q05[k]
    return float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """CD = q_alpha sqrt(k (k + 1) / (6 N))."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def cliques(mean_ranks: np.ndarray, cd: float) -> list[tuple[int, ...]]:
    """Maximal runs of rows (indices into ``mean_ranks``, in mean-rank order) whose mean ranks span less
    than ``cd``: the groups no pair of which the Nemenyi test separates. Single rows are not listed."""
    order = np.argsort(mean_ranks, kind="stable")
    r = np.asarray(mean_ranks)[order]
    ends = np.searchsorted(r, r + cd, side="left") - 1   # last j with r[j] - r[i] < cd
    out, reach = [], -1
    for i, end in enumerate(ends):
        if end > i and end > reach:
            out.append(tuple(int(j) for j in order[i:end + 1]))
            reach = end
    return out


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    rank_a: float
    rank_b: float
    statistic: float
    p: float
    p_holm: float
    nemenyi: bool       # |R_a - R_b| >= CD

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def wilcoxon_holm(values: np.ndarray, labels: list[str], mean_ranks: np.ndarray, cd: float) -> list[Pair]:
    """Every pair of rows of ``values [N, k]``: Wilcoxon signed-rank (zsplit) over the N columns, Holm-adjusted."""
    k = values.shape[1]
    pairs, raw = [], []
    for a in range(k):
        for b in range(a + 1, k):
            d = values[:, a] - values[:, b]
            if not d.any():
                statistic, p = 0.0, 1.0
            else:
                result = stats.wilcoxon(values[:, a], values[:, b], zero_method="zsplit")
                statistic, p = float(result.statistic), float(result.pvalue)
            pairs.append((a, b, statistic))
            raw.append(p)
    adjusted = holm(np.array(raw))
    return [Pair(labels[a], labels[b], float(mean_ranks[a]), float(mean_ranks[b]), s, p, float(q),
                 abs(mean_ranks[a] - mean_ranks[b]) >= cd)
            for (a, b, s), p, q in zip(pairs, raw, adjusted)]


@dataclass
class Analysis:
    name: str                       # the protocol, or "pooled"
    tables: list[str]               # "dataset/protocol" of the tables used
    columns: list[str]              # "dataset · metric" (pooled: "dataset · protocol · metric")
    labels: list[str]               # rows, by mean rank (best first)
    values: np.ndarray              # [N, k] means in %
    ranks: np.ndarray               # [N, k]
    friedman: Friedman
    q: float
    cd: float
    pairs: list[Pair]
    dropped: list[tuple[str, list[str]]] = field(default_factory=list)   # label, tables lacking it

    @property
    def mean_ranks(self) -> np.ndarray:
        return self.ranks.mean(axis=0)

    @property
    def cliques(self) -> list[tuple[int, ...]]:
        return cliques(self.mean_ranks, self.cd)


def analyse(name: str, boards: list[Leaderboard], pooled: bool, alpha: float = ALPHA) -> Analysis:
    """The across-table analysis of ``boards`` (module docstring): columns = boards × their columns."""
    if len(boards) < 2:
        raise UserInputError(f"--across needs at least two dataset tables to compare over, got {len(boards)}")
    present = [{row.group.label: row for row in board.rows} for board in boards]
    names = [f"{b.dataset}/{b.protocol}" for b in boards]
    labels = [label for label in present[0] if all(label in p for p in present)]
    every = list(dict.fromkeys(label for p in present for label in p))
    dropped = [(label, [n for n, p in zip(names, present) if label not in p]) for label in every if label not in labels]
    if len(labels) < 2:
        raise UserInputError(f"--across {name}: fewer than 2 rows are in every table ({', '.join(names)}); "
                             f"rows there: {', '.join(every)}")
    columns, values = [], []
    for board, rows in zip(boards, present):
        for column in board.columns:
            columns.append(f"{board.dataset}{f' · {board.protocol}' if pooled else ''} · {column.name}")
            values.append([rows[label].cells[column.name].mean for label in labels])
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(column_ranks(values).mean(axis=0), kind="stable")     # rows by mean rank, best first
    labels, values = [labels[j] for j in order], values[:, order]
    ranks = column_ranks(values)
    test = friedman(ranks)
    q = nemenyi_q(len(labels), alpha)
    cd = q * math.sqrt(len(labels) * (len(labels) + 1) / (6 * len(columns)))
    pairs = wilcoxon_holm(values, labels, ranks.mean(axis=0), cd)
    return Analysis(name, names, columns, labels, values, ranks, test, q, cd, pairs, dropped)


def build_across(boards: list[Leaderboard], pool_protocols: bool = False) -> tuple[list[Analysis], list[str]]:
    """One :class:`Analysis` per protocol with two dataset tables or more (or one over every table with
    ``pool_protocols``), and a note per protocol skipped. None possible is an error naming what there is."""
    if pool_protocols:
        return [analyse("pooled", boards, pooled=True)], []
    by_protocol: dict[str, list[Leaderboard]] = {}
    for board in boards:
        by_protocol.setdefault(board.protocol, []).append(board)
    analyses, skipped = [], []
    for protocol, chosen in by_protocol.items():
        if len(chosen) >= 2:
            analyses.append(analyse(protocol, chosen, pooled=False))
        else:
            skipped.append(f"protocol {protocol}: one dataset table ({chosen[0].dataset}), nothing to compare over")
    if not analyses:
        there = ", ".join(f"{b.dataset}/{b.protocol}" for b in boards)
        raise UserInputError(f"--across needs two dataset tables or more under one protocol (or --pool-protocols "
                             f"with two dataset × protocol tables); the store has {there}")
    return analyses, skipped


def text_diagram(analysis: Analysis, width: int = 50) -> str:
    """The critical-difference diagram as text: the mean-rank axis, each row at its mean rank, the CD
    span, and one bar per clique."""
    k = len(analysis.labels)
    mean = analysis.mean_ranks
    order = np.argsort(mean, kind="stable")
    pad = max(len(label) for label in analysis.labels) + 8

    def at(rank: float) -> int:
        return int(round((rank - 1) / max(k - 1, 1) * width))

    lines = [" " * pad + f"1{' ' * (width - 1 - len(str(k)))} {k}".ljust(width + 1),
             " " * pad + "|" + "-" * (width - 1) + "|"]
    for j in order:
        lines.append(f"{analysis.labels[j]:<{pad - 8}} {mean[j]:6.2f} " + " " * at(mean[j]) + "o")
    span = max(at(1 + analysis.cd) - at(1), 1)
    lines.append(f"{'CD':<{pad - 8}} {analysis.cd:6.2f} " + "|" + "=" * max(span - 1, 0) + "|")
    for n, clique in enumerate(analysis.cliques, start=1):
        lo, hi = at(mean[clique[0]]), at(mean[clique[-1]])
        lines.append(f"{f'clique {n}':<{pad - 8}} {'':6} " + " " * lo + "[" + "-" * max(hi - lo - 1, 0) + "]")
    return "\n".join(line.rstrip() for line in lines)


def render_markdown(analyses: list[Analysis], skipped: list[str]) -> str:
    """Per analysis: the ranks per column, the Friedman and Iman–Davenport tests, Nemenyi's CD with the
    text diagram and cliques, and the Holm-corrected pairwise Wilcoxon tests."""
    parts = []
    for a in analyses:
        order = np.argsort(a.mean_ranks, kind="stable")
        body = [[a.labels[j], *(f"{r:g}" for r in a.ranks[:, j]), f"{a.mean_ranks[j]:.2f}"] for j in order]
        ranks = tabulate(body, headers=["strategy", *a.columns, "mean rank"], tablefmt="github", disable_numparse=True)
        f = a.friedman
        tests = (f"Friedman χ²_F = {f.chi2:.3f} (k − 1 = {f.k - 1} df), p = {f.p:.3g}; Iman–Davenport F_F = "
                 f"{f.f:.3f} ({f.k - 1}, {(f.k - 1) * (f.n - 1)} df), p = {f.p_f:.3g}. Nemenyi (α = {ALPHA}): "
                 f"q_α = {a.q:.3f}, CD = q_α·√(k(k+1)/(6N)) = {a.cd:.3f} with k = {f.k}, N = {f.n}.")
        groups = "; ".join("{" + ", ".join(a.labels[j] for j in c) + "}" for c in a.cliques) or "none"
        pairs = tabulate([[p.a, p.b, f"{p.rank_a - p.rank_b:+.2f}", "yes" if p.nemenyi else "no", f"{p.statistic:g}",
                           f"{p.p:.3g}", f"{p.p_holm:.3g}", "yes" if p.significant else "no"] for p in a.pairs],
                         headers=["row A", "row B", "R_A − R_B", "Nemenyi (≥ CD)", "Wilcoxon W", "p", "p (Holm)",
                                  f"Holm p < {ALPHA}"], tablefmt="github", disable_numparse=True)
        dropped = ("Rows not in every table (left out): " + "; ".join(f"{label} (not in {', '.join(where)})"
                                                                     for label, where in a.dropped) + ".\n"
                   if a.dropped else "")
        parts.append(f"Across tables — {a.name}: {', '.join(a.tables)}; N = {f.n} columns (dataset × metric"
                     f"{' × protocol' if a.name == 'pooled' else ''}), k = {f.k} rows. Rank 1 = best value in the "
                     "column (mean over seeds), ties share their mean rank. The metrics of one dataset are not "
                     f"independent columns, so N overstates the evidence.\n\n{ranks}\n\n{tests}\n\n"
                     f"```\n{text_diagram(a)}\n```\n\nGroups the Nemenyi test does not separate (mean ranks within "
                     f"CD): {groups}.\n\nPairwise Wilcoxon signed-rank over the N columns (zsplit), Holm–Bonferroni "
                     f"over the {len(a.pairs)} pairs:\n\n{pairs}\n\n{dropped}")
    if skipped:
        parts.append("Not analysed: " + "; ".join(skipped) + ".\n")
    return "\n".join(parts)


def to_frame(analyses: list[Analysis]) -> pd.DataFrame:
    """One line per (analysis, row): mean rank, rank in every column, and the analysis' test results."""
    records = []
    for a in analyses:
        for j, label in enumerate(a.labels):
            records.append({"analysis": a.name, "label": label, "mean_rank": float(a.mean_ranks[j]),
                            **{f"rank {c}": float(a.ranks[i, j]) for i, c in enumerate(a.columns)},
                            "friedman_chi2": a.friedman.chi2, "friedman_p": a.friedman.p,
                            "iman_davenport_f": a.friedman.f, "iman_davenport_p": a.friedman.p_f,
                            "nemenyi_q": a.q, "cd": a.cd, "n_columns": a.friedman.n, "k_rows": a.friedman.k})
    return pd.DataFrame(records)


def plot(analysis: Analysis, path: Path) -> None:
    """The critical-difference diagram (Demšar 2006, Fig. 1 style) written to ``path`` (format from the
    suffix: png, svg, pdf) with matplotlib's Agg canvas, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(analysis.labels)
    mean = analysis.mean_ranks
    order = list(np.argsort(mean, kind="stable"))
    left, right = order[: (k + 1) // 2], order[(k + 1) // 2:]
    height = 1.4 + 0.28 * max(len(left), len(right)) + 0.2 * len(analysis.cliques)
    fig = Figure(figsize=(8, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.22, 0.02, 0.56, 0.96 - 0.35 / height])
    ax.set_xlim(1, max(k, 2))
    ax.set_ylim(0, 1)
    ax.axis("off")
    top = 0.86
    ax.plot([1, max(k, 2)], [top, top], color="black", lw=1)
    for r in range(1, max(k, 2) + 1):
        ax.plot([r, r], [top, top + 0.03], color="black", lw=1)
        ax.text(r, top + 0.05, str(r), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + analysis.cd], [0.97, 0.97], color="black", lw=2)
    ax.text(1 + analysis.cd / 2, 0.985, f"CD = {analysis.cd:.2f}", ha="center", va="bottom", fontsize=8)
    gap = 0.1 / height
    below = top - 0.06 - gap * len(analysis.cliques)          # the cliques' bars, then the labels
    step = (below - 0.04) / max(len(left), len(right), 1)
    for n, j in enumerate(left):
        y = below - n * step
        ax.plot([mean[j], mean[j], 1], [top, y, y], color="black", lw=0.8, clip_on=False)
        ax.text(-0.01, y, f"{analysis.labels[j]} ({mean[j]:.2f})", ha="right", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    for n, j in enumerate(right):
        y = below - n * step
        ax.plot([mean[j], mean[j], max(k, 2)], [top, y, y], color="black", lw=0.8, clip_on=False)
        ax.text(1.01, y, f"({mean[j]:.2f}) {analysis.labels[j]}", ha="left", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    for n, clique in enumerate(analysis.cliques):
        y = top - 0.04 - n * gap
        ax.plot([mean[clique[0]] - 0.03, mean[clique[-1]] + 0.03], [y, y], color="black", lw=3)
    fig.suptitle(f"{analysis.name}: {', '.join(analysis.tables)}", fontsize=9, y=0.995, va="top")
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in PLOT_FORMATS:
        raise UserInputError(f"--cd-plot {path}: the file must end in {', '.join('.' + s for s in PLOT_FORMATS)}")
    atomic_write(Path(path), lambda f: fig.savefig(f, format=suffix))


def plot_paths(path: Path, analyses: list[Analysis]) -> list[Path]:
    """``path`` for one analysis; ``<stem>_<name><suffix>`` per analysis for several."""
    path = Path(path)
    if len(analyses) == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{a.name}{path.suffix}") for a in analyses]
