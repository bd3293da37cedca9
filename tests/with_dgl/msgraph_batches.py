"""Beauty-like MSGraph batches for the DGL tests and benchmark (no dgl import: safe to collect anywhere).

Histories follow Amazon Beauty's shape (5-core, mean length about 9 with a long tail, n = 12,101
items); every item has k = 3 codes per modality out of C = 30 (fusionbench's default, the logged MMSR
Beauty run), and a share of items lack a modality. The graphs come from the real builder
(``strategies.msgraph.build_msgraph``), so node order, relation channels and padding are the ones
the aggregators meet in MMSR.
"""
from __future__ import annotations

import torch

from aggregators.base import FIRST_MODALITY_NODE_TYPE
from fusionbench.context import CODE_SENTINEL, AggregatorContext
from strategies.msgraph import build_msgraph

N_ITEMS, N_CODES, K = 12101, 30, 3
MODALITIES = ("image", "text")


def beauty_like_msgraph(batch: int, length: int, dim: int, seed: int = 0, fixed_length: bool = False,
                        empty_row: bool = False, p_missing: float = 0.1):
    """A batch of MSGraphs and random node inputs.

    Args:
        batch, length: B histories of at most L items (left-padded).
        dim: node feature size d.
        fixed_length: every history has exactly L items (graphs of similar size, for the benchmark);
            otherwise lengths are 5 + Exp(mean 4), cut at L, as in Beauty.
        empty_row: the last history is all padding (a graph without nodes).
        p_missing: share of items without a modality (no code node, no edge of it).

    Returns:
        ``(ctx, x [B, N, d], adj [B, R, N, N], node_type [B, N], node_mask [B, N])``.
    """
    g = torch.Generator().manual_seed(seed)
    if fixed_length:
        lengths = torch.full((batch,), length)
    else:
        lengths = (5 + torch.empty(batch).exponential_(1 / 4.0, generator=g).floor().long()).clamp(max=length)
    if empty_row:
        lengths[-1] = 0
    items = torch.randint(1, N_ITEMS + 1, (batch, length), generator=g)
    items[torch.arange(length)[None, :] < (length - lengths)[:, None]] = 0
    codes = {}
    for m in MODALITIES:
        table = torch.randint(0, N_CODES, (N_ITEMS + 1, K), generator=g)
        table[torch.rand(N_ITEMS + 1, generator=g) < p_missing] = CODE_SENTINEL
        table[0] = CODE_SENTINEL
        codes[m] = table
    graph = build_msgraph(items, codes, N_ITEMS, {m: N_CODES for m in MODALITIES})
    ctx = AggregatorContext(dim=dim, n_relations=graph.adj.shape[1],
                            n_node_types=FIRST_MODALITY_NODE_TYPE + len(MODALITIES))
    x = torch.randn(batch, graph.n_nodes, dim, generator=g)
    return ctx, x, graph.adj, graph.node_type, graph.node_mask


def length_for_nodes(nodes: int, batch: int, seed: int = 0) -> int:
    """Smallest fixed history length whose batch (``beauty_like_msgraph(batch, length, ...,
    seed=seed, fixed_length=True)``) is padded to at least ``nodes`` nodes, by bisection."""
    def padded(length: int) -> int:
        return beauty_like_msgraph(batch, length, 1, seed=seed, fixed_length=True)[1].shape[1]

    low, high = 1, nodes
    while low < high:
        mid = (low + high) // 2
        if padded(mid) >= nodes:
            high = mid
        else:
            low = mid + 1
    return low
