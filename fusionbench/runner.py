"""One experiment end to end: resolve the configuration, load data, build the model, train, store.

The resolved configuration (every default filled in, every option validated) is a plain dict; its
hash identifies the run in the results store, so a run that is already done is skipped.

With a store, the selected weights of every finished run are kept beside it
(:meth:`~fusionbench.store.ResultStore.weights_path`), named by the hash of its training config
(``training_config``: the config without what does not change training, such as a test-only
perturbation). A run whose training config was trained before
evaluates those weights instead of training again: a test-only stress curve trains once per seed, and
the p = 0 cells of all perturbations of a seed share one training. The store records which run's
weights were evaluated (``trained_from``).
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional

import torch

from fusionbench.bf16 import bf16_products
from fusionbench.context import StrategyContext
from fusionbench.data.core import (
    DEFAULT_IMAGE_SOURCE,
    DEFAULT_TEXT_SOURCE,
    SequenceData,
    pick_image_source,
    pick_text_source,
)
from fusionbench.data.datasets import DatasetContext, declared_image_sources, declared_text_sources
from fusionbench.data.splits import PROTOCOLS, Split, make_split
from fusionbench.dropout import mask_draw
from fusionbench.errors import UserInputError
from fusionbench.length_groups import causal_pass
from fusionbench.memory import peak_memory_mb, start_run_memory
from fusionbench.metrics import summarize
from fusionbench.options import Ge, PluginOptions, require
from fusionbench.perturb.plan import PerturbationRequest, StressPlan, resolve_perturbation, training_view_of
from fusionbench.registry import AGGREGATORS, DATASETS, STRATEGIES
from fusionbench.store import UNSEEN_TEST, ResultStore, RunSummary, config_hash
from fusionbench.strategy import Strategy
from fusionbench.train import DataViews, TrainOptions, TrainResult, evaluate_trained, save_atomically, train

DEFAULT_MAX_LEN = 50
OPTION_GROUPS = {"train": "train_options", "agg": "aggregator_options", "data": "dataset_options",
                 "features": "feature_options"}
"""Key prefixes of option overrides (``train.lr``) and the :class:`RunRequest` field each fills; a key
without a prefix is a strategy option."""


def group_options(options: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``{"dim": 64, "train.lr": 0.01}`` -> ``{"strategy_options": {"dim": 64}, "train_options": {"lr": 0.01},
    ...}`` (every :class:`RunRequest` options field present); ``where`` names the source in errors."""
    groups: dict[str, dict[str, Any]] = {"strategy_options": {}, **{g: {} for g in OPTION_GROUPS.values()}}
    for key, value in options.items():
        prefix, dot, name = key.partition(".")
        if dot and prefix in OPTION_GROUPS and name:
            groups[OPTION_GROUPS[prefix]][name] = value
        elif dot:
            raise UserInputError(f"{where} {key!r}: unknown option group {prefix!r}; "
                                 f"known: {', '.join(OPTION_GROUPS)} (no prefix = strategy option)")
        else:
            groups["strategy_options"][key] = value
    return groups


NO_CHANNELS = "none"  # features.modalities=none: no channel at all, the strategy's ID-only form


