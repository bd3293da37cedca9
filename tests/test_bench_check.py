"""The speed regression checker (``fusionbench bench``): the pure comparison, the ratio computation,
the baseline file, and the whole machinery end to end on a tiny suite with an injected slowdown."""
import json
import textwrap

import pytest
from click.testing import CliRunner

from fusionbench.bench import (
    CALIBRATION_GROUP,
    Measurement,
    SuiteError,
    calibrated_ratios,
    compare,
    median_of,
    pooled,
    quick_rounds,
    read_baseline,
    render,
    slower_of,
    with_cases,
)
from fusionbench.cli import main
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


TINY_SUITE = """
    import os

    import pytest

    pytestmark = pytest.mark.benchmark
    UNIT = 200_000  # loop steps, about 10 ms of CPU time (the check's clock, so sleeping would not count)
    ROUNDS = 30  # the best of many short rounds: a burst of load on a shared (hyper-threaded) core slows a few


    def spin(steps):
        total = 0
        for i in range(steps):
            total += i
        return total


    @pytest.mark.benchmark(group="calibration")
    def test_calibration_first(benchmark):
        benchmark.pedantic(spin, args=(UNIT,), rounds=ROUNDS, warmup_rounds=1)


    @pytest.mark.benchmark(group="work")
    def test_work(benchmark):
        slowdown = float(os.environ.get("TINY_SLOWDOWN", "1"))
        benchmark.pedantic(spin, args=(int(UNIT * slowdown),), rounds=ROUNDS, warmup_rounds=1)


    @pytest.mark.reference
    @pytest.mark.benchmark(group="work")
    def test_reference_work(benchmark):
        benchmark.pedantic(spin, args=(UNIT,), rounds=1)


    @pytest.mark.benchmark(group="calibration")
    def test_calibration_last(benchmark):
        benchmark.pedantic(spin, args=(UNIT,), rounds=ROUNDS, warmup_rounds=1)
"""


def test_check_passes_when_faster_and_fails_on_an_injected_two_times_slowdown(tmp_path, monkeypatch):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_tiny.py").write_text(textwrap.dedent(TINY_SUITE))
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    benchmark: tiny suite\n    reference: unguarded\n")
    baseline = tmp_path / "baseline.json"
    args = ["--suite", str(suite), "--baseline", str(baseline)]
    runner = CliRunner()

    # the median of 3 runs, as the real refresh: under heavy load one run's ratio was once 1.57x its usual
    refreshed = runner.invoke(main, ["bench", "refresh", "--runs", "3", *args], catch_exceptions=False)
    assert refreshed.exit_code == 0, refreshed.output
    stored = json.loads(baseline.read_text())
    assert stored["timer"] == "time.process_time" and stored["command"] == "fusionbench bench refresh"
    assert list(stored["ratios"]) == ["work"]  # the reference case is not guarded

    # (exact equality of two runs is at the mercy of a shared machine; half the work is "faster" for sure)
    monkeypatch.setenv("TINY_SLOWDOWN", "0.5")
    faster = runner.invoke(main, ["bench", "check", *args], catch_exceptions=False)
    assert faster.exit_code == 0, faster.output
    assert "faster" in faster.output and "ok: no case more than 25% slower" in faster.output

    monkeypatch.setenv("TINY_SLOWDOWN", "2")
    slow = runner.invoke(main, ["bench", "check", *args], catch_exceptions=False)
    assert slow.exit_code == 1, slow.output
    assert "more times to confirm" in slow.output
    row = next(line for line in slow.output.splitlines() if line.startswith("| work"))
    case, base, now, change, verdict = (c.strip() for c in row.strip().strip("|").split("|"))
    assert verdict == "SLOWER" and float(now) / float(base) > 1.25 and change.startswith("+")
    assert "FAILED: 1 case(s)" in slow.output

    # a refresh that keeps the slower ratio does not narrow the baseline on a faster reading
    monkeypatch.setenv("TINY_SLOWDOWN", "0.5")
    kept = runner.invoke(main, ["bench", "refresh", "--runs", "1", "--keep-slower", *args], catch_exceptions=False)
    assert kept.exit_code == 0, kept.output
    assert json.loads(baseline.read_text())["ratios"] == stored["ratios"]

    # a refresh of a named case records its faster ratio; an unknown case leaves the file alone
    unknown = runner.invoke(main, ["bench", "refresh", "--runs", "1", "--case", "nope", *args])
    assert unknown.exit_code == 2 and "--case: 'nope' not in the suite; its cases are work" in unknown.output
    assert json.loads(baseline.read_text())["ratios"] == stored["ratios"]
    # a quarter of the work, median of 3 runs: far below the baseline even on a loaded machine (half the
    # work in one run once read 0.82x under two training jobs)
    monkeypatch.setenv("TINY_SLOWDOWN", "0.25")
    named = runner.invoke(main, ["bench", "refresh", "--runs", "3", "--case", "work", *args], catch_exceptions=False)
    assert named.exit_code == 0, named.output
    assert json.loads(baseline.read_text())["ratios"]["work"] < stored["ratios"]["work"] / 1.25
    both = runner.invoke(main, ["bench", "refresh", "--case", "work", "--keep-slower", *args])
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
