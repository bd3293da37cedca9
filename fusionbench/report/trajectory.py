r"""One trajectory, two selections: the test metrics of runs trained with ``train.record_test=true``
under the leak-free selection and under the MMSR reference's test selection, on the very same models.

Such a run ranks the test samples after every epoch and keeps their metrics in its history (``"test"``
beside ``"valid"``; selection and early stopping read ``"valid"`` only, :mod:`fusionbench.train`). For
the seed-``s`` run of a row, a metric m, its epochs :math:`e = 1..E_s` and the epoch :math:`\hat e_s`
selected on validation:

.. math::
    v_s = m_{\mathrm{test}}(\hat e_s) \quad\text{(validation-selected: the stored test ranks)},\qquad
    t_s = \max_{e \le E_s} m_{\mathrm{test}}(e) \quad\text{(test-selected, leaky)},\qquad
    d_s = t_s - v_s \ge 0 .

:math:`t_s` is what the reference code reports (each metric its own maximum over the epochs' test
scores; ``ratio-paper``), :math:`d_s` how much that selection inflates the metric, paired on one model.
A table gives per row and metric the mean ± std (ddof 1) over seeds of :math:`v`, :math:`t` and :math:`d`
(in points of %), and the relative inflation :math:`100\,\bar d / \bar v` (%).

The epochs are those the run trained, so its stopping is validation's (``train.patience`` epochs after
its best validation ``select``); the exact ``ratio-paper`` protocol (no validation carve-out, stopping on
any test metric) may train other epochs and other samples: run it beside, for the rows it matters for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.report.collect import (
    Column,
    Run,
    RunGroup,
    Selection,
    check_one_data_version,
    data_name,
    done_runs,
    group_runs,
    load_ranks,
    perturbation_of,
    seed_values,
)
from fusionbench.store import ResultStore

RECORDED_LABEL = "test-selected (leaky)"
"""How a test-selected value from a recorded trajectory is labelled (as ``ratio-paper``'s are)."""


def records_test(config: dict) -> bool:
    """Whether a stored run was trained with ``train.record_test=true`` (its history holds test metrics)."""
    return bool((config.get("train") or {}).get("record_test"))


def test_selected_values(store: ResultStore, runs: list[Run], column: Column) -> np.ndarray:
    """``[n_runs]`` (fractions): per run the maximum of ``column`` over its epochs' recorded test metrics.
    A run without a recorded test history, or without ``column`` in it, is an error naming the run."""
    values = []
    for run in runs:
        history = store.history(run.run_id)
        if not history or any("test" not in entry for entry in history):
            raise UserInputError(f"run {run.config_hash} has no test metrics recorded at every epoch (it was not "
                                 "trained with train.record_test=true)")
        if column.name not in history[0]["test"]:
            raise UserInputError(f"run {run.config_hash} recorded {', '.join(sorted(history[0]['test']))} per epoch, "
                                 f"not {column.name} (check --k)")
        values.append(max(entry["test"][column.name] for entry in history))
    return np.asarray(values, dtype=np.float64)


@dataclass
class InflationRow:
    group: RunGroup
    validation: dict[str, np.ndarray]   # column -> [n_seeds] fractions, validation-selected
    test: dict[str, np.ndarray]         # column -> [n_seeds] fractions, test-selected


@dataclass
class InflationTable:
    dataset: str
    protocol: str
    columns: list[Column]
    rows: list[InflationRow]


def build_inflation(store: ResultStore, dataset: str | None, protocol: str | None, columns: list[Column],
                    selection: Selection = Selection()) -> list[InflationTable]:
    """One :class:`InflationTable` per (dataset, protocol) of the clean finished runs trained with
    ``train.record_test=true``; none such is an error."""
    runs = [run for run in done_runs(store, dataset, protocol, selection)
            if perturbation_of(run) is None and records_test(run.config)]
    if not runs:
        raise UserInputError(f"--inflation: no finished run in {store.path} was trained with train.record_test=true "
                             "(`--set train.record_test=true` under --protocol ratio or loo)")
    tables: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        tables.setdefault((data_name(run.config), run.config["protocol"]), []).append(run)
    out = []
    for (name, proto), chosen in sorted(tables.items()):
        where = f"dataset {name!r}, protocol {proto!r}"
        check_one_data_version(chosen, where)
        groups = sorted(group_runs(chosen), key=lambda g: g.label)
        ranks = load_ranks(store, groups, where)
        rows = [InflationRow(g, {c.name: seed_values(store, g.runs, ranks[g.key], c) for c in columns},
                             {c.name: test_selected_values(store, g.runs, c) for c in columns}) for g in groups]
        out.append(InflationTable(name, proto, columns, rows))
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof 1; NaN with one value) of fractions, in %."""
    return 100 * float(values.mean()), 100 * float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign at ``digits`` decimals; a value that rounds to zero reads +0.00, not -0.00."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def _text(mean: float, std: float, sign: bool = False) -> str:
    head = _signed(mean, 2) if sign else f"{mean:.2f}"
    return head + ("" if math.isnan(std) else f" ± {std:.2f}")


def summary(row: InflationRow, column: str) -> dict[str, float]:
    """Means and stds (%) of the validation-selected, test-selected and paired difference values, and the
    relative inflation (% of the validation-selected mean; NaN where that mean is 0)."""
    v, t = row.validation[column], row.test[column]
    (vm, vs), (tm, ts), (dm, ds) = _mean_std(v), _mean_std(t), _mean_std(t - v)
    return {"validation_mean": vm, "validation_std": vs, "test_mean": tm, "test_std": ts,
            "inflation_mean": dm, "inflation_std": ds, "relative": 100 * dm / vm if vm else math.nan}


def render_markdown(tables: list[InflationTable]) -> str:
    """Per table: one line per (row, metric) with both selections and the inflation."""
    parts = []
    for table in tables:
        body = []
        for row in table.rows:
            for column in table.columns:
                s = summary(row, column.name)
                body.append([row.group.label, column.name, _text(s["validation_mean"], s["validation_std"]),
                             _text(s["test_mean"], s["test_std"]), _text(s["inflation_mean"], s["inflation_std"], True),
                             "n/a" if math.isnan(s["relative"]) else f"{_signed(s['relative'], 1)} %",
                             len(row.group.seeds)])
        caption = (f"Table: one trajectory, two selections — {table.dataset}, protocol {table.protocol}, runs trained "
                   "with train.record_test=true. Test metrics in %, mean ± std over the seeds counted in the last "
                   "column: validation-selected (the checkpoint chosen on validation, as the leaderboard reports it) "
                   f"and {RECORDED_LABEL} (each metric's maximum over the epochs' test scores, as the MMSR reference "
                   "reports it), on the same models; inflation = test-selected − validation-selected, paired per "
                   "seed, and relative to the validation-selected mean.")
        table_text = tabulate(body, headers=["strategy", "metric", "validation-selected", RECORDED_LABEL,
                                             "inflation (points)", "inflation (relative)", "seeds"],
                              tablefmt="github", disable_numparse=True)
        parts.append(f"{caption}\n\n{table_text}\n")
    return "\n".join(parts)


def to_frame(tables: list[InflationTable]) -> pd.DataFrame:
    """One line per (table, row, metric): identity, seeds and the :func:`summary` values."""
    return pd.DataFrame([{"dataset": t.dataset, "protocol": t.protocol, "label": row.group.label,
                          "strategy": row.group.strategy, "seeds": len(row.group.seeds),
                          "seed_list": " ".join(map(str, row.group.seeds)), "metric": c.name,
                          **summary(row, c.name)}
                         for t in tables for row in t.rows for c in t.columns])
