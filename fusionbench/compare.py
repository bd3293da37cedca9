"""``fusionbench compare``: several strategies on one dataset under one budget, ending in a leaderboard.

A front end of :mod:`fusionbench.plan`: ``--strategy a,b,c`` and ``--seeds`` become one
:class:`~fusionbench.plan.Cell` per (strategy, seed), strategy-major, every one resolved before the first
run (a bad option fails at once). ``--aggregator`` goes to the graph strategies only, ``--set`` to every
cell (so a strategy option must be one that every named strategy has). The cells run in order in this
process and are stored, so a rerun resumes; the command then prints the leaderboard of exactly these runs
(:mod:`fusionbench.report.leaderboard`: mean ± std over seeds, paired per-sample significance tests
against each column's best row), whatever else the store holds. ``--dry-run`` lists the cells, their run
hashes and whether each is done in the store, and runs nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.plan import Cell, identify, run_local
from fusionbench.registry import STRATEGIES, UnknownPluginError
from fusionbench.report.collect import Selection, parse_columns
from fusionbench.report.leaderboard import PROPOSED, build_leaderboards, render_markdown
from fusionbench.runner import RunRequest
from fusionbench.store import ResultStore


def parse_strategies(text: str) -> list[str]:
    """``"mmsr,sasrec"`` -> ``["mmsr", "sasrec"]`` (duplicates dropped), each a registered strategy."""
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names:
        raise UserInputError(f"--strategy expects comma-separated strategy names, got {text!r}")
    for name in names:
        try:
            STRATEGIES.get(name)
        except UnknownPluginError as err:
            raise UserInputError(f"--strategy: {err}") from None
    return names


def plan_cells(base: RunRequest, strategies: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """One cell per (strategy, seed), strategy-major; ``base.aggregator`` (and ``agg.*`` options) reach
    the graph strategies only. An aggregator or ``agg.*`` option with no graph strategy named is an error."""
    graph = [s for s in strategies if STRATEGIES.get(s).default_aggregator]
    if (base.aggregator or base.aggregator_options) and not graph:
        raise UserInputError(f"--aggregator / agg.* options: none of {', '.join(strategies)} is a graph strategy")
    cells = []
    for strategy in strategies:
        takes_aggregator = strategy in graph
        request = dataclasses.replace(base, strategy=strategy,
                                      aggregator=base.aggregator if takes_aggregator else None,
                                      aggregator_options=base.aggregator_options if takes_aggregator else {})
        cells += [Cell(dataclasses.replace(request, seed=seed)) for seed in seeds]
    return cells


def dry_run_table(cells: list[Cell], store: Optional[ResultStore]) -> str:
    """``--dry-run``: one line per cell (strategy, aggregator, seed, run hash, whether it is done in ``store``;
    ``None`` = no store yet) and the count of runs done; every cell is resolved and its data loaded for
    its checksum, so a bad option or missing data fails here as in a real run."""
    rows = []
    for cell, (config, digest, _) in zip(cells, identify(cells), strict=True):
        state = (store.status(digest) if store is not None else None) or "to run"
        rows.append([cell.request.strategy, config["aggregator"] or "", cell.request.seed, digest, state])
    done = sum(row[-1] == "done" for row in rows)
    return (tabulate(rows, headers=["strategy", "aggregator", "seed", "run", "in the store"], tablefmt="github",
                     disable_numparse=True) + f"\n{len(cells)} runs, {done} done")


def run_comparison(cells: list[Cell], store: ResultStore, progress: bool = True) -> None:
    """Run (or skip, or resume) every cell in order, with a progress bar over cells."""
    run_local(cells, store, progress, desc="compare cells",
              postfix=lambda cell: dict(strategy=cell.request.strategy, seed=cell.request.seed))


def comparison_board(cells: list[Cell], store: ResultStore, metrics: str = "HR,NDCG,MRR", ks: str = "10,20",
                     proposed: Optional[tuple[str, ...]] = None) -> str:
    """The markdown leaderboard of the cells' finished runs only (a failed cell has no row)."""
    hashes = tuple(digest for _, digest, _ in identify(cells))
    done = [h for h in hashes if store.status(h) == "done"]
    if not done:
        raise UserInputError(f"--store {store.path}: none of the compared runs finished")
    dataset = cells[0].config["dataset"]
    boards = build_leaderboards(store, dataset, cells[0].config["protocol"], parse_columns(metrics, ks),
                                proposed or PROPOSED, Selection(run_hashes=tuple(done)))
    return render_markdown(boards, proposed or PROPOSED)
