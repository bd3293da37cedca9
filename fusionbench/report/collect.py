"""Read finished runs from the results store and group them into report rows.

A *row* of a report is a run configuration up to its seed: runs whose resolved configs differ only in
``seed`` (and in the bookkeeping key ``dataset_checksum``) are the seeds of one row. Perturbed runs carry
``config["perturbation"] = {"name", "severity", "apply_to", "options"}``; the row identity leaves the
perturbation out too, so a perturbed row and the clean run of the same configuration share a key.

Row labels are short: ``strategy`` (``+ aggregator`` for graph strategies), then in parentheses every
option that differs from the defaults ``fusionbench run`` would resolve for that strategy (strategy
options bare, ``agg.*``, ``train.*``, ``features.*``, ``max_len``; dataset options are left out, the
table is per dataset and its data version is checked). A strategy the registry does not know (a plugin
that is not installed) lists the options that vary between its rows instead.

A row's *settings* are its resolved option values under the same keys (plus ``aggregator``), read from
the stored configs (:func:`setting_values`, :func:`option_view`); a key the row's strategy lacks reads ``n/a``.

Per-sample values are recomputed from the stored test ranks with :mod:`fusionbench.metrics`.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from fusionbench.data.splits import LEAKY_PROTOCOL
from fusionbench.errors import UserInputError
from fusionbench.metrics import METRICS, per_sample
from fusionbench.registry import UnknownPluginError
from fusionbench.store import UNSEEN_TEST, ResultStore, canonical_json, config_hash

RANKINGS = ("all", "unseen")  # --ranking: test ranks among all items, or among the items outside each history
LEAKY_LABEL = "test-selected (leaky)"
NOT_IDENTITY = ("seed", "perturbation", "dataset_checksum")  # config keys that do not define a row
NOT_SET = "n/a"  # an option the row's strategy does not have
_SECTIONS = {"strategy_options": "", "aggregator_options": "agg.", "train": "train.", "features": "features."}


@dataclass(frozen=True)
class Column:
    """One metric at one cutoff, e.g. ``Column("NDCG", 20)`` -> ``"NDCG@20"``."""

    metric: str
    k: int

    @property
    def name(self) -> str:
        return f"{self.metric}@{self.k}"


def parse_columns(metrics: str, ks: str) -> list[Column]:
    """``"HR,NDCG"`` x ``"5,20"`` -> columns HR@5, HR@20, NDCG@5, NDCG@20 (errors name the option)."""
    names = [m.strip().upper() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise UserInputError(f"--metrics must list some of {', '.join(METRICS)}, got {metrics!r}")
    try:
        cutoffs = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        cutoffs = []
    if not cutoffs or min(cutoffs) < 1:
        raise UserInputError(f"--k must be a comma-separated list of integers >= 1, got {ks!r}")
    return [Column(m, k) for m in names for k in cutoffs]


def parse_column(text: str, option: str) -> Column:
    """``"NDCG@20"`` -> ``Column("NDCG", 20)``; ``option`` names the CLI option in errors."""
    metric, sep, k = text.partition("@")
    if not sep or metric.upper() not in METRICS or not k.isdigit() or int(k) < 1:
        raise UserInputError(f"{option} must be METRIC@K with METRIC in {', '.join(METRICS)} and K >= 1, "
                             f"got {text!r}")
    return Column(metric.upper(), int(k))


@dataclass(frozen=True)
class Run:
    """A finished run as the reports read it. ``source`` is the store holding its ranks and metrics, for a
    report that reads two stores (``leaderboard --tuned --defaults``); ``None``: the report's store."""

    run_id: int
    config_hash: str
    seed: int
    config: dict
    source: Optional[ResultStore] = field(default=None, compare=False, repr=False)


@dataclass
class RunGroup:
    """The seeds of one report row: runs whose configs agree up to :data:`NOT_IDENTITY`."""

    key: str
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def config(self) -> dict:
        return self.runs[0].config

    @property
    def strategy(self) -> str:
        return self.config["strategy"]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(run.seed for run in self.runs)


def row_key(config: dict) -> str:
    """Canonical JSON of the config without seed, perturbation and dataset checksum."""
    return canonical_json({k: v for k, v in config.items() if k not in NOT_IDENTITY})


