"""Looking after a results store from the command line (``fusionbench store show | curves | remove``).

A run's files beside the store (:mod:`fusionbench.store`): its resume checkpoint
(``ResultStore.checkpoint_path``, while unfinished) and the trained weights (``ResultStore.weights_path``),
kept while a run with that training config (``runner.training_config``) remains: the run that trained
them and the stress cells that evaluated them, whose ``trained_from`` names them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tabulate import tabulate

from fusionbench.atomic import atomic_write
from fusionbench.deadline import CellCost
from fusionbench.errors import UserInputError
from fusionbench.report.collect import data_name, open_store, row_key, variant_labels
from fusionbench.runner import training_config
from fusionbench.store import ResultStore, config_hash
from fusionbench.train import divergence_epoch, read_checkpoint


def _perturbation_text(config: dict) -> str:
    spec = config.get("perturbation")
    if spec is None:
        return ""
    options = "".join(f", {k}={v}" for k, v in sorted((spec.get("options") or {}).items()))
    return f"{spec['name']} p={spec['severity']:g} ({spec['apply_to']}{options})"


def _tune_text(run) -> str:
    """A trial's tune (``fusionbench tune``) and whether its scheduler stopped it; empty for other runs."""
    if not isinstance(run.tune, str):
        return ""
    return run.tune + (", ASHA-stopped" if run.asha_stopped == 1 else "")


def _run_labels(configs: list[dict]) -> list[str]:
    """Each config's label as the leaderboard labels its row (per dataset x protocol table); a tune's
    trial is labelled by its options like any run."""
    configs = [{k: v for k, v in c.items() if k != "tune"} for c in configs]
    groups: dict[tuple, dict[str, dict]] = {}       # (data, protocol) -> variants, labelled per table
    for c in configs:
        groups.setdefault((data_name(c), c["protocol"]), {})[row_key(c)] = c
    label = {(where, key): text for where, variants in groups.items()
             for key, text in zip(variants, variant_labels(list(variants.values())))}
    return [label[(data_name(c), c["protocol"]), row_key(c)] for c in configs]


def describe_runs(store_path: Path, status: Optional[str] = None, dataset: Optional[str] = None,
                  others: Sequence[ResultStore] = ()) -> list[dict]:
    """The runs of a store as table rows (dicts, in id order), labelled as the leaderboard labels them;
    a tune's trial is labelled by its options like any run, its tune named in the ``tune`` column. A
    finished run whose training loss ran away (:func:`fusionbench.train.divergence_epoch`) says at which
    epoch beside its best / run epochs, as the leaderboard names it under its table. A
    running run's ``left min (1 core)`` is the minutes it is expected to need still with a core to itself,
    as ``sweep --dry-run`` estimates it from the finished runs of the store and of ``others``
    (:meth:`fusionbench.deadline.CellCost.estimate`; empty without an estimate)."""
    store = open_store(store_path)
    table = store.runs(status=status, **({"dataset": dataset} if dataset else {}))
    configs = [json.loads(text) for text in table.config]
    labels = _run_labels(configs)
    cost = CellCost(store, others=others)
    rows = []
    for run, config, text in zip(table.itertuples(), configs, labels):
        epoch_seconds, wall_seconds, left = run.epoch_seconds, run.wall_seconds, None
        if run.status == "done":
            history = json.loads(run.history or "[]")
            diverged = divergence_epoch(history)
            epochs = f"{int(run.best_epoch)} / {len(history)}" + (f", diverged at {diverged}" if diverged else "")
        elif run.status == "running":
            state = read_checkpoint(store.checkpoint_path(run.config_hash))
            epochs = "no checkpoint" if state is None else "resumable"
            if state and state.get("history"):
                history = state["history"]
                epochs = f"resumable: {state['best_epoch']} / {len(history)} so far"
                epoch_seconds = sum(e["seconds"] for e in history) / len(history)
                wall_seconds = state.get("elapsed")
            left = cost.estimate(config, run.config_hash, config_hash(training_config(config))).seconds
        else:
            epochs = (run.error or "").splitlines()[-1][:60] if run.error else ""
        rows.append({"id": run.id, "status": run.status, "data": f"{data_name(config)} / {config['protocol']}",
                     "run": text, "perturbation": _perturbation_text(config),
                     "tune": _tune_text(run), "seed": run.seed,
                     "epochs (best / run)": epochs,
                     "s / epoch": _shown(epoch_seconds), "wall min": _shown(wall_seconds, per=60),
                     "left min (1 core)": _shown(left, per=60)})
    return rows


def _shown(value: Optional[float], per: float = 1.0) -> str:
    """``value / per`` to one decimal; empty for a missing value (``None`` or NaN, as pandas reads NULL)."""
    return "" if value is None or value != value else f"{value / per:.1f}"


@dataclass
class Curve:
    """One run's per-epoch history: from the store (a finished run, or a tune's trial epoch by epoch) or,
    for a run still training, from its resume checkpoint (``source``: "store", "checkpoint" or "none")."""

    run_id: int
    label: str
    status: str
    history: list[dict]
    best_epoch: Optional[int]
    source: str


