"""The speed regression checker (``fusionbench bench``): the pure comparison, the ratio computation,
the baseline file, and the whole machinery end to end (pytest-benchmark in a subprocess) on a tiny suite
whose clock is a fake one: its cases say how long they took, so every ratio is exact and no test here
depends on how fast or how loaded the machine is."""
import json
import os
import shutil
import subprocess
import textwrap

import pytest
from click.testing import CliRunner

from fusionbench.cli import main
from fusionbench.devtools.bench import (
    CALIBRATION_GROUP,
    Measurement,
    SuiteError,
    baseline_commit,
    baseline_for,
    calibrated_ratios,
    compare,
    machine_class,
    median_of,
    pooled,
    quick_rounds,
    read_baseline,
    refresh_target,
    render,
    same_machine_check,
    slower_of,
    with_cases,
)
from fusionbench.errors import UserInputError

BASELINE = {"msgraph_build[batched]": 0.5, "train_step[mmsr]": 2.0, "aggregator[han]": 4.0}


def test_a_case_injected_two_times_slower_fails_with_its_table_row():
    measured = {**BASELINE, "train_step[mmsr]": 4.0}
    rows = compare(BASELINE, measured)
    assert [r.case for r in rows if r.failed] == ["train_step[mmsr]"]
    assert [r.verdict for r in rows] == ["ok", "SLOWER", "ok"]
    table = render(rows).splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["case", "baseline", "now", "change", "verdict"]
    row = next(line for line in table if "train_step[mmsr]" in line)
    assert [c.strip() for c in row.strip("|").split("|")] == ["train_step[mmsr]", "2", "4", "+100.0 %", "SLOWER"]


def test_tolerance_boundary_faster_new_and_missing_cases():
    base = {"a": 1.0, "b": 1.0, "c": 1.0, "gone": 1.0}
    rows = {r.case: r for r in compare(base, {"a": 1.25, "b": 1.2501, "c": 0.5, "added": 3.0})}
    assert rows["a"].verdict == "ok" and not rows["a"].failed          # exactly +25 % still passes
    assert rows["b"].verdict == "SLOWER" and rows["b"].failed
    assert rows["c"].verdict == "faster" and not rows["c"].failed      # faster never fails
    assert rows["gone"].verdict == "MISSING" and rows["gone"].failed   # a guarded case vanished
    assert rows["added"].verdict == "new" and not rows["added"].failed
    assert rows["c"].change == pytest.approx(-0.5) and rows["added"].change is None
    assert list(rows) == ["a", "b", "c", "gone", "added"]


def entry(name, minimum, group=None):
    return {"name": name, "group": group, "stats": {"min": minimum, "median": 2 * minimum}}


def test_ratios_divide_each_minimum_by_the_best_calibration_minimum():
    # the calibration is timed first and last; a burst of load slowed the first one
    report = {"benchmarks": [entry("test_calibration[first]", 0.03, CALIBRATION_GROUP),
                             entry("test_step[a]", 0.05), entry("test_aggregator[b]", 0.01, "aggregator"),
                             entry("test_calibration[last]", 0.02, CALIBRATION_GROUP)]}
    result = calibrated_ratios(report)
    assert result.calibration_seconds == 0.02
    assert result.ratios == pytest.approx({"step[a]": 2.5, "aggregator[b]": 0.5})
    assert result.seconds == {"step[a]": 0.05, "aggregator[b]": 0.01}


def test_the_baseline_is_the_per_case_median_of_its_runs():
    runs = [Measurement({"a": 1.0, "b": 5.0}, 0.02), Measurement({"a": 3.0, "b": 4.0}, 0.03),
            Measurement({"a": 2.0, "b": 9.0, "c": 7.0}, 0.01)]
    result = median_of(runs)
    assert result.ratios == {"a": 2.0, "b": 5.0, "c": 7.0} and result.calibration_seconds == 0.02