@dataclass(frozen=True)
class FeatureOptions(PluginOptions):
    """How modality tables are made (``--set features.<name>=value``); see docs/features.md.

    ``attr``: how every strategy sees the ``attr`` channel, ``ids`` (learned attribute-id embeddings; MMSR's
    attribute nodes are the ids) or ``svd`` (frozen TruncatedSVD features of the multi-hot, codes clustered
    from them as for text).

    ``text``: the text source of the ``text`` channel, a name the dataset declares (``title``: the full
    product title; ``prefix``: the short title prefix of the Amazon folders; ``fusionbench data info``
    lists them). The default ``title`` on a dataset without full titles reads its one text source
    instead, and the resolved config records the source read (:func:`resolved_text_source`).

    ``image``: the image source of the ``image`` channel, a name the dataset declares (``efficientnet``: its
    product photos through EfficientNet-Lite0, computed on first use and cached; ``clip``: CLIP ViT-B/32
    vectors shipped with the data). On a dataset without image sources only the default is allowed (an
    ``image`` channel given as features is used as given)."""

    HELP = {
        "n_clusters": "codes per channel (k-means centres) of text, dense channels and attr under attr=svd",
        "k": "codes per item of those channels (its k nearest centres)",
        "reduce": "reduction before k-means: ae (autoencoder), pca or none",
        "attr_max_codes": "codes per item of attr under attr=ids (its first attribute ids)",
        "modalities": "the channels to build, e.g. text,attr (empty: every channel the data has; none: ID only)",
        "attr": "how every strategy sees the attr channel: ids (learned id embeddings) or svd (features)",
        "text": "the text source of the text channel (`fusionbench data info` lists a dataset's)",
        "image": "the image source of the image channel, e.g. efficientnet (photos encoded here) or clip",
    }

    n_clusters: Annotated[int, Ge(1)] = 30
    k: Annotated[int, Ge(1)] = 3
    reduce: str = "ae"
    attr_max_codes: Annotated[int, Ge(1)] = 8
    modalities: tuple[str, ...] = ()
    attr: Literal["ids", "svd"] = "ids"
    text: str = DEFAULT_TEXT_SOURCE
    image: str = DEFAULT_IMAGE_SOURCE

    def channels(self) -> Optional[list[str]]:
        """The channels to build: ``None`` = every channel the data has, ``[]`` under ``none`` (ID only)."""
        if not self.modalities:
            return None
        return [m for m in self.modalities if m != NO_CHANNELS]

    def check(self) -> None:
        require(self.k <= self.n_clusters, f"option 'k' must be <= n_clusters ({self.n_clusters}), got {self.k}")
        require(self.reduce in ("ae", "pca", "none"),
                f"option 'reduce' must be 'ae', 'pca' or 'none', got {self.reduce!r}")
        require(NO_CHANNELS not in self.modalities or len(self.modalities) == 1,
                f"option 'modalities': {NO_CHANNELS!r} (ID only) cannot be combined with channels, "
                f"got {','.join(self.modalities)!r}")
        require(self.text.isidentifier(),
                f"option 'text' must be a text source name (title, prefix, ...), got {self.text!r}")
        require(self.image.isidentifier(),
                f"option 'image' must be an image source name (efficientnet, clip, ...), got {self.image!r}")


@dataclass
class RunRequest:
    """What the user asked for, before defaults are resolved. ``*_options`` values may be strings."""

    strategy: str
    dataset: str = "beauty"
    protocol: str = "loo"
    seed: int = 0
    aggregator: Optional[str] = None
    max_len: int = DEFAULT_MAX_LEN
    strategy_options: dict[str, Any] = field(default_factory=dict)
    aggregator_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    feature_options: dict[str, Any] = field(default_factory=dict)
    data_root: Optional[Path] = None
    device: str = "cpu"
    perturbation: Optional[PerturbationRequest] = None
    tune: Optional[dict[str, Any]] = None
    """A trial of ``fusionbench tune``: the tune's name and settings (``fusionbench.tune``), kept in the
    config as ``"tune"``, so a trial never shares its identity with an ordinary run of the same options."""


@dataclass
class RunOutcome:
    config: dict
    config_hash: str
    test: dict[str, float]
    valid: dict[str, float]
    skipped: bool = False
    result: Optional[TrainResult] = None
    run_id: Optional[int] = None


def resolve(request: RunRequest) -> dict:
    """The fully resolved, validated configuration as a JSON-able dict (the run's identity)."""
    if request.protocol not in PROTOCOLS:
        raise UserInputError(f"unknown protocol {request.protocol!r}; known: {', '.join(PROTOCOLS)}")
    if request.max_len < 1:
        raise UserInputError(f"--max-len must be >= 1, got {request.max_len}")
    strategy_cls = STRATEGIES.get(request.strategy)
    aggregator = request.aggregator or strategy_cls.default_aggregator
    if aggregator is None and request.aggregator_options:
        raise UserInputError(f"strategy {request.strategy!r} takes no aggregator, but agg.* options were given")
    if request.aggregator and not strategy_cls.default_aggregator:
        raise UserInputError(f"strategy {request.strategy!r} is not a graph strategy: --aggregator does not apply")
    config = {
        "strategy": request.strategy,
        "strategy_options": STRATEGIES.options(request.strategy, **request.strategy_options).as_dict(),
        "aggregator": aggregator,
        "aggregator_options": AGGREGATORS.options(aggregator, **request.aggregator_options).as_dict()
        if aggregator else {},
        "dataset": request.dataset,
        "dataset_options": DATASETS.options(request.dataset, **request.dataset_options).as_dict(),
        "protocol": request.protocol,
        "max_len": request.max_len,
        "seed": request.seed,
        "train": TrainOptions.build({**strategy_cls.train_defaults, **request.train_options}, where="train").as_dict(),
        "features": FeatureOptions.build(request.feature_options, where="features").as_dict()
        if strategy_cls.uses_modalities else {},
    }
    if config["features"]:
        config["features"]["text"] = resolved_text_source(config)
        config["features"]["image"] = resolved_image_source(config)
    if request.perturbation is not None:  # clean runs keep the hash they had before perturbations existed
        config["perturbation"] = resolve_perturbation(request.perturbation, request.protocol)
    if request.tune is not None:  # ordinary runs have no such key, so their hashes are unchanged
        config["tune"] = dict(request.tune)
    record_test_entry(config)
    return config


