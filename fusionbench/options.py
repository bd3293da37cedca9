"""Option dataclasses shared by every plugin.

Each plugin declares ``Options``, a frozen dataclass subclassing :class:`PluginOptions`. Field types
(``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``tuple[str, ...]``) are checked generically, and
so are the bounds a numeric field declares in its type: ``dim: Annotated[int, Ge(1)] = 64``,
``dropout: Annotated[float, Ge(0), Lt(1)] = 0.5`` (``Ge``, ``Gt``, ``Le``, ``Lt`` and ``Interval`` of the
``annotated-types`` package, re-exported here). :meth:`PluginOptions.build` is the one place that checks
them; a plugin's ``check()`` holds only the rules that relate two options (``heads`` divides ``dim``).
Values coming from the command line (``--set key=value``) are parsed from strings by the same type
information, so the CLI, sweep files and ``fusionbench list`` all read one declaration. Options listed in
``ONLY_WHEN_SET`` enter :meth:`PluginOptions.as_dict`, and so a resolved config and its hash, only when set
away from their defaults (options added after runs were stored: those runs keep their identities).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from annotated_types import Ge, GroupedMetadata, Gt, Interval, Le, Lt

from fusionbench.errors import UserInputError

__all__ = ["Annotated", "Ge", "Gt", "Interval", "Le", "Lt", "NoOptions", "OptionError", "PluginOptions", "require",
           "bounds_text"]

Bound = typing.Union[Ge, Gt, Le, Lt]


class OptionError(UserInputError):
    """A plugin option is unknown, of the wrong type or out of range; the message names it."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return "comma-separated list"
    return getattr(tp, "__name__", str(tp))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds_text(bounds: tuple[Bound, ...]) -> str:
    """``(Ge(0), Lt(1))`` -> ``"in [0, 1)"``; ``(Ge(1),)`` -> ``">= 1"``; ``()`` -> ``""``."""
    lower = [b for b in bounds if isinstance(b, (Ge, Gt))]
    upper = [b for b in bounds if isinstance(b, (Le, Lt))]
    if len(lower) == 1 and len(upper) == 1:
        (lo,), (hi,) = lower, upper
        left = f"[{_number(lo.ge)}" if isinstance(lo, Ge) else f"({_number(lo.gt)}"
        right = f"{_number(hi.le)}]" if isinstance(hi, Le) else f"{_number(hi.lt)})"
        return f"in {left}, {right}"
    words = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}
    return " and ".join(f"{words[type(b)][0]} {_number(getattr(b, words[type(b)][1]))}" for b in bounds)


def _within(value: Any, bound: Bound) -> bool:
    """Whether ``value`` meets ``bound`` (NaN meets none)."""
    if isinstance(bound, Ge):
        return value >= bound.ge
    if isinstance(bound, Gt):
        return value > bound.gt
    if isinstance(bound, Le):
        return value <= bound.le
    return value < bound.lt