def test_keep_slower_raises_each_case_to_its_old_ratio_and_drops_removed_cases():
    new = Measurement({"a": 2.0, "b": 5.0, "new": 1.0}, 0.02)
    result = slower_of({"a": 3.0, "b": 4.0, "removed": 9.0}, new)
    assert result.ratios == {"a": 3.0, "b": 5.0, "new": 1.0} and result.calibration_seconds == 0.02


def test_a_refresh_of_named_cases_replaces_only_their_ratios():
    new = Measurement({"a": 2.0, "b": 5.0, "c": 1.0}, 0.02)
    result = with_cases({"a": 3.0, "b": 4.0, "removed": 9.0}, new, ["a"])
    assert result.ratios == {"a": 2.0, "b": 4.0, "removed": 9.0} and result.calibration_seconds == 0.02
    with pytest.raises(UserInputError, match=r"--case: 'nope' not in the suite; its cases are a, b, c"):
        with_cases({"a": 3.0}, new, ["a", "nope"])


def test_pooled_runs_divide_the_best_case_time_by_the_best_calibration_time():
    # run 2's calibration alone was slowed 1.6x by load: its own ratio (2.2 / 1.6 = 1.375) would hide a
    # case that is 2x slower than its baseline ratio of 1; pooling keeps 2.1 / 1.0
    first = calibrated_ratios({"benchmarks": [entry("test_calibration", 1.0, CALIBRATION_GROUP),
                                              entry("test_work", 2.1), entry("test_only_first", 3.0)]})
    second = calibrated_ratios({"benchmarks": [entry("test_calibration", 1.6, CALIBRATION_GROUP),
                                               entry("test_work", 2.2)]})
    assert second.ratios["work"] == pytest.approx(1.375)
    result = pooled([first, second])
    assert result.calibration_seconds == 1.0
    assert result.seconds == {"work": 2.1, "only_first": 3.0}
    assert result.ratios == pytest.approx({"work": 2.1, "only_first": 3.0})
    assert [r.verdict for r in compare({"work": 1.0}, result.ratios)][0] == "SLOWER"


def test_quick_rounds_keep_cheap_cases_whole_and_cut_expensive_ones_to_the_floor():
    assert quick_rounds(20, 0.03) == 20      # 0.6 s in all: every round kept
    assert quick_rounds(30, 0.05) == 20      # as many as fit in QUICK_SECONDS (1 s)
    assert quick_rounds(10, 0.4) == 5        # never fewer than QUICK_ROUNDS ...
    assert quick_rounds(3, 1.4) == 3         # ... unless the case asks for fewer
    assert quick_rounds(7, 0.0) == 7         # a round below the clock's resolution


@pytest.mark.parametrize("entries, message", [
    ([entry("test_x", 1.0)], "must have a case in group 'calibration', found none"),
    ([entry("test_c", 1.0, CALIBRATION_GROUP), entry("test_x", 1.0), entry("x", 2.0)], "both named 'x'"),
])
def test_unusable_reports_are_refused(entries, message):
    with pytest.raises(SuiteError, match=message):
        calibrated_ratios({"benchmarks": entries})


def test_baseline_errors_name_the_file_the_field_and_the_fix(tmp_path):
    path = tmp_path / "baseline.json"
    with pytest.raises(UserInputError, match="not found .* create it with `fusionbench bench refresh`"):
        read_baseline(path)
    path.write_text("{")
    with pytest.raises(UserInputError, match="baseline.json is not valid JSON"):
        read_baseline(path)
    path.write_text(json.dumps({"ratios": {"a": -1}}))
    with pytest.raises(UserInputError, match="field 'ratios' must map case names to positive numbers"):
        read_baseline(path)


@pytest.mark.parametrize("cpu, name", [
    ("Intel(R) Xeon(R) Processor", "Intel Xeon"), ("Intel(R) Xeon(R) Platinum 8480C", "Intel Xeon"),
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC"), ("AMD EPYC", "AMD EPYC"), ("Apple M2", "Apple M2"),
    (None, "unknown"), ("", "unknown")])
def test_machine_classes_are_the_cpu_vendor_and_line(cpu, name):
    assert machine_class(cpu) == name


