"""Option dataclasses shared by every plugin.

Each plugin declares ``Options``, a frozen dataclass subclassing :class:`PluginOptions`. Field types
(``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``tuple[str, ...]``) are checked generically;
range checks live in the plugin's ``check()``. Values coming from the command line (``--set key=value``)
are parsed from strings by the same type information, so the CLI, sweep files and ``fusionbench list``
all read one declaration.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Literal, get_args, get_origin

from fusionbench.errors import UserInputError


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

    def check(self) -> None:
        """Range checks of one plugin; raise :class:`OptionError` naming the option."""

    @classmethod
    def fields(cls) -> list[tuple[str, Any, Any]]:
        """``(name, type, default)`` for every option, in declaration order."""
        hints = typing.get_type_hints(cls, include_extras=False)
        return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls)]

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
            opts.check()
        except OptionError as err:
            raise OptionError(f"{prefix}{err}") from None
        return opts

    def validate(self) -> "PluginOptions":
        """Re-run type and range checks on an instance built directly in Python."""
        return type(self).build(dataclasses.asdict(self))

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(name, type, default)`` rows for ``fusionbench list``."""
        return [(name, _describe(tp), repr(default)) for name, tp, default in cls.fields()]


@dataclasses.dataclass(frozen=True)
class NoOptions(PluginOptions):
    """For plugins without options."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`OptionError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise OptionError(message)
