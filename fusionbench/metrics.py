r"""Full-ranking metrics with one relevant item per sample (specs/protocol.md §3).

Rank (0-based) of the target t among n items, ties counted against the model:

.. math:: r = \#\{j \ne t : s_j > s_t\} + \#\{j \ne t : s_j = s_t\}

Per sample: HR@K = 1[r < K], NDCG@K = 1[r < K] / \log_2(r + 2) (IDCG = 1), MRR@K = 1[r < K] / (r + 1).
All functions are pure and vectorised; per-sample values are kept, averaging is the caller's job.
"""
from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("HR", "NDCG", "MRR")
DEFAULT_KS = (5, 10, 20)


class NanScoresError(ValueError):
    """Scores contain NaN, so no rank exists."""


def target_rank(scores: Tensor, target: Tensor, check_nan: bool = True) -> Tensor:
    """scores ``[B, n]`` over real items (column c = item c + 1), target ``[B]`` in 0..n-1
    -> 0-based pessimistic rank ``[B]`` (long).

    Computed in one pass as #{j : s_j >= s_t} - 1 (the target itself is the one subtracted).
    NaN scores raise :class:`NanScoresError`; ``check_nan=False`` skips the full scan for callers that
    have checked their inputs are finite (a NaN target score still raises)."""
    if check_nan and torch.isnan(scores).any():
        raise NanScoresError("NaN in scores: cannot rank")
    t = scores.gather(1, target[:, None])
    rank = (scores >= t).sum(1, dtype=torch.int32).long() - 1
    if (rank < 0).any():
        raise NanScoresError("NaN target score: cannot rank")
    return rank


def hit_at_k(rank: Tensor, k: int) -> Tensor:
    """``[B]`` -> ``[B]`` float: 1 if rank < k."""
    return (rank < k).float()


def ndcg_at_k(rank: Tensor, k: int) -> Tensor:
    """``[B]`` -> ``[B]`` float: 1 / log2(rank + 2) if rank < k else 0."""
    gain = 1.0 / torch.log2(rank.double() + 2.0)
    return torch.where(rank < k, gain, torch.zeros_like(gain)).float()


def mrr_at_k(rank: Tensor, k: int) -> Tensor:
    """``[B]`` -> ``[B]`` float: 1 / (rank + 1) if rank < k else 0."""
    rr = 1.0 / (rank.double() + 1.0)
    return torch.where(rank < k, rr, torch.zeros_like(rr)).float()


_PER_SAMPLE = {"HR": hit_at_k, "NDCG": ndcg_at_k, "MRR": mrr_at_k}


def per_sample(rank: Tensor, metric: str, k: int) -> Tensor:
    """Per-sample values of ``metric`` ("HR", "NDCG" or "MRR") at ``k`` from ranks ``[S]``."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    return _PER_SAMPLE[metric](rank, k)


def summarize(rank: Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Mean of every metric at every K over the samples, keyed ``"HR@5"`` etc. (fractions, not %)."""
    if rank.numel() == 0:
        raise ValueError("no samples to summarize")
    return {f"{m}@{k}": float(per_sample(rank, m, k).mean()) for m in METRICS for k in ks}
