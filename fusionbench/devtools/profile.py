"""``fusionbench bench profile``: where a strategy's training step spends its CPU time (docs/performance.md).

The profile is taken on a sample of the first training epoch as ``fusionbench run`` would train it
(same configuration, seed, batching and :func:`~fusionbench.train.train_step`): :math:`s` of the epoch's
:math:`n` batches, one in every ``every`` by size (:func:`sample_batches`), assembled before the clock
starts. After one untimed warm-up pass, each of ``repeats`` timed passes measures the process's
CPU time :math:`t` over the sample, and the epoch's training is extrapolated as :math:`t \\cdot n / s`
(batch assembly and validation excluded). One further pass runs under ``torch.profiler`` and gives:

- the labelled parts: ``step.forward``, ``step.backward`` and ``step.optimizer`` (labels inside
  ``train_step``), plus every part named with ``--part`` (a method at a dotted path from the model,
  e.g. ``graph`` or ``layers.0.forward_rows``, or a module's function, e.g. ``aggregators.han:typed_linear``),
  each as CPU milliseconds per step, children included;
- the operators with the most self CPU time (per input shapes with ``--shapes``).

Profiling itself slows the profiled pass, so shares are read from that pass and times from the timed ones.
"""
from __future__ import annotations

import functools
import importlib
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from tabulate import tabulate

from fusionbench.bf16 import bf16_products
from fusionbench.context import SeqBatch
from fusionbench.data.splits import make_split
from fusionbench.dropout import mask_draw
from fusionbench.errors import UserInputError
from fusionbench.registry import STRATEGIES
from fusionbench.runner import RunRequest, build_context, load_data, resolve
from fusionbench.strategy import Strategy
from fusionbench.train import TrainOptions, first_epoch_batches, make_adam, seed_everything, train_step

STEP_PARTS = ("step.forward", "step.backward", "step.optimizer")


@dataclass(frozen=True)
class Part:
    """One labelled part of the profiled pass: ``calls`` calls in all (0: never called), ``ms_per_step``
    CPU ms per sampled step, children included."""

    label: str
    calls: int
    ms_per_step: float


@dataclass(frozen=True)
class Profile:
    """The sample's timed passes (``seconds``, CPU s each) and the profiled pass's parts and operator table."""

    n_batches: int
    n_sampled: int
    seconds: list[float]
    parts: list[Part]
    operators: str
    kernels: str = ""
    """How this process forms what varies by machine: its dropout masks and, under bf16, its products."""

    @property
    def epoch_estimate(self) -> tuple[float, float]:
        """Extrapolated training CPU seconds per epoch, (fastest, median) over the timed passes."""
        scale = self.n_batches / self.n_sampled
        return min(self.seconds) * scale, statistics.median(self.seconds) * scale


def part_target(model: Strategy, path: str):
    """What ``--part path`` labels, as (owner, name, function): a method at a dotted path from ``model``
    (``layers.0.forward_rows``), or a function of a Python module (``aggregators.han:typed_linear``; it is
    labelled where the module's own code calls it by name)."""
    if ":" in path:
        module_name, _, name = path.partition(":")
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            raise UserInputError(f"--part {path!r}: no module {module_name!r}") from None
        function = getattr(owner, name, None)
        if not callable(function) or isinstance(function, type):
            raise UserInputError(f"--part {path!r}: module {module_name} has no function {name!r}")
        return owner, name, function
    *owners, name = path.split(".")
    owner = model
    for step in owners:
        if not hasattr(owner, step):
            raise UserInputError(f"--part {path!r}: {type(owner).__name__} has no attribute {step!r}")
        owner = getattr(owner, step)
    method = getattr(owner, name, None)
    if not callable(method) or isinstance(method, torch.nn.Module):
        raise UserInputError(f"--part {path!r}: {type(owner).__name__}.{name} is not a method (name a method "
                             "of the model or of one of its submodules, or a module's function as module:name)")
    return owner, name, method


@contextmanager
def labelled_parts(model: Strategy, paths: tuple[str, ...]) -> Iterator[None]:
    """Within the block, each part of ``paths`` (:func:`part_target`) runs inside
    ``record_function(path)``: a wrapper set on its instance or module, and the original put back on exit."""
    targets = [part_target(model, path) for path in paths]
    saved = [(owner, name, vars(owner).get(name)) for owner, name, _ in targets]
    for path, (owner, name, function) in zip(paths, targets):
        def labelled(*args, _function=function, _path=path, **kwargs):
            with torch.profiler.record_function(_path):
                return _function(*args, **kwargs)
        object.__setattr__(owner, name, functools.wraps(function)(labelled))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            if original is None:
                object.__delattr__(owner, name)
            else:
                object.__setattr__(owner, name, original)


