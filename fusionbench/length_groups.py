r"""A causal training batch encoded in sub-batches of similar length.

Training rows are drawn at random (``train.batching=uniform``), so almost every batch holds one history of
``max_len`` items and is ``max_len`` wide, while most of its rows are short: on Beauty (loo, ``max_len``
50) 77 % of the positions of a training batch are left padding, and 84 % of the position pairs a causal
attention forms (Toys: 78 and 85 %). Encoding the batch as :data:`LENGTH_GROUPS` groups of rows, sorted by
length and each cut to its longest row, keeps 70 % of the positions real (60 % of the pairs). The batch's rows, targets
and loss stay the same; a strategy's state at a real position does not depend on the padding before it (the
strategy contract tests it), so the states are the whole batch's up to float rounding. The dropout masks are
drawn for the groups' shapes, so a training run's random stream differs from the one-pass encoding.

``FUSIONBENCH_CAUSAL_PASS`` chooses it per process: ``grouped`` (the default) or ``whole`` (one pass over
the whole batch, as runs stored before this choice existed were trained); every stored run records it
(``versions.causal_pass``).
"""
from __future__ import annotations

import functools

import torch

from fusionbench.context import SeqBatch
from fusionbench.options import environment_choice

CAUSAL_PASSES = ("grouped", "whole")

LENGTH_GROUPS = 4
"""Groups per training batch (equal numbers of rows, by length): measured in docs/performance.md."""


@functools.cache
def causal_pass() -> str:
    """How this process encodes a causal training batch: one of :data:`CAUSAL_PASSES`
    (``FUSIONBENCH_CAUSAL_PASS``; ``auto`` or unset: ``grouped``)."""
    chosen = environment_choice("FUSIONBENCH_CAUSAL_PASS", CAUSAL_PASSES)
    return "grouped" if chosen == "auto" else chosen


def real_widths(batch: SeqBatch) -> torch.Tensor:
    """``[B]``: the positions from each row's first real item to its end (the whole width for a row with
    none), so that cutting a row to its width drops only left padding."""
    mask = batch.mask
    first = mask.to(torch.uint8).argmax(1)           # 0 for a row without a real item: kept whole
    return mask.shape[1] - first


def length_groups(batch: SeqBatch, groups: int = LENGTH_GROUPS) -> list[SeqBatch]:
    """The rows of ``batch`` sorted by :func:`real_widths` and cut into ``groups`` sub-batches whose sizes
    differ by at most one row (fewer where ``B < groups``), each ``[b_g, W_g]`` with ``W_g`` its longest
    row's width."""
    widths = real_widths(batch)
    order = torch.argsort(widths, stable=True)
    return [batch.rows(index, int(widths[index[-1]])) for index in torch.tensor_split(order, groups) if len(index)]
