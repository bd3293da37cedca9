"""Robustness tables and curves: one metric against perturbation severity (specs/protocol.md §4).

Perturbed runs carry ``config["perturbation"] = {"name", "severity", "apply_to", "options"}``. One table
per dataset x protocol x perturbation (name, ``apply_to`` and options); one row per strategy variant
(labelled as in the leaderboard); per severity p the metric's mean ± std over seeds (in %) and its
relative drop

.. math:: \\text{drop}(p) = 100 \\cdot (m_{ref} - m_p) / m_{ref}

where :math:`m_{ref}` is the row's mean at severity 0. Without it, a test-only perturbation
(``apply_to=test``) takes severity 0 of another test-only perturbation of the same variant: every
test-only cell of a variant and seed evaluates one trained model (the weights kept under its training
config's hash), and severity 0 evaluates that model unperturbed, so the drop compares the same weights
(the clean run may hold other weights: one imported from an archive without its weights is trained again
by the first test-only cell). Else it is the mean of the clean (unperturbed) run of the same
configuration; without any (or with :math:`m_{ref} = 0`) the drop is undefined. A positive drop means
the perturbation hurt.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from fusionbench.atomic import atomic_write
from fusionbench.errors import UserInputError
from fusionbench.report.collect import (
    LEAKY_LABEL,
    LEAKY_PROTOCOL,
    Column,
    RunGroup,
    Selection,
    check_one_data_version,
    data_name,
    done_runs,
    group_runs,
    load_ranks,
    per_sample_values,
    perturbation_of,
    row_key,
    seed_values,
    short_value,
    variant_labels,
)
from fusionbench.store import ResultStore, canonical_json


@dataclass
class Point:
    severity: float
    seeds: tuple[int, ...]
    mean: float   # %
    std: float    # %, NaN with one seed
    drop: float   # % relative to the row's reference, NaN without one
    samples: Optional[np.ndarray] = field(default=None, repr=False)  # [n_seeds, S] fractions, seeds order


@dataclass
class RobustRow:
    label: str
    strategy: str
    reference: str          # "severity 0", "<perturbation> p=0" (test-only), "clean run" or "none"
    reference_mean: float   # %
    points: list[Point]     # by increasing severity
    reference_seeds: tuple[int, ...] = ()
    reference_samples: Optional[np.ndarray] = field(default=None, repr=False)  # [n_seeds, S] fractions


@dataclass
class RobustnessTable:
    dataset: str
    protocol: str
    name: str
    apply_to: str
    options: dict
    column: Column
    rows: list[RobustRow]
    not_run: tuple[str, ...] = ()   # strategies named by --strategy without a perturbed run in this table

    @property
    def severities(self) -> list[float]:
        return sorted({p.severity for row in self.rows for p in row.points})

    @property
    def title(self) -> str:
        opts = "".join(f", {k}={short_value(v)}" for k, v in sorted(self.options.items()))
        return f"{self.name} (apply_to={self.apply_to}{opts})"

    @property
    def file_stem(self) -> str:
        opts = "".join(f"_{k}={short_value(v)}" for k, v in sorted(self.options.items()))
        return re.sub(r"[^A-Za-z0-9._=+,-]", "_", f"{self.dataset}_{self.protocol}_{self.name}_{self.apply_to}{opts}")


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return 100 * values.mean(), 100 * values.std(ddof=1) if len(values) > 1 else math.nan


def _measure(store: ResultStore, group: RunGroup, ranks: np.ndarray, column: Column
             ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A group's value per seed ``[n_seeds]`` and per sample ``[n_seeds, S]`` (fractions, in the order of
    ``group.seeds``); the per-sample values are None under ``ratio-paper``, whose metric is a maximum over
    epochs, not a mean over samples."""
    if group.config["protocol"] == LEAKY_PROTOCOL:
        return seed_values(store, group.runs, ranks, column), None
    samples = per_sample_values(ranks, column)
    return samples.mean(axis=-1), samples


