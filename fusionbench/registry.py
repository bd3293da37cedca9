"""One registry type for every plugin kind: strategies, aggregators, datasets, perturbations.

A plugin is a class (or function) carrying an ``Options`` dataclass (see :mod:`fusionbench.options`).
Built-in plugins register themselves with a decorator when their package is imported; third-party
plugins are discovered through the entry-point group ``fusionbench.<kind>s`` (for example
``fusionbench.strategies``), whose targets are imported so that their decorators run.
"""
from __future__ import annotations

import fnmatch
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable


class UnknownPluginError(KeyError):
    """Raised for a plugin name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry:
    """Name -> plugin map for one plugin kind.

    Args:
        kind: singular noun used in messages ("strategy", "aggregator", ...).
        plural: plural noun; third-party plugins come from the entry-point group ``fusionbench.<plural>``.
        builtin_modules: modules imported on first use; importing them registers the built-ins.
    """

    def __init__(self, kind: str, plural: str, builtin_modules: Iterable[str] = ()):
        self.kind = kind
        self.group = f"fusionbench.{plural}"
        self._builtin_modules = tuple(builtin_modules)
        self._items: dict[str, Any] = {}
        self._origin: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: ``@STRATEGIES.register("sasrec")``. A duplicate name is an error."""

        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(
                    f"{self.kind} {name!r} registered twice "
                    f"({self._origin[name]} and {obj.__module__})"
                )
            if not hasattr(obj, "Options"):
                raise TypeError(f"{self.kind} {name!r} must define an Options dataclass")
            self._items[name] = obj
            self._origin[name] = obj.__module__
            obj.registry_name = name
            return obj

        return deco

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            ep.load()

    def get(self, name: str) -> Any:
        """The registered class or function; unknown names raise with the list of known ones."""
        self._ensure_loaded()
        if name not in self._items:
            known = ", ".join(self.names())
            raise UnknownPluginError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]

    def options(self, name: str, **options: Any):
        """Validated option dataclass of plugin ``name`` (``None`` values fall back to defaults)."""
        cls = self.get(name)
        given = {k: v for k, v in options.items() if v is not None}
        return cls.Options.build(given, where=f"{self.kind} {name!r}")

    def create(self, name: str, ctx: Any, **options: Any) -> Any:
        """Build plugin ``name`` from a context and keyword options."""
        return self.get(name)(ctx, self.options(name, **options))

    def names(self, pattern: str = "*") -> list[str]:
        self._ensure_loaded()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin[name]


STRATEGIES = Registry("strategy", "strategies", ["strategies"])
AGGREGATORS = Registry("aggregator", "aggregators", ["aggregators"])
DATASETS = Registry("dataset", "datasets", ["fusionbench.data.datasets"])
PERTURBATIONS = Registry("perturbation", "perturbations", ["fusionbench.perturb"])

REGISTRIES = {
    "strategies": STRATEGIES,
    "aggregators": AGGREGATORS,
    "datasets": DATASETS,
    "perturbations": PERTURBATIONS,
}