def test_each_machine_class_reads_and_refreshes_its_own_baseline(tmp_path):
    """baseline.json serves the class it was recorded on; another class gets its sibling
    baseline.<class>.json, or, until a refresh there wrote one, baseline.json with a note saying so."""
    default = tmp_path / "baseline.json"
    assert refresh_target(default, "AMD EPYC 7B13") == default                 # nothing recorded yet
    default.write_text(json.dumps({"machine": {"cpu": "AMD EPYC"}, "ratios": {"a": 1.0}}))
    intel = tmp_path / "baseline.intel-xeon.json"
    assert baseline_for(default, "AMD EPYC 7B13") == (default, None) and refresh_target(default, "AMD EPYC") == default
    assert refresh_target(default, "Intel(R) Xeon(R) Processor") == intel
    path, note = baseline_for(default, "Intel(R) Xeon(R) Processor")
    assert path == default and note.startswith("no baseline for this machine class (Intel Xeon): comparing "
                                               f"with {default}, recorded on AMD EPYC")
    assert note.endswith(f"`fusionbench bench refresh` on this machine writes {intel}")
    intel.write_text(json.dumps({"machine": {"cpu": "Intel(R) Xeon(R) Processor"}, "ratios": {"a": 2.0}}))
    assert baseline_for(default, "Intel(R) Xeon(R) Platinum 8480C") == (intel, None)
    assert baseline_for(default, "AMD EPYC") == (default, None)


def test_a_cpu_without_bf16_instructions_is_a_class_of_its_own(tmp_path):
    """One brand string ("Intel(R) Xeon(R) Processor") covers VMs with and without bfloat16 instructions, whose
    bf16 cases differ by more than the tolerance: known to lack them, a machine reads and writes its own file;
    a baseline that does not say (recorded before the field existed) counts as having them."""
    assert machine_class("Intel(R) Xeon(R) Processor", bf16=False) == "Intel Xeon without bf16"
    assert machine_class("Intel(R) Xeon(R) Processor", bf16=True) == machine_class("Intel(R) Xeon(R) Processor")
    default = tmp_path / "baseline.json"
    default.write_text(json.dumps({"machine": {"cpu": "AMD EPYC"}, "ratios": {"a": 1.0}}))
    intel = tmp_path / "baseline.intel-xeon.json"
    intel.write_text(json.dumps({"machine": {"cpu": "Intel(R) Xeon(R) Processor"}, "ratios": {"a": 2.0}}))
    without = tmp_path / "baseline.intel-xeon-without-bf16.json"
    assert baseline_for(default, "Intel(R) Xeon(R) Processor", True) == (intel, None)
    assert refresh_target(default, "Intel(R) Xeon(R) Processor", False) == without
    path, note = baseline_for(default, "Intel(R) Xeon(R) Processor", False)
    assert path == default and "(Intel Xeon without bf16)" in note
    without.write_text(json.dumps({"machine": {"cpu": "Intel(R) Xeon(R) Processor", "bf16": False},
                                   "ratios": {"a": 3.0}}))
    assert baseline_for(default, "Intel(R) Xeon(R) Processor", False) == (without, None)
    assert baseline_for(default, "Intel(R) Xeon(R) Processor", None) == (intel, None)


def test_the_measurement_records_whether_the_cpu_has_bf16_instructions():
    report = {"benchmarks": [{"name": "test_c", "group": CALIBRATION_GROUP, "stats": {"min": 1.0}}],
              "machine_info": {"cpu": {"brand_raw": "X", "flags": ["avx512f", "avx512_bf16"]}}}
    assert calibrated_ratios(report).machine["bf16"] is True
    report["machine_info"]["cpu"]["flags"] = ["avx512f"]
    assert calibrated_ratios(report).machine["bf16"] is False
    del report["machine_info"]["cpu"]["flags"]
    assert calibrated_ratios(report).machine["bf16"] is None


