"""``fusionbench tune``: every strategy tuned on validation with the same budget, on Ray Tune.

A tune has a name and settings (:class:`TuneSettings`: trials per strategy, maximum epochs, ASHA's grace
period and reduction factor, the validation metric, the search and its seed, the seeds of the final runs)
and one *part* per strategy configuration (:class:`Part`: a strategy, its aggregator, the data, the
options the user fixed, and the space searched, :mod:`fusionbench.space`). It comes from the flags
(``--strategy a,b --dataset D --budget N``) or from a tune file, of the sweep files' family::

    [tune]                          # optional; every key has a default (docs/tuning.md)
    budget = 16
    max_epochs = 50
    seeds = [0, 1, 2]

    [defaults]                      # optional: any run key (a run's own value wins)
    dataset = "beauty"

    [[run]]
    strategy = ["sasrec", "gru4rec"]

    [[run]]
    strategy = "difsr"
    set = { "train.precision" = "bf16" }                 # fixed: left out of the space
    space = { aap_weight = { choice = [0.0, 10.0] } }    # replaces (or adds) a searched key

Run keys: ``strategy`` (a name or a list), ``aggregator``, ``dataset``, ``protocol``, ``max_len``, ``set``,
``space`` (``key = {log_uniform|uniform|int|choice = [...]}``, or ``"default"`` to leave a key out).

**Trials are runs.** Each trial is a stored run (:mod:`fusionbench.store`) whose config is the resolved
config of its options plus ``"tune"`` (the tune's name and settings, with the part's space), so it never
shares an identity with an ordinary run; the store's ``tune`` column names its tune and ``asha_stopped``
says whether the scheduler stopped it. A trial trains with ``train.epochs`` = the tune's maximum (or the
strategy's own default where that is lower) and ``train.select`` = the tune's metric, reports every
epoch's validation metrics to ASHA (:func:`train_trial`), and ranks no test sample: its stored metrics
are the validation metrics of its best epoch, and the configuration chosen for a strategy is the trial
with the best validation metric at any of its epochs (:func:`choose`). Only then does the chosen
configuration run on the tune's seeds, as ordinary runs (``leaderboard --tuned NAME`` shows them), each
strategy's right after its trials.

**The default configuration is a trial.** A part's first trial is its default point (:attr:`Part.default`:
every searched key at the value it has when nobody tunes), counted in the budget and stored like any
trial, so the choice can keep the defaults; a default outside the space is not evaluated, and the plan
says so (:func:`search_points`, :func:`default_notes`).

**Resuming.** Run the same command again: finished trials are not trained again (they are replayed
to the search and the scheduler from their stored histories, :func:`train_trial`), interrupted ones
resume from their checkpoints, and only the rest of the budget is searched (the default point only if
no stored trial made it). Trials already done for the whole budget skip Ray altogether.

Ray specifics (the Tuner, searchers, scheduler, the callback that stores the trials) are in
:mod:`fusionbench.tune_ray`, imported only when trials run; this module needs no Ray.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tabulate import tabulate

from fusionbench.errors import TrainingError, UserInputError
from fusionbench.memory import peak_memory_mb, start_run_memory
from fusionbench.plan import Cell
from fusionbench.registry import STRATEGIES, UnknownPluginError
from fusionbench.report.collect import LEAKY_PROTOCOL
from fusionbench.runner import (
    OPTION_GROUPS,
    RunRequest,
    build_context,
    group_options,
    load_data,
    resolve,
    resolve_device,
)
from fusionbench.space import Space, check_space, describe_space, parse_space, space_table, strategy_space
from fusionbench.store import ResultStore, canonical_json, config_hash
from fusionbench.train import SELECTABLE, TrainOptions, epoch_record

SEARCHES = ("auto", "tpe", "random")
RUN_KEYS = ("strategy", "aggregator", "dataset", "protocol", "max_len", "set", "space")
TUNE_KEYS = ("name", "budget", "max_epochs", "grace_epochs", "reduction_factor", "metric", "search", "seed", "seeds")
SECTIONS = {"": "strategy_options", "agg": "aggregator_options", "train": "train", "features": "features",
            "data": "dataset_options"}
"""Option key prefix (``--set`` form) -> the section of a resolved config holding it."""
FIXED_BY_TUNE = {"train.epochs": "max_epochs", "train.select": "metric"}
"""Options a tune sets itself in every trial and seed run (key -> the tune setting that sets it)."""


# -- settings and parts ----------------------------------------------------------------------------
def optuna_installed() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class TuneSettings:
    """What is the same for every strategy of a tune (module docstring). ``search`` is resolved:
    ``tpe`` (Optuna's TPE sampler) or ``random`` (Ray's seeded random sampling)."""

    name: str
    budget: int = 16
    max_epochs: int = 50
    grace_epochs: int = 4
    reduction_factor: int = 4
    metric: str = "NDCG@20"
    search: str = "tpe"
    seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def build(cls, given: dict[str, Any], option: Callable[[str], str]) -> "TuneSettings":
        """Checked settings from ``given`` (missing keys at their defaults; ``search`` ``auto`` -> ``tpe``
        where Optuna is installed, else ``random``). ``option(key)`` names a setting in errors (the
        flag, or the file's ``[tune]`` key)."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name != "name"}
        values = {**defaults, "search": "auto", **{k: v for k, v in given.items() if v is not None}}
        for key in ("budget", "max_epochs", "grace_epochs", "reduction_factor", "seed"):
            if not isinstance(values[key], int) or isinstance(values[key], bool):
                raise UserInputError(f"{option(key)} must be an integer, got {values[key]!r}")
        checks = [("budget", values["budget"] >= 1, "must be >= 1"),
                  ("max_epochs", values["max_epochs"] >= 1, "must be >= 1"),
                  ("grace_epochs", 1 <= values["grace_epochs"] <= values["max_epochs"],
                   f"must be in 1..max_epochs ({values['max_epochs']})"),
                  ("reduction_factor", values["reduction_factor"] >= 2, "must be >= 2"),
                  ("metric", values["metric"] in SELECTABLE, f"must be one of {', '.join(SELECTABLE)}"),
                  ("search", values["search"] in SEARCHES, f"must be one of {', '.join(SEARCHES)}")]
        for key, ok, rule in checks:
            if not ok:
                raise UserInputError(f"{option(key)} {rule}, got {values[key]!r}")
        seeds = values["seeds"]
        if (not isinstance(seeds, (list, tuple)) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
            raise UserInputError(f"{option('seeds')} must be a non-empty list of integers, got {seeds!r}")
        name = values.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise UserInputError(f"{option('name')} must be a name of letters, digits, '_', '.' and '-', got {name!r}")
        if values["search"] == "auto":
            values["search"] = "tpe" if optuna_installed() else "random"
        elif values["search"] == "tpe" and not optuna_installed():
            raise UserInputError(f"{option('search')} tpe needs Optuna: pip install 'fusionbench[tune]' "
                                 "(or use random)")
        values["seeds"] = tuple(dict.fromkeys(seeds))
        return cls(**values)

    def identity(self, space: Space) -> dict[str, Any]:
        """What a trial's config holds under ``"tune"``: everything that decides its training and the
        tune's choice but the budget (a larger budget extends a tune) and the seeds of the final runs."""
        return {"name": self.name, "scheduler": "asha", "max_epochs": self.max_epochs,
                "grace_epochs": self.grace_epochs, "reduction_factor": self.reduction_factor,
                "metric": self.metric, "search": self.search, "space": space_table(space)}


@dataclass
class Part:
    """One strategy configuration of a tune: ``base`` is its request with everything but the searched
    keys (the fixed options, ``train.epochs``, ``train.select``, the tune's seed and ``tune``), ``space``
    what is searched, ``where`` names its origin in errors.

    ``default`` is the part's *default point*: every searched key at the value it resolves to without
    the tune (the options' defaults, under the fixed ones), i.e. the configuration the strategy runs
    with when nobody tunes it. Where it lies in the space it is the part's first trial
    (:func:`search_points`), counted in the budget; a key whose default lies outside its dimension
    (:attr:`default_outside`) keeps it out of the trials, and the plan says so (:func:`default_text`)."""

    base: RunRequest
    space: Space
    budget: int
    where: str = ""
    key: str = field(init=False, repr=False)
    aggregator: Optional[str] = field(init=False, repr=False)
    default: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        config = resolve(self.base)
        self.key, self.aggregator = part_key(config), config["aggregator"]
        self.default = point_of(config, list(self.space))

    @property
    def default_outside(self) -> dict[str, Any]:
        """The searched keys whose default value lies outside their dimension (``{key: default}``); any
        one of them means the default point is not a trial."""
        return {key: value for key, value in self.default.items() if not self.space[key].contains(value)}

    @property
    def label(self) -> str:
        return self.base.strategy + (f" + {self.aggregator}" if self.aggregator else "")

    @property
    def n_trials(self) -> int:
        """The budget, or one trial for a strategy with nothing to search."""
        return self.budget if self.space else 1

    def request(self, point: dict[str, Any]) -> RunRequest:
        """The trial request of a sampled ``point`` (``{key: value}``, keys as ``--set`` names them).
        Sampled floats are rounded to 3 significant digits (:func:`rounded`)."""
        groups = group_options({key: rounded(value) for key, value in point.items()}, "space")
        return dataclasses.replace(self.base, **{name: {**getattr(self.base, name), **values}
                                                 for name, values in groups.items()})


def rounded(value: Any) -> Any:
    """A sampled float to 3 significant digits (``0.0007501954`` -> ``0.00075``): trial configs and row
    labels stay readable, and the search's resolution is far finer than what separates two settings of
    a learning rate or a dropout. Other values as they are."""
    return float(f"{value:.3g}") if isinstance(value, float) else value


def part_key(config: dict) -> str:
    """What the trials of one part share: a trial's config without its searched keys (listed in its
    ``tune.space``), seed and dataset checksum (canonical JSON)."""
    config = json.loads(json.dumps(config))
    for key in config.get("tune", {}).get("space", {}):
        prefix, _, name = key.rpartition(".")
        config[SECTIONS[prefix]].pop(name, None)
    for key in ("seed", "dataset_checksum"):
        config.pop(key, None)
    return canonical_json(config)


def point_of(config: dict, keys: Sequence[str]) -> dict[str, Any]:
    """The values of the searched ``keys`` in a stored config (the point that made it)."""
    point = {}
    for key in keys:
        prefix, _, name = key.rpartition(".")
        point[key] = config[SECTIONS[prefix]][name]
    return point


def make_part(settings: TuneSettings, strategy: str, sets: dict[str, Any], overrides: dict[str, Any],
              where: str, **request: Any) -> Part:
    """A checked :class:`Part`: ``sets`` are the fixed options, ``overrides`` the ``space`` table of a tune
    file, ``request`` the other :class:`RunRequest` fields (aggregator, dataset, ...). Every
    representative point of the space is resolved here, so a bad range fails before any trial runs."""
    try:
        if request.get("protocol") == LEAKY_PROTOCOL:
            raise UserInputError(f"protocol {LEAKY_PROTOCOL!r} selects on the test samples; a tune chooses on "
                                 "validation only: use loo or ratio")
        for key, setting in FIXED_BY_TUNE.items():
            if key in sets or key in overrides:
                raise UserInputError(f"{key!r} cannot be set or searched: the tune sets it from its {setting}")
        both = sorted(set(sets) & set(overrides))
        if both:
            raise UserInputError(f"{both[0]!r} is both fixed (set) and searched (space)")
        space = strategy_space(strategy, request.get("aggregator"), parse_space(overrides, "space"), tuple(sets))
        base = RunRequest(strategy=strategy, seed=settings.seed, **request, **group_options(sets, "set"))
        resolved = resolve(base)
        if "train.record_test" in overrides or resolved["train"].get("record_test"):
            raise UserInputError("'train.record_test' ranks the test samples every epoch; a tune's trials rank none")
        if "train.exclude_history" in overrides:
            raise UserInputError("'train.exclude_history' cannot be searched: it changes which items the validation "
                                 "metric ranks against, and a tune compares its trials on one metric (fix it with set)")
        default_epochs = resolved["train"]["epochs"]
        base.train_options.update(epochs=min(default_epochs, settings.max_epochs), select=settings.metric)
        base.tune = settings.identity(space)
        part = Part(base, space, settings.budget, where)
        check_space(space, lambda point: resolve(part.request(point)))
    except (UserInputError, UnknownPluginError) as err:
        raise UserInputError(f"{where} ({strategy}): {err}") from None
    return part


def _typed(value: Any, kinds: tuple[type, ...], where: str, expected: str) -> Any:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise UserInputError(f"{where} must be {expected}, got {value!r}")
    return value


def read_tune_file(path: Path, data_root: Optional[Path] = None, device: str = "cpu",
                   name: Optional[str] = None) -> tuple[TuneSettings, list[Part]]:
    """The settings and parts of a tune file (module docstring); ``name`` (``--name``) replaces the
    file's ``[tune] name``, which defaults to the file's stem. Errors name the file, table and key."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"tune file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise UserInputError(f"{path}: not valid TOML ({err})") from None
    unknown = sorted(set(spec) - {"tune", "defaults", "run"})
    if unknown:
        raise UserInputError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; expected [tune], [defaults] "
                             "and [[run]] tables")
    given = _typed(spec.get("tune", {}), (dict,), f"{path}: [tune]", "a table")
    bad = sorted(set(given) - set(TUNE_KEYS))
    if bad:
        raise UserInputError(f"{path}: [tune]: unknown key(s) {', '.join(bad)}; allowed: {', '.join(TUNE_KEYS)}")
    settings = TuneSettings.build({"name": path.stem, **given, **({"name": name} if name else {})},
                                  lambda key: "--name" if key == "name" and name else f"{path}: [tune] {key}")
    defaults = _typed(spec.get("defaults", {}), (dict,), f"{path}: [defaults]", "a table")
    runs = spec.get("run", [])
    if not isinstance(runs, list) or not runs:
        raise UserInputError(f"{path}: needs at least one [[run]] table")
    _check_run_keys(defaults, f"{path}: [defaults]")
    parts: dict[str, Part] = {}
    for index, entry in enumerate(runs, start=1):
        where = f"{path}: [[run]] {index}"
        _check_run_keys(_typed(entry, (dict,), where, "a table"), where)
        merged = {**defaults, **entry}
        sets = {**_typed(defaults.get("set", {}), (dict,), f"{path}: [defaults] set", "a table"),
                **_typed(entry.get("set", {}), (dict,), f"{where}: set", "a table of option = value")}
        space = {**_typed(defaults.get("space", {}), (dict,), f"{path}: [defaults] space", "a table"),
                 **_typed(entry.get("space", {}), (dict,), f"{where}: space", "a table of option = {kind = [...]}")}
        if "strategy" not in merged:
            raise UserInputError(f"{where}: missing key 'strategy'")
        names = merged["strategy"] if isinstance(merged["strategy"], list) else [merged["strategy"]]
        request = dict(
            aggregator=_typed(merged.get("aggregator"), (str, type(None)), f"{where}: aggregator", "a name"),
            dataset=_typed(merged.get("dataset", "beauty"), (str,), f"{where}: dataset", "a name"),
            protocol=_typed(merged.get("protocol", "loo"), (str,), f"{where}: protocol", "a name"),
            max_len=_typed(merged.get("max_len", RunRequest.max_len), (int,), f"{where}: max_len", "an integer"),
            data_root=data_root, device=device)
        for strategy in names:
            part = make_part(settings, _typed(strategy, (str,), f"{where}: strategy", "a name or a list of names"),
                             sets, space, where, **request)
            if part.key in parts:
                raise UserInputError(f"{where} ({strategy}) repeats the tune of {parts[part.key].where} "
                                     f"({strategy}) with the same settings")
            parts[part.key] = part
    return settings, list(parts.values())


def parts_from_flags(settings: TuneSettings, strategies: Sequence[str], sets: dict[str, Any],
                     **request: Any) -> list[Part]:
    """The parts of ``--strategy a,b``: ``--aggregator`` and ``agg.*`` options reach the graph strategies
    only (as in ``fusionbench compare``), every other ``--set`` every strategy."""
    graph = [s for s in strategies if STRATEGIES.get(s).default_aggregator]
    aggregated = request.get("aggregator") or any(key.startswith("agg.") for key in sets)
    if aggregated and not graph:
        raise UserInputError(f"--aggregator / agg.* options: none of {', '.join(strategies)} is a graph strategy")
    parts = []
    for strategy in strategies:
        own = sets if strategy in graph else {k: v for k, v in sets.items() if not k.startswith("agg.")}
        parts.append(make_part(settings, strategy, own, {}, "--strategy",
                               **{**request, "aggregator": request.get("aggregator") if strategy in graph else None}))
    return parts


def _check_run_keys(table: dict, where: str) -> None:
    unknown = sorted(set(table) - set(RUN_KEYS))
    if unknown:
        hint = " (the seeds of a tune are [tune] seeds)" if "seeds" in unknown else ""
        raise UserInputError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RUN_KEYS)}{hint}")


# -- stored trials and the choice ------------------------------------------------------------------
@dataclass
class Trial:
    """A stored trial (a run of the store whose ``tune`` column is set)."""

    run_id: int
    config_hash: str
    status: str
    config: dict
    history: list[dict]
    asha_stopped: Optional[bool]
    error: Optional[str] = None
    wall_seconds: Optional[float] = None    # of a finished trial, resumed processes included

    def best(self) -> Optional[float]:
        """The best validation value of the tune's metric over the trial's epochs (``None``: no epoch).
        Only validation metrics exist for a trial; this is all that :func:`choose` reads."""
        metric = self.config["tune"]["metric"]
        values = [entry["valid"][metric] for entry in self.history]
        return max(values) if values else None


def stored_trials(store: ResultStore, name: str) -> list[Trial]:
    """Every trial of the tune ``name`` in ``store`` (any status), in id order."""
    table = store.runs(status=None, tune=name)
    return [Trial(int(row.id), row.config_hash, row.status, json.loads(row.config), json.loads(row.history or "[]"),
                  None if row.asha_stopped is None or row.asha_stopped != row.asha_stopped else bool(row.asha_stopped),
                  row.error if isinstance(row.error, str) else None,
                  None if row.wall_seconds != row.wall_seconds else row.wall_seconds)
            for row in table.itertuples()]


def choose(trials: Sequence[Trial]) -> Optional[Trial]:
    """The trial with the best validation metric (its tune's ``metric``, at any of its epochs) among
    finished ones, ASHA-stopped ones included; the earliest among equals; ``None`` when none finished.
    Reads the stored per-epoch validation history only: test metrics play no part."""
    done = [t for t in trials if t.status == "done" and t.best() is not None]
    return max(done, key=lambda t: (t.best(), -t.run_id), default=None)


def same_point(part: Part, config: dict, point: dict[str, Any]) -> bool:
    """Whether the stored trial ``config`` of ``part`` was made at ``point`` (sampled floats rounded as
    :meth:`Part.request` rounds them)."""
    return canonical_json(point_of(config, list(part.space))) == canonical_json(
        {key: rounded(value) for key, value in point.items()})


def default_trial(part: Part, trials: Sequence[Trial]) -> Optional[Trial]:
    """The stored trial of ``part`` made at its default point (the one trial of a part with nothing to
    search); ``None`` when there is none yet, or when the default lies outside the space."""
    if part.default_outside:
        return None
    return next((t for t in trials if same_point(part, t.config, part.default)), None)


def search_points(part: Part, trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """The points the search evaluates before it samples any (the searchers' ``points_to_evaluate``): the
    points of the stored ``trials`` of ``part``, finished ones (replayed from their histories) then
    interrupted ones (resumed from their checkpoints), then the part's default point unless it lies
    outside the space or a stored trial made it already. So a fresh part's first trial is its default
    configuration, and a resumed tune neither evaluates the default twice nor loses it (a default trial
    killed before it stored an epoch comes back). A part with nothing to search adds no point: its one
    trial is at its defaults anyway."""
    keys = list(part.space)
    ordered = ([t for t in trials if t.status in ("done", "failed")]
               + [t for t in trials if t.status not in ("done", "failed")])
    points = [point_of(t.config, keys) for t in ordered]
    if part.space and not part.default_outside and default_trial(part, trials) is None:
        points.append(dict(part.default))
    return points


def default_text(part: Part, trials: Sequence[Trial] = ()) -> str:
    """What the plan says of a part's default point: ``first trial: train.lr=0.001, dim=64`` (``stored
    trial: ...`` once ``trials`` hold it), or why it is not a trial (``not a trial: dim=300 lies outside
    one of 32, 64, 128``)."""
    if not part.space:
        return "the one trial (nothing to search)"
    if part.default_outside:
        return f"not a trial: {_outside_text(part)}"
    where = "stored trial" if default_trial(part, trials) is not None else "first trial"
    return f"{where}: " + ", ".join(f"{key}={_value(value)}" for key, value in part.default.items())


def _outside_text(part: Part) -> str:
    return "; ".join(f"{key}={_value(value)} lies outside {part.space[key].describe()}"
                     for key, value in part.default_outside.items())


def default_notes(parts: Sequence[Part]) -> list[str]:
    """One line per part whose default point lies outside its space, printed under the header of the
    plan (``--dry-run``) and of the tune: that part's default configuration is not evaluated."""
    return [f"{part.label}: its default configuration is not a trial and is not evaluated ({_outside_text(part)})"
            for part in parts if part.default_outside]


def chosen_config(trial: Trial) -> dict:
    """The ordinary run config of a chosen trial (no ``tune`` entry, no seed or data checksum)."""
    return {k: v for k, v in trial.config.items() if k not in ("tune", "seed", "dataset_checksum")}


def default_config(config: dict) -> dict:
    """The ordinary run config of the default configuration of a trial's part: the trial ``config`` with
    every searched key (its ``tune.space``), ``train.epochs`` and ``train.select`` back at what they resolve
    to without the tune, and no ``tune`` entry, seed or data checksum; i.e. what ``fusionbench run`` runs
    with the part's fixed options (the default board's run of the strategy, where those are the board's).
    Its searched values are the part's default point (:attr:`Part.default`). Resolved with the plugins
    installed here: one that is not raises :class:`UnknownPluginError`."""
    from fusionbench.store.upgrade import request_of

    request = dataclasses.replace(request_of(config), tune=None)
    for key in [*config["tune"]["space"], *FIXED_BY_TUNE]:
        prefix, _, name = key.rpartition(".")
        getattr(request, OPTION_GROUPS[prefix] if prefix else "strategy_options").pop(name, None)
    return {k: v for k, v in resolve(request).items() if k not in ("seed", "dataset_checksum")}


def tunes_in(store: ResultStore) -> list[str]:
    """The names of the tunes with trials in ``store``."""
    return sorted({name for name in store.runs(status=None).tune if isinstance(name, str)})


# -- one trial (runs in a Ray worker) ---------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a part gets (sent once to the workers): the part, where trials keep their
    resume checkpoints, the finished trials to replay (run hash -> ``{"history", "last", "error"}``),
    and the torch threads of a trial."""

    part: Part
    checkpoints: str
    replays: dict[str, dict] = field(default_factory=dict)
    threads: int = 1


_DATA: dict[str, tuple] = {}
_SPLITS: dict[str, Any] = {}
_CONTEXTS: dict[str, Any] = {}


def _data_key(config: dict, data_root: Optional[Path]) -> str:
    return canonical_json({"dataset": config["dataset"], "options": config["dataset_options"], "root": str(data_root)})


def data_of(config: dict, data_root: Optional[Path]) -> tuple:
    """``(data, checksum)`` of a config's dataset, loaded once per process."""
    key = _data_key(config, data_root)
    if key not in _DATA:
        data = load_data(config, data_root)
        _DATA[key] = (data, data.checksum())
    return _DATA[key]


def prepared(config: dict, data_root: Optional[Path]) -> tuple:
    """``(data, checksum, split, context)`` of a trial config, kept for the life of the process: a Ray
    worker loads each dataset, split and set of modality tables once, however many trials it runs
    (Tune reuses the workers). The context's aggregator fields are the config's own."""
    from fusionbench.data.splits import make_split

    data_key = _data_key(config, data_root)
    data, checksum = data_of(config, data_root)
    split_key = canonical_json([data_key, config["protocol"]])
    if split_key not in _SPLITS:
        _SPLITS[split_key] = make_split(data, config["protocol"])
    split = _SPLITS[split_key]
    context_key = canonical_json([split_key, config["features"], config["max_len"]])
    if context_key not in _CONTEXTS:
        _CONTEXTS[context_key] = build_context(config, data, split)
    ctx = dataclasses.replace(_CONTEXTS[context_key], aggregator=config["aggregator"],
                              aggregator_options=config["aggregator_options"])
    return data, checksum, split, ctx


def failure_result(error: str, epoch: int, digest: str) -> dict:
    """The result a failed trial reports last: every validation metric 0 (a model that diverged ranks
    nothing), so the search learns to avoid its region and ASHA ranks it last."""
    return {"epoch": epoch, "loss": float("nan"), "seconds": 0.0, "valid": dict.fromkeys(SELECTABLE, 0.0),
            "last": True, "error": error, "run_hash": digest, "train_seconds": 0.0, "setup_seconds": 0.0}


def train_trial(point: dict[str, Any], spec: TrialSpec, report: Callable[[dict], None]) -> None:
    """One trial: resolve the point's run, then train it, reporting every epoch (``report``: Ray Tune's
    ``tune.report`` in a worker) with its validation metrics, whether it is the last, and the time spent
    training since the previous report (``train_seconds``: building the model, epochs and validation) and
    preparing (``setup_seconds``: data, split and tables, cached per process). A trial whose run is among
    ``spec.replays`` (finished in an earlier invocation) reports its stored epochs and trains nothing.
    The test split is never ranked (``train(..., final_ranking=False)``). A :class:`TrainingError` ends the
    trial with :func:`failure_result`."""
    import torch

    from fusionbench.train import train

    start_run_memory()                            # a reused worker's earlier trials: their heap and peak
    started, started_at = time.perf_counter(), time.time()
    torch.set_num_threads(spec.threads)
    request = spec.part.request(point)
    config = resolve(request)
    data, checksum, split, ctx = prepared(config, request.data_root)
    config["dataset_checksum"] = checksum
    digest = config_hash(config)
    stored = spec.replays.get(digest)
    if stored is not None:
        history = stored["history"]
        for number, entry in enumerate(history, start=1):
            report({**entry, "last": number == len(history) and stored["last"], "run_hash": digest,
                    "replayed": True, "train_seconds": 0.0, "setup_seconds": 0.0, "started_at": started_at})
        if stored.get("error"):
            report({**failure_result(stored["error"], len(history) + 1, digest), "replayed": True})
        return
    clock = {"mark": time.perf_counter(), "setup": time.perf_counter() - started, "epochs": 0}

    def on_epoch(entry: dict, last: bool) -> None:
        now = time.perf_counter()
        clock["epochs"] = entry["epoch"]
        report({**epoch_record(entry), "valid": dict(entry["valid"]), "last": last, "run_hash": digest,
                "train_seconds": now - clock["mark"], "setup_seconds": clock["setup"],
                "elapsed": now - started, "started_at": started_at, "peak_memory_mb": peak_memory_mb()})
        clock["setup"] = 0.0
        clock["mark"] = time.perf_counter()

    model = STRATEGIES.create(config["strategy"], ctx, **config["strategy_options"]).to(resolve_device(request.device))
    checkpoint = Path(spec.checkpoints) / f"{digest}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    label = f"{config['strategy']}/{config['dataset']}/trial {digest[:8]}"
    try:
        train(model, data, split, TrainOptions.build(config["train"]), config["seed"], config["max_len"],
              checkpoint=checkpoint, progress=False, label=label, on_epoch=on_epoch, final_ranking=False)
    except TrainingError as err:
        report(failure_result(str(err), clock["epochs"] + 1, digest))


def ray_trial(point: dict[str, Any], spec: TrialSpec) -> None:
    """The Ray Tune trainable: :func:`train_trial` reporting through ``ray.tune.report``."""
    from ray import tune

    train_trial(point, spec, tune.report)


# -- the command -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Execution:
    """Where and how trials run: ``address`` (``None``: a Ray instance on this machine; ``auto``: the
    running cluster), CPUs (torch threads) and GPUs (a fraction shares one) per trial, at most
    ``concurrent`` trials at a time (``None``: as many as the resources allow), ``scratch`` (a folder on
    each node for trial checkpoints and the seed runs' task store; default: beside the store)."""

    address: Optional[str] = None
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    concurrent: Optional[int] = None
    scratch: Optional[str] = None

    def check(self) -> None:
        if self.cpus_per_trial < 1:
            raise UserInputError(f"--cpus-per-trial must be >= 1, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise UserInputError(f"--gpus-per-trial must be >= 0 (a fraction shares a GPU), got {self.gpus_per_trial}")
        if self.concurrent is not None and self.concurrent < 1:
            raise UserInputError(f"--concurrent must be >= 1, got {self.concurrent}")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"


@dataclass
class PartOutcome:
    """What a part's tune left in the store, and what this invocation ran."""

    part: Part
    trials: list[Trial]
    chosen: Optional[Trial]
    ran: int = 0                 # trials trained (or resumed) by this invocation
    replayed: int = 0            # finished trials replayed to the search
    errors: list[str] = field(default_factory=list)   # trials that raised (not a training failure)


@dataclass
class TuneCost:
    """The tune's own time against its trials' training (docs/tuning.md, Cost).

    ``slot_seconds``: the tuning phase's wall time (Ray start-up and every part's ``Tuner.fit``) times the
    trials that could run at once; ``training_seconds``: the trials' time in ``train`` (model building,
    epochs, validation, checkpoints), summed over trials. The difference is the tune's own time. Of it,
    ``startup_slot_seconds`` is start-up, paid once per tune and part whatever its size: starting Ray, and
    from the start of a part's ``Tuner.fit`` to its first trial's start (building the Tuner, starting the
    first worker process and its imports). The rest (:attr:`steady_seconds`) grows with the trials:
    scheduling, data preparation in the workers, reporting, storing, and slots left idle while a part's
    last trials run."""

    ray_start_seconds: float = 0.0
    first_trial_seconds: float = 0.0
    fit_seconds: float = 0.0
    slot_seconds: float = 0.0
    startup_slot_seconds: float = 0.0
    training_seconds: float = 0.0
    setup_seconds: float = 0.0
    storing_seconds: float = 0.0
    epochs: int = 0
    trials: int = 0

    @property
    def overhead_seconds(self) -> float:
        return self.slot_seconds - self.training_seconds

    @property
    def steady_seconds(self) -> float:
        return self.overhead_seconds - self.startup_slot_seconds

    def fraction(self, seconds: float) -> float:
        """``seconds`` as a fraction of the training time."""
        return seconds / self.training_seconds if self.training_seconds else 0.0

    def line(self) -> str:
        if not self.trials:
            return "tune cost: no trial trained in this invocation"
        return (f"tune cost: {self.trials} trials trained {self.epochs} epochs in {self.training_seconds:.1f} s. "
                f"The tune's own time: start-up {self.ray_start_seconds + self.first_trial_seconds:.1f} s (Ray "
                f"{self.ray_start_seconds:.1f} s, first workers {self.first_trial_seconds:.1f} s); then scheduling, "
                f"reporting, data preparation ({self.setup_seconds:.1f} s) and storing ({self.storing_seconds:.2f} s) "
                f"{self.steady_seconds:.1f} s = {100 * self.fraction(self.steady_seconds):.1f} % of the training "
                f"time ({100 * self.fraction(self.overhead_seconds):.1f} % with start-up)")


def parts_to_run(store: ResultStore, settings: TuneSettings, parts: Sequence[Part]) -> list[list[Trial]]:
    """Per part its stored trials, after checking that the store's trials of the same tune name were
    made with these settings (else an error saying what differs and to pick another ``--name``)."""
    stored = stored_trials(store, settings.name)
    keys = {part.key for part in parts}
    out = []
    for part in parts:
        mine = [t for t in stored if part_key(t.config) == part.key]
        same_run = [t for t in stored if part_key(t.config) not in keys and t.config["strategy"] == part.base.strategy
                    and t.config.get("aggregator") == part.aggregator
                    and t.config["dataset"] == part.base.dataset and t.config["protocol"] == part.base.protocol]
        if same_run:
            from fusionbench.store.upgrade import added_keys

            old = json.loads(part_key(same_run[0].config))
            added, changed = added_keys(old, json.loads(part.key))
            differ = ", ".join(sorted(set(added + changed))) or "the settings"
            raise UserInputError(f"tune {settings.name!r} in {store.path} has trials of {part.label} made with other "
                                 f"settings ({differ} differ); give another --name to start a new tune")
        if len(mine) > part.n_trials:
            raise UserInputError(f"tune {settings.name!r} in {store.path} already has {len(mine)} trials of "
                                 f"{part.label}, more than the budget ({part.n_trials}); raise --budget or give "
                                 "another --name")
        out.append(mine)
    return out


def run_tune(settings: TuneSettings, parts: Sequence[Part], store: ResultStore, execution: Execution,
             progress: bool = True, on_stored: Callable[[], None] = lambda: None,
             on_chosen: Callable[[PartOutcome], None] = lambda outcome: None) -> tuple[list[PartOutcome], TuneCost]:
    """Tune every part (module docstring): the trials not yet finished in ``store`` run on Ray Tune, one
    ``Tuner`` per part (ASHA compares trials of one strategy only), then the part's configuration is
    chosen from its stored trials and ``on_chosen(outcome)`` is called (``fusionbench tune`` runs its seed
    runs there, so each strategy's tuned row is complete before the next strategy's trials start). Test
    metrics are neither computed nor read here. ``on_stored()`` is called after each trial stored (``tune
    --archive``)."""
    execution.check()
    cost = TuneCost()
    outcomes = []
    for part, trials in zip(parts, parts_to_run(store, settings, parts)):
        finished = [t for t in trials if t.status in ("done", "failed")]
        outcome = PartOutcome(part, trials, None)
        if len(finished) < part.n_trials:
            try:
                from fusionbench.tune_ray import tune_part
            except ImportError as err:
                raise UserInputError(f"fusionbench tune runs its trials on Ray Tune, which is not installed here "
                                     f"({err}): pip install 'fusionbench[tune]'") from None

            outcome.ran, outcome.replayed, outcome.errors = tune_part(part, settings, trials, store, execution, cost,
                                                                      progress, on_stored)
            outcome.trials = [t for t in stored_trials(store, settings.name) if part_key(t.config) == part.key]
        outcome.chosen = choose(outcome.trials)
        outcomes.append(outcome)
        on_chosen(outcome)
    return outcomes, cost


def seed_cells(outcome: PartOutcome, settings: TuneSettings, data_root: Optional[Path], device: str) -> list[Cell]:
    """The final runs of a part: its chosen configuration on every seed of the tune, as ordinary runs
    (none while no trial has finished)."""
    from fusionbench.store.upgrade import request_of

    if outcome.chosen is None:
        return []
    config = {**chosen_config(outcome.chosen), "seed": settings.seed}
    return [Cell(dataclasses.replace(request_of(config), seed=seed, data_root=data_root, device=device, tune=None))
            for seed in settings.seeds]


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _default_cell(part: Part, trial: Optional[Trial]) -> str:
    """The default trial's best validation metric (%) for :func:`trials_table`."""
    if part.default_outside:
        return "not a trial"
    if trial is None or trial.status != "done" or trial.best() is None:
        return "-" if trial is None else trial.status
    return f"{100 * trial.best():.2f}"


def trials_table(outcomes: Sequence[PartOutcome], metric: str) -> str:
    """One row per part: its trials (finished, stopped by ASHA, failed), epochs trained by all of them,
    the best validation metric (%) of its default trial and of all trials, and the chosen values of the
    searched keys (``(the default)`` when the default trial was chosen)."""
    rows = []
    for o in outcomes:
        done = [t for t in o.trials if t.status == "done"]
        chosen, default = o.chosen, default_trial(o.part, o.trials)
        values = "-" if chosen is None else ", ".join(f"{k}={_value(v)}" for k, v in
                                                      point_of(chosen.config, list(o.part.space)).items())
        if chosen is not None and not o.part.space:
            values = "(defaults: nothing to search)"
        elif chosen is not None and chosen is default:
            values += " (the default)"
        rows.append([o.part.label, f"{len(done)}/{o.part.n_trials}", sum(bool(t.asha_stopped) for t in done),
                     sum(t.status == "failed" for t in o.trials), sum(len(t.history) for t in o.trials),
                     _default_cell(o.part, default), "-" if chosen is None else f"{100 * chosen.best():.2f}", values])
    return tabulate(rows, headers=["strategy", "trials done", "stopped by ASHA", "failed", "epochs",
                                   f"default's valid {metric}", f"best valid {metric}", "chosen"],
                    tablefmt="github", disable_numparse=True)


def plan_lines(settings: TuneSettings, parts: Sequence[Part], store: ResultStore) -> list[str]:
    """What ``--dry-run`` prints: the settings (with :func:`default_notes`), and per part its space, the
    trials already stored and its default point (:func:`default_text`)."""
    lines = [header(settings, parts), *default_notes(parts)]
    stored = parts_to_run(store, settings, parts)
    rows = [[p.label, f"{sum(t.status in ('done', 'failed') for t in trials)}/{p.n_trials}",
             describe_space(p.space) if p.space else "nothing: one trial at its defaults", default_text(p, trials)]
            for p, trials in zip(parts, stored)]
    lines.append(tabulate(rows, headers=["strategy", "trials finished", "space", "default configuration"],
                          tablefmt="github", disable_numparse=True))
    return lines


def header(settings: TuneSettings, parts: Sequence[Part]) -> str:
    data = {f"{p.base.dataset} ({p.base.protocol})" for p in parts}
    count = f"{len(parts)} strateg{'y' if len(parts) == 1 else 'ies'}"
    return (f"tune {settings.name!r} on {', '.join(sorted(data))}: {count} x {settings.budget} trials (the "
            "default configuration first), "
            f"{settings.search} search (seed {settings.seed}), ASHA (grace "
            f"{settings.grace_epochs}, reduction factor {settings.reduction_factor}, max epochs "
            f"{settings.max_epochs}) on validation {settings.metric}; seeds {','.join(map(str, settings.seeds))}")
