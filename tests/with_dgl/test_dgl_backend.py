"""The DGL sparse backend (aggregators/dgl_backend.py) against the dense aggregators it mirrors.

Every registered aggregator, with its option variants, must give the dense forward's output and
gradients (to the input and to every parameter) to 1e-5, on Beauty-like MSGraph batches (with an
all-padding row) and on random multi-relation graphs with padded nodes scattered among real ones.
Runs only where dgl is installed (``tox -e dgl``).
"""
import pytest
import torch

pytest.importorskip("dgl", reason="DGL is not installed here; run the DGL tests with `tox -e dgl`")

from aggregators.dgl_backend import forward_nodes, sparse_forward, sparse_names, to_sparse  # noqa: E402
from aggregators.gcn import GCN  # noqa: E402
from fusionbench.errors import UserInputError  # noqa: E402
from fusionbench.registry import AGGREGATORS  # noqa: E402
from msgraph_batches import beauty_like_msgraph  # noqa: E402
from test_aggregators_contract import typed_graph  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)

VARIANTS = {
    "gcn": [{}, {"relations": "homogeneous"}, {"relations": "heterogeneous", "self_loops": False}],
    "sage": [{}, {"aggr": "sum", "root_weight": False, "bias": False}],
    "gat": [{}, {"heads": 2, "concat": True}, {"heads": 2, "self_loops": False, "bias": False}],
    "graphormer": [{}, {"heads": 2, "max_dist": 2, "directed": True, "max_degree": 3}],
    "rgat": [{}, {"heads": 2, "concat": False, "mechanism": "within-relation", "mode": "multiplicative"}],
    "hgnn": [{}, {"aggr": "sum", "typed_root": True}, {"root_weight": False, "bias": False}],
    "hgat": [{}, {"semantic_scope": "node", "activation": "relu"}, {"activation": "none"}],
    "han": [{"update": u} for u in ("gate", "sync", "ni_hohe", "ni_heho", "hohe", "heho", "ho", "he")]
           + [{"update": "gate", "projections": "query", "hohe_scores": "input"}]
           + [{"gate": "per_candidate", "scale": False}],
}
CASES = [(name, opts) for name in sorted(VARIANTS) for opts in VARIANTS[name]]
CASE_IDS = [f"{name}-{i}" for name in sorted(VARIANTS) for i in range(len(VARIANTS[name]))]


def graphs():
    return {
        "msgraph": beauty_like_msgraph(batch=5, length=10, dim=16, seed=3, empty_row=True),
        "multi": typed_graph(batch=3, nodes=9, dim=16, seed=5, density=0.35, typed=False),
    }


GRAPHS = graphs()


def build(name, ctx, **opts):
    torch.manual_seed(0)
    model = AGGREGATORS.create(name, ctx, **opts).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.normal_()
    return model


def test_every_registered_aggregator_has_a_kernel_and_cases():
    assert sparse_names() == AGGREGATORS.names()
    assert sorted(VARIANTS) == AGGREGATORS.names()


@pytest.mark.parametrize("kind", sorted(GRAPHS))
@pytest.mark.parametrize("name, opts", CASES, ids=CASE_IDS)
def test_sparse_matches_dense_values_and_gradients(kind, name, opts):
    """Values in float32 to 1e-5; gradients in float64 (a float32 gradient sums thousands of edge terms
    in another order, so its rounding alone can reach 1e-5) to 1e-8."""
    ctx, x, adj, node_type, node_mask = GRAPHS[kind]
    model = build(name, ctx, **opts)
    dense_out = model(x, adj, node_type, node_mask)
    sparse_out = sparse_forward(model, x, adj, node_type, node_mask)
    assert sparse_out.shape == dense_out.shape
    assert (sparse_out[~node_mask] == 0).all()
    torch.testing.assert_close(sparse_out, dense_out, **TOL)

    model = model.double()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(forward):
        xi = x.double().requires_grad_(True)
        out = forward(model, xi, adj, node_type, node_mask)
        return torch.autograd.grad((out * weight).sum(), [xi] + [p for _, p in named], allow_unused=True)

    for pname, want, got in zip(["x"] + [n for n, _ in named], grads(lambda m, *a: m(*a)), grads(sparse_forward)):
        if want is None and got is None:                   # a parameter neither path reaches
            continue
        want = torch.zeros_like(got) if want is None else want   # unused on one path = zero gradient
        got = torch.zeros_like(want) if got is None else got
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8, msg=lambda m: f"gradient of {pname}: {m}")


def test_one_sparse_batch_serves_several_layers():
    """forward_nodes on one SparseBatch = the dense layers stacked (what a multi-layer strategy does)."""
    ctx, x, adj, node_type, node_mask = GRAPHS["msgraph"]
    layers = [build("han", ctx), build("hgnn", ctx), build("gat", ctx, heads=2, concat=True)]
    dense = x
    for layer in layers:
        dense = layer(dense, adj, node_type, node_mask)
    batch = to_sparse(adj, node_type, node_mask)
    h = batch.gather(x)
    for layer in layers:
        h = forward_nodes(layer, h, batch)
    assert h.shape == (int(node_mask.sum()), ctx.dim)
    torch.testing.assert_close(batch.scatter(h), dense, **TOL)


def test_sparse_batch_layout():
    ctx, x, adj, node_type, node_mask = GRAPHS["multi"]
    batch = to_sparse(adj, node_type, node_mask)
    real = adj & (node_mask[:, :, None] & node_mask[:, None, :])[:, None]
    assert batch.etype.shape[0] == int(real.sum())                         # one edge per (relation, pair)
    assert torch.equal(batch.batch_num_nodes, node_mask.sum(1))
    assert torch.equal(batch.node_type, node_type[node_mask])
    assert torch.equal(batch.scatter(batch.gather(x)), x * node_mask[..., None])
    b, n = node_mask.shape
    src_flat, dst_flat = batch.node_index[batch.src], batch.node_index[batch.dst]
    rebuilt = torch.zeros_like(adj)
    rebuilt[dst_flat // n, batch.etype, dst_flat % n, src_flat % n] = True
    assert torch.equal(rebuilt, real)


def test_aggregator_without_kernel_is_refused():
    ctx, x, adj, node_type, node_mask = GRAPHS["multi"]

    class Custom(GCN):                                   # not the registered class: no kernel applies
        pass

    with pytest.raises(UserInputError, match=r"'gcn' has no dgl backend kernel.*gat, gcn, graphormer"):
        sparse_forward(Custom(ctx, GCN.Options()), x, adj, node_type, node_mask)
    with pytest.raises(UserInputError, match="'Linear' has no dgl backend kernel"):
        sparse_forward(torch.nn.Linear(2, 2), x, adj, node_type, node_mask)


def test_non_cpu_tensors_are_refused():
    ctx, x, adj, node_type, node_mask = GRAPHS["multi"]
    with pytest.raises(UserInputError, match="CPU only.*--device cpu or the dense backend"):
        to_sparse(adj.to("meta"), node_type.to("meta"), node_mask.to("meta"))
