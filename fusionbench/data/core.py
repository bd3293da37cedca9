"""In-memory form of a prepared dataset: chronological item sequences plus raw item side data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fusionbench.errors import UserInputError

DEFAULT_TEXT_SOURCE = "title"
"""The text source a run reads unless ``features.text`` names another: the full product title."""


def pick_text_source(requested: str, available: Sequence[str], where: str = "this dataset") -> str:
    """The text source a run asking for ``requested`` (``features.text``) reads, given the sources
    ``available`` (the data's original text first). A source the data has is itself; the default
    (:data:`DEFAULT_TEXT_SOURCE`) on data without that source is the data's original text, and on data
    without any text stays as it is (there is no text channel to read). Anything else is an error."""
    if requested in available:
        return requested
    if requested == DEFAULT_TEXT_SOURCE:
        return available[0] if available else requested
    raise unknown_text_source(requested, available, where)


def unknown_text_source(requested: str, available: Sequence[str], where: str = "this dataset") -> UserInputError:
    """The error for a text source ``where`` does not have: it names the option and the sources there."""
    return UserInputError(f"features: option 'text' = {requested!r}: {where} has no text source {requested!r}; "
                          f"its text sources: {', '.join(available) or 'none'}")


DEFAULT_IMAGE_SOURCE = "efficientnet"
"""The image source a run reads unless ``features.image`` names another: the dataset's photos through the
project's own encoder (EfficientNet-Lite0, ``fusionbench/features/image.py``)."""


def pick_image_source(requested: str, available: Sequence[str], where: str = "this dataset") -> str:
    """The image source a run asking for ``requested`` (``features.image``) reads, given the sources
    ``available``. A source the data has is itself; the default (:data:`DEFAULT_IMAGE_SOURCE`) on data
    without image sources stays as it is (an ``image`` channel given as features is used as given, and
    without one there is no image channel). Anything else is an error naming the option and the sources."""
    if requested in available or (requested == DEFAULT_IMAGE_SOURCE and not available):
        return requested
    raise unknown_image_source(requested, available, where)


def unknown_image_source(requested: str, available: Sequence[str], where: str = "this dataset") -> UserInputError:
    """The error for an image source ``where`` does not have: it names the option and the sources there."""
    return UserInputError(f"features: option 'image' = {requested!r}: {where} has no image source {requested!r}; "
                          f"its image sources: {', '.join(available) or 'none'}")


@dataclass(frozen=True)
class ImageSource:
    """One image source of the ``image`` channel (``features.image = name``), read only when a run uses it.

    Attributes:
        kind: ``"encoder"``: product photos in the folder ``path``, each named ``<key>.<jpg|jpeg|png|webp>``
            by its item's key, encoded by the project's image encoder on first use and cached;
            ``"file"``: a feature matrix ``.npy`` at ``path``, ``[n_items + 1, d]``, all-NaN rows = absent.
        path: the folder or file.
        keys: for ``"encoder"``: the key of each item id (index 0 unused, ``""`` = none), e.g. its ASIN.
        key_column: the item-table column ``keys`` come from (for messages).
    """

    kind: Literal["encoder", "file"]
    path: Path
    keys: Optional[Sequence[str]] = None
    key_column: str = "asin"


@dataclass(frozen=True)
class DenseChannel:
    """A dense per-item feature channel given by the data itself (user ``.npy`` files, synthetic).

    Attributes:
        features: float32 ``[n_items + 1, d]``; row 0 and absent rows are zeros.
        present: bool ``[n_items + 1]``; row 0 is False.
    """

    features: np.ndarray
    present: np.ndarray


@dataclass(frozen=True)
class ItemSide:
    """Raw item side information, before any encoder runs.

    The ``text`` channel reads one of the data's text sources (``features.text``): ``titles`` is the
    data's original one, named ``title_source`` and covered by the data checksum; ``extra_texts`` are
    sources added later, which the checksum leaves out so that adding one keeps every run's identity
    (the source a run reads is part of its config and of the text feature cache key instead).

    Attributes:
        titles: text per item id of the original text source (index 0 unused, ``""`` = no text), or ``None``.
        attributes: attribute ids per item id (index 0 unused, empty = none), or ``None``.
        n_attributes: size of the attribute vocabulary (ids 1..n_attributes).
        dense: name -> :class:`DenseChannel` for channels whose features come with the data.
        asins: original item identifiers per item id (index 0 unused), or ``None``.
        title_source: name of the text source ``titles`` holds (``"prefix"`` for the Amazon title prefixes).
        extra_texts: further text sources, name -> text per item id (as ``titles``).
        image_sources: name -> :class:`ImageSource` of the ``image`` channel (``features.image``); like
            ``extra_texts`` they are not covered by the checksum (the image feature cache keys cover them).
    """

    titles: Optional[list[str]] = None
    attributes: Optional[list[tuple[int, ...]]] = None
    n_attributes: int = 0
    dense: Mapping[str, DenseChannel] = field(default_factory=dict)
    asins: Optional[list[str]] = None
    title_source: str = DEFAULT_TEXT_SOURCE
    extra_texts: Mapping[str, list[str]] = field(default_factory=dict)
    image_sources: Mapping[str, ImageSource] = field(default_factory=dict)

    def text_sources(self) -> dict[str, list[str]]:
        """Every text source, name -> text per item id: the original one first, then ``extra_texts``."""
        original = {self.title_source: self.titles} if self.titles is not None else {}
        return {**original, **{k: v for k, v in self.extra_texts.items() if k not in original}}

    def modality_names(self) -> list[str]:
        """Channels this data can provide, sorted: ``text`` from text sources, ``attr`` from attributes,
        ``image`` from image sources, plus every dense channel."""
        names = set(self.dense)
        if self.image_sources:
            names.add("image")
        if self.text_sources():
            names.add("text")
        if self.attributes is not None:
            names.add("attr")
        return sorted(names)


@dataclass(frozen=True)
class SequenceData:
    """Users' chronological item sequences, stored flat.

    Attributes:
        name: dataset name.
        n_items: n; item ids are 1..n.
        flat: long ``[n_interactions]``, every user's sequence concatenated, oldest first.
        offsets: long ``[n_users + 1]``; user u owns ``flat[offsets[u]:offsets[u + 1]]``.
        side: raw item side information.
        source: where the data came from (for messages and provenance).
        drawn_from: for users drawn from other data (:meth:`user_subset`), the checksum of that data
            ("" = none), under which the feature tables of both are cached (:meth:`features_checksum`).
    """

    name: str
    n_items: int
    flat: Tensor
    offsets: Tensor
    side: ItemSide = field(default_factory=ItemSide)
    source: str = ""
    drawn_from: str = ""

    @property
    def n_users(self) -> int:
        return self.offsets.numel() - 1

    @property
    def n_interactions(self) -> int:
        return self.flat.numel()

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def sequence(self, user: int) -> Tensor:
        return self.flat[self.offsets[user] : self.offsets[user + 1]]

    def truncated(self, ends: Tensor) -> "SequenceData":
        """The same users with each sequence cut to its first ``ends[u]`` interactions (long ``[n_users]``,
        clamped to the sequence length); side data is shared, not copied."""
        keep_len = torch.minimum(ends.clamp(min=0), self.lengths)
        offsets = torch.zeros_like(self.offsets)
        offsets[1:] = torch.cumsum(keep_len, 0)
        user = torch.repeat_interleave(torch.arange(self.n_users), keep_len)
        within = torch.arange(int(offsets[-1])) - offsets[:-1][user]
        flat = self.flat[self.offsets[:-1][user] + within]
        return SequenceData(self.name, self.n_items, flat, offsets, self.side, self.source)

    def user_subset(self, n: int, seed: int) -> "SequenceData":
        """``n`` of the users (1 <= n <= n_users), drawn at random by a CPU generator seeded with ``seed``
        (``torch.randperm``), with their whole sequences, in their original order. Items (ids 1..n_items,
        some of them now without interactions) and side data are unchanged, so the subset's feature tables
        are the full data's (:meth:`features_checksum`)."""
        if not 1 <= n <= self.n_users:
            raise ValueError(f"user_subset: n must be in [1, {self.n_users}], got {n}")
        generator = torch.Generator().manual_seed(seed)
        users = torch.randperm(self.n_users, generator=generator)[:n].sort().values
        lengths = self.lengths[users]
        offsets = torch.zeros(n + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        owner = torch.repeat_interleave(torch.arange(n), lengths)
        within = torch.arange(int(offsets[-1])) - offsets[:-1][owner]
        flat = self.flat[self.offsets[:-1][users][owner] + within]
        return SequenceData(self.name, self.n_items, flat, offsets, self.side, self.source,
                            drawn_from=self.features_checksum())

    def features_checksum(self) -> str:
        """The checksum feature tables are cached under (``features.tables.modality_tables``): the data's own,
        or for users drawn from other data (:meth:`user_subset`) that data's. The tables read the items and
        side data only, which a subset shares, so it reuses the full data's text embeddings and codes."""
        return self.drawn_from or self.checksum()

    def checksum(self) -> str:
        """sha256 over the sequences and side data: the cache and result-store key of the data.
        Of the text sources it covers the original one only (``side.titles``, see :class:`ItemSide`)."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.n_items}|".encode())
        h.update(self.flat.numpy().astype(np.int64).tobytes())
        h.update(self.offsets.numpy().astype(np.int64).tobytes())
        if self.side.titles is not None:
            h.update("\x1f".join(self.side.titles).encode())
        if self.side.attributes is not None:
            h.update(repr(self.side.attributes).encode())
        for name in sorted(self.side.dense):
            ch = self.side.dense[name]
            h.update(name.encode())
            h.update(np.ascontiguousarray(ch.features).tobytes())
            h.update(np.ascontiguousarray(ch.present).tobytes())
        return h.hexdigest()


def from_sequences(name: str, sequences: list[list[int]], n_items: int, side: ItemSide | None = None,
                   source: str = "") -> SequenceData:
    """Build :class:`SequenceData` from a list of per-user item-id lists (ids 1..n_items)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    offsets = torch.zeros(len(sequences) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    flat = torch.tensor([i for s in sequences for i in s], dtype=torch.long)
    return SequenceData(name, n_items, flat, offsets, side or ItemSide(), source)
