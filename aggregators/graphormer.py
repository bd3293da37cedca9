"""Graphormer attention (Ying et al., NeurIPS 2021) on dense batched graphs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import torch
from torch import Tensor, nn

from aggregators.attention import check_divisible, glorot_, masked_softmax, pair_mask, relation_union, zero_padded
from fusionbench.context import AggregatorContext
from fusionbench.dropout import dropout
from fusionbench.options import Ge, Lt, PluginOptions
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Uniform

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch


@dataclass(frozen=True)
class GraphormerOptions(PluginOptions):
    """``heads``: attention heads H (must divide d). ``max_dist``: shortest-path distances above this
    share the bias of ``max_dist``; unreachable pairs have their own bias. ``max_degree``: degrees above
    this share one centrality embedding. ``directed``: use edge directions for distances and separate
    in/out-degree embeddings (default: the union graph is symmetrised, one degree embedding).
    ``attn_dropout``: dropout on attention weights."""

    heads: Annotated[int, Ge(1)] = 1
    max_dist: Annotated[int, Ge(1)] = 5
    max_degree: Annotated[int, Ge(0)] = 32
    directed: bool = False
    attn_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0


def shortest_path_distances(a: Tensor, node_mask: Tensor, max_dist: int) -> Tensor:
    """Bucketed shortest-path distance from j to i along edges of ``a`` (``a[b, i, j]``: j -> i).

    Returns long ``[B, N, N]``: the hop count for distances ``0..max_dist``, ``max_dist`` for reachable
    pairs farther away, ``max_dist + 1`` for unreachable pairs (and any pair with a padded node).
    Breadth-first search by repeated boolean matrix products (N is small): ``max_dist`` steps for the
    exact distances, then ``ceil(log2 N)`` squarings for reachability.

    Shapes: a [B, N, N] bool, node_mask [B, N] bool -> [B, N, N] long.
    """
    b, n, _ = a.shape
    eye = torch.eye(n, dtype=torch.bool, device=a.device) & node_mask[:, :, None]
    step = a.float()
    reach = eye
    dist = torch.full((b, n, n), max_dist + 1, dtype=torch.long, device=a.device)
    dist.masked_fill_(eye, 0)
    for k in range(1, max_dist + 1):
        grown = reach | ((step @ reach.float()) > 0)
        dist.masked_fill_(grown & ~reach, k)
        reach = grown
    closure = (a | eye).float()
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
        closure = ((closure @ closure) > 0).float()
    dist.masked_fill_((closure > 0) & ~reach, max_dist)
    return dist.masked_fill(~pair_mask(node_mask), max_dist + 1)



def sparse_shortest_path_distances(batch: SparseBatch, g, max_dist: int) -> Tensor:
    """:func:`shortest_path_distances` for the sparse path: bucketed distance from every node of a graph to
    every node of the same graph, by breadth-first search along the edges of the DGL graph ``g`` over the
    batch's V real nodes (``max_dist`` exact steps, then propagation to a fixed point for reachability);
    dgl is imported here only.

    Returns long ``[V, n_max]``: row i, column = local index of the source j within its graph.
    """
    from dgl import ops

    width = int(batch.batch_num_nodes.max()) if batch.n_nodes else 1
    own = torch.arange(batch.n_nodes, device=batch.src.device)
    local = own - batch.complete()[2]
    reach = torch.zeros(batch.n_nodes, width, device=batch.src.device)
    reach[own, local] = 1.0
    dist = torch.full((batch.n_nodes, width), max_dist + 1, dtype=torch.long, device=batch.src.device)
    dist[own, local] = 0
    for k in range(1, max_dist + 1):
        grown = torch.maximum(reach, ops.copy_u_max(g, reach))
        dist.masked_fill_((grown > reach), k)
        reach = grown
    exact = reach
    while True:
        grown = torch.maximum(reach, ops.copy_u_max(g, reach))
        if torch.equal(grown, reach):
            break
        reach = grown
    return dist.masked_fill_(reach > exact, max_dist)

@AGGREGATORS.register("graphormer")
class Graphormer(nn.Module):
    r"""One Graphormer attention layer of Ying et al., "Do Transformers Really Perform Badly for Graph
    Representation?" (NeurIPS 2021): full self-attention over all real nodes of a graph with a
    spatial bias per shortest-path distance and centrality (degree) embeddings added to the input.

    .. math::
        h_i = x_i + z^{-}_{\deg^{-}(i)} + z^{+}_{\deg^{+}(i)}, \qquad
        A^{h}_{ij} = \frac{(h_i W_Q^h)(h_j W_K^h)^\top}{\sqrt{d/H}} + b^{h}_{\phi(i,j)}, \\
        x'_i = W_O \big\Vert_h \sum_{j} \operatorname{softmax}_j(A^{h}_{ij})\, h_j W_V^h

    :math:`\phi(i, j)` is the shortest-path distance from j to i on the union of all relations
    (symmetrised unless ``directed``; self loops ignored), capped at ``max_dist``, with a separate
    bucket for unreachable pairs. Undirected graphs use one degree table (:math:`z^- = z^+` merged).
    Only the attention sub-layer is implemented: no layer norm, residual, FFN, edge encoding or virtual
    node (the strategy adds its own residual/dropout around aggregators).

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long (unused), node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
        Attention logits ``[B, H, N, N]``, distances ``[B, N, N]``.
    """

    Options = GraphormerOptions
    search_space = {"attn_dropout": Uniform(0.0, 0.5)}

    def __init__(self, ctx: AggregatorContext, opts: GraphormerOptions):
        super().__init__()
        check_divisible("graphormer", ctx.dim, opts.heads)
        self.ctx, self.opts = ctx, opts
        self.heads, self.head_dim = opts.heads, ctx.dim // opts.heads
        d = ctx.dim
        self.lin_q, self.lin_k, self.lin_v, self.lin_o = (nn.Linear(d, d) for _ in range(4))
        self.in_degree = nn.Embedding(opts.max_degree + 1, d)
        self.out_degree = nn.Embedding(opts.max_degree + 1, d) if opts.directed else None
        self.spatial = nn.Embedding(opts.max_dist + 2, opts.heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_q, self.lin_k, self.lin_v, self.lin_o):
            glorot_(lin.weight)
            nn.init.zeros_(lin.bias)
        for emb in (self.in_degree, self.out_degree, self.spatial):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)

    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        a = relation_union(adj, node_mask, self_loops=False)                  # [B, N, N]
        if not self.opts.directed:
            a = a | a.transpose(-1, -2)
        cap = self.opts.max_degree
        h = zero_padded(x, node_mask) + self.in_degree(a.sum(-1).clamp_max(cap))
        if self.out_degree is not None:
            h = h + self.out_degree(a.sum(-2).clamp_max(cap))
        dist = shortest_path_distances(a, node_mask, self.opts.max_dist)      # [B, N, N]
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.lin_q(h)), split(self.lin_k(h)), split(self.lin_v(h))   # [B, H, N, C]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores + self.spatial(dist).permute(0, 3, 1, 2)               # [B, H, N, N]
        alpha = masked_softmax(scores, pair_mask(node_mask)[:, None])
        alpha = dropout(alpha, self.opts.attn_dropout, self.training)
        out = self.lin_o((alpha @ v).transpose(1, 2).flatten(-2))
        return zero_padded(out, node_mask)

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        """The sparse (DGL) path of ``forward``: attention over all node pairs of each graph (no sparsity to
        gain there: P = sum_b n_b^2 pairs), degree embeddings and per-distance spatial biases from a
        breadth-first search along the edges (:func:`sparse_shortest_path_distances`); dgl is imported here only.

        Shapes: h [V, d] (the real-node rows of :class:`~aggregators.dgl_backend.SparseBatch`) -> [V, d].
        """
        from dgl import ops

        from aggregators.dgl_backend import attend

        opts = self.opts
        g = batch.union(None, self_loops=False, symmetric=not opts.directed).graph
        cap = opts.max_degree
        h = h + self.in_degree(g.in_degrees().clamp_max(cap))
        if self.out_degree is not None:
            h = h + self.out_degree(g.out_degrees().clamp_max(cap))
        dist = sparse_shortest_path_distances(batch, g, opts.max_dist)       # [V, n_max]
        full, src_local, _ = batch.complete()
        dst = full.edges()[1]
        bias = self.spatial(dist[dst, src_local])                             # [P, H]
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim))       # noqa: E731
        q, k, v = split(self.lin_q(h)), split(self.lin_k(h)), split(self.lin_v(h))   # [V, H, C]
        logits = ops.u_dot_v(full, k, q).squeeze(-1) / math.sqrt(self.head_dim) + bias
        return self.lin_o(attend(full, logits, v, opts.attn_dropout, self.training).flatten(-2))

    def extra_repr(self) -> str:
        return (f"{self.ctx.dim}, {self.ctx.dim}, heads={self.heads}, max_dist={self.opts.max_dist}, "
                f"max_degree={self.opts.max_degree}, directed={self.opts.directed}")
