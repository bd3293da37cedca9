r"""The sparse (DGL) backend's shared machinery: a dense batch as one typed edge list, and the entry points
(docs/dgl.md).

The dense aggregators hold a whole batch as ``adj [B, R, N, N]``; memory and time grow with
:math:`B N^2 R` whatever the number of edges. The sparse backend runs the **same modules with the same
parameters** on one DGL graph over the V real nodes of the batch, with one edge per (relation, pair):
memory and time grow with the edge count E instead. Each aggregator's sparse maths lives in its own file,
beside its dense ``forward``, as ``forward_sparse(h [V, d], batch: SparseBatch) -> [V, d]`` (every
built-in has one; ``tests/with_dgl/test_dgl_backend.py`` checks each against its dense forward to 1e-5,
values and gradients). This module holds what they share: :class:`SparseBatch` (the edge list and the
graphs built from it, cached per batch), :func:`attend` (edge softmax and weighted sum) and the entry
points.

Needs ``dgl`` (``tox -e dgl``: dgl 2.1.0 runs beside torch <= 2.2.1 only, and PyPI's build is
CPU-only); importing this module without it fails. Only the sparse paths import it (an aggregator's
``forward_sparse``, MMSR's ``backend=dgl``), never the dense aggregators.

Graphs built from a :class:`SparseBatch` (all share its typed edge list, so an edge tensor computed on
one is valid on the others):

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

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import dgl
import dgl.ops as ops
import torch
from torch import Tensor, nn

from fusionbench.dropout import dropout
from fusionbench.errors import UserInputError
from fusionbench.registry import AGGREGATORS

__all__ = ["SparseBatch", "attend", "forward_nodes", "has_sparse_path", "sparse_forward", "sparse_names", "to_sparse"]


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


def attend(graph: dgl.DGLGraph, logits: Tensor, values: Tensor, p: float, training: bool) -> Tensor:
    """``sum_j softmax_j(logits) values_j`` per destination, the attention step of the sparse paths: logits
    ``[E, ...]``, values ``[V_src, ...]`` (logits broadcast against values' trailing axes) -> ``[V_dst, ...]``;
    a node without in-edges gets 0. Dropout applies to the normalised weights, per edge."""
    alpha = dropout(ops.edge_softmax(graph, logits), p, training)
    while alpha.dim() < values.dim():
        alpha = alpha[..., None]
    return ops.u_mul_e_sum(graph, values, alpha)


# --- entry points -----------------------------------------------------------------------------------
def has_sparse_path(cls: type) -> bool:
    """Whether the aggregator class defines ``forward_sparse`` (its sparse path)."""
    return callable(getattr(cls, "forward_sparse", None))


def sparse_names() -> list[str]:
    """Registered aggregator names whose class has a sparse path (``forward_sparse``)."""
    return sorted(n for n in AGGREGATORS.names() if has_sparse_path(AGGREGATORS.get(n)))


def _sparse_path(aggregator: nn.Module) -> Callable[[Tensor, SparseBatch], Tensor]:
    """The module's ``forward_sparse``; only a registered aggregator's own class qualifies (a subclass may
    change ``forward`` without changing the sparse path it inherits)."""
    name = getattr(type(aggregator), "registry_name", None)
    registered = name is not None and name in AGGREGATORS.names() and AGGREGATORS.get(name) is type(aggregator)
    if not (registered and has_sparse_path(type(aggregator))):
        raise UserInputError(f"aggregator {name or type(aggregator).__name__!r} has no dgl backend kernel; "
                             f"the dgl backend runs {', '.join(sparse_names())} (use the dense backend)")
    return aggregator.forward_sparse


def forward_nodes(aggregator: nn.Module, h: Tensor, batch: SparseBatch) -> Tensor:
    """``aggregator``'s forward on the real-node rows of a :class:`SparseBatch`.

    Shapes: h [V, d] (``batch.gather(x)``) -> [V, d]; ``batch.scatter`` returns to ``[B, N, d]``.
    """
    return _sparse_path(aggregator)(h, batch)


def sparse_forward(aggregator: nn.Module, x: Tensor, adj: Tensor, node_type: Tensor,
                   node_mask: Tensor) -> Tensor:
    """Same contract and result as ``aggregator(x, adj, node_type, node_mask)``, computed by DGL
    message passing over the typed edge list instead of dense ``[B, (R,) N, N]`` products.

    Shapes: x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i), node_type [B, N] long,
    node_mask [B, N] bool -> [B, N, d], zero at padded nodes.
    """
    forward = _sparse_path(aggregator)
    batch = to_sparse(adj, node_type, node_mask)
    return batch.scatter(forward(batch.gather(x), batch))
