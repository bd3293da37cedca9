"""Parity of the dense aggregators with their PyTorch Geometric counterparts (same weights, 1e-5).

The dense batch is flattened to B*N nodes and converted to ``edge_index`` with a batch offset
(node (b, i) -> b*N + i; adj[b, r, i, j] -> source b*N + j, target b*N + i, edge_type r). Only real
nodes are compared. Two graph kinds: "typed" follows aggregators.base; "multi" puts random edges in
every channel, so one pair often carries several relations (a multi-relation adjacency).
"""
import pytest
import torch

pyg = pytest.importorskip("torch_geometric.nn")

from fusionbench.registry import AGGREGATORS  # noqa: E402
from test_aggregators_contract import typed_graph  # noqa: E402

GRAPHS = ["typed", "multi"]
TOL = dict(rtol=1e-5, atol=1e-5)


def graph(kind, seed=0):
    return typed_graph(batch=3, nodes=9, dim=8, seed=seed, density=0.35, typed=kind == "typed")


def union_edges(adj, node_mask, channels=None, keep_diagonal=True):
    """edge_index [2, E] of the union graph over real nodes, with the batch offset."""
    b, _, n, _ = adj.shape
    a = (adj if channels is None else adj[:, channels]).any(1)
    a = a & node_mask[:, :, None] & node_mask[:, None, :]
    if not keep_diagonal:
        a = a & ~torch.eye(n, dtype=torch.bool)
    gb, i, j = a.nonzero(as_tuple=True)
    return torch.stack([gb * n + j, gb * n + i])


def typed_edges(adj, node_mask):
    """(edge_index [2, E], edge_type [E]): one edge per (relation, pair)."""
    n = adj.shape[-1]
    a = adj & (node_mask[:, :, None] & node_mask[:, None, :])[:, None]
    gb, r, i, j = a.nonzero(as_tuple=True)
    return torch.stack([gb * n + j, gb * n + i]), r


def dense(name, ctx, **opts):
    torch.manual_seed(0)
    model = AGGREGATORS.create(name, ctx, **opts).eval()
    with torch.no_grad():                        # non-zero biases so that they are compared too
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.normal_()
    return model


def compare(ours, theirs, node_mask):
    torch.testing.assert_close(ours[node_mask], theirs.reshape(ours.shape)[node_mask], **TOL)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("drop_self_loops", [False, True])
@pytest.mark.parametrize("relations", ["all", "homogeneous"])
def test_gcn_matches_gcnconv(kind, drop_self_loops, relations):
    ctx, x, adj, node_type, node_mask = graph(kind)
    if drop_self_loops:                          # GCNConv adds the missing ones, so must we
        adj = adj.clone()
        adj[:, 0, 0, 0] = False
        adj[1:, 0] = False
    model = dense("gcn", ctx, relations=relations)
    conv = pyg.GCNConv(ctx.dim, ctx.dim)         # add_self_loops=True, normalize=True
    with torch.no_grad():
        conv.lin.weight.copy_(model.weight.T)
        conv.bias.copy_(model.bias)
    channels = None if relations == "all" else [0, 1, 2, 3]
    ref = conv(x.reshape(-1, ctx.dim), union_edges(adj, node_mask, channels))
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_sage_matches_sageconv(kind, aggr):
    ctx, x, adj, node_type, node_mask = graph(kind, seed=1)
    model = dense("sage", ctx, aggr=aggr)
    conv = pyg.SAGEConv(ctx.dim, ctx.dim, aggr="mean" if aggr == "mean" else "sum", root_weight=True)
    with torch.no_grad():
        conv.lin_l.weight.copy_(model.lin_neigh.weight)
        conv.lin_l.bias.copy_(model.lin_neigh.bias)
        conv.lin_r.weight.copy_(model.lin_self.weight)
    ref = conv(x.reshape(-1, ctx.dim), union_edges(adj, node_mask, keep_diagonal=False))
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("heads, concat", [(1, False), (2, True), (2, False)])
def test_gat_matches_gatconv(kind, heads, concat):
    ctx, x, adj, node_type, node_mask = graph(kind, seed=2)
    model = dense("gat", ctx, heads=heads, concat=concat)
    conv = pyg.GATConv(ctx.dim, model.head_dim, heads=heads, concat=concat, negative_slope=0.2,
                       add_self_loops=True, dropout=0.0)
    with torch.no_grad():
        conv.lin.weight.copy_(model.lin.weight)
        conv.att_src.copy_(model.att_src[None])
        conv.att_dst.copy_(model.att_dst[None])
        conv.bias.copy_(model.bias)
    ref = conv(x.reshape(-1, ctx.dim), union_edges(adj, node_mask))
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("heads, concat, mechanism, mode", [
    (1, True, "across-relation", "additive"),
    (2, True, "across-relation", "additive"),
    (2, False, "within-relation", "additive"),
    (1, True, "across-relation", "multiplicative"),
])
def test_rgat_matches_rgatconv(kind, heads, concat, mechanism, mode):
    ctx, x, adj, node_type, node_mask = graph(kind, seed=3)
    model = dense("rgat", ctx, heads=heads, concat=concat, mechanism=mechanism, mode=mode)
    conv = pyg.RGATConv(ctx.dim, model.head_dim, num_relations=ctx.n_relations, heads=heads, dim=1,
                        concat=concat, attention_mechanism=mechanism,
                        attention_mode=f"{mode}-self-attention", mod=None, negative_slope=0.2,
                        dropout=0.0, bias=True)
    with torch.no_grad():
        conv.weight.copy_(model.weight)
        conv.q.copy_(model.q)
        conv.k.copy_(model.k)
        conv.bias.copy_(model.bias)
    edge_index, edge_type = typed_edges(adj, node_mask)
    ref = conv(x.reshape(-1, ctx.dim), edge_index, edge_type)
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_hgnn_matches_rgcnconv(kind, aggr):
    ctx, x, adj, node_type, node_mask = graph(kind, seed=4)
    model = dense("hgnn", ctx, aggr=aggr)
    conv = pyg.RGCNConv(ctx.dim, ctx.dim, num_relations=ctx.n_relations, aggr="mean" if aggr == "mean" else "add",
                        root_weight=True, bias=True)
    with torch.no_grad():
        conv.weight.copy_(model.weight)
        conv.root.copy_(model.root)
        conv.bias.copy_(model.bias)
    edge_index, edge_type = typed_edges(adj, node_mask)
    ref = conv(x.reshape(-1, ctx.dim), edge_index, edge_type)
    compare(model(x, adj, node_type, node_mask), ref, node_mask)


def test_multi_relation_graph_has_overlapping_relations():
    """The "multi" graphs really put several relations on one pair."""
    _, _, adj, _, _ = graph("multi")
    assert (adj.sum(1) > 2).any()
