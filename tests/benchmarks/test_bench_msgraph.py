"""MSGraph construction speed: the batched tensor builder against the per-sample Python reference.

Opt-in: ``tox -e bench`` or ``pytest tests/benchmarks/test_bench_msgraph.py -m benchmark --benchmark-only``.
One Beauty-like batch (B=256, L=50, n=12,101 items, lengths mostly 5-10 with a long tail, two modalities
with C=30 codes and k=3 random codes per item). Both cases run single-threaded (torch intra-op threads
= 1) so that the comparison with the pure-Python reference is like for like and not at the mercy of
OpenMP oversubscription on shared runners; read the ratio within one run, never absolute times.
"""
import pytest
import torch

from msgraph_reference import reference_msgraph
from strategies.msgraph import build_msgraph

pytestmark = pytest.mark.benchmark

B, L, N_ITEMS, C, K = 256, 50, 12101, 30, 3
FIELDS = ("node_ids", "node_type", "node_mask", "adj", "pos_mask", "last_node")


@pytest.fixture(scope="module")
def beauty_like_batch():
    g = torch.Generator().manual_seed(2023)
    # Beauty histories: 5-core, mean length ~9, long tail; inputs are cut to the last L items
    lengths = (5 + torch.empty(B).exponential_(1 / 4.0, generator=g).floor().long()).clamp(max=L)
    items = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    items[torch.arange(L)[None, :] < (L - lengths)[:, None]] = 0
    codes = {m: torch.randint(0, C, (N_ITEMS + 1, K), generator=g) for m in ("image", "text")}
    for table in codes.values():
        table[0] = -1
    n_codes = {m: C for m in codes}
    return items, codes, n_codes, lengths


@pytest.fixture(scope="module")
def expected(beauty_like_batch):
    items, codes, n_codes, _ = beauty_like_batch
    return reference_msgraph(items, codes, N_ITEMS, n_codes)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.benchmark(group="msgraph-build")
@pytest.mark.parametrize("impl", ["batched", "reference"])
def test_msgraph_build(benchmark, impl, beauty_like_batch, expected, one_thread):
    items, codes, n_codes, lengths = beauty_like_batch
    fn = build_msgraph if impl == "batched" else reference_msgraph
    rounds = 30 if impl == "batched" else 5
    graph = benchmark.pedantic(fn, args=(items, codes, N_ITEMS, n_codes), rounds=rounds, warmup_rounds=1)
    for f in FIELDS:
        assert torch.equal(getattr(graph, f), getattr(expected, f)), f
    benchmark.extra_info.update(
        batch=B, max_len=L, mean_length=float(lengths.float().mean()), nodes_padded=graph.n_nodes,
        relations=graph.adj.shape[1], edges=int(graph.adj.sum()), torch_threads=torch.get_num_threads(),
    )
