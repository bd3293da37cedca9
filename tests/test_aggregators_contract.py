"""Contract suite run on every registered aggregator (parametrised over ``AGGREGATORS.names()``).

forward(x [B, N, d], adj [B, R, N, N] bool, node_type [B, N], node_mask [B, N]) -> [B, N, d]:
shape, padded nodes inert and zero, isolated nodes finite, permutation equivariance, gradients,
determinism, reset_parameters, and no [B, N, N, d] tensor anywhere.
"""
import copy
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

try:  # private torch API: without it only the saved-tensor probe runs
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
except ImportError:  # pragma: no cover
    TorchDispatchMode = None

from aggregators.base import N_HOMO_RELATIONS, n_relations_for
from fusionbench.context import AggregatorContext
from fusionbench.options import OptionError
from fusionbench.registry import AGGREGATORS

NAMES = AGGREGATORS.names()


def typed_graph(batch=3, nodes=7, dim=8, n_modalities=2, seed=0, density=0.4, typed=True):
    """A random batch of typed graphs following ``aggregators.base``.

    Real nodes get types 1..1+M; channel 0 holds every real node's self loop; with ``typed`` the
    sequential channels 1..3 join same-type nodes and channels >= 4 different-type nodes, otherwise
    every channel is random (so one pair may carry several relations). Graph 0 has no padding, the
    others have padded nodes scattered among the real ones.

    Returns ``(ctx, x, adj, node_type, node_mask)``.
    """
    g = torch.Generator().manual_seed(seed)
    n_rel, n_types = n_relations_for(n_modalities), 2 + n_modalities
    node_mask = torch.rand(batch, nodes, generator=g) > 0.3
    node_mask[0] = True
    node_mask[:, 0] = True
    node_mask[1:, -1] = False
    node_type = torch.randint(1, n_types, (batch, nodes), generator=g) * node_mask
    eye = torch.eye(nodes, dtype=torch.bool)
    same = node_type[:, :, None] == node_type[:, None, :]
    adj = torch.rand(batch, n_rel, nodes, nodes, generator=g) < density
    if typed:
        adj[:, 1:N_HOMO_RELATIONS] &= same[:, None]
        adj[:, N_HOMO_RELATIONS:] &= ~same[:, None]
        adj[:, 1:] &= ~eye
    adj[:, 0] = eye & node_mask[:, :, None]
    adj &= (node_mask[:, :, None] & node_mask[:, None, :])[:, None]
    x = torch.randn(batch, nodes, dim, generator=g)
    ctx = AggregatorContext(dim=dim, n_relations=n_rel, n_node_types=n_types)
    return ctx, x, adj, node_type, node_mask


def build(name, ctx, seed=0, **opts):
    torch.manual_seed(seed)
    return AGGREGATORS.create(name, ctx, **opts)


@pytest.mark.parametrize("name", NAMES)
def test_options_defaults_validate(name):
    opts = AGGREGATORS.options(name)
    assert dataclasses.is_dataclass(opts)
    assert opts.validate() == opts


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_padded_rows_zero(name):
    ctx, x, adj, node_type, node_mask = typed_graph()
    model = build(name, ctx).eval()
    out = model(x, adj, node_type, node_mask)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert (out[~node_mask] == 0).all()
    assert out[node_mask].abs().sum() > 0
    assert str(ctx.dim) in repr(model)


