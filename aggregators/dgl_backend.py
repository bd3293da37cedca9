r"""Sparse backend: the registered aggregators' math through DGL message passing (docs/dgl.md).

The dense aggregators hold a whole batch as ``adj [B, R, N, N]``; memory and time grow with
:math:`B N^2 R` whatever the number of edges. This module runs the **same modules with the same
parameters** (read from the dense aggregator, nothing copied or re-initialised) on one DGL graph
over the V real nodes of the batch, with one edge per (relation, pair): memory and time grow with
the edge count E instead. Every built-in aggregator (gcn, sage, gat, graphormer, rgat, hgnn, hgat,
han) has a kernel here; ``tests/with_dgl/test_dgl_backend.py`` checks each against its dense forward
to 1e-5, values and gradients.

Needs ``dgl`` (``tox -e dgl``: dgl 2.1.0 runs beside torch <= 2.2.1 only, and PyPI's build is
CPU-only); importing this module without it fails, the dense aggregators never import it.

Graphs used by the kernels (all share the typed edge list of :class:`SparseBatch`, so an edge
tensor computed on one is valid on the others):

* **union graphs** over V nodes: one edge per distinct pair (j -> i) over the chosen relations,
  optionally with self loops added or removed, optionally symmetrised (gcn, sage, gat, graphormer,
  han);
* **relation-slot graphs** for the relation-typed operators: slot ``(i, r)`` = node i under relation
  r (``V * R'`` slots for R' chosen channels). ``node_to_slot`` (j -> (i, r)) aggregates per node and
  relation (hgnn's per-relation mean, hgat's within-relation softmax); ``slot_to_node``
  ((j, r) -> i) sums relation-specific messages into nodes (rgat); ``slot_to_slot``
  ((j, r) -> (i, r)) scores with relation-specific features at both ends (rgat, hgat).

Entry points: :func:`sparse_forward` has the dense ``forward`` contract (dense tensors in and out);
:func:`to_sparse` + :func:`forward_nodes` keep one :class:`SparseBatch` across several layers and
work on ``[V, d]`` node rows. Dropout on attention weights is applied per edge, so training-mode
outputs agree with the dense ones in distribution only; eval-mode outputs agree exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import dgl
import dgl.ops as ops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aggregators.attention import inv_sqrt_or_zero, masked_softmax, typed_linear
from fusionbench.errors import UserInputError
from fusionbench.registry import AGGREGATORS

__all__ = ["SparseBatch", "forward_nodes", "sparse_forward", "sparse_names", "to_sparse"]


@dataclass
class _Pairs:
    """Union graph: ``graph`` over V nodes with one edge per distinct pair (edge id = pair id);
    ``inverse[e]`` is the pair of the e-th selected typed edge (``None`` when self loops were added or
    removed, or the graph symmetrised)."""

    graph: dgl.DGLGraph
    inverse: Optional[Tensor]


@dataclass
class _Slots:
    """Relation-slot graphs for channels ``channels`` (slot ``(i, k)`` = ``i * len(channels) + k``)."""

    node_to_slot: dgl.DGLGraph
    slot_to_node: dgl.DGLGraph
    slot_to_slot: dgl.DGLGraph
    width: int


@dataclass
class SparseBatch:
    """A dense batch of typed graphs as one DGL edge list over its real nodes.

    Attributes:
        src, dst: long ``[E]`` node rows (0..V-1) of every typed edge ``src -> dst``; one edge per
            (relation, pair) with ``adj[b, r, i, j]`` True and both ends real (j -> i).
        etype: long ``[E]`` relation channel of each edge.
        node_type: long ``[V]``.
        node_index: long ``[V]`` flat position ``b * N + i`` of each real node in the dense batch
            (nodes are ordered by graph, so each graph's rows are contiguous).
        batch_num_nodes: long ``[B]`` real nodes per graph.
        shape: ``(B, N)`` of the dense batch; ``n_relations``: R.
    """

    src: Tensor
    dst: Tensor
    etype: Tensor
    node_type: Tensor
    node_index: Tensor
    batch_num_nodes: Tensor
    shape: tuple[int, int]
    n_relations: int
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_nodes(self) -> int:
        """V, the number of real nodes."""
        return self.node_index.shape[0]

    @property
    def node_graph(self) -> Tensor:
        """long ``[V]``: the graph (batch row) of each node."""
        if "node_graph" not in self._cache:
            rows = torch.arange(self.shape[0], device=self.src.device)
            self._cache["node_graph"] = rows.repeat_interleave(self.batch_num_nodes)
        return self._cache["node_graph"]

    def gather(self, x: Tensor) -> Tensor:
        """Rows of the real nodes: ``x [B, N, d] -> [V, d]``."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.node_index)

    def scatter(self, h: Tensor) -> Tensor:
        """Back to the dense layout, zeros at padded nodes: ``h [V, d] -> [B, N, d]``."""
        b, n = self.shape
        out = h.new_zeros(b * n, h.shape[-1]).index_copy(0, self.node_index, h)
        return out.view(b, n, h.shape[-1])

    def _select(self, channels: Optional[Sequence[int]]) -> Tensor:
        """Indices of the typed edges whose relation is in ``channels`` (all when ``None``)."""
        if channels is None:
            return torch.arange(self.etype.shape[0], device=self.etype.device)
        keep = torch.zeros(self.n_relations, dtype=torch.bool, device=self.etype.device)
        keep[list(channels)] = True
        return keep[self.etype].nonzero().squeeze(1)

    def union(self, channels: Optional[Sequence[int]] = None, self_loops: Optional[bool] = None,
              symmetric: bool = False) -> _Pairs:
        """Union graph over ``channels``, as :func:`aggregators.attention.relation_union` builds it
        densely: ``self_loops`` True adds one self loop per node, False drops every self pair, None
        keeps the channels' own; ``symmetric`` adds the reverse of every pair."""
        key = ("union", None if channels is None else tuple(channels), self_loops, symmetric)
        if key in self._cache:
            return self._cache[key]
        v = self.n_nodes
        selected = self._select(channels)
        src, dst = self.src[selected], self.dst[selected]
        if symmetric:
            src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        if self_loops:
            loop = torch.arange(v, device=src.device)
            src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
        pair = dst * v + src
        unique, inverse = torch.unique(pair, return_inverse=True)        # sorted by dst, then src
        if self_loops is False:
            unique = unique[unique // v != unique % v]
        graph = dgl.graph((unique % v, unique // v), num_nodes=v)
        exact = not symmetric and self_loops is None
        pairs = _Pairs(graph, inverse if exact else None)
        self._cache[key] = pairs
        return pairs

    def slots(self, channels: Optional[Sequence[int]] = None) -> _Slots:
        """Relation-slot graphs over ``channels`` (all relations when ``None``), one edge per typed
        edge of those channels, in the order of ``self._select(channels)``."""
        key = ("slots", None if channels is None else tuple(channels))
        if key in self._cache:
            return self._cache[key]
        chosen = list(range(self.n_relations)) if channels is None else list(channels)
        position = torch.full((self.n_relations,), -1, dtype=torch.long, device=self.etype.device)
        position[chosen] = torch.arange(len(chosen), device=self.etype.device)
        selected = self._select(channels)
        k = position[self.etype[selected]]
        width, v = len(chosen), self.n_nodes
        src, dst = self.src[selected], self.dst[selected]
        src_slot, dst_slot = src * width + k, dst * width + k
        nodes = {"node": v, "slot": v * width}
        slots = _Slots(
            node_to_slot=dgl.heterograph({("node", "to", "slot"): (src, dst_slot)}, num_nodes_dict=nodes),
            slot_to_node=dgl.heterograph({("slot", "to", "node"): (src_slot, dst)}, num_nodes_dict=nodes),
            slot_to_slot=dgl.graph((src_slot, dst_slot), num_nodes=v * width),
            width=width,
        )
        self._cache[key] = slots
        return slots

    def complete(self) -> tuple[dgl.DGLGraph, Tensor, Tensor]:
        """Every ordered pair (self pairs included) of real nodes of one graph, as a DGL graph, with
        the local (within-graph) index of each pair's source and each node's graph offset.

        Returns ``(graph with P = sum_b n_b^2 edges, src_local [P], offset [V])``."""
        if "complete" in self._cache:
            return self._cache["complete"]
        counts = self.batch_num_nodes
        starts = torch.cumsum(counts, 0) - counts                          # [B] first row of each graph
        per_node = counts[self.node_graph]                                 # [V] n_b of each node's graph
        offset = starts[self.node_graph]                                   # [V]
        dst = torch.arange(self.n_nodes, device=counts.device).repeat_interleave(per_node)   # [P]
        row_start = torch.cumsum(per_node, 0) - per_node                   # [V] first pair of each dst
        src_local = torch.arange(dst.shape[0], device=counts.device) - row_start[dst]
        graph = dgl.graph((offset[dst] + src_local, dst), num_nodes=self.n_nodes)
        self._cache["complete"] = (graph, src_local, offset)
        return self._cache["complete"]


def to_sparse(adj: Tensor, node_type: Tensor, node_mask: Tensor) -> SparseBatch:
    """The typed edge list of a dense batch (only edges whose two ends are real nodes).

    Shapes: adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i), node_type [B, N] long,
    node_mask [B, N] bool -> :class:`SparseBatch` with V = node_mask.sum() nodes.
    """
    if adj.device.type != "cpu":
        raise UserInputError(f"the dgl aggregator backend runs on the CPU only (PyPI's dgl 2.1.0 has no "
                             f"{adj.device.type} support); use --device cpu or the dense backend")
    b, r, n, _ = adj.shape
    flat_mask = node_mask.reshape(-1)
    node_index = flat_mask.nonzero().squeeze(1)                            # [V], ordered by (b, i)
    row = torch.full((b * n,), -1, dtype=torch.long, device=adj.device)
    row[node_index] = torch.arange(node_index.shape[0], device=adj.device)
    pair = (node_mask[:, :, None] & node_mask[:, None, :])[:, None]
    gb, et, i, j = (adj & pair).nonzero(as_tuple=True)
    return SparseBatch(src=row[gb * n + j], dst=row[gb * n + i], etype=et,
                       node_type=node_type.reshape(-1)[node_index], node_index=node_index,
                       batch_num_nodes=node_mask.sum(1), shape=(b, n), n_relations=r)


# --- kernels: (aggregator module, h [V, d], batch) -> [V, d] ----------------------------------------
_KERNELS: dict[str, Callable[[nn.Module, Tensor, SparseBatch], Tensor]] = {}


def _kernel(name: str):
    def deco(fn):
        _KERNELS[name] = fn
        return fn
    return deco


def _attend(graph: dgl.DGLGraph, logits: Tensor, values: Tensor, dropout: float, training: bool) -> Tensor:
    """``sum_j softmax_j(logits) values_j`` per destination: logits ``[E, ...]``, values ``[V_src, ...]``
    (logits broadcast against values' trailing axes) -> ``[V_dst, ...]``; no in-edge gives 0."""
    alpha = F.dropout(ops.edge_softmax(graph, logits), dropout, training)
    while alpha.dim() < values.dim():
        alpha = alpha[..., None]
    return ops.u_mul_e_sum(graph, values, alpha)


@_kernel("gcn")
def _gcn(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """x'_i = d_i^{-1/2} sum_{j -> i} d_j^{-1/2} (x_j W) + b on the union graph (d: in-degree)."""
    g = sb.union(agg.channels, self_loops=True if agg.opts.self_loops else None).graph
    norm = inv_sqrt_or_zero(g.in_degrees().to(h.dtype))[:, None]            # [V, 1]
    out = norm * ops.copy_u_sum(g, norm * (h @ agg.weight))
    return out + agg.bias if agg.bias is not None else out


@_kernel("sage")
def _sage(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """x'_i = W_neigh (sum or mean over j -> i, j != i, of x_j) + W_self x_i."""
    g = sb.union(None, self_loops=False).graph
    neigh = ops.copy_u_sum(g, h)
    if agg.opts.aggr == "mean":
        neigh = neigh / g.in_degrees().clamp_min(1).to(h.dtype)[:, None]
    out = agg.lin_neigh(neigh)
    return out + agg.lin_self(h) if agg.lin_self is not None else out


@_kernel("gat")
def _gat(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """GATConv on the union graph: edge_softmax of LeakyReLU(a_dst W x_i + a_src W x_j) per head."""
    g = sb.union(None, self_loops=True if agg.opts.self_loops else None).graph
    z = agg.lin(h).unflatten(-1, (agg.heads, agg.head_dim))                # [V, H, C]
    s_src, s_dst = (z * agg.att_src).sum(-1), (z * agg.att_dst).sum(-1)   # [V, H]
    logits = F.leaky_relu(ops.u_add_v(g, s_src, s_dst), agg.opts.negative_slope)   # [E, H]
    out = _attend(g, logits, z, agg.opts.attn_dropout, agg.training)      # [V, H, C]
    out = out.flatten(-2) if agg.opts.concat else out.mean(1)
    return out + agg.bias if agg.bias is not None else out


def _sparse_distances(sb: SparseBatch, g: dgl.DGLGraph, max_dist: int) -> Tensor:
    """Bucketed shortest-path distance from every node of a graph to every node of the same graph,
    as :func:`aggregators.graphormer.shortest_path_distances` defines it, by breadth-first search
    along ``g``'s edges: ``max_dist`` exact steps, then propagation to a fixed point for reachability.

    Returns long ``[V, n_max]``: row i, column = local index of the source j."""
    width = int(sb.batch_num_nodes.max()) if sb.n_nodes else 1
    own = torch.arange(sb.n_nodes, device=sb.src.device)
    local = own - sb.complete()[2]
    reach = torch.zeros(sb.n_nodes, width, device=sb.src.device)
    reach[own, local] = 1.0
    dist = torch.full((sb.n_nodes, width), max_dist + 1, dtype=torch.long, device=sb.src.device)
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


@_kernel("graphormer")
def _graphormer(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """Graphormer attention over all node pairs of each graph (no sparsity to gain: P = sum_b n_b^2
    pairs), with degree embeddings and per-distance spatial biases from a sparse BFS."""
    opts = agg.opts
    g = sb.union(None, self_loops=False, symmetric=not opts.directed).graph
    cap = opts.max_degree
    h = h + agg.in_degree(g.in_degrees().clamp_max(cap))
    if agg.out_degree is not None:
        h = h + agg.out_degree(g.out_degrees().clamp_max(cap))
    dist = _sparse_distances(sb, g, opts.max_dist)                        # [V, n_max]
    full, src_local, _ = sb.complete()
    dst = full.edges()[1]
    bias = agg.spatial(dist[dst, src_local])                              # [P, H]
    split = lambda t: t.unflatten(-1, (agg.heads, agg.head_dim))          # noqa: E731
    q, k, v = split(agg.lin_q(h)), split(agg.lin_k(h)), split(agg.lin_v(h))   # [V, H, C]
    logits = ops.u_dot_v(full, k, q).squeeze(-1) / math.sqrt(agg.head_dim) + bias
    return agg.lin_o(_attend(full, logits, v, opts.attn_dropout, agg.training).flatten(-2))


@_kernel("rgat")
def _rgat(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """RGATConv: g^r_j = x_j W_r per slot (j, r); logits from q = g Q at (i, r) and k = g K at (j, r);
    softmax over all (r, j) of i (across-relation) or over j per (i, r) (within-relation)."""
    opts, s = agg.opts, sb.slots()
    v = h.shape[0]
    gr = torch.einsum("vd,rde->vre", h, agg.weight)                        # [V, R, H*C]
    q, k = (gr @ agg.q).reshape(v * s.width, -1), (gr @ agg.k).reshape(v * s.width, -1)   # [V*R, H]
    if opts.mode == "additive":
        logits = F.leaky_relu(ops.u_add_v(s.slot_to_slot, k, q), opts.negative_slope)
    else:
        logits = ops.u_mul_v(s.slot_to_slot, k, q)                        # [E, H]
    group = s.slot_to_node if opts.mechanism == "across-relation" else s.slot_to_slot
    alpha = F.dropout(ops.edge_softmax(group, logits), opts.attn_dropout, agg.training)
    values = gr.reshape(v * s.width, agg.heads, agg.head_dim)
    out = ops.u_mul_e_sum(s.slot_to_node, values, alpha[..., None])       # [V, H, C]
    out = out.flatten(-2) if opts.concat else out.mean(-2)
    return out + agg.bias if agg.bias is not None else out


@_kernel("hgnn")
def _hgnn(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """R-GCN: x'_i = root(x_i) + sum_r W_r^T (sum or mean over j in N_r(i) of x_j) + b."""
    s = sb.slots()
    per_slot = ops.copy_u_sum(s.node_to_slot, h)                          # [V*R, d]
    if agg.opts.aggr == "mean":
        per_slot = per_slot / s.node_to_slot.in_degrees().clamp_min(1).to(h.dtype)[:, None]
    out = torch.einsum("vrd,rde->ve", per_slot.view(h.shape[0], s.width, -1), agg.weight)
    if agg.root is not None:
        out = out + (typed_linear(h, sb.node_type, agg.root) if agg.opts.typed_root else h @ agg.root)
    return out + agg.bias if agg.bias is not None else out


@_kernel("hgat")
def _hgat(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """HAN-style two-level attention: per (i, r) node-level softmax over N_r(i), then a softmax over
    the relations i has, of the (graph-mean or per-node) semantic scores."""
    opts, s = agg.opts, sb.slots()
    v = h.shape[0]
    z = typed_linear(h, sb.node_type, agg.proj)                           # [V, d]
    s_src = (z @ agg.att_src.T).reshape(-1)                               # [V*R] at slot (j, r)
    s_dst = (z @ agg.att_dst.T).reshape(-1)
    logits = F.leaky_relu(ops.u_add_v(s.slot_to_slot, s_src, s_dst), opts.negative_slope)
    alpha = F.dropout(ops.edge_softmax(s.node_to_slot, logits), opts.attn_dropout, agg.training)
    hr = ops.u_mul_e_sum(s.node_to_slot, z, alpha[:, None]).view(v, s.width, -1)    # [V, R, d]
    hr = {"elu": F.elu, "relu": F.relu, "none": lambda t: t}[opts.activation](hr)
    has = (s.node_to_slot.in_degrees() > 0).view(v, s.width)              # [V, R]
    w = torch.tanh(agg.semantic(hr)) @ agg.semantic_q                      # [V, R]
    if opts.semantic_scope == "graph":
        hasf = has.to(w.dtype)
        total = ops.segment_reduce(sb.batch_num_nodes, w * hasf, "sum")     # [B, R]
        count = ops.segment_reduce(sb.batch_num_nodes, hasf, "sum")
        w = (total / count.clamp_min(1.0))[sb.node_graph]
    beta = masked_softmax(w, has, dim=1)
    return (beta[..., None] * hr).sum(1)


@_kernel("han")
def _han(agg: nn.Module, h: Tensor, sb: SparseBatch) -> Tensor:
    """MMSR's HAN-GNN: homogeneous content attention (logits a_r^T (v_i * v_j) summed over the
    relations of a pair) and heterogeneous query-key attention, composed by the chosen update rule."""
    opts, nt = agg.opts, sb.node_type
    ho_pairs = sb.union(agg.homo)
    ho_slots = sb.slots(agg.homo)
    he_graph = sb.union(agg.hetero).graph
    value = lambda t: typed_linear(t, nt, agg.w_v)                        # noqa: E731
    v = value(h)

    def homo(score_v: Tensor, values: Tensor) -> Tensor:
        keyed = (score_v[:, None, :] * agg.att_ho[None]).reshape(-1, score_v.shape[-1])   # slot (j, r)
        per_edge = ops.u_dot_v(ho_slots.slot_to_node, keyed, score_v).squeeze(-1)        # [E_ho]
        pair = per_edge.new_zeros(ho_pairs.graph.num_edges()).index_add_(0, ho_pairs.inverse, per_edge)
        logits = F.leaky_relu(pair, opts.negative_slope)
        return _attend(ho_pairs.graph, logits[:, None], values, opts.attn_dropout, agg.training)

    def hetero(score_h: Tensor, values: Tensor) -> Tensor:
        q, k = typed_linear(score_h, nt, agg.w_q), typed_linear(score_h, nt, agg.w_k)
        e = ops.u_dot_v(he_graph, q, k)                                    # [E_he, 1]: q_j . k_i
        e = e / math.sqrt(agg.ctx.dim) if opts.scale else e
        return _attend(he_graph, F.leaky_relu(e, opts.negative_slope), values, opts.attn_dropout, agg.training)

    update = opts.update
    if update in ("ho", "sync", "ni_hohe", "hohe", "gate"):
        u_ho = homo(v, v)
    if update in ("he", "sync", "ni_heho", "heho", "gate"):
        u_he = hetero(h, v)
    if update == "ho":
        return u_ho
    if update == "he":
        return u_he
    if update == "sync":
        return agg.sync(torch.cat([u_ho, u_he], -1))
    if update == "ni_hohe":
        return hetero(u_ho, v)
    if update == "ni_heho":
        return homo(value(u_he), v)
    if update == "hohe":
        return hetero(u_ho, value(u_ho))
    if update == "heho":
        w = value(u_he)
        return homo(w, w)
    return agg.mix(hetero(u_ho, v), homo(value(u_he), v))


# --- entry points -----------------------------------------------------------------------------------
def sparse_names() -> list[str]:
    """Registered aggregator names that have a sparse kernel."""
    return sorted(n for n in AGGREGATORS.names() if n in _KERNELS)


def _kernel_for(aggregator: nn.Module) -> Callable[[nn.Module, Tensor, SparseBatch], Tensor]:
    name = getattr(type(aggregator), "registry_name", None)
    if name not in _KERNELS or AGGREGATORS.get(name) is not type(aggregator):
        raise UserInputError(f"aggregator {name or type(aggregator).__name__!r} has no dgl backend kernel; "
                             f"the dgl backend runs {', '.join(sparse_names())} (use the dense backend)")
    return _KERNELS[name]


def forward_nodes(aggregator: nn.Module, h: Tensor, batch: SparseBatch) -> Tensor:
    """``aggregator``'s forward on the real-node rows of a :class:`SparseBatch`.

    Shapes: h [V, d] (``batch.gather(x)``) -> [V, d]; ``batch.scatter`` returns to ``[B, N, d]``.
    """
    return _kernel_for(aggregator)(aggregator, h, batch)


def sparse_forward(aggregator: nn.Module, x: Tensor, adj: Tensor, node_type: Tensor,
                   node_mask: Tensor) -> Tensor:
    """Same contract and result as ``aggregator(x, adj, node_type, node_mask)``, computed by DGL
    message passing over the typed edge list instead of dense ``[B, (R,) N, N]`` products.

    Shapes: x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i), node_type [B, N] long,
    node_mask [B, N] bool -> [B, N, d], zero at padded nodes.
    """
    kernel = _kernel_for(aggregator)
    batch = to_sparse(adj, node_type, node_mask)
    return batch.scatter(kernel(aggregator, batch.gather(x), batch))
