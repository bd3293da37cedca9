"""``fusionbench stress``: one strategy under one perturbation, severities x seeds (specs/protocol.md §4).

A front end of :mod:`fusionbench.plan`: the flags become one :class:`~fusionbench.plan.Cell` per
(severity, seed), severity-major, each a stored run with its own config hash, all resolved before the
first runs (a bad option fails at once), run in order by the local engine; the store makes the sweep
resumable. A cell whose training fails is recorded as failed in the store and the sweep goes on; the
command then exits 1 after the summary (one row per severity, :data:`~fusionbench.plan.CURVE_METRICS`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from fusionbench.errors import UserInputError
from fusionbench.perturb.base import check_severity
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.plan import CURVE_METRICS, Cell, failures, run_local, summary_table
from fusionbench.registry import PERTURBATIONS, UnknownPluginError
from fusionbench.runner import RunRequest
from fusionbench.store import ResultStore


def parse_severities(text: str) -> list[float]:
    """``"0,0.3,1"`` -> ``[0.0, 0.3, 1.0]`` (duplicates dropped), each in [0, 1]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UserInputError(f"--severity expects comma-separated numbers in [0, 1], got {text!r}") from None
        values.append(check_severity(value, "--severity: every severity"))
    return list(dict.fromkeys(values))


def plan_cells(base: RunRequest, perturbation: str, options: dict[str, Any], severities: Sequence[float],
               seeds: Sequence[int], apply_to: str) -> list[Cell]:
    """The sweep's cells in run order (severity-major), every config resolved (validated) up front."""
    try:
        PERTURBATIONS.options(perturbation, **options)
    except UnknownPluginError as err:
        raise UserInputError(f"--perturbation: {err}") from None
    except UserInputError as err:
        raise UserInputError(f"--set-p: {err}") from None
    return [Cell(dataclasses.replace(base, seed=seed, perturbation=PerturbationRequest(perturbation, p, apply_to,
                                                                                      options)))
            for p in severities for seed in seeds]


def run_sweep(cells: list[Cell], store: ResultStore, progress: bool = True) -> list[Cell]:
    """Run (or skip, or resume) every cell in order, with a progress bar over cells."""
    run_local(cells, store, progress, desc="stress cells",
              postfix=lambda cell: dict(p=cell.severity, seed=cell.request.seed))
    return cells


def curve_table(cells: list[Cell]) -> str:
    """Test metrics (%) per severity: mean ± sample sd over the seeds done (``runs`` = done / cells)."""
    return summary_table(cells, [f"{c.severity:g}" for c in cells], CURVE_METRICS, headers=("p", "runs"))


def failed_cells(cells: list[Cell]) -> Optional[str]:
    """One line naming every failed cell (``p=... seed ...``), or ``None``."""
    return failures(cells, [f"p={c.severity:g}" for c in cells])
