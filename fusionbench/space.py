"""Search spaces of ``fusionbench tune``: the ranges worth searching, declared beside each plugin's options.

A space maps option keys, as ``--set`` names them (strategy options bare, ``train.*``, ``agg.*``,
``features.*``), to a :class:`Dimension`:

* :class:`LogUniform` ``(low, high)``: a float whose logarithm is uniform (rates, weights of terms);
* :class:`Uniform` ``(low, high)``: a float (dropout);
* :class:`IntRange` ``(low, high)``: an integer, both ends included (depth);
* :class:`Choice` ``(values)``: one of a few values (widths, named variants).

A strategy's space (:func:`strategy_space`) is built in three layers:

1. :data:`SHARED`, the knobs every model trained by the harness has: ``train.lr`` and
   ``train.weight_decay`` always, ``dropout``,
   ``dim`` (the width) and ``layers`` (the depth) where the strategy's ``Options`` has that field;
2. the strategy class's own ``search_space`` (:attr:`fusionbench.strategy.Strategy.search_space`): its
   key knobs, and replacements of shared ranges (a key mapped to ``None`` leaves a shared knob out);
3. the ``search_space`` of its default aggregator (graph strategies), under ``agg.``.

A tune file may override a strategy's space (:func:`parse_space`, the same tables as
:meth:`Dimension.as_table` writes); keys the file fixes with ``set`` are left out of the space.

This module imports no plugin package: it reads the classes the registries hand it.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from fusionbench.errors import UserInputError

Number = Union[int, float]


class Dimension(ABC):
    """One searched option: how to sample it (:meth:`to_ray`), how it reads (:meth:`describe`), its
    table form in tune files and stored trial configs (:meth:`as_table`), a few representative values
    (:meth:`probe`) that :func:`check_space` resolves before any trial runs, and whether a value lies in
    it (:meth:`contains`: is an option's default a point of the search?)."""

    kind: str = ""

    @abstractmethod
    def describe(self) -> str:
        """How the dimension reads in listings (e.g. ``log-uniform [0.0001, 0.01]``)."""

    @abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension."""

    @abstractmethod
    def as_table(self) -> dict[str, list]:
        """The tune-file / stored-config table form, e.g. ``{"log_uniform": [lo, hi]}``."""

    @abstractmethod
    def probe(self) -> tuple:
        """A few representative values that :func:`check_space` resolves before any trial runs."""

    @abstractmethod
    def to_ray(self) -> Any:
        """The Ray Tune sampling domain."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> str:
    """``1e-4`` -> ``0.0001``; ``0.5`` -> ``0.5``; ``3`` -> ``3`` (short, exact enough for reading)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


class FloatInterval(Dimension):
    """A float dimension on ``[low, high]`` (fields of the subclass): membership and table form shared by
    :class:`LogUniform` and :class:`Uniform`, which differ in how they sample and probe."""

    low: float
    high: float

    def contains(self, value: Any) -> bool:
        """A number in ``[low, high]``, both ends included."""
        return _is_number(value) and self.low <= value <= self.high

    def as_table(self) -> dict[str, list]:
        return {self.kind: [self.low, self.high]}


@dataclass(frozen=True)
class LogUniform(FloatInterval):
    """A float whose logarithm is uniform on ``[log low, log high]`` (``0 < low < high``)."""

    low: float
    high: float
    kind = "log_uniform"

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"log_uniform needs 0 < low < high, got [{self.low}, {self.high}]")

    def describe(self) -> str:
        return f"log-uniform [{_number(self.low)}, {_number(self.high)}]"

    def probe(self) -> tuple:
        return self.low, math.sqrt(self.low * self.high), self.high

    def to_ray(self) -> Any:
        from ray import tune

        return tune.loguniform(self.low, self.high)


@dataclass(frozen=True)
class Uniform(FloatInterval):
    """A float uniform on ``[low, high]`` (``low < high``)."""

    low: float
    high: float
    kind = "uniform"

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"uniform needs low < high, got [{self.low}, {self.high}]")

    def describe(self) -> str:
        return f"uniform [{_number(self.low)}, {_number(self.high)}]"

    def probe(self) -> tuple:
        return self.low, (self.low + self.high) / 2, self.high

    def to_ray(self) -> Any:
        from ray import tune

        return tune.uniform(self.low, self.high)


@dataclass(frozen=True)
class IntRange(Dimension):
    """An integer uniform on ``low..high``, both ends included (``low < high``)."""

    low: int
    high: int
    kind = "int"

    def __post_init__(self) -> None:
        if not (isinstance(self.low, int) and isinstance(self.high, int)) or not self.low < self.high:
            raise ValueError(f"int needs integers low < high, got [{self.low}, {self.high}]")

    def describe(self) -> str:
        return f"int {self.low}..{self.high}"

    def contains(self, value: Any) -> bool:
        """An integer in ``low..high``."""
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def as_table(self) -> dict[str, list]:
        return {self.kind: [self.low, self.high]}

    def probe(self) -> tuple:
        return tuple(dict.fromkeys((self.low, (self.low + self.high) // 2, self.high)))

    def to_ray(self) -> Any:
        from ray import tune

        return tune.randint(self.low, self.high + 1)     # Ray's upper bound is exclusive


@dataclass(frozen=True)
class Choice(Dimension):
    """One of ``values`` (at least two, all distinct), each equally likely before the search learns."""

    values: tuple
    kind = "choice"

    def __post_init__(self) -> None:
        if len(self.values) < 2 or len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError(f"choice needs two or more distinct values, got {list(self.values)}")

    def describe(self) -> str:
        return "one of " + ", ".join(_number(v) for v in self.values)

    def contains(self, value: Any) -> bool:
        """One of ``values`` (``1`` and ``1.0`` are the same number; ``True`` is not ``1``)."""
        return any(v == value and isinstance(v, bool) == isinstance(value, bool) for v in self.values)

    def as_table(self) -> dict[str, list]:
        return {self.kind: list(self.values)}

    def probe(self) -> tuple:
        return self.values

    def to_ray(self) -> Any:
        from ray import tune

        return tune.choice(list(self.values))


Space = dict[str, Dimension]
"""An option key (``--set`` form) -> how it is searched."""

SHARED: dict[str, Dimension] = {
    "train.lr": LogUniform(1e-4, 1e-2),
    "train.weight_decay": Choice((0.0, 1e-6, 1e-5, 1e-4)),
    "dropout": Uniform(0.0, 0.5),
    "dim": Choice((32, 64, 128)),
    "layers": IntRange(1, 3),
}
"""The knobs every strategy trained by the harness shares: Adam's learning rate and its L2 weight decay
(every strategy; 0, the default, among the choices), and, where its ``Options`` has the field, dropout,
the width ``dim`` and the depth ``layers``."""

KINDS = {"log_uniform": LogUniform, "uniform": Uniform, "int": IntRange, "choice": Choice}
KEEP_DEFAULT = "default"
"""A tune file's ``space`` value that leaves a key out of the search (the option keeps its default)."""


def dimension_of(table: Any, where: str) -> Dimension:
    """A dimension from its table form (``{log_uniform = [1e-4, 1e-2]}``, ``{uniform = [0, 0.5]}``,
    ``{int = [1, 3]}``, ``{choice = [32, 64]}``); ``where`` names the file, table and key in errors."""
    expected = ("a table with one of " + ", ".join(f"{k} = [...]" for k in KINDS)
                + f", or \"{KEEP_DEFAULT}\" to leave the option out of the search")
    if not isinstance(table, dict) or len(table) != 1 or next(iter(table)) not in KINDS:
        raise UserInputError(f"{where} must be {expected}; got {table!r}")
    kind, values = next(iter(table.items()))
    if not isinstance(values, list) or any(isinstance(v, (dict, list)) for v in values):
        raise UserInputError(f"{where}: {kind} takes a list of values, got {values!r}")
    numeric = kind in ("log_uniform", "uniform", "int")
    if numeric and (len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in values)):
        raise UserInputError(f"{where}: {kind} takes [low, high] (two numbers), got {values!r}")
    try:
        if kind == "choice":
            return Choice(tuple(values))
        if kind == "int":
            if not all(isinstance(v, int) or float(v).is_integer() for v in values):
                raise ValueError(f"int needs integers low < high, got {values}")
            return IntRange(int(values[0]), int(values[1]))
        return KINDS[kind](float(values[0]), float(values[1]))
    except ValueError as err:
        raise UserInputError(f"{where}: {err}") from None


