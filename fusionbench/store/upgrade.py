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

**Steps.** Where a new option's default does *not* reproduce what some old runs did, a step in
:data:`STEPS` first fills in, for each stored config made before the option existed, the value that
does; re-resolving then adds every other new key at its default. A step that cannot tell keeps the run
as it is (:class:`CannotTell`, reported with its reason). Steps:

- :func:`attr_encoding_step` (``features.attr``, issue 22): runs whose model saw a derived ``attr``
  channel get the encoding their strategy read then (:data:`ATTR_ENCODING_BEFORE`); other runs of feature
  strategies (no attribute data, or ``features.modalities`` without ``attr``) were the same under either
  encoding and get the default. Telling these apart loads each run's dataset once (``data_root``).
- :func:`text_source_step` (``features.text``, issue 22): runs of feature strategies whose ``text`` channel
  read texts get the dataset's original source, ``prefix`` on the Amazon folders (the default ``title``
  reads full titles); others get the default.
- :func:`image_source_step` (``features.image``, issue 25): a dataset's image sources make an ``image``
  channel that runs made before they existed did not have. Runs of feature strategies on such a dataset
  (``toys``) that built every channel (``features.modalities`` empty) or named ``image`` read text and
  attributes only, which no value of the option reproduces: they are kept as they are. All other runs were
  the same under any value and get the default. Needs no data.
- :func:`batching_step` (``train.batching``): runs of strategies that train on causal rows get ``length``,
  the grouping every such run used before the option existed (the default ``uniform`` draws batches at
  random); runs of strategies that train on prefix samples, which the option does not touch, get the default.
- :func:`han_update_step` (issue 23): MMSR's ``update`` is gone, the han aggregator's ``agg.update`` is the
  one update option; a stored mmsr run's ``update`` is folded into ``agg.update`` as the code of that time
  resolved the two (:func:`fold_mmsr_update`) and removed. This is the one kind of step that removes a key:
  the stored values are compared with the re-resolved ones after the steps, and the report names the keys
  a step removed.

Options that enter a resolved config only when set (a ``perturbation``; those an option class lists in
``PluginOptions.ONLY_WHEN_SET``: ``train.exclude_history``, ``train.record_test``, ``train.diverge_factor``,
``data.users``) need neither: a config without them re-resolves to itself, and one with them keeps them.

Archive import (``fusionbench store import``) copies runs as they were exported and applies no step:
run ``store upgrade`` on the store afterwards.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from fusionbench.data.core import ItemSide
from fusionbench.errors import UserInputError
from fusionbench.perturb.plan import PerturbationRequest
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, load_data, resolve, training_config
from fusionbench.store import ResultStore, canonical_json, config_hash


@dataclass(frozen=True)
class Upgrade:
    """What happened to one stored run: ``status`` is "current" (nothing to do), "upgraded" (new
    hash, ``added`` the new option keys, ``removed`` the keys a step removed) or "kept" (``reason`` says
    why it was not rewritten)."""

    run_id: int
    old_hash: str
    new_hash: Optional[str]
    status: str
    added: tuple[str, ...] = ()
    reason: str = ""
    removed: tuple[str, ...] = ()


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
        tune=config.get("tune"),
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


class CannotTell(Exception):
    """Raised by an upgrade step that cannot tell what an old run did; the run is kept as it is."""


class RunData:
    """The data of stored runs, loaded once per (dataset, dataset options) for the steps that need it.

    ``side(config)`` -> the run's :class:`~fusionbench.data.core.ItemSide`; :class:`CannotTell` when the
    data cannot be loaded or its checksum is not the run's ``dataset_checksum`` (other data than the run's)."""

    def __init__(self, data_root: Optional[Path] = None):
        self.data_root = data_root
        self._loaded: dict[str, object] = {}

    def side(self, config: dict) -> ItemSide:
        key = canonical_json({"dataset": config["dataset"], "options": config["dataset_options"]})
        if key not in self._loaded:
            try:
                data = load_data(config, self.data_root)
                self._loaded[key] = (data.checksum(), data.side)
            except (UserInputError, KeyError, OSError) as err:
                self._loaded[key] = f"its data could not be loaded ({err}); give --data-root"
        loaded = self._loaded[key]
        if isinstance(loaded, str):
            raise CannotTell(loaded)
        checksum, side = loaded
        if checksum != config.get("dataset_checksum"):
            raise CannotTell(f"the data found now (checksum {checksum[:12]}) is not the run's "
                             f"({str(config.get('dataset_checksum'))[:12]})")
        return side


