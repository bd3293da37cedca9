"""Seeded, deterministic training with model selection on the validation split only.

Adam; one evaluation of the validation samples per epoch; early stopping on ``select`` (default
NDCG@20) with ``patience``; the best state is restored and the test samples are ranked once. Under
the leaky ``ratio-paper`` protocol the "validation" samples are the test samples, early stopping
follows the MMSR reference code (any of HR/MRR/NDCG @5/@20 improving resets the patience, with the
reference's one-epoch lag: :func:`stale_epochs`) and the reported test metrics are per-metric maxima
over the epochs run, as the reference reports them (labelled leaky).

With ``record_test`` (``train.record_test=true``, ``loo`` and ``ratio``), the test samples are also
ranked after every epoch and their metrics kept in the epoch's history entry under ``"test"``, apart
from ``"valid"``: selection and early stopping read ``"valid"`` only (:func:`improvements`), and the
ranking runs with the random number generators saved and restored (:func:`rng_preserved`), so the
trajectory (losses, validation metrics, restored state) is the one the run has without the option. One
run then gives both the validation-selected test metrics and the reference's test-selected ones (each
metric's maximum over the epochs' test scores; :mod:`fusionbench.report.trajectory`).

With ``checkpoint`` set, the full training state is written atomically after every epoch, and a
run started again with the same checkpoint path resumes after the last finished epoch.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import pickle
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Callable, Iterable, Optional

import numpy as np
import torch
from tqdm import tqdm

from fusionbench.atomic import atomic_write
from fusionbench.bf16 import products as bf16_context
from fusionbench.context import SeqBatch
from fusionbench.cpu_share import queue_wait
from fusionbench.data.core import SequenceData
from fusionbench.data.splits import Split, causal_batch, causal_rows, sample_batch
from fusionbench.errors import TrainingError
from fusionbench.evaluate import BatchView, rank_samples
from fusionbench.metrics import DEFAULT_KS, METRICS, summarize
from fusionbench.options import Ge, Gt, Le, PluginOptions, require
from fusionbench.strategy import Strategy

SELECTABLE = tuple(f"{m}@{k}" for m in METRICS for k in DEFAULT_KS)
# "bf16": training forward passes run under bfloat16 autocast (matmuls in bf16, reductions and the
# softmax loss in fp32). Parameters, optimizer state and every evaluation stay fp32.
PRECISIONS = ("fp32", "bf16")
# How causal rows (one per sequence, a loss at every position) are cut into batches: "uniform" draws every
# batch at random; "length" groups rows of similar length (less padding work, but a batch's mean loss then
# gives each user's targets together about the same weight whatever their number, i.e. short histories'
# targets many times the weight of long ones'; on beauty SASRec that cost about a fifth of validation
# NDCG@20: docs/departures.md).
BATCHINGS = ("uniform", "length")
# What the MMSR reference's early stopping watches (its main.py: HR, MRR and NDCG at topk = [5, 20]).
REFERENCE_WATCHED = tuple(f"{m}@{k}" for m in METRICS for k in (5, 20))


@dataclass(frozen=True)
class TrainOptions(PluginOptions):
    """Training options (``--set train.<name>=value`` on the command line)."""

    HELP = {
        "lr": "Adam's learning rate",
        "weight_decay": "Adam's L2 weight decay",
        "batch_size": "training rows per batch",
        "epochs": "most epochs (--epochs); training stops earlier on validation",
        "patience": "epochs without a better validation `select` before stopping",
        "select": "the validation metric that picks the kept epoch and drives early stopping",
        "eval_batch_size": "samples per batch of validation and test ranking",
        "lr_step": "multiply the lr by lr_gamma every lr_step epochs (0 = constant lr)",
        "lr_gamma": "the lr decay factor of lr_step",
        "grad_clip": "clip the gradient norm at this value (0 = off)",
        "precision": "fp32, or bf16 autocast of training forward passes (evaluation stays fp32)",
        "batching": "causal rows per batch: uniform (drawn at random) or length (grouped by length)",
        "exclude_history": "rank only items outside each sample's history (validation and test; off: the paper's "
                           "protocol, a repeat can be recommended)",
        "record_test": "also rank the test split after every epoch, kept apart in the history (never read by "
                       "selection or early stopping); loo and ratio, clean runs",
        "diverge_factor": "stop when an epoch's mean training loss exceeds this many times the lowest earlier "
                          "epoch mean (a run whose loss ran away; 0 = never)",
    }

    lr: Annotated[float, Gt(0)] = 1e-3
    weight_decay: Annotated[float, Ge(0)] = 0.0
    batch_size: Annotated[int, Ge(1)] = 128
    epochs: Annotated[int, Ge(1)] = 200
    patience: Annotated[int, Ge(1)] = 10
    select: str = "NDCG@20"
    eval_batch_size: Annotated[int, Ge(1)] = 1024
    lr_step: Annotated[int, Ge(0)] = 0
    lr_gamma: Annotated[float, Gt(0), Le(1)] = 0.1
    grad_clip: Annotated[float, Ge(0)] = 0.0
    precision: str = "fp32"
    batching: str = "uniform"
    exclude_history: bool = False
    record_test: bool = False
    diverge_factor: Annotated[float, Ge(0)] = 10.0

    ONLY_WHEN_SET = frozenset({"exclude_history", "record_test", "diverge_factor"})  # added after runs were stored

    def check(self) -> None:
        require(self.select in SELECTABLE,
                f"option 'select' must be one of {', '.join(SELECTABLE)}, got {self.select!r}")
        require(self.precision in PRECISIONS, f"option 'precision' must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}")
        require(self.batching in BATCHINGS, f"option 'batching' must be one of {', '.join(BATCHINGS)}, "
                f"got {self.batching!r}")


# The keys of a history entry that describe the epoch's training and validation, and so what a tune
# trial reports and stores of it ("test" and "test_seconds", under record_test, are never among them)
EPOCH_KEYS = ("epoch", "loss", "seconds", "wait_seconds", "valid")


def epoch_record(entry: dict) -> dict:
    """The :data:`EPOCH_KEYS` of a history entry that it has (``wait_seconds`` is measured on Linux only)."""
    return {key: entry[key] for key in EPOCH_KEYS if key in entry}


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes:
        best_epoch: 1-based epoch whose state was restored.
        history: per epoch ``{"epoch", "loss", "seconds", "valid": {metric: value}}`` (``seconds``: wall time
            of the epoch's training), on Linux also ``"wait_seconds"`` (the part of ``seconds`` the
            training thread waited for a core, :mod:`fusionbench.cpu_share`), with ``record_test`` also
            ``"test": {metric: value}`` and ``"test_seconds"`` (never read by selection or stopping).
        valid_ranks, test_ranks: per-sample 0-based ranks of the restored state ``[S]``.
        unseen_test_ranks: the same model's test ranks among the items outside each sample's history
            (``evaluate.exclude_seen``), when the run ranked every item (``exclude_history`` off; else None:
            its ``test_ranks`` are those).
        test: test metrics reported (per-metric maxima over epochs under ``ratio-paper``).
        eval_seconds: wall time of the final test evaluation.
        earlier_seconds: wall time that earlier processes of a resumed run spent on the epochs it
            restored (training and validation, up to their last checkpoint); 0 for a fresh run.
    """

    best_epoch: int
    history: list[dict] = field(default_factory=list)
    valid_ranks: Optional[torch.Tensor] = None
    test_ranks: Optional[torch.Tensor] = None
    test: dict[str, float] = field(default_factory=dict)
    eval_seconds: float = 0.0
    unseen_test_ranks: Optional[torch.Tensor] = None
    earlier_seconds: float = 0.0

    @property
    def epoch_seconds(self) -> float:
        times = [h["seconds"] for h in self.history]
        return float(np.mean(times)) if times else 0.0


