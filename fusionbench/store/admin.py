"""Looking after a results store from the command line (``fusionbench store show | remove``).

A run's files beside the store (:mod:`fusionbench.store`): its resume checkpoint
(``ResultStore.checkpoint_path``, while unfinished) and the trained weights (``ResultStore.weights_path``),
kept while a run with that training config (``runner.training_config``) remains: the run that trained
them and the stress cells that evaluated them, whose ``trained_from`` names them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from fusionbench.errors import UserInputError
from fusionbench.report.collect import data_name, open_store, row_key, variant_labels
from fusionbench.runner import training_config
from fusionbench.store import config_hash


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


def describe_runs(store_path: Path, status: Optional[str] = None, dataset: Optional[str] = None) -> list[dict]:
    """The runs of a store as table rows (dicts, in id order), labelled as the leaderboard labels them;
    a tune's trial is labelled by its options like any run, its tune named in the ``tune`` column."""
    store = open_store(store_path)
    table = store.runs(status=status, **({"dataset": dataset} if dataset else {}))
    configs = [{k: v for k, v in json.loads(text).items() if k != "tune"} for text in table.config]
    groups: dict[tuple, dict[str, dict]] = {}       # (data, protocol) -> variants, labelled per table
    for c in configs:
        groups.setdefault((data_name(c), c["protocol"]), {})[row_key(c)] = c
    label = {(where, key): text for where, variants in groups.items()
             for key, text in zip(variants, variant_labels(list(variants.values())))}
    rows = []
    for run, config in zip(table.itertuples(), configs):
        if run.status == "done":
            epochs = f"{int(run.best_epoch)} / {len(json.loads(run.history or '[]'))}"
        elif run.status == "running":
            epochs = "resumable" if store.checkpoint_path(run.config_hash).exists() else "no checkpoint"
        else:
            epochs = (run.error or "").splitlines()[-1][:60] if run.error else ""
        where = (data_name(config), config["protocol"])
        rows.append({"id": run.id, "status": run.status, "data": f"{where[0]} / {where[1]}",
                     "run": label[where, row_key(config)], "perturbation": _perturbation_text(config),
                     "tune": _tune_text(run), "seed": run.seed,
                     "epochs (best / run)": epochs,
                     "s / epoch": "" if run.epoch_seconds != run.epoch_seconds or run.epoch_seconds is None
                     else f"{run.epoch_seconds:.1f}",
                     "wall min": "" if run.wall_seconds != run.wall_seconds or run.wall_seconds is None
                     else f"{run.wall_seconds / 60:.1f}"})
    return rows


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
