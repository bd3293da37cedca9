"""docs/plugins.md stays true: its python blocks register a strategy and an aggregator that pass the contract
suites and train through the harness, and the page's `fusionbench run` commands run them."""
import inspect
import itertools
import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import test_aggregators_contract
import test_attr_encoding
import test_perturb
import test_strategy_contract
from fusionbench.cli import main
from fusionbench.registry import AGGREGATORS, STRATEGIES
from fusionbench.runner import RunRequest, run_experiment

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plugins.md"
STRATEGY, AGGREGATOR = "meanpool", "neighbour-mean"      # the names the page registers
BUILTIN_STRATEGIES, BUILTIN_AGGREGATORS = STRATEGIES.names(), AGGREGATORS.names()   # before the page registers

# a short run: the tiny synthetic testbed and small models (the page's commands keep their own flags)
TINY_DATA = {"n_users": "80", "n_codes": "3", "per_cell": "2", "max_len": "10"}
TINY_FEATURES = {"reduce": "pca", "n_clusters": "4", "k": "2"}
TINY_SETS = [a for k, v in {**{f"data.{k}": v for k, v in TINY_DATA.items()},
                            **{f"features.{k}": v for k, v in TINY_FEATURES.items()}}.items()
             for a in ("--set", f"{k}={v}")]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def page_commands(text: str) -> list[list[str]]:
    """The `fusionbench ...` lines of the page's plain code blocks, comments dropped."""
    lines = [line for block in re.findall(r"^```\n(.*?)^```$", text, flags=re.S | re.M) for line in block.splitlines()]
    return [shlex.split(line.split("#")[0])[1:] for line in lines if line.startswith("fusionbench ")]


def forget(registry, name):
    """Take a plugin out of a registry again (the registry has no public way: plugins never leave it in use)."""
    registry._items.pop(name, None)
    registry._origin.pop(name, None)


@pytest.fixture()
def page_plugins():
    """Runs the page's python blocks in one fresh module (as a user's file would be); their decorators register
    the example plugins, which are taken out again afterwards so that no other test sees them."""
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) == 2, "docs/plugins.md should hold the strategy block and the aggregator block"
    module = types.ModuleType("docs_plugins_example")
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), module.__dict__)
        assert STRATEGY in STRATEGIES.names() and AGGREGATOR in AGGREGATORS.names()
        yield module
    finally:
        forget(STRATEGIES, STRATEGY)
        forget(AGGREGATORS, AGGREGATOR)
        sys.modules.pop(module.__name__, None)


def registry_checks(modules, builtins):
    """``(function, other parameters)`` for every test of ``modules`` parametrized over a whole registry
    (``name`` over every built-in): the checks a newly registered plugin must pass. Tests parametrized over
    chosen names only (optional methods, named options) are left out."""
    for module in modules:
        for fname, fn in vars(module).items():
            if not fname.startswith("test_") or not callable(fn):
                continue
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
            grids = {m.args[0]: list(m.args[1]) for m in marks}
            if grids.get("name") != builtins or set(inspect.signature(fn).parameters) != set(grids):
                continue
            others = {k: v for k, v in grids.items() if k != "name" and "," not in k}
            if len(others) != len(grids) - 1:
                continue
            for values in itertools.product(*others.values()):
                yield fn, dict(zip(others, values))


def run_checks(name, modules, builtins, declared):
    ran, skipped = [], []
    checks = list(registry_checks(modules, builtins))
    assert len(checks) >= 8, "the contract suites' parametrization changed: update registry_checks"
    for fn, params in checks:
        try:
            fn(name=name, **params)
        except pytest.skip.Exception as skip:
            assert any(reason in str(skip) for reason in declared.values()), f"{fn.__name__}: undeclared skip {skip}"
            skipped.append(fn.__name__)
        else:
            ran.append(fn.__name__)
    return ran, skipped


