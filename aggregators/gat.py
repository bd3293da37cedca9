"""GAT (Veličković et al., ICLR 2018) on dense batched graphs, following PyG's GATConv."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aggregators.attention import check_divisible, glorot_, masked_softmax, relation_union, zero_padded
from fusionbench.context import AggregatorContext
from fusionbench.dropout import dropout
from fusionbench.options import Ge, Lt, PluginOptions
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Uniform

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class GATOptions(PluginOptions):
    """``heads``: attention heads H. ``concat``: concatenate heads of size d/H (H must divide d);
    otherwise every head has size d and heads are averaged. ``negative_slope``: LeakyReLU slope.
    ``attn_dropout``: dropout on the normalised attention weights. ``self_loops``: give every real
    node exactly one self loop (as GATConv does). ``bias``: learnable output bias."""

    heads: Annotated[int, Ge(1)] = 1
    concat: bool = False
    negative_slope: Annotated[float, Ge(0)] = 0.2
    attn_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    self_loops: bool = True
    bias: bool = True


@AGGREGATORS.register("gat")
class GAT(nn.Module):
    r"""Graph attention of Veličković et al., "Graph Attention Networks" (ICLR 2018), on the union of
    all relations, computed as PyG's ``GATConv`` does (shared W on keys and values).

    .. math::
        \alpha^{h}_{ij} = \operatorname{softmax}_{j \in N(i) \cup \{i\}}
            \operatorname{LeakyReLU}\big(a_{\text{dst}}^{h\top} W^h x_i + a_{\text{src}}^{h\top} W^h x_j\big),
        \qquad
        x'_i = \big\Vert_h \text{ or } \tfrac1H\textstyle\sum_h \; \sum_{j} \alpha^{h}_{ij} W^h x_j \;+\; b

    The pair score is the broadcast sum ``(x W a_src)[:, None, :] + (x W a_dst)[:, :, None]``
    (``[B, H, N, N]``), never a ``[B, N, N, d]`` tensor. Equals PyG
    ``GATConv(d, C, heads=H, concat=concat, negative_slope, dropout=attn_dropout, add_self_loops=True)``
    with C = d/H when ``concat`` else C = d, on the union graph.

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long (unused), node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
    """

    Options = GATOptions
    search_space = {"attn_dropout": Uniform(0.0, 0.5)}

    def __init__(self, ctx: AggregatorContext, opts: GATOptions):
        super().__init__()
        check_divisible("gat", ctx.dim, opts.heads, opts.concat)
        self.ctx, self.opts = ctx, opts
        self.heads = opts.heads
        self.head_dim = ctx.dim // opts.heads if opts.concat else ctx.dim
        self.lin = nn.Linear(ctx.dim, self.heads * self.head_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(self.heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(self.heads, self.head_dim))
        self.bias = nn.Parameter(torch.empty(ctx.dim)) if opts.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot_(self.lin.weight)
        glorot_(self.att_src)
        glorot_(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        a = relation_union(adj, node_mask, self_loops=True if self.opts.self_loops else None)   # [B, N, N]
        h = self.lin(zero_padded(x, node_mask)).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        s_src = (h * self.att_src[:, None, :]).sum(-1)                      # [B, H, N]
        s_dst = (h * self.att_dst[:, None, :]).sum(-1)
        scores = F.leaky_relu(s_dst[..., :, None] + s_src[..., None, :], self.opts.negative_slope)
        alpha = masked_softmax(scores, a[:, None])                          # [B, H, N, N]
        alpha = dropout(alpha, self.opts.attn_dropout, self.training)
        out = alpha @ h                                                     # [B, H, N, C]
        out = out.transpose(1, 2).flatten(-2) if self.opts.concat else out.mean(1)
        if self.bias is not None:
            out = out + self.bias
        return zero_padded(out, node_mask)

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        """The sparse (DGL) path of ``forward``: edge softmax of LeakyReLU(a_dst W x_i + a_src W x_j) per head
        on the batch's union graph; dgl is imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        from aggregators.dgl_backend import attend

        g = batch.union(None, self_loops=True if self.opts.self_loops else None).graph
        z = self.lin(h).unflatten(-1, (self.heads, self.head_dim))                # [V, H, C]
        s_src, s_dst = (z * self.att_src).sum(-1), (z * self.att_dst).sum(-1)   # [V, H]
        logits = F.leaky_relu(ops.u_add_v(g, s_src, s_dst), self.opts.negative_slope)   # [E, H]
        out = attend(g, logits, z, self.opts.attn_dropout, self.training)      # [V, H, C]
        out = out.flatten(-2) if self.opts.concat else out.mean(1)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"{self.ctx.dim}, {self.ctx.dim}, heads={self.heads}, head_dim={self.head_dim}, "
                f"concat={self.opts.concat}")
