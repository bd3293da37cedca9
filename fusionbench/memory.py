"""The process's memory: what malloc does with freed blocks, and each run's peak resident memory.

**Per-run peaks.** A sweep runs its cells, and a tune worker its trials, one after another in one process,
so the process's lifetime peak (``ru_maxrss``) is the largest run's so far, not the current run's, and the
heap keeps what earlier runs freed (glibc returns little of a fragmented heap on its own: a tune worker
running MGAT trials grew from 1.5 to 5 GB resident over 7 trials with no object left alive). Before each
run, :func:`start_run_memory` hands the heap's free pages back (``malloc_trim``) and resets the peak
(Linux: writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM``); :func:`peak_memory_mb` reads the peak
since then (``VmHWM``), or the process's lifetime peak where ``/proc`` has neither.

**Keeping freed memory** in the process instead of handing it back to the OS (glibc only).

A training step allocates and frees the same large tensors every step: full-softmax scores and their
gradients are ``[S, n_items]`` (S targets in the batch; hundreds of MB for causal strategies on Beauty).
By default glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` when freed, and trims the heap's free top, so the next step's
tensor faults in freshly zeroed pages again: for MDSRec on Beauty a third of an epoch's CPU time was
system time (docs/performance.md). :func:`keep_freed_memory` raises the mmap threshold to 1 GiB and the
trim threshold to its maximum, so such blocks come from the heap and stay there for reuse. Results are
unchanged (allocation never changes arithmetic); the price is memory, since freed blocks are never
returned to the OS and large blocks of changing sizes fragment the heap: the resident peak of short
profiles grew 1.2-1.7x, and a profile of MDSRec's whole epoch with its batches in increasing size order
grew past 18 GB and was killed (docs/performance.md). So it is opt-in for training:
``FUSIONBENCH_MALLOC=keep``. ``fusionbench features image`` applies it always (``force``): its batches
have one size, so the heap is reused as it is; on all Toys photos it took the command from 17 min (two thirds
system time) to 4 min for 17 % more resident memory (docs/features.md).
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
import resource

SWITCH_ENV = "FUSIONBENCH_MALLOC"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 1 << 30            # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1      # the largest value mallopt takes (a C int): the heap top is kept
TOP_PAD = 1 << 28                   # grow the heap 256 MiB at a time (address space; pages are touched on use)


def _libc() -> ctypes.CDLL | None:
    """glibc, loaded (None on another C library)."""
    return ctypes.CDLL("libc.so.6") if platform.libc_ver()[0] == "glibc" else None


def keep_freed_memory(force: bool = False) -> bool:
    """With ``FUSIONBENCH_MALLOC=keep`` (or ``force``) on glibc, apply the settings above to this process's
    malloc; return whether they were applied."""
    libc = _libc()
    if not (force or os.environ.get(SWITCH_ENV) == "keep") or libc is None:
        return False
    return all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))


def start_run_memory() -> bool:
    """Before a run: give the heap's free pages back to the OS (glibc ``malloc_trim``) and reset this
    process's peak resident memory; return whether the peak was reset (Linux), i.e. whether
    :func:`peak_memory_mb` will give this run's own peak."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _high_water_mb() is not None
    except OSError:
        return False


def _high_water_mb() -> float | None:
    """``VmHWM`` of ``/proc/self/status`` in MiB (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) / 1024.0 if found else None


def peak_memory_mb() -> float:
    """Peak resident memory (MiB) since the last :func:`start_run_memory` (Linux), else of the process."""
    high_water = _high_water_mb()
    return high_water if high_water is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