def open_store(path: Path, option: str = "--store") -> ResultStore:
    """Open an existing store; a missing or non-SQLite file is an error naming ``option``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{option} {path}: no such file")
    try:
        return ResultStore(path)
    except sqlite3.DatabaseError as err:
        raise UserInputError(f"{option} {path}: not a fusionbench results store ({err})") from None


@dataclass(frozen=True)
class Selection:
    """Which finished runs a report reads, besides its dataset and protocol: runs of ``strategies``
    (empty: all) whose options equal every ``where`` pair. Keys are option keys as row labels and
    ``--set`` name them (``update``, ``agg.relations``, ``train.epochs``, ``max_len``), ``aggregator``,
    ``seed``, or ``apply_to`` (a perturbed run's split; a clean run has none, so ``apply_to!=both`` keeps it); values
    are compared as JSON where they parse as JSON (``5`` = 5, ``true`` = True), else as text;
    ``at_default`` keys: only runs whose value of each is the default ``fusionbench run`` resolves for their
    strategy, aggregator, dataset and protocol (:func:`options_off_default`; a run without the option, or of
    a plugin not registered here, is kept), so a board of default configurations needs no list of the
    ablations to leave out; ``run_hashes`` (non-empty) keeps only the runs with these config hashes
    (``fusionbench compare``)."""

    strategies: tuple[str, ...] = ()
    where: tuple[tuple[str, str, bool], ...] = ()    # (key, value, equal): equal False for key!=value
    run_hashes: tuple[str, ...] = ()
    at_default: tuple[str, ...] = ()                 # option keys each kept run has at its default value

    @classmethod
    def parse(cls, strategies: Optional[str], where: Sequence[str] = (),
              at_default: Optional[str] = None) -> "Selection":
        """From ``--strategy a,b``, ``--where key=value`` or ``key!=value`` (repeatable) and
        ``--at-default KEY[,KEY...]``."""
        keys = parse_setting_keys(at_default, "--at-default") if at_default is not None else ()
        pairs = []
        for pair in where:
            key, sep, value = pair.partition("=")
            equal = not key.endswith("!")
            key = key.rstrip("!")
            if not sep or not key:
                raise UserInputError(f"--where expects key=value or key!=value, got {pair!r}")
            pairs.append((key, value, equal))
        names = tuple(s.strip() for s in (strategies or "").split(",") if s.strip())
        return cls(names, tuple(pairs), at_default=keys)

    def check_registered(self) -> None:
        """A strategy name that is not registered is an error (a typo must not pass as a row not run yet)."""
        from fusionbench.registry import STRATEGIES

        known = set(STRATEGIES.names())
        unknown = [name for name in self.strategies if name not in known]
        if unknown:
            raise UserInputError(f"--strategy {unknown[0]!r}: no such strategy; registered: {', '.join(sorted(known))}")

    def not_run(self, runs: Sequence["Run"]) -> tuple[str, ...]:
        """The strategies named by ``--strategy`` (in their order) that no run of ``runs`` belongs to: the
        rows a report lists as not run yet."""
        there = {run.config["strategy"] for run in runs}
        return tuple(name for name in self.strategies if name not in there)

    @staticmethod
    def not_run_line(names: Sequence[str], what: str = "finished run here matches") -> str:
        """The line a report prints under a table for the strategies ``names`` named by ``--strategy``
        without a run in it (empty when there are none)."""
        return f"\nNot run yet (named by --strategy, no {what}): {', '.join(names)}.\n" if names else ""

    def check_default_keys(self, runs: Sequence["Run"], where: str) -> None:
        """Every ``at_default`` key must be an option of some run, or of a strategy named by ``--strategy``
        (its runs may not exist yet), else an error naming it."""
        from fusionbench.registry import STRATEGIES

        there = {k for run in runs for k, v in option_view(run.config).items() if v is not None}
        sample = runs[0].config if runs else {"dataset": "beauty", "protocol": "loo"}
        for name in self.strategies:
            aggregator = getattr(STRATEGIES.get(name), "default_aggregator", None)
            there |= set(_default_options({"strategy": name, "dataset": sample["dataset"],
                                           "protocol": sample["protocol"], "aggregator": aggregator}) or {})
            there |= set(_only_when_set_defaults(name, aggregator))   # _default_options omits them
        for key in self.at_default:
            if key not in there:
                raise UserInputError(f"--at-default {key}: no run in {where} and no strategy named by --strategy "
                                     f"has an option {key!r}; options there: {', '.join(sorted(there))}")

    def off_default(self, config: dict, known: Optional[dict] = None) -> set[str]:
        """The ``at_default`` keys whose value in ``config`` is not the default its strategy resolves;
        ``known``: defaults already resolved, by (strategy, dataset, protocol, aggregator), filled here."""
        known = {} if known is None else known
        plugin = (config["strategy"], config["dataset"], config["protocol"], config.get("aggregator"))
        if plugin not in known:
            known[plugin] = _default_options(config)
        if known[plugin] is None:
            return set()
        return set(self.at_default) & set(options_off_default(config, known[plugin]))

    def apply(self, runs: list["Run"], where: str, extra: Sequence["Run"] = ()) -> list["Run"]:
        """The runs this selection keeps, among ``runs`` and ``extra`` (runs chosen elsewhere, e.g. read
        from another store: ``run_hashes`` does not apply to them, the strategies and ``where`` pairs do).
        A registered strategy without matching runs is left out (reports list it with :meth:`not_run`);
        an unregistered strategy name, a selection none of whose strategies has runs, and an option key no
        run has are errors."""
        if self.run_hashes:
            wanted = set(self.run_hashes)
            runs = [run for run in runs if run.config_hash in wanted]
        runs = [*runs, *extra]
        if self.strategies:
            there = {run.config["strategy"] for run in runs}
            self.check_registered()
            if not there & set(self.strategies):
                raise UserInputError(f"--strategy {self.strategies[0]!r}: no finished runs of it in {where}; "
                                     f"strategies there: {', '.join(sorted(there))}")
            runs = [run for run in runs if run.config["strategy"] in self.strategies]
        options = [{**option_view(run.config), "seed": run.seed,
                    "apply_to": (run.config.get("perturbation") or {}).get("apply_to")} for run in runs]
        for key, value, equal in self.where:
            if not any(key in flat for flat in options):
                known = sorted({k for flat in options for k in flat})
                raise UserInputError(f"--where {key}{'=' if equal else '!='}{value}: no run in {where} has an "
                                     f"option {key!r}; options there: {', '.join(known)}")
            kept = [(run, flat) for run, flat in zip(runs, options)
                    if (key in flat and option_matches(flat[key], value)) == equal]
            runs, options = [run for run, _ in kept], [flat for _, flat in kept]
        if self.at_default:
            self.check_default_keys(runs, where)
            known: dict = {}
            runs = [run for run in runs if not self.off_default(run.config, known)]
        if not runs:
            raise UserInputError(f"{where}: no finished run matches --strategy / --where / --at-default")
        return runs


def _comparable(text: str) -> Any:
    """An option value given as text, as the resolved config would hold it."""
    lowered = text.lower() if text.lower() in ("true", "false", "null") else text
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def option_matches(stored: Any, text: str) -> bool:
    """Whether a stored option value equals ``text`` as ``--where`` / ``--versus`` give it: JSON where it
    parses (``5`` = 5, ``true`` = True), else text; a list option (``features.modalities``) also as ``--set``
    writes it, comma-separated (``text,image`` = ["text", "image"]; empty = [])."""
    wanted = _comparable(text)
    if isinstance(stored, (list, tuple)) and not isinstance(wanted, list):
        wanted = [part.strip() for part in text.split(",") if part.strip()]
    return canonical_json(stored) == canonical_json(wanted)


def without_option(config: dict, key: str) -> dict:
    """The config with option ``key`` (as :func:`option_view` names it) left out: what two configs that
    differ only in that option share (``leaderboard --versus``)."""
    if key in ("aggregator", "max_len"):
        return {k: v for k, v in config.items() if k != key}
    for section, prefix in _SECTIONS.items():
        if prefix and key.startswith(prefix):
            name = key[len(prefix):]
            break
    else:
        section, name = "strategy_options", key
    out = dict(config)
    out[section] = {k: v for k, v in (config.get(section) or {}).items() if k != name}
    return out


def current_names(config: dict) -> dict:
    """A stored config with options that were folded into others under the current names (a run stored
    before ``store upgrade`` then labels and selects as the upgraded one will; ``upgrade.fold_mmsr_update``);
    a config no fold applies to stays as stored."""
    from fusionbench.store.upgrade import CannotTell, fold_mmsr_update

    try:
        return fold_mmsr_update(config)
    except CannotTell:
        return config


def done_runs(store: ResultStore, dataset: Optional[str], protocol: Optional[str],
              selection: Selection = Selection(), extra: Sequence[Run] = ()) -> list[Run]:
    """Every run with status ``done`` that is not a tune's trial, filtered by dataset and protocol (a value
    the store does not hold is an error naming the option and listing what is there) and by ``selection``.
    A trial (``fusionbench tune``) is a run with the store's ``tune`` column set: it ranked no test sample,
    and the reports read the chosen configuration's seed runs instead (``leaderboard --tuned``).
    ``extra``: finished runs of another store (their :attr:`Run.source`) to read beside, under the same
    filters but ``selection.run_hashes`` (:meth:`Selection.apply`)."""
    table = store.runs(status="done")
    if table.empty:
        raise UserInputError(f"--store {store.path}: no finished runs in it")
    table = table[table.tune.isna()]
    if table.empty:
        raise UserInputError(f"--store {store.path}: its finished runs are all trials of tunes, which are not "
                             "reported; `fusionbench tune` runs the chosen configurations on their seeds")
    extra = list(extra)
    for option, column, value in (("--dataset", "dataset", dataset), ("--protocol", "protocol", protocol)):
        if value is None:
            continue
        there = sorted(set(table[column]) | {run.config[column] for run in extra})
        if value not in there:
            scope = "" if column == "dataset" or dataset is None else f" of dataset {dataset!r}"
            raise UserInputError(f"{option} {value!r}: no finished runs{scope} in {store.path}; "
                                 f"{column}s there: {', '.join(there)}")
        table = table[table[column] == value]
        extra = [run for run in extra if run.config[column] == value]
    runs = [Run(int(r.id), r.config_hash, int(r.seed), current_names(json.loads(r.config))) for r in table.itertuples()]
    return selection.apply(runs, str(store.path), extra) if selection != Selection() or extra else runs


def perturbation_of(run: Run) -> Optional[dict]:
    """The run's perturbation record (``None`` for a clean run), checked against the schema."""
    record = run.config.get("perturbation")
    if record is None:
        return None
    missing = [f for f in ("name", "severity", "apply_to") if not isinstance(record, dict) or f not in record]
    if missing:
        raise UserInputError(f"run {run.config_hash}: config 'perturbation' lacks field {missing[0]!r} "
                             "(expected name, severity, apply_to, options)")
    return {"name": record["name"], "severity": float(record["severity"]), "apply_to": record["apply_to"],
            "options": record.get("options") or {}}


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Runs -> rows (seeds sorted), labelled with :func:`variant_labels`. Call
    :func:`check_one_data_version` first: runs on two data versions would share a row."""
    groups: dict[str, RunGroup] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        groups.setdefault(row_key(run.config), RunGroup(row_key(run.config))).runs.append(run)
    rows = list(groups.values())
    for row, label in zip(rows, variant_labels([row.config for row in rows])):
        row.label = label
    return rows


def check_one_data_version(runs: list[Run], where: str) -> None:
    """Runs compared with each other must have been made on the same data (one dataset checksum)."""
    versions = sorted({str(run.config.get("dataset_checksum")) for run in runs})
    if len(versions) > 1:
        raise UserInputError(f"{where}: runs were made on {len(versions)} versions of the data (dataset "
                             f"checksums {', '.join(versions)}); they cannot be compared sample by sample. "
                             "Keep one data version per store.")


def _flat_options(config: dict) -> dict[str, Any]:
    flat = {f"{prefix}{k}": v for section, prefix in _SECTIONS.items() for k, v in (config.get(section) or {}).items()}
    flat["max_len"] = config.get("max_len")
    return flat


def option_view(config: dict) -> dict[str, Any]:
    """The config's options under the keys ``--set`` uses (strategy options bare, ``agg.*``, ``train.*``,
    ``features.*``, ``max_len``) plus ``aggregator`` (``None`` for a strategy without one); an option the
    config holds only when set, at its default where the config leaves it out (:func:`_unset_defaults`)."""
    flat = _flat_options(config)
    return {**_unset_defaults(config, flat), **flat, "aggregator": config.get("aggregator")}


def parse_setting_keys(text: str, option: str = "--columns") -> tuple[str, ...]:
    """``"dim, train.lr"`` -> ``("dim", "train.lr")`` (repeats dropped); ``option`` names the CLI option."""
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not keys:
        raise UserInputError(f"{option} expects KEY[,KEY...] with keys as in --set (e.g. dim,train.lr), got {text!r}")
    return keys


def check_setting_keys(keys: Sequence[str], runs: list[Run], where: str, option: str = "--columns") -> None:
    """Every key must be an option of some run (see :func:`option_view`), else an error naming it."""
    there = {k for run in runs for k, v in option_view(run.config).items() if v is not None}
    for key in keys:
        if key not in there:
            raise UserInputError(f"{option} {key}: no run in {where} has an option {key!r}; options there: "
                                 f"{', '.join(sorted(there))}")


def setting_values(group: RunGroup, key: str) -> tuple[Any, ...]:
    """The distinct values of option ``key`` over the row's runs, in seed order; empty where the row's
    strategy has no such option (or it is ``None``, e.g. ``aggregator`` of a non-graph strategy). Seeds
    share every identity key, so more than one value can only come from keys outside :func:`row_key`."""
    values: dict[str, Any] = {}
    for run in group.runs:
        value = option_view(run.config).get(key)
        if value is not None:
            values.setdefault(canonical_json(value), value)
    return tuple(values.values())


def setting_text(values: tuple[Any, ...]) -> str:
    """:func:`setting_values` as cell text: ``n/a`` when empty, disagreeing seeds' values joined by ', '."""
    return ", ".join(short_value(v) for v in values) if values else NOT_SET