def sample_batches(model: Strategy, config: dict, data, split, every: int) -> tuple[list[SeqBatch], int]:
    """A systematic sample of the first epoch's batches (seed ``config["seed"]``) by size, and the epoch's
    batch count: the batches ordered by their real (non-padding) items, the middle one of every ``every``
    consecutive ones taken, and those run in the epoch's (shuffled) order, as training meets them. A
    step's cost grows with its batch's items, faster than linearly where ``[targets, n_items]`` scores
    outgrow the caches, and sizes vary widely within an epoch (causal rows of 1 to ``max_len`` items), so
    a sample spread over the sizes extrapolates better than one spread over the shuffled order. It is
    still a sample, and a few large batches can dominate an epoch (MDSRec on Beauty:
    docs/performance.md); ``every=1`` times the whole epoch."""
    batches = first_epoch_batches(model, data, split, config)
    by_size = sorted(range(len(batches)), key=lambda i: int(batches[i].mask.sum()))
    return [batches[i] for i in sorted(by_size[(every - 1) // 2::every])], len(batches)   # in epoch order


def profile_training(request: RunRequest, every: int = 20, repeats: int = 3, parts: tuple[str, ...] = (),
                     top: int = 15, shapes: bool = False) -> Profile:
    """Profile ``request``'s training step on a sample of its first epoch (:func:`sample_batches`, CPU);
    with ``shapes``, the operator table has one row per operator and input shapes."""
    if every < 1:
        raise UserInputError(f"--every must be >= 1, got {every}")
    if repeats < 1:
        raise UserInputError(f"--repeats must be >= 1, got {repeats}")
    config = resolve(request)
    data = load_data(config, request.data_root)
    split = make_split(data, config["protocol"])
    ctx = build_context(config, data, split)
    seed_everything(config["seed"])
    model = STRATEGIES.create(config["strategy"], ctx, **config["strategy_options"])
    for path in parts:       # every --part is checked before the (slow) passes start
        part_target(model, path)
    opts = TrainOptions.build(config["train"])
    optimizer = make_adam(model.parameters(), opts.lr, opts.weight_decay)
    batches, n_batches = sample_batches(model, config, data, split, every)
    bf16 = opts.precision == "bf16"
    model.train()

    def one_pass() -> None:
        for batch in batches:
            train_step(model, optimizer, batch, bf16, opts.grad_clip)

    one_pass()
    seconds = []
    for _ in range(repeats):
        started = time.process_time()
        one_pass()
        seconds.append(time.process_time() - started)
    with labelled_parts(model, parts), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                              record_shapes=shapes) as prof:
        one_pass()
    by_label = {event.key: event for event in prof.key_averages()}
    found = [Part(label, by_label[label].count, by_label[label].cpu_time_total / 1e3 / len(batches))
             if label in by_label else Part(label, 0, 0.0) for label in STEP_PARTS + parts]
    operators = prof.key_averages(group_by_input_shape=shapes).table(
        sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40, max_shapes_column_width=100)
    kernels = f"dropout masks: {mask_draw()}" + (f"; bf16 products: {bf16_products()}" if bf16 else "")
    return Profile(n_batches, len(batches), seconds, found, operators, kernels)


def render(profile: Profile) -> str:
    """The timed passes, the epoch extrapolation and the parts' table (ms per step, % of a step)."""
    fastest, median = profile.epoch_estimate
    step_ms = sum(p.ms_per_step for p in profile.parts if p.label in STEP_PARTS)
    rows = [[p.label, p.calls, f"{p.ms_per_step:.2f}", f"{100 * p.ms_per_step / step_ms:.1f}"]
            for p in profile.parts]
    passes = ", ".join(f"{s:.2f}" for s in profile.seconds)
    return "\n".join([
        f"sampled {profile.n_sampled} of {profile.n_batches} first-epoch batches; CPU seconds per timed pass: "
        f"{passes}",
        f"training CPU time per epoch, extrapolated: {fastest:.1f} s (fastest pass), {median:.1f} s (median)"
        + ("" if profile.n_sampled == profile.n_batches else "; from a sample (--every 1 times the whole epoch)"),
        *([profile.kernels] if profile.kernels else []),
        "",
        "profiled pass (times under the profiler; % of forward + backward + optimizer):",
        tabulate(rows, headers=["part", "calls", "ms/step", "% of step"], tablefmt="github"),
        "",
        profile.operators,
    ])

