"""The docs stay true to the code: docs/strategies.md is what `fusionbench list --format md` prints."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.options import bounds_text
from fusionbench.reference import COMMAND, harness_groups, strategies_markdown
from fusionbench.registry import AGGREGATORS, STRATEGIES
from fusionbench.runner import OPTION_GROUPS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def listed_options(options) -> str:
    """How the reference lists a plugin's options: `name=default`, then its bounds where it has some."""
    bounds = options.bounds()
    return ", ".join(f"`{field}={default}`" + (f" {bounds_text(bounds[field])}" if field in bounds else "")
                     for field, _, default in options.fields())


def test_docs_strategies_md_is_the_generated_reference():
    out = CliRunner().invoke(main, ["list", "--format", "md"], catch_exceptions=False)
    assert out.exit_code == 0 and out.output == strategies_markdown()
    assert (DOCS / "strategies.md").read_text() == out.output, \
        f"docs/strategies.md is stale: regenerate it with `{COMMAND}` (from the repository root)"


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_the_reference_has_one_row_per_strategy_with_its_own_paper_stage_options_and_training(name):
    cls = STRATEGIES.get(name)
    assert cls.__dict__.get("paper") and cls.__dict__.get("notes"), \
        f"strategy {name!r} must state its own `paper` and `notes` (docs/strategies.md reads them)"
    rows = [line for line in strategies_markdown().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1
    options = listed_options(cls.Options)
    training = ", ".join(f"`{key}={value}`" for key, value in cls.train_defaults.items()) or "harness"
    assert rows[0].startswith(f"| `{name}` | {cls.paper} | {cls.fusion_stage} | ")
    assert f"| {options} | {training} |" in rows[0]
    assert rows[0].count(" | ") == 6            # a '|' in the notes would split the row


def test_the_reference_names_every_aggregator_with_its_options():
    text = strategies_markdown()
    for name in AGGREGATORS.names():
        options = listed_options(AGGREGATORS.get(name).Options)
        assert any(line.startswith(f"| `{name}` |") and line.endswith(f"| {options} |") for line in text.splitlines())


def test_list_shows_every_option_group_of_the_harness_with_defaults_and_help():
    assert sorted(prefix for prefix, _, _ in harness_groups()) == sorted(OPTION_GROUPS)   # every --set group
    out = CliRunner().invoke(main, ["list"], catch_exceptions=False).output
    for prefix, _, options in harness_groups():
        assert f"  {prefix}.*: " in out
        for opt, tp, default in options.describe() if options is not None else []:
            assert options.HELP.get(opt), f"{prefix}.{opt} has no one-line help ({options.__name__}.HELP)"
            assert f"      {prefix}.{opt} ({tp}) = {default}  {options.HELP[opt]}\n" in out
    assert "      features.modalities (comma-separated list) = ()  " in out
    only = CliRunner().invoke(main, ["list", "train"], catch_exceptions=False).output
    assert "train.lr (float, > 0) = 0.001" in only and "features." not in only and "strategies:" not in only
    wrong = CliRunner().invoke(main, ["list", "strategies", "--format", "md"])
    assert wrong.exit_code == 2 and "--format md prints the whole" in wrong.output


def test_feature_options_table_names_every_option_with_its_default():
    from fusionbench.runner import FeatureOptions

    rows = [line for line in (DOCS / "features.md").read_text().splitlines() if line.startswith("| `")]
    for name, _, default in FeatureOptions.describe():
        row = [r for r in rows if r.startswith(f"| `{name}` |")]
        assert len(row) == 1, f"docs/features.md has no row for features.{name}"
        shown = "(all)" if default == "()" else f"`{default.strip(chr(39))}`" if default.startswith("'") else default
        assert row[0].split("|")[2].strip() == shown, f"docs/features.md: default of features.{name} should be {shown}"