@functools.cache
def _fields_of(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    """:meth:`PluginOptions.fields`, once per class: resolving the string annotations (``typing.get_type_hints``)
    took a third of a sweep file's reading, which resolves every cell's options."""
    hints = typing.get_type_hints(cls, include_extras=False)
    return tuple((f.name, hints[f.name], f.default) for f in dataclasses.fields(cls))


@functools.cache
def _bounds_of(cls: type) -> dict[str, tuple[Bound, ...]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if get_origin(hint) is not Annotated:
            continue
        found: list[Bound] = []
        for meta in hint.__metadata__:
            parts = list(meta) if isinstance(meta, GroupedMetadata) else [meta]
            found += [part for part in parts if isinstance(part, (Ge, Gt, Le, Lt))]
        if found:
            out[f.name] = tuple(found)
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (possibly a CLI string) to type ``tp`` or raise OptionError naming ``where``."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise OptionError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, (tuple, list)):
            raise OptionError(f"{where} must be a list, got {value!r}")
        (inner, *_rest) = get_args(tp) or (str,)
        return tuple(_coerce(v, inner, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise OptionError(f"{where} must be a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise OptionError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise OptionError(f"{where} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise OptionError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OptionError(f"{where} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise OptionError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported option type {tp!r}")


@dataclasses.dataclass(frozen=True)
class PluginOptions:
    """Base of every plugin's option dataclass. ``HELP`` (optional; the harness's own groups give one for
    every option) maps an option to one line that ``fusionbench list`` prints after its default."""

    HELP: ClassVar[dict[str, str]] = {}
    REMOVED: ClassVar[dict[str, str]] = {}
    """Options this plugin no longer has -> what to set instead (one phrase); giving one is an error that
    says so, instead of the plain "unknown option"."""
    ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset()
    """Options that enter :meth:`as_dict` (so a resolved config and its hash) only when set away from their
    default: options added after runs were stored, whose default is what those runs did, so every run at
    the default keeps its identity (no ``store upgrade``) and a run with one set is a run of its own."""

    def check(self) -> None:
        """Rules that relate options of one plugin (a bound of one option belongs in its type); raise
        :class:`OptionError` naming the options."""

    @classmethod
    def fields(cls) -> list[tuple[str, Any, Any]]:
        """``(name, type, default)`` for every option, in declaration order (the type without its bounds)."""
        return list(_fields_of(cls))

    @classmethod
    def bounds(cls) -> dict[str, tuple[Bound, ...]]:
        """The bounds each option declares in its type (``Annotated[int, Ge(1)]``), for the options that have
        some: ``{"dim": (Ge(ge=1),), ...}``."""
        return _bounds_of(cls)

    def check_bounds(self) -> None:
        """Raise :class:`OptionError` naming the first option outside its declared bounds, the bounds and
        the value."""
        for name, bounds in self.bounds().items():
            value = getattr(self, name)
            if not all(_within(value, bound) for bound in bounds):
                raise OptionError(f"option {name!r} must be {bounds_text(bounds)}, got {value}")

    @classmethod
    def build(cls, given: dict[str, Any], where: str = "") -> "PluginOptions":
        """Validated instance from ``given`` (values may be strings); unknown keys are errors."""
        prefix = f"{where}: " if where else ""
        known = {name: tp for name, tp, _ in cls.fields()}
        unknown = sorted(set(given) - set(known))
        removed = [name for name in unknown if name in cls.REMOVED]
        if removed:
            raise OptionError(f"{prefix}option {removed[0]!r} was removed: {cls.REMOVED[removed[0]]}")
        if unknown:
            listed = ", ".join(known) or "(none)"
            raise OptionError(f"{prefix}unknown option {unknown[0]!r}; known options: {listed}")
        values = {k: _coerce(v, known[k], f"{prefix}option {k!r}") for k, v in given.items()}
        opts = cls(**values)
        try:
            opts.check_bounds()
            opts.check()
        except OptionError as err:
            raise OptionError(f"{prefix}{err}") from None
        return opts

    def validate(self) -> "PluginOptions":
        """Re-run type, bound and cross-option checks on an instance built directly in Python."""
        return type(self).build(dataclasses.asdict(self))

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-able values (tuples as lists), those of :attr:`ONLY_WHEN_SET` left out at their
        defaults: the form a resolved config holds (``build`` of it fills them in again)."""
        defaults = {name: default for name, _, default in self.fields()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k not in self.ONLY_WHEN_SET or v != defaults[k]}

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(name, type, default)`` rows for ``fusionbench list``; the type names the option's bounds when it
        has some (``int, >= 1``)."""
        bounds = cls.bounds()
        return [(name, ", ".join(filter(None, (_describe(tp), bounds_text(bounds.get(name, ()))))), repr(default))
                for name, tp, default in cls.fields()]


@dataclasses.dataclass(frozen=True)
class NoOptions(PluginOptions):
    """For plugins without options."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`OptionError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise OptionError(message)


def environment_choice(variable: str, choices: tuple[str, ...]) -> str:
    """A process-wide choice read from the environment variable ``variable``: one of ``choices`` (case and
    surrounding blanks ignored), or ``"auto"`` when it is unset, empty or says so; anything else is an error
    naming the variable and its values."""
    chosen = os.environ.get(variable, "auto").strip().lower() or "auto"
    if chosen not in choices and chosen != "auto":
        raise UserInputError(f"{variable} must be {', '.join(choices)} or auto, got {chosen!r}")
    return chosen
