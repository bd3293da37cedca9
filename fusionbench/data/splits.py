"""Evaluation protocols (specs/protocol.md §2) and vectorised batch assembly.

A split never copies sequences: every sample is a (user, position) pair pointing into
``SequenceData.flat``; the target is the item at that position and the input is the (at most L)
items before it. Positions are 0-based within the user's sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from fusionbench.context import SeqBatch
from fusionbench.data.core import SequenceData
from fusionbench.errors import UserInputError

Protocol = Literal["loo", "ratio", "ratio-paper"]
PROTOCOLS: tuple[str, ...] = ("loo", "ratio", "ratio-paper")
LEAKY_PROTOCOL = "ratio-paper"  # selects and stops on the test samples, as the MMSR reference does
RATIO = 0.2


@dataclass(frozen=True)
class Samples:
    """Evaluation or training samples: ``user [S]`` and target ``pos [S]`` (long)."""

    user: Tensor
    pos: Tensor

    def __len__(self) -> int:
        return self.user.numel()

    def take(self, index: Tensor) -> "Samples":
        return Samples(self.user[index], self.pos[index])


@dataclass(frozen=True)
class CausalRows:
    """Training rows for one-causal-pass strategies: inputs end before position ``end`` and targets
    are wanted at positions ``first..end`` (inclusive). Together the rows cover exactly the same
    (prefix, target) pairs as the prefix samples, with every prefix cut to the last L items."""

    user: Tensor
    first: Tensor
    end: Tensor

    def __len__(self) -> int:
        return self.user.numel()

    def take(self, index: Tensor) -> "CausalRows":
        return CausalRows(self.user[index], self.first[index], self.end[index])


@dataclass(frozen=True)
class Split:
    """Train / validation / test samples of one protocol.

    Attributes:
        protocol: "loo", "ratio" or "ratio-paper".
        train, valid, test: the samples; under "ratio-paper" ``valid`` is the test set (leaky).
        history_end: long ``[n_users]``; interactions at positions < history_end[u] are the ones a
            model may build interaction graphs from (training part, validation item excluded).
        test_history_end: long ``[n_users]``; what a model may use when it ranks the test samples
            (graph-CF user vectors): ``loo``: history_end + 1, the validation item added, because the
            sequential models see it in their test inputs; ``ratio``: history_end (one user vector
            cannot be conditioned per test target, so neither the validation target nor earlier test
            targets are added: an asymmetry the docs state); ``ratio-paper``: history_end.
    """

    protocol: str
    train: Samples
    valid: Samples
    test: Samples
    history_end: Tensor
    test_history_end: Optional[Tensor] = None

    @property
    def leaky(self) -> bool:
        return self.protocol == LEAKY_PROTOCOL


def _positions(data: SequenceData) -> tuple[Tensor, Tensor]:
    """user index and 0-based position of every interaction in ``data.flat``."""
    lengths = data.lengths
    user = torch.repeat_interleave(torch.arange(data.n_users), lengths)
    pos = torch.arange(data.n_interactions) - data.offsets[:-1][user]
    return user, pos


def make_split(data: SequenceData, protocol: str) -> Split:
    """Build the samples of ``protocol`` (users with fewer than 3 interactions are left out)."""
    if protocol not in PROTOCOLS:
        raise UserInputError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    user, pos = _positions(data)
    length = data.lengths[user]
    eligible = length >= 3
    if protocol == "loo":
        n_test = torch.ones_like(length)
    else:
        n_test = torch.clamp(torch.floor(RATIO * length.double()).long(), min=1)
    first_test = length - n_test  # first test position of each interaction's user
    test = eligible & (pos >= first_test)
    if protocol == "ratio-paper":
        valid = test
        train = eligible & (pos >= 1) & (pos < first_test)
        history_end = first_test
    else:
        valid = eligible & (pos == first_test - 1)
        train = eligible & (pos >= 1) & (pos < first_test - 1)
        history_end = first_test - 1
    per_user_end = torch.zeros(data.n_users, dtype=torch.long)
    per_user_end.scatter_reduce_(0, user, history_end, reduce="amax")
    pick = lambda m: Samples(user[m], pos[m])  # noqa: E731
    test_end = per_user_end + 1 if protocol == "loo" else per_user_end
    test_end = torch.minimum(test_end, data.lengths - 1).clamp(min=0)  # never the test target itself
    return Split(protocol, pick(train), pick(valid), pick(test), per_user_end, test_end)


def causal_rows(train: Samples, max_len: int) -> CausalRows:
    """Group prefix samples into causal rows: one row per user for its targets at positions
    1..min(last, L), plus one single-target row for every later target (whose prefix is longer than
    L). Assumes each user's training targets are the consecutive positions 1..last."""
    n_users = int(train.user.max()) + 1 if len(train) else 0
    last = torch.zeros(n_users, dtype=torch.long).scatter_reduce_(0, train.user, train.pos, reduce="amax")
    has = torch.zeros(n_users, dtype=torch.bool)
    has[train.user] = True
    head_users = torch.nonzero(has).squeeze(1)
    head_end = torch.clamp(last[head_users], max=max_len)
    tail = train.pos > max_len
    user = torch.cat([head_users, train.user[tail]])
    first = torch.cat([torch.ones_like(head_users), train.pos[tail]])
    end = torch.cat([head_end, train.pos[tail]])
    return CausalRows(user, first, end)


def histories(data: SequenceData, user: Tensor, end: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Items at positions ``end - W .. end - 1`` of each user, left-padded with 0.

    W = min(max_len, longest history in the batch): columns that would be padding in every row are
    not built (strategies are invariant to left padding, and short batches run much faster).
    Returns ``items [S, W]`` and the matching 0-based positions ``[S, W]`` (negative = padding).
    """
    start = data.offsets[:-1][user]
    width = max(1, min(max_len, int(end.max()) if end.numel() else 1))
    pos = end[:, None] - width + torch.arange(width)[None, :]
    real = pos >= 0
    items = torch.where(real, data.flat[(start[:, None] + pos).clamp(min=0)], 0)
    return items, torch.where(real, pos, -1)


def sample_batch(data: SequenceData, samples: Samples, max_len: int) -> SeqBatch:
    """``SeqBatch(items [S, L], target [S], user [S])`` for prefix samples."""
    items, _ = histories(data, samples.user, samples.pos, max_len)
    target = data.flat[data.offsets[:-1][samples.user] + samples.pos]
    return SeqBatch(items=items, target=target, user=samples.user)


def causal_batch(data: SequenceData, rows: CausalRows, max_len: int) -> SeqBatch:
    """``SeqBatch(items [S, L], targets [S, L])``: targets[s, j] = the item after items[s, j] when
    that position is one of the row's wanted targets, else 0."""
    items, pos = histories(data, rows.user, rows.end, max_len)
    next_pos = pos + 1
    wanted = (pos >= 0) & (next_pos >= rows.first[:, None]) & (next_pos <= rows.end[:, None])
    start = data.offsets[:-1][rows.user]
    nxt = data.flat[torch.where(wanted, start[:, None] + next_pos, 0)]
    return SeqBatch(items=items, targets=torch.where(wanted, nxt, 0), user=rows.user)
