"""Shared conventions of the dense, batched, typed-graph aggregators.

Graph tensors (one graph per sequence, padded to N nodes):
    x [B, N, d] float, adj [B, R, N, N] bool with adj[b, r, i, j] = edge j -> i of relation r,
    node_type [B, N] long, node_mask [B, N] bool.

Relation channels (R = 4 + 2M + M(M-1) for M modalities; R = 10 for two, as in MMSR §3):
    0 self-loop (every real node; counts as homogeneous and heterogeneous),
    1 seq-out, 2 seq-in, 3 seq-both (same-type nodes of consecutive positions: homogeneous),
    4.. cross-type relations of one position (item<-m, m<-item, m<-m'): heterogeneous.
Node types: 0 padding, 1 item, 2 + i for the i-th modality in sorted name order.
"""
from __future__ import annotations

from fusionbench.context import AggregatorContext

SELF = 0
SEQ_OUT = 1
SEQ_IN = 2
SEQ_BOTH = 3
N_HOMO_RELATIONS = 4  # channels 0..3

NODE_PAD = 0
NODE_ITEM = 1
FIRST_MODALITY_NODE_TYPE = 2


def n_relations_for(n_modalities: int) -> int:
    """R for M modalities: self + 3 sequential + 2M item<->modality + M(M-1) modality<->modality."""
    m = n_modalities
    return N_HOMO_RELATIONS + 2 * m + m * (m - 1)


def homogeneous_relations(ctx: AggregatorContext) -> list[int]:
    """Channels of homogeneous relations (self-loop included)."""
    return list(range(min(N_HOMO_RELATIONS, ctx.n_relations)))


def heterogeneous_relations(ctx: AggregatorContext) -> list[int]:
    """Channels of heterogeneous relations (self-loop included)."""
    return [SELF] + list(range(N_HOMO_RELATIONS, ctx.n_relations))
