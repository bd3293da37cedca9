"""The docs stay true to the registries."""
from pathlib import Path

import pytest

from fusionbench.registry import AGGREGATORS, STRATEGIES

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_table_names_every_strategy_with_its_stage(name):
    rows = [line for line in (DOCS / "strategies.md").read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"docs/strategies.md has no row for {name!r}"
    assert f"| {STRATEGIES.get(name).fusion_stage} |" in rows[0]
    options = ", ".join(f"`{field}={default}`" for field, _, default in STRATEGIES.get(name).Options.fields())
    training = ", ".join(f"`{key}={value}`" for key, value in STRATEGIES.get(name).train_defaults.items()) or "harness"
    assert f"| {options} | {training} |" in rows[0], \
        f"docs/strategies.md: the options and training defaults of {name!r} should read: {options} | {training}"


def test_strategy_table_names_every_aggregator():
    text = (DOCS / "strategies.md").read_text()
    assert all(f"`{a}`" in text for a in AGGREGATORS.names())


def test_feature_options_table_names_every_option_with_its_default():
    from fusionbench.runner import FeatureOptions

    rows = [line for line in (DOCS / "features.md").read_text().splitlines() if line.startswith("| `")]
    for name, _, default in FeatureOptions.describe():
        row = [r for r in rows if r.startswith(f"| `{name}` |")]
        assert len(row) == 1, f"docs/features.md has no row for features.{name}"
        shown = "(all)" if default == "()" else f"`{default.strip(chr(39))}`" if default.startswith("'") else default
        assert row[0].split("|")[2].strip() == shown, f"docs/features.md: default of features.{name} should be {shown}"