def parse_space(table: Any, where: str) -> dict[str, Optional[Dimension]]:
    """A tune file's ``space`` table -> ``{key: Dimension, or None for "default"}``."""
    if not isinstance(table, dict):
        raise UserInputError(f"{where} must be a table of option = {{kind = [...]}}, got {table!r}")
    return {key: None if value == KEEP_DEFAULT else dimension_of(value, f"{where}.{key}")
            for key, value in table.items()}


def space_table(space: Mapping[str, Dimension]) -> dict[str, dict[str, list]]:
    """The JSON/TOML form of a space (sorted keys), as stored in every trial's config."""
    return {key: space[key].as_table() for key in sorted(space)}


def space_from_table(table: Mapping[str, Any]) -> Space:
    """Inverse of :func:`space_table` (a stored trial's space)."""
    return {key: dimension_of(value, f"space.{key}") for key, value in table.items()}


def describe_space(space: Mapping[str, Dimension]) -> str:
    """``"train.lr log-uniform [0.0001, 0.01], dropout uniform [0, 0.5]"``; ``"nothing"`` when empty."""
    return ", ".join(f"{key} {dim.describe()}" for key, dim in space.items()) or "nothing"


def _fields(options_cls: Any) -> set[str]:
    return {name for name, _, _ in options_cls.fields()}


