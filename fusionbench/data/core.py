"""In-memory form of a prepared dataset: chronological item sequences plus raw item side data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import torch
from torch import Tensor


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

    Attributes:
        titles: title text per item id (index 0 unused, ``""`` = no text), or ``None``.
        attributes: attribute ids per item id (index 0 unused, empty = none), or ``None``.
        n_attributes: size of the attribute vocabulary (ids 1..n_attributes).
        dense: name -> :class:`DenseChannel` for channels whose features come with the data.
        asins: original item identifiers per item id (index 0 unused), or ``None``.
    """

    titles: Optional[list[str]] = None
    attributes: Optional[list[tuple[int, ...]]] = None
    n_attributes: int = 0
    dense: Mapping[str, DenseChannel] = field(default_factory=dict)
    asins: Optional[list[str]] = None

    def modality_names(self) -> list[str]:
        """Channels this data can provide, sorted: ``text`` from titles, ``attr`` from attributes,
        plus every dense channel."""
        names = set(self.dense)
        if self.titles is not None:
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
    """

    name: str
    n_items: int
    flat: Tensor
    offsets: Tensor
    side: ItemSide = field(default_factory=ItemSide)
    source: str = ""

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

    def checksum(self) -> str:
        """sha256 over the sequences and side data: the cache and result-store key of the data."""
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