def run_curves(store_path: Path, run_ids: list[int]) -> list[Curve]:
    """The learning curves of the given runs (in the order given). Unknown ids are an error naming them."""
    store = open_store(store_path)
    table = store.runs(status=None)
    known = {int(i): row for i, row in zip(table.id, table.itertuples())}
    unknown = [str(i) for i in run_ids if i not in known]
    if unknown:
        raise UserInputError(f"--id {', '.join(unknown)}: no such run in {store.path} "
                             "(`fusionbench store show` lists the ids)")
    runs = [known[i] for i in run_ids]
    labels = _run_labels([json.loads(run.config) for run in runs])
    curves = []
    for run, label in zip(runs, labels):
        history, source = json.loads(run.history if isinstance(run.history, str) else "[]"), "store"
        best = int(run.best_epoch) if run.status == "done" and run.best_epoch == run.best_epoch else None
        state = read_checkpoint(store.checkpoint_path(run.config_hash)) if run.status == "running" else None
        if not history and state and state.get("history"):
            history, best, source = state["history"], state["best_epoch"], "checkpoint"
        curves.append(Curve(int(run.id), label, run.status, history, best, source if history else "none"))
    return curves


def _valid_metrics(curves: list[Curve]) -> list[str]:
    return sorted({name for c in curves for epoch in c.history for name in epoch.get("valid", {})})


def curves_table(curves: list[Curve], metric: str) -> str:
    """Markdown: one line per epoch, per run its training loss and validation ``metric`` (%), the best
    epoch's value starred; a caption line per run (id, label, status, where the history came from)."""
    known = _valid_metrics(curves)
    if metric not in known:
        raise UserInputError(f"--metric {metric}: not in these runs' validation histories; there: "
                             f"{', '.join(known) or 'none (no epoch recorded yet)'}")
    n = max((len(c.history) for c in curves), default=0)
    body = []
    for epoch in range(1, n + 1):
        line = [epoch]
        for c in curves:
            if epoch > len(c.history):
                line += ["", ""]
                continue
            e = c.history[epoch - 1]
            value = e.get("valid", {}).get(metric)
            text = "" if value is None else f"{100 * value:.2f}" + (" *" if epoch == c.best_epoch else "")
            line += [f"{e['loss']:.4f}", text]
        body.append(line)
    headers = ["epoch", *(h for c in curves for h in (f"{c.run_id} loss", f"{c.run_id} valid {metric}"))]
    why = {"store": "", "checkpoint": ", from its resume checkpoint", "none": ", no epoch recorded"}
    captions = [f"- run {c.run_id}: {c.label}, {c.status}{why[c.source]}"
                + (f", best epoch {c.best_epoch} of {len(c.history)}" if c.best_epoch else "") for c in curves]
    return "\n".join([*captions, "", tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)]) + "\n"


def plot_curves(curves: list[Curve], metric: str, path: Path) -> None:
    """PNG at ``path`` (atomic): validation ``metric`` (%) against epoch, one line per run, the best epoch
    marked. Matplotlib's Agg canvas directly, so no global backend is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for c in curves:
        points = [(e["epoch"], 100 * e["valid"][metric]) for e in c.history if metric in e.get("valid", {})]
        if not points:
            continue
        line, = ax.plot(*zip(*points), label=f"{c.run_id}: {c.label}")
        best = [v for epoch, v in points if epoch == c.best_epoch]
        if best:
            ax.plot([c.best_epoch], best, marker="*", markersize=10, color=line.get_color())
    ax.set(xlabel="epoch", ylabel=f"validation {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def remove_runs(store_path: Path, run_ids: list[int], force: bool = False) -> list[str]:
    """Delete runs (one transaction), their resume checkpoints, and the kept weights they trained or
    evaluated that no remaining run refers to. A 'running' run needs ``force`` (its process may still be
    going). Returns the removed runs' config hashes."""
    store = open_store(store_path)
    table = store.runs(status=None)
    known = dict(zip(table.id, table.status))
    unknown = [str(i) for i in run_ids if i not in known]
    if unknown:
        raise UserInputError(f"--id {', '.join(unknown)}: no such run in {store.path} "
                             "(`fusionbench store show` lists the ids)")
    running = [str(i) for i in run_ids if known[i] == "running"]
    if running and not force:
        raise UserInputError(f"--id {', '.join(running)}: marked 'running'; its process may still be going. "
                             "Stop it, then add --force")
    gone = table[table.id.isin(run_ids)]
    trained = {config_hash(training_config(json.loads(text))) for text in gone.config}
    hashes = store.remove(list(dict.fromkeys(run_ids)))
    left = store.runs(status=None)
    referred = {config_hash(training_config(json.loads(text))) for text in left.config}
    for path in [store.checkpoint_path(h) for h in hashes] + [store.weights_path(t) for t in trained - referred]:
        path.unlink(missing_ok=True)
    return hashes