def test_the_page_imports_the_base_classes_from_where_they_live(page_plugins):
    from strategies.base import Strategy

    assert issubclass(STRATEGIES.get(STRATEGY), Strategy)
    assert STRATEGIES.origin(STRATEGY) == AGGREGATORS.origin(AGGREGATOR) == "docs_plugins_example"


def test_the_example_strategy_passes_every_strategy_contract_check(page_plugins, monkeypatch):
    cls = STRATEGIES.get(STRATEGY)
    suites = [test_strategy_contract, test_perturb, test_attr_encoding]
    ran, skipped = run_checks(STRATEGY, suites, BUILTIN_STRATEGIES, cls.contract_skips)
    assert {"test_shapes", "test_gradient_reaches_every_parameter", "test_left_padding_invariance",
            "test_same_seed_same_output_and_reset_restores_init", "test_missing_modalities_give_finite_scores",
            "test_every_strategy_trains_on_either_encoding"} <= set(ran)
    assert skipped == ["test_shifted_channels_reach_every_strategy_that_uses_them"]   # the page's declared skip
    sources = "".join(Path(m.__file__).read_text() for m in suites)
    for check in cls.contract_skips:                                      # a misspelt key would skip nothing
        assert f'"{check}"' in sources or f"'{check}'" in sources, f"contract_skips names no check: {check!r}"
    if cls.causal_training:
        test_strategy_contract.test_causal_loss_equals_mean_prefix_loss(STRATEGY)
        test_strategy_contract.test_a_causal_batch_in_length_groups_gives_the_loss_and_gradients_of_one_pass(
            STRATEGY, monkeypatch)


def test_the_example_aggregator_passes_every_aggregator_contract_check(page_plugins):
    ran, skipped = run_checks(AGGREGATOR, [test_aggregators_contract], BUILTIN_AGGREGATORS, {})
    assert not skipped and {"test_padded_nodes_never_influence_real_nodes", "test_permutation_equivariance",
                            "test_no_pairwise_feature_tensor"} <= set(ran)


def test_the_example_strategy_trains_one_epoch_through_the_harness(page_plugins):
    request = RunRequest(strategy=STRATEGY, dataset="synthetic", dataset_options=dict(TINY_DATA),
                         feature_options=dict(TINY_FEATURES), train_options={"epochs": 1, "lr": 0.01})
    outcome = run_experiment(request, progress=False)
    assert outcome.config["strategy_options"] == {"dim": 32}
    assert sorted(STRATEGIES.create(STRATEGY, run_context(outcome.config)).project) == ["image", "text"]
    assert len(outcome.result.history) == 1
    assert all(0.0 <= value <= 1.0 for value in outcome.test.values()) and outcome.test["HR@20"] > 0


def run_context(config):
    from fusionbench.runner import build_context, load_data

    return build_context(config, load_data(config, None))


@pytest.mark.parametrize("strategy", [STRATEGY, "mmsr"])
def test_the_pages_run_commands_run(page_plugins, strategy):
    """Each `fusionbench run` line of the page that trains on `synthetic` (others name beauty, too long for a
    test) runs through the CLI, on the tiny testbed for one epoch; the beauty lines must at least resolve."""
    commands = [c for c in page_commands(PAGE.read_text()) if c[:1] == ["run"] and strategy in c]
    assert commands, f"docs/plugins.md shows no `fusionbench run` of {strategy}"
    for args in commands:
        if "--dataset" in args and args[args.index("--dataset") + 1] == "beauty":
            args = [a if a != "beauty" else "synthetic" for a in args]
        sets = TINY_SETS + (["--set", "dim=16", "--set", "agg.bias=false"] if strategy == "mmsr" else [])
        torch.manual_seed(0)
        out = CliRunner().invoke(main, [*args, *sets, "--epochs", "1", "--quiet"], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        assert "test" in out.output and (AGGREGATOR in out.output or strategy != "mmsr")


def test_list_shows_the_example_plugins(page_plugins):
    out = CliRunner().invoke(main, ["list"], catch_exceptions=False).output
    assert STRATEGY in out and AGGREGATOR in out and "dim (int, >= 1) = 32" in out
