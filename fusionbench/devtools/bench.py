"""``fusionbench bench``: the speed regression check against a committed baseline (docs/performance.md).

Shared CI machines are noisy and differ in speed, so no absolute time is ever compared. Every case of
the benchmark suite (``tests/benchmarks``, pytest-benchmark) is divided by the ``calibration`` case (a
fixed fp32 matmul) measured in the same run, at its start and at its end (so one burst of load during
one calibration does not shrink every ratio); with :math:`t_c` the best (minimum) time of case c over
its rounds and :math:`t_{\\mathrm{calibration}}` the best over the calibration cases,

.. math::  r_c = t_c / t_{\\mathrm{calibration}}, \\qquad
           \\mathrm{change}_c = r_c^{\\mathrm{now}} / r_c^{\\mathrm{baseline}} - 1,

and ``check`` fails (exit 1) when any case's change exceeds :data:`TOLERANCE` (+25 %). When a case
fails, the short suite runs :data:`CONFIRM_RUNS` more times and the runs are pooled (:func:`pooled`: each
case's best time over all runs over the calibration's best time over all runs), so a spell of load on a
shared machine neither fails the check nor, by slowing only a calibration, hides a slow case. A case still
slower after that is timed against the code of the commit that wrote the baseline file, on this machine
(:func:`same_machine_check`): it fails only if this code is slower than that commit's here too, so a ratio
that moved with the machine (memory-bound cases move by up to 50 % between machines of one class) does not
fail the check, and a slowdown of the code does. Faster is never a failure.
The baseline is the per-case median of several runs (``refresh --runs``, default 3), so that one lucky
or unlucky refresh run does not become the yardstick of every later check. ``refresh --keep-slower``
keeps each case's old ratio where it is the slower one (:func:`slower_of`): a machine state that reads
memory-bound cases slower widens the baseline, and one that reads them faster does not narrow it.
``refresh --case C`` (repeatable) re-measures only the named cases and keeps every other case's ratio
(:func:`with_cases`): the way to lock in a speed-up of some cases without re-reading the noisy others.

``check`` and ``refresh`` run a short version of the suite in a subprocess: rounds capped at
:func:`quick_rounds` (the suite reads :data:`QUICK_ENV`), one thread (``OMP_NUM_THREADS=1``), and the
CPU time of the process as the clock (:data:`TIMER`): on a shared machine, time spent waiting for a core
stretches wall-clock times of long cases more than the short calibration, CPU time it does not.
``refresh`` is the one way to rewrite the baseline (atomically).

The calibration keeps ratios steady between machines of one class, not between classes: an AVX-512
matmul speeds the calibration up more than the memory-bound cases. So a baseline belongs to the machine
class it was recorded on (:func:`machine_class`: the CPU's vendor and line, e.g. ``AMD EPYC``). Without
``--baseline``, ``check`` compares with the baseline of the class it runs on (:func:`baseline_for`):
``tests/benchmarks/baseline.json`` where that file was recorded on this class, else its sibling
``baseline.<class>.json`` (``baseline.intel-xeon.json``); without one, with ``baseline.json`` and a note
that the classes differ. ``refresh`` without ``--baseline`` writes that same file of its class.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import click
from tabulate import tabulate

from fusionbench.atomic import atomic_write
from fusionbench.errors import RunFailure, UserInputError, report_errors

TOLERANCE = 0.25
"""A case fails when its calibrated ratio is more than this fraction above the baseline's."""

CONFIRM_RUNS = 2
"""Further runs of the short suite when the first one flags a case; all runs are then pooled."""

AB_RUNS = 3
"""Runs of each side when cases stay slower after confirming and are measured against the code of the
baseline's commit on this machine (:func:`same_machine_check`)."""

QUICK_ENV = "FUSIONBENCH_BENCH_QUICK"
"""Set to ``1`` by ``check`` / ``refresh``: the suite caps its cases' rounds with :func:`quick_rounds`."""