@dataclass(frozen=True)
class DataViews:
    """What training and test see when it is not the plain data (stress tests, :mod:`fusionbench.perturb`).

    Attributes:
        train: maps every training and validation batch (``view(batch, samples)``). With it, causal
            strategies train on prefix samples (one target per row) instead of causal rows: a perturbed
            prefix belongs to its one target, which one causal pass over a sequence cannot express.
        test: maps every test batch.
        test_model: turns the restored best model into the model that ranks the test samples (the same
            weights on other modality tables).
    """

    train: Optional[BatchView] = None
    test: Optional[BatchView] = None
    test_model: Optional[Callable[[Strategy], Strategy]] = None


def seed_everything(seed: int) -> None:
    """Fix Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def rng_preserved(device: torch.device):
    """Run the block with Python's, NumPy's and torch's random states (the CPU generator and, on a CUDA
    device, that device's) saved on entry and restored on exit: whatever the block draws, the code after
    it draws what it would have drawn without the block."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def rank_test(model: Strategy, data: SequenceData, split: Split, max_len: int, batch_size: int,
              views: DataViews = DataViews(), exclude_history: bool = False) -> torch.Tensor:
    """0-based ranks ``[S]`` of the test samples by ``model`` as it is: through ``views.test_model`` and
    ``views.test`` when given, and the model's ``for_test()`` view (graph-CF strategies: the test-time
    graph); ``exclude_history``: among the items outside each sample's history. The one way the final test
    rankings and the per-epoch ``record_test`` ranking are made."""
    test_model = (model if views.test_model is None else views.test_model(model)).for_test()
    return rank_samples(test_model, data, split.test, max_len, batch_size, views.test, exclude_history)


