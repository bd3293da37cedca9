"""Full-ranking evaluation speed, as ratios to a plain fp32 matmul measured in the same run.

Opt-in: ``tox -e bench`` or ``pytest tests/benchmarks -m benchmark --benchmark-only``. Each case records
its GFLOP/s in ``extra_info``; compare cases within one run, never across machines.
"""
import pytest
import torch

from fusionbench.context import StrategyContext
from fusionbench.data.datasets import load_dataset
from fusionbench.data.splits import make_split
from fusionbench.evaluate import rank_block, rank_samples
from fusionbench.metrics import target_rank
from fusionbench.registry import STRATEGIES

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


def record(benchmark, flops):
    benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.min / 1e9


@pytest.mark.benchmark(group="scoring-step")
def test_calibration_matmul(benchmark, block):
    """The yardstick: the same [B, d] x [d, n] fp32 matmul the scoring step does, and nothing else."""
    query, item_emb, _ = block
    weights = item_emb[1:].T.contiguous()
    out = benchmark.pedantic(torch.matmul, args=(query, weights), rounds=20, warmup_rounds=2)
    assert out.shape == (BLOCK, N_ITEMS)
    record(benchmark, FLOPS)


@pytest.mark.benchmark(group="scoring-step")
def test_scoring_step(benchmark, block):
    """Matmul plus the pessimistic rank of every target: what evaluation does per block."""
    query, item_emb, target = block
    ranks = benchmark.pedantic(rank_block, args=(query, item_emb, target), rounds=20, warmup_rounds=2)
    assert torch.equal(ranks, target_rank(query @ item_emb[1:].T, target - 1))
    record(benchmark, FLOPS)


@pytest.mark.benchmark(group="full-evaluation")
def test_full_ranking_of_all_beauty_users(benchmark):
    """Encode and rank the test sample of all 22,363 Beauty users with an (untrained) SASRec."""
    data = load_dataset("beauty")
    split = make_split(data, "loo")
    torch.manual_seed(0)
    model = STRATEGIES.create("sasrec", StrategyContext(data.n_items, 50))
    ranks = benchmark.pedantic(rank_samples, args=(model, data, split.test, 50), rounds=3, warmup_rounds=1)
    assert ranks.shape == (len(split.test),) and (ranks >= 0).all()
    benchmark.extra_info["users"] = len(split.test)
