"""GCN (Kipf & Welling, ICLR 2017) on dense batched graphs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from aggregators.attention import glorot_, inv_sqrt_or_zero, relation_union, zero_padded
from aggregators.base import heterogeneous_relations, homogeneous_relations
from fusionbench.context import AggregatorContext
from fusionbench.options import PluginOptions
from fusionbench.registry import AGGREGATORS

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class GCNOptions(PluginOptions):
    """``relations``: which relation channels are merged ("homogeneous"/"heterogeneous" give the
    relation ablations of MMSR Table 4 on a GCN aggregator). ``self_loops``: add a self loop to every
    real node that lacks one (as GCNConv does); False uses the merged channels as given (channel 0's
    self loops stay when it is among them). ``bias``: learnable output bias."""

    relations: Literal["all", "homogeneous", "heterogeneous"] = "all"
    self_loops: bool = True
    bias: bool = True


@AGGREGATORS.register("gcn")
class GCN(nn.Module):
    r"""Graph convolution of Kipf & Welling, "Semi-Supervised Classification with Graph
    Convolutional Networks" (ICLR 2017), on the union of the chosen relations.

    .. math::
        X' = \hat D^{-1/2} \hat A \hat D^{-1/2} X W + b, \qquad
        \hat A = \bigcup_r A_r \cup I, \quad \hat D_{ii} = \sum_j \hat A_{ij}

    node-wise: :math:`x'_i = \sum_{j \in N(i) \cup \{i\}} \frac{1}{\sqrt{\hat d_i \hat d_j}} W^\top x_j + b`,
    with :math:`\hat d` the in-degree including the self loop. Self loops already present in ``adj``
    (channel 0) are kept once, missing ones are added ("add remaining self loops"), so the result equals
    PyG ``GCNConv(d, d)`` (``add_self_loops=True, normalize=True``) on the union graph. With
    ``self_loops=False`` a node of in-degree 0 sends nothing (its :math:`\hat d^{-1/2}` is 0, as in PyG).

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long (unused), node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
    """

    Options = GCNOptions

    def __init__(self, ctx: AggregatorContext, opts: GCNOptions):
        super().__init__()
        self.ctx, self.opts = ctx, opts
        self.channels = {"all": None, "homogeneous": homogeneous_relations(ctx),
                         "heterogeneous": heterogeneous_relations(ctx)}[opts.relations]
        self.weight = nn.Parameter(torch.empty(ctx.dim, ctx.dim))          # x @ weight
        self.bias = nn.Parameter(torch.empty(ctx.dim)) if opts.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        a = relation_union(adj, node_mask, self.channels, self_loops=True if self.opts.self_loops else None)
        a, x = a.to(x.dtype), zero_padded(x, node_mask)
        norm = inv_sqrt_or_zero(a.sum(-1))[..., None]                        # [B, N, 1]
        out = norm * (a @ (norm * (x @ self.weight)))
        if self.bias is not None:
            out = out + self.bias
        return zero_padded(out, node_mask)

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        r"""The sparse (DGL) path of ``forward``, by message passing on the batch's union graph:
        :math:`x'_i = \hat d_i^{-1/2} \sum_{j \to i} \hat d_j^{-1/2} W^\top x_j + b` (:math:`\hat d`: in-degree).
        dgl is imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        g = batch.union(self.channels, self_loops=True if self.opts.self_loops else None).graph
        norm = inv_sqrt_or_zero(g.in_degrees().to(h.dtype))[:, None]            # [V, 1]
        out = norm * ops.copy_u_sum(g, norm * (h @ self.weight))
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"{self.ctx.dim}, {self.ctx.dim}, relations={self.opts.relations}, self_loops={self.opts.self_loops}"
