"""The Ray Tune side of ``fusionbench tune`` (:mod:`fusionbench.tune`): one ``Tuner`` per part, its
searcher and ASHA scheduler, and :class:`StoreCallback`, which makes every trial a stored run.

The trials run :func:`fusionbench.tune.ray_trial` in Ray workers; everything they send back is in the
results they report once per epoch, so the store is written by the driver only (a cluster's workers need
no access to it). Imported only when trials run: ``ray[tune]`` is the command's dependency
(``pip install 'fusionbench[tune]'``), not the package's.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from tqdm import tqdm

from fusionbench.ray_start import init_ray
from fusionbench.runner import git_revision, resolve, versions
from fusionbench.store import ResultStore, RunSummary, config_hash
from fusionbench.train import epoch_record
from fusionbench.tune import (
    Execution,
    Part,
    Trial,
    TrialSpec,
    TuneCost,
    TuneSettings,
    data_of,
    ray_trial,
    search_points,
)

# Ray Tune's own result files (CSV, JSON, TensorBoard) are not needed: the store is the record
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# the trials keep the driver's working directory (relative data roots and cache paths stay valid)
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Ctrl-C stops the whole command, as it stops a sweep: Ray Tune's own handler would instead end the part's
# fit quietly, and the tune would go on to choose a configuration from the trials finished so far
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def start_ray(execution: Execution, progress: bool) -> float:
    """Start (or join, ``--address``) Ray unless it is running; returns the seconds it took."""
    if ray.is_initialized():
        return 0.0
    started = time.perf_counter()
    init_ray(execution.address, progress, logging_level=logging.WARNING)
    return time.perf_counter() - started


def slots(execution: Execution, trials: int) -> int:
    """How many trials can run at once: the cluster's CPUs (and GPUs) per trial, ``--concurrent``."""
    resources = ray.cluster_resources()
    count = int(resources.get("CPU", 1) // execution.cpus_per_trial)
    if execution.gpus_per_trial > 0:
        count = min(count, int(resources.get("GPU", 0) / execution.gpus_per_trial))
    if execution.concurrent is not None:
        count = min(count, execution.concurrent)
    return max(1, min(count, trials))


def search_seed(seed: int, stored: int) -> int:
    """The seed of a part's search: the tune's ``seed`` for a fresh tune; for a resumed one (``stored``
    trials already made) a seed derived from both, since the tune's own seed would draw again the points
    its first trials were (the searchers sample afresh after the stored points are replayed)."""
    return seed if not stored else int(np.random.SeedSequence([seed, stored]).generate_state(1)[0])


def searcher(settings: TuneSettings, part: Part, points: list[dict], stored: int) -> Any:
    """Optuna's TPE for ``tpe``, Ray's random sampling for ``random`` or an empty space, seeded by
    :func:`search_seed` (``stored``: the part's trials already in the store); ``points``
    (:func:`fusionbench.tune.search_points`: the stored trials' points, then the default point) are
    evaluated first, in that order, and count in the budget."""
    seed = search_seed(settings.seed, stored)
    if part.space and settings.search == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(metric=f"valid/{settings.metric}", mode="max",
                            sampler=optuna.samplers.TPESampler(seed=seed), points_to_evaluate=points or None)
    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=seed)


@dataclass
class _Record:
    """The driver's view of one Ray trial."""

    digest: str
    config: dict
    ignored: bool                  # replayed, or a duplicate of a trial already stored
    run_id: Optional[int] = None
    history: list[dict] = field(default_factory=list)
    last: bool = False
    error: Optional[str] = None
    wall: Optional[float] = None
    peak: Optional[float] = None
    trained: bool = False