def epoch_test_metrics(model: Strategy, data: SequenceData, split: Split, max_len: int, batch_size: int,
                       views: DataViews = DataViews(), exclude_history: bool = False) -> dict[str, float]:
    """``record_test``: the test metrics of ``model`` after an epoch (:func:`rank_test`), computed with
    every random state preserved (:func:`rng_preserved`), so recording them leaves training unchanged."""
    with rng_preserved(next(model.parameters()).device):
        return summarize(rank_test(model, data, split, max_len, batch_size, views, exclude_history))


def save_atomically(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file: a reader never sees half a file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: Path) -> Optional[dict]:
    """The resume state :func:`train` writes after every epoch (``history``, ``best_epoch``, ``elapsed``
    seconds, the model's, optimiser's and generators' states, memory-mapped: a reader of the history reads
    none of the tensors): ``None`` if there is no file, ``{}`` if it cannot be read as one (a reader that only
    reports progress then shows none)."""
    if not path.exists():
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)  # torch 2.2: str only
    except (RuntimeError, EOFError, pickle.UnpicklingError):
        return {}
    return state if isinstance(state, dict) else {}


def improvements(history: list[dict], select: str, leaky: bool) -> list[bool]:
    """Per epoch of ``history`` (``train``'s, each with a ``"valid"`` dict), whether it improved on every
    epoch before it.

    Default (``loo``, ``ratio``): ``valid[select]`` is above its best so far (the first epoch always is).
    ``leaky`` (``ratio-paper``), the MMSR reference's rule: any metric of :data:`REFERENCE_WATCHED` is
    above its own best so far, each best starting at 0 as in the reference (an all-zero epoch improves
    nothing). Comparisons are strict, so a tie is no improvement."""
    watched = REFERENCE_WATCHED if leaky else (select,)
    best = dict.fromkeys(watched, 0.0 if leaky else -1.0)
    flags = []
    for entry in history:
        better = [name for name in watched if entry["valid"][name] > best[name]]
        best.update((name, entry["valid"][name]) for name in better)
        flags.append(bool(better))
    return flags


def stale_epochs(history: list[dict], select: str, leaky: bool) -> int:
    """The early-stopping count after the epochs of ``history``; ``train`` stops once it reaches ``patience``.

    Default: the number of epochs since the last improving one (:func:`improvements`), so a run stops
    ``patience`` epochs after its best ``select``. ``leaky``: the MMSR reference's counter, read from its
    ``main.py`` (HoldenHu/MMSR; specs/protocol.md says only that its early stopping watches test metrics):
    ``bad_counter = bad_counter + 1 if (last_flag == 0 and current_flag == 0) else 0``. The count grows
    only on a non-improving epoch whose previous epoch did not improve either (the epoch before the first
    counts as not improving) and is 0 otherwise: an improving epoch also resets the count at the epoch
    after it (the one-epoch lag), so after an improvement the run stops at the ``patience + 1``-th
    non-improving epoch in a row. Pure: everything it needs is in ``history``, which checkpoints keep."""
    count, last = 0, False
    for now in improvements(history, select, leaky):
        count = 0 if now or (leaky and last) else count + 1
        last = now
    return count