QUICK_ROUNDS = 5
QUICK_SECONDS = 1.0


def quick_rounds(rounds: int, round_seconds: float) -> int:
    """Rounds of a case in the short suite, given its full ``rounds`` and one round's time (its warm-up):
    as many as fit in :data:`QUICK_SECONDS`, at least :data:`QUICK_ROUNDS`, at most ``rounds``. Cheap
    cases keep all their rounds: with only 5, the minimum of a 30 ms case moved by 30 % between runs."""
    fit = int(QUICK_SECONDS / round_seconds) if round_seconds > 0 else rounds
    return min(rounds, max(QUICK_ROUNDS, fit))

THREADS = 1
TIMER = "time.process_time"
"""The clock of the short suite (pytest-benchmark's ``--benchmark-timer``, a dotted name): CPU seconds of the
(one-threaded) process, not wall-clock seconds. tests/test_bench_check.py puts a fake clock here."""

REFERENCE_MARK = "reference"
"""pytest marker of cases that time reference code for comparison within one run (a bare torch matmul,
the per-sample Python builder of the tests); the short suite leaves them out, so they are not guarded."""

CALIBRATION_GROUP = "calibration"
"""The pytest-benchmark group of the yardstick every other case is divided by: one workload, timed by one
or more cases (the suite times it first and last); their best time is the yardstick."""

DEFAULT_SUITE = Path("tests/benchmarks")  # relative to the repository root, where CI and tox run
DEFAULT_BASELINE = DEFAULT_SUITE / "baseline.json"
"""The reference baseline; baselines of other machine classes sit beside it (:func:`baseline_for`)."""
REFRESH_COMMAND = "fusionbench bench refresh"


class SuiteError(RunFailure):
    """The benchmark suite could not be run or measured (a failing case, no calibration case, ...)."""


@dataclass(frozen=True)
class Measurement:
    """One run of the suite: ``ratios`` case -> calibrated ratio (calibration excluded), the
    calibration case's best time in seconds, and what pytest-benchmark says about the machine."""

    ratios: dict[str, float]
    calibration_seconds: float
    machine: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Each case's best time in seconds (what :func:`pooled` combines)."""


@dataclass(frozen=True)
class Row:
    """One case of a comparison; ``baseline`` / ``now`` are ``None`` where the case is absent."""

    case: str
    baseline: Optional[float]
    now: Optional[float]
    verdict: str  # "ok", "faster", "SLOWER", "new", "MISSING"

    @property
    def failed(self) -> bool:
        return self.verdict in ("SLOWER", "MISSING")

    @property
    def change(self) -> Optional[float]:
        if self.baseline is None or self.now is None:
            return None
        return self.now / self.baseline - 1.0


def case_name(entry: Mapping) -> str:
    """A pytest-benchmark entry's case name: the test name without ``test_``, e.g. ``train_step[mmsr]``."""
    name = entry["name"]
    return name[len("test_"):] if name.startswith("test_") else name


def calibrated_ratios(report: Mapping) -> Measurement:
    """pytest-benchmark JSON (``--benchmark-json``) -> :class:`Measurement`, using each case's minimum
    and, as the calibration time, the minimum over the cases of group :data:`CALIBRATION_GROUP`.

    Raises :class:`SuiteError` when that group is empty, or when two cases share a name."""
    entries = report.get("benchmarks", [])
    calibration = [e for e in entries if e.get("group") == CALIBRATION_GROUP]
    if not calibration:
        raise SuiteError(f"the suite must have a case in group {CALIBRATION_GROUP!r}, found none")
    reference = min(e["stats"]["min"] for e in calibration)
    seconds: dict[str, float] = {}
    for entry in entries:
        if entry.get("group") == CALIBRATION_GROUP:
            continue
        name = case_name(entry)
        if name in seconds:
            raise SuiteError(f"two benchmark cases are both named {name!r}; rename one")
        seconds[name] = entry["stats"]["min"]
    info = report.get("machine_info", {})
    flags = info.get("cpu", {}).get("flags")
    machine = {"cpu": info.get("cpu", {}).get("brand_raw"), "cpus": info.get("cpu", {}).get("count"),
               "bf16": None if flags is None else bool(BF16_FLAGS & set(flags)),
               "python": info.get("python_version"), "torch": info.get("torch")}
    return Measurement({c: t / reference for c, t in seconds.items()}, reference, machine, seconds)


