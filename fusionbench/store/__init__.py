"""The results store and everything that owns its files.

- :mod:`.results`: the SQLite store (:class:`ResultStore`), run identity (:func:`config_hash`), the typed
  :class:`RunSummary` a finished run writes, and where a run's checkpoint and kept weights live
  (:meth:`ResultStore.checkpoint_path`, :meth:`ResultStore.weights_path`).
- :mod:`.claims`: which process trains what among the processes sharing a store (:meth:`ResultStore.claim`).
- :mod:`.admin`: ``fusionbench store show`` and ``store remove``.
- :mod:`.archive`: ``fusionbench store export`` / ``store import`` (portable, checked archives).
- :mod:`.upgrade`: ``fusionbench store upgrade`` (re-identify stored runs after options were added).

Only :mod:`.results` (with :mod:`.claims`) is imported here; admin, archive and upgrade read the harness
(runner, reports) and are imported where their commands run.
"""
from fusionbench.store.results import (
    CHECKPOINTS,
    KEPT_WEIGHTS,
    UNSEEN_TEST,
    ResultStore,
    RunSummary,
    canonical_json,
    config_hash,
)

__all__ = ["CHECKPOINTS", "KEPT_WEIGHTS", "UNSEEN_TEST", "ResultStore", "RunSummary", "canonical_json", "config_hash"]
