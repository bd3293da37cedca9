"""fusionbench.cpu_share: the run-queue wait of a thread and the share of a core it gets."""
import os
import subprocess
import sys
import time

import pytest

from fusionbench import cpu_share


def spin(seconds):
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass


@pytest.mark.skipif(cpu_share.queue_wait() is None, reason="the kernel keeps no scheduler statistics here")
def test_the_queue_wait_is_the_threads_and_never_decreases():
    before = cpu_share.queue_wait()
    spin(0.05)
    assert cpu_share.queue_wait() >= before >= 0


def test_the_share_is_a_fraction_of_a_core_with_and_without_the_schedulers_statistics(monkeypatch):
    assert 0 < cpu_share.core_share(0.05) <= 1
    monkeypatch.setattr(cpu_share, "queue_wait", lambda: None)   # elsewhere: CPU time over wall time
    assert 0 < cpu_share.core_share(0.05) <= 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_busy_process_on_the_same_core_takes_about_half_of_it():
    """This process and a spinning one pinned to one core: each gets about half of it (at most 0.75
    allowed, for a scheduler's slices)."""
    mine = os.sched_getaffinity(0)
    core = min(mine)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {core})
        os.sched_setaffinity(0, {core})
        spin(0.1)                                  # the spinner is running
        assert cpu_share.core_share(0.5) < 0.75
    finally:
        os.sched_setaffinity(0, mine)
        busy.kill()
        busy.wait()