@pytest.mark.parametrize("name", NAMES)
def test_padded_nodes_never_influence_real_nodes(name):
    ctx, x, adj, node_type, node_mask = typed_graph(seed=1)
    model = build(name, ctx).eval()
    ref = model(x, adj, node_type, node_mask)
    g = torch.Generator().manual_seed(5)
    pad = ~node_mask
    x2 = torch.where(pad[..., None], 100 * torch.randn(x.shape, generator=g), x)
    x2[pad.nonzero()[0, 0], pad.nonzero()[0, 1], 0] = float("nan")     # even NaN in a padded row
    touches_pad = (pad[:, :, None] | pad[:, None, :])[:, None].expand_as(adj)
    adj2 = torch.where(touches_pad, torch.rand(adj.shape, generator=g) < 0.5, adj)
    type2 = torch.where(pad, torch.randint(0, ctx.n_node_types, pad.shape, generator=g), node_type)
    out = model(x2, adj2, type2, node_mask)
    torch.testing.assert_close(out[node_mask], ref[node_mask], rtol=0, atol=1e-6)
    assert (out[pad] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_isolated_real_nodes_are_finite(name):
    ctx, x, adj, node_type, node_mask = typed_graph(seed=2)
    adj = adj.clone()
    adj[0, :, 1, :] = False                          # node 1 of graph 0: no edge at all, not even a self loop
    adj[0, :, :, 1] = False
    adj[1] = False                                   # graph 1: no edges at all
    x.requires_grad_(True)
    model = build(name, ctx)
    out = model(x, adj, node_type, node_mask)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance(name):
    ctx, x, adj, node_type, node_mask = typed_graph(seed=3)
    model = build(name, ctx).eval()
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(7))
    out = model(x, adj, node_type, node_mask)
    out_p = model(x[:, perm], adj[:, :, perm][:, :, :, perm], node_type[:, perm], node_mask[:, perm])
    torch.testing.assert_close(out_p, out[:, perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    ctx, x, adj, node_type, node_mask = typed_graph(seed=4)
    model = build(name, ctx).train()
    torch.manual_seed(0)
    model(x, adj, node_type, node_mask).square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


ROW_READERS = [n for n in NAMES if hasattr(AGGREGATORS.get(n), "forward_rows")]


def test_the_heavy_aggregators_read_rows():
    """The optional ``forward_rows`` is what makes MMSR's last layer cheap; keep the ones that have it."""
    assert {"han", "rgat", "hgnn"} <= set(ROW_READERS)


ROW_CASES = [(n, {}) for n in ROW_READERS] + [
    ("rgat", {"mechanism": "within-relation", "mode": "multiplicative", "heads": 2}),
    ("rgat", {"heads": 2, "concat": False}),
    ("hgnn", {"aggr": "sum", "typed_root": True}),
    ("han", {"projections": "query", "gate": "per_candidate", "scale": False, "hohe_scores": "input"}),
]


@pytest.mark.parametrize("name, opts", ROW_CASES)
def test_forward_rows_is_forward_at_those_rows(name, opts):
    """Optional ``forward_rows(x, adj, node_type, node_mask, rows [B]) -> [B, d]``: equal to ``forward`` read
    at ``rows`` (real nodes), gradients included."""
    ctx, x, adj, node_type, node_mask = typed_graph(batch=4, nodes=9, seed=8)
    model = build(name, ctx, **opts).double().eval()
    x = x.double().requires_grad_()
    rows = torch.tensor([8, 0, 3, 5])
    rows = torch.where(node_mask[torch.arange(4), rows], rows, 0)
    params = [x, *model.parameters()]
    full = model(x, adj, node_type, node_mask)[torch.arange(4), rows]
    picked = model.forward_rows(x, adj, node_type, node_mask, rows)
    torch.testing.assert_close(picked, full)
    for a, b in zip(torch.autograd.grad(full.square().sum(), params, allow_unused=True),
                    torch.autograd.grad(picked.square().sum(), params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name):
    ctx, x, adj, node_type, node_mask = typed_graph(seed=5)
    outs = []
    for _ in range(2):
        model = build(name, ctx, seed=11).train()
        torch.manual_seed(3)
        outs.append(model(x, adj, node_type, node_mask))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_forward_and_backward(name):
    """``train.precision=bf16`` trains the MSGraph under bfloat16 autocast: the output stays finite with
    padded rows zero, and every parameter gets a gradient."""
    ctx, x, adj, node_type, node_mask = typed_graph(seed=3)
    model = build(name, ctx).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, adj, node_type, node_mask)
    assert torch.isfinite(out).all() and (out[~node_mask] == 0).all()
    out.float().square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient under bf16 for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_reset_parameters_restores_initial_state(name):
    ctx, x, adj, node_type, node_mask = typed_graph(seed=6)
    model = build(name, ctx)
    torch.manual_seed(21)
    model.reset_parameters()
    initial = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x, adj, node_type, node_mask).square().sum().backward()
    opt.step()
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in initial.items())
    torch.manual_seed(21)
    model.reset_parameters()
    for k, v in initial.items():
        assert torch.equal(v, model.state_dict()[k]), f"{name}: {k} not restored by reset_parameters"