@functools.lru_cache(maxsize=None)
def fused_adam_supported(device: torch.device) -> bool:
    """Whether the installed torch has a fused Adam kernel for float32 parameters on ``device``: one step
    of a fused Adam on a one-element parameter is tried (torch 2.2 refuses ``fused=True`` on the CPU at
    construction; later versions have a CPU kernel). The answer is cached per device; no RNG is used."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        optimizer = torch.optim.Adam([probe], fused=True)
        probe.grad = torch.ones_like(probe)
        optimizer.step()
    except RuntimeError:
        return False
    return True


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over ``params``, fused (one kernel per step over all parameters: a large full-softmax item
    table makes the multi-kernel update a visible share of a CPU step) where the installed torch supports
    it for them (:func:`fused_adam_supported`: floating point, one device), else torch's default
    implementation. The one way ``train``, ``bench profile`` and the benchmarks build their optimizer."""
    params = list(params)
    devices = {p.device for p in params}
    fused = (len(devices) == 1 and all(p.is_floating_point() for p in params)
             and fused_adam_supported(devices.pop()))
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def bucketed_order(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                   pool: int = 50) -> list[torch.Tensor]:
    """Shuffled batches of row indices with similar lengths.

    Rows are shuffled, cut into pools of ``pool`` batches, sorted by length inside each pool and
    batched; the batch order is shuffled again. Batches are then trimmed to their longest row
    (see ``splits.histories``), which removes most padding work on short-sequence data."""
    order = torch.randperm(lengths.numel(), generator=generator)
    batches = []
    span = batch_size * pool
    for start in range(0, order.numel(), span):
        chunk = order[start:start + span]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def uniform_order(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Batches of ``batch_size`` row indices drawn uniformly at random (a shuffled ``0..n-1``, cut)."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def epoch_batches(model: Strategy, data: SequenceData, split: Split, max_len: int, batch_size: int,
                  generator: torch.Generator, view: Optional[BatchView] = None, keys: Optional[torch.Tensor] = None,
                  batching: str = "uniform"):
    """Shuffled training batches of ``batch_size`` rows: causal rows (one per sequence, several
    targets each) for causal strategies without a ``view``, cut as ``batching`` says
    (:data:`BATCHINGS`), or prefix samples (one target each) otherwise, each mapped by ``view`` and
    grouped by ``keys`` (``model.bucket_key`` of ``split.train``, computed once per run; every batch
    then holds ``batch_size`` targets, so grouping leaves each target's weight the same)."""
    if model.causal_training and view is None:
        rows = causal_rows(split.train, max_len)
        order = (uniform_order(len(rows), batch_size, generator) if batching == "uniform"
                 else bucketed_order(rows.end, batch_size, generator))
        for index in order:
            yield causal_batch(data, rows.take(index), max_len)
    else:
        for index in bucketed_order(keys, batch_size, generator):
            samples = split.train.take(index)
            batch = sample_batch(data, samples, max_len)
            yield batch if view is None else view(batch, samples)


def first_epoch_batches(model: Strategy, data: SequenceData, split: Split, config: dict) -> list[SeqBatch]:
    """The first epoch's training batches exactly as :func:`train` draws them for the resolved ``config``
    (its seed, batch size and ``max_len``; no data view)."""
    keys = None if model.causal_training else model.bucket_key(data, split.train)
    generator = torch.Generator().manual_seed(config["seed"])
    return list(epoch_batches(model, data, split, config["max_len"], config["train"]["batch_size"], generator,
                              None, keys, config["train"]["batching"]))


