"""Relational GAT (Busbridge et al., 2019) on dense batched graphs, following PyG's RGATConv."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aggregators.attention import (
    adjacency_rows,
    check_divisible,
    glorot_,
    masked_adjacency,
    masked_softmax,
    zero_padded,
)
from fusionbench.context import AggregatorContext
from fusionbench.dropout import dropout
from fusionbench.options import Ge, Lt, PluginOptions
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Choice, Uniform

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class RGATOptions(PluginOptions):
    """``heads``: attention heads H; ``concat``: concatenate heads of size d/H (H must divide d),
    otherwise heads have size d and are averaged. ``mechanism``: "across-relation" normalises over all
    (relation, neighbour) pairs of a node, "within-relation" per relation (then sums relations).
    ``mode``: "additive" (LeakyReLU(q_i + k_j)) or "multiplicative" (q_i k_j). ``negative_slope``:
    LeakyReLU slope (additive mode). ``attn_dropout``: dropout on attention weights. ``bias``."""

    heads: Annotated[int, Ge(1)] = 1
    concat: bool = True
    mechanism: Literal["across-relation", "within-relation"] = "across-relation"
    mode: Literal["additive", "multiplicative"] = "additive"
    negative_slope: Annotated[float, Ge(0)] = 0.2
    attn_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    bias: bool = True


@AGGREGATORS.register("rgat")
class RGAT(nn.Module):
    r"""Relational graph attention of Busbridge et al., "Relational Graph Attention Networks"
    (arXiv:1904.05811, 2019), computed as PyG's ``RGATConv`` does; node types are ignored.

    Per relation r a value map :math:`W_r`; query and key kernels :math:`Q, K \in \mathbb{R}^{HC \times H}`
    shared by all relations (as in RGATConv, each head's logit reads all heads' features):

    .. math::
        g^{r}_i = W_r^\top x_i,\quad q^{r}_i = g^{r\top}_i Q,\quad k^{r}_j = g^{r\top}_j K, \\
        \alpha^{r,h}_{ij} = \operatorname{softmax}\big(\operatorname{LeakyReLU}(q^{r,h}_i + k^{r,h}_j)\big)
        \;\text{(additive) or of } q^{r,h}_i k^{r,h}_j \text{ (multiplicative)}, \\
        x'_i = \big\Vert_h \text{ or } \tfrac1H\textstyle\sum_h
               \;\sum_r \sum_{j \in N_r(i)} \alpha^{r,h}_{ij}\, g^{r,h}_j + b

    The softmax runs jointly over :math:`(r, j)` ("across-relation") or over :math:`j` for each
    :math:`r` ("within-relation"). Every relation channel of ``adj`` is a relation, including the
    self-loop channel 0; no extra self loops are added. Equals PyG ``RGATConv(d, C, num_relations=R,
    attention_mechanism=mechanism, attention_mode=mode + "-self-attention", heads=H, dim=1,
    concat=concat, mod=None, negative_slope, dropout=attn_dropout, bias)`` with ``edge_type`` = channel
    and C = d/H when ``concat`` else C = d. (The MMSR reference code's RGAT, a content score
    :math:`a_r^\top(W h_i \odot W h_j)`, is not this operator.)

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long (unused), node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
        Attention logits are ``[B, R, H, N, N]``.
    """

    Options = RGATOptions
    search_space = {"attn_dropout": Uniform(0.0, 0.5), "mechanism": Choice(("across-relation", "within-relation"))}

    def __init__(self, ctx: AggregatorContext, opts: RGATOptions):
        super().__init__()
        check_divisible("rgat", ctx.dim, opts.heads, opts.concat)
        self.ctx, self.opts = ctx, opts
        self.heads = opts.heads
        self.head_dim = ctx.dim // opts.heads if opts.concat else ctx.dim
        width = self.heads * self.head_dim
        self.weight = nn.Parameter(torch.empty(ctx.n_relations, ctx.dim, width))  # x @ weight[r]
        self.q = nn.Parameter(torch.empty(width, self.heads))
        self.k = nn.Parameter(torch.empty(width, self.heads))
        self.bias = nn.Parameter(torch.empty(ctx.dim)) if opts.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot_(self.weight)
        glorot_(self.q)
        glorot_(self.k)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        return zero_padded(self._propagate(x, adj, node_mask), node_mask)

    def forward_rows(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor, rows: Tensor) -> Tensor:
        """``forward(...)[b, rows[b]]``, attending for the query nodes only; rows [B] long -> [B, d]."""
        return self._propagate(x, adj, node_mask, rows[:, None])[:, 0]

    def _propagate(self, x: Tensor, adj: Tensor, node_mask: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """Outputs of every node ``[B, N, d]``, or of the query nodes ``rows`` [B, Q] (``[B, Q, d]``)."""
        a = masked_adjacency(adj, node_mask)                                  # [B, R, N, N]
        g = torch.einsum("bnd,rde->brne", zero_padded(x, node_mask), self.weight)   # [B, R, N, H*C]
        q = (g @ self.q).transpose(-1, -2)                                     # [B, R, H, N]
        k = (g @ self.k).transpose(-1, -2)
        if rows is not None:                                                   # receivers: the queries only
            a = adjacency_rows(a, rows)                                        # [B, R, Q, N]
            q = q.gather(-1, rows[:, None, None, :].expand(*q.shape[:3], -1))  # [B, R, H, Q]
        if self.opts.mode == "additive":
            scores = F.leaky_relu(q[..., :, None] + k[..., None, :], self.opts.negative_slope)
        else:
            scores = q[..., :, None] * k[..., None, :]                         # [B, R, H, Q, N]
        dims = (1, -1) if self.opts.mechanism == "across-relation" else -1
        alpha = masked_softmax(scores, a[:, :, None], dim=dims)
        alpha = dropout(alpha, self.opts.attn_dropout, self.training)
        g = g.unflatten(-1, (self.heads, self.head_dim))                       # [B, R, N, H, C]
        out = torch.einsum("brhij,brjhc->bihc", alpha, g)                      # [B, Q, H, C]
        out = out.flatten(-2) if self.opts.concat else out.mean(-2)
        if self.bias is not None:
            out = out + self.bias
        return out

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        """The sparse (DGL) path of ``forward`` on relation slots (j, r): g^r_j = x_j W_r, logits from q = g Q at
        (i, r) and k = g K at (j, r), softmax over all (r, j) of i (across-relation) or over j per (i, r)
        (within-relation); dgl is imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        opts, s = self.opts, batch.slots()
        v = h.shape[0]
        gr = torch.einsum("vd,rde->vre", h, self.weight)                       # [V, R, H*C]
        q, k = (gr @ self.q).reshape(v * s.width, -1), (gr @ self.k).reshape(v * s.width, -1)   # [V*R, H]
        if opts.mode == "additive":
            logits = F.leaky_relu(ops.u_add_v(s.slot_to_slot, k, q), opts.negative_slope)
        else:
            logits = ops.u_mul_v(s.slot_to_slot, k, q)                        # [E, H]
        group = s.slot_to_node if opts.mechanism == "across-relation" else s.slot_to_slot
        alpha = dropout(ops.edge_softmax(group, logits), opts.attn_dropout, self.training)
        values = gr.reshape(v * s.width, self.heads, self.head_dim)
        out = ops.u_mul_e_sum(s.slot_to_node, values, alpha[..., None])       # [V, H, C]
        out = out.flatten(-2) if opts.concat else out.mean(-2)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"{self.ctx.dim}, {self.ctx.dim}, relations={self.ctx.n_relations}, heads={self.heads}, "
                f"mechanism={self.opts.mechanism}, mode={self.opts.mode}")