def build_robustness(store: ResultStore, dataset: str | None, protocol: str | None,
                     column: Column, selection: Selection = Selection()) -> list[RobustnessTable]:
    """One :class:`RobustnessTable` per perturbation setting found among the finished runs that
    ``selection`` keeps."""
    runs = done_runs(store, dataset, protocol, selection)
    clean: dict[tuple[str, str], list] = {}
    settings: dict[tuple, list] = {}
    for run in runs:
        p = perturbation_of(run)
        where = (data_name(run.config), run.config["protocol"])
        if p is None:
            clean.setdefault(where, []).append(run)
        else:
            settings.setdefault((*where, p["name"], p["apply_to"], canonical_json(p["options"])), []).append(run)
    if not settings:
        raise UserInputError(f"{store.path}: no finished perturbed runs (config 'perturbation') match; "
                             "drop --robustness for the leaderboard")
    tables = []
    for key, perturbed in sorted(settings.items()):
        unperturbed = _test_only_zeros(settings, key) if key[3] == "test" else {}
        tables.append(_build(store, key, perturbed, clean.get(key[:2], []), column, unperturbed))
        tables[-1].not_run = selection.not_run(perturbed)
    return tables


def _test_only_zeros(settings: dict[tuple, list], key: tuple) -> dict[str, tuple[str, list]]:
    """For the test-only table ``key``: per variant (:func:`row_key`), the severity-0 runs of the first other
    test-only perturbation of the same dataset and protocol that has them, with its name: the same trained
    models evaluated unperturbed (module docstring)."""
    found: dict[str, tuple[str, list]] = {}
    for other, runs in sorted(settings.items()):
        if other == key or other[:2] != key[:2] or other[3] != "test":
            continue
        at_zero: dict[str, list] = {}
        for run in runs:
            if perturbation_of(run)["severity"] == 0.0:
                at_zero.setdefault(row_key(run.config), []).append(run)
        for variant, zero_runs in at_zero.items():
            found.setdefault(variant, (other[2], zero_runs))       # the first perturbation that has them
    return found


def _build(store: ResultStore, key: tuple, perturbed: list, clean_runs: list, column: Column,
           unperturbed: dict[str, tuple[str, list]]) -> RobustnessTable:
    """One table; ``unperturbed``: :func:`_test_only_zeros` (empty unless the table is test-only)."""
    dataset, protocol, name, apply_to, options = key
    where = f"dataset {dataset!r}, protocol {protocol!r}, perturbation {name!r}"
    check_one_data_version(perturbed + clean_runs, where)
    by_variant: dict[str, dict[float, RunGroup]] = {}  # row key -> severity -> the seeds run there
    for run in sorted(perturbed, key=lambda r: r.seed):
        severity, variant = perturbation_of(run)["severity"], row_key(run.config)
        by_variant.setdefault(variant, {}).setdefault(severity, RunGroup(f"{variant}@{severity}")).runs.append(run)
    labels = variant_labels([next(iter(cells.values())).config for cells in by_variant.values()])
    for cells, label in zip(by_variant.values(), labels):
        for severity, group in cells.items():
            group.label = f"{label} at severity {severity:g}"
    clean = {g.key: g for g in group_runs(clean_runs) if g.key in by_variant}
    zeros = {variant: (f"{other} p=0", RunGroup(f"{variant}@{other}@0", sorted(runs, key=lambda r: r.seed)))
             for variant, (other, runs) in unperturbed.items()
             if variant in by_variant and 0.0 not in by_variant[variant]}
    ranks = load_ranks(store, [g for cells in by_variant.values() for g in cells.values()] + list(clean.values())
                       + [g for _, g in zeros.values()], where)
    rows = []
    for (variant, cells), label in zip(by_variant.items(), labels):
        measured = {s: _measure(store, g, ranks[g.key], column) for s, g in cells.items()}
        if 0.0 in cells:
            reference, reference_group = "severity 0", cells[0.0]
        elif variant in zeros:
            reference, reference_group = zeros[variant]
        else:
            reference, reference_group = "clean run", clean.get(variant)
        if reference_group is None:
            reference, ref, ref_samples = "none", math.nan, None
        else:
            per_seed, ref_samples = _measure(store, reference_group, ranks[reference_group.key], column)
            ref = _mean_std(per_seed)[0]
        points = []
        for s, (per_seed, samples) in sorted(measured.items()):
            mean, std = _mean_std(per_seed)
            points.append(Point(s, cells[s].seeds, mean, std, 100 * (ref - mean) / ref if ref > 0 else math.nan,
                                samples))
        rows.append(RobustRow(label, cells[min(cells)].strategy, reference, ref, points,
                              reference_group.seeds if reference_group is not None else (), ref_samples))
    rows.sort(key=lambda r: r.label)
    return RobustnessTable(dataset, protocol, name, apply_to, json.loads(options), column, rows)


