"""Dense vs DGL backend: forward + backward time of each aggregator as graphs grow (docs/dgl.md).

Opt-in, in the dgl environment only:
``OMP_NUM_THREADS=1 tox -e dgl -- tests/with_dgl/test_dgl_bench.py -m benchmark --benchmark-only``.
One batch of B = 16 Beauty-like histories of a fixed length chosen so that the padded graph size N
reaches 32 ... 512 nodes (``msgraph_batches.length_for_nodes``), plus ("typical") B = 128 graphs of
the size of MMSR's typical Beauty training batch; d = 128 (MMSR's default), default aggregator
options, training mode. The timed step is one forward (for dgl: dense batch -> DGL graph ->
kernel -> dense batch, as ``sparse_forward`` is called) and the backward of a weighted sum of the
output. torch runs on one intra-op thread (set OMP_NUM_THREADS=1 for DGL's kernels too); read the
dense/dgl ratio of the minimum times within one run (the least disturbed by other processes on a
shared machine), never absolute times. Afterwards the backend's eval-mode output is checked against
the dense one.
"""
import pytest
import torch

pytest.importorskip("dgl", reason="DGL is not installed here; run the DGL benchmark with `tox -e dgl`")

from aggregators.dgl_backend import sparse_forward, sparse_names  # noqa: E402
from fusionbench.registry import AGGREGATORS  # noqa: E402
from msgraph_batches import beauty_like_msgraph, length_for_nodes  # noqa: E402

pytestmark = pytest.mark.benchmark

BATCH, DIM = 16, 128
NODES = [32, 64, 128, 256, 512]
BACKENDS = {"dense": lambda model, *graph: model(*graph), "dgl": sparse_forward}


@pytest.fixture(scope="module", params=NODES + ["typical"])
def graph(request):
    """(history length, batch): fixed-length histories reaching ``param`` nodes, or ("typical") a
    batch like MMSR's typical Beauty training batch (docs/performance.md: 128 rows bucketed by length
    to width 9, graphs padded to 57 nodes): 128 histories of 10 items, padded to 55 nodes."""
    if request.param == "typical":
        return 10, beauty_like_msgraph(128, 10, DIM, seed=1, fixed_length=True)
    length = length_for_nodes(request.param, BATCH)
    return length, beauty_like_msgraph(BATCH, length, DIM, fixed_length=True)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sparse_names())
def test_forward_backward(benchmark, name, backend, graph, one_thread):
    length, (ctx, x, adj, node_type, node_mask) = graph
    torch.manual_seed(0)
    model = AGGREGATORS.create(name, ctx).train()
    weight = torch.randn(x.shape)
    forward = BACKENDS[backend]

    def step():
        model.zero_grad(set_to_none=True)
        (forward(model, x, adj, node_type, node_mask) * weight).sum().backward()

    benchmark.group = f"dgl-backend-{name}"
    benchmark.pedantic(step, rounds=max(3, 2048 // x.shape[1]), warmup_rounds=1)   # more rounds when cheap
    model.eval()
    with torch.no_grad():
        out = forward(model, x, adj, node_type, node_mask)
        torch.testing.assert_close(out, model(x, adj, node_type, node_mask), rtol=1e-4, atol=1e-4)
    benchmark.extra_info.update(
        aggregator=name, backend=backend, batch=x.shape[0], dim=DIM, history_length=length,
        nodes_padded=x.shape[1], nodes_mean=float(node_mask.sum(1).float().mean()),
        typed_edges=int(adj.sum()), torch_threads=torch.get_num_threads(),
    )
