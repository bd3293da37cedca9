"""Modality tables of a dataset: features, presence and codes of every channel, cached on disk.

Channels: ``text`` (titles -> all-MiniLM-L6-v2, empty title = absent), ``attr`` (attribute sets ->
multi-hot / TruncatedSVD features, attribute ids as codes), and every dense channel the data brings
(features as given). Text and dense codes come from :func:`~fusionbench.features.codes.compute_codes`.

Cache keys: dataset checksum, channel, encoder id, every parameter and :data:`CODES_VERSION`; features
and codes are cached separately, so a new ``n_clusters`` or ``k`` does not re-run the text encoder.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from fusionbench.context import ModalityTable
from fusionbench.data.core import ItemSide
from fusionbench.errors import UserInputError
from fusionbench.features.cache import cached_arrays
from fusionbench.features.codes import CODES_VERSION, Reduce, attribute_codes, attribute_features, compute_codes

REDUCE_DIM = 128
SEED = 2023
ATTR_DIM = 128


def _text_features(titles: list[str]) -> dict[str, np.ndarray]:
    from fusionbench.features.text import encode_texts

    present = np.array([bool(t and t.strip()) for t in titles], dtype=bool)
    present[0] = False
    rows = np.flatnonzero(present)
    features = np.zeros((len(titles), 384), dtype=np.float32)
    features[rows] = encode_texts([titles[i] for i in rows])
    return {"features": features, "present": present}


def _codes(name: str, features: np.ndarray, present: np.ndarray, key: dict, n_clusters: int, k: int,
           reduce: Reduce) -> np.ndarray:
    code_key = {**key, "n_clusters": n_clusters, "k": k, "reduce": reduce, "reduce_dim": REDUCE_DIM, "seed": SEED}

    def compute() -> dict[str, np.ndarray]:
        try:
            return {"codes": compute_codes(features, present, n_clusters, k, reduce, REDUCE_DIM, SEED)}
        except ValueError as err:
            raise UserInputError(f"modality {name!r}: {err}") from None

    return cached_arrays("codes", code_key, compute)["codes"]


def _table(features: np.ndarray, present: np.ndarray, codes: np.ndarray, n_codes: int) -> ModalityTable:
    present = present.copy()
    present[0] = False
    features = np.where(present[:, None], features, 0.0).astype(np.float32)
    return ModalityTable(features=torch.from_numpy(features), present=torch.from_numpy(present),
                         codes=torch.from_numpy(codes.astype(np.int64)), n_codes=int(n_codes))


def modality_tables(side: ItemSide, n_items: int, checksum: str, n_clusters: int = 30, k: int = 3,
                    reduce: Reduce = "ae", attr_max_codes: int = 8,
                    modalities: Optional[list[str]] = None) -> dict[str, ModalityTable]:
    """Build (or read from cache) the :class:`ModalityTable` of each requested channel.

    Args:
        side: the dataset's raw item side information.
        n_items: n; every table has ``n + 1`` rows (row 0 = padding: zeros, absent, sentinel codes).
        checksum: the dataset checksum (``SequenceData.checksum()``), part of every cache key.
        n_clusters, k, reduce: code construction for ``text`` and dense channels (see ``compute_codes``).
        attr_max_codes: codes per item of ``attr`` (the item's first attribute ids).
        modalities: channels to build; ``None`` = all of ``side.modality_names()``.

    Returns:
        name -> table, sorted by name. ``text``: 384-d, C = ``n_clusters``; ``attr``: ``min(128,
        n_attributes)``-d, codes = attribute ids - 1, ``n_codes = n_attributes``; dense: as given.
    """
    available = side.modality_names()
    wanted = available if modalities is None else list(dict.fromkeys(modalities))
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise UserInputError(
            f"unknown modality {unknown[0]!r} for this dataset; available: {', '.join(available) or 'none'}"
        )
    base = {"checksum": checksum, "n_items": n_items, "version": CODES_VERSION}
    tables: dict[str, ModalityTable] = {}
    for name in sorted(wanted):
        if name in side.dense:  # features that come with the data win over derived ones
            channel = side.dense[name]
            features = np.asarray(channel.features, dtype=np.float32)
            present = np.asarray(channel.present, dtype=bool)
            if features.shape[0] != n_items + 1 or present.shape != (n_items + 1,):
                raise ValueError(f"dense channel {name!r}: expected {n_items + 1} rows, got {features.shape[0]}")
            key = {**base, "channel": name, "encoder": "dense", "dim": int(features.shape[1])}
            codes = _codes(name, features, present, key, n_clusters, k, reduce)
            tables[name] = _table(features, present, codes, n_clusters)
        elif name == "text":
            from fusionbench.features.text import MAX_TOKENS, TEXT_ENCODER

            titles = _aligned(side.titles, n_items, "titles")
            key = {**base, "channel": "text", "encoder": TEXT_ENCODER, "max_tokens": MAX_TOKENS}
            feats = cached_arrays("features", key, lambda: _text_features(titles))
            codes = _codes(name, feats["features"], feats["present"], key, n_clusters, k, reduce)
            tables[name] = _table(feats["features"], feats["present"], codes, n_clusters)
        elif name == "attr":
            attributes = _aligned(side.attributes, n_items, "attributes")
            key = {**base, "channel": "attr", "encoder": "multi-hot-svd", "dim": ATTR_DIM, "seed": SEED,
                   "n_attributes": side.n_attributes, "max_codes": attr_max_codes}

            def compute_attr() -> dict[str, np.ndarray]:
                present = np.array([len(a) > 0 for a in attributes], dtype=bool)
                present[0] = False
                return {"features": attribute_features(attributes, side.n_attributes, ATTR_DIM, SEED),
                        "present": present, "codes": attribute_codes(attributes, attr_max_codes)}

            arrays = cached_arrays("features", key, compute_attr)
            tables[name] = _table(arrays["features"], arrays["present"], arrays["codes"], side.n_attributes)
    return tables


def _aligned(values: Optional[list], n_items: int, what: str) -> list:
    if values is None or len(values) != n_items + 1:
        got = "none" if values is None else len(values)
        raise ValueError(f"item side {what}: expected n_items + 1 = {n_items + 1} entries, got {got}")
    return values
