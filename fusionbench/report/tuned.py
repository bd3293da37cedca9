r"""``leaderboard --tuned NAME``: the seed runs of the configurations a tune chose, each beside its
strategy's default configuration, under a caption that states the tune's budget, and the default vs tuned
summary below the table.

Everything is read from stores. The tune's trials (runs whose ``tune`` column is NAME) are grouped into
their parts (one strategy configuration each, :func:`fusionbench.tune.part_key`), each part's configuration
is chosen again from the trials' stored validation histories (:func:`fusionbench.tune.choose`, the same
rule ``fusionbench tune`` applied), and its row is the finished ordinary runs of that configuration (any
seed). The budget in the caption comes from the trials' configs (``"tune"``: scheduler, grace period,
reduction factor, maximum epochs, metric, search) and their count, so an imported archive of the store
reports the same.

**Default rows.** A part's default configuration (:func:`fusionbench.tune.default_config`) is its trial
config with every searched key, ``train.epochs`` and ``train.select`` at what they resolve to without the
tune, and no ``tune`` entry: what ``fusionbench run`` runs with the part's fixed options. Its finished
ordinary runs in the defaults store (``--defaults``, e.g. the default board's store; default: the tune's
own) are found by the leaderboard's row identity (``row_key(current_names(config))``) and make one more
row, labelled ``STRATEGY (default, FIXED OPTIONS)``, that takes part in the table's marks like any row. A
part whose default configuration has no finished run there is listed as such, never filled from
elsewhere; a part whose chosen configuration is its default configuration (``pop``: nothing to search)
has one row for both.

**Default vs tuned** (:func:`default_vs_tuned`). Per part, on the tune's metric :math:`m` (test, in %),
with :math:`S_r` the seeds of row :math:`r` (the table's cells):

.. math::  \Delta = \bar m_\text{tuned} - \bar m_\text{default}, \qquad
           \bar m_r = \frac{1}{|S_r|} \sum_{s \in S_r} m(r, s),

and the leaderboard's paired tests of the tuned row against its default row
(:func:`fusionbench.report.leaderboard.compare_rows`: per-sample values averaged over the seeds both rows
share), Holm–Bonferroni over the parts of one table, one family per test kind; † when every test
applicable to the metric rejects at α after adjustment. The summary closes with the strategies ordered by
their default and by their tuned means, and how many pairs of strategies change order (untested: read the
tests above, and the board's marks, before calling a swap real).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from fusionbench.errors import UserInputError
from fusionbench.registry import UnknownPluginError
from fusionbench.report.collect import (
    Column,
    Run,
    current_names,
    load_ranks,
    options_off_default,
    parse_column,
    row_key,
    seed_values,
    short_value,
)
from fusionbench.report.leaderboard import MARK, Cell, Leaderboard, Row, compare_rows
from fusionbench.report.significance import ALPHA, SAMPLE_TESTS, Comparison, adjust
from fusionbench.store import ResultStore


def _head(config: dict) -> str:
    return config["strategy"] + (f" + {config['aggregator']}" if config.get("aggregator") else "")


def _fixed_text(config: dict) -> str:
    """The options of an ordinary run config that differ from ``fusionbench run``'s defaults, as a row
    label lists them (``train.precision=bf16``); empty when a plugin is not installed here."""
    return ", ".join(f"{k}={short_value(v)}" for k, v in (options_off_default(config) or {}).items())


@dataclass
class TunedPart:
    """One part of a tune as the board reads it: its ``label`` (strategy and aggregator, and the options it
    fixed away from their defaults where two parts share a strategy), its searched keys, its finished
    trials, the ordinary run configs of its chosen trial (``None``: no trial finished) and of its default
    configuration (``None``: it does not resolve here, a plugin is not installed), whether a trial was
    made at the default point (``fusionbench tune`` makes it first unless it lies outside the space), and
    what the finished trials cost (how many ASHA stopped, their epochs and wall time, all together), and
    the best validation value of the tune's metric of its chosen trial and of its default trial."""

    label: str
    searched: tuple[str, ...]
    finished: int
    chosen: Optional[dict]
    default: Optional[dict]
    default_tried: bool = False      # a trial was made at the default point
    stopped: int = 0                 # finished trials that ASHA stopped
    epochs: int = 0                  # epochs the finished trials trained, together
    seconds: float = 0.0             # their wall time, together (resumed processes included)
    chosen_valid: Optional[float] = None    # the chosen trial's best validation value of the tune's metric
    default_valid: Optional[float] = None   # the default trial's (None: none finished)
    strategy: str = ""                      # the part's strategy (its label may add aggregator and options)

    @property
    def tuned_key(self) -> Optional[str]:
        return None if self.chosen is None else row_key(current_names(self.chosen))

    @property
    def default_key(self) -> Optional[str]:
        return None if self.default is None else row_key(current_names(self.default))

    @property
    def default_is_chosen(self) -> bool:
        """The chosen configuration is the default one: one row (the same runs) for both."""
        return self.default is not None and self.tuned_key == self.default_key

    @property
    def default_label(self) -> str:
        """The default row's label: ``sasrec (default)``, ``difsr (default, train.precision=bf16)``."""
        fixed = _fixed_text(self.default)
        return f"{_head(self.default)} (default{', ' + fixed if fixed else ''})"

    def chosen_text(self) -> str:
        """The chosen values of the searched keys (``train.lr=0.00248, dim=64``)."""
        from fusionbench.tune import point_of

        if self.chosen is None:
            return "-"
        if not self.searched:
            return "(defaults: nothing to search)"
        return ", ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}"
                         for k, v in point_of(self.chosen, list(self.searched)).items())