def pooled(runs: list[Measurement]) -> Measurement:
    """Several runs of the suite taken as one longer run (pure):

    .. math::  r_c = \\min_k t_{c,k} \\,/\\, \\min_k t_{\\mathrm{calibration},k}

    over runs k. The best of the per-run ratios instead would let a run whose calibration alone was
    slowed by load (every other ratio of that run shrinks) hide a slow case."""
    if not runs:
        raise ValueError("pooled: no runs")
    reference = min(run.calibration_seconds for run in runs)
    cases = dict.fromkeys(case for run in runs for case in run.seconds)
    seconds = {c: min(run.seconds[c] for run in runs if c in run.seconds) for c in cases}
    return Measurement({c: t / reference for c, t in seconds.items()}, reference, runs[0].machine, seconds)


def median_of(runs: list[Measurement]) -> Measurement:
    """Per-case median of the ratios of several runs (pure); a case counts in the runs that measured it.
    The calibration time and machine are the median run's / the first run's."""
    if not runs:
        raise ValueError("median_of: no runs")
    cases = dict.fromkeys(case for run in runs for case in run.ratios)
    ratios = {c: statistics.median(run.ratios[c] for run in runs if c in run.ratios) for c in cases}
    return Measurement(ratios, statistics.median(run.calibration_seconds for run in runs), runs[0].machine)


def slower_of(old: Mapping[str, float], new: Measurement) -> Measurement:
    """``new`` with each case's ratio raised to its ``old`` ratio where that is larger (pure); cases
    absent from ``new`` are dropped (removed from the suite), cases absent from ``old`` keep ``new``'s."""
    ratios = {c: max(r, old.get(c, r)) for c, r in new.ratios.items()}
    return Measurement(ratios, new.calibration_seconds, new.machine)


def with_cases(old: Mapping[str, float], new: Measurement, cases: list[str]) -> Measurement:
    """``old`` with the ratios of ``cases`` taken from ``new`` (pure); the calibration time and machine
    are ``new``'s. Raises :class:`UserInputError` naming a case that ``new`` did not measure."""
    unknown = [c for c in cases if c not in new.ratios]
    if unknown:
        raise UserInputError(f"--case: {', '.join(map(repr, unknown))} not in the suite; its cases are "
                             f"{', '.join(sorted(new.ratios))}")
    return Measurement({**old, **{c: new.ratios[c] for c in cases}}, new.calibration_seconds, new.machine)


def compare(baseline: Mapping[str, float], measured: Mapping[str, float],
            tolerance: float = TOLERANCE) -> list[Row]:
    """Compare calibrated ratios case by case (pure). Rows come in baseline order, then new cases.

    ``SLOWER``: now > baseline * (1 + tolerance); ``faster``: now < baseline / (1 + tolerance);
    ``MISSING``: in the baseline but not measured (removed or renamed; refresh the baseline);
    ``new``: measured but not in the baseline (never a failure)."""
    rows = []
    for case, base in baseline.items():
        now = measured.get(case)
        if now is None:
            verdict = "MISSING"
        elif now > base * (1.0 + tolerance):
            verdict = "SLOWER"
        elif now < base / (1.0 + tolerance):
            verdict = "faster"
        else:
            verdict = "ok"
        rows.append(Row(case, base, now, verdict))
    rows += [Row(case, None, now, "new") for case, now in measured.items() if case not in baseline]
    return rows