def record_test_entry(config: dict) -> None:
    """Check ``train.record_test`` of a resolved ``config``. Like ``train.exclude_history`` (and
    ``data.users``) it enters a config only when set (``PluginOptions.ONLY_WHEN_SET``), so every run
    without it keeps the hash it had before the option existed (no ``store upgrade``), while a run with it,
    which stores more (per-epoch test metrics in its history), is never taken for one without it; the key
    is in the training config too, so kept weights carry the history they were trained with. It applies to
    clean runs under ``loo`` and ``ratio`` (under ``ratio-paper`` every epoch is scored on test already)."""
    if not config["train"].get("record_test"):
        return
    if config["protocol"] not in ("loo", "ratio"):
        raise UserInputError(f"train.record_test applies to protocols loo and ratio; under {config['protocol']!r} "
                             "every epoch is already scored on the test split")
    if "perturbation" in config:
        raise UserInputError("train.record_test applies to clean runs, not to a perturbed run")


def resolved_text_source(config: dict) -> str:
    """``features.text`` of a config as the run reads it, from the sources the dataset declares (known
    without loading the data): the named source, or for the default ``title`` on a dataset without full
    titles its one text source (so the config records what the run reads); a source the dataset lacks is
    an error naming the option and the dataset's sources."""
    requested = config["features"]["text"]
    sources = declared_text_sources(config["dataset"], config["dataset_options"])
    return requested if sources is None else pick_text_source(requested, sources, f"dataset {config['dataset']!r}")


def resolved_image_source(config: dict) -> str:
    """``features.image`` of a config, checked against the image sources the dataset declares (known without
    loading the data); a source the dataset lacks is an error naming the option and the dataset's sources."""
    requested = config["features"]["image"]
    sources = declared_image_sources(config["dataset"], config["dataset_options"])
    return requested if sources is None else pick_image_source(requested, sources, f"dataset {config['dataset']!r}")


def load_data(config: dict, data_root: Optional[Path]) -> SequenceData:
    return DATASETS.create(config["dataset"], DatasetContext(data_root), **config["dataset_options"]).load()


def build_context(config: dict, data: SequenceData, split: Optional[Split] = None) -> StrategyContext:
    """Strategy context; modality tables are computed (or read from cache) only if the strategy uses them.
    With a split, ``history`` holds the interactions before each user's ``history_end`` and
    ``test_history`` those before its ``test_history_end``."""
    modalities = {}
    if config["features"]:
        from fusionbench.features.tables import modality_tables

        opts = FeatureOptions.build(config["features"])
        modalities = modality_tables(
            data.side, data.n_items, data.features_checksum(), n_clusters=opts.n_clusters, k=opts.k, reduce=opts.reduce,
            attr_max_codes=opts.attr_max_codes, modalities=opts.channels(), attr=opts.attr,
            text=config["features"].get("text"),  # None: a config from before features.text, read the original text
            image=config["features"].get("image"),
        )
    return StrategyContext(n_items=data.n_items, max_len=config["max_len"], modalities=modalities,
                           aggregator=config["aggregator"], aggregator_options=config["aggregator_options"],
                           history=None if split is None else data.truncated(split.history_end),
                           test_history=None if split is None else data.truncated(split.test_history_end))


class KeptModel(NamedTuple):
    """A stored run's model with its kept weights loaded, and the data and split it was trained on."""

    model: Strategy
    data: SequenceData
    split: Split


def load_kept(store: ResultStore, config: dict, data_root: Optional[Path] = None) -> Optional[KeptModel]:
    """The model of the stored run ``config`` (a resolved config) rebuilt on the CPU from the weights kept
    beside ``store`` (:meth:`~fusionbench.store.ResultStore.weights_path` of its training config's hash), or
    ``None`` where none were kept (a run imported from an archive, or one still training): what the probes in
    ``reports/`` evaluate without retraining."""
    weights = store.weights_path(config_hash(training_config(config)))
    if not weights.exists():
        return None
    data = load_data(config, data_root)
    split = make_split(data, config["protocol"])
    model = STRATEGIES.create(config["strategy"], build_context(config, data, split), **config["strategy_options"])
    model.load_state_dict(torch.load(weights, weights_only=False, map_location="cpu")["model"])
    return KeptModel(model, data, split)