def _default_options(config: dict) -> Optional[dict[str, Any]]:
    """Options ``fusionbench run`` resolves for this strategy/aggregator with nothing set; ``None`` if a
    plugin is not registered here."""
    from fusionbench.runner import RunRequest, resolve

    request = RunRequest(strategy=config["strategy"], dataset=config["dataset"], protocol=config["protocol"],
                         aggregator=config.get("aggregator"))
    try:
        return _flat_options(json.loads(canonical_json(resolve(request))))
    except (UserInputError, UnknownPluginError):
        return None


def _only_when_set_defaults(strategy: str, aggregator: Optional[str]) -> dict[str, Any]:
    """The options of a strategy, its aggregator and the training that a resolved config holds only when
    set (``PluginOptions.ONLY_WHEN_SET``; :func:`_default_options` omits them), keyed as ``--set`` takes
    them, with their defaults."""
    from fusionbench.registry import AGGREGATORS, STRATEGIES
    from fusionbench.train import TrainOptions

    groups = [("", STRATEGIES.get(strategy).Options), ("train.", TrainOptions)]
    if aggregator is not None:
        groups.append(("agg.", AGGREGATORS.get(aggregator).Options))
    return {f"{prefix}{name}": default for prefix, options in groups
            for name, _, default in options.fields() if name in options.ONLY_WHEN_SET}