FAKE_CLOCK = '''
    """The tiny suite's clock (`--benchmark-timer=fakeclock.now`): it moves only when the suite says how
    long its work took, so every measured time, and every ratio, is exact whatever the machine's load."""
    import os
    from pathlib import Path

    UNIT = 0.01          # seconds of one unit of work
    TICK = 1e-9          # every reading moves the clock a little, as a real clock's resolution would
    _seconds = 0.0


    def now():
        global _seconds
        _seconds += TICK
        return _seconds


    def work(units):
        global _seconds
        _seconds += units * UNIT


    def slowdown():
        """This run's factor: TINY_SLOWDOWN holds one per run of the suite ("2,1,1": the first run twice as
        slow; the last value holds for every later run); the file `runs` counts the runs."""
        factors = [float(f) for f in os.environ.get("TINY_SLOWDOWN", "1").split(",")]
        counter = Path(__file__).with_name("runs")
        run = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(run + 1))
        return factors[min(run, len(factors) - 1)]
'''

TINY_SUITE = """
    import pytest

    import fakeclock

    pytestmark = pytest.mark.benchmark
    SLOWDOWN = fakeclock.slowdown()       # read once per run of the suite


    @pytest.mark.benchmark(group="calibration")
    def test_calibration_first(benchmark):
        benchmark.pedantic(fakeclock.work, args=(1.0,), rounds=3)


    WORK = 2.0                            # units of the case `work` at slowdown 1


    @pytest.mark.benchmark(group="work")
    def test_work(benchmark):
        benchmark.pedantic(fakeclock.work, args=(WORK * SLOWDOWN,), rounds=3)


    @pytest.mark.reference
    @pytest.mark.benchmark(group="work")
    def test_reference_work(benchmark):
        benchmark.pedantic(fakeclock.work, args=(1.0,), rounds=1)


    @pytest.mark.benchmark(group="calibration")
    def test_calibration_last(benchmark):
        benchmark.pedantic(fakeclock.work, args=(1.0,), rounds=3)
"""


@pytest.fixture()
def tiny_suite(tmp_path, monkeypatch):
    """``run(COMMAND, *args, slowdown="1")``: `fusionbench bench COMMAND ARGS` on a tiny suite timed by a fake
    clock (no real work is timed), where the case `work` takes 2 * slowdown units and the calibration 1."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "fakeclock.py").write_text(textwrap.dedent(FAKE_CLOCK))
    (suite / "test_tiny.py").write_text(textwrap.dedent(TINY_SUITE))
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    benchmark: tiny suite\n    reference: unguarded\n")
    monkeypatch.setattr("fusionbench.devtools.bench.TIMER", "fakeclock.now")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(suite), os.environ.get("PYTHONPATH")])))
    baseline = tmp_path / "baseline.json"

    def run(command, *args, slowdown="1"):
        (suite / "runs").unlink(missing_ok=True)
        monkeypatch.setenv("TINY_SLOWDOWN", slowdown)
        return CliRunner().invoke(main, ["bench", command, *args, "--suite", str(suite), "--baseline", str(baseline)])

    return run, baseline


def work_rows(output):
    """``(baseline, now, change, verdict)`` of the case `work` in each of a check's tables."""
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in output.splitlines()
             if line.startswith("| work")]
    return [(float(base), float(now), change, verdict) for _, base, now, change, verdict in cells]


def work_row(output):
    """``(baseline, now, change, verdict)`` of the case `work` in a check's first table."""
    return work_rows(output)[0]


def test_refresh_stores_the_median_ratio_of_its_runs(tiny_suite):
    run, baseline = tiny_suite
    refreshed = run("refresh", "--runs", "3", slowdown="1,3,1")    # one run slowed 3x: the median ignores it
    assert refreshed.exit_code == 0, refreshed.output
    stored = json.loads(baseline.read_text())
    assert stored["timer"] == "fakeclock.now" and stored["command"] == "fusionbench bench refresh"
    assert list(stored["ratios"]) == ["work"]                      # the reference case is not guarded
    assert stored["ratios"]["work"] == pytest.approx(2.0) and stored["calibration_seconds"] == pytest.approx(0.01)