def _point_text(point: Point, row: RobustRow) -> str:
    text = f"{point.mean:.2f}" + ("" if math.isnan(point.std) else f" ± {point.std:.2f}")
    is_reference = row.reference == "severity 0" and point.severity == 0.0
    change = -point.drop + 0.0  # + 0.0: no change reads +0.0 %, not -0.0 %
    return text + ("" if math.isnan(point.drop) or is_reference else f" ({change:+.1f}%)")


def render_markdown(tables: list[RobustnessTable]) -> str:
    """Markdown: per perturbation setting a caption, a table (rows x severities) and a key."""
    parts = []
    for table in tables:
        severities = table.severities
        body = []
        for row in table.rows:
            at = {p.severity: p for p in row.points}
            label = f"{row.label} — {LEAKY_LABEL}" if table.protocol == LEAKY_PROTOCOL else row.label
            seeds = sorted({len(p.seeds) for p in row.points})
            body.append([label, *(_point_text(at[s], row) if s in at else "" for s in severities), row.reference,
                         "–".join(map(str, (seeds[0], seeds[-1]) if len(seeds) > 1 else seeds))])
        caption = (f"Table: {table.dataset}, protocol {table.protocol}, perturbation {table.title}: test "
                   f"{table.column.name} in %, mean ± std over seeds, by severity p.")
        key = ("In parentheses: relative change vs the row's reference (severity 0; without it, for a test-only "
               "perturbation, severity 0 of the one named, which evaluated the same trained models; else the clean "
               "run of the same configuration); negative = worse.")
        headers = ["strategy", *(f"p={s:g}" for s in severities), "reference", "seeds"]
        missing = Selection.not_run_line(table.not_run, "finished perturbed run here")
        parts.append(f"{caption}\n\n{tabulate(body, headers=headers, tablefmt='github', disable_numparse=True)}"
                     f"\n\n{key}\n{missing}")
    return "\n".join(parts)


def to_frame(tables: list[RobustnessTable]) -> pd.DataFrame:
    """Long form: one line per (table, row, severity); ``drop_pct`` > 0 means the metric fell."""
    fields = ["dataset", "protocol", "perturbation", "apply_to", "options", "label", "strategy", "metric", "severity",
              "seeds", "seed_list", "mean", "std", "reference", "reference_mean", "drop_pct"]
    return pd.DataFrame([[t.dataset, t.protocol, t.name, t.apply_to, canonical_json(t.options), row.label,
                          row.strategy, t.column.name, p.severity, len(p.seeds), " ".join(map(str, p.seeds)),
                          p.mean, p.std, row.reference, row.reference_mean, p.drop]
                         for t in tables for row in t.rows for p in row.points], columns=fields)


def plot(table: RobustnessTable, path: Path) -> None:
    """PNG at ``path`` (atomic): the metric (%) against severity, one line per row, ±std error bars.
    Uses matplotlib's Agg canvas directly, so no global backend is touched."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in table.rows:
        ax.errorbar([p.severity for p in row.points], [p.mean for p in row.points],
                    yerr=[0.0 if math.isnan(p.std) else p.std for p in row.points],
                    marker="o", capsize=3, label=row.label)
    leaky = f" ({LEAKY_LABEL})" if table.protocol == LEAKY_PROTOCOL else ""
    ax.set(xlabel="severity p", ylabel=f"test {table.column.name} (%)",
           title=f"{table.dataset}, {table.protocol}{leaky}: {table.title}")
    ax.title.set_fontsize("medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