def render(rows: list[Row]) -> str:
    """The comparison as a table: case | baseline | now | change | verdict."""
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    body = [[r.case, fmt(r.baseline), fmt(r.now), "-" if r.change is None else f"{100 * r.change:+.1f} %",
             r.verdict] for r in rows]
    return tabulate(body, headers=["case", "baseline", "now", "change", "verdict"], tablefmt="github")


def ratio_table(ratios: Mapping[str, float]) -> str:
    """Calibrated ratios as a table: case | ratio."""
    return tabulate([[c, f"{r:.4g}"] for c, r in sorted(ratios.items())], headers=["case", "ratio"],
                    tablefmt="github")


def run_suite(suite: Path, tree: Optional[Path] = None) -> dict:
    """Run the short suite in a subprocess; return its pytest-benchmark JSON report.

    The subprocess runs the ``benchmark`` cases not marked :data:`REFERENCE_MARK`, with
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = :data:`THREADS`, :data:`QUICK_ENV` = 1, the clock
    :data:`TIMER` and no plugin but pytest-benchmark. ``tree``: a source tree whose packages the suite
    imports instead of the installed ones (first on ``PYTHONPATH``, and ``python -P`` so the working
    directory does not shadow it). Raises :class:`SuiteError` (with pytest's output tail) when pytest
    does not pass."""
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise UserInputError("fusionbench bench needs pytest-benchmark: pip install -e '.[test]'")
    if not suite.exists():
        raise UserInputError(f"--suite: benchmark suite {suite} not found (run from the repository root, "
                             "or pass --suite and --baseline)")
    # only pytest-benchmark (and pytest-timeout, the test config's time limit) is loaded: other installed
    # plugins cost seconds of start-up per run
    env = {**os.environ, QUICK_ENV: "1", "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    python = [sys.executable]
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
        python.append("-P")
    timeout = ["-p", "pytest_timeout"] if importlib.util.find_spec("pytest_timeout") is not None else []
    with tempfile.TemporaryDirectory(prefix="fusionbench-bench-") as tmp:
        out = Path(tmp) / "report.json"
        cmd = [*python, "-m", "pytest", str(suite), "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider",
               "-m", f"benchmark and not {REFERENCE_MARK}", "--benchmark-only", f"--benchmark-json={out}",
               f"--benchmark-timer={TIMER}", "--benchmark-disable-gc", "-q", *timeout]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
            raise SuiteError(f"the benchmark suite failed (pytest exit {done.returncode}):\n{tail}")
        return json.loads(out.read_text())


def measure(suite: Path, tree: Optional[Path] = None) -> Measurement:
    """Run the short suite once (on the packages of ``tree``, see :func:`run_suite`) and compute every
    case's calibrated ratio."""
    return calibrated_ratios(run_suite(suite, tree))


def baseline_commit(baseline: Path) -> tuple[Optional[str], Path, str]:
    """``(commit, root, why)``: the commit that last wrote the baseline file and the root of its git
    repository, or ``(None, ., why)`` with the reason there is none to measure: not in a git repository,
    never committed, changed since its last commit (a refresh not committed yet), or last touched by the
    oldest commit of a shallow clone (which stands in for the history cut off)."""
    path = Path(baseline).resolve()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(path.parent), *args], capture_output=True, text=True)

    try:
        top = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return None, Path("."), "git is not installed"
    if top.returncode != 0:
        return None, Path("."), f"{baseline} is not in a git repository"
    root = Path(top.stdout.strip())
    commit = git("log", "-1", "--format=%H", "--", str(path)).stdout.strip()
    if not commit:
        return None, root, f"{baseline} was never committed"
    if git("status", "--porcelain", "--", str(path)).stdout.strip():
        return None, root, f"{baseline} changed since its last commit"
    shallow = Path(git("rev-parse", "--git-path", "shallow").stdout.strip())
    shallow = shallow if shallow.is_absolute() else path.parent / shallow
    if shallow.exists() and commit in shallow.read_text().split():
        # a shallow clone's oldest commit stands in for all its history: it may not be the one that wrote the file
        return None, root, f"a shallow clone: the commit that wrote {baseline} may be outside its history"
    return commit, root, ""


