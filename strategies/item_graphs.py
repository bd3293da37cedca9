r"""Modal-aware item relation graphs of MDSRec (:mod:`strategies.mdsrec`, docs/mdsrec.md) and the item
enhancement on them. No dense ``[n + 1, n + 1]`` matrix is ever formed.

**Graphs**, one per channel m, built once from the frozen features and the split's training-visible
history ``ctx.history``. Behaviour signal: :math:`B_{ij}` = number of history sequences in which i ≠ j
occur within ``window`` positions of each other, row-normalised :math:`\bar B_{ij} = B_{ij} / \max_k
B_{ik}`. Similarity :math:`S^m_{ij} = \cos(f^m_i, f^m_j)` (0 where either item lacks m), of which each
item keeps its top ``k_sim`` (computed in row blocks). Candidate weights, of which each item keeps its top
``k_graph`` (weights <= 0 dropped):

.. math::
    \text{mix}:\ w_{ij} = \lambda_b \bar B_{ij} + (1 - \lambda_b) S^m_{ij}
        \ \text{ on } \mathrm{top}_{k_{sim}}(S^m_{i\cdot}) \cup \{j: B_{ij} > 0\},\qquad
    \text{intersect}:\ w_{ij} = S^m_{ij} \ \text{ on } \{j: B_{ij} > 0\},\qquad
    \text{id}:\ w_{ij} = \bar B_{ij}

then :math:`A = \max(W, W^\top) + I` and :math:`\hat A = D^{-1/2} A D^{-1/2}` (sparse COO).

**Item enhancement** (LightGCN-style, ``graph_layers`` = L_g):
:math:`\tilde e^m = \frac{1}{L_g + 1}\sum_{l=0}^{L_g} \hat A^{\,l} x^m`, with :math:`x^{id}` the ID
embeddings and :math:`x^m` the projected features (the learned missing vector where the item lacks m,
:class:`strategies.fusion.ModalityChannel`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.context import ModalityTable
from fusionbench.data.core import SequenceData

SIM_BLOCK = 1024      # rows of the [block, n + 1] similarity slab: never a dense [n + 1, n + 1] matrix
PAIR_CHUNK = 65536    # item pairs per chunk when cosines are taken on given pairs


def behaviour_counts(history: SequenceData, window: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Co-occurrence counts :math:`B_{ij}` of a history, as a symmetric sparse edge list.

    :math:`B_{ij}` = number of sequences in which items i ≠ j occur at most ``window`` positions apart
    (a sequence counts once however often the pair recurs in it).

    Returns ``row [E]``, ``col [E]``, ``count [E]`` (long), sorted by (row, col); both directions.
    """
    flat = history.flat
    n = flat.numel()
    user = torch.repeat_interleave(torch.arange(history.n_users), history.lengths)
    first = torch.arange(n)[:, None]                                             # [N, 1]
    second = first + torch.arange(1, window + 1)[None, :]                        # [N, w]
    ok = second < n
    second = second.clamp(max=max(n - 1, 0))
    ok &= user[second] == user[first]
    i, j, u = flat[first.expand_as(second)][ok], flat[second][ok], user[first.expand_as(second)][ok]
    distinct = i != j
    i, j, u = i[distinct], j[distinct], u[distinct]
    size = history.n_items + 1
    key = torch.cat([i * size + j, j * size + i])
    per_user = torch.unique(torch.stack([torch.cat([u, u]), key]), dim=1)      # distinct (user, pair)
    pair, count = torch.unique(per_user[1], return_counts=True)
    return pair // size, pair % size, count


def similarity_features(table: ModalityTable) -> tuple[Tensor, Tensor]:
    """Frozen vectors the similarity graph of a channel is computed from, and which items have them.

    Dense features when the table has them (``d_m > 0``; ``attr`` under ``features.attr=svd``: its SVD
    features); otherwise the multi-hot vector of the item's valid codes ``[n_items + 1, n_codes]`` (``attr``
    under ``features.attr=ids``: its attribute ids; an item without any code counts as absent)."""
    if table.dim > 0:
        return table.features.float(), table.present
    valid = table.codes >= 0
    rows = torch.arange(table.codes.shape[0])[:, None].expand_as(table.codes)[valid]
    multi_hot = torch.zeros(table.codes.shape[0], table.n_codes)
    multi_hot[rows, table.codes[valid]] = 1.0
    return multi_hot, table.present & valid.any(1)