@pytest.mark.parametrize("slowdown, exit_code, verdict, ratio, confirmed", [
    ("1.2", 0, "ok", 2.4, False),                   # +20 %: within the tolerance
    ("0.5", 0, "faster", 1.0, False),
    ("1.3", 1, "SLOWER", 2.6, True),                # +30 % in every run: fails after confirming
    ("2,1,1", 0, "ok", 2.0, True),                  # a slow first run alone is pooled away
    ("2,2,1", 0, "ok", 2.0, True),                  # one normal run among three is enough: best times pooled
])
def test_check_fails_only_on_a_slowdown_that_the_confirming_runs_repeat(tiny_suite, slowdown, exit_code, verdict,
                                                                       ratio, confirmed):
    run, baseline = tiny_suite
    baseline.write_text(json.dumps({"ratios": {"work": 2.0}}))       # what a refresh at slowdown 1 stores
    checked = run("check", slowdown=slowdown)
    assert checked.exit_code == exit_code, checked.output
    assert ("more times to confirm" in checked.output) == confirmed
    base, now, change, found = work_row(checked.output)
    assert (base, found) == (2.0, verdict) and now == pytest.approx(ratio)
    assert float(change.removesuffix(" %")) == pytest.approx(100 * (ratio / 2.0 - 1), abs=0.05)
    assert ("FAILED: 1 case(s)" in checked.output) == (exit_code == 1)


