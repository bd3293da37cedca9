"""The test suite's own guarantees (issue 23): every test runs under a time limit (pytest-timeout), and the
tests that depend on the machine (full datasets, timings, the allocator) are opt-in markers."""
import shlex
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_every_test_runs_under_a_time_limit(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout"), \
        "pytest-timeout is not installed: pip install -e '.[test]' (tests would run without a time limit)"
    assert 60 <= float(pytestconfig.getini("timeout")) <= 600


def test_machine_dependent_markers_are_opt_in():
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]
    args = shlex.split(config["addopts"])
    selection = args[args.index("-m") + 1]
    registered = {line.split(":")[0] for line in config["markers"]}
    for marker in ("slow", "benchmark", "memory"):
        assert marker in registered and f"not {marker}" in selection