def cosine_topk(features: Tensor, present: Tensor, k: int, block: int = SIM_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    r"""Top-``k`` cosine neighbours of every present item among the other present items.

    :math:`S_{ij} = f_i^\top f_j / (\lVert f_i\rVert \lVert f_j\rVert)`, computed ``block`` rows at a
    time (a ``[block, n + 1]`` slab), never as a dense ``[n + 1, n + 1]`` matrix.

    Args: features ``[n + 1, d_m]``, present ``[n + 1]`` bool, k, block (rows per slab).
    Returns: ``row [E]``, ``col [E]`` (long) and ``sim [E]``, ``k`` neighbours per present item (fewer
    when fewer other items are present), rows in increasing order, neighbours by decreasing similarity.
    """
    unit = F.normalize(features.float(), dim=1) * present[:, None]
    rows = torch.nonzero(present).squeeze(1)
    k = min(k, rows.numel() - 1)
    if k < 1:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    out_col, out_sim = [], []
    for r in rows.split(block):
        sim = unit[r] @ unit.T                                                   # [b, n + 1]
        sim.masked_fill_(~present[None, :], float("-inf"))
        sim[torch.arange(r.numel()), r] = float("-inf")
        value, index = sim.topk(k, dim=1)
        out_sim.append(value)
        out_col.append(index)
    return rows.repeat_interleave(k), torch.cat(out_col).flatten(), torch.cat(out_sim).flatten()


def pair_cosine(features: Tensor, present: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """Cosine similarity of the given item pairs ``[E]`` (0 where either item is absent), in chunks."""
    unit = F.normalize(features.float(), dim=1) * present[:, None]
    if row.numel() == 0:
        return torch.zeros(0)
    return torch.cat([(unit[r] * unit[c]).sum(1) for r, c in zip(row.split(PAIR_CHUNK), col.split(PAIR_CHUNK))])


def topk_per_row(row: Tensor, weight: Tensor, k: int) -> Tensor:
    """bool ``[E]``: the ``k`` largest-weight edges of every row (ties: earlier edge first)."""
    order = torch.argsort(weight, descending=True, stable=True)
    order = order[torch.argsort(row[order], stable=True)]
    sorted_row = row[order]
    counts = torch.bincount(sorted_row)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel()) - starts[sorted_row]
    keep = torch.zeros(row.numel(), dtype=torch.bool)
    keep[order[rank < k]] = True
    return keep


def max_merge(row: Tensor, col: Tensor, weight: Tensor, n_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Duplicate (row, col) edges merged into one with the largest weight; sorted by (row, col)."""
    key, inverse = torch.unique(row * n_nodes + col, return_inverse=True)
    merged = torch.full((key.numel(),), float("-inf")).scatter_reduce_(0, inverse, weight.float(), "amax")
    return key // n_nodes, key % n_nodes, merged


def channel_edges(behaviour: tuple[Tensor, Tensor, Tensor], n_nodes: int, k_graph: int,
                  similarity: Optional[tuple[Tensor, Tensor]] = None, k_sim: int = 10,
                  mode: str = "mix", lambda_b: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    r"""Directed, weighted edges of one channel's relation graph before symmetrisation (module doc).

    Args:
        behaviour: ``(row, col, count)`` from :func:`behaviour_counts`.
        n_nodes: n + 1. k_graph: edges kept per item (largest weights).
        similarity: ``(features [n + 1, d_m], present [n + 1])`` of a modality; ``None`` = the id
            channel (:math:`w = \bar B`).
        k_sim: similarity neighbours per item (``mix``). mode: ``"mix"`` or ``"intersect"``.
        lambda_b: :math:`\lambda_b` of ``mix``.

    Returns: ``row [E]``, ``col [E]``, ``weight [E] > 0``.
    """
    b_row, b_col, count = behaviour
    row_max = torch.zeros(n_nodes).scatter_reduce_(0, b_row, count.float(), "amax", include_self=False)
    b_norm = count.float() / row_max[b_row] if b_row.numel() else torch.zeros(0)
    if similarity is None:
        row, col, weight = b_row, b_col, b_norm
    else:
        features, present = similarity
        b_sim = pair_cosine(features, present, b_row, b_col)
        if mode == "intersect":
            row, col, weight = b_row, b_col, b_sim
        else:
            s_row, s_col, s_sim = cosine_topk(features, present, k_sim)
            mixed = torch.cat([(1 - lambda_b) * s_sim, lambda_b * b_norm + (1 - lambda_b) * b_sim])
            row, col, weight = max_merge(torch.cat([s_row, b_row]), torch.cat([s_col, b_col]), mixed, n_nodes)
    positive = weight > 0
    row, col, weight = row[positive], col[positive], weight[positive]
    keep = topk_per_row(row, weight, k_graph)
    return row[keep], col[keep], weight[keep]


def normalised_adjacency(row: Tensor, col: Tensor, weight: Tensor, n_nodes: int) -> Tensor:
    r""":math:`\hat A = D^{-1/2} (\max(W, W^\top) + I) D^{-1/2}` as a coalesced sparse COO ``[n, n]``
    (W from the directed edges given, without self loops)."""
    loops = torch.arange(n_nodes)
    row, col, weight = max_merge(torch.cat([row, col]), torch.cat([col, row]), torch.cat([weight, weight]), n_nodes)
    row, col = torch.cat([row, loops]), torch.cat([col, loops])
    weight = torch.cat([weight, torch.ones(n_nodes)])
    inv_sqrt = torch.zeros(n_nodes).index_add_(0, row, weight).rsqrt()
    values = inv_sqrt[row] * weight * inv_sqrt[col]
    return torch.sparse_coo_tensor(torch.stack([row, col]), values, (n_nodes, n_nodes),
                                   check_invariants=True).coalesce()


class GraphPropagation(nn.Module):
    r"""LightGCN-style mean over propagation depths on a fixed normalised graph:

    .. math:: \tilde x = \frac{1}{L_g + 1}\sum_{l=0}^{L_g} \hat A^{\,l} x,\qquad
              \kappa_v = \frac{1}{L_g + 1}\sum_{l=0}^{L_g} (\hat A^{\,l})_{vv}

    κ (``self_weight``) is how much of :math:`x_v` itself is in :math:`\tilde x_v`, so that replacing
    :math:`x_v` by δ changes :math:`\tilde x_v` by exactly :math:`\kappa_v (\delta - x_v)` (L_g ≤ 2;
    :math:`\hat A` is symmetric, so :math:`(\hat A^2)_{vv} = \sum_j \hat A_{vj}^2`).

    L_g = 0 is the "graphs off" ablation: :math:`\tilde x = x`.

    Shapes: adjacency sparse ``[N, N]``; x ``[N, d]`` -> ``[N, d]``; self_weight ``[N]``.
    """

    def __init__(self, adjacency: Tensor, layers: int):
        super().__init__()
        if layers not in (0, 1, 2):
            raise ValueError(f"GraphPropagation supports 0, 1 or 2 layers, got {layers}")
        self.layers = layers
        self.register_buffer("adjacency", adjacency, persistent=False)
        row, col = adjacency.indices()
        values = adjacency.values()
        n = adjacency.shape[0]
        depth = [torch.ones(n)]
        if layers >= 1:
            depth.append(torch.zeros(n).index_add_(0, row[row == col], values[row == col]))
        if layers == 2:
            depth.append(torch.zeros(n).index_add_(0, row, values * values))
        self.register_buffer("self_weight", torch.stack(depth).mean(0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.layers:
            return x
        # the sparse product has no bfloat16 backward: under bf16 autocast the propagation runs in float32
        with torch.autocast(x.device.type, enabled=False):
            out = total = x.float()
            for _ in range(self.layers):
                out = torch.sparse.mm(self.adjacency, out)
                total = total + out
        return total / (self.layers + 1)

    def extra_repr(self) -> str:
        return f"nodes={self.adjacency.shape[0]}, entries={self.adjacency._nnz()}, layers={self.layers}"