def train_step(model: Strategy, optimizer: torch.optim.Optimizer, batch: SeqBatch, bf16: bool,
               grad_clip: float = 0.0) -> float:
    """One optimisation step on ``batch``: the loss (under bfloat16 autocast when ``bf16``, its products
    formed as :mod:`fusionbench.bf16` decides for this machine), its gradients (norm-clipped to
    ``grad_clip`` when > 0) and the optimizer's update. Returns the loss; a non-finite loss is returned
    without any update. The three phases carry profiler labels
    (``step.forward``, ``step.backward``, ``step.optimizer``; ``fusionbench bench profile``)."""
    with bf16_context(bf16, batch.items.device):
        with torch.profiler.record_function("step.forward"), \
                torch.autocast(batch.items.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        if not torch.isfinite(loss):
            return loss.item()
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function("step.backward"):
            loss.backward()
    with torch.profiler.record_function("step.optimizer"):
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return loss.item()


def diverged(history: list[dict], factor: float) -> bool:
    r"""Whether the training loss ran away in the last epoch of ``history``: its mean loss
    :math:`\bar\ell_T > c \cdot \min_{t < T} \bar\ell_t` for ``factor`` :math:`c > 0`, the lowest earlier
    epoch mean being positive (losses that can reach 0 or below are never judged). A healthy run's epoch
    mean never climbs an order of magnitude above its best; a run whose attention scores or embeddings
    blow up climbs far more within an epoch or two, and its validation metric then drifts at noise level,
    which can reset the patience for many epochs."""
    if factor <= 0 or len(history) < 2:
        return False
    floor = min(entry["loss"] for entry in history[:-1])
    return floor > 0 and history[-1]["loss"] > factor * floor


def divergence_epoch(history: list[dict], factor: float = TrainOptions.diverge_factor) -> Optional[int]:
    """The first epoch of ``history`` at which :func:`diverged` holds for the epochs up to it, else None:
    where a run's loss ran away, whether or not its trainer stopped there (reports flag such runs)."""
    return next((entry["epoch"] for n, entry in enumerate(history, 1) if diverged(history[:n], factor)), None)


def finished(history: list[dict], opts: TrainOptions, leaky: bool) -> bool:
    """Whether training stops after the epochs of ``history``: ``opts.epochs`` ran, early stopping's count
    (:func:`stale_epochs`) reached ``opts.patience``, or the loss diverged (:func:`diverged`, with
    ``opts.diverge_factor``). Either way the epoch with the best validation ``select`` is kept."""
    return (len(history) >= opts.epochs or stale_epochs(history, opts.select, leaky) >= opts.patience
            or diverged(history, opts.diverge_factor))


EpochCallback = Callable[[dict, bool], None]
"""``on_epoch(entry, last)`` of :func:`train`: one epoch's history entry, and whether it is the last."""


def train(model: Strategy, data: SequenceData, split: Split, opts: TrainOptions, seed: int, max_len: int,
          checkpoint: Optional[Path] = None, progress: bool = True, label: str = "",
          views: DataViews = DataViews(), on_epoch: Optional[EpochCallback] = None,
          final_ranking: bool = True) -> TrainResult:
    """Train ``model`` on ``split.train``, select on ``split.valid``, rank ``split.test`` once
    (``views``: what training/validation and test see, when not the plain data).

    Batches are assembled on the CPU and moved to the device the model's parameters live on.

    ``on_epoch(entry, last)`` is called with every epoch's history entry once it is checkpointed (a
    resumed run's restored epochs first, in order), ``last`` telling whether training stops after it
    (:func:`finished`); ``fusionbench tune`` reports each epoch to its scheduler from here. With
    ``final_ranking=False`` (a tune's trials) the run ends with the best state restored and nothing ranked:
    the result has the history and best epoch only, and the test samples are never scored."""
    seed_everything(seed)
    model.reset_parameters()
    device = next(model.parameters()).device
    optimizer = make_adam(model.parameters(), opts.lr, opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, opts.lr_step, opts.lr_gamma) if opts.lr_step else None
    generator = torch.Generator().manual_seed(seed)
    bf16 = opts.precision == "bf16"
    prefix_keys = None if model.causal_training and views.train is None else model.bucket_key(data, split.train)
    history: list[dict] = []
    best_value, best_epoch, best_state = -1.0, 0, None
    first_epoch, earlier_seconds, run_started = 1, 0.0, time.perf_counter()
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"].cpu())
        history, best_value, best_epoch = state["history"], state["best_value"], state["best_epoch"]
        best_state = state["best_state"]   # the stopping count is recomputed from the history
        first_epoch = len(history) + 1
        # checkpoints written before "elapsed" was kept: their epochs' training time, a lower bound
        earlier_seconds = state.get("elapsed", sum(h["seconds"] for h in history))
    for number, entry in enumerate(history if on_epoch is not None else []):
        on_epoch(entry, number == len(history) - 1 and finished(history, opts, split.leaky))

    for epoch in range(first_epoch, opts.epochs + 1):
        if finished(history, opts, split.leaky):
            break
        model.train()
        started, waited, total, count = time.perf_counter(), queue_wait(), 0.0, 0
        batches = epoch_batches(model, data, split, max_len, opts.batch_size, generator, views.train, prefix_keys,
                                opts.batching)
        for number, batch in enumerate(tqdm(batches, desc=f"{label} epoch {epoch}", leave=False,
                                             disable=None if progress else True, mininterval=1.0)):
            loss = train_step(model, optimizer, batch.to(device), bf16, opts.grad_clip)
            if not math.isfinite(loss):
                raise TrainingError(f"{label}: non-finite loss {loss} at epoch {epoch}, batch {number}; "
                                    "try a lower lr (--set train.lr=...)")
            total, count = total + loss, count + 1
        if scheduler is not None:
            scheduler.step()
        seconds = time.perf_counter() - started
        wait = None if waited is None else queue_wait() - waited   # read with `seconds`: training only
        try:
            valid = summarize(rank_samples(model, data, split.valid, max_len, opts.eval_batch_size, views.train,
                                               opts.exclude_history))
        except TrainingError as err:
            raise TrainingError(f"{label}: epoch {epoch}, validation: {err}") from None
        entry = {"epoch": epoch, "loss": total / max(count, 1), "seconds": seconds, "valid": valid}
        if wait is not None:   # of those seconds, the time spent runnable without a core (cpu_share)
            entry["wait_seconds"] = wait
        if opts.record_test:   # kept apart: selection and stopping below read "valid" only
            tested = time.perf_counter()
            try:
                entry["test"] = epoch_test_metrics(model, data, split, max_len, opts.eval_batch_size, views,
                                                   opts.exclude_history)
            except TrainingError as err:
                raise TrainingError(f"{label}: epoch {epoch}, test (record_test): {err}") from None
            entry["test_seconds"] = time.perf_counter() - tested
        history.append(entry)
        if valid[opts.select] > best_value:   # the restored state: best ``select``, under every protocol
            best_value, best_epoch = valid[opts.select], epoch
            best_state = copy.deepcopy(model.state_dict())
        if progress:
            tqdm.write(f"{label} epoch {epoch}: loss {history[-1]['loss']:.4f}  valid {opts.select} "
                       f"{valid[opts.select]:.4f}  ({seconds:.1f}s)")
            if diverged(history, opts.diverge_factor):
                tqdm.write(f"{label}: the training loss diverged (above {opts.diverge_factor:g} times its lowest "
                           f"epoch mean); stopping, the best validation epoch ({best_epoch}) is kept. A lower "
                           "train.lr or train.grad_clip may keep it stable")
        if checkpoint is not None:
            save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler else None,
                          "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                          "history": history, "best_value": best_value, "best_epoch": best_epoch,
                          "best_state": best_state,
                          # not read back (recomputed from the history); kept in the checkpoint's layout
                          "bad_epochs": stale_epochs(history, opts.select, split.leaky),
                          "elapsed": earlier_seconds + time.perf_counter() - run_started}, checkpoint)
        if on_epoch is not None:
            on_epoch(history[-1], finished(history, opts, split.leaky))

    model.load_state_dict(best_state)
    if not final_ranking:
        return TrainResult(best_epoch, history, earlier_seconds=earlier_seconds)
    result = evaluate_trained(model, data, split, opts, max_len, history, best_epoch, views)
    return replace(result, earlier_seconds=earlier_seconds)