@dataclass
class TunedBoard:
    """What ``leaderboard --tuned`` reads: the tune's settings (a trial's ``"tune"`` entry), its parts, the
    config hashes of the chosen configurations' finished seed runs (in the tune's store), the store the
    default rows were looked for in and their finished runs there (:attr:`Run.source` = that store), and
    the labels of parts without any finished seed run."""

    name: str
    tune: dict
    parts: list[TunedPart]
    seed_runs: list[Run]
    defaults: ResultStore
    default_runs: list[Run]
    unshown: list[TunedPart]

    @property
    def hashes(self) -> tuple[str, ...]:
        """The config hashes of the chosen configurations' finished seed runs (the board's rows)."""
        return tuple(run.config_hash for run in self.seed_runs)

    @property
    def column(self) -> Column:
        """The tune's metric, the headline of the default vs tuned summary."""
        return parse_column(self.tune["metric"], "the tune's metric")

    @property
    def labels(self) -> dict[str, str]:
        """Row key -> label of every default row (``build_leaderboards(labels=...)``)."""
        found = {row_key(run.config) for run in self.default_runs}
        return {p.default_key: p.default_label for p in self.parts if p.default_key in found}

    def caption(self, with_defaults: bool = True) -> str:
        """The line above a tuned leaderboard: how the configurations were chosen and with what budget, and
        (``with_defaults``: the default rows are shown) where the default rows come from and at what epoch
        budget they trained."""
        tune = self.tune
        shown = with_defaults and bool(self.labels)
        counts = [(p.label, p.finished, bool(p.searched)) for p in self.parts]
        searched = sorted({n for _, n, has_space in counts if has_space})
        trials = (f"{searched[0]} trials per strategy" if len(searched) == 1
                  else "trials per strategy: " + ", ".join(f"{label} {n}" for label, n, s in counts if s))
        fixed = [label for label, _, has_space in counts if not has_space]
        untried = [p.label for p in self.parts if p.searched and not p.default_tried]
        first = " including the default configuration" + (f" (but for {', '.join(untried)})" if untried else "")
        rows = "each row not labelled `(default…)`" if shown else "each row"
        text = (f"Tuned (`{self.name}`): {rows} is the configuration chosen for its strategy by validation "
                f"{tune['metric']} alone, from {trials}{first}" + (f" ({', '.join(fixed)}: one, nothing to search)"
                                                                   if fixed else "")
                + f", {tune['search']} search, {tune['scheduler'].upper()} "
                f"scheduler (grace period {tune['grace_epochs']} epoch{'s' if tune['grace_epochs'] != 1 else ''}, "
                f"reduction factor {tune['reduction_factor']}), at most {tune['max_epochs']} epochs per trial and per "
                "seed run; the trials ranked no test sample, and test metrics were read only for the seed runs below.")
        if shown:
            text += (" Rows labelled `(default…)` are the strategies' default configurations (every searched option "
                     f"at its default, as without the tune): ordinary runs read from {self.defaults.path}"
                     + self._epochs_note() + ".")
        if self.unshown:
            text += f" Not shown (no finished seed run yet): {', '.join(self._pending(p) for p in self.unshown)}."
        return text

    def _pending(self, part: TunedPart) -> str:
        """``lightgcn (chosen so far: dim=64, train.lr=0.00728; validation NDCG@20 3.52 %, the default
        trial's 3.40 %)``, or the label alone while no trial has finished."""
        if part.chosen is None:
            return part.label
        valid = f"validation {self.tune['metric']} {100 * part.chosen_valid:.2f} %"
        if part.default_valid is not None and not part.default_is_chosen:
            valid += f", the default trial's {100 * part.default_valid:.2f} %"
        return f"{part.label} (chosen so far: {part.chosen_text()}; {valid})"

    def _epochs_note(self) -> str:
        """``; they trained at their own epoch budget (train.epochs 200), the tuned seed runs at most the
        tune's 50 epochs`` when a shown default row's ``train.epochs`` exceeds the tune's maximum."""
        shown = set(self.labels)
        longer: dict[int, list[str]] = defaultdict(list)
        for part in self.parts:
            epochs = part.default["train"]["epochs"] if part.default_key in shown else 0
            if epochs > self.tune["max_epochs"]:
                longer[epochs].append(part.label)
        if not longer:
            return ""
        budgets = (f"train.epochs {next(iter(longer))}" if len(longer) == 1 else "train.epochs " + ", ".join(
            f"{epochs} ({', '.join(labels)})" for epochs, labels in sorted(longer.items(), reverse=True)))
        return (f"; they trained at their own epoch budget ({budgets}, with early stopping), while the tuned seed "
                f"runs were capped at the tune's {self.tune['max_epochs']} epochs")


