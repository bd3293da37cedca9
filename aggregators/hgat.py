"""Heterogeneous graph attention: node-level attention per relation + relation-level (semantic)
attention, after Wang et al.'s HAN (WWW 2019) with relations in place of meta-paths."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aggregators.attention import glorot_, masked_adjacency, masked_softmax, typed_linear, zero_padded
from fusionbench.context import AggregatorContext
from fusionbench.dropout import dropout
from fusionbench.options import Ge, Lt, PluginOptions
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Uniform

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class HGATOptions(PluginOptions):
    """``semantic_dim``: hidden size of the semantic (relation-level) attention. ``semantic_scope``:
    "graph" scores each relation once per graph (HAN: mean over the nodes that have that relation),
    "node" scores it per node. ``activation``: σ applied to each relation's node-level output (HAN uses
    ELU). ``negative_slope``: LeakyReLU slope of node-level attention. ``attn_dropout``: dropout on
    node-level attention weights."""

    semantic_dim: Annotated[int, Ge(1)] = 64
    semantic_scope: Literal["graph", "node"] = "graph"
    activation: Literal["elu", "relu", "none"] = "elu"
    negative_slope: Annotated[float, Ge(0)] = 0.2
    attn_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0


_ACTIVATIONS = {"elu": F.elu, "relu": F.relu, "none": lambda t: t}


@AGGREGATORS.register("hgat")
class HGAT(nn.Module):
    r"""Heterogeneous graph attention (MMSR Table 3 "HGAT"): the two-level attention of Wang et al.,
    "Heterogeneous Graph Attention Network" (WWW 2019), with the relation channels of the MSGraph in
    place of meta-paths.

    Type-specific projection, then node-level attention within each relation r:

    .. math::
        z_i = W_{t_i}^\top x_i, \qquad
        \alpha^{r}_{ij} = \operatorname{softmax}_{j \in N_r(i)}
            \operatorname{LeakyReLU}\big(a_{r,\text{dst}}^\top z_i + a_{r,\text{src}}^\top z_j\big), \qquad
        h^{r}_i = \sigma\Big(\sum_{j \in N_r(i)} \alpha^{r}_{ij} z_j\Big)

    then relation-level (semantic) attention over the relations the node has:

    .. math::
        w_r = \frac{1}{|V_r|} \sum_{i \in V_r} q^\top \tanh(W_s h^{r}_i + b_s), \qquad
        \beta_{ir} = \operatorname{softmax}_{r \in R(i)} (w_r), \qquad
        x'_i = \sum_{r \in R(i)} \beta_{ir} h^{r}_i

    :math:`V_r` are the real nodes of the graph with at least one neighbour under r and
    :math:`R(i)` the relations under which i has a neighbour; restricting the softmax to R(i) keeps
    nodes of one type from being shrunk by relations only other types have (with every relation at
    every node this is exactly HAN). ``semantic_scope="node"`` uses the per-node score
    :math:`w_{ir} = q^\top \tanh(W_s h^r_i + b_s)` instead of the graph mean. The self-loop channel 0
    is a relation like the others. A node without any neighbour outputs 0.

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long, node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
        Node-level logits ``[B, R, N, N]``, per-relation outputs ``[B, R, N, d]``.
    """

    Options = HGATOptions
    search_space = {"attn_dropout": Uniform(0.0, 0.5)}

    def __init__(self, ctx: AggregatorContext, opts: HGATOptions):
        super().__init__()
        self.ctx, self.opts = ctx, opts
        d, r = ctx.dim, ctx.n_relations
        self.proj = nn.Parameter(torch.empty(ctx.n_node_types, d, d))        # x @ proj[t]
        self.att_src = nn.Parameter(torch.empty(r, d))
        self.att_dst = nn.Parameter(torch.empty(r, d))
        self.semantic = nn.Linear(d, opts.semantic_dim)
        self.semantic_q = nn.Parameter(torch.empty(opts.semantic_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot_(self.proj)
        glorot_(self.att_src)
        glorot_(self.att_dst)
        glorot_(self.semantic.weight)
        nn.init.zeros_(self.semantic.bias)
        glorot_(self.semantic_q[None])

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        a = masked_adjacency(adj, node_mask)                                  # [B, R, N, N]
        z = typed_linear(zero_padded(x, node_mask), node_type, self.proj)     # [B, N, d]
        s_src = z @ self.att_src.T                                             # [B, N, R]
        s_dst = z @ self.att_dst.T
        scores = s_dst.transpose(1, 2)[..., :, None] + s_src.transpose(1, 2)[..., None, :]  # [B, R, N, N]
        alpha = masked_softmax(F.leaky_relu(scores, self.opts.negative_slope), a)
        alpha = dropout(alpha, self.opts.attn_dropout, self.training)
        h = _ACTIVATIONS[self.opts.activation](alpha @ z[:, None])            # [B, R, N, d]
        has = a.any(-1)                                                        # [B, R, N]
        w = torch.tanh(self.semantic(h)) @ self.semantic_q                     # [B, R, N]
        if self.opts.semantic_scope == "graph":
            hasf = has.to(w.dtype)
            w = ((w * hasf).sum(-1, keepdim=True) / hasf.sum(-1, keepdim=True).clamp_min(1.0)).expand_as(w)
        beta = masked_softmax(w, has, dim=1)                                   # [B, R, N]
        out = (beta[..., None] * h).sum(1)
        return zero_padded(out, node_mask)

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        """The sparse (DGL) path of ``forward``: per (i, r) a node-level softmax over N_r(i) on relation slots,
        then a softmax over the relations i has of the (graph-mean or per-node) semantic scores; dgl is
        imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        opts, s = self.opts, batch.slots()
        v = h.shape[0]
        z = typed_linear(h, batch.node_type, self.proj)                        # [V, d]
        s_src = (z @ self.att_src.T).reshape(-1)                               # [V*R] at slot (j, r)
        s_dst = (z @ self.att_dst.T).reshape(-1)
        logits = F.leaky_relu(ops.u_add_v(s.slot_to_slot, s_src, s_dst), opts.negative_slope)
        alpha = dropout(ops.edge_softmax(s.node_to_slot, logits), opts.attn_dropout, self.training)
        hr = ops.u_mul_e_sum(s.node_to_slot, z, alpha[:, None]).view(v, s.width, -1)    # [V, R, d]
        hr = {"elu": F.elu, "relu": F.relu, "none": lambda t: t}[opts.activation](hr)
        has = (s.node_to_slot.in_degrees() > 0).view(v, s.width)              # [V, R]
        w = torch.tanh(self.semantic(hr)) @ self.semantic_q                    # [V, R]
        if opts.semantic_scope == "graph":
            hasf = has.to(w.dtype)
            total = ops.segment_reduce(batch.batch_num_nodes, w * hasf, "sum")     # [B, R]
            count = ops.segment_reduce(batch.batch_num_nodes, hasf, "sum")
            w = (total / count.clamp_min(1.0))[batch.node_graph]
        beta = masked_softmax(w, has, dim=1)
        return (beta[..., None] * hr).sum(1)

    def extra_repr(self) -> str:
        return (f"{self.ctx.dim}, {self.ctx.dim}, relations={self.ctx.n_relations}, "
                f"node_types={self.ctx.n_node_types}, semantic_dim={self.opts.semantic_dim}, "
                f"semantic_scope={self.opts.semantic_scope}")