def evaluate_trained(model: Strategy, data: SequenceData, split: Split, opts: TrainOptions, max_len: int,
                     history: list[dict], best_epoch: int, views: DataViews = DataViews()) -> TrainResult:
    """The end of a run: rank the test samples (through ``views.test`` / ``views.test_model``) and the
    validation samples with ``model``, which already holds the selected state. ``train`` ends here, and
    so does a run that reuses weights trained earlier (``runner``: a test-only perturbation trains
    exactly as its clean run, so its trained model is evaluated instead of trained again)."""
    started = time.perf_counter()
    test_ranks = rank_test(model, data, split, max_len, opts.eval_batch_size, views, opts.exclude_history)
    eval_seconds = time.perf_counter() - started
    valid_ranks = rank_samples(model, data, split.valid, max_len, opts.eval_batch_size, views.train,
                               opts.exclude_history)
    unseen = None
    if not opts.exclude_history and not split.leaky:  # the other ranking of the same model, for the record
        unseen = rank_test(model, data, split, max_len, opts.eval_batch_size, views, exclude_history=True)
    test = summarize(test_ranks)
    if split.leaky:  # reference behaviour: every metric is its own maximum of test scores over epochs
        test = {name: max(h["valid"][name] for h in history) for name in test}
    return TrainResult(best_epoch, history, valid_ranks, test_ranks, test, eval_seconds, unseen_test_ranks=unseen)