def extract_commit(root: Path, commit: str, into: Path) -> None:
    """Write the tree of ``commit`` of the git repository at ``root`` into the folder ``into``."""
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise SuiteError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # the "data" filter (no links out of ``into``, no device files) where this Python has it (3.11.4+)
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def same_machine_check(suite: Path, baseline: Path, slow: list[str]) -> tuple[list[Row], str]:
    """The cases ``slow`` (slower than the baseline file after confirming) measured against the code of
    the commit that wrote that baseline, on this machine: :data:`AB_RUNS` runs of each, interleaved
    (old, new, old, ...), each side pooled (:func:`pooled`).

    .. math::  \\mathrm{change}_c = r_c^{\\mathrm{this\\ code}} / r_c^{\\mathrm{baseline\\ commit}} - 1

    A case whose ratio moved only with the machine (memory-bound cases move by up to 50 % between
    machines of one class) reads ``ok`` here; one the code slowed down stays ``SLOWER``. Returns the
    rows (empty when the commit cannot be measured) and a line saying what was compared or why not."""
    commit, root, why = baseline_commit(baseline)
    inside = Path(suite).resolve()
    if commit is not None and not inside.is_relative_to(root.resolve()):
        commit, why = None, f"the suite {suite} is not in {root}"
    if commit is None:
        return [], f"cannot measure the baseline's own code on this machine: {why}"
    with tempfile.TemporaryDirectory(prefix="fusionbench-bench-base-") as tmp:
        tree = Path(tmp)
        old_suite = tree / inside.relative_to(root.resolve())
        old, new = [], []
        try:
            extract_commit(root, commit, tree)
            for _ in range(AB_RUNS):
                old.append(measure(old_suite, tree))
                new.append(measure(suite))
        except SuiteError as err:
            return [], f"cannot measure the baseline's commit {commit[:10]} on this machine: {err}"
    before, now = pooled(old), pooled(new)
    missing = [c for c in slow if c not in before.ratios]
    measured = [c for c in slow if c in before.ratios]
    rows = compare({c: before.ratios[c] for c in measured}, {c: now.ratios[c] for c in measured})
    note = (f"the slower cases against the code of {commit[:10]} (which wrote {baseline}), {AB_RUNS} runs each "
            "on this machine, interleaved")
    if missing:
        note += f"; not in that commit's suite: {', '.join(missing)}"
    return rows, note


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags of bfloat16 instructions: without them a bf16 step costs more than an fp32 one (``fusionbench.bf16``),
so the bf16 cases' ratios belong to another class."""


def machine_class(cpu: Optional[str], bf16: Optional[bool] = None) -> str:
    """The machine class of a CPU brand string: its vendor and line, trademarks dropped
    (``Intel(R) Xeon(R) Platinum 8480C`` -> ``Intel Xeon``, ``AMD EPYC 7763 64-Core Processor`` -> ``AMD EPYC``);
    ``unknown`` when the brand is not known. A CPU known to lack bfloat16 instructions (``bf16=False``:
    none of :data:`BF16_FLAGS`) is a class of its own, ``Intel Xeon without bf16``: one brand string covers
    both kinds of VM."""
    words = re.sub(r"\((R|TM)\)", " ", cpu or "", flags=re.IGNORECASE).split()
    return (" ".join(words[:2]) or "unknown") + (" without bf16" if bf16 is False else "")


