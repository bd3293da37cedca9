r"""BM3: Zhou, Zhou, Zhang, Liu, Zhang, Miao, "Bootstrap Latent Representations for Multi-modal
Recommendation", WWW 2023 [P], and the authors' code (MMRec) [C]. Fusion: late (modalities aligned with
the ID graph representations through the loss; the scores read the ID graph only). Graph and protocol:
:mod:`strategies.cf_graph`.

.. math::
    E = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^l [P; Q],\qquad h_u = E_u,\qquad h_i = E_i + e^{id}_i,\qquad
    t^m_i = W_m f^m_i

with :math:`\hat A` the symmetric-normalised training graph (as :mod:`strategies.lightgcn`), Q the item
ID embeddings :math:`e^{id}`, and :math:`t^m` every channel's trainable projection of its frozen features
(learned absent vector where missing, :class:`~strategies.fusion.ModalityChannel`). One shared linear
predictor p, stop-gradient sg, dropout ``dropout`` on the target side only; over the batch's observed
(user, item) pairs, with :math:`\cos` averaged over the batch:

.. math::
    \mathcal L_{rec} = (1 - \cos(p(h_u), \mathrm{sg}(\mathrm{drop}(h_i))))
                     + (1 - \cos(p(h_i), \mathrm{sg}(\mathrm{drop}(h_u))))

.. math::
    \mathcal L_{align} = \sum_m 1 - \cos(p(t^m_i), \mathrm{sg}(\mathrm{drop}(h_i))),\qquad
    \mathcal L_{mask} = \sum_m 1 - \cos(p(t^m_i), \mathrm{sg}(\mathrm{drop}(t^m_i)))

.. math::
    \mathcal L = \mathcal L_{rec} + c\,(\mathcal L_{align} + \mathcal L_{mask}) + \lambda\,
    \frac{\lVert h_U \rVert_F + \lVert h_I \rVert_F}{n}

The regulariser is the reference's (MMRec ``EmbLoss`` on the whole user and item tables: Frobenius norms,
not squared, divided by the number of item rows). No negative sampling. Score
:math:`\langle p(h_u), p(h_i)\rangle`. Defaults: the first value of each grid of the reference's config
(L = 1, dropout 0.3, λ = 0.1), c = 2, batch 2048.

Shapes: encode ``[B, d]``; item_embeddings ``[n_items + 1, d]``; graph ``[N, N]`` sparse CSR.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.dropout import dropout
from fusionbench.options import Ge, Lt, PluginOptions
from fusionbench.registry import STRATEGIES
from fusionbench.space import LogUniform
from strategies.cf_graph import FEATURE_CF_SKIPS, GraphCFStrategy, InteractionGraph, register_graph_buffer
from strategies.fusion import ModalityChannel
from strategies.lightgcn import light_propagate


@dataclass(frozen=True)
class BM3Options(PluginOptions):
    """``layers``: LightGCN depth L. ``dropout``: target-side dropout. ``reg``: λ. ``cl_weight``: c."""

    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(0)] = 1
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.3
    reg: Annotated[float, Ge(0)] = 0.1
    cl_weight: Annotated[float, Ge(0)] = 2.0


def neg_cos(online: Tensor, target: Tensor) -> Tensor:
    """``1 - cos`` averaged over rows; the target never receives a gradient."""
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


@STRATEGIES.register("bm3")
class BM3(GraphCFStrategy):
    Options = BM3Options
    search_space = {"reg": LogUniform(0.01, 1.0), "cl_weight": LogUniform(0.1, 10.0),
                    "train.weight_decay": None}   # reg is its L2
    fusion_stage = "late"
    paper = "Zhou, Zhou, Zhang, Liu, Zhang, Miao, WWW 2023"
    notes = (
        "LightGCN on IDs (+ item ID) with a shared predictor; per-channel projections aligned to it by the bootstrap "
        "losses (target-side dropout, stop-gradient, no negatives); scores read the ID graph. Regulariser as the "
        "reference's `EmbLoss` (norms, not squared). Graph-CF protocol: [graph-cf.md](graph-cf.md)."
    )
    train_defaults = {"batch_size": 2048}
    contract_skips: ClassVar[dict[str, str]] = {
        **FEATURE_CF_SKIPS,
        "absent_vector_every_batch": "the losses read the batch's target items only, so a channel's absent "
                                     "vector learns from the batches where some target lacks that channel",
        "tables_change_scores": "features enter BM3's training loss only (alignment and masking terms); "
                                "its scores read the ID graph, so other tables under the same weights score alike",
    }

    def __init__(self, ctx: StrategyContext, opts: BM3Options):
        super().__init__(ctx, opts)
        d = opts.dim
        self.user = nn.Embedding(self.n_users, d)
        self.item = nn.Embedding(ctx.n_items + 1, d)
        self.predictor = nn.Linear(d, d)
        self.channels = nn.ModuleList(ModalityChannel(table, d, 0.0) for table in ctx.modalities.values())
        self.reset_parameters()

    def set_graph(self, graph: InteractionGraph) -> None:
        register_graph_buffer(self, "adj", graph.adjacency("sym"))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)

    def graph_embeddings(self) -> tuple[Tensor, Tensor]:
        """``h_U [U, d]``, ``h_I [n_items + 1, d]`` before the predictor."""
        out = light_propagate(self.adj, torch.cat([self.user.weight, self.item.weight]), self.opts.layers)
        return out[:self.n_users], out[self.n_users:] + self.item.weight

    def propagate(self) -> tuple[Tensor, Tensor]:
        h_u, h_i = self.graph_embeddings()
        return self.predictor(h_u), self.predictor(h_i)

    def loss(self, batch: SeqBatch) -> Tensor:
        h_u, h_i = self.graph_embeddings()
        u, i = self.users_of(batch), batch.target
        drop = lambda x: dropout(x.detach(), self.opts.dropout, training=True)  # noqa: E731
        loss = neg_cos(self.predictor(h_u[u]), drop(h_i[i])) + neg_cos(self.predictor(h_i[i]), drop(h_u[u]))
        aligned = h_i.new_zeros(())
        for channel in self.channels:
            t = channel.lookup(i)
            p_t = self.predictor(t)
            aligned = aligned + neg_cos(p_t, drop(h_i[i])) + neg_cos(p_t, drop(t))
        reg = (h_u.norm() + h_i.norm()) / h_i.shape[0]
        return loss + self.opts.cl_weight * aligned + self.opts.reg * reg
