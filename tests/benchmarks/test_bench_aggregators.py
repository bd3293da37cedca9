"""Forward + backward of every registered aggregator on B = 128 MSGraphs of a real Beauty batch.

The graphs are those MMSR builds for its typical Beauty training batch (``conftest.msgraph_case``), the
node states random ``[B, N, d]`` with MMSR's default d; each aggregator has its default options.
"""
import pytest
import torch

from fusionbench.registry import AGGREGATORS

pytestmark = pytest.mark.benchmark


@pytest.mark.benchmark(group="aggregator-fwd-bwd")
@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator(benchmark, measure, name, msgraph_case):
    g, ctx = msgraph_case.graph, msgraph_case.agg_ctx
    torch.manual_seed(0)
    layer = AGGREGATORS.create(name, ctx)
    x = torch.randn(g.node_ids.shape[0], g.n_nodes, ctx.dim, requires_grad=True)

    def clear():
        layer.zero_grad(set_to_none=True)
        x.grad = None

    def forward_backward():
        out = layer(x, g.adj, g.node_type, g.node_mask)
        out.square().sum().backward()
        return out.detach()

    out = measure(forward_backward, setup=clear, rounds=10)
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    benchmark.extra_info.update(batch=x.shape[0], nodes_padded=g.n_nodes, dim=ctx.dim,
                                relations=ctx.n_relations, edges=int(g.adj.sum()))