def resolve_device(device: str) -> torch.device:
    """"cpu", "cuda", "cuda:N" or "auto" (cuda when available). The device is not part of the run's
    identity: results must not depend on it beyond floating-point noise."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: no CUDA device is available here")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserInputError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}") from None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("fusionbench")
    except PackageNotFoundError:
        own = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "fusionbench": own,
            "dropout_mask": mask_draw(), "bf16_products": bf16_products(), "causal_pass": causal_pass()}


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_config(config: dict) -> dict:
    """The part of a resolved config that decides the trained weights: the perturbation entry is
    replaced by :func:`~fusionbench.perturb.plan.training_view_of` it, or left out where training sees
    the clean data (a test-only perturbation; p = 0 at catalog level, or at sequence level for strategies
    that train on prefix samples anyway). So a test-only perturbation trains exactly as its clean run, and
    every p = 0 cell of a seed shares one training: the clean run's, or for sequence-level perturbations
    of a causal strategy on the training phase one run on prefix samples
    (``tests/test_stress.py`` checks both bit for bit against training each cell on its own)."""
    spec = config.get("perturbation")
    if spec is None:
        return config
    clean = {key: value for key, value in config.items() if key != "perturbation"}
    training = training_view_of(spec, STRATEGIES.get(config["strategy"]).causal_training)
    return clean if training is None else {**clean, "perturbation": training}


def run_experiment(request: RunRequest, store: Optional[ResultStore] = None, progress: bool = True) -> RunOutcome:
    """Run one configuration (skipped if the store already has it done) and record it."""
    start_run_memory()
    config = resolve(request)
    data = load_data(config, request.data_root)
    checksum = data.checksum()
    config["dataset_checksum"] = checksum
    digest = config_hash(config)
    if store is not None and store.status(digest) == "done":
        run_id = store.run_id(digest)
        return RunOutcome(config, digest, store.metrics(run_id, "test"), store.metrics(run_id, "valid"),
                          skipped=True, run_id=run_id)

    split = make_split(data, config["protocol"])
    ctx = build_context(config, data, split)
    device = resolve_device(request.device)
    make = lambda c: STRATEGIES.create(config["strategy"], c, **config["strategy_options"]).to(device)  # noqa: E731
    if "perturbation" in config:
        model, views = StressPlan.from_config(config, ctx, data.side.modality_names()).build(ctx, make)
    else:
        model, views = make(ctx), DataViews()
    run_id = store.start(config, checksum, versions(), git_revision()) if store is not None else None
    trained_digest = config_hash(training_config(config))
    checkpoint = trained_model = None
    if store is not None:
        checkpoint = store.checkpoint_path(digest)
        trained_model = store.weights_path(trained_digest)
        checkpoint.parent.mkdir(exist_ok=True)
    reuse = trained_model is not None and trained_model.exists()
    started = time.perf_counter()
    label = f"{config['strategy']}/{config['dataset']}/{config['protocol']}/seed{config['seed']}"
    train_options = TrainOptions.build(config["train"])
    try:
        if reuse:
            saved = torch.load(trained_model, weights_only=False, map_location=device)
            model.load_state_dict(saved["model"])
            result = evaluate_trained(model, data, split, train_options, config["max_len"], saved["history"],
                                      saved["best_epoch"], views)
        else:
            result = train(model, data, split, train_options, config["seed"], config["max_len"],
                           checkpoint=checkpoint, progress=progress, label=label, views=views)
    except BaseException as err:
        if store is not None:
            # an interrupt keeps the checkpoint so the same command resumes; an error is recorded
            if not isinstance(err, KeyboardInterrupt):
                store.fail(run_id, "".join(traceback.format_exception_only(type(err), err)).strip())
        raise
    valid = {name: result.history[result.best_epoch - 1]["valid"][name] for name in result.test}
    if store is not None:
        if not reuse:
            trained_model.parent.mkdir(exist_ok=True)
            save_atomically({"model": model.state_dict(), "history": result.history,
                             "best_epoch": result.best_epoch}, trained_model)
        # a resumed run's wall time includes what its earlier processes spent on the epochs it restored
        summary = RunSummary(wall_seconds=time.perf_counter() - started + result.earlier_seconds,
                             peak_memory_mb=peak_memory_mb(), best_epoch=result.best_epoch,
                             epoch_seconds=result.epoch_seconds, eval_seconds=result.eval_seconds,
                             history=result.history, trained_from=trained_digest if reuse else None)
        metrics = {"test": result.test, "valid": valid}
        ranks = {"test": result.test_ranks.numpy(), "valid": result.valid_ranks.numpy()}
        if result.unseen_test_ranks is not None:  # the same model ranked among unseen items only
            metrics[UNSEEN_TEST] = summarize(result.unseen_test_ranks)
            ranks[UNSEEN_TEST] = result.unseen_test_ranks.numpy()
        store.finish(run_id, metrics, ranks, summary)
        if checkpoint.exists():
            os.remove(checkpoint)
    return RunOutcome(config, digest, result.test, valid, result=result, run_id=run_id)
