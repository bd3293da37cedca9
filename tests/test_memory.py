"""``fusionbench.memory.keep_freed_memory`` (``FUSIONBENCH_MALLOC=keep``): large freed blocks are reused
without page faults (marked ``memory``, opt-in: ``tox -e memory`` or ``pytest -m memory``), and a run's
results are the same as with glibc's defaults."""
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
