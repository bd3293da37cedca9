"""Registries and option dataclasses: clear errors, listing, third-party entry points."""
import dataclasses
import sys
import textwrap
from typing import Literal

import pytest

from fusionbench.options import OptionError, PluginOptions, require
from fusionbench.registry import DATASETS, STRATEGIES, Registry, UnknownPluginError


@dataclasses.dataclass(frozen=True)
class DemoOptions(PluginOptions):
    heads: int = 2
    dropout: float = 0.1
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    names: tuple[str, ...] = ()

    def check(self):
        require(self.heads >= 1, f"option 'heads' must be >= 1, got {self.heads}")


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


def test_create_validates_through_the_registry():
    with pytest.raises(OptionError, match=r"strategy 'sasrec': option 'dim' \(60\) must be divisible by 'heads'"):
        STRATEGIES.options("sasrec", dim=60, heads=7)
    assert STRATEGIES.options("sasrec", dim=None).dim == 64  # None falls back to the default


def test_describe_lists_defaults():
    assert ("heads", "int", "2") in DemoOptions.describe()
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
               "fusionbench.profile", "fusionbench.perturb.plan", "fusionbench.strategy", "fusionbench.upgrade"]
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {harness!r}:
            importlib.import_module(name)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('strategies', 'aggregators')))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
