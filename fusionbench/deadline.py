r"""``fusionbench sweep --deadline``: start a cell only when it is expected to finish before a deadline.

A machine lent for a fixed time (a batch job's wall-clock limit, a session) loses the run it is in the
middle of when the time is up. With a deadline the local engine asks, before each cell, how long the
cell will take and skips it when that is longer than the time left, going on with the cells after it:
a shorter cell further down the file still runs, and the skipped one stays "to run" in the store for the
next sweep.

How long a cell takes is read from the store it runs into, and from any other stores named with
``--estimate-from`` (a run present in several counts once), as the median wall time of the finished runs
that trained (not those that only evaluated kept weights, nor tune trials stopped early by ASHA):

1. of the same training configuration on other seeds (its ``runner.training_config`` but for the seed),
   else
2. of the same strategy, aggregator, dataset and protocol, else
3. of the same strategy and dataset (any aggregator or protocol), else
4. of the same strategy on other datasets, each run's wall time scaled by the ratio of the two datasets'
   interactions (a rough guide: an epoch's work grows with the training positions, the number of epochs
   and the cost per position vary by dataset as well).

In tiers 1-3, a causal strategy's runs count only those trained as this process trains its batches
(:func:`same_pass`: one pass or length groups, :mod:`fusionbench.length_groups`) when the tier holds any.

Each run counts with its wall time less the time its training waited for a core (its epochs'
``wait_seconds``, :mod:`fusionbench.cpu_share`: the wall time scaled by :math:`1 - \sum q / \sum W`
over the epochs that record it; runs without the record count with their wall time), so runs timed
beside other jobs do not inflate it; the estimate is that time over the share of a core a thread of the
sweep gets when the cell is admitted (:func:`fusionbench.cpu_share.core_share`, measured at most once a
minute): a cell admitted beside as many busy processes as cores is expected to take twice as long.
``--dry-run`` lists the times at a whole core.

A resumed cell needs the epochs it is expected to train still, at the same tier's median wall time per
epoch (each run's wall time over its epochs, so the final evaluation is spread over them): with
:math:`e` epochs in its checkpoint, :math:`\tilde E` the tier's median epoch count, :math:`s` early
stopping's count after those epochs (:func:`fusionbench.train.stale_epochs`), patience :math:`P` and
epoch budget :math:`E_{max}`,

.. math::
    \text{epochs left} = \min\big(E_{max} - e,\ \max(\tilde E - e,\ P - s)\big)

(0 once :func:`fusionbench.train.finished` holds): the epochs a typical run has beyond ``e``, at least
those early stopping still demands. Progress is counted in epochs, not in the wall time the checkpoint
has spent, which grows with whatever else shared the machine. The time per epoch is scaled by how fast
the cell's own epochs trained against the tier's (:func:`training_seconds_per_epoch`, each less its wait
for a core; in tier 4 the tier's scaled by the interactions as their wall times are): a cell may train
slower or faster than the runs it is estimated from when its configuration differs from theirs (a wider
model, another layer layout) or it was batched otherwise. A cell not started yet whose estimate comes
from runs of other settings (tiers 2-4) is scaled the same way by the pace of a started run of its own
settings on another seed (its checkpoint, in ``store``), where there is one: seeds 1 and 2 of a
configuration five times slower than its tier are costed at seed 0's pace while seed 0 is still training.

Every estimate names its basis (:class:`Estimate`): the tier it was read from and whose pace scaled it;
``--dry-run`` lists it per cell, and a deferred cell's reason carries it.

A cell is always started when it is done already, when it only evaluates (the kept weights of a trained
run, for a test-only perturbation; a checkpoint whose training has ended), or when no run of its
strategy gives an estimate (it may then end after the deadline). After the deadline no cell that trains
is started.
"""
from __future__ import annotations

import json
import re
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import pandas as pd
from tabulate import tabulate

from fusionbench import cpu_share
from fusionbench.data.splits import LEAKY_PROTOCOL
from fusionbench.errors import UserInputError
from fusionbench.length_groups import causal_pass
from fusionbench.plan import Cell, identify
from fusionbench.registry import STRATEGIES
from fusionbench.runner import load_data, training_config
from fusionbench.store import ResultStore, canonical_json
from fusionbench.train import TrainOptions, finished, read_checkpoint, stale_epochs

DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_deadline(text: str, now: Optional[float] = None) -> float:
    """``--deadline``: a duration from ``now`` (``"2h30m"``, ``"90m"``, ``"45s"``) or an ISO 8601 time
    (``"2026-12-06T19:00Z"``; local time without an offset) -> seconds since the epoch."""
    now = time.time() if now is None else now
    text = text.strip()
    match = DURATION.match(text)
    if match and any(match.groups()):
        hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return now + 3600 * hours + 60 * minutes + seconds
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserInputError(f"--deadline {text!r}: expected a duration such as 2h30m, 90m or 45s, or an ISO "
                             "time such as 2026-12-06T19:00Z") from None


SHARE_EVERY = 60.0
"""Seconds a measured share of a core stands for before :class:`Deadline` measures it again."""


def uncrowded_seconds(wall: float, history: list[dict]) -> float:
    r"""A finished run's wall time less the part its training waited for a core: ``wall`` scaled by
    :math:`1 - \sum q / \sum W` over the epochs of ``history`` that record their wait :math:`q`
    (``wait_seconds``) beside their wall time :math:`W` (``seconds``); ``wall`` where none does."""
    timed = [(entry["seconds"], entry["wait_seconds"]) for entry in history if "wait_seconds" in entry]
    spent = sum(seconds for seconds, _ in timed)
    if not spent:
        return wall
    return wall * max(0.0, 1.0 - sum(wait for _, wait in timed) / spent)


def training_seconds_per_epoch(history: list[dict]) -> Optional[float]:
    """The mean training time of the epochs of ``history`` that record it (``seconds``), each less the part
    it waited for a core (``wait_seconds``, where recorded); ``None`` when none records it."""
    spent = [entry["seconds"] - entry.get("wait_seconds", 0.0) for entry in history if "seconds" in entry]
    return sum(spent) / len(spent) if spent else None


def _without_seed(config: dict) -> str:
    return canonical_json({key: value for key, value in training_config(config).items() if key != "seed"})


