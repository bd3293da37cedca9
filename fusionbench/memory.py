"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

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

SWITCH_ENV = "FUSIONBENCH_MALLOC"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 1 << 30            # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1      # the largest value mallopt takes (a C int): the heap top is kept
TOP_PAD = 1 << 28                   # grow the heap 256 MiB at a time (address space; pages are touched on use)


def keep_freed_memory(force: bool = False) -> bool:
    """With ``FUSIONBENCH_MALLOC=keep`` (or ``force``) on glibc, apply the settings above to this process's
    malloc; return whether they were applied."""
    if not (force or os.environ.get(SWITCH_ENV) == "keep") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