def git(where, *args):
    """``git -C WHERE ARGS`` with a throwaway identity; its output, stripped."""
    return subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_case_still_slower_is_timed_against_the_code_of_the_baseline_commit_on_this_machine(tiny_suite, tmp_path):
    """A ratio that moved with the machine (the baseline read 1.0 elsewhere, this machine reads 2.0 on the
    same code) passes once the code of the commit that wrote the baseline reads 2.0 here too; code made
    30 % slower since that commit fails; a baseline changed since its commit cannot be traced and fails."""
    run, baseline = tiny_suite
    baseline.write_text(json.dumps({"ratios": {"work": 1.0}}))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "suite/test_tiny.py", "suite/fakeclock.py", "suite/pytest.ini", "baseline.json")
    git(tmp_path, "commit", "-q", "-m", "baseline")

    moved = run("check")
    assert moved.exit_code == 0, moved.output
    (_, _, change, first), (base, now, _, same) = work_rows(moved.output)
    assert (change, first) == ("+100.0 %", "SLOWER") and (base, now, same) == (2.0, 2.0, "ok")
    assert "3 runs each on this machine" in moved.output
    assert "slower than the baseline's commit on this machine" in moved.output

    tiny = tmp_path / "suite" / "test_tiny.py"
    tiny.write_text(tiny.read_text().replace("WORK = 2.0", "WORK = 2.6"))
    slowed = run("check")
    assert slowed.exit_code == 1, slowed.output
    assert work_rows(slowed.output)[1] == (2.0, 2.6, "+30.0 %", "SLOWER")
    assert "FAILED: 1 case(s)" in slowed.output

    tiny.write_text(tiny.read_text().replace("WORK = 2.6", "WORK = 2.0"))
    baseline.write_text(json.dumps({"ratios": {"work": 1.5}}))
    untraced = run("check")
    assert untraced.exit_code == 1, untraced.output
    assert f"cannot measure the baseline's own code on this machine: {baseline} changed since its last commit" \
        in untraced.output and len(work_rows(untraced.output)) == 1


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_shallow_clone_does_not_stand_in_for_the_baseline_commit(tmp_path):
    """In a clone of depth 1 the only commit seems to have written every file; the check must not compare
    the code with itself, so it reports that it cannot trace the baseline."""
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "baseline.json").write_text("{}")
    git(repo, "add", "baseline.json")
    git(repo, "commit", "-q", "-m", "baseline")
    (repo / "code.py").write_text("x = 1\n")
    git(repo, "add", "code.py")
    git(repo, "commit", "-q", "-m", "code")
    assert baseline_commit(repo / "baseline.json")[0] == git(repo, "rev-parse", "HEAD~1")
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(clone)], check=True)
    commit, _, why = baseline_commit(clone / "baseline.json")
    assert commit is None and why.startswith("a shallow clone")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_suite_outside_the_baselines_repository_is_reported_not_raised(tmp_path):
    """The baseline's commit holds no copy of a suite kept elsewhere: the check says so instead of failing
    on a path it cannot map into that commit."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    git(repo, "init", "-q")
    (repo / "baseline.json").write_text("{}")
    git(repo, "add", "baseline.json")
    git(repo, "commit", "-q", "-m", "baseline")
    rows, note = same_machine_check(elsewhere, repo / "baseline.json", ["work"])
    assert rows == [] and note == (f"cannot measure the baseline's own code on this machine: the suite {elsewhere} "
                                   f"is not in {repo.resolve()}")


def test_refresh_keeps_slower_ratios_or_replaces_named_cases(tiny_suite):
    run, baseline = tiny_suite
    assert run("refresh", "--runs", "1").exit_code == 0
    stored = json.loads(baseline.read_text())["ratios"]
    # a refresh that keeps the slower ratio does not narrow the baseline on a faster reading
    kept = run("refresh", "--runs", "1", "--keep-slower", slowdown="0.5")
    assert kept.exit_code == 0, kept.output
    assert json.loads(baseline.read_text())["ratios"] == stored
    # an unknown case leaves the file alone; a named case records its faster ratio
    unknown = run("refresh", "--runs", "1", "--case", "nope")
    assert unknown.exit_code == 2 and "--case: 'nope' not in the suite; its cases are work" in unknown.output
    assert json.loads(baseline.read_text())["ratios"] == stored
    named = run("refresh", "--runs", "1", "--case", "work", slowdown="0.25")
    assert named.exit_code == 0, named.output
    assert json.loads(baseline.read_text())["ratios"]["work"] == pytest.approx(0.5)
    both = run("refresh", "--case", "work", "--keep-slower")
    assert both.exit_code == 2 and "--keep-slower and --case exclude each other" in both.output


def test_a_failing_suite_is_an_error_with_pytest_output(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_broken.py").write_text("import pytest\n\n@pytest.mark.benchmark\ndef test_x(benchmark):\n"
                                          "    benchmark.pedantic(lambda: 1 / 0, rounds=1)\n")
    (tmp_path / "baseline.json").write_text(json.dumps({"ratios": {"x": 1.0}}))
    out = CliRunner().invoke(main, ["bench", "check", "--suite", str(suite), "--baseline",
                                    str(tmp_path / "baseline.json")])
    assert out.exit_code == 1
    assert "error: the benchmark suite failed (pytest exit 1)" in out.output and "ZeroDivisionError" in out.output


def test_without_baseline_check_and_refresh_use_this_machine_class_file(tiny_suite, tmp_path, monkeypatch):
    """End to end: a reference baseline recorded on another class is read with a note; a refresh here
    writes this class's own file beside it, leaves the reference alone, and the next check reads it."""
    run, _ = tiny_suite
    default = tmp_path / "baseline.json"
    monkeypatch.setattr("fusionbench.devtools.bench.DEFAULT_BASELINE", default)
    reference = {"machine": {"cpu": "Elsewhere Chip 9"}, "ratios": {"work": 2.0}}
    default.write_text(json.dumps(reference))
    suite = str(tmp_path / "suite")

    def bench(*args):
        (tmp_path / "suite" / "runs").unlink(missing_ok=True)
        return CliRunner().invoke(main, ["bench", *args, "--suite", suite])

    checked = bench("check")
    assert checked.exit_code == 0, checked.output
    assert "note: no baseline for this machine class" in checked.output
    assert "recorded on Elsewhere Chip" in checked.output
    refreshed = bench("refresh", "--runs", "1")
    assert refreshed.exit_code == 0, refreshed.output
    own = [p for p in tmp_path.glob("baseline.*.json")]
    assert len(own) == 1 and json.loads(default.read_text()) == reference          # the reference is untouched
    assert json.loads(own[0].read_text())["ratios"] == {"work": pytest.approx(2.0)}
    again = bench("check")
    assert again.exit_code == 0 and "note:" not in again.output and f"baseline {own[0]}" in again.output