def tuned_board(store: ResultStore, name: str, defaults: ResultStore) -> TunedBoard:
    """The parts of tune ``name`` in ``store``, the finished seed runs of their chosen configurations, and
    the finished runs of their default configurations in ``defaults``. A tune the store lacks, or one
    without any seed run, is an error naming ``--tuned``."""
    from fusionbench.store import canonical_json
    from fusionbench.tune import choose, chosen_config, default_config, part_key, point_of, stored_trials, tunes_in

    trials = stored_trials(store, name)
    if not trials:
        there = tunes_in(store)
        raise UserInputError(f"--tuned {name}: no trials of a tune named {name!r} in {store.path}; "
                             + (f"tunes there: {', '.join(there)}" if there else "it holds no tune"))
    members: dict[str, list] = defaultdict(list)
    for trial in trials:
        members[part_key(trial.config)].append(trial)
    parts = []
    for group in members.values():
        config, chosen = group[0].config, choose(group)
        try:
            default = default_config(config)
        except (UserInputError, UnknownPluginError):
            default = None
        searched = list(config["tune"]["space"])
        point = None if default is None else canonical_json(point_of(default, searched))
        at_default = [t for t in group if canonical_json(point_of(t.config, searched)) == point]
        tried = bool(at_default)
        default_trial = choose(at_default)
        ended = [t for t in group if t.status in ("done", "failed")]
        parts.append(TunedPart(_head(config), tuple(searched), len(ended),
                               None if chosen is None else chosen_config(chosen), default, tried,
                               stopped=sum(bool(t.asha_stopped) for t in ended),
                               epochs=sum(len(t.history) for t in ended),
                               seconds=sum(t.wall_seconds or 0.0 for t in ended),
                               chosen_valid=None if chosen is None else chosen.best(),
                               default_valid=None if default_trial is None else default_trial.best(),
                               strategy=config["strategy"]))
    heads = [part.label for part in parts]
    for part in parts:
        fixed = _fixed_text(part.default) if part.default is not None else ""
        if fixed and heads.count(_head(part.default)) > 1:
            part.label += f" ({fixed})"
    seed_runs = _finished_runs(store, {p.tuned_key for p in parts if p.chosen is not None})
    if not seed_runs:
        raise UserInputError(f"--tuned {name}: no seed run of its chosen configurations has finished in {store.path} "
                             "(rerun the `fusionbench tune` command: it runs them)")
    found = {row_key(run.config) for run in seed_runs}
    unshown = [p for p in parts if p.tuned_key not in found]
    default_runs = _finished_runs(defaults, {p.default_key for p in parts
                                             if p.default is not None and not p.default_is_chosen})
    return TunedBoard(name, trials[0].config["tune"], parts, seed_runs, defaults, default_runs, unshown)


