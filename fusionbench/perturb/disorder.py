r"""``disorder``: shuffle part of every history (specs/protocol.md §4.1; MMSR Fig. 1 "disordered").

Sequence level. For a sample with m real input positions, the :math:`m_p = \mathrm{round}(p\,m)`
positions with the smallest keyed uniforms :math:`u_1(\text{seed}; \text{user}, \text{pos}, o)`
are chosen (o = offset from the target, 1 = most recent input), and the items at the chosen positions
are permuted uniformly at random: the i-th chosen position in time order receives the item of the
chosen position with the i-th smallest :math:`u_2(\cdot)`. Targets never move; padding stays where
it is; each item moves with its per-position modality data (``SeqBatch.present`` / ``shown``).
p = 1 shuffles the whole history.

Shapes: items ``[B, W]`` -> ``[B, W]``, target ``[B]`` unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusionbench.context import SeqBatch
from fusionbench.data.splits import Samples
from fusionbench.options import PluginOptions
from fusionbench.perturb.base import Perturbation, batch_offsets, keyed_uniform, round_count
from fusionbench.registry import PERTURBATIONS

PICK, ORDER = 1, 2  # key streams


def disorder_moves(items: Tensor, user: Tensor, pos: Tensor, p: float, seed: int) -> tuple[Tensor, Tensor]:
    """Column moves ``(src, dst)``, both long ``[B, W]``: the item at ``src[b, i]`` goes to ``dst[b, i]``.

    Chosen columns come first in both (``src`` in time order, ``dst`` in u_2 order), then the other
    columns in time order in both, so those map to themselves. items ``[B, W]``, user and pos ``[B]``."""
    batch, width = items.shape
    real = items > 0
    key = (user[:, None], pos[:, None], batch_offsets(items)[None, :])
    pick = torch.where(real, keyed_uniform(seed, PICK, *key), 2.0)            # padding sorts last
    rank = torch.argsort(torch.argsort(pick, dim=1, stable=True), dim=1)       # rank within the row
    chosen = rank < round_count(p, real.sum(1))[:, None]
    col = torch.arange(width, dtype=torch.float64, device=items.device).expand(batch, width)
    src = torch.argsort(torch.where(chosen, col, width + col), dim=1, stable=True)
    dst = torch.argsort(torch.where(chosen, keyed_uniform(seed, ORDER, *key), 2.0 + col), dim=1, stable=True)
    return src, dst


@PERTURBATIONS.register("disorder")
class Disorder(Perturbation):
    """Shuffle round(p·m) of each history's m positions (whole items, targets fixed); sequence level."""

    @classmethod
    def level_for(cls, opts: PluginOptions) -> str:
        return "sequence"

    def perturb_batch(self, batch: SeqBatch, samples: Samples) -> SeqBatch:
        src, dst = disorder_moves(batch.items, samples.user, samples.pos, self.severity, self.seed)
        move = lambda t: t.scatter(1, dst, t.gather(1, src))  # noqa: E731
        moves = lambda d: None if d is None else {m: move(t) for m, t in d.items()}  # noqa: E731
        return SeqBatch(move(batch.items), batch.target, None, moves(batch.present), moves(batch.shown), batch.user)
