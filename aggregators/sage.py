"""GraphSAGE (Hamilton, Ying & Leskovec, NeurIPS 2017) on dense batched graphs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from aggregators.attention import glorot_, relation_union, zero_padded
from fusionbench.context import AggregatorContext
from fusionbench.options import PluginOptions
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Choice

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class SAGEOptions(PluginOptions):
    """``aggr``: neighbour reduction ("mean" as in the paper's mean aggregator, or "sum").
    ``root_weight``: add the node's own transformed features W_self x_i. ``bias``: bias of W_neigh."""

    aggr: Literal["mean", "sum"] = "mean"
    root_weight: bool = True
    bias: bool = True


@AGGREGATORS.register("sage")
class SAGE(nn.Module):
    r"""GraphSAGE layer of Hamilton et al., "Inductive Representation Learning on Large Graphs"
    (NeurIPS 2017), mean aggregator, on the union of all relations.

    .. math::
        x'_i = W_{\text{self}}\, x_i + W_{\text{neigh}} \operatorname{mean}_{j \in N(i)} x_j + b

    :math:`N(i)` are the in-neighbours of :math:`i` over all relations **excluding i itself**: the
    self-loop channel (and any diagonal entry) is dropped because the root term already carries
    :math:`x_i`. A node without neighbours gets :math:`W_{\text{self}} x_i + b`. Equals PyG
    ``SAGEConv(d, d, aggr="mean", root_weight=True, bias=True)`` on the union graph with self loops
    removed (``lin_l`` = W_neigh with the bias, ``lin_r`` = W_self).

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long (unused), node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
    """

    Options = SAGEOptions
    search_space = {"aggr": Choice(("mean", "sum"))}

    def __init__(self, ctx: AggregatorContext, opts: SAGEOptions):
        super().__init__()
        self.ctx, self.opts = ctx, opts
        self.lin_neigh = nn.Linear(ctx.dim, ctx.dim, bias=opts.bias)
        self.lin_self = nn.Linear(ctx.dim, ctx.dim, bias=False) if opts.root_weight else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_neigh, self.lin_self):
            if lin is None:
                continue
            glorot_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        a = relation_union(adj, node_mask, self_loops=False).to(x.dtype)     # [B, N, N]
        x = zero_padded(x, node_mask)
        agg = a @ x
        if self.opts.aggr == "mean":
            agg = agg / a.sum(-1, keepdim=True).clamp_min(1.0)
        out = self.lin_neigh(agg)
        if self.lin_self is not None:
            out = out + self.lin_self(x)
        return zero_padded(out, node_mask)

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        """The sparse (DGL) path of ``forward``: W_neigh (sum or mean over j -> i, j != i, of x_j) + W_self x_i
        on the batch's union graph without self pairs; dgl is imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        g = batch.union(None, self_loops=False).graph
        neigh = ops.copy_u_sum(g, h)
        if self.opts.aggr == "mean":
            neigh = neigh / g.in_degrees().clamp_min(1).to(h.dtype)[:, None]
        out = self.lin_neigh(neigh)
        return out + self.lin_self(h) if self.lin_self is not None else out

    def extra_repr(self) -> str:
        return f"{self.ctx.dim}, {self.ctx.dim}, aggr={self.opts.aggr}, root_weight={self.opts.root_weight}"
