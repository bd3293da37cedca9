"""Stress sweeps (specs/protocol.md §4): one strategy under one perturbation, severities x seeds.

Every (severity, seed) cell is one run through :func:`fusionbench.runner.run_experiment` with its own
config hash, so the store makes a sweep resumable: cells already done are skipped, and a cell that
was interrupted resumes from its checkpoint. Every cell's config is resolved before the first run,
so a bad option fails at once. A cell whose training fails (:class:`TrainingError`) is recorded as
failed in the store and the sweep goes on; the command then exits 1 after the summary.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.perturb.base import check_severity
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.registry import PERTURBATIONS, UnknownPluginError
from fusionbench.runner import RunOutcome, RunRequest, resolve
from fusionbench.store import ResultStore
from fusionbench.sweep import mean_sd, run_local

SUMMARY_METRICS = ("HR@5", "NDCG@5", "MRR@5", "HR@20", "NDCG@20", "MRR@20")


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


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (duplicates dropped)."""
    try:
        return list(dict.fromkeys(int(part) for part in text.split(",")))
    except ValueError:
        raise UserInputError(f"--seeds expects comma-separated integers, got {text!r}") from None


def parse_options(pairs: Sequence[str], option: str) -> dict[str, str]:
    """``("mode=shift",)`` -> ``{"mode": "shift"}``; ``option`` names the flag in errors."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"{option} expects key=value, got {pair!r}")
        options[key] = value
    return options


@dataclass
class Cell:
    """One (severity, seed) run of a sweep; ``outcome`` once done, ``error`` if its training failed."""

    severity: float
    seed: int
    request: RunRequest
    outcome: Optional[RunOutcome] = None
    error: Optional[str] = None


def plan_cells(base: RunRequest, perturbation: str, options: dict[str, Any], severities: Sequence[float],
               seeds: Sequence[int], apply_to: str) -> list[Cell]:
    """The sweep's cells in run order (severity-major), every config resolved (validated) up front."""
    try:
        PERTURBATIONS.options(perturbation, **options)
    except UnknownPluginError as err:
        raise UserInputError(f"--perturbation: {err}") from None
    except UserInputError as err:
        raise UserInputError(f"--set-p: {err}") from None
    cells = [Cell(p, seed, dataclasses.replace(base, seed=seed, perturbation=PerturbationRequest(
        perturbation, p, apply_to, options))) for p in severities for seed in seeds]
    for cell in cells:
        resolve(cell.request)
    return cells


def run_sweep(cells: list[Cell], store: ResultStore, progress: bool = True) -> list[Cell]:
    """Run (or skip, or resume) every cell in order, with a progress bar over cells."""
    run_local(cells, store, progress, desc="stress cells", postfix=lambda cell: dict(p=cell.severity, seed=cell.seed))
    return cells


def summary_table(cells: list[Cell], metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """Test metrics (%) per severity: mean ± sample sd over the seeds done (``runs`` = done / cells)."""
    rows = []
    for p in dict.fromkeys(c.severity for c in cells):
        group = [c for c in cells if c.severity == p]
        done = [c.outcome.test for c in group if c.outcome is not None]
        row = [f"{p:g}", f"{len(done)}/{len(group)}"]
        row += [mean_sd([t[m] for t in done]) if done else "-" for m in metrics]
        rows.append(row)
    return tabulate(rows, headers=["p", "runs", *metrics], tablefmt="github", disable_numparse=True)


def failures(cells: list[Cell]) -> Optional[str]:
    """One line naming every failed cell, or ``None``."""
    failed = [c for c in cells if c.error is not None]
    if not failed:
        return None
    listed = "; ".join(f"p={c.severity:g} seed {c.seed}: {c.error}" for c in failed)
    return f"{len(failed)} of {len(cells)} cells failed ({listed})"