def baseline_for(default: Path, cpu: Optional[str], bf16: Optional[bool] = None) -> tuple[Path, Optional[str]]:
    """The baseline file of the machine class of ``cpu`` and, when it is another class's, a note saying so.

    ``default`` when it does not exist yet or was recorded on this class; else its sibling
    ``<stem>.<class slug>.json`` when that exists (a refresh on this class wrote it); else ``default`` with
    the note. :func:`refresh_target` is where a refresh on this class writes."""
    target = refresh_target(default, cpu, bf16)
    if target.exists() or target == default:
        return target, None
    return default, (f"no baseline for this machine class ({machine_class(cpu, bf16)}): comparing with {default}, "
                     f"recorded on {recorded_class(default)}, whose ratios can differ by more than the tolerance; "
                     f"`{REFRESH_COMMAND}` on this machine writes {target}")


def refresh_target(default: Path, cpu: Optional[str], bf16: Optional[bool] = None) -> Path:
    """Where a baseline of the class of ``cpu`` lives: ``default`` if it does not exist or was recorded on
    that class, else ``default``'s sibling ``<stem>.<class slug>.json``."""
    if not default.exists():
        return default
    here = machine_class(cpu, bf16)
    if recorded_class(default) == here:
        return default
    slug = re.sub(r"[^a-z0-9]+", "-", here.lower()).strip("-")
    return default.with_name(f"{default.stem}.{slug}{default.suffix}")


def recorded_class(path: Path) -> str:
    """The machine class the baseline file ``path`` was recorded on (its ``machine.cpu`` field)."""
    machine = read_baseline(path).get("machine", {})
    return machine_class(machine.get("cpu"), machine.get("bf16"))


def read_baseline(path: Path) -> dict:
    """The baseline file: ``{"ratios": {case: ratio}, ...}``; errors name the file and the field."""
    try:
        baseline = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserInputError(f"--baseline: {path} not found (run from the repository root, or create it "
                             f"with `{REFRESH_COMMAND}`)") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"--baseline: {path} is not valid JSON ({err}); rewrite it with "
                             f"`{REFRESH_COMMAND}`") from None
    ratios = baseline.get("ratios")
    if not isinstance(ratios, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in ratios.values()):
        raise UserInputError(f"--baseline: {path}: field 'ratios' must map case names to positive numbers")
    return baseline


def write_baseline(path: Path, result: Measurement, runs: int, keep_slower: bool = False,
                   cases: Optional[list[str]] = None) -> None:
    """Write the baseline atomically (readers see the old file or the complete new one); ``cases``: the
    only cases this refresh re-measured (``refresh --case``), None for all."""
    kept = ""
    if keep_slower:
        kept = ", or the previous baseline's ratio where that was slower"
    elif cases:
        kept = f" for {', '.join(cases)}; the other cases keep the previous baseline's ratios"
    content = {
        "command": REFRESH_COMMAND,
        "statistic": f"per run: min over the rounds of each case (as many as fit in {QUICK_SECONDS:g} s, at "
                     f"least {QUICK_ROUNDS}) / min of the calibration cases; the baseline is the median over "
                     f"{runs} run(s)" + kept,
        "timer": TIMER,
        "threads": THREADS,
        "calibration_seconds": result.calibration_seconds,
        "machine": result.machine,
        "ratios": dict(sorted(result.ratios.items())),
    }
    text = json.dumps(content, indent=2) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


suite_option = click.option("--suite", type=click.Path(path_type=Path), default=DEFAULT_SUITE,
                            show_default=True, help="pytest-benchmark suite (file or folder).")
baseline_option = click.option("--baseline", type=click.Path(path_type=Path), default=None,
                               help="Baseline of calibrated ratios (JSON). Default: this machine class's "
                                    f"baseline, {DEFAULT_BASELINE} or its sibling baseline.<class>.json.")


@click.group()
def bench() -> None:
    """Speed regression check: calibrated ratios against a committed baseline (docs/performance.md)."""