class StoreCallback(Callback):
    """Stores every trial of a part as a run, epoch by epoch, and finishes it when Tune ends it.

    The first result of a trial registers its run (``ResultStore.start``; the worker's run hash must be
    the driver's), every result adds its epoch to the run's history (``ResultStore.progress``), and when
    the trial ends the run is finished with the validation metrics of its best epoch and
    ``asha_stopped`` = whether the scheduler ended it before its last epoch (the last result reported
    ``last``: max epochs or early stopping). A trial that reported a failure (:func:`failure_result`) or
    raised is recorded as failed. Replayed trials (finished before) and duplicates of a stored run are
    not written again."""

    def __init__(self, part: Part, store: ResultStore, checksum: str, checkpoints: Path, cost: TuneCost,
                 bar: tqdm, on_stored: Callable[[], None] = lambda: None):
        self.part, self.store, self.checksum, self.checkpoints = part, store, checksum, checkpoints
        self.cost, self.bar, self.on_stored = cost, bar, on_stored
        self.versions, self.git = versions(), git_revision()
        self.records: dict[str, _Record] = {}
        self.owners: dict[str, str] = {}       # run hash -> the trial storing it
        self.errors: list[str] = []
        self.first_start: Optional[float] = None   # wall-clock start of the first trial that trained

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment's state (for its own restore, which fusionbench
        does not use: the store is the record); the store connection, progress bar and ``on_stored`` hook
        stay behind."""
        return {key: value for key, value in self.__dict__.items() if key not in ("store", "bar", "on_stored")}

    def _record(self, trial: Any, result: Optional[dict] = None) -> _Record:
        record = self.records.get(trial.trial_id)
        if record is not None:
            return record
        config = resolve(self.part.request(dict(trial.config)))
        config["dataset_checksum"] = self.checksum
        digest = config_hash(config)
        reported = (result or {}).get("run_hash")
        if reported is not None and reported != digest:
            raise RuntimeError(f"trial {trial.trial_id} ran run {reported} where this driver expects {digest}: does "
                               "every Ray node run the same fusionbench and data?")
        ignored = (bool((result or {}).get("replayed")) or digest in self.owners
                   or self.store.status(digest) in ("done", "failed"))
        record = _Record(digest, config, ignored)
        if not ignored:
            self.owners[digest] = trial.trial_id
            record.run_id = self.store.start(config, self.checksum, self.versions, self.git)
        self.records[trial.trial_id] = record
        return record

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        started = time.perf_counter()
        record = self._record(trial, result)
        if "started_at" in result:
            self.first_start = min(self.first_start or result["started_at"], result["started_at"])
        if not result.get("replayed"):
            record.trained = True
            self.cost.training_seconds += result.get("train_seconds", 0.0)
            self.cost.setup_seconds += result.get("setup_seconds", 0.0)
            self.cost.epochs += "error" not in result
        if not record.ignored:
            if "error" in result:
                record.error = result["error"]
            else:
                del record.history[result["epoch"] - 1:]      # a resumed trial reports its restored epochs again
                record.history.append(epoch_record(result))
                self.store.progress(record.run_id, record.history)
            record.last = bool(result["last"])
            record.wall, record.peak = result.get("elapsed", record.wall), result.get("peak_memory_mb", record.peak)
        self.cost.storing_seconds += time.perf_counter() - started

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        started = time.perf_counter()
        record = self.records.get(trial.trial_id)
        if record is not None and not record.ignored:
            self._finish(record)
        self.bar.update(1)
        self.cost.storing_seconds += time.perf_counter() - started

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        message = _error_text(trial)
        self.errors.append(f"{self.part.label} trial {record.digest}: {message}")
        if not record.ignored:
            record.error = f"Ray trial failed: {message}"
            self._finish(record)
        self.bar.update(1)

    def _finish(self, record: _Record) -> None:
        self.owners.pop(record.digest, None)
        if record.error is None and not record.history:
            record.error = "the trial ended without reporting an epoch"
        if record.error is not None:
            self.store.fail(record.run_id, record.error)
        else:
            metric = self.part.base.train_options["select"]
            values = [entry["valid"][metric] for entry in record.history]
            best = values.index(max(values)) + 1
            seconds = [entry["seconds"] for entry in record.history]
            self.store.finish(record.run_id, {"valid": record.history[best - 1]["valid"]}, {},
                              RunSummary(wall_seconds=record.wall, peak_memory_mb=record.peak, best_epoch=best,
                                         epoch_seconds=sum(seconds) / len(seconds), history=record.history,
                                         asha_stopped=not record.last))
        (self.checkpoints / f"{record.digest}.pt").unlink(missing_ok=True)
        self.on_stored()


def _error_text(trial: Any) -> str:
    """The last line of a trial's error (its exception), as Ray recorded it."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