def aggregator_space(aggregator_cls: Any) -> Space:
    """An aggregator's own searched keys, as ``agg.*`` (empty when it declares none)."""
    return {f"agg.{key}": dim for key, dim in (getattr(aggregator_cls, "search_space", {}) or {}).items()
            if dim is not None}


def declared_space(strategy_cls: Any, aggregator_cls: Any = None) -> Space:
    """The space a strategy declares (layers 1-3 of the module docstring), in a stable order: shared
    knobs first, then the strategy's own, then the aggregator's."""
    fields = _fields(strategy_cls.Options)
    space: dict[str, Optional[Dimension]] = {key: dim for key, dim in SHARED.items()
                                             if key.startswith("train.") or key in fields}
    space.update(getattr(strategy_cls, "search_space", {}) or {})
    if aggregator_cls is not None:
        space.update(aggregator_space(aggregator_cls))
    return {key: dim for key, dim in space.items() if dim is not None}


def strategy_space(strategy: str, aggregator: Optional[str] = None,
                   overrides: Optional[Mapping[str, Optional[Dimension]]] = None,
                   fixed: tuple[str, ...] = ()) -> Space:
    """The searched keys of ``strategy`` (with ``aggregator``, default: its own): its declared space, then
    ``overrides`` (a tune file's ``space``; ``None`` drops a key), less the ``fixed`` keys (set by the user).
    Every key must name an option the run has (strategy, ``train.*``, ``agg.*`` of a graph strategy,
    ``features.*`` of a strategy that reads modalities), else an error naming it."""
    from fusionbench.registry import AGGREGATORS, STRATEGIES

    strategy_cls = STRATEGIES.get(strategy)
    agg = aggregator or strategy_cls.default_aggregator
    aggregator_cls = AGGREGATORS.get(agg) if agg else None
    space: dict[str, Optional[Dimension]] = dict(declared_space(strategy_cls, aggregator_cls))
    space.update(overrides or {})
    check_keys(space, strategy_cls, aggregator_cls, f"strategy {strategy!r}")
    return {key: dim for key, dim in space.items() if dim is not None and key not in fixed}


def check_keys(space: Mapping[str, Any], strategy_cls: Any, aggregator_cls: Any, where: str) -> None:
    """Every key of ``space`` must be an option of the run (see :func:`strategy_space`)."""
    from fusionbench.runner import FeatureOptions
    from fusionbench.train import TrainOptions

    groups = {"": strategy_cls.Options, "train": TrainOptions,
              "agg": aggregator_cls.Options if aggregator_cls is not None else None,
              "features": FeatureOptions if strategy_cls.uses_modalities else None}
    for key in space:
        prefix, dot, name = key.rpartition(".")
        options = groups.get(prefix)
        if options is None or name not in _fields(options):
            known = sorted([*(f"{p}.{f}" if p else f for p, cls in groups.items() if cls is not None
                              for f in _fields(cls))])
            raise UserInputError(f"{where}: cannot search {key!r}, not an option of this run; options: "
                                 f"{', '.join(known)}")


def check_space(space: Mapping[str, Dimension], resolve_point: Any, where: str = "") -> None:
    """Resolve every representative value of every key (:meth:`Dimension.probe`; the other options at
    their defaults) before a trial runs, so a range the options reject fails now with its key named.
    ``resolve_point(point)`` raises :class:`UserInputError` for a point that does not resolve. (Rules
    between two searched options, such as ``dim`` divisible by ``heads``, show only in combinations:
    tests/test_tune.py samples those of every built-in space.)"""
    prefix = f"{where}: " if where else ""
    for key, dim in space.items():
        for value in dim.probe():
            try:
                resolve_point({key: value})
            except UserInputError as err:
                raise UserInputError(f"{prefix}space key {key!r} ({dim.describe()}) reaches {value!r}, which does "
                                     f"not resolve: {err}") from None
