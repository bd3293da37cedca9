"""``fusionbench.memory``: with ``keep_freed_memory`` (``FUSIONBENCH_MALLOC=keep``) large freed blocks are
reused without page faults (marked ``memory``, opt-in: ``tox -e memory`` or ``pytest -m memory``) and a run's
results are the same as with glibc's defaults; each run's stored peak memory is its own, not the largest of
the runs its process ran before."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")

FAULTS = """
import resource, sys, torch
from fusionbench.memory import keep_freed_memory
print(keep_freed_memory())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for step in range(12):         # a step's large tensors, allocated, written and freed, as training does
    before = faults()
    blocks = [torch.empty(n << 18).fill_(1.0) for n in (160, 64, 160)]   # 160 MiB, 64 MiB, 160 MiB
    del blocks
    counts.append(faults() - before)
print(sum(counts[-4:]))     # the heap settles within a few steps
"""


def faults_over_last_steps(malloc: str) -> tuple[bool, int]:
    env = {**os.environ, "FUSIONBENCH_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.memory       # page faults depend on the allocator and the machine's memory pressure: opt-in
def test_freed_blocks_are_reused_without_faulting_pages_in_again():
    applied, kept = faults_over_last_steps("keep")
    not_applied, system = faults_over_last_steps("")      # the default: glibc's settings
    assert applied and not not_applied
    pages = 4 * (384 << 20) // os.sysconf("SC_PAGE_SIZE")     # the last four steps, 384 MiB each
    assert system > 0.9 * pages            # glibc's defaults: every step faults its blocks in again
    assert kept < 0.1 * pages


def test_a_run_gives_the_same_metrics_with_and_without_kept_memory(cycle_folder):
    folder = cycle_folder(80)
    args = [sys.executable, "-m", "fusionbench.cli", "run", "--strategy", "sasrec", "--dataset", "folder",
            "--set", f"data.path={folder}", "--epochs", "2", "--set", "dim=16", "--set", "heads=1", "--quiet"]
    tables = []
    for malloc in ("keep", ""):
        env = {**os.environ, "FUSIONBENCH_MALLOC": malloc, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        tables.append(out.stdout.splitlines()[-4:])      # the metrics table
    assert tables[0] == tables[1]
    assert "test" in tables[0][-1]


PEAK = """
import sys, torch
from fusionbench.memory import peak_memory_mb, start_run_memory
big = torch.ones(600 << 18)                     # 600 MiB, touched
del big
print(peak_memory_mb())
print(start_run_memory())
small = torch.ones(100 << 18)                   # 100 MiB
print(peak_memory_mb())
"""

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="per-run peaks need Linux /proc")


@needs_proc
def test_start_run_memory_resets_the_peak_to_what_comes_after():
    out = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True).stdout.split()
    before, reset, after = float(out[0]), out[1], float(out[2])
    assert reset == "True"
    assert before > after + 400            # the 600 MiB block no longer counts
    assert after > 100                     # the 100 MiB one does


# an earlier, larger run (or trial) of the same process, after the imports: 800 MiB touched and freed; prints
# the peak so far
EARLIER_RUN = """
from fusionbench.memory import peak_memory_mb
big = torch.ones(800 << 18)
del big
print(peak_memory_mb())
"""

SWEEP_PEAKS = """
import sys, torch
from fusionbench.runner import RunRequest, run_experiment
from fusionbench.store import ResultStore
store = ResultStore(sys.argv[1])
""" + EARLIER_RUN + """
options = {"n_users": "60", "n_codes": "3", "per_cell": "2", "max_len": "8"}
run_experiment(RunRequest(strategy="sasrec", dataset="synthetic", seed=0, strategy_options={"dim": "8"},
                          train_options={"epochs": "1"}, dataset_options=options), store=store, progress=False)
print(store.runs()["peak_memory_mb"].iloc[0])
"""


@needs_proc
def test_a_run_stores_its_own_peak_not_its_process_lifetime_peak(tmp_path):
    out = subprocess.run([sys.executable, "-c", SWEEP_PEAKS, str(tmp_path / "runs.db")], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    before, stored = map(float, out.stdout.split()[-2:])
    assert 0 < stored < before - 600, (before, stored)        # the earlier 800 MiB block is not this run's


TRIAL_PEAKS = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from test_tune import tiny_part
from fusionbench.tune import TrialSpec, train_trial
""" + EARLIER_RUN + """
reports = []
train_trial({"train.lr": 0.01, "dropout": 0.1, "dim": 16, "layers": 1}, TrialSpec(tiny_part(), sys.argv[1]),
            reports.append)
print(reports[-1]["peak_memory_mb"])
"""


@needs_proc
def test_a_tune_trial_reports_its_own_peak(tmp_path):
    """A reused Ray worker runs trial after trial: each reports the peak of its own training."""
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", TRIAL_PEAKS, str(tmp_path), tests], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    before, reported = map(float, out.stdout.split()[-2:])
    assert 0 < reported < before - 600, (before, reported)     # the 800 MiB block is not the trial's
