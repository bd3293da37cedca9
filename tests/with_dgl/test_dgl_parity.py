"""Parity of the dense aggregators with DGL (same weights, 1e-5) on batched MSGraphs.

Runs only where dgl is installed (``tox -e dgl``). Graphs come from the MMSR builder on Beauty-like
histories (``msgraph_batches``). The dense batch is flattened to B*N nodes: node (b, i) -> b*N + i,
``adj[b, r, i, j]`` -> edge b*N + j -> b*N + i of relation r; padded nodes are isolated and only real
nodes are compared. Counterparts: GraphConv (gcn), SAGEConv (sage), GATConv (gat), RelGraphConv
(hgnn), ``dgl.shortest_dist`` (graphormer's distances); the relation-typed attentions (rgat, hgat,
han) against per-relation heterograph message passing written here with ``apply_edges``,
``edge_softmax`` and ``update_all`` / ``multi_update_all``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

dgl = pytest.importorskip("dgl", reason="DGL is not installed here; run the DGL tests with `tox -e dgl`")

import dgl.function as fn  # noqa: E402
from dgl.nn import GATConv, GraphConv, RelGraphConv, SAGEConv  # noqa: E402

from aggregators.base import heterogeneous_relations, homogeneous_relations  # noqa: E402
from aggregators.graphormer import shortest_path_distances  # noqa: E402
from msgraph_batches import beauty_like_msgraph  # noqa: E402
from test_aggregators_parity import compare, dense  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    """(ctx, x, adj, node_type, node_mask): 6 Beauty-like histories of at most 12 items, d = 16."""
    return beauty_like_msgraph(batch=6, length=12, dim=16, seed=7)


def real_pairs(adj, node_mask):
    return adj & (node_mask[:, :, None] & node_mask[:, None, :])[:, None]


def union_graph(adj, node_mask, channels=None, self_loops=None):
    """DGL graph over B*N nodes of the union of ``channels`` (self loops: True add, False drop)."""
    b, _, n, _ = adj.shape
    a = real_pairs(adj, node_mask)
    a = (a if channels is None else a[:, channels]).any(1)
    eye = torch.eye(n, dtype=torch.bool)
    if self_loops is True:
        a = a | (eye & node_mask[:, :, None])
    elif self_loops is False:
        a = a & ~eye
    gb, i, j = a.nonzero(as_tuple=True)
    return dgl.graph((gb * n + j, gb * n + i), num_nodes=b * n)


def relation_graph(adj, node_mask):
    """Heterograph over B*N nodes of one node type with one edge type "r<k>" per relation channel."""
    b, r, n, _ = adj.shape
    gb, et, i, j = real_pairs(adj, node_mask).nonzero(as_tuple=True)
    return dgl.heterograph({("node", f"r{k}", "node"): (gb[et == k] * n + j[et == k], gb[et == k] * n + i[et == k])
                            for k in range(r)}, num_nodes_dict={"node": b * n})


def typed_map(x, node_type, weight):
    """x_v W_{t_v} by gathering one matrix per node (independent of aggregators.attention.typed_linear)."""
    return torch.einsum("vd,vde->ve", x, weight[node_type.clamp(0, weight.shape[0] - 1)])


def test_msgraph_batch_is_real():
    """The fixture has every relation family, shared code nodes and padded nodes."""
    ctx, _, adj, node_type, node_mask = beauty_like_msgraph(batch=6, length=12, dim=16, seed=7)
    assert ctx.n_relations == 10 and (~node_mask).any()
    assert all(adj[:, r].any() for r in range(ctx.n_relations)), "a relation channel is empty"
    assert set(node_type[node_mask].tolist()) == {1, 2, 3}


@pytest.mark.parametrize("relations", ["all", "homogeneous", "heterogeneous"])
def test_gcn_matches_graphconv(batch, relations):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("gcn", ctx, relations=relations)
    g = union_graph(adj, node_mask, model.channels, self_loops=True)
    # GraphConv normalises the source by its out-degree, GCN (like GCNConv) by its in-degree: equal
    # because MSGraph relations come in mirrored pairs, so every union graph is symmetric
    src, dst = g.edges()
    assert torch.equal(torch.sort(src * g.num_nodes() + dst).values, torch.sort(dst * g.num_nodes() + src).values)
    conv = GraphConv(ctx.dim, ctx.dim, norm="both", allow_zero_in_degree=True)
    with torch.no_grad():
        conv.weight.copy_(model.weight)
        conv.bias.copy_(model.bias)
    compare(model(x, adj, node_type, node_mask), conv(g, x.reshape(-1, ctx.dim)), node_mask)


def test_sage_matches_sageconv(batch):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("sage", ctx, aggr="mean")
    conv = SAGEConv(ctx.dim, ctx.dim, "mean")              # fc_self carries the bias
    with torch.no_grad():
        conv.fc_neigh.weight.copy_(model.lin_neigh.weight)
        conv.fc_self.weight.copy_(model.lin_self.weight)
        conv.fc_self.bias.copy_(model.lin_neigh.bias)
    ref = conv(union_graph(adj, node_mask, self_loops=False), x.reshape(-1, ctx.dim))
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("heads, concat", [(1, False), (2, True), (2, False)])
def test_gat_matches_gatconv(batch, heads, concat):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("gat", ctx, heads=heads, concat=concat)
    conv = GATConv(ctx.dim, model.head_dim, heads, negative_slope=0.2, allow_zero_in_degree=True, bias=True)
    with torch.no_grad():
        conv.fc.weight.copy_(model.lin.weight)
        conv.attn_l.copy_(model.att_src[None])             # attn_l scores the source, attn_r the target
        conv.attn_r.copy_(model.att_dst[None])
        conv.bias.copy_(model.bias if concat else model.bias.repeat(heads))   # per-head bias, then mean
    out = conv(union_graph(adj, node_mask, self_loops=True), x.reshape(-1, ctx.dim))   # [BN, H, C]
    ref = out.flatten(1) if concat else out.mean(1)
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_hgnn_matches_relgraphconv(batch, aggr):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("hgnn", ctx, aggr=aggr)
    b, r, n, _ = adj.shape
    gb, et, i, j = real_pairs(adj, node_mask).nonzero(as_tuple=True)
    g = dgl.graph((gb * n + j, gb * n + i), num_nodes=b * n)
    norm = None
    if aggr == "mean":                                     # R-GCN's c_{i,r} = |N_r(i)|
        slot = (gb * n + i) * r + et
        norm = (1.0 / torch.bincount(slot, minlength=b * n * r)[slot].float())[:, None]
    conv = RelGraphConv(ctx.dim, ctx.dim, r, regularizer=None, bias=True, self_loop=True)
    with torch.no_grad():
        conv.linear_r.W.copy_(model.weight)
        conv.loop_weight.copy_(model.root)
        conv.h_bias.copy_(model.bias)
    compare(model(x, adj, node_type, node_mask), conv(g, x.reshape(-1, ctx.dim), et, norm), node_mask)


@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("channels", ["all", "sequential"])
def test_graphormer_distances_match_shortest_dist(batch, directed, channels):
    """Bucketed distances (exact up to max_dist, capped beyond, own bucket when unreachable); MSGraphs
    are connected, their sequential channels alone are not (item and code chains fall apart)."""
    _, _, adj, _, node_mask = batch
    b, _, n, _ = adj.shape
    a = real_pairs(adj, node_mask)
    a = (a if channels == "all" else a[:, [1, 2, 3]]).any(1) & ~torch.eye(n, dtype=torch.bool)
    if not directed:
        a = a | a.transpose(-1, -2)
    max_dist = 2
    ours = shortest_path_distances(a, node_mask, max_dist)                 # [B, N, N], j -> i
    gb, i, j = a.nonzero(as_tuple=True)
    theirs = dgl.shortest_dist(dgl.graph((gb * n + j, gb * n + i), num_nodes=b * n))   # [BN, BN], u -> v
    rows = torch.arange(b)[:, None, None] * n
    hops = theirs[rows + torch.arange(n)[None, None, :], rows + torch.arange(n)[None, :, None]]
    want = torch.where(hops < 0, max_dist + 1, hops.clamp(max=max_dist))
    pair = node_mask[:, :, None] & node_mask[:, None, :]
    assert torch.equal(ours[pair], want[pair])
    assert (want[pair] == max_dist).any()
    assert (want[pair] == max_dist + 1).any() == (channels == "sequential")


@pytest.mark.parametrize("heads, concat, mechanism, mode", [
    (1, True, "across-relation", "additive"),
    (2, True, "across-relation", "multiplicative"),
    (2, False, "within-relation", "additive"),
])
def test_rgat_matches_dgl_message_passing(batch, heads, concat, mechanism, mode):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("rgat", ctx, heads=heads, concat=concat, mechanism=mechanism, mode=mode)
    hg = relation_graph(adj, node_mask)
    xf = x.reshape(-1, ctx.dim)
    logits = {}
    for r in range(ctx.n_relations):
        et = f"r{r}"
        g_r = xf @ model.weight[r]                                         # [BN, H*C]
        hg.ndata[f"g{r}"] = g_r.view(-1, heads, model.head_dim)
        hg.ndata[f"q{r}"], hg.ndata[f"k{r}"] = g_r @ model.q, g_r @ model.k   # [BN, H]
        op = fn.u_add_v if mode == "additive" else fn.u_mul_v
        hg.apply_edges(op(f"k{r}", f"q{r}", "s"), etype=et)
        s = hg.edges[et].data["s"]
        logits[hg.to_canonical_etype(et)] = F.leaky_relu(s, 0.2) if mode == "additive" else s
    if mechanism == "across-relation":                     # one softmax over all relations into a node
        alpha = dgl.ops.edge_softmax(hg, logits)
    else:
        alpha = {c: dgl.ops.edge_softmax(hg[c], e) for c, e in logits.items()}
    for c, a in alpha.items():
        hg.edges[c].data["a"] = a[..., None]
    hg.multi_update_all({f"r{r}": (fn.u_mul_e(f"g{r}", "a", "m"), fn.sum("m", "h"))
                         for r in range(ctx.n_relations)}, "sum")
    out = hg.ndata["h"]                                                    # [BN, H, C]
    ref = (out.flatten(1) if concat else out.mean(1)) + model.bias
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("scope", ["graph", "node"])
def test_hgat_matches_dgl_message_passing(batch, scope):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("hgat", ctx, semantic_scope=scope)
    hg = relation_graph(adj, node_mask)
    z = typed_map(x.reshape(-1, ctx.dim), node_type.reshape(-1), model.proj)
    hg.ndata["z"] = z
    per_relation, has = [], []
    for r in range(ctx.n_relations):
        et = f"r{r}"
        hg.ndata["ss"], hg.ndata["sd"] = z @ model.att_src[r], z @ model.att_dst[r]
        hg.apply_edges(fn.u_add_v("ss", "sd", "e"), etype=et)
        hg.edges[et].data["a"] = dgl.ops.edge_softmax(hg[et], F.leaky_relu(hg.edges[et].data["e"], 0.2))[:, None]
        hg.update_all(fn.u_mul_e("z", "a", "m"), fn.sum("m", "h"), etype=et)
        per_relation.append(F.elu(hg.ndata.pop("h")))
        has.append(hg.in_degrees(etype=et) > 0)
    b, n = node_mask.shape
    h = torch.stack(per_relation, 1).view(b, n, ctx.n_relations, ctx.dim)
    has = torch.stack(has, 1).view(b, n, ctx.n_relations)
    w = torch.tanh(model.semantic(h)) @ model.semantic_q                  # [B, N, R]
    if scope == "graph":                                   # mean over the graph's nodes having r
        w = ((w * has).sum(1, keepdim=True) / has.sum(1, keepdim=True).clamp(min=1)).expand_as(w)
    beta = torch.nan_to_num(w.masked_fill(~has, float("-inf")).softmax(-1))
    compare(model(x, adj, node_type, node_mask), (beta[..., None] * h).sum(2), node_mask)


class HanReference:
    """MMSR's two attentions as DGL message passing on the homogeneous / heterogeneous union graphs."""

    def __init__(self, model, adj, node_type, node_mask):
        self.model, self.nt = model, node_type.reshape(-1)
        n = adj.shape[-1]
        self.homo = union_graph(adj, node_mask, model.homo)
        self.hetero = union_graph(adj, node_mask, model.hetero)
        src, dst = self.homo.edges()                       # which homogeneous relations each pair has
        self.has_rel = adj[:, model.homo][dst // n, :, dst % n, src % n].T.float()   # [R_ho, E]

    def value(self, h):
        return typed_map(h, self.nt, self.model.w_v)

    def attend(self, g, logits, values):
        g.edata["a"] = dgl.ops.edge_softmax(g, F.leaky_relu(logits, self.model.opts.negative_slope))
        g.ndata["val"] = values
        g.update_all(fn.u_mul_e("val", "a", "m"), fn.sum("m", "out"))
        return g.ndata.pop("out")

    def homo_att(self, score_v, values):
        g, logits = self.homo, 0.0
        g.ndata["v"] = score_v
        for k in range(len(self.model.homo)):              # a_r^T (v_i * v_j), summed over the pair's relations
            g.ndata["va"] = score_v * self.model.att_ho[k]
            g.apply_edges(fn.u_dot_v("va", "v", "e"))
            logits = logits + g.edata.pop("e") * self.has_rel[k][:, None]
        return self.attend(g, logits, values)

    def hetero_att(self, score_h, values):
        g = self.hetero
        g.ndata["q"] = typed_map(score_h, self.nt, self.model.w_q)
        g.ndata["k"] = typed_map(score_h, self.nt, self.model.w_k)
        g.apply_edges(fn.u_dot_v("q", "k", "e"))            # q_j . k_i on edge j -> i
        return self.attend(g, g.edata.pop("e") / math.sqrt(self.model.ctx.dim), values)

    def __call__(self, h):
        m, update = self.model, self.model.opts.update
        v = self.value(h)
        u_ho, u_he = self.homo_att(v, v), self.hetero_att(h, v)
        rules = {
            "ho": lambda: u_ho,
            "he": lambda: u_he,
            "sync": lambda: m.sync(torch.cat([u_ho, u_he], -1)),
            "ni_hohe": lambda: self.hetero_att(u_ho, v),
            "ni_heho": lambda: self.homo_att(self.value(u_he), v),
            "hohe": lambda: self.hetero_att(u_ho, self.value(u_ho)),
            "heho": lambda: self.homo_att(self.value(u_he), self.value(u_he)),
            "gate": lambda: m.mix(self.hetero_att(u_ho, v), self.homo_att(self.value(u_he), v)),
        }
        return rules[update]()


@pytest.mark.parametrize("update, gate", [(u, "concat") for u in
                                          ("gate", "sync", "ni_hohe", "ni_heho", "hohe", "heho", "ho", "he")]
                         + [("gate", "per_candidate")])
def test_han_matches_dgl_message_passing(batch, update, gate):
    ctx, x, adj, node_type, node_mask = batch
    model = dense("han", ctx, update=update, gate=gate)
    assert model.homo == homogeneous_relations(ctx) and model.hetero == heterogeneous_relations(ctx)
    ref = HanReference(model, adj, node_type, node_mask)(x.reshape(-1, ctx.dim))
    compare(model(x, adj, node_type, node_mask), ref, node_mask)
