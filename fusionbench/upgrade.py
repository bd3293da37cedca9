"""Bring a results store's run identities up to the current code after options were added.

A run is identified by the hash of its resolved config (every option with its value). When a new
option is added to a strategy, aggregator, dataset, perturbation or the trainer, every config resolved
afterwards holds one more key, so the hash of an unchanged command changes and the store no longer
finds its earlier runs (a done run would be trained again, an interrupted one would restart).

The rule that makes this safe: **a new option's default reproduces the behaviour from before the
option existed**. Then an old config is the new config with the new keys at their defaults, and
``upgrade_store`` re-resolves every stored config with the current code (``runner.resolve`` on the
stored values), checks that only keys were added (every stored key keeps its value), and rewrites the
run's config and hash; the run's checkpoint (named by the run's hash) and its kept weights and
``trained_from`` references (named by the hash of its training config, ``runner.training_config``) move
with it. A run whose stored values no longer resolve to themselves (an option removed, renamed, or a
default changed that the stored value depends on) is left untouched and reported. Run it while no
run of the store is in progress (a running process keeps writing its checkpoint under the old hash).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from fusionbench.errors import UserInputError
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.runner import RunRequest, resolve, training_config
from fusionbench.store import ResultStore, canonical_json, config_hash


@dataclass(frozen=True)
class Upgrade:
    """What happened to one stored run: ``status`` is "current" (nothing to do), "upgraded" (new
    hash, ``added`` the new option keys) or "kept" (``reason`` says why it was not rewritten)."""

    run_id: int
    old_hash: str
    new_hash: Optional[str]
    status: str
    added: tuple[str, ...] = ()
    reason: str = ""


def request_of(config: dict) -> RunRequest:
    """The request that resolves to ``config`` (a stored, resolved config)."""
    spec = config.get("perturbation")
    return RunRequest(
        strategy=config["strategy"], dataset=config["dataset"], protocol=config["protocol"],
        seed=config["seed"], aggregator=config.get("aggregator"), max_len=config["max_len"],
        strategy_options=dict(config["strategy_options"]), aggregator_options=dict(config["aggregator_options"]),
        dataset_options=dict(config["dataset_options"]), train_options=dict(config["train"]),
        feature_options=dict(config["features"]),
        perturbation=PerturbationRequest(spec["name"], spec["severity"], spec["apply_to"], dict(spec["options"]))
        if spec else None,
    )


def added_keys(old: dict, new: dict, prefix: str = "") -> tuple[list[str], list[str]]:
    """``(added, changed)``: dotted keys only in ``new``, and keys of ``old`` whose value differs in
    (or is missing from) ``new``. Values are compared as JSON (tuples and lists alike)."""
    added, changed = [], []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if key not in old:
            added.append(name)
        elif key not in new:
            changed.append(name)
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            more, differ = added_keys(old[key], new[key], f"{name}.")
            added += more
            changed += differ
        elif json.loads(json.dumps(old[key])) != json.loads(json.dumps(new[key])):
            changed.append(name)
    return added, changed


def upgrade_store(store: ResultStore, dry_run: bool = False) -> list[Upgrade]:
    """Re-resolve every run's config with the current code and rewrite the ones that only gained keys."""
    runs = store.runs(status=None)
    known = set(runs.config_hash)
    results, renames, trained = [], {}, {}
    for row in runs.itertuples():
        old = json.loads(row.config)
        try:
            new = resolve(request_of(old))
        except (UserInputError, KeyError) as err:  # an option or field that no longer exists, a value no longer valid
            results.append(Upgrade(row.id, row.config_hash, None, "kept", reason=f"does not resolve: {err}"))
            continue
        new["dataset_checksum"] = old["dataset_checksum"]
        added, changed = added_keys(old, new)
        digest = config_hash(new)
        if changed:
            results.append(Upgrade(row.id, row.config_hash, None, "kept",
                                   reason="stored values resolve differently: " + ", ".join(changed)))
        elif digest == row.config_hash:
            results.append(Upgrade(row.id, row.config_hash, digest, "current"))
        elif digest in known:
            results.append(Upgrade(row.id, row.config_hash, None, "kept",
                                   reason=f"the upgraded config is already stored as run {digest}"))
        else:
            results.append(Upgrade(row.id, row.config_hash, digest, "upgraded", tuple(added)))
            renames[row.config_hash] = (row.id, digest, canonical_json(new))
            trained[config_hash(training_config(old))] = config_hash(training_config(new))
    if renames and not dry_run:
        # files first: after a crash the database still holds the old hashes and a second upgrade
        # renames what is left (a file already moved is simply not found again)
        moves = [("checkpoints", old, new) for old, (_, new, _) in renames.items()]
        moves += [("models", old, new) for old, new in trained.items()]
        for folder, old_hash, new_hash in moves:
            path = store.path.parent / folder / f"{old_hash}.pt"
            if path.exists():
                os.replace(path, path.with_name(f"{new_hash}.pt"))
        store.rekey(renames, trained)
    return results
