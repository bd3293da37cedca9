"""The calibration case: one fixed fp32 matmul that every other case is divided by.

``fusionbench bench check`` compares ``case time / calibration time`` with the committed baseline, so a
machine that is uniformly faster or slower (or busier) moves numerator and denominator together.
"""
import pytest
import torch

pytestmark = pytest.mark.benchmark

N = 1024  # [N, N] x [N, N]: 2 N^3 = 2.1 GFLOP, about 20 ms on one core of the development machine


@pytest.mark.benchmark(group="calibration")
@pytest.mark.parametrize("position", ["first", "last"])
def test_calibration(benchmark, position):
    """Every ratio depends on this one figure, so it keeps its 20 rounds in the short suite too. It is
    timed as the suite's first and last case (conftest.py orders them); the better of the two is the
    yardstick, so a burst of load during one of them does not shrink every ratio of the run."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(N, N, generator=g), torch.randn(N, N, generator=g)
    out = benchmark.pedantic(torch.mm, args=(a, b), rounds=20, warmup_rounds=2)
    torch.testing.assert_close(out[:8], a[:8] @ b, rtol=1e-4, atol=1e-3)
    benchmark.extra_info.update(shape=f"[{N}, {N}] x [{N}, {N}] fp32",
                                gflops_per_s=2 * N**3 / benchmark.stats.stats.min / 1e9)
