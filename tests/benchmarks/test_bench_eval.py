"""Full-ranking evaluation speed: the scoring step on one block, and all Beauty users end to end.

``scoring-step`` compares the evaluator's ``rank_block`` (chunked matmul + pessimistic rank count) with
the bare matmul of the same shape; ``full-evaluation`` ranks the test sample of every Beauty user with
an untrained, default SASRec (``rank_samples``: batch assembly, encoding, scoring, ranking).
"""
import pytest
import torch

from fusionbench.evaluate import rank_block, rank_samples
from fusionbench.metrics import target_rank

pytestmark = pytest.mark.benchmark

N_ITEMS, DIM, BLOCK = 12101, 64, 1024  # Beauty's item count, SASRec's d, the evaluator's block
FLOPS = 2 * BLOCK * DIM * N_ITEMS


@pytest.fixture(scope="module")
def block():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(BLOCK, DIM, generator=g)
    item_emb = torch.randn(N_ITEMS + 1, DIM, generator=g)
    target = torch.randint(1, N_ITEMS + 1, (BLOCK,), generator=g)
    return query, item_emb, target


@pytest.mark.reference
@pytest.mark.benchmark(group="scoring-step")
def test_scoring_matmul(benchmark, measure, block):
    """The [B, d] x [d, n] fp32 matmul of the scoring step, and nothing else."""
    query, item_emb, _ = block
    weights = item_emb[1:].T.contiguous()
    out = measure(torch.matmul, args=(query, weights), rounds=20)
    assert out.shape == (BLOCK, N_ITEMS)
    benchmark.extra_info["gflops_per_s"] = FLOPS / benchmark.stats.stats.min / 1e9


@pytest.mark.benchmark(group="scoring-step")
def test_scoring_rank_block(benchmark, measure, block):
    """Matmul plus the pessimistic rank of every target: what evaluation does per block."""
    query, item_emb, target = block
    ranks = measure(rank_block, args=(query, item_emb, target), rounds=20)
    assert torch.equal(ranks, target_rank(query @ item_emb[1:].T, target - 1))
    benchmark.extra_info["gflops_per_s"] = FLOPS / benchmark.stats.stats.min / 1e9


@pytest.mark.benchmark(group="full-evaluation")
def test_full_ranking_all_beauty_users(benchmark, measure, beauty, make_model):
    """Encode and rank the test sample of all 22,363 Beauty users with an untrained default SASRec."""
    data, split = beauty
    model, config = make_model("sasrec")
    ranks = measure(rank_samples, args=(model, data, split.test, config["max_len"]), rounds=5)
    assert ranks.shape == (len(split.test),) and (ranks >= 0).all() and (ranks < data.n_items).all()
    benchmark.extra_info.update(users=len(split.test), items=data.n_items)
