r"""Drop contrasts: does a perturbation cost strategy A more than strategy B? (the MMSR paper's Fig. 1
question: late fusion hurt more by disorder, early fusion more by mismatch).

For rows A and B of one robustness table and a severity p (not the reference itself), over the seeds
both rows have at p and at their references, each row's per-sample values (fractions) are averaged over
those seeds: :math:`a^0, a^p, b^0, b^p \in [0, 1]^S` (reference and perturbed, the same S test samples
in the same order). With :math:`R_A = \bar a^p / \bar a^0` the relative drops and their contrast are

.. math::  D_A = 1 - R_A, \qquad D_B = 1 - R_B, \qquad \Delta = D_A - D_B = R_B - R_A

(reported ×100, in percentage points; :math:`\Delta > 0`: A lost more). The samples are paired across
all four vectors, so the test is the delta method for the difference of two ratios of means:

.. math::
    \psi_s = \frac{b^p_s - R_B\, b^0_s}{\bar b^0} - \frac{a^p_s - R_A\, a^0_s}{\bar a^0}, \qquad
    \mathrm{SE} = \frac{\operatorname{sd}(\psi)}{\sqrt S}, \qquad z = \Delta / \mathrm{SE}, \qquad
    p = 2\,\Phi(-|z|)

with the 95 % interval :math:`\Delta \pm 1.96\,\mathrm{SE}`. As in the leaderboard (specs/protocol.md §6)
the samples are the unit and seeds are averaged first; a paired t-test over the per-seed contrasts
:math:`D_A(s) - D_B(s)` (n = #seeds) is reported beside it. Holm–Bonferroni adjusts the z-tests' p over
every contrast of one report. Undefined (NaN) where a reference mean is 0 or fewer than 2 samples exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.report.collect import LEAKY_PROTOCOL
from fusionbench.report.robustness import RobustnessTable, RobustRow
from fusionbench.report.significance import ALPHA, holm, seed_means_test

Z95 = stats.norm.ppf(0.975)


@dataclass
class DropContrast:
    """One contrast of rows ``a`` and ``b`` at one severity; drops, ``delta``, ``se`` and the interval
    in percentage points."""

    dataset: str
    protocol: str
    perturbation: str
    a: str
    b: str
    severity: float
    seeds: tuple[int, ...]
    n: int                 # samples
    drop_a: float
    drop_b: float
    delta: float
    se: float
    z: float
    p: float
    p_seeds: float         # paired t-test over per-seed contrasts, NaN with < 2 seeds
    p_holm: float = math.nan

    @property
    def ci(self) -> tuple[float, float]:
        return self.delta - Z95 * self.se, self.delta + Z95 * self.se

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def parse_pairs(texts: tuple[str, ...]) -> list[tuple[str, str]]:
    """``("early,late", ...)`` -> ``[("early", "late"), ...]``; errors name ``--contrast``."""
    pairs = []
    for text in texts:
        names = [name.strip() for name in text.split(",")]
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise UserInputError(f"--contrast must be two different rows as A,B (a strategy or a row label), "
                                 f"got {text!r}")
        pairs.append((names[0], names[1]))
    return pairs


def find_row(table: RobustnessTable, name: str) -> Optional[RobustRow]:
    """The row labelled ``name``, else the one row of strategy ``name``; None if neither (or several)."""
    for row in table.rows:
        if row.label == name:
            return row
    matches = [row for row in table.rows if row.strategy == name]
    return matches[0] if len(matches) == 1 else None


def relative_drop_contrast(a0: np.ndarray, ap: np.ndarray, b0: np.ndarray, bp: np.ndarray
                           ) -> tuple[float, float, float, float]:
    """The module's statistic on seed-averaged per-sample values ``[S]`` (fractions) ->
    ``(D_A, D_B, Δ, SE)`` as fractions; NaN where undefined."""
    mean_a0, mean_b0 = a0.mean(), b0.mean()
    if mean_a0 <= 0 or mean_b0 <= 0:
        return math.nan, math.nan, math.nan, math.nan
    ratio_a, ratio_b = ap.mean() / mean_a0, bp.mean() / mean_b0
    psi = (bp - ratio_b * b0) / mean_b0 - (ap - ratio_a * a0) / mean_a0
    se = psi.std(ddof=1) / math.sqrt(len(psi)) if len(psi) > 1 else math.nan
    return 1 - ratio_a, 1 - ratio_b, ratio_b - ratio_a, se


def _seed_rows(samples: np.ndarray, seeds: tuple[int, ...], shared: tuple[int, ...]) -> np.ndarray:
    return samples[[seeds.index(s) for s in shared]]


def contrast(table: RobustnessTable, a: RobustRow, b: RobustRow, severity: float) -> Optional[DropContrast]:
    """:class:`DropContrast` of rows ``a`` and ``b`` at ``severity``; None when either row lacks that
    severity, a reference, or seeds in common."""
    points = [next((p for p in row.points if p.severity == severity), None) for row in (a, b)]
    if any(p is None or p.samples is None for p in points) or a.reference_samples is None \
            or b.reference_samples is None:
        return None
    pa, pb = points
    shared = tuple(sorted(set(pa.seeds) & set(pb.seeds) & set(a.reference_seeds) & set(b.reference_seeds)))
    if not shared:
        return None
    a0, ap, b0, bp = (_seed_rows(x, seeds, shared) for x, seeds in
                      ((a.reference_samples, a.reference_seeds), (pa.samples, pa.seeds),
                       (b.reference_samples, b.reference_seeds), (pb.samples, pb.seeds)))
    drop_a, drop_b, delta, se = relative_drop_contrast(a0.mean(0), ap.mean(0), b0.mean(0), bp.mean(0))
    if math.isnan(se):
        z = math.nan
    elif se > 0:
        z = delta / se
    else:                                     # every ψ equal: the contrast is exact
        z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
    p = math.nan if math.isnan(z) else 2 * stats.norm.sf(abs(z))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed_a = 1 - ap.mean(1) / a0.mean(1)
        per_seed_b = 1 - bp.mean(1) / b0.mean(1)
    finite = np.isfinite(per_seed_a).all() and np.isfinite(per_seed_b).all()
    p_seeds = seed_means_test(per_seed_a, per_seed_b)[1] if finite else math.nan
    return DropContrast(table.dataset, table.protocol, table.title, a.label, b.label, severity, shared, a0.shape[1],
                        100 * drop_a, 100 * drop_b, 100 * delta, 100 * se, z, p, p_seeds)


def drop_contrasts(tables: list[RobustnessTable], pairs: list[tuple[str, str]],
                   not_run: Sequence[str] = ()) -> list[DropContrast]:
    """Every pair at every severity of every table holding both rows (the reference severity 0 left
    out), Holm-adjusted together. Errors when a pair is in no table, unless one of its names is in
    ``not_run`` (strategies named by ``--strategy`` without a perturbed run: :func:`waiting`), or when a
    table is ``ratio-paper``."""
    out: list[DropContrast] = []
    for name_a, name_b in pairs:
        found = False
        for table in tables:
            a, b = find_row(table, name_a), find_row(table, name_b)
            if a is None or b is None:
                continue
            if table.protocol == LEAKY_PROTOCOL:
                raise UserInputError(f"--contrast: protocol {LEAKY_PROTOCOL} has no per-sample test metric to "
                                     "contrast (it reports maxima over epochs); pass --protocol")
            found = True
            severities = sorted({p.severity for p in a.points} & {p.severity for p in b.points})
            for severity in severities:
                if severity == 0.0 and a.reference == b.reference == "severity 0":
                    continue
                result = contrast(table, a, b, severity)
                if result is not None:
                    out.append(result)
        if not found and not {name_a, name_b} & set(not_run):
            rows = sorted({row.label for table in tables for row in table.rows})
            raise UserInputError(f"--contrast {name_a},{name_b}: no robustness table has both rows; rows are "
                                 f"{', '.join(rows)} (a strategy name works where it has one row)")
    for c, q in zip(out, holm(np.array([c.p for c in out]))):
        c.p_holm = float(q)
    return out


def waiting(pairs: list[tuple[str, str]], not_run: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs that wait for a row not run yet (a name in ``not_run``)."""
    return [pair for pair in pairs if set(pair) & set(not_run)]


