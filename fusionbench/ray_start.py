"""Starting (or joining) Ray for ``fusionbench sweep --engine ray`` and ``fusionbench tune``.

Ray runs its worker processes at niceness 15 by default (its ``worker_niceness`` setting), below the
driver: on a machine that is also training other runs, a tune's trials or a sweep's cells then get a
core only when those jobs leave it idle (on 2 cores beside two training jobs a synthetic trial's epoch
took 12-38 s instead of 0.3 s). A local instance started here gives its workers the driver's own
niceness instead (``RAY_worker_niceness``, unless the environment already sets it), so they share the
machine as equals; joining a running cluster (``--address``) leaves the cluster's workers as they are.
"""
from __future__ import annotations

import os
from typing import Any, Optional

WORKER_NICENESS = "RAY_worker_niceness"


def init_ray(address: Optional[str], progress: bool, **options: Any) -> None:
    """``ray.init`` unless Ray is running in this process: join ``address`` or, when it is None, start a
    local instance whose workers run at this process's niceness. ``options`` go to ``ray.init``."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        os.environ.setdefault(WORKER_NICENESS, str(os.nice(0)))
    ray.init(address=address, include_dashboard=False, log_to_driver=progress, **options)
