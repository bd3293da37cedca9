"""Registries and option dataclasses: clear errors, listing, third-party entry points."""
import dataclasses
import math
import sys
import textwrap
from typing import Annotated, Literal

import pytest

from fusionbench.options import Ge, Gt, Interval, Le, Lt, OptionError, PluginOptions, bounds_text, require
from fusionbench.reference import harness_groups
from fusionbench.registry import DATASETS, REGISTRIES, STRATEGIES, Registry, UnknownPluginError


@dataclasses.dataclass(frozen=True)
class DemoOptions(PluginOptions):
    heads: Annotated[int, Ge(1)] = 2
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.1
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    names: tuple[str, ...] = ()
    width: int = 4

    def check(self):
        require(self.width % self.heads == 0, f"option 'heads' ({self.heads}) must divide 'width' ({self.width})")


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownPluginError, match=r"unknown strategy 'sasrc'; known: .*sasrec"):
        STRATEGIES.get("sasrc")


def test_duplicate_registration_is_an_error():
    reg = Registry("widget", "widgets")

    @reg.register("w")
    class W:
        Options = DemoOptions

    with pytest.raises(KeyError, match="registered twice"):
        @reg.register("w")
        class W2:
            Options = DemoOptions


def test_options_parse_strings_and_validate():
    opts = DemoOptions.build({"heads": "4", "dropout": "0.5", "mode": "b", "flag": "true", "names": "x, y"})
    assert opts == DemoOptions(heads=4, dropout=0.5, mode="b", flag=True, names=("x", "y"))
    with pytest.raises(OptionError, match="option 'heads' must be an integer, got 'four'"):
        DemoOptions.build({"heads": "four"})
    with pytest.raises(OptionError, match="option 'mode' must be one of 'a', 'b', got 'c'"):
        DemoOptions.build({"mode": "c"})
    with pytest.raises(OptionError, match="unknown option 'head'; known options: heads, dropout"):
        DemoOptions.build({"head": 1})
    with pytest.raises(OptionError, match="option 'heads' must be >= 1, got 0"):
        DemoOptions.build({"heads": 0})
    with pytest.raises(OptionError, match="must be >= 1"):
        DemoOptions(heads=0).validate()


@pytest.mark.parametrize("given, message", [
    ({"heads": "0"}, "option 'heads' must be >= 1, got 0"),
    ({"dropout": "1"}, r"option 'dropout' must be in \[0, 1\), got 1.0"),
    ({"dropout": "-0.5"}, r"option 'dropout' must be in \[0, 1\), got -0.5"),
    ({"dropout": "nan"}, r"option 'dropout' must be in \[0, 1\), got nan"),            # NaN meets no bound
    ({"heads": "3"}, r"option 'heads' \(3\) must divide 'width' \(4\)"),                 # cross-option rule: check()
    ({"heads": "0", "width": "3"}, "option 'heads' must be >= 1, got 0"),                 # bounds first: no 3 % 0
])
def test_bounds_in_the_types_are_checked_with_the_option_the_bound_and_the_value(given, message):
    with pytest.raises(OptionError, match=f"^demo: {message}$"):
        DemoOptions.build(given, where="demo")


def test_bounds_text_and_grouped_bounds():
    assert bounds_text((Ge(0), Lt(1))) == "in [0, 1)" and bounds_text((Gt(0), Le(1))) == "in (0, 1]"
    assert bounds_text((Ge(1),)) == ">= 1" and bounds_text((Lt(2.5),)) == "< 2.5" and bounds_text(()) == ""
    assert bounds_text((Ge(0), Lt(math.inf))) == "in [0, inf)"

    @dataclasses.dataclass(frozen=True)
    class Grouped(PluginOptions):
        rate: Annotated[float, Interval(gt=0, le=1), "other metadata is ignored"] = 0.5

    assert Grouped.bounds() == {"rate": (Gt(0), Le(1))}
    assert Grouped.describe() == [("rate", "float, in (0, 1]", "0.5")]
    with pytest.raises(OptionError, match=r"option 'rate' must be in \(0, 1\], got 0.0"):
        Grouped.build({"rate": 0})


