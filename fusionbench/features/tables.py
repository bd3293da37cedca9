"""Modality tables of a dataset: features, presence and codes of every channel, cached on disk.

Channels: ``text`` (one text source -> all-MiniLM-L6-v2, empty text = absent), ``attr`` (attribute sets, encoded
as ``attr`` chooses, see below), ``image`` (one image source, ``image`` below), and every dense channel the data
brings (features as given). Text and
dense codes come from :func:`~fusionbench.features.codes.compute_codes`.

``attr`` encodings (:data:`ATTR_ENCODINGS`, the run option ``features.attr``):

- ``"ids"``: no dense features (width 0); codes = the item's first ``attr_max_codes`` attribute ids
  (``n_codes`` = number of attributes). Feature strategies then learn one embedding per attribute id
  (:class:`strategies.fusion.ModalityChannel`); MMSR makes them graph nodes.
- ``"svd"``: the L2-normalised multi-hot projected by TruncatedSVD to :data:`ATTR_DIM`, and codes from
  those features like any dense channel's (k-means clusters, ``n_clusters`` and ``k`` as for text).

Cache keys: dataset checksum, channel, encoder id, every parameter and :data:`CODES_VERSION`; features
and codes are cached separately, so a new ``n_clusters`` or ``k`` does not re-run the text encoder.
``text`` keys also name the text source and hash its texts (the data checksum covers only the data's
original source, so that adding a source keeps every run's identity).
``image`` sources (the run option ``features.image``): ``"encoder"`` sources are photo folders encoded by
EfficientNet-Lite0 (:func:`~fusionbench.features.image.extract_image_channel`: resumable, cached under the
folder fingerprint, the item -> file mapping and the encoder parameters; unreadable photos leave their item
absent); ``"file"`` sources are feature matrices read as given (all-NaN rows absent; float16 is widened to
float32), their codes keyed by the file's sha256. A dense channel named ``image`` that comes with the data is
used as given whatever ``image`` says.
``attr`` under ``"ids"`` reads no cache (its codes are the attribute ids themselves); under ``"svd"`` its
features are cached under encoder ``multi-hot-svd`` and its codes under that key plus the code parameters.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import torch

from fusionbench.context import ModalityTable
from fusionbench.data.core import DEFAULT_IMAGE_SOURCE, ItemSide, unknown_image_source, unknown_text_source
from fusionbench.errors import UserInputError
from fusionbench.features.cache import cached_arrays
from fusionbench.features.codes import CODES_VERSION, Reduce, attribute_codes, attribute_features, compute_codes

REDUCE_DIM = 128
SEED = 2023
ATTR_DIM = 128
ATTR_ENCODINGS = ("ids", "svd")


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
                    modalities: Optional[list[str]] = None, attr: str = "ids",
                    text: Optional[str] = None, image: Optional[str] = None) -> dict[str, ModalityTable]:
    """Build (or read from cache) the :class:`ModalityTable` of each requested channel.

    Args:
        side: the dataset's raw item side information.
        n_items: n; every table has ``n + 1`` rows (row 0 = padding: zeros, absent, sentinel codes).
        checksum: the dataset checksum (``SequenceData.checksum()``), part of every cache key.
        n_clusters, k, reduce: code construction for ``text`` and dense channels (see ``compute_codes``).
        attr_max_codes: codes per item of ``attr`` under ``attr="ids"`` (the item's first attribute ids).
        modalities: channels to build; ``None`` = all of ``side.modality_names()``.
        attr: encoding of the derived ``attr`` channel, ``"ids"`` or ``"svd"`` (module docstring); a dense
            channel named ``attr`` that comes with the data is used as given either way.
        text: the text source ``text`` reads (a name in ``side.text_sources()``, as ``features.text``
            resolved for the run); ``None`` = the data's original one (``side.titles``), which every run
            read before text sources could be chosen. Items whose text is empty are absent.
        image: the image source ``image`` reads (a name in ``side.image_sources``, ``features.image``);
            ``None`` = :data:`~fusionbench.data.core.DEFAULT_IMAGE_SOURCE`.

    Returns:
        name -> table, sorted by name. ``text``: 384-d, C = ``n_clusters``; ``attr`` under ``"ids"``: 0-d,
        codes = attribute ids - 1, ``n_codes = n_attributes``; under ``"svd"``: ``min(128, n_attributes)``-d,
        C = ``n_clusters``; ``image``: 1280-d (EfficientNet-Lite0) or the file's width, C = ``n_clusters``;
        dense: as given.
    """
    if attr not in ATTR_ENCODINGS:
        raise UserInputError(f"option 'attr' must be one of {', '.join(ATTR_ENCODINGS)}, got {attr!r}")
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

            sources = side.text_sources()
            source = next(iter(sources)) if text is None else text
            if source not in sources:
                raise unknown_text_source(source, list(sources))
            titles = _aligned(sources[source], n_items, f"texts {source!r}")
            # the data checksum covers the original text source only: the key names the source and hashes its texts
            digest = hashlib.sha256("\x1f".join(titles).encode()).hexdigest()
            key = {**base, "channel": "text", "encoder": TEXT_ENCODER, "max_tokens": MAX_TOKENS,
                   "text": source, "text_sha256": digest}
            feats = cached_arrays("features", key, lambda: _text_features(titles))
            codes = _codes(name, feats["features"], feats["present"], key, n_clusters, k, reduce)
            tables[name] = _table(feats["features"], feats["present"], codes, n_clusters)
        elif name == "image":
            source = DEFAULT_IMAGE_SOURCE if image is None else image
            if source not in side.image_sources:
                raise unknown_image_source(source, list(side.image_sources))
            features, present, key = _image_features(side.image_sources[source], source, n_items, base)
            codes = _codes(name, features, present, key, n_clusters, k, reduce)
            tables[name] = _table(features, present, codes, n_clusters)
        elif name == "attr":
            attributes = _aligned(side.attributes, n_items, "attributes")
            present = np.array([len(a) > 0 for a in attributes], dtype=bool)
            present[0] = False
            if attr == "ids":
                tables[name] = _table(np.zeros((n_items + 1, 0), dtype=np.float32), present,
                                      attribute_codes(attributes, attr_max_codes), side.n_attributes)
                continue
            key = {**base, "channel": "attr", "encoder": "multi-hot-svd", "dim": ATTR_DIM, "seed": SEED,
                   "n_attributes": side.n_attributes}
            arrays = cached_arrays("features", key, lambda: {
                "features": attribute_features(attributes, side.n_attributes, ATTR_DIM, SEED), "present": present})
            codes = _codes(name, arrays["features"], arrays["present"], key, n_clusters, k, reduce)
            tables[name] = _table(arrays["features"], arrays["present"], codes, n_clusters)
    return tables


def _image_features(source, name: str, n_items: int, base: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(features, present, cache key)`` of one image source (module docstring)."""
    if source.kind == "file":
        from fusionbench.data.io import read_feature_matrix

        channel = read_feature_matrix(source.path, n_items)
        digest = hashlib.sha256(source.path.read_bytes()).hexdigest()
        key = {**base, "channel": "image", "encoder": "file", "image": name, "file_sha256": digest,
               "dim": int(channel.features.shape[1])}
        return channel.features, channel.present, key
    from fusionbench.features.image import extract_image_channel, extraction_key, files_by_key

    if source.keys is None or len(source.keys) != n_items + 1:
        raise ValueError(f"image source {name!r}: expected n_items + 1 = {n_items + 1} keys")
    files, _ = files_by_key(source.path, source.keys, source.key_column)
    extracted = extract_image_channel(source.path, files, n_items, progress=True)
    key = {**base, **extraction_key(files, n_items, source.path), "image": name}
    return extracted.features, extracted.present, key


def _aligned(values: Optional[list], n_items: int, what: str) -> list:
    if values is None or len(values) != n_items + 1:
        got = "none" if values is None else len(values)
        raise ValueError(f"item side {what}: expected n_items + 1 = {n_items + 1} entries, got {got}")
    return values