@contextlib.contextmanager
def quiet_ray_logs() -> Iterator[None]:
    """Ray Tune's INFO lines and its warning that it found no result files (Tune's file loggers are off:
    the store keeps the results) are not shown."""
    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def tune_part(part: Part, settings: TuneSettings, trials: Sequence[Trial], store: ResultStore,
              execution: Execution, cost: TuneCost, progress: bool,
              on_stored: Callable[[], None] = lambda: None) -> tuple[int, int, list[str]]:
    """Run the trials of ``part`` that are not finished in ``store`` (``trials``: its stored ones) on Ray
    Tune, finished ones replayed first, interrupted ones resumed from their checkpoints, then the default
    point unless a stored trial made it (:func:`fusionbench.tune.search_points`); returns
    (trials trained by this call, trials replayed, the errors of trials that raised). Adds to ``cost``;
    ``on_stored()`` is called after each trial this call stores (``tune --archive``)."""
    start = start_ray(execution, progress)
    cost.ray_start_seconds += start
    finished = [t for t in trials if t.status in ("done", "failed")]
    points = search_points(part, trials)
    replays = {t.config_hash: {"history": t.history, "last": not t.asha_stopped, "error": t.error} for t in finished}
    base = Path(execution.scratch) if execution.scratch else store.path.parent
    checkpoints = (base / "checkpoints").resolve()
    spec = TrialSpec(part, str(checkpoints), replays, execution.cpus_per_trial)
    config = resolve(part.base)
    checksum = data_of(config, part.base.data_root)[1]
    epochs = config["train"]["epochs"]
    resources = {"cpu": execution.cpus_per_trial}
    if execution.gpus_per_trial:
        resources["gpu"] = execution.gpus_per_trial
    bar = tqdm(total=part.n_trials, initial=0, desc=f"tune {part.label}", unit="trial",
               disable=None if progress else True)
    callback = StoreCallback(part, store, checksum, checkpoints, cost, bar, on_stored)
    scheduler = ASHAScheduler(time_attr="epoch", metric=f"valid/{settings.metric}", mode="max", max_t=epochs,
                              grace_period=min(settings.grace_epochs, epochs),
                              reduction_factor=settings.reduction_factor)
    if execution.scratch:
        Path(execution.scratch).mkdir(parents=True, exist_ok=True)
    storage = tempfile.mkdtemp(prefix="fusionbench-tune-", dir=execution.scratch)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(ray_trial, spec=spec), resources),
        param_space={key: dim.to_ray() for key, dim in part.space.items()},
        tune_config=tune.TuneConfig(num_samples=part.n_trials, search_alg=searcher(settings, part, points, len(trials)),
                                    scheduler=scheduler, reuse_actors=True,
                                    max_concurrent_trials=execution.concurrent),
        run_config=tune.RunConfig(name=f"{settings.name}-{part.base.strategy}", storage_path=storage,
                                  callbacks=[callback], verbose=0))
    started, started_at = time.perf_counter(), time.time()
    try:
        with quiet_ray_logs():
            tuner.fit()
    finally:
        bar.close()
        shutil.rmtree(storage, ignore_errors=True)
    wall = time.perf_counter() - started
    trained = sum(r.trained for r in callback.records.values())
    width = slots(execution, max(1, part.n_trials - len(finished)))
    first = max(0.0, callback.first_start - started_at) if callback.first_start is not None else 0.0
    cost.fit_seconds += wall
    cost.first_trial_seconds += first
    cost.slot_seconds += (start + wall) * width
    cost.startup_slot_seconds += (start + first) * width
    cost.trials += trained
    return trained, len(finished), callback.errors
