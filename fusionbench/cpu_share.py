r"""How much of a CPU core the calling thread gets: what the run-time estimates of ``sweep --deadline``
read, so that runs timed on a crowded machine and a machine crowded now are both accounted for.

Linux keeps, per thread, the time it has run and the time it has waited on a run queue, runnable but
without a core (``/proc/thread-self/schedstat``: run ns, wait ns, time slices). Over any span of wall
time :math:`W` in which a thread is busy, with run time :math:`r` and queue wait :math:`q`,

.. math:: W \approx r + q,\qquad \text{share} = \frac{r}{r + q}

so a span that waited :math:`q` would have taken :math:`W - q` with a core to itself. Time blocked on
anything else (I/O, a lock, another thread) is neither, and stays in :math:`W - q`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def queue_wait() -> Optional[float]:
    """Seconds the calling thread has waited on a run queue since it started; ``None`` where the kernel
    does not say (not Linux, or scheduler statistics compiled out)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def core_share(spin: float = 0.2) -> float:
    """The share of a core the calling thread gets now, in (0, 1]: run time over run time plus queue wait
    while it spins ``spin`` seconds (1 on an idle core, about 1/2 with one other busy thread on the only
    core). Where the queue wait is not available, the thread's CPU time over the wall time of the spin."""
    wall, cpu, waited = time.perf_counter(), time.thread_time(), queue_wait()
    while time.perf_counter() - wall < spin:
        pass
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    if waited is not None:
        wait = max(queue_wait() - waited, 0.0)
        return min(1.0, max(cpu, 1e-9) / (max(cpu, 1e-9) + wait))
    return min(1.0, max(cpu / wall, 1e-3))
