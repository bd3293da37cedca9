"""Readers for the dataset folder format (see docs/datasets.md), with errors that name file and line.

Every reader accepts plain or ``.gz`` files. Sequences are returned flat (``flat``, ``offsets``) so
nothing downstream keeps per-user Python lists.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from fusionbench.data.core import DenseChannel
from fusionbench.errors import DataError


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def find_file(folder: Path, name: str, required: bool = True) -> Optional[Path]:
    """``folder/name`` or ``folder/name.gz``; a missing required file is a :class:`DataError`."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(f"missing file {folder / name} (or {name}.gz)")
    return None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line.rstrip("\n")


def read_sequences(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``user_id item_id item_id ...`` lines (oldest item first, item ids >= 1).

    Returns ``flat [n_interactions]`` and ``offsets [n_users + 1]`` (long), users in file order.
    """
    lengths: list[int] = []
    chunks: list[np.ndarray] = []
    seen_users: set[str] = set()
    for number, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected 'user_id item_id [item_id ...]', got {line[:80]!r}")
        if fields[0] in seen_users:
            raise DataError(f"{path}:{number}: user {fields[0]!r} appears on more than one line")
        seen_users.add(fields[0])
        try:
            items = np.array(fields[1:], dtype=np.int64)
        except ValueError:
            bad = next(f for f in fields[1:] if not f.lstrip("-").isdigit())
            raise DataError(f"{path}:{number}: item id {bad!r} is not an integer") from None
        if (items < 1).any():
            raise DataError(f"{path}:{number}: item ids must be >= 1 (0 is padding), got {int(items.min())}")
        chunks.append(items)
        lengths.append(items.size)
    if not chunks:
        raise DataError(f"{path}: no sequences found")
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return torch.from_numpy(np.concatenate(chunks)), offsets


def read_item_table(path: Path, n_items: int) -> dict[str, list[str]]:
    """Read a tab-separated item table with a header that has an ``item_id`` column.

    Returns column name -> list of ``n_items + 1`` strings indexed by item id ("" where the table has
    no row for that id). Rows for ids above ``n_items`` (items filtered away) are ignored.
    """
    rows = _lines(path)
    try:
        _, header_line = next(rows)
    except StopIteration:
        raise DataError(f"{path}: empty item table (expected a header with 'item_id')") from None
    header = header_line.split("\t")
    if "item_id" not in header:
        raise DataError(f"{path}:1: header must contain an 'item_id' column, got {header}")
    id_col = header.index("item_id")
    columns = {name: [""] * (n_items + 1) for name in header if name != "item_id"}
    for number, line in rows:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(fields)}")
        try:
            item = int(fields[id_col])
        except ValueError:
            raise DataError(f"{path}:{number}: item_id {fields[id_col]!r} is not an integer") from None
        if item < 1:
            raise DataError(f"{path}:{number}: item_id must be >= 1, got {item}")
        if item > n_items:
            continue
        for name, value in zip(header, fields):
            if name != "item_id":
                columns[name][item] = value
    return columns


def read_attribute_json(path: Path, n_items: int) -> list[tuple[int, ...]]:
    """Read ``{"item_id": [attribute ids >= 1], ...}``; returns a list indexed by item id."""
    with _open_text(path) as fh:
        try:
            raw = json.load(fh)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON ({err})") from None
    attributes: list[tuple[int, ...]] = [()] * (n_items + 1)
    for key, ids in raw.items():
        if not key.isdigit() or not isinstance(ids, list) or not all(isinstance(i, int) and i >= 1 for i in ids):
            raise DataError(f"{path}: entry {key!r} must map an item id to a list of attribute ids >= 1")
        if int(key) <= n_items:
            attributes[int(key)] = tuple(ids)
    return attributes


def read_feature_matrix(path: Path, n_items: int) -> DenseChannel:
    """Read a ``.npy`` float matrix ``[n_items + 1, d]`` aligned to item ids; all-NaN rows are absent."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as .npy ({err})") from None
    if array.ndim != 2 or array.shape[0] != n_items + 1:
        raise DataError(
            f"{path}: expected a 2-d array of shape [n_items + 1, d] = [{n_items + 1}, d], "
            f"got shape {list(array.shape)}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: expected a float array, got dtype {array.dtype}")
    nan = np.isnan(array)
    partial = nan.any(1) & ~nan.all(1)
    if partial[1:].any():
        row = int(np.flatnonzero(partial[1:])[0]) + 1
        raise DataError(f"{path}: row {row} is partly NaN; a row must be all finite or all NaN (absent)")
    if np.isinf(array).any():
        raise DataError(f"{path}: contains infinite values")
    present = ~nan.all(1)
    present[0] = False
    features = np.where(present[:, None], np.nan_to_num(array), 0.0).astype(np.float32)
    return DenseChannel(features=features, present=present)