def same_pass(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Of the runs of a causal strategy, those whose training batches were encoded as this process encodes
    them (``versions.causal_pass``, :mod:`fusionbench.length_groups`; a run without the record had one
    pass), when there are any: the grouped pass takes 0.5-0.9 of the one pass's time, by strategy. All of
    ``runs`` otherwise, and for other strategies."""
    if not STRATEGIES.get(config["strategy"]).causal_training:
        return runs
    passes = [json.loads(text or "{}").get("causal_pass", "whole") for text in runs["versions"]]
    mine = runs[[encoded == causal_pass() for encoded in passes]]
    return runs if mine.empty else mine


TIER_BASES = ("runs of its settings", "runs of other settings",
              "runs under other protocols or aggregators", "runs on other datasets, scaled by interactions")
"""What each tier of the module's docstring estimates from, as :attr:`Estimate.basis` begins."""


class Estimate(NamedTuple):
    """What a cell still needs, in seconds (``None``: no run to estimate from), and what the figure rests
    on (``basis``: a tier of :data:`TIER_BASES`, then whose pace scaled it, if any)."""
    seconds: Optional[float]
    basis: str


class CellCost:
    """How long cells take, estimated from the runs finished in ``store`` (see the module's docstring);
    ``data_root`` is where the datasets are read from for tier 4's sizes (``--data-root``); ``others``
    are stores read beside ``store`` (``--estimate-from``), whose checkpoints and kept weights are not
    ``store``'s and are never read."""

    def __init__(self, store: ResultStore, data_root: Optional[Path] = None, others: Sequence[ResultStore] = (),
                 share: float = 1.0):
        self.store = store
        self.data_root = data_root
        self.others = tuple(others)
        """Further stores whose finished runs the estimates read (``--estimate-from``)."""
        self.share = share
        """The share of a core a run would get (:func:`fusionbench.cpu_share.core_share`): estimates are
        the runs' uncrowded times over it."""
        self._interactions: dict[str, Optional[int]] = {}

    def interactions(self, config: dict) -> Optional[int]:
        """The number of interactions of ``config``'s dataset (loaded once per dataset and options),
        ``None`` when it cannot be loaded here."""
        key = canonical_json({"dataset": config["dataset"], "options": config["dataset_options"]})
        if key not in self._interactions:
            try:
                self._interactions[key] = load_data(config, self.data_root).n_interactions
            except (UserInputError, OSError):
                self._interactions[key] = None
        return self._interactions[key]

    def comparable(self, config: dict) -> tuple[pd.DataFrame, str]:
        """The store's finished runs that trained and are comparable with ``config`` (a resolved config
        with its dataset checksum), from the first non-empty tier of the module's docstring (may be
        empty; in tiers 1-3 the runs trained as this process trains, :func:`same_pass`, where any are),
        and the tier's entry of :data:`TIER_BASES`. Each run has the wall time it is expected to take on
        ``config``'s dataset now in a column ``wall``: its :func:`uncrowded_seconds` over :attr:`share`,
        times the column ``scale`` (tier 4: the ratio of the two datasets' interactions; else 1), and its
        parsed history in a column ``epochs``."""
        runs = pd.concat([s.runs(strategy=config["strategy"]) for s in (self.store, *self.others)],
                         ignore_index=True).drop_duplicates("config_hash")
        runs = runs[runs["trained_from"].isna() & (runs["asha_stopped"].fillna(0) == 0)
                    & runs["wall_seconds"].notna()]
        runs = runs.assign(epochs=[json.loads(text) if text else [] for text in runs["history"]])
        runs = runs.assign(wall=[uncrowded_seconds(wall, epochs) / self.share
                                 for wall, epochs in zip(runs["wall_seconds"], runs["epochs"])])
        here = runs[runs["dataset"] == config["dataset"]]
        aggregator = config.get("aggregator")
        same_kind = here[(here["protocol"] == config["protocol"])
                         & (here["aggregator"].isna() if aggregator is None else here["aggregator"] == aggregator)]
        key = _without_seed(config)
        same = same_kind[[_without_seed(json.loads(text)) == key for text in same_kind["config"]]]
        for tier, basis in zip((same, same_kind, here), TIER_BASES):
            if not tier.empty:
                return same_pass(tier, config).assign(scale=1.0), basis
        target = self.interactions(config) if not runs.empty else None
        sizes = [self.interactions(json.loads(text)) if target else None for text in runs["config"]]
        scaled = runs.assign(scale=[target / size if size else None for size in sizes])
        scaled = scaled[scaled["scale"].notna()]
        return scaled.assign(wall=scaled["wall"] * scaled["scale"]), TIER_BASES[3]

    def started_sibling(self, config: dict) -> Optional[tuple[int, list[dict]]]:
        """``(seed, history)`` of a run of ``store`` started but not finished with ``config``'s settings
        (another seed: a cell of ``config`` itself with a history is resumed, not estimated this way), from
        its checkpoint (the first such run that has trained an epoch), else ``None``."""
        key = _without_seed(config)
        started = self.store.runs(status="running", strategy=config["strategy"], dataset=config["dataset"])
        for other, text, seed in zip(started["config_hash"], started["config"], started["seed"]):
            if _without_seed(json.loads(text)) != key:
                continue
            history = (read_checkpoint(self.store.checkpoint_path(other)) or {}).get("history")
            if history and training_seconds_per_epoch(history):
                return int(seed), history
        return None

    def estimate(self, config: dict, digest: str, trained: str) -> Estimate:
        """What the run ``digest`` (training ``trained``) still needs: 0 when it only evaluates kept
        weights; when it has no checkpoint, the comparable runs' median time (scaled to a started
        sibling's pace, :meth:`started_sibling`, when they have other settings); else its epochs left at
        the comparable runs' median time per epoch, scaled to its own epochs' pace."""
        if self.store.weights_path(trained).exists():
            return Estimate(0.0, "kept weights: evaluation only")
        runs, basis = self.comparable(config)
        if runs.empty:
            return Estimate(None, "no run of this strategy to estimate from")
        history = (read_checkpoint(self.store.checkpoint_path(digest)) or {}).get("history")
        histories = list(runs["epochs"])
        theirs = [t * scale for t, scale in zip(map(training_seconds_per_epoch, histories), runs["scale"]) if t]
        wall = float(statistics.median(runs["wall"]))
        if not history:
            sibling = self.started_sibling(config) if basis != TIER_BASES[0] else None
            if sibling is None or not theirs:
                return Estimate(wall, basis)
            seed, pace = sibling[0], training_seconds_per_epoch(sibling[1])
            return Estimate(wall * pace / statistics.median(theirs), f"{basis}, at seed {seed}'s pace")
        timed = [(seconds / len(h), len(h)) for seconds, h in zip(runs["wall"], histories) if h]
        if not timed:                        # no comparable run kept its history
            return Estimate(wall, basis)
        per_epoch = statistics.median(seconds for seconds, _ in timed)
        typical = statistics.median(n for _, n in timed)
        own = training_seconds_per_epoch(history)
        if own and theirs:                   # this configuration's own pace against the tier's
            per_epoch *= own / statistics.median(theirs)
            basis += ", at its own pace"
        left = epochs_left(history, TrainOptions.build(config["train"]), config["protocol"] == LEAKY_PROTOCOL,
                           typical)
        return Estimate(per_epoch * left, f"{basis}, {left:.0f} epochs left")


def epochs_left(history: list[dict], opts: TrainOptions, leaky: bool, typical: float) -> float:
    """Epochs a run resumed after ``history`` is expected to train still, when comparable runs trained
    ``typical`` epochs (the module's docstring has the rule)."""
    done = len(history)
    if finished(history, opts, leaky):
        return 0.0
    demanded = opts.patience - stale_epochs(history, opts.select, leaky)
    return float(min(opts.epochs - done, max(typical - done, demanded)))


class Deadline:
    """Which cells of a plan may start before ``deadline`` (seconds since the epoch), estimated from the
    runs finished in ``store`` (and in ``others``, as :class:`CellCost`); :meth:`admit` is
    ``plan.run_local``'s ``admit``."""

    def __init__(self, store: ResultStore, deadline: float, cells: Sequence[Cell], data_root: Optional[Path] = None,
                 others: Sequence[ResultStore] = ()):
        self.store = store
        self.deadline = deadline
        self.cost = CellCost(store, data_root, others)
        self._identity = {id(cell): identity for cell, identity in zip(cells, identify(cells), strict=True)}
        """``id(cell)`` -> ``(config, run hash, training hash)``."""
        self._share_measured: Optional[float] = None    # time.monotonic() of the last measurement

    def share(self) -> float:
        """The share of a core a thread of this process gets (:func:`fusionbench.cpu_share.core_share`),
        measured again once the last measurement is :data:`SHARE_EVERY` seconds old."""
        clock = time.monotonic()
        if self._share_measured is None or clock - self._share_measured >= SHARE_EVERY:
            self.cost.share, self._share_measured = cpu_share.core_share(), clock
        return self.cost.share

    def admit(self, cell: Cell, now: Optional[float] = None) -> Optional[str]:
        """``None`` when ``cell`` may start now, else why it is deferred."""
        now = time.time() if now is None else now
        config, digest, trained = self._identity[id(cell)]
        if self.store.status(digest) == "done":
            return None
        share = self.share()
        needed, basis = self.cost.estimate(config, digest, trained)
        if needed == 0:
            return None           # it only evaluates: kept weights, or a checkpoint whose training ended
        left = self.deadline - now
        if left <= 0:
            return "the deadline has passed"
        if needed is None or needed <= left:
            return None
        return (f"expected to need {needed / 60:.0f} min at {share:.0%} of a core, {left / 60:.0f} min left; "
                f"estimated from {basis}")


def cost_table(cells: Sequence[Cell], labels: Sequence[str], store: ResultStore,
               data_root: Optional[Path] = None, others: Sequence[ResultStore] = ()) -> str:
    """``fusionbench sweep --dry-run``: one row per cell (label, seed, its state in ``store``, the minutes
    it needs if not done: 0 when an earlier cell left to run trains the weights it evaluates, ``?``
    without an estimate; and what the figure rests on, :attr:`Estimate.basis`) and a last line with the
    cells done and the hours of one process the rest need, both at a whole core (``CellCost.share`` 1)."""
    cost = CellCost(store, data_root, others)
    rows, needs, training = [], [], set()   # training: hashes that an earlier cell left to run trains
    for cell, label, (config, digest, trained) in zip(cells, labels, identify(cells), strict=True):
        state = store.status(digest) or "to run"
        needed, basis = None, ""
        if state != "done":
            needed, basis = (Estimate(0.0, "an earlier cell's training") if trained in training
                             else cost.estimate(config, digest, trained))
            training.add(trained)
            needs.append(needed)
        rows.append([label, cell.request.seed, state,
                     "" if state == "done" else "?" if needed is None else f"{needed / 60:.0f}", basis])
    summary = f"{len(cells)} cells, {len(cells) - len(needs)} done"
    if needs:
        unknown = needs.count(None)
        summary += (f"; the rest need about {sum(n for n in needs if n is not None) / 3600:.1f} h of one process "
                    "with a core to itself"
                    + (f", {unknown} left without an estimate" if unknown else ""))
    table = tabulate(rows, headers=["run", "seed", "in the store", "needs (min)", "estimated from"],
                     tablefmt="github", disable_numparse=True)
    return f"{table}\n{summary}"
