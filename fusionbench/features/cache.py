"""A small on-disk cache of named numpy arrays, keyed by a JSON-serialisable dict.

Entries live in ``<cache dir>/<namespace>/<sha256 of the canonical key JSON>.npz``; the cache dir is
``$FUSIONBENCH_CACHE`` or ``~/.cache/fusionbench``. A write goes to a temporary file in the same folder
and is moved into place with ``os.replace``, so readers see either no entry or a complete one. An entry
that cannot be read (e.g. truncated by hand) is recomputed and overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from fusionbench.atomic import atomic_write

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def cache_dir() -> Path:
    """The cache root: ``$FUSIONBENCH_CACHE`` if set and non-empty, else ``~/.cache/fusionbench``."""
    env = os.environ.get("FUSIONBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fusionbench"


def key_digest(key: dict) -> str:
    """sha256 hex digest of ``key`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def cache_path(namespace: str, key: dict) -> Path:
    """Where the entry for (``namespace``, ``key``) is stored."""
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"cache namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
    return cache_dir() / namespace / f"{key_digest(key)}.npz"


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # unreadable entry: recompute and overwrite


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_cached(namespace: str, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays stored under (``namespace``, ``key``), or ``None`` when there is no readable entry."""
    return _load(cache_path(namespace, key))


def cached_arrays(namespace: str, key: dict,
                  compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays stored under (``namespace``, ``key``), calling ``compute()`` only on a miss.

    Args:
        namespace: a sub-folder name (letters, digits, ``_.-``), e.g. ``"text-features"``.
        key: JSON-serialisable dict identifying the content; key order does not matter.
        compute: returns ``{name: array}`` (names must be valid identifiers, arrays not object dtype).

    If ``compute`` raises, nothing is written and the exception propagates.
    """
    path = cache_path(namespace, key)
    hit = _load(path)
    if hit is not None:
        return hit
    arrays = compute()
    if not isinstance(arrays, dict) or not all(isinstance(v, np.ndarray) for v in arrays.values()):
        raise TypeError(f"cache {namespace!r}: compute() must return a dict of numpy arrays")
    if any(v.dtype == object for v in arrays.values()):
        raise TypeError(f"cache {namespace!r}: object arrays cannot be cached")
    _write_atomic(path, arrays)
    return arrays
