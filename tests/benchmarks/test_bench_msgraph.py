"""MSGraph construction speed on a real Beauty batch: the batched tensor builder against the per-sample
Python reference of the tests (``msgraph_reference``), which it must match exactly.

The batch is MMSR's typical training batch on Beauty (``conftest.typical_batch``: 128 prefix samples of
the mean width, default ``attr`` + ``text`` codes). Read the ratio of the two within one run.
"""
import pytest
import torch

from msgraph_reference import reference_msgraph
from strategies.msgraph import build_msgraph

pytestmark = pytest.mark.benchmark

FIELDS = ("node_ids", "node_type", "node_mask", "adj", "pos_mask", "last_node")


@pytest.mark.benchmark(group="msgraph-build")
@pytest.mark.parametrize("impl", ["batched", pytest.param("reference", marks=pytest.mark.reference)])
def test_msgraph_build(benchmark, measure, impl, msgraph_case):
    c = msgraph_case
    fn = build_msgraph if impl == "batched" else reference_msgraph
    graph = measure(fn, args=(c.items, c.codes, c.n_items, c.n_codes), rounds=30 if impl == "batched" else 5)
    for f in FIELDS:
        assert torch.equal(getattr(graph, f), getattr(c.graph, f)), f
    benchmark.extra_info.update(
        batch=c.items.shape[0], width=c.items.shape[1], mean_length=float((c.items > 0).sum(1).float().mean()),
        nodes_padded=graph.n_nodes, relations=graph.adj.shape[1], edges=int(graph.adj.sum()),
    )
