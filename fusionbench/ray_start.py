"""Starting (or joining) Ray for ``fusionbench sweep --engine ray`` and ``fusionbench tune``.

Ray runs its worker processes at niceness 15 by default (its ``worker_niceness`` setting), below the
driver: on a machine that is also training other runs, a tune's trials or a sweep's cells then get a
core only when those jobs leave it idle (on 2 cores beside two training jobs a synthetic trial's epoch
took 12-38 s instead of 0.3 s). A local instance started here gives its workers the driver's own
niceness instead (``RAY_worker_niceness``, unless the environment already sets it), so they share the
machine as equals; joining a running cluster (``--address``) leaves the cluster's workers as they are.

``ray.init`` also takes over SIGTERM in the driver (a Python handler that exits and, in its core worker, a
C-level one that aborts the process with a stack dump). A command that unwinds on SIGTERM
(:mod:`fusionbench.terminate`) gets its own handler back once Ray has started, so ``kill`` stops a sweep
on Ray or a tune as it stops a local sweep: finished runs exported, the interrupted ones resumable.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

WORKER_NICENESS = "RAY_worker_niceness"


def init_ray(address: Optional[str], progress: bool, **options: Any) -> None:
    """``ray.init`` unless Ray is running in this process: join ``address`` or, when it is None, start a
    local instance whose workers run at this process's niceness. ``options`` go to ``ray.init``. A Python
    SIGTERM handler set before (the module docstring) is set again after."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        os.environ.setdefault(WORKER_NICENESS, str(os.nice(0)))
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(address=address, include_dashboard=False, log_to_driver=progress, **options)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)
