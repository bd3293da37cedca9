r"""MSGraph: the modality-enriched sequence graph of MMSR (specs/mmsr.md §3-§4), built batched.

One graph per history. Nodes are the distinct items of the history and the distinct modality codes
of those items; a node that occurs at several positions is one node. Global node ids:

    padding 0;  item v -> v (1..n);  code c of modality i -> n + 1 + offset_i + c,

with modalities in sorted name order and ``offset_i`` the summed code vocabularies (C) of the
modalities before i. **Node order within a row: ascending global id** (items by id, then the codes of
modality 0, 1, ...), followed by padding nodes; the slow reference builder of the tests uses the same
order, so the two agree exactly.

Relation channels (``aggregators.base``; R = 4 + 2M + M(M-1) for M modalities),
``adj[b, r, i, j]`` = edge j -> i (i receives from j):

    0 self-loop on every real node
    1 seq-out, 2 seq-in, 3 seq-both   same-type nodes x at position t and y at t+1 (the two items;
                                      every code of modality m of item t with every code of the same
                                      modality of item t+1): seq-out at [x, y], seq-in at [y, x];
                                      a pair joined in both directions anywhere is seq-both only;
                                      pairs x == y (a repeated item or shared code) are skipped
    4 + 2i       item <- m_i          the item of position t receives from its codes of modality i
    4 + 2i + 1   m_i <- item
    4 + 2M + p   m_i <- m_j           p-th ordered pair (i, j), i != j, in lexicographic order: codes
                                      of modality i of position t receive from those of modality j of t

Missing data: an item whose codes of a modality are all ``CODE_SENTINEL`` (or a position hidden by
``present``) contributes no code node and no edge of that modality at that position; the sequential
code chain of that modality is broken there (edges join consecutive positions only). With ``shown``,
a position's codes of a modality are those of the item ``shown[m]`` names there (0 = none).

Batched recipe (§3): every (position, slot) gets its global id or a sentinel, one sort per row,
first-occurrence mask + cumsum give local node indices, scattered back through the sort permutation;
edges are flat index tensors built by broadcasting over the real positions (``nonzero`` of the item
mask), written with one ``index_fill_`` per relation family (sequential, cross-type; the sequential
matrix is then split into out / in / both). No Python loop over rows, positions or nodes (only over
modalities and modality pairs). Cost is dominated by zero-filling the dense ``adj``.

Shapes:
    items [B, L] long (left-padded with 0), codes[m] [n + 1, k_m] long, present[m] [B, L] bool
    -> node_ids, node_type [B, N] long, node_mask [B, N] bool, adj [B, R, N, N] bool,
       pos_mask [B, N, L] bool, last_node [B] long;  N = max distinct nodes of a row (>= 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from aggregators.base import (
    FIRST_MODALITY_NODE_TYPE,
    N_HOMO_RELATIONS,
    NODE_ITEM,
    NODE_PAD,
    SELF,
    SEQ_BOTH,
    SEQ_IN,
    SEQ_OUT,
    n_relations_for,
)
from fusionbench.context import CODE_SENTINEL

__all__ = ["MSGraph", "build_msgraph", "count_nodes", "msgraph_relations"]


@dataclass
class MSGraph:
    """A batch of MSGraphs, padded to N nodes (see the module docstring for ids, order and channels).

    Attributes:
        node_ids: long ``[B, N]`` global node ids (row of the node embedding table); 0 at padding.
        node_type: long ``[B, N]``: 0 padding, 1 item, 2 + i codes of the i-th modality (sorted names).
        node_mask: bool ``[B, N]``: True at real nodes (they come first in each row).
        adj: bool ``[B, R, N, N]``, ``adj[b, r, i, j]`` = edge j -> i of relation channel r.
        pos_mask: bool ``[B, N, L]``: node i occurs at position l (a code "occurs" where an item holding
            it sits, unless ``present`` hides that modality there).
        last_node: long ``[B]``: local index of the node of ``items[:, -1]`` (0 for an all-padding row,
            whose node 0 is padding).
    """

    node_ids: Tensor
    node_type: Tensor
    node_mask: Tensor
    adj: Tensor
    pos_mask: Tensor
    last_node: Tensor

    @property
    def n_nodes(self) -> int:
        """N, the padded node count."""
        return self.node_ids.shape[1]

    def to(self, device: torch.device | str) -> "MSGraph":
        return MSGraph(*(t.to(device) for t in (self.node_ids, self.node_type, self.node_mask,
                                                 self.adj, self.pos_mask, self.last_node)))


def msgraph_relations(modality_names: Sequence[str]) -> list[str]:
    """Readable name of every relation channel, in channel order (names are sorted first).

    >>> msgraph_relations(["text", "image"])[4:]
    ['item<-image', 'image<-item', 'item<-text', 'text<-item', 'image<-text', 'text<-image']
    """
    names = sorted(modality_names)
    out = ["self", "seq-out", "seq-in", "seq-both"]
    for m in names:
        out += [f"item<-{m}", f"{m}<-item"]
    out += [f"{a}<-{b}" for a in names for b in names if a != b]
    assert len(out) == n_relations_for(len(names))
    return out


def _pair_channel(i: int, j: int, n_modalities: int) -> int:
    """Channel of ``m_i <- m_j`` (i != j): ordered pairs in lexicographic order after item<->m."""
    rank = i * (n_modalities - 1) + (j if j < i else j - 1)
    return N_HOMO_RELATIONS + 2 * n_modalities + rank


def _check_inputs(items: Tensor, codes: Mapping[str, Tensor], n_items: int, n_codes: Mapping[str, int],
                  present: Optional[Mapping[str, Tensor]], shown: Optional[Mapping[str, Tensor]]) -> None:
    if items.dim() != 2 or items.dtype != torch.long:
        raise ValueError(f"build_msgraph: items must be a long [B, L] tensor, got {items.dtype} "
                         f"{tuple(items.shape)}")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) > n_items):
        raise ValueError(f"build_msgraph: item ids must lie in 0..{n_items} (0 = padding)")
    if set(codes) != set(n_codes):
        raise ValueError(f"build_msgraph: codes and n_codes name different modalities: "
                         f"{sorted(codes)} vs {sorted(n_codes)}")
    for m in sorted(codes):
        table = codes[m]
        if table.dim() != 2 or table.shape[0] != n_items + 1 or table.dtype != torch.long:
            raise ValueError(f"build_msgraph: codes[{m!r}] must be a long [n_items + 1, k] = "
                             f"[{n_items + 1}, k] tensor, got {table.dtype} {tuple(table.shape)}")
        if table.numel() and (int(table.min()) < CODE_SENTINEL or int(table.max()) >= n_codes[m]):
            raise ValueError(f"build_msgraph: codes[{m!r}] must lie in 0..{n_codes[m] - 1} or be "
                             f"CODE_SENTINEL ({CODE_SENTINEL})")
    for m, mask in (present or {}).items():
        if m not in codes:
            raise ValueError(f"build_msgraph: present names unknown modality {m!r}; "
                             f"known: {', '.join(sorted(codes))}")
        if mask.shape != items.shape or mask.dtype != torch.bool:
            raise ValueError(f"build_msgraph: present[{m!r}] must be bool {tuple(items.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
    for m, who in (shown or {}).items():
        if m not in codes or who.shape != items.shape or who.dtype != torch.long:
            raise ValueError(f"build_msgraph: shown[{m!r}] must be a long {tuple(items.shape)} tensor of a "
                             f"modality in {', '.join(sorted(codes))}, got {who.dtype} {tuple(who.shape)}")


def _flat_pairs(rows: Tensor, dst: Tensor, src: Tensor, n_nodes: int, channel: int = 0,
                n_channels: int = 1) -> tuple[Tensor, Tensor]:
    """Edges dst <- src as flat positions in a ``[B, n_channels, N, N]`` tensor, with a mask of the
    pairs whose two ends are real nodes (invalid slots carry the dump index ``n_nodes``).

    rows ``[P]`` is the batch row of each of P positions; dst and src broadcast to ``[P, ...]``."""
    rows = rows.view(-1, *([1] * (max(dst.dim(), src.dim()) - 1)))
    flat = ((rows * n_channels + channel) * n_nodes + dst) * n_nodes + src
    ok = (dst < n_nodes) & (src < n_nodes)
    return flat.flatten(), ok.expand_as(flat).flatten()


def _set_pairs(target: Tensor, pieces: list[tuple[Tensor, Tensor]]) -> None:
    """One write of True into ``target`` at every valid flat position of ``pieces``."""
    if pieces:
        flat, ok = (torch.cat(p) for p in zip(*pieces))
        target.view(-1).index_fill_(0, flat[ok], True)


def _slots(items: Tensor, codes: Mapping[str, Tensor], n_items: int, n_codes: Mapping[str, int],
           present: Optional[Mapping[str, Tensor]], shown: Optional[Mapping[str, Tensor]]):
    """Step 1: one global node id per slot (L item slots, then L * k_m code slots per modality,
    position-major), ``sentinel`` where a slot holds nothing.

    Returns slot_ids ``[B, T]``, slot_pos ``[B, T]`` (the slot's position), code_slices (start, k_m)
    per modality in sorted order, and the sentinel id (larger than every real id)."""
    names = sorted(codes)
    device = items.device
    batch, length = items.shape
    real = items > 0                                                       # [B, L]
    sentinel = n_items + 1 + sum(n_codes[m] for m in names)
    positions = torch.arange(length, device=device)
    slot_ids = [torch.where(real, items, sentinel)]
    slot_pos = [positions.expand(batch, length)]
    code_slices, start, offset = [], length, n_items + 1
    for m in names:
        table = codes[m].to(device)
        k = table.shape[1]
        c = table[items if shown is None or m not in shown else shown[m].to(device)]  # [B, L, k]
        ok = (c != CODE_SENTINEL) & real[..., None]
        if present is not None and m in present:
            ok &= present[m].to(device)[..., None]
        slot_ids.append(torch.where(ok, c + offset, sentinel).flatten(1))
        slot_pos.append(positions.repeat_interleave(k).expand(batch, length * k))
        code_slices.append((start, k))
        start += length * k
        offset += n_codes[m]
    return torch.cat(slot_ids, 1), torch.cat(slot_pos, 1), code_slices, sentinel


def _first_occurrences(slot_ids: Tensor, sentinel: int) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2a: per-row sort of the slot ids; returns sorted ids, the sort permutation and a mask of
    the first occurrence of every real id (all ``[B, T]``)."""
    sorted_ids, perm = slot_ids.sort(dim=1)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    first &= sorted_ids != sentinel
    return sorted_ids, perm, first


def count_nodes(
    items: Tensor,
    codes: Mapping[str, Tensor],
    n_items: int,
    n_codes: Mapping[str, int],
    present: Optional[Mapping[str, Tensor]] = None,
    shown: Optional[Mapping[str, Tensor]] = None,
) -> Tensor:
    """Number of nodes ``[B]`` of each row's MSGraph (what :func:`build_msgraph` would give), without
    building edges: cheap enough to sort a whole epoch's samples by graph size."""
    _check_inputs(items, codes, n_items, n_codes, present, shown)
    slot_ids, _, _, sentinel = _slots(items, codes, n_items, n_codes, present, shown)
    return _first_occurrences(slot_ids, sentinel)[2].sum(1)


def build_msgraph(
    items: Tensor,
    codes: Mapping[str, Tensor],
    n_items: int,
    n_codes: Mapping[str, int],
    present: Optional[Mapping[str, Tensor]] = None,
    shown: Optional[Mapping[str, Tensor]] = None,
) -> MSGraph:
    """Build the MSGraphs of a batch of left-padded histories (module docstring: ids, order, channels).

    Args:
        items: long ``[B, L]``, item ids 1..n, left-padded with 0, most recent item last.
        codes: modality name -> long ``[n_items + 1, k_m]`` codes in ``0..n_codes[m]-1``, with
            ``CODE_SENTINEL`` (-1) for "no code" (all -1 = the item lacks the modality). k may differ
            per modality; a code repeated within one item counts once. Moved to ``items.device``.
        n_items: n.
        n_codes: modality name -> code vocabulary size C_m (fixes the global id offsets).
        present: optional modality name -> bool ``[B, L]``; False hides that modality at that position
            (no code nodes, no edges of it there). Modalities not named are present everywhere.
        shown: optional modality name -> long ``[B, L]``: the item whose codes of that modality a
            position carries (0 = none); modalities not named show the position's own item.

    Returns:
        :class:`MSGraph` with N = max over rows of the number of distinct nodes (at least 1) and
        R = ``n_relations_for(len(codes))``.
    """
    _check_inputs(items, codes, n_items, n_codes, present, shown)
    names = sorted(codes)
    n_mod = len(names)
    device = items.device
    batch, length = items.shape
    real = items > 0                                                       # [B, L]

    # 1. one global id per slot
    slot_ids, slot_pos, code_slices, sentinel = _slots(items, codes, n_items, n_codes, present, shown)
    valid = slot_ids != sentinel

    # 2. per-row unique: sort, first occurrence, cumsum, scatter back through the permutation
    sorted_ids, perm, first = _first_occurrences(slot_ids, sentinel)
    rank_sorted = first.long().cumsum(1) - 1                               # local index of each sorted slot
    counts = first.sum(1)                                                  # [B] distinct nodes per row
    n_nodes = max(1, int(counts.max())) if batch else 1
    local = torch.empty_like(rank_sorted).scatter_(1, perm, rank_sorted)
    local = torch.where(valid, local, n_nodes)                             # [B, T]; n_nodes = dump index

    row = torch.arange(batch, device=device)[:, None]                      # [B, 1]
    at_first = first.flatten().nonzero().squeeze(1)
    node_ids = torch.zeros(batch, n_nodes, dtype=torch.long, device=device)
    node_ids.view(-1)[(row * n_nodes + rank_sorted).flatten()[at_first]] = sorted_ids.flatten()[at_first]
    node_mask = torch.arange(n_nodes, device=device) < counts[:, None]
    code_ends = torch.tensor([n_codes[m] for m in names], dtype=torch.long, device=device).cumsum(0)
    modality = torch.bucketize(node_ids - (n_items + 1), code_ends, right=True)
    node_type = torch.where(node_ids <= n_items, NODE_ITEM, FIRST_MODALITY_NODE_TYPE + modality)
    node_type = torch.where(node_mask, node_type, NODE_PAD)

    pos_mask = torch.zeros(batch, n_nodes, length, dtype=torch.bool, device=device)
    pos_mask.view(-1).index_fill_(0, ((row * n_nodes + local) * length + slot_pos)[valid], True)

    item_local = local[:, :length]                                         # [B, L]
    code_local = [local[:, s:s + length * k].view(batch, length, k) for s, k in code_slices]
    if length:
        last_node = torch.where(real[:, -1], item_local[:, -1], 0)
    else:
        last_node = torch.zeros(batch, dtype=torch.long, device=device)

    n_rel = n_relations_for(n_mod)
    adj = torch.zeros(batch, n_rel, n_nodes, n_nodes, dtype=torch.bool, device=device)
    adj[:, SELF].diagonal(dim1=-2, dim2=-1).copy_(node_mask)

    # 3a. sequential family: out[x, y] for x at t, y at t+1 (same type), then split by direction;
    #     only pairs of consecutive real positions are enumerated (P << B * L for short histories)
    sb, st = (real[:, :-1] & real[:, 1:]).nonzero(as_tuple=True)           # [S] each
    out = torch.zeros(batch, n_nodes, n_nodes, dtype=torch.bool, device=device)
    _set_pairs(out, [_flat_pairs(sb, item_local[sb, st], item_local[sb, st + 1], n_nodes)]
               + [_flat_pairs(sb, c[sb, st][:, :, None], c[sb, st + 1][:, None, :], n_nodes)
                  for c in code_local])
    out.diagonal(dim1=-2, dim2=-1).zero_()                                 # self pairs x == y skipped
    both = out & out.mT
    out &= ~both
    adj[:, SEQ_OUT] = out
    adj[:, SEQ_IN] = out.mT                                                # = out^T & ~both (both symmetric)
    adj[:, SEQ_BOTH] = both

    # 3b. cross-type family (same position only): item<->m_i, then m_i<-m_j for ordered pairs
    pb, pt = real.nonzero(as_tuple=True)                                   # [P] real positions
    item_at = item_local[pb, pt][:, None]                                  # [P, 1]
    codes_at = [c[pb, pt] for c in code_local]                             # [P, k_i]
    pieces = []
    for i, c in enumerate(codes_at):
        pieces.append(_flat_pairs(pb, item_at, c, n_nodes, N_HOMO_RELATIONS + 2 * i, n_rel))
        pieces.append(_flat_pairs(pb, c, item_at, n_nodes, N_HOMO_RELATIONS + 2 * i + 1, n_rel))
    for i in range(n_mod):
        for j in range(n_mod):
            if i != j:
                pieces.append(_flat_pairs(pb, codes_at[i][:, :, None], codes_at[j][:, None, :],
                                          n_nodes, _pair_channel(i, j, n_mod), n_rel))
    _set_pairs(adj, pieces)

    return MSGraph(node_ids, node_type, node_mask, adj, pos_mask, last_node)
