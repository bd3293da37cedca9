"""Heterogeneous GNN in the R-GCN style (Schlichtkrull et al., ESWC 2018) on dense batched graphs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import torch
from torch import Tensor, nn

from aggregators.attention import adjacency_rows, glorot_, masked_adjacency, typed_linear, zero_padded
from fusionbench.context import AggregatorContext
from fusionbench.options import PluginOptions, require
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Choice

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class HGNNOptions(PluginOptions):
    """``aggr``: per-relation neighbour reduction ("mean" = R-GCN's 1/|N_r(i)|, or "sum").
    ``root_weight``: add the node's own transform. ``typed_root``: the root transform is specific to the
    centre's node type (W_{0,t_i}) instead of shared (off = PyG RGCNConv). ``bias``."""

    aggr: Literal["mean", "sum"] = "mean"
    root_weight: bool = True
    typed_root: bool = False
    bias: bool = True

    def check(self) -> None:
        require(self.root_weight or not self.typed_root, "option 'typed_root' needs root_weight=True")


@AGGREGATORS.register("hgnn")
class HGNN(nn.Module):
    r"""Heterogeneous GNN (MMSR Table 3 "HGNN"): relational graph convolution of Schlichtkrull et al.,
    "Modeling Relational Data with Graph Convolutional Networks" (ESWC 2018), no attention.

    .. math::
        x'_i = W_{0,(t_i)}^\top x_i + \sum_{r} \frac{1}{|N_r(i)|} \sum_{j \in N_r(i)} W_r^\top x_j + b

    One :math:`W_r` per relation channel (the self-loop channel 0 included, as a relation of its own);
    the root map :math:`W_0` is shared, or per node type :math:`t_i` with ``typed_root`` (the
    type-specific transform of a heterogeneous GNN). With ``typed_root=False`` this equals PyG
    ``RGCNConv(d, d, num_relations=R, aggr=aggr, root_weight=True, bias=True)`` with ``edge_type`` =
    channel (``weight`` [R, d, d] and ``root`` [d, d] are laid out the same way, ``x @ W``).

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long, node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
    """

    Options = HGNNOptions
    search_space = {"aggr": Choice(("mean", "sum"))}

    def __init__(self, ctx: AggregatorContext, opts: HGNNOptions):
        super().__init__()
        self.ctx, self.opts = ctx, opts
        self.weight = nn.Parameter(torch.empty(ctx.n_relations, ctx.dim, ctx.dim))
        if not opts.root_weight:
            self.root = None
        elif opts.typed_root:
            self.root = nn.Parameter(torch.empty(ctx.n_node_types, ctx.dim, ctx.dim))
        else:
            self.root = nn.Parameter(torch.empty(ctx.dim, ctx.dim))
        self.bias = nn.Parameter(torch.empty(ctx.dim)) if opts.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot_(self.weight)
        if self.root is not None:
            glorot_(self.root)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        return zero_padded(self._convolve(x, adj, node_type, node_mask), node_mask)

    def forward_rows(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor, rows: Tensor) -> Tensor:
        """``forward(...)[b, rows[b]]``, aggregating for the query nodes only; rows [B] long -> [B, d]."""
        return self._convolve(x, adj, node_type, node_mask, rows[:, None])[:, 0]

    def _convolve(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor,
                  rows: Optional[Tensor] = None) -> Tensor:
        """Outputs of every node ``[B, N, d]``, or of the query nodes ``rows`` [B, Q] (``[B, Q, d]``)."""
        x = zero_padded(x, node_mask)
        a = masked_adjacency(adj, node_mask).to(x.dtype)                      # [B, R, N, N]
        centre, centre_type = x, node_type
        if rows is not None:                                                   # receivers: the queries only
            at = torch.arange(x.shape[0], device=x.device)[:, None]
            a, centre, centre_type = adjacency_rows(a, rows), x[at, rows], node_type[at, rows]
        agg = a @ x[:, None]                                                   # [B, R, Q, d]
        if self.opts.aggr == "mean":
            agg = agg / a.sum(-1, keepdim=True).clamp_min(1.0)
        out = torch.einsum("brnd,rde->bne", agg, self.weight)
        if self.root is not None:
            out = out + (typed_linear(centre, centre_type, self.root) if self.opts.typed_root else centre @ self.root)
        if self.bias is not None:
            out = out + self.bias
        return out

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        """The sparse (DGL) path of ``forward``: x'_i = root(x_i) + sum_r W_r^T (sum or mean over j in N_r(i) of
        x_j) + b, per-relation sums on relation slots; dgl is imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        s = batch.slots()
        per_slot = ops.copy_u_sum(s.node_to_slot, h)                          # [V*R, d]
        if self.opts.aggr == "mean":
            per_slot = per_slot / s.node_to_slot.in_degrees().clamp_min(1).to(h.dtype)[:, None]
        out = torch.einsum("vrd,rde->ve", per_slot.view(h.shape[0], s.width, -1), self.weight)
        if self.root is not None:
            out = out + (typed_linear(h, batch.node_type, self.root) if self.opts.typed_root else h @ self.root)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"{self.ctx.dim}, {self.ctx.dim}, relations={self.ctx.n_relations}, aggr={self.opts.aggr}, "
                f"typed_root={self.opts.typed_root}")