def _finished_runs(store: ResultStore, keys: set[str]) -> list[Run]:
    """The finished, clean, ordinary runs of ``store`` whose row identity is one of ``keys``
    (:attr:`Run.source` = ``store``)."""
    table = store.runs(status="done")
    runs = []
    for row in table[table.tune.isna()].itertuples():
        config = current_names(json.loads(row.config))
        if row_key(config) in keys and "perturbation" not in config:
            runs.append(Run(int(row.id), row.config_hash, int(row.seed), config, source=store))
    return runs


# -- default vs tuned ------------------------------------------------------------------------------
@dataclass
class DefaultVsTuned:
    """One part in the default vs tuned summary: its tuned row and default row on the tune's metric only
    (``values``: per seed, fractions; ``cells``: mean and std in %), the tests of tuned against default
    (``comparisons``, Holm-adjusted over the table's parts), or ``missing``: why there is no default row."""

    part: TunedPart
    tuned: Row
    default: Optional[Row] = None
    comparisons: tuple[Comparison, ...] = ()
    missing: str = ""

    @property
    def difference(self) -> Optional[float]:
        """Tuned minus default mean, in percentage points (0 when the default was chosen)."""
        if self.part.default_is_chosen:
            return 0.0
        if self.default is None:
            return None
        name = next(iter(self.tuned.cells))
        return self.tuned.cells[name].mean - self.default.cells[name].mean

    @property
    def significant(self) -> bool:
        """Every per-sample test rejects at α after Holm (as a † on the board)."""
        sample = [c for c in self.comparisons if c.test in SAMPLE_TESTS]
        return bool(sample) and all(c.significant for c in sample)


def _metric_row(store: ResultStore, board_row: Row, column: Column, ranks: dict[str, np.ndarray]) -> Row:
    values = seed_values(store, board_row.group.runs, ranks[board_row.group.key], column)
    cell = Cell(100 * values.mean(), 100 * values.std(ddof=1) if len(values) > 1 else math.nan)
    return Row(board_row.group, board_row.proposed, {column.name: values}, {column.name: cell})


def default_vs_tuned(store: ResultStore, board: Leaderboard, tuned: TunedBoard,
                     ranking: str = "all") -> list[DefaultVsTuned]:
    """Per part whose tuned row is on ``board``: its tuned and default rows on the tune's metric and the
    paired tests of one against the other (module docstring), Holm over the parts compared."""
    column = tuned.column
    rows = {row.group.key: row for row in board.rows}
    looked_for = {row_key(run.config) for run in tuned.default_runs}
    where = f"dataset {board.dataset!r}, protocol {board.protocol!r}"
    entries = []
    for part in tuned.parts:
        tuned_row = rows.get(part.tuned_key)
        if tuned_row is None:
            continue
        default_row = rows.get(part.default_key) if not part.default_is_chosen else None
        pair = [r for r in (tuned_row, default_row) if r is not None]
        ranks = load_ranks(store, [r.group for r in pair], where, ranking)
        pair = [_metric_row(store, r, column, ranks) for r in pair]
        entry = DefaultVsTuned(part, pair[0])
        if part.default_is_chosen:
            entry.missing = "chosen"
        elif part.default is None:
            entry.missing = "unresolved"
        elif default_row is None:
            entry.missing = "left out" if part.default_key in looked_for else "no runs"
        else:
            entry.default = pair[1]
            entry.comparisons = tuple(compare_rows(pair[0], pair[1], column, ranks))
        entries.append(entry)
    adjust([c for entry in entries for c in entry.comparisons])
    return entries