if TorchDispatchMode is not None:
    class _LargestTensor(TorchDispatchMode):
        """Records the largest tensor produced by any aten op (forward and backward)."""

        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out


@pytest.mark.parametrize("name", NAMES)
def test_no_pairwise_feature_tensor(name):
    b, n, d = 2, 64, 32
    ctx, x, adj, node_type, node_mask = typed_graph(batch=b, nodes=n, dim=d, seed=7, density=0.1)
    limit = b * n * n * d
    model = build(name, ctx).train()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, adj, node_type, node_mask)
    assert max(saved) < limit, f"{name} saves a tensor of {max(saved)} elements (B*N*N*d = {limit})"
    if TorchDispatchMode is None:
        return
    with _LargestTensor() as probe:
        model(x, adj, node_type, node_mask).sum().backward()
    assert probe.largest < limit, f"{name} builds a tensor of {probe.largest} elements (B*N*N*d = {limit})"
    assert out.shape == (b, n, d)


@pytest.mark.skipif(TorchDispatchMode is None, reason="torch dispatch modes unavailable")
def test_probes_catch_a_pairwise_feature_tensor():
    """The two probes above do see a naive [B, N, N, d] content attention."""
    b, n, d = 2, 64, 32
    v = torch.randn(b, n, d, requires_grad=True)
    a = torch.randn(d, requires_grad=True)      # a learned attention vector
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        naive = ((v[:, :, None, :] * v[:, None, :, :]) * a).sum(-1)
    with _LargestTensor() as probe:
        ((v[:, :, None, :] * v[:, None, :, :]) * a).sum(-1).sum().backward()
    assert max(saved) >= b * n * n * d and probe.largest >= b * n * n * d
    torch.testing.assert_close(naive, (v * a) @ v.transpose(1, 2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, bad", [
    ("gat", {"heads": 0}), ("gat", {"attn_dropout": 1.0}), ("rgat", {"negative_slope": -1}),
    ("graphormer", {"max_dist": 0}), ("hgat", {"semantic_dim": 0}), ("han", {"update": "sometimes"}),
    ("han", {"attn_dropout": -0.1}), ("gcn", {"relations": "some"}), ("hgnn", {"aggr": "max"}),
    ("hgnn", {"typed_root": True, "root_weight": False}),
])
def test_bad_options_are_rejected(name, bad):
    with pytest.raises(OptionError, match=next(iter(bad))):
        AGGREGATORS.options(name, **bad)


@pytest.mark.parametrize("name, opts", [
    ("gat", {"heads": 3, "concat": True}), ("rgat", {"heads": 3, "concat": True}), ("graphormer", {"heads": 3}),
])
def test_heads_must_divide_dim_when_concatenated(name, opts):
    ctx = AggregatorContext(dim=10, n_relations=10, n_node_types=4)
    with pytest.raises(OptionError, match="heads"):
        AGGREGATORS.create(name, ctx, **opts)
    AGGREGATORS.create(name, ctx, **{**opts, "heads": 2})


def test_dense_aggregators_never_import_dgl():
    """dgl is optional: building and running every registered aggregator densely imports neither dgl nor the
    sparse backend module (checked in a fresh interpreter, so it also holds where dgl is installed)."""
    code = textwrap.dedent("""
        import sys
        from fusionbench.registry import AGGREGATORS
        from test_aggregators_contract import typed_graph
        for name in AGGREGATORS.names():
            ctx, x, adj, node_type, node_mask = typed_graph()
            AGGREGATORS.create(name, ctx)(x, adj, node_type, node_mask)
        print(sorted(m for m in sys.modules if m.split('.')[0] == 'dgl' or m == 'aggregators.dgl_backend'))
    """)
    path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": path})
    assert out.stdout.strip() == "[]"
