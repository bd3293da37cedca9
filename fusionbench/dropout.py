r"""Dropout whose CPU keep mask comes from whichever draw is faster here: ``torch.rand`` or ``bernoulli_``.

Inverted dropout of rate :math:`p`:

.. math:: \mathrm{Drop}_p(x) = x \odot m / (1 - p),\qquad m_i = [\,u_i \ge p\,],\quad u_i \sim U[0, 1)\ \text{i.i.d.}

so each element is kept with probability :math:`1 - p` and :math:`\mathbb{E}[\mathrm{Drop}_p(x)] = x`, as with
:func:`torch.nn.functional.dropout`. Which draw is faster depends on the machine and the PyTorch version:
on the CI machine under torch 2.2.1 ``bernoulli_`` is (forward and backward of a ``[128, 50, 64]`` float32
input: 0.51 ms against 1.45 ms for the uniform draw), while under torch 2.14.1 on the development machines
it is about four times slower than ``torch.rand`` and a comparison (8.0 ms against 2.1 ms, where the masks
were a fifth of a SASRec training step's CPU time). So the first CPU dropout of a process times both draws on a
private generator (:func:`mask_draw`) and keeps the uniform one only when it is clearly faster (under
:data:`UNIFORM_IF_BELOW` of ``bernoulli_``'s time); the environment variable ``FUSIONBENCH_DROPOUT_MASK``
(``uniform``, ``bernoulli`` or ``auto``) overrides the choice, and every stored run records it. Off CPU
every function here is PyTorch's. Masks come from the global generator, so a seeded run is reproducible on
one machine; the two draws give different masks, as PyTorch's own draws differ between machines.

Every strategy and aggregator takes its dropout from here (:class:`Dropout`, :func:`dropout`, and
:func:`attention` for dropout on attention probabilities).
"""
from __future__ import annotations

import contextlib
import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.errors import UserInputError

UNIFORM_IF_BELOW = 0.7
"""The uniform draw replaces ``bernoulli_`` only below this fraction of its time (a margin against noise)."""

MASK_DRAWS = ("uniform", "bernoulli")


@functools.cache
def mask_draw() -> str:
    """How CPU dropout masks are drawn in this process: ``"uniform"`` or ``"bernoulli"``, decided once.

    ``FUSIONBENCH_DROPOUT_MASK`` names it, or ``auto`` (the default) times both draws for a
    ``[64, 50, 64]`` mask on one thread and a private generator (fastest of 7; the global random state is
    untouched). One thread measures each draw's own cost: ``torch.rand`` runs in parallel, so on a busy
    machine its multi-threaded time says more about the other jobs than about the draw.
    """
    chosen = os.environ.get("FUSIONBENCH_DROPOUT_MASK", "auto").strip().lower() or "auto"
    if chosen in MASK_DRAWS:
        return chosen
    if chosen != "auto":
        raise UserInputError(f"FUSIONBENCH_DROPOUT_MASK must be uniform, bernoulli or auto, got {chosen!r}")
    generator = torch.Generator().manual_seed(0)
    mask = torch.empty(64, 50, 64)

    def fastest(draw) -> float:
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter()
            draw()
            best = min(best, time.perf_counter() - start)
        return best

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        uniform = fastest(lambda: torch.rand(mask.shape, generator=generator) >= 0.5)
        bernoulli = fastest(lambda: mask.bernoulli_(0.5, generator=generator))
    finally:
        torch.set_num_threads(threads)
    return "uniform" if uniform < UNIFORM_IF_BELOW * bernoulli else "bernoulli"


_fixed_draw: str | None = None


@contextlib.contextmanager
def fixed_mask_draw(draw: str):
    """Within the block CPU masks use ``draw`` (one of :data:`MASK_DRAWS`) whatever this machine would
    choose: for runs whose exact results are compared across machines (the accuracy floors)."""
    global _fixed_draw
    if draw not in MASK_DRAWS:
        raise ValueError(f"draw must be one of {MASK_DRAWS}, got {draw!r}")
    before, _fixed_draw = _fixed_draw, draw
    try:
        yield
    finally:
        _fixed_draw = before


def _uniform_mask(x: Tensor, p: float) -> bool:
    return x.device.type == "cpu" and p < 1.0 and (_fixed_draw or mask_draw()) == "uniform"


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """:math:`\\mathrm{Drop}_p(x)` when ``training`` (the identity otherwise, or when p = 0). x: any shape."""
    if not training or p == 0.0:
        return x
    if not _uniform_mask(x, p):
        return F.dropout(x, p, True)
    keep = torch.rand(x.shape, device=x.device).ge_(p).mul_(1.0 / (1.0 - p))   # 1/(1-p) where kept, else 0
    return x * keep.to(x.dtype)


class Dropout(nn.Module):
    """:func:`dropout` as a module, a drop-in for :class:`torch.nn.Dropout` (active in training mode only)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    r"""Scaled dot-product attention with dropout on the attention probabilities:

    .. math:: \mathrm{Drop}_p\big(\mathrm{softmax}(q k^\top / \sqrt{d_h} + M)\big)\, v,\qquad
              M_{ij} = 0 \text{ if allowed}_{ij} \text{ else } -\infty

    Shapes: q ``[B, H, Lq, d_h]``, k and v ``[B, H, Lk, d_h]``, allowed bool broadcastable to
    ``[B, H, Lq, Lk]`` (every row must allow one key) -> ``[B, H, Lq, d_h]``. Unless the uniform draw makes
    the masks (:func:`mask_draw`), this is :func:`torch.nn.functional.scaled_dot_product_attention`, which with
    dropout on CPU takes the same unfused path but draws the mask with ``bernoulli_``.
    """
    if not training or p == 0.0 or not _uniform_mask(q, p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p if training else 0.0)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return dropout(scores.masked_fill(~allowed, float("-inf")).softmax(-1), p) @ v