def _mean_text(row: Optional[Row]) -> str:
    if row is None:
        return "-"
    cell = next(iter(row.cells.values()))
    return f"{cell.mean:.2f}" + ("" if math.isnan(cell.std) else f" ± {cell.std:.2f}")


def _p_text(comparisons: Sequence[Comparison], test: str) -> str:
    found = [c.p_holm for c in comparisons if c.test == test and not math.isnan(c.p_holm)]
    return f"{found[0]:.3g}" if found else "-"


def render_summary(entries: Sequence[DefaultVsTuned], tuned: TunedBoard) -> str:
    """The default vs tuned summary in Markdown: an introduction stating the tests, one line per part, the
    parts without a default row and why, and the strategies ordered by default and by tuned means."""
    if not entries:
        return ""
    column = tuned.column
    tests = SAMPLE_TESTS if column.metric == "HR" else SAMPLE_TESTS[:2]
    compared = [e for e in entries if e.default is not None]
    body = []
    for e in entries:
        difference = e.difference
        diff = "-" if difference is None else f"{difference:+.2f}" + (f" {MARK}" if e.significant else "")
        default = "= tuned" if e.part.default_is_chosen else _mean_text(e.default)
        seeds = e.comparisons[0].seeds_text if e.comparisons else "-"
        body.append([e.part.label, default, _mean_text(e.tuned), diff, seeds,
                     *(_p_text(e.comparisons, t) for t in tests), e.part.chosen_text()])
    names = {"ttest": "t-test", "wilcoxon": "Wilcoxon", "mcnemar": "McNemar"}
    table = tabulate(body, headers=["strategy", f"default {column.name}", f"tuned {column.name}", "tuned − default",
                                    "paired on", *(f"p {names[t]} (Holm)" for t in tests), "chosen"],
                     tablefmt="github", disable_numparse=True)
    intro = (f"Default vs tuned, test {column.name} (the tune's metric) in %: mean ± std over each row's seeds, as in "
             "the table; tuned − default in percentage points. The tests pair the tuned row with its default row over "
             "the test samples (per-sample values averaged over the seeds both share); p adjusted by Holm–Bonferroni "
             f"over the {len(compared)} strateg{'y' if len(compared) == 1 else 'ies'} compared, per test; {MARK}: "
             f"every test rejects at α = {ALPHA}. Chosen: the tuned configuration's searched values.")
    notes = []
    why = {"no runs": f"No finished run of the default configuration in {tuned.defaults.path}",
           "left out": "Default row left out by --strategy / --where",
           "unresolved": "Default configuration not resolved here (a plugin is not installed)",
           "chosen": "The chosen configuration is the default one (one row, the same runs, for both)"}
    for reason, text in why.items():
        labels = [e.part.label for e in entries if e.missing == reason]
        if labels:
            notes.append(f"{text}: {', '.join(labels)}.")
    ordered = [e for e in entries if e.default is not None or e.part.default_is_chosen]
    if len(ordered) > 1:
        default_mean = {e.part.label: (e.tuned if e.part.default_is_chosen else e.default).cells[column.name].mean
                        for e in ordered}
        tuned_mean = {e.part.label: e.tuned.cells[column.name].mean for e in ordered}
        labels = list(default_mean)
        pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
        swapped = sum((default_mean[a] - default_mean[b]) * (tuned_mean[a] - tuned_mean[b]) < 0 for a, b in pairs)
        notes.append(f"By default {column.name}: {' > '.join(sorted(labels, key=lambda s: -default_mean[s]))}. "
                     f"By tuned {column.name}: {' > '.join(sorted(labels, key=lambda s: -tuned_mean[s]))}. "
                     f"Pairs of strategies in the other order after tuning: {swapped} of {len(pairs)}.")
    return "\n".join([intro, "", table, "", *notes]) + "\n"


