"""A plan of runs: its cells, how they are identified and run in this process, and what the commands
print about them.

Every command that runs many configurations turns its input into a list of :class:`Cell` (``fusionbench
stress`` from its flags, :mod:`fusionbench.stress`; ``fusionbench sweep`` from a TOML file,
:mod:`fusionbench.sweep`). A cell is one stored run (:func:`fusionbench.runner.run_experiment`): its
request is resolved (validated) once, when the cell is made, so a bad option fails before the first run;
the store makes the plan resumable (cells done there are skipped, an interrupted cell resumes from its
checkpoint). A cell whose training fails (:class:`TrainingError`) records the error and the plan goes on.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from tabulate import tabulate
from tqdm import tqdm

from fusionbench.errors import TrainingError, UserInputError
from fusionbench.runner import RunOutcome, RunRequest, load_data, resolve, run_experiment, training_config
from fusionbench.store import ResultStore, canonical_json, config_hash

SUMMARY_METRICS = ("HR@20", "NDCG@20", "MRR@20")
"""Test metrics of a sweep's summary table."""
CURVE_METRICS = ("HR@5", "NDCG@5", "MRR@5", *SUMMARY_METRICS)
"""Test metrics of a stress curve's summary table (one row per severity), both cutoffs."""


@dataclass
class Cell:
    """One run of a plan: ``entry`` is the index (1-based) of its sweep file's ``[[run]]`` table (0 for a
    cell made from command-line flags); ``outcome`` once done, ``error`` if its training failed,
    ``deferred`` (why) if it was not started here (``fusionbench sweep --deadline``, :mod:`fusionbench.deadline`;
    or another process sharing the store trains it: :func:`run_local`).

    ``config`` is ``resolve(request)`` (no dataset checksum), computed when the cell is made, also by
    :func:`dataclasses.replace`; a bad option raises there."""

    request: RunRequest
    entry: int = 0
    outcome: Optional[RunOutcome] = None
    error: Optional[str] = None
    deferred: Optional[str] = None
    config: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.config = resolve(self.request)

    @property
    def severity(self) -> Optional[float]:
        """The perturbation's severity, ``None`` for a clean run."""
        return None if self.request.perturbation is None else self.request.perturbation.severity


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (duplicates dropped)."""
    try:
        return list(dict.fromkeys(int(part) for part in text.split(",")))
    except ValueError:
        raise UserInputError(f"--seeds expects comma-separated integers, got {text!r}") from None


def identify(cells: Sequence[Cell]) -> list[tuple[dict, str, str]]:
    """Per cell ``(config, run hash, training hash)`` as ``run_experiment`` computes them (each dataset
    loaded once for its checksum)."""
    checksums: dict[str, str] = {}
    out = []
    for cell in cells:
        config = dict(cell.config)
        data_key = canonical_json({"dataset": config["dataset"], "options": config["dataset_options"],
                                   "root": str(cell.request.data_root)})
        if data_key not in checksums:
            checksums[data_key] = load_data(config, cell.request.data_root).checksum()
        config["dataset_checksum"] = checksums[data_key]
        out.append((config, config_hash(config), config_hash(training_config(config))))
    return out


def stored_outcome(store: ResultStore, config: dict, digest: str, skipped: bool = False) -> RunOutcome:
    """The outcome of the run ``digest`` (resolved ``config``), done in ``store``."""
    run_id = store.run_id(digest)
    return RunOutcome(config, digest, store.metrics(run_id, "test"), store.metrics(run_id, "valid"),
                      skipped=skipped, run_id=run_id)


# -- the local engine --------------------------------------------------------------------------------
def run_local(cells: Sequence[Cell], store: ResultStore, progress: bool = True, desc: str = "cells",
              postfix: Callable[[Cell], dict] = lambda cell: {},
              finished: Callable[[Cell], None] = lambda cell: None,
              admit: Callable[[Cell], Optional[str]] = lambda cell: None) -> None:
    """Run (or skip, or resume) every cell in order in this process, with a progress bar over cells;
    ``finished(cell)`` after each cell that ran here to the end (not after one found done in the store).
    A cell for which ``admit(cell)`` gives a reason is not started (``cell.deferred``).

    Several processes may run one plan over one store (one per core): each cell not done is run under a
    claim on its training hash (:meth:`ResultStore.claim`), and a cell whose training another process has
    claimed is left to that process (``cell.deferred`` names it), which meets it in its own pass: it
    trained that config, or is training it, and a test-only cell of the same training only evaluates."""
    bar = tqdm(cells, desc=desc, unit="cell", disable=None if progress else True)
    for cell, (_, digest, trained) in zip(bar, identify(cells), strict=True):
        bar.set_postfix(postfix(cell))
        claim = None
        if store.status(digest) != "done":
            claim = store.claim(trained)
            if claim is None:
                cell.deferred = f"its training is running in {store.claim_holder(trained)}"
                continue
        try:
            cell.deferred = admit(cell)
            if cell.deferred is not None:
                continue
            try:
                cell.outcome = run_experiment(cell.request, store=store, progress=progress)
            except TrainingError as err:
                cell.error = str(err)
        finally:
            if claim is not None:
                claim.release()
        if cell.outcome is not None and not cell.outcome.skipped:
            finished(cell)


# -- what the commands print -------------------------------------------------------------------------
def skipped(cells: Sequence[Cell]) -> int:
    """How many cells were already done in the store."""
    return sum(c.outcome is not None and c.outcome.skipped for c in cells)


def mean_sd(values: list[float]) -> str:
    """Fractions -> "mean ± sample sd" in % (the value alone for one)."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def summary_table(cells: Sequence[Cell], labels: Sequence[str], metrics: Sequence[str] = SUMMARY_METRICS,
                  headers: tuple[str, str] = ("run", "seeds done")) -> str:
    """One row per label (first-seen order; the cells of a label are its seeds): runs done / cells, test
    metrics (%) as mean ± sample sd over the seeds done. ``headers`` names the label and count columns."""
    by_label: dict[str, list[Cell]] = {}
    for cell, label in zip(cells, labels, strict=True):
        by_label.setdefault(label, []).append(cell)
    rows = []
    for label, group in by_label.items():
        done = [c.outcome.test for c in group if c.outcome is not None]
        rows.append([label, f"{len(done)}/{len(group)}", *(mean_sd([t[m] for t in done]) if done else "-"
                                                            for m in metrics)])
    return tabulate(rows, headers=[*headers, *metrics], tablefmt="github", disable_numparse=True)


def _listed(cells: Sequence[Cell], labels: Sequence[str], why: Callable[[Cell], Optional[str]]) -> tuple[int, str]:
    """How many cells have a ``why``, and ``"label seed N (why); ..."`` naming them."""
    named = [(label, c, why(c)) for c, label in zip(cells, labels, strict=True) if why(c) is not None]
    return len(named), "; ".join(f"{label} seed {c.request.seed} ({reason})" for label, c, reason in named)


def deferrals(cells: Sequence[Cell], labels: Sequence[str]) -> Optional[str]:
    """One line naming every deferred cell (label, seed and why), or ``None``."""
    count, listed = _listed(cells, labels, lambda c: c.deferred)
    return f"{count} of {len(cells)} cells not started here: {listed}" if count else None


def failures(cells: Sequence[Cell], labels: Sequence[str]) -> Optional[str]:
    """One line naming every failed cell (label, seed and error), or ``None``."""
    count, listed = _listed(cells, labels, lambda c: c.error)
    return f"{count} of {len(cells)} cells failed: {listed}" if count else None
