r"""``mismatch``: items shown with another item's modalities (specs/protocol.md §4.2; MMSR Fig. 1).

``mode = swap`` (default, catalog level). k = round(p·n) of the n items are chosen uniformly (k = 1
becomes 2, since one item cannot be deranged) and a uniformly random derangement σ of them (no
fixed point; rejection sampling of permutations) moves table rows: for every selected channel m,

.. math:: \text{features}'_m[v] = \text{features}_m[\sigma(v)],\quad
          \text{present}'_m[v] = \text{present}_m[\sigma(v)],\quad \text{codes}'_m[v] = \text{codes}_m[\sigma(v)]

with σ = identity outside the chosen items and the same σ for every selected channel. The same item
carries the same wrong side data in training and test.

``mode = shift`` (sequence level). A sample is shifted when its keyed uniform
:math:`u(\text{seed}; \text{user}, \text{pos}) < p`; in a shifted history the selected channels
of position t show the item at t − 1 (``SeqBatch.shown``), and the first input position shows none
(missing). Item ids and targets are unchanged.

Shapes: tables ``[n + 1, ·]`` -> same; items ``[B, W]`` -> shown[m] ``[B, W]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import Tensor

from fusionbench.context import ModalityTable, SeqBatch
from fusionbench.data.splits import Samples
from fusionbench.perturb.base import ChannelOptions, ChannelPerturbation, generator, keyed_uniform, round_count
from fusionbench.registry import PERTURBATIONS

SWAP, SHIFT = 3, 4  # key streams


def random_derangement(k: int, g: torch.Generator) -> Tensor:
    """A uniformly random permutation of 0..k-1 without fixed points (k = 0 or k >= 2), long ``[k]``."""
    if k == 1:
        raise ValueError("one element cannot be deranged")
    identity = torch.arange(k)
    while True:  # accepted with probability about 1/e per draw
        perm = torch.randperm(k, generator=g)
        if not bool((perm == identity).any()):
            return perm


def swap_source(n_items: int, p: float, seed: int) -> Tensor:
    """σ as long ``[n_items + 1]``: row v of a swapped table is row ``σ[v]`` of the original (σ[0] = 0)."""
    k = round_count(p, n_items)
    if k == 1:
        k = 2 if n_items >= 2 else 0
    g = generator(seed, SWAP)
    chosen = torch.randperm(n_items, generator=g)[:k] + 1
    source = torch.arange(n_items + 1)
    source[chosen] = chosen[random_derangement(k, g)]
    return source


def shift_rows(user: Tensor, pos: Tensor, p: float, seed: int) -> Tensor:
    """bool ``[B]``: the samples whose modality channels are shifted."""
    return keyed_uniform(seed, SHIFT, user, pos) < p


@dataclass(frozen=True)
class MismatchOptions(ChannelOptions):
    """``mode``: ``swap`` (catalog-level derangement of items' side data) or ``shift`` (channels one
    position behind the item ids in a fraction p of histories). ``modalities``: channels (default all)."""

    mode: Literal["swap", "shift"] = "swap"


@PERTURBATIONS.register("mismatch")
class Mismatch(ChannelPerturbation):
    """Items shown with other items' modalities: catalog swap (derangement) or per-history shift."""

    Options = MismatchOptions

    @classmethod
    def level_for(cls, opts: MismatchOptions) -> str:
        return "catalog" if opts.mode == "swap" else "sequence"

    def perturb_tables(self, tables: Mapping[str, ModalityTable]) -> dict[str, ModalityTable]:
        chosen = self.selected(tables)
        if not chosen:
            return dict(tables)
        source = swap_source(tables[chosen[0]].present.shape[0] - 1, self.severity, self.seed)
        return {m: t.replace(features=t.features[source], present=t.present[source], codes=t.codes[source])
                if m in chosen else t for m, t in sorted(tables.items())}

    def perturb_batch(self, batch: SeqBatch, samples: Samples) -> SeqBatch:
        chosen = self.selected(self.ctx.channels)
        if not chosen:
            return batch
        shifted = shift_rows(samples.user, samples.pos, self.severity, self.seed)[:, None]
        shown = dict(batch.shown or {})
        for m in chosen:
            own = shown.get(m, batch.items)
            before = torch.cat([torch.zeros_like(own[:, :1]), own[:, :-1]], 1)
            shown[m] = torch.where(shifted, before, own)
        return SeqBatch(batch.items, batch.target, None, batch.present, shown, batch.user)
