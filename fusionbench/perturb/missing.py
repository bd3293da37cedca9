r"""``missing``: modalities removed (specs/protocol.md §4.3; MMSR Fig. 4).

``mode = item`` (default, catalog level). k = round(p·n) of the n items are chosen uniformly and lose
every selected channel: ``present[m][v] = false``, features zeroed, codes set to the sentinel
(:meth:`ModalityTable.without_items`); strategies substitute their learned missing vectors. The same
items lack the same channels in training and test.

``mode = occurrence`` (sequence level, the reference code's behaviour). Channel m is hidden at a
history position when the keyed uniform :math:`u(\text{seed}; s_m, \text{user}, \text{pos}, o) < p`
(o = offset from the target, :math:`s_m` a stream id from the channel's name), independently for
every sample, position and channel; the masks go to ``SeqBatch.present`` (AND-ed with any there).

p = 1 hides every selected channel everywhere; every strategy must still give finite scores.

Shapes: tables ``[n + 1, ·]`` -> same; items ``[B, W]`` -> present[m] bool ``[B, W]``.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import Tensor

from fusionbench.context import ModalityTable, SeqBatch
from fusionbench.data.splits import Samples
from fusionbench.perturb.base import (
    ChannelOptions,
    ChannelPerturbation,
    batch_offsets,
    generator,
    keyed_uniform,
    round_count,
)
from fusionbench.registry import PERTURBATIONS

ITEMS = 5  # key stream of the catalog-level draw


def missing_items(n_items: int, p: float, seed: int) -> Tensor:
    """bool ``[n_items + 1]``: the round(p·n) chosen items (row 0, padding, never chosen)."""
    chosen = torch.randperm(n_items, generator=generator(seed, ITEMS))[:round_count(p, n_items)] + 1
    absent = torch.zeros(n_items + 1, dtype=torch.bool)
    absent[chosen] = True
    return absent


def channel_stream(name: str) -> int:
    """A stable 32-bit key stream per channel name (CRC-32; Python's ``hash`` varies per process)."""
    return zlib.crc32(f"missing:{name}".encode())


def hidden_occurrences(items: Tensor, user: Tensor, pos: Tensor, channel: str, p: float, seed: int) -> Tensor:
    """bool ``[B, W]``: True where ``channel`` is hidden (items ``[B, W]``, user and pos ``[B]``)."""
    return keyed_uniform(seed, channel_stream(channel), user[:, None], pos[:, None], batch_offsets(items)[None, :]) < p


@dataclass(frozen=True)
class MissingOptions(ChannelOptions):
    """``mode``: ``item`` (catalog: round(p·n) items lose the channels everywhere) or ``occurrence``
    (each history position loses each channel with probability p). ``modalities``: channels (default all)."""

    mode: Literal["item", "occurrence"] = "item"


@PERTURBATIONS.register("missing")
class Missing(ChannelPerturbation):
    """Modalities removed: from round(p·n) items (catalog) or from each occurrence with probability p."""

    Options = MissingOptions

    @classmethod
    def level_for(cls, opts: MissingOptions) -> str:
        return "catalog" if opts.mode == "item" else "sequence"

    def perturb_tables(self, tables: Mapping[str, ModalityTable]) -> dict[str, ModalityTable]:
        chosen = self.selected(tables)
        if not chosen:
            return dict(tables)
        absent = missing_items(tables[chosen[0]].present.shape[0] - 1, self.severity, self.seed)
        return {m: t.without_items(absent) if m in chosen else t for m, t in sorted(tables.items())}

    def perturb_batch(self, batch: SeqBatch, samples: Samples) -> SeqBatch:
        chosen = self.selected(self.ctx.channels)
        if not chosen:
            return batch
        present = dict(batch.present or {})
        for m in chosen:
            keep = ~hidden_occurrences(batch.items, samples.user, samples.pos, m, self.severity, self.seed)
            present[m] = present[m] & keep if m in present else keep
        return SeqBatch(batch.items, batch.target, None, present, batch.shown, batch.user)