@bench.command()
@suite_option
@baseline_option
@report_errors
def check(suite: Path, baseline: Optional[Path]) -> None:
    """Run the short suite; exit 1 if any case is more than 25 % slower than its baseline ratio."""
    read_baseline(baseline or DEFAULT_BASELINE)   # a missing or broken file fails before the suite runs
    first = measure(suite)
    if baseline is None:
        baseline, note = baseline_for(DEFAULT_BASELINE, first.machine.get("cpu"), first.machine.get("bf16"))
        if note:
            click.echo(f"note: {note}")
    base = read_baseline(baseline)
    rows = compare(base["ratios"], first.ratios)
    slow = [r.case for r in rows if r.verdict == "SLOWER"]
    if slow:
        click.echo(f"slower than allowed in the first run: {', '.join(slow)}; measuring {CONFIRM_RUNS} more "
                   "times to confirm")
        first = pooled([first] + [measure(suite) for _ in range(CONFIRM_RUNS)])
        rows = compare(base["ratios"], first.ratios)
    click.echo(f"calibration: {1e3 * first.calibration_seconds:.2f} ms CPU; ratios are case time / calibration "
               f"time, baseline {baseline}")
    click.echo(render(rows))
    failed = [r for r in rows if r.failed]
    slow = [r.case for r in rows if r.verdict == "SLOWER"]
    if slow:
        click.echo(f"still slower after confirming: {', '.join(slow)}; measuring the baseline's own code on this "
                   "machine")
        same, note = same_machine_check(suite, baseline, slow)
        click.echo(note)
        if same:
            click.echo(render(same))
            cleared = {r.case for r in same if not r.failed}
            failed = [r for r in failed if r.case not in cleared]
    if failed:
        click.echo(f"FAILED: {len(failed)} case(s) more than {TOLERANCE:.0%} slower than the baseline or missing "
                   f"({', '.join(r.case for r in failed)}). If this is intended, run `{REFRESH_COMMAND}`.")
        raise SystemExit(1)
    if slow:
        click.echo(f"ok: no case more than {TOLERANCE:.0%} slower than the baseline's commit on this machine")
    else:
        click.echo(f"ok: no case more than {TOLERANCE:.0%} slower than the baseline")


@bench.command()
@suite_option
@baseline_option
@click.option("--runs", type=int, default=3, show_default=True,
              help="Runs of the short suite; the baseline keeps each case's median ratio.")
@click.option("--keep-slower", is_flag=True,
              help="Keep a case's previous ratio where it is slower than the new one (a refresh after a "
                   "machine-state change, not after a speed-up).")
@click.option("--case", "cases", multiple=True,
              help="Re-measure only this case (repeatable), e.g. 'train_step[mmsr]'; every other case keeps its "
                   "ratio (a refresh after a speed-up of these cases).")
@report_errors
def refresh(suite: Path, baseline: Optional[Path], runs: int, keep_slower: bool, cases: tuple[str, ...]) -> None:
    """Measure the short suite (median of --runs runs) and rewrite the baseline (atomically): by default this
    machine class's."""
    if runs < 1:
        raise UserInputError(f"--runs must be >= 1, got {runs}")
    if keep_slower and cases:
        raise UserInputError("--keep-slower and --case exclude each other: --case records the named cases' new "
                             "ratios whether faster or slower, and keeps every other case's")
    if baseline is not None and (keep_slower or cases):
        read_baseline(baseline)                   # a missing or broken file fails before the suite runs
    runs_measured = [measure(suite) for _ in range(runs)]
    if baseline is None:
        baseline = refresh_target(DEFAULT_BASELINE, runs_measured[0].machine.get("cpu"),
                                  runs_measured[0].machine.get("bf16"))
    previous = read_baseline(baseline)["ratios"] if keep_slower or cases else {}
    measured = median_of(runs_measured)
    result = with_cases(previous, measured, list(cases)) if cases else slower_of(previous, measured)
    write_baseline(baseline, result, runs, keep_slower, list(cases))
    click.echo(ratio_table(result.ratios))
    click.echo(f"wrote {baseline}: {len(result.ratios)} cases, median of {runs} run(s), calibration "
               f"{1e3 * result.calibration_seconds:.2f} ms CPU")