ATTR_ENCODING_BEFORE: dict[str, str] = {
    # read off the code from the first tables.py (b393119) until features.attr existed: the attr table held
    # the 128-d TruncatedSVD features AND the attribute ids as codes; which one a model read:
    "mmsr": "ids",      # codes -> one graph node per attribute id (features only for the code-centroid init,
                        # which centroid_features reproduces under ids)
    "early": "svd",     # ModalityInputs: a table with features -> Linear projection; codes unread
    "late": "svd",      # same
    "sasrecf": "svd",   # preset of early
    "gru4recf": "svd",  # preset of late
    "nova": "svd",      # AttentionLevelStrategy.side = ModalityInputs
    "trans2d": "svd",   # ModalityInputs
    "mdsrec": "svd",    # ModalityChannel (projection) and item_graphs.similarity_features (the features)
    "difsr": "svd",     # side streams = ModalityInputs; its AAP labels were the attribute-id codes
}
"""``features.attr`` value that reproduces, as far as the table goes, what each built-in strategy's runs did
before the option existed. ``difsr`` with ``aap_weight > 0`` also predicted each target's first attribute
id with a softmax CE, which no current configuration reproduces (its predictor is now a multi-label BCE
over the code set, and under ``svd`` the codes are clusters): :func:`attr_encoding_step` keeps those runs
as they are, so they are never found as runs of the current code."""


def builds_unrecorded_channel(features: dict, channel: str) -> bool:
    """Whether a stored run's ``features`` options lack the option named ``channel`` (``attr``, ``text``,
    ``image``: each channel's option has its name) while the run built that channel (every channel, or
    ``features.modalities`` naming it): only such runs need a step to tell what the channel read."""
    if not features or channel in features:
        return False
    return not features.get("modalities") or channel in features["modalities"]


def attr_encoding_step(config: dict, data: RunData) -> dict:
    """``features.attr`` for a run made before it existed (module docstring, Steps)."""
    features = config.get("features") or {}
    if not builds_unrecorded_channel(features, "attr"):
        return config
    side = data.side(config)
    if side.attributes is None or "attr" in side.dense:
        return config                          # no derived attr channel (a dense one is used as given)
    encoding = ATTR_ENCODING_BEFORE.get(config["strategy"])
    if encoding is None:
        raise CannotTell(f"made before features.attr existed by strategy {config['strategy']!r}, whose attr "
                         "input then (SVD features or attribute-id codes) is not known here")
    if config["strategy"] == "difsr" and config["strategy_options"].get("aap_weight", 0) > 0:
        raise CannotTell("made with difsr's first-code CE attribute predictor, which the current code no "
                         "longer has (it trains the multi-label BCE): no configuration reproduces it")
    return {**config, "features": {**features, "attr": encoding}}


def unrecorded_channel_sources(config: dict, channel: str, declared: Callable[[str, dict], Sequence[str]]) -> tuple:
    """The sources ``declared(dataset, dataset_options)`` names for ``channel`` when ``config`` builds that
    channel without recording its source (:func:`builds_unrecorded_channel`); ``()`` when it does not, or
    when the dataset cannot be resolved (re-resolving the config reports that)."""
    if not builds_unrecorded_channel(config.get("features") or {}, channel):
        return ()
    try:
        return tuple(declared(config["dataset"], config["dataset_options"]))
    except (UserInputError, KeyError):
        return ()


def text_source_step(config: dict, data: RunData) -> dict:
    """``features.text`` for a run made before it existed: its ``text`` channel read the dataset's original
    text source (the title prefix of the Amazon folders, ``title`` of a folder dataset), the first source
    the dataset declares; the new default ``title`` (full titles) would claim otherwise. Runs without a
    text channel built from texts (``features.modalities`` without ``text``, a dataset without text sources
    or one that declares none) were the same under any source and get the default. Needs no data."""
    from fusionbench.data.datasets import declared_text_sources

    sources = unrecorded_channel_sources(config, "text", declared_text_sources)
    if not sources:
        return config
    return {**config, "features": {**(config.get("features") or {}), "text": sources[0]}}


def image_source_step(config: dict, data: RunData) -> dict:
    """``features.image`` for a run made before it existed (module docstring, Steps). Needs no data."""
    from fusionbench.data.datasets import declared_image_sources

    if unrecorded_channel_sources(config, "image", declared_image_sources):
        raise CannotTell(f"made before dataset {config['dataset']!r} had an image channel: it read every other "
                         "channel and no image, which no features.image value reproduces")
    return config