# -- tuning cost -----------------------------------------------------------------------------------
@dataclass
class PartCost:
    """One part's tune against one run of its default configuration: ``runs`` finished runs of that
    configuration were found (the default rows' runs; the seed runs where the default was chosen), which
    trained ``epochs`` epochs in ``seconds`` of wall time on average (``nan`` when none was found)."""

    part: TunedPart
    runs: int
    epochs: float
    seconds: float

    @property
    def in_runs_by_epochs(self) -> float:
        r"""The trials' epochs in default runs, :math:`\sum_t E_t / \bar E_\text{default}`."""
        return self.part.epochs / self.epochs if self.runs else math.nan

    @property
    def in_runs_by_time(self) -> float:
        """The trials' wall time in default runs (the same ratio in seconds)."""
        return self.part.seconds / self.seconds if self.runs and self.seconds > 0 else math.nan


def tune_costs(store: ResultStore, tuned: TunedBoard, strategies: Sequence[str] = ()) -> list[PartCost]:
    """Per part with a finished trial (of ``strategies``; empty: of any), its :class:`PartCost`. Run
    lengths and wall times are the stored ones (``history`` entries, ``wall_seconds``) of the default
    configuration's finished runs: those of the default rows (in :attr:`TunedBoard.defaults`), or the seed
    runs (in ``store``) of a part whose chosen configuration is its default."""
    tables: dict[int, pd.DataFrame] = {}

    def measured(run: Run) -> tuple[int, float]:
        source = run.source if run.source is not None else store
        if id(source) not in tables:
            tables[id(source)] = source.runs(status="done").set_index("id")
        row = tables[id(source)].loc[run.run_id]
        wall = row.wall_seconds
        return len(json.loads(row.history or "[]")), math.nan if wall is None or wall != wall else float(wall)

    costs = []
    for part in tuned.parts:
        if not part.finished or (strategies and part.strategy not in strategies):
            continue
        if part.default_is_chosen:
            runs = [run for run in tuned.seed_runs if row_key(run.config) == part.tuned_key]
        else:
            runs = [run for run in tuned.default_runs if row_key(run.config) == part.default_key]
        found = [measured(run) for run in runs]
        costs.append(PartCost(part, len(found), float(np.mean([e for e, _ in found])) if found else math.nan,
                              float(np.mean([w for _, w in found])) if found else math.nan))
    return costs


def render_costs(costs: Sequence[PartCost]) -> str:
    """The tuning cost table in Markdown, with a line saying what each column is."""
    if not costs:
        return ""

    def number(value: float, digits: int) -> str:
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    body = [[c.part.label, f"{c.part.finished} ({c.part.stopped})", str(c.part.epochs),
             f"{c.part.seconds / 60:.1f}", number(c.epochs, 1), number(c.seconds / 60, 1),
             number(c.in_runs_by_epochs, 2), number(c.in_runs_by_time, 2)] for c in costs]
    table = tabulate(body, headers=["strategy", "trials (ASHA-stopped)", "trial epochs", "trial minutes",
                                    "default run epochs", "default run minutes", "tune / default run (epochs)",
                                    "tune / default run (time)"], tablefmt="github", disable_numparse=True)
    intro = ("Tuning cost per strategy, from the stored runs: the finished trials' epochs and wall time, all "
             "together (resumed processes included), beside one run of the strategy's default configuration (the "
             "mean over its runs in the table above; `-`: none has finished), and the tune in such runs. The seed "
             "runs of the chosen configuration come on top. Wall times are those of the machine that ran them, "
             "beside whatever else it ran at the time; the ratio in epochs does not depend on that (an epoch's cost "
             "does vary with the searched width and depth).")
    return f"{intro}\n\n{table}\n"