def render_markdown(contrasts: list[DropContrast], metric: str, waiting_pairs: Sequence[tuple[str, str]] = ()) -> str:
    """One table of every contrast, with its caption and key; then the pairs waiting for a row not run yet."""
    pending = (f"\nContrasts not run yet (a row named by --strategy has no perturbed run): "
               f"{', '.join(f'{a} − {b}' for a, b in waiting_pairs)}.\n" if waiting_pairs else "")
    if not contrasts:
        return pending.lstrip("\n")
    def number(value: float, fmt: str) -> str:
        return "–" if math.isnan(value) else format(value, fmt)

    def p_value(value: float) -> str:  # below float64's smallest positive number the normal tail reads 0
        return "< 1e-300" if value == 0 else number(value, ".3g")

    tables = sorted({(c.dataset, c.protocol) for c in contrasts})
    body = []
    for c in contrasts:
        low, high = c.ci
        where = f"{c.dataset}, {c.protocol}: " if len(tables) > 1 else ""
        body.append([where + c.perturbation, f"{c.a} − {c.b}", f"{c.severity:g}", number(c.drop_a, ".1f"),
                     number(c.drop_b, ".1f"), number(c.delta, "+.1f") + (" *" if c.significant else ""),
                     f"[{number(low, '+.1f')}, {number(high, '+.1f')}]", p_value(c.p_holm), str(len(c.seeds)),
                     p_value(c.p_seeds)])
    on = f"{tables[0][0]}, protocol {tables[0][1]}, " if len(tables) == 1 else ""
    caption = (f"Table: {on}drop contrasts on test {metric}: relative drop of A minus that of B, in percentage points "
               "(> 0: the perturbation cost A more).")
    key = ("Drops (%) are relative to each row's reference, from per-sample values averaged over the seeds both rows "
           "share. 95 % interval and p: paired delta-method z-test over the test samples, p Holm-adjusted over "
           f"this table; * where that p < {ALPHA:g}. p (seeds): paired t-test over the per-seed contrasts, reported "
           "only.")
    headers = ["perturbation", "A − B", "severity", "drop A", "drop B", "Δ", "95 % interval", "p (Holm)", "seeds",
               "p (seeds)"]
    table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    return f"{caption}\n\n{table}\n\n{key}\n{pending}"


def to_frame(contrasts: list[DropContrast]) -> pd.DataFrame:
    """One line per contrast (percentage points for the drops, Δ, SE and the interval)."""
    fields = ["dataset", "protocol", "perturbation", "a", "b", "severity", "seeds", "seed_list", "n", "drop_a",
              "drop_b", "delta", "se", "ci_low", "ci_high", "z", "p", "p_holm", "p_seeds"]
    return pd.DataFrame([[c.dataset, c.protocol, c.perturbation, c.a, c.b, c.severity, len(c.seeds),
                          " ".join(map(str, c.seeds)), c.n, c.drop_a, c.drop_b, c.delta, c.se, *c.ci, c.z, c.p,
                          c.p_holm, c.p_seeds] for c in contrasts], columns=fields)