def _unset_defaults(config: dict, flat: dict[str, Any]) -> dict[str, Any]:
    """The defaults of the options held only when set that ``config`` (flattened as ``flat``,
    :func:`_flat_options`) leaves out: what a run stored before such an option existed ran with. Empty
    where a plugin is not registered here."""
    try:
        defaults = _only_when_set_defaults(config["strategy"], config.get("aggregator"))
    except UnknownPluginError:
        return {}
    return {key: value for key, value in defaults.items() if key not in flat}


def options_off_default(config: dict, defaults: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """The config's options (:func:`option_view` keys, ``aggregator`` left out) whose values differ from
    the defaults ``fusionbench run`` resolves for its strategy and aggregator (``defaults``, when already
    resolved by :func:`_default_options`), compared as canonical JSON; ``None`` when a plugin is not
    registered here."""
    defaults = _default_options(config) if defaults is None else defaults
    if defaults is None:
        return None
    flat = _flat_options(config)
    return {k: v for k, v in flat.items() if canonical_json(v) != canonical_json(defaults.get(k))}


def data_name(config: dict) -> str:
    """The dataset with its non-default options, e.g. ``synthetic (per_cell=64, preset=modal)``: runs on
    different data (other dataset options) never share a table."""
    from fusionbench.registry import DATASETS

    options = config.get("dataset_options") or {}
    try:
        defaults = DATASETS.options(config["dataset"]).as_dict()
    except (UserInputError, UnknownPluginError):
        defaults = {}
    changed = [f"{k}={short_value(v)}" for k, v in sorted(options.items()) if defaults.get(k) != v]
    return config["dataset"] + (f" ({', '.join(changed)})" if changed else "")


def short_value(value: Any) -> str:
    """Option value as label text: lists joined with '+'; the empty list, which the list options
    (``features.modalities``, MDSRec's ``channels``, a perturbation's ``modalities``) read as every
    channel, is ``all``."""
    if isinstance(value, list):
        return "+".join(map(str, value)) or "all"
    return str(value)


def variant_labels(configs: list[dict]) -> list[str]:
    """A short, unique label per row config (rules in the module docstring). Rows that would still
    share a label get their config hash appended."""
    flats = [_flat_options(c) for c in configs]
    labels = []
    for config, flat in zip(configs, flats):
        defaults = _default_options(config)
        if defaults is None:  # unknown plugin: show what varies among its rows
            same = [f for c, f in zip(configs, flats) if c["strategy"] == config["strategy"]]
            shown = [k for k in flat if len({canonical_json(f.get(k)) for f in same}) > 1]
        else:
            shown = [k for k in flat if canonical_json(flat[k]) != canonical_json(defaults.get(k))]
        head = config["strategy"] + (f" + {config['aggregator']}" if config.get("aggregator") else "")
        labels.append(head + (f" ({', '.join(f'{k}={short_value(flat[k])}' for k in shown)})" if shown else ""))
    clashing = {label for label in labels if labels.count(label) > 1}
    return [f"{label} [{config_hash(json.loads(row_key(c)))[:8]}]" if label in clashing else label
            for label, c in zip(labels, configs)]


def test_split(run: Run, ranking: str = "all") -> str:
    """The stored split that holds ``run``'s test ranks under ``ranking`` (:data:`RANKINGS`): ``test``; or
    for ``unseen``, ``test_unseen`` (recorded beside ``test`` by a run that ranked every item), or ``test``
    itself of a run made with ``train.exclude_history``."""
    if ranking == "all" or run.config["train"].get("exclude_history"):
        return "test"
    return UNSEEN_TEST


def load_ranks(store: ResultStore, groups: list[RunGroup], where: str, ranking: str = "all") -> dict[str, np.ndarray]:
    """Stored test ranks (under ``ranking``, :func:`test_split`; from each run's :attr:`Run.source`, else
    ``store``) of every group's runs, ``{group.key:
    [n_seeds, S]}`` (int64). All runs of one table must rank the same S samples (same split, same sample
    order), else an error says which."""
    ranks: dict[str, np.ndarray] = {}
    lengths: dict[int, str] = {}
    for group in groups:
        stacked = []
        for run in group.runs:
            split = test_split(run, ranking)
            source = run.source or store
            try:
                stacked.append(source.ranks(run.run_id, split))
            except KeyError:
                if split == UNSEEN_TEST:
                    raise UserInputError(
                        f"run {run.config_hash} ({group.label}, seed {run.seed}) has no ranks among unseen items in "
                        f"{source.path}: it finished before they were recorded, or ranked under {LEAKY_PROTOCOL} "
                        "(python reports/exclude_history_probe.py ranks older runs both ways from their kept "
                        "weights; --strategy / --where leave runs out)") from None
                raise UserInputError(f"run {run.config_hash} is done but has no test ranks in {source.path}") from None
            lengths.setdefault(len(stacked[-1]), f"{group.label} seed {run.seed}")
        if len(lengths) > 1:
            listed = "; ".join(f"{who}: {n}" for n, who in lengths.items())
            raise UserInputError(f"{where}: stored test ranks have different lengths ({listed}); runs of one dataset "
                                 "and protocol must rank the same samples in the same order")
        ranks[group.key] = np.stack(stacked)
    return ranks


def per_sample_values(ranks: np.ndarray, column: Column) -> np.ndarray:
    """``[..., S]`` ranks -> ``[..., S]`` float64 per-sample ``column`` values (fractions)."""
    return per_sample(torch.from_numpy(ranks), column.metric, column.k).double().numpy()


def seed_values(store: ResultStore, runs: list[Run], ranks: np.ndarray, column: Column) -> np.ndarray:
    """One value per run ``[n_runs]`` (fractions): the mean over samples of the per-sample values, or,
    under ``ratio-paper``, the stored test metric, which that protocol defines as the metric's own
    maximum over epochs (the reference code's test selection)."""
    if runs and runs[0].config["protocol"] == LEAKY_PROTOCOL:
        values = []
        for run in runs:
            stored = (run.source or store).metrics(run.run_id, "test")
            if column.name not in stored:
                raise UserInputError(f"run {run.config_hash} ({LEAKY_PROTOCOL}) has no stored {column.name}; its "
                                     f"per-epoch maxima exist only for {', '.join(sorted(stored))} (check --k)")
            values.append(stored[column.name])
        return np.asarray(values, dtype=np.float64)
    return per_sample_values(ranks, column).mean(axis=-1)
