"""Full-ranking evaluation over all items, in blocks of samples (specs/protocol.md §3).

Every sample is scored against all n items (padding column excluded), one matmul per block when
the strategy keeps the default ``score = encode @ item_embeddings().T``; ranks are pessimistic
(ties count against the model, see :mod:`fusionbench.metrics`).

With ``exclude_history`` (``train.exclude_history``; off by default, the paper's protocol, where the next
item may be one the user had before) every item of the sample's history, all positions before its
target and not only the model's window of L items, is ranked below every other item, except the target
itself when it is a repeat (:func:`exclude_seen`): the rank then counts unseen items only.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from fusionbench.context import SeqBatch
from fusionbench.data.core import SequenceData
from fusionbench.data.splits import Samples, histories, sample_batch
from fusionbench.errors import TrainingError
from fusionbench.metrics import NanScoresError, target_rank
from fusionbench.strategy import Strategy

RANK_CHUNK = 32  # rows scored at a time: a [32, n] score block stays in cache for the counting pass
# (on the 2-core machine with Beauty's 12,101 items, 32 and 64 rows beat 128 by 20-30 %; 16 is no better)

BatchView = Callable[[SeqBatch, Samples], SeqBatch]
"""``view(batch, samples) -> batch``: what a model sees of a batch built from ``samples`` (stress tests)."""


def exclude_seen(scores: Tensor, target: Tensor, seen: Tensor) -> Tensor:
    """Score every seen item but the target at -inf, in place: scores ``[B, n]`` over real items (column c
    = item c + 1), target ``[B]`` in 0..n-1, seen ``[B, H]`` item ids (0 = padding) -> scores.

    The target keeps its score when it is among the seen items (a repeat stays rankable)."""
    own = scores.gather(1, target[:, None])
    scores.scatter_(1, torch.where(seen > 0, seen - 1, target[:, None]), float("-inf"))
    return scores.scatter_(1, target[:, None], own)


@torch.no_grad()
def rank_block(query: Tensor, item_emb: Tensor, target: Tensor, seen: Optional[Tensor] = None) -> Tensor:
    """query ``[B, d]``, item_emb ``[n_items + 1, d]``, target ``[B]`` in 1..n -> ranks ``[B]``; with
    ``seen [B, H]`` (item ids, 0 = padding) those items are ranked last (:func:`exclude_seen`).

    The scoring step: ``[b, d] x [d, n]`` matmuls over chunks of ``RANK_CHUNK`` rows, each followed at
    once by the pessimistic rank count while its scores are still in cache (measured on 2 cores: about
    3x faster than one matmul over the whole block followed by one counting pass). Every chunk's scores
    go into one preallocated ``[RANK_CHUNK, n]`` buffer: a fresh multi-MB result per chunk was mapped
    and zero-filled by the OS each time, which took as long as the matmul itself.
    Finite inputs give finite scores, so the full NaN scan of the score block is skipped."""
    if not torch.isfinite(query).all():
        raise NanScoresError("non-finite sequence representation: cannot rank")
    weights = item_emb[1:].T
    scores = query.new_empty(min(RANK_CHUNK, len(query)), weights.shape[1])
    ranks = []
    for start in range(0, len(query), RANK_CHUNK):
        q, t = query[start:start + RANK_CHUNK], target[start:start + RANK_CHUNK] - 1
        block = torch.mm(q, weights, out=scores[:len(q)])
        if seen is not None:
            exclude_seen(block, t, seen[start:start + RANK_CHUNK])
        ranks.append(target_rank(block, t, check_nan=False))
    return torch.cat(ranks)


@torch.no_grad()
def rank_samples(model: Strategy, data: SequenceData, samples: Samples, max_len: int,
                 batch_size: int = 1024, view: Optional[BatchView] = None, exclude_history: bool = False) -> Tensor:
    """0-based rank ``[S]`` of every sample's target among all items, in sample order; ``view``, if
    given, maps every batch before the model sees it; ``exclude_history``: among the items outside each
    sample's history (module docstring).

    NaN scores (a diverged model) raise :class:`TrainingError` instead of being ranked."""
    was_training = model.training
    model.eval()
    default_score = type(model).score is Strategy.score
    item_emb = model.item_embeddings() if default_score else None
    if item_emb is not None and not torch.isfinite(item_emb).all():
        model.train(was_training)
        raise TrainingError("the model produced non-finite item embeddings (diverged); try a lower lr")
    device = next(model.parameters()).device
    order = torch.argsort(model.bucket_key(data, samples), stable=True)  # similar sizes per block: less padding
    ranks = torch.zeros(len(samples), dtype=torch.long)
    for index in order.split(batch_size):
        block = samples.take(index)
        batch = sample_batch(data, block, max_len)
        seen = None
        if exclude_history:  # the whole history, not only the model's window
            seen = histories(data, block.user, block.pos, max(1, int(block.pos.max())))[0].to(device)
        batch = (batch if view is None else view(batch, block)).to(device)
        try:
            if default_score:
                ranks[index] = rank_block(model.encode(batch), item_emb, batch.target, seen).cpu()
            else:
                scores = model.score(batch)[:, 1:]
                if seen is not None:
                    if torch.isnan(scores).any():
                        raise NanScoresError("NaN in scores: cannot rank")
                    scores = exclude_seen(scores.clone(), batch.target - 1, seen)
                ranks[index] = target_rank(scores, batch.target - 1).cpu()
        except NanScoresError:
            model.train(was_training)
            raise TrainingError("the model produced NaN scores (diverged); try a lower lr") from None
    model.train(was_training)
    return ranks