def all_option_classes():
    """Every options class a run can be given values for: each registered plugin's and the harness's groups."""
    classes = {f"{kind} {name}": registry.get(name).Options for kind, registry in REGISTRIES.items()
               for name in registry.names()}
    return {**classes, **{f"{prefix}.*": options for prefix, _, options in harness_groups() if options}}


@pytest.mark.parametrize("where, options", sorted(all_option_classes().items()))
def test_every_default_lies_within_its_bounds_and_an_override_keeps_the_bounds(where, options):
    """A subclass that gives an option another default redeclares its type: it must keep the base class's
    bounds (`layers: int = 1` under a base's `Annotated[int, Ge(1)]` would drop them silently); it may add
    some (each Amazon dataset bounds `users` by its own user count)."""
    options().check_bounds()
    for base in options.__mro__[1:]:
        if not (isinstance(base, type) and issubclass(base, PluginOptions) and dataclasses.is_dataclass(base)):
            continue
        for name, bounds in base.bounds().items():
            assert set(bounds) <= set(options.bounds().get(name, ())), \
                f"{where}: option {name!r} drops {base.__name__}'s bounds"


def test_create_validates_through_the_registry():
    with pytest.raises(OptionError, match=r"strategy 'sasrec': option 'dim' \(60\) must be divisible by 'heads'"):
        STRATEGIES.options("sasrec", dim=60, heads=7)
    assert STRATEGIES.options("sasrec", dim=None).dim == 64  # None falls back to the default


def test_describe_lists_defaults():
    assert ("heads", "int, >= 1", "2") in DemoOptions.describe()
    assert ("dropout", "float, in [0, 1)", "0.1") in DemoOptions.describe()
    assert ("width", "int", "4") in DemoOptions.describe()
    assert ("mode", "'a' | 'b'", "'a'") in DemoOptions.describe()


def test_third_party_plugin_found_through_entry_point(tmp_path, monkeypatch):
    """A package installed elsewhere registers a dataset via the `fusionbench.datasets` entry point."""
    pkg = tmp_path / "thirdparty_fb_plugin.py"
    pkg.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from fusionbench.options import PluginOptions
        from fusionbench.registry import DATASETS

        @DATASETS.register("thirdparty-demo")
        class Demo:
            """A dataset from a third-party package."""
            @dataclass(frozen=True)
            class Options(PluginOptions):
                size: int = 3
            def __init__(self, ctx, opts):
                self.opts = opts
    '''))
    dist = tmp_path / "thirdparty_fb_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-fb-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fusionbench.datasets]\ndemo = thirdparty_fb_plugin\n")
    builtin = DATASETS.names()  # load the built-ins before the registry module is patched
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry("dataset", "datasets", [])
    monkeypatch.setattr(sys.modules["fusionbench.registry"], "DATASETS", fresh)
    sys.modules.pop("thirdparty_fb_plugin", None)
    assert fresh.names() == ["thirdparty-demo"]
    assert fresh.create("thirdparty-demo", None, size="5").opts.size == 5
    assert DATASETS.names() == builtin and "thirdparty-demo" not in builtin  # the real one is untouched


def test_the_harness_imports_no_plugin_package():
    """Layering: plugins import the harness, never the reverse. Importing every harness module that runs,
    trains, evaluates or profiles a model loads neither ``strategies`` nor ``aggregators`` (the registries
    import them on first use)."""
    import subprocess

    harness = ["fusionbench.cli", "fusionbench.runner", "fusionbench.plan", "fusionbench.train", "fusionbench.evaluate",
               "fusionbench.devtools.profile", "fusionbench.perturb.plan", "fusionbench.strategy",
               "fusionbench.store.upgrade"]
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {harness!r}:
            importlib.import_module(name)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('strategies', 'aggregators')))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
