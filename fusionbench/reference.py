"""What ``fusionbench list`` prints, read from the code: the registered plugins, the harness's own option
groups, and the strategies and aggregators reference that is docs/strategies.md (``--format md``)."""
from __future__ import annotations

import sys
from typing import Iterator, Optional

from fusionbench.options import PluginOptions, bounds_text
from fusionbench.registry import AGGREGATORS, REGISTRIES, STRATEGIES


def summary(plugin: object) -> str:
    """The first paragraph of a plugin's docstring (else its module's), on one line."""
    doc = (plugin.__doc__ or sys.modules[plugin.__module__].__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def harness_groups() -> list[tuple[str, str, Optional[type[PluginOptions]]]]:
    """``(prefix, what it sets, options class or None)`` per option group of ``--set PREFIX.NAME=VALUE``;
    ``None``: the options belong to the chosen plugin (listed with it)."""
    from fusionbench.runner import FeatureOptions
    from fusionbench.train import TrainOptions

    return [
        ("train", "training, the same for every strategy (a strategy's own training defaults are listed with "
                  "it under strategies)", TrainOptions),
        ("features", "how modality tables are made, the same for every strategy that uses them "
                     "(docs/features.md)", FeatureOptions),
        ("data", "the chosen dataset's own options (listed with it under datasets)", None),
        ("agg", "the chosen aggregator's own options (listed with it under aggregators; graph strategies only)",
         None),
    ]


def plugin_lines(kind: str) -> Iterator[str]:
    """``fusionbench list KIND`` for a registry: every plugin, its summary, options and defaults."""
    registry = REGISTRIES[kind]
    yield f"{kind}:"
    for name in registry.names():
        obj = registry.get(name)
        yield f"  {name}: {summary(obj)}"
        for opt, tp, default in obj.Options.describe():
            help_text = obj.Options.HELP.get(opt, "")
            yield f"      {opt} ({tp}) = {default}" + (f"  {help_text}" if help_text else "")
        for opt, default in getattr(obj, "train_defaults", {}).items():
            yield f"      train.{opt} = {default}  (this model's training default)"
        searched = search_text(kind, name)
        if searched:
            yield f"      searched by fusionbench tune: {searched}"


def search_text(kind: str, name: str) -> str:
    """What ``fusionbench tune`` searches for a strategy (with its default aggregator's ``agg.*`` keys) or
    an aggregator (its own keys, as ``agg.*``); empty for other plugins (:mod:`fusionbench.space`)."""
    from fusionbench.space import aggregator_space, describe_space, strategy_space

    if kind == "strategies":
        return describe_space(strategy_space(name))
    if kind == "aggregators":
        space = aggregator_space(AGGREGATORS.get(name))
        return describe_space(space) if space else ""
    return ""


def group_lines(prefixes: Optional[list[str]] = None) -> Iterator[str]:
    """The harness's option groups (all, or those of ``prefixes``): each option with its type, default
    and one line of help."""
    if prefixes is None:
        yield "options: the harness's own option groups (--set GROUP.NAME=VALUE; a NAME without a group is a " \
              "strategy option)"
    for prefix, what, options in harness_groups():
        if prefixes is not None and prefix not in prefixes:
            continue
        yield f"  {prefix}.*: {what}"
        for opt, tp, default in options.describe() if options is not None else []:
            help_text = options.HELP.get(opt, "")
            yield f"      {prefix}.{opt} ({tp}) = {default}" + (f"  {help_text}" if help_text else "")


# -- docs/strategies.md ------------------------------------------------------------------------------
COMMAND = "fusionbench list --format md > docs/strategies.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _defaults(pairs) -> str:
    return ", ".join(f"`{key}={value}`" for key, value in pairs)


def _options(options: type[PluginOptions]) -> str:
    """``"`dim=64` >= 1, `dropout=0.5` in [0, 1), `norm='pre'`"``: every option, its default and its bounds."""
    bounds = options.bounds()
    return ", ".join(" ".join(filter(None, (f"`{name}={default}`", bounds_text(bounds.get(name, ())))))
                     for name, _, default in options.fields())


def strategies_markdown() -> str:
    """docs/strategies.md: every registered strategy and aggregator with its paper, options and defaults."""
    from fusionbench.train import TrainOptions

    harness = TrainOptions()
    lines = [
        "# Strategies",
        "",
        f"<!-- generated from the code by `{COMMAND}`: edit the strategy's class (`paper`, `notes`,",
        "`Options`, `train_defaults`) or the aggregator's, or fusionbench/reference.py, then regenerate;",
        "tests/test_docs.py fails while this page is stale -->",
        "",
        "Every registered strategy, its paper, where the modalities are fused, its options with their defaults",
        "and bounds (`--set name=value`; a value outside the bounds is an error naming them) and the training",
        "options (`--set train.name=value`) that its paper or reference code sets differently from the harness's",
        f"own (`lr={harness.lr}`, `batch_size={harness.batch_size}`, `epochs={harness.epochs}`, "
        f"`patience={harness.patience}`, no lr decay; \"harness\" where",
        "none differ). `fusionbench list` prints the same, with the harness's own option groups (`train.*`,",
        "`features.*`, `data.*`, `agg.*`). All of them take any set of named modality channels and replace",
        "absent features with a learned missing vector; ID-only ones (fusion stage `none`) skip feature",
        "extraction. Where each one departs from its paper or reference",
        "code: [departures.md](departures.md); the protocol of the graph-CF baselines (`pop`, `lightgcn`,",
        "`mmgcn`, `mgat`, `bm3`): [graph-cf.md](graph-cf.md).",
        "",
        "| strategy | paper | fusion stage | one causal pass | options (defaults, bounds) "
        "| training defaults (`train.*`) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        options = _options(cls.Options)
        training = _defaults(cls.train_defaults.items()) or "harness"
        lines.append(f"| `{name}` | {_cell(cls.paper)} | {cls.fusion_stage} | "
                     f"{'yes' if cls.causal_training else 'no'} | {options} | {training} | {_cell(cls.notes)} |")
    graph = [name for name in STRATEGIES.names() if STRATEGIES.get(name).default_aggregator]
    lines += [
        "",
        "## Graph aggregators",
        "",
        f"The graph aggregators of {', '.join(f'`{name}`' for name in graph)} (`--aggregator NAME`, options "
        "`--set agg.name=value`;",
        "MMSR Table 3). Each module of `aggregators/` names its paper and equation in its docstring; the sparse",
        "backend is in docs/dgl.md. `han`, `rgat` and `hgnn` compute MMSR's last layer for the last item's node",
        "only (`forward_rows`; an MMSR + `rgat` training step then takes 0.42× the time of the full last layer);",
        "on a CPU, `--set train.precision=bf16` cuts an MMSR epoch further",
        "(docs/performance.md).",
        "",
        "| aggregator | what it computes | options (defaults, bounds) |",
        "|---|---|---|",
    ]
    for name in AGGREGATORS.names():
        cls = AGGREGATORS.get(name)
        lines.append(f"| `{name}` | {_cell(summary(cls))} | {_options(cls.Options)} |")
    lines += [
        "",
        "## Search spaces",
        "",
        "What `fusionbench tune` searches ([tuning.md](tuning.md)): the shared knobs (`train.lr` for every strategy;",
        "`dropout`, `dim`, `layers` where its options have them) with the ranges the strategy keeps or replaces, its",
        "own key knobs (the strategy's `search_space`), and for graph strategies its default aggregator's `agg.*`",
        "knobs. A tune file's `space` table replaces any of them; what `set` fixes is not searched.",
        "",
        "Strategies:",
        "",
    ]
    lines += [f"- `{name}`: {search_text('strategies', name) or 'nothing (one trial at its defaults)'}"
              for name in STRATEGIES.names()]
    lines += ["", "Aggregators (searched as a graph strategy's aggregator):", ""]
    lines += [f"- `{name}`: {search_text('aggregators', name) or 'nothing'}" for name in AGGREGATORS.names()]
    return "\n".join(lines) + "\n"
