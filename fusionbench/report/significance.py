r"""Paired significance tests between two report rows (specs/protocol.md §6).

The unit of pairing is the evaluation sample. Each row's per-sample metric is first averaged over the
seeds the two rows share, giving :math:`x_A, x_B \in \mathbb{R}^S`; then, two-sided:

* ``ttest``: paired t-test on :math:`d = x_A - x_B` (``scipy.stats.ttest_rel``);
* ``wilcoxon``: Wilcoxon signed-rank with ``zero_method="zsplit"`` (most differences of sparse top-K
  metrics are exactly 0);
* ``mcnemar`` (HR only): exact McNemar test, a binomial test of :math:`b` against :math:`b + c` with
  :math:`p = 1/2`, where :math:`b = \#\{d_s > 0\}` and :math:`c = \#\{d_s < 0\}` are the discordant
  samples. With one seed the hits are binary and this is McNemar's test exactly; with several it is
  the sign test on the seed-averaged hit rates.
* ``ttest-seeds`` (reported, not used for marks): paired t-test over the per-seed means of the shared
  seeds (n = #seeds, needs >= 2).

If every difference is exactly 0 the rows are indistinguishable: p = 1 without calling scipy (whose
tests are undefined there). If every difference is the same non-zero value the t statistic is
:math:`\pm\infty` and p = 0 (scipy's answer, without its precision-loss warning).

Holm–Bonferroni adjusts the p-values of one test kind over a family of comparisons: sort
:math:`p_{(1)} \le \dots \le p_{(m)}`, then :math:`\tilde p_{(i)} = \max_{j \le i} \min(1, (m - j + 1)\, p_{(j)})`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
SAMPLE_TESTS = ("ttest", "wilcoxon", "mcnemar")
SEED_TEST = "ttest-seeds"


@dataclass
class Comparison:
    """One paired test of row ``best`` against row ``other`` (on a leaderboard: a column's best row against
    another; in ``leaderboard --tuned``'s default vs tuned summary: a tuned row against its default)."""

    column: str
    best: str
    other: str
    test: str
    n: int                 # samples (or seeds for ttest-seeds)
    seeds: tuple[int, ...]
    statistic: float
    p: float
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA

    @property
    def seeds_text(self) -> str:
        """The paired seeds as table text: "seed 0", "seeds 0, 1, 2"."""
        return ("seed " if len(self.seeds) == 1 else "seeds ") + ", ".join(map(str, self.seeds))


def sample_tests(x_best: np.ndarray, x_other: np.ndarray, binary: bool) -> dict[str, tuple[float, float]]:
    """Per-sample paired tests of ``x_best [S]`` against ``x_other [S]`` -> ``{test: (statistic, p)}``;
    ``binary`` adds McNemar's exact test (HR)."""
    names = SAMPLE_TESTS if binary else SAMPLE_TESTS[:2]
    d = x_best - x_other
    if not d.any():
        return {name: (0.0, 1.0) for name in names}
    w = stats.wilcoxon(x_best, x_other, zero_method="zsplit")
    out = {"ttest": _ttest(d, x_best, x_other), "wilcoxon": (float(w.statistic), float(w.pvalue))}
    if binary:
        b, c = int((d > 0).sum()), int((d < 0).sum())
        out["mcnemar"] = (float(b), float(stats.binomtest(b, b + c, 0.5).pvalue))
    return out


def seed_means_test(means_best: np.ndarray, means_other: np.ndarray) -> tuple[float, float]:
    """Paired t-test over per-seed means ``[n_seeds]``; NaN with fewer than 2 seeds."""
    if len(means_best) < 2:
        return math.nan, math.nan
    d = means_best - means_other
    return _ttest(d, means_best, means_other) if d.any() else (0.0, 1.0)


def _ttest(d: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Paired t-test of ``a`` against ``b`` (``d = a - b``, not all 0) -> (statistic, p)."""
    if (d == d[0]).all():
        return math.copysign(math.inf, d[0]), 0.0
    t = stats.ttest_rel(a, b)
    return float(t.statistic), float(t.pvalue)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values ``[m]`` in the input order (NaN entries stay NaN, not counted)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def adjust(comparisons: list[Comparison]) -> None:
    """Set ``p_holm`` of every comparison, one Holm family per test kind."""
    for test in {c.test for c in comparisons}:
        family = [c for c in comparisons if c.test == test]
        for c, q in zip(family, holm(np.array([c.p for c in family]))):
            c.p_holm = float(q)
