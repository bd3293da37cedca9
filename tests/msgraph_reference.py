"""Slow, per-sample reference MSGraph builder (test-only code; shared by tests and benchmarks).

Written straight from specs/mmsr.md §3 with Python lists, dicts and sets, one history at a time, so
that it is easy to check by eye. ``strategies.msgraph.build_msgraph`` must agree with it exactly
(both order the nodes of a row by ascending global node id).
"""
from __future__ import annotations

import torch

from strategies.msgraph import MSGraph

PAD_TYPE, ITEM_TYPE = 0, 1


def relation_channels(names):
    """name of a relation -> channel, following aggregators.base (names already sorted)."""
    ch = {"self": 0, "seq-out": 1, "seq-in": 2, "seq-both": 3}
    nxt = 4
    for m in names:
        ch[("item<-", m)] = nxt
        ch[(m, "<-item")] = nxt + 1
        nxt += 2
    for a in names:
        for b in names:
            if a != b:
                ch[(a, "<-", b)] = nxt
                nxt += 1
    return ch, nxt


def reference_graph_of_row(seq, codes, n_items, n_codes, names, present_row):
    """One history -> (sorted node ids, node types, set of (channel, i, j), {node: positions}, last).

    seq: list of item ids (0 = padding); codes: name -> list of code lists per item;
    present_row: name -> list of bools per position (or None).
    """
    offsets, off = {}, 0
    for m in names:
        offsets[m] = off
        off += n_codes[m]

    def code_node(m, c):
        return n_items + 1 + offsets[m] + c

    # which nodes sit at each position
    item_at = {}                     # position -> item node id
    codes_at = {}                    # (position, modality) -> set of code node ids
    for t, v in enumerate(seq):
        if v == 0:
            continue
        item_at[t] = v
        for m in names:
            if present_row is not None and m in present_row and not present_row[m][t]:
                codes_at[(t, m)] = set()
                continue
            codes_at[(t, m)] = {code_node(m, c) for c in codes[m][v] if c != -1}

    positions = {}                   # node id -> set of positions
    for t, v in item_at.items():
        positions.setdefault(v, set()).add(t)
        for m in names:
            for g in codes_at[(t, m)]:
                positions.setdefault(g, set()).add(t)

    nodes = sorted(positions)
    index = {g: i for i, g in enumerate(nodes)}
    types = []
    for g in nodes:
        if g <= n_items:
            types.append(ITEM_TYPE)
        else:
            for i, m in enumerate(names):
                if offsets[m] <= g - n_items - 1 < offsets[m] + n_codes[m]:
                    types.append(2 + i)

    ch, _ = relation_channels(names)
    edges = set()
    for g in nodes:
        edges.add((ch["self"], index[g], index[g]))

    # sequential: earlier node x (position t) and later node y (position t+1), same type
    ordered = set()
    for t in range(len(seq) - 1):
        if t not in item_at or t + 1 not in item_at:
            continue
        candidates = [(item_at[t], item_at[t + 1])]
        for m in names:
            for x in codes_at[(t, m)]:
                for y in codes_at[(t + 1, m)]:
                    candidates.append((x, y))
        for x, y in candidates:
            if x != y:
                ordered.add((index[x], index[y]))
    for x, y in ordered:
        if (y, x) in ordered:
            edges.add((ch["seq-both"], x, y))
        else:
            edges.add((ch["seq-out"], x, y))   # x receives from y
            edges.add((ch["seq-in"], y, x))    # y receives from x

    # cross-type: within one position only
    for t, v in item_at.items():
        for m in names:
            for g in codes_at[(t, m)]:
                edges.add((ch[("item<-", m)], index[v], index[g]))
                edges.add((ch[(m, "<-item")], index[g], index[v]))
        for a in names:
            for b in names:
                if a == b:
                    continue
                for ga in codes_at[(t, a)]:
                    for gb in codes_at[(t, b)]:
                        edges.add((ch[(a, "<-", b)], index[ga], index[gb]))

    last = index[seq[-1]] if seq and seq[-1] != 0 else 0
    node_positions = {index[g]: positions[g] for g in nodes}
    return nodes, types, edges, node_positions, last


def reference_msgraph(items, codes, n_items, n_codes, present=None) -> MSGraph:
    """Same inputs and output as ``build_msgraph``, computed one row at a time in plain Python."""
    names = sorted(codes)
    seqs = items.tolist()
    code_lists = {m: codes[m].tolist() for m in names}
    present_lists = None if present is None else {m: p.tolist() for m, p in present.items()}
    rows = []
    for b, seq in enumerate(seqs):
        present_row = None if present_lists is None else {m: p[b] for m, p in present_lists.items()}
        rows.append(reference_graph_of_row(seq, code_lists, n_items, n_codes, names, present_row))

    batch, length = len(seqs), items.shape[1]
    n = max([1] + [len(r[0]) for r in rows])
    _, n_rel = relation_channels(names)
    node_ids = torch.zeros(batch, n, dtype=torch.long)
    node_type = torch.full((batch, n), PAD_TYPE, dtype=torch.long)
    node_mask = torch.zeros(batch, n, dtype=torch.bool)
    adj = torch.zeros(batch, n_rel, n, n, dtype=torch.bool)
    pos_mask = torch.zeros(batch, n, length, dtype=torch.bool)
    last_node = torch.zeros(batch, dtype=torch.long)
    node_index, pos_index, edge_index = [[], []], [[], [], []], [[], [], [], []]
    for b, (nodes, types, edges, node_positions, last) in enumerate(rows):
        node_index[0] += [b] * len(nodes)
        node_index[1] += range(len(nodes))
        node_ids[b, :len(nodes)] = torch.tensor(nodes, dtype=torch.long)
        node_type[b, :len(nodes)] = torch.tensor(types, dtype=torch.long)
        for i, ts in node_positions.items():
            for t in ts:
                for lst, value in zip(pos_index, (b, i, t)):
                    lst.append(value)
        for r, i, j in edges:
            for lst, value in zip(edge_index, (b, r, i, j)):
                lst.append(value)
        last_node[b] = last
    # one tensor write per field (per-element tensor writes would dominate the reference's time)
    node_mask[tuple(torch.tensor(ix, dtype=torch.long) for ix in node_index)] = True
    pos_mask[tuple(torch.tensor(ix, dtype=torch.long) for ix in pos_index)] = True
    adj[tuple(torch.tensor(ix, dtype=torch.long) for ix in edge_index)] = True
    return MSGraph(node_ids, node_type, node_mask, adj, pos_mask, last_node)