def batching_step(config: dict, data: RunData) -> dict:
    """``train.batching`` for a run made before it existed (module docstring, Steps). Needs no data."""
    train = config.get("train") or {}
    if "batching" in train:
        return config
    try:
        causal = STRATEGIES.get(config["strategy"]).causal_training
    except (UserInputError, KeyError):
        return config                          # re-resolving reports it
    return {**config, "train": {**train, "batching": "length"}} if causal else config


def fold_mmsr_update(config: dict) -> dict:
    """A stored mmsr config with MMSR's former ``update`` option folded into the han aggregator's
    ``agg.update``, as MMSR resolved the two before it lost the option: a config held both, each ``gate``
    unless set, and the one that was not ``gate`` won (two different non-gate values, or a non-gate
    ``update`` with another aggregator, never built a model). Other configs are returned as they are.
    Pure (no data), so the reports read stored configs through it too (``report.collect.done_runs``).

    Raises :class:`CannotTell` for the configs that never built a model."""
    options = config.get("strategy_options") or {}
    if config.get("strategy") != "mmsr" or "update" not in options:
        return config
    rule = options["update"]
    kept = {k: v for k, v in options.items() if k != "update"}
    if config.get("aggregator") != "han":
        if rule != "gate":
            raise CannotTell(f"mmsr's update={rule} with aggregator {config.get('aggregator')!r}, which never "
                             "built a model (update applied to han only)")
        return {**config, "strategy_options": kept}
    agg = config.get("aggregator_options") or {}
    if rule != "gate" and agg.get("update", "gate") not in ("gate", rule):
        raise CannotTell(f"mmsr's update={rule} and agg.update={agg['update']} disagree, which never built a model")
    effective = agg.get("update", "gate") if rule == "gate" else rule
    return {**config, "strategy_options": kept, "aggregator_options": {**agg, "update": effective}}


def han_update_step(config: dict, data: RunData) -> dict:
    """MMSR's former ``update`` onto ``agg.update`` (module docstring, Steps; :func:`fold_mmsr_update`)."""
    return fold_mmsr_update(config)


STEPS: tuple[Callable[[dict, RunData], dict], ...] = (attr_encoding_step, text_source_step, image_source_step,
                                                      batching_step, han_update_step)
"""Applied in order to every stored config before it is re-resolved (module docstring, Steps)."""


def upgrade_store(store: ResultStore, dry_run: bool = False, data_root: Optional[Path] = None) -> list[Upgrade]:
    """Re-resolve every run's config with the current code (after :data:`STEPS`) and rewrite the ones that
    only gained keys. ``data_root``: where steps that read a run's data find it."""
    runs = store.runs(status=None)
    known = set(runs.config_hash)
    results, renames, trained = [], {}, {}
    data = RunData(data_root)
    for row in runs.itertuples():
        old = json.loads(row.config)
        try:
            filled = old
            for step in STEPS:
                filled = step(filled, data)
        except CannotTell as err:
            results.append(Upgrade(row.id, row.config_hash, None, "kept", reason=f"cannot tell: {err}"))
            continue
        try:
            new = resolve(request_of(filled))
        except (UserInputError, KeyError) as err:  # an option or field that no longer exists, a value no longer valid
            results.append(Upgrade(row.id, row.config_hash, None, "kept", reason=f"does not resolve: {err}"))
            continue
        new["dataset_checksum"] = old["dataset_checksum"]
        added = added_keys(old, new)[0]
        removed = added_keys(new, old)[0]                  # keys a step removed (folded into others)
        changed = added_keys(filled, new)[1]               # the steps' values and every other stored one
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
            results.append(Upgrade(row.id, row.config_hash, digest, "upgraded", tuple(added), removed=tuple(removed)))
            renames[row.config_hash] = (row.id, digest, canonical_json(new))
            trained[config_hash(training_config(old))] = config_hash(training_config(new))
    if renames and not dry_run:
        # files first: after a crash the database still holds the old hashes and a second upgrade
        # renames what is left (a file already moved is simply not found again)
        moves = [(store.checkpoint_path(old), store.checkpoint_path(new)) for old, (_, new, _) in renames.items()]
        moves += [(store.weights_path(old), store.weights_path(new)) for old, new in trained.items()]
        for path, target in moves:
            if path.exists():
                os.replace(path, target)
        store.rekey(renames, trained)
    return results
