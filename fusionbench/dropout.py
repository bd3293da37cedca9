r"""Dropout whose CPU keep mask comes from whichever draw is fastest here: ``torch.rand``, 16-bit words of
64-bit integer draws, or ``bernoulli_``.

Inverted dropout of rate :math:`p`:

.. math:: \mathrm{Drop}_p(x) = x \odot m / (1 - p),\qquad m_i = [\,u_i \ge p\,],\quad u_i \sim U[0, 1)\ \text{i.i.d.}

so each element is kept with probability :math:`1 - p` and :math:`\mathbb{E}[\mathrm{Drop}_p(x)] = x`, as with
:func:`torch.nn.functional.dropout`. The three draws (:data:`MASK_DRAWS`) differ in how :math:`u_i` is made:

- ``uniform``: ``torch.rand``, one 32-bit draw per element (a float32 on a :math:`2^{-24}` grid);
- ``words``: one full-range 64-bit integer draw (``random_``) gives four 16-bit words, so
  :math:`u_i = w_i / 2^{16}` with :math:`w_i` uniform on :math:`\{0, \dots, 2^{16} - 1\}`: a quarter of the
  generator calls. The grid makes the keep probability :math:`1 - \lceil p\,2^{16} \rceil / 2^{16}`, within
  :math:`2^{-16}` of :math:`1 - p`, so :math:`\mathbb{E}[\mathrm{Drop}_p(x)]` is within :math:`2^{-16} / (1 - p)`
  of :math:`x` (relative);
- ``bernoulli``: PyTorch's own ``F.dropout`` (``bernoulli_``).

Which is fastest depends on the machine and the PyTorch version: on the CI machine under torch 2.2.1
``bernoulli_`` beat ``torch.rand`` (forward and backward of a ``[128, 50, 64]`` float32 input: 0.51 ms
against 1.45 ms), while under torch 2.14.1 on the development machines ``bernoulli_`` is about four times
slower than ``torch.rand`` and a comparison, and the words about ten times faster than ``torch.rand`` for the
draw itself. So the first CPU dropout of a process times the three draws on a private generator
(:func:`mask_draw`) and leaves PyTorch's only for a draw clearly faster (under :data:`OTHER_IF_BELOW` of
``bernoulli_``'s time); the environment variable ``FUSIONBENCH_DROPOUT_MASK`` (``uniform``, ``words``,
``bernoulli`` or ``auto``) overrides the choice, and every stored run records it. Off CPU every function here
is PyTorch's. Masks come from the global generator, so a seeded run is reproducible on one machine; the draws
give different masks, as PyTorch's own draws differ between machines.

Every strategy and aggregator takes its dropout from here (:class:`Dropout`, :func:`dropout`, and
:func:`attention` / :func:`attend` for dropout on attention probabilities).
"""
from __future__ import annotations

import contextlib
import functools
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.options import environment_choice

OTHER_IF_BELOW = 0.7
"""Another draw replaces ``bernoulli_`` only below this fraction of its time (a margin against noise)."""

MASK_DRAWS = ("uniform", "words", "bernoulli")

WORD_LEVELS = 1 << 16
"""Levels of one word of the ``words`` draw: :math:`u_i = w_i / 2^{16}`."""


def random_words(shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """int16 ``shape``: independent words uniform over all 2^16 values, four from each full-range 64-bit draw of
    ``generator`` (the global one by default); read as signed, a word is :math:`w_i - 2^{15}` for a
    :math:`w_i` uniform on :math:`\\{0, \\dots, 2^{16} - 1\\}`."""
    n = math.prod(shape)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None, generator=generator)
    return draws.view(torch.int16)[:n].view(shape)


def word_threshold(p: float) -> int:
    """The signed word :math:`t` with :math:`w - 2^{15} \\ge t \\iff w / 2^{16} \\ge p` for every word w."""
    return math.ceil(p * WORD_LEVELS) - WORD_LEVELS // 2


def words_kept(shape, p: float, generator: torch.Generator | None = None, device=None) -> Tensor:
    """bool ``shape``: :math:`[\\,w_i / 2^{16} \\ge p\\,]` for the words of :func:`random_words`."""
    return random_words(shape, generator, device) >= word_threshold(p)


@functools.cache
def mask_draw() -> str:
    """How CPU dropout masks are drawn in this process: one of :data:`MASK_DRAWS`, decided once.

    ``FUSIONBENCH_DROPOUT_MASK`` names it, or ``auto`` (the default) times each draw for a ``[64, 50, 64]``
    mask on one thread and a private generator (fastest of 7; the global random state is untouched) and
    keeps ``bernoulli`` unless the faster of the others takes under :data:`OTHER_IF_BELOW` of its time. One
    thread measures each draw's own cost: ``torch.rand`` runs in parallel, so on a busy machine its
    multi-threaded time says more about the other jobs than about the draw.
    """
    chosen = environment_choice("FUSIONBENCH_DROPOUT_MASK", MASK_DRAWS)
    if chosen != "auto":
        return chosen
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
        seconds = {"uniform": fastest(lambda: torch.rand(mask.shape, generator=generator) >= 0.5),
                   "words": fastest(lambda: words_kept(mask.shape, 0.5, generator)),
                   "bernoulli": fastest(lambda: mask.bernoulli_(0.5, generator=generator))}
    finally:
        torch.set_num_threads(threads)
    other = min(("uniform", "words"), key=seconds.__getitem__)
    return other if seconds[other] < OTHER_IF_BELOW * seconds["bernoulli"] else "bernoulli"


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


def _own_draw(x: Tensor, p: float) -> str | None:
    """The draw that makes ``x``'s mask here, or ``None`` where PyTorch's functions do (off CPU, p = 1, or the
    ``bernoulli`` draw)."""
    if x.device.type != "cpu" or p >= 1.0:
        return None
    draw = _fixed_draw or mask_draw()
    return None if draw == "bernoulli" else draw


def _kept(shape, p: float, draw: str) -> Tensor:
    """bool ``shape``: the keep mask :math:`[u_i \\ge p]` from ``draw`` (``uniform`` or ``words``)."""
    return torch.rand(shape) >= p if draw == "uniform" else words_kept(shape, p)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """:math:`\\mathrm{Drop}_p(x)` when ``training`` (the identity otherwise, or when p = 0). x: any shape."""
    if not training or p == 0.0:
        return x
    draw = _own_draw(x, p)
    if draw is None:
        return F.dropout(x, p, True)
    return x * _kept(x.shape, p, draw).to(x.dtype).mul_(1.0 / (1.0 - p))    # 1/(1-p) where kept, else 0


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


def attend(scores: Tensor, v: Tensor, allowed: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    r"""Attention from given scores, with dropout on the probabilities:

    .. math:: \mathrm{Drop}_p\big(\mathrm{softmax}(S + M)\big)\, V
              = \big(\mathrm{softmax}(S + M) \odot m\big)\, \frac{V}{1 - p},\qquad
              M_{ij} = 0 \text{ if allowed}_{ij} \text{ else } -\infty

    (the mask's 1/(1 − p) moved onto V, which is :math:`L_q / d_h` times smaller than the probabilities).
    Shapes: scores ``[B, H, Lq, Lk]``, v ``[B, H, Lk, d_v]``, allowed bool broadcastable to ``[B, H, Lq, Lk]``
    (every row must allow one key) -> ``[B, H, Lq, d_v]``. The mask enters as an additive bias, whose
    gradient is nothing to compute (a masked entry's probability, and so its gradient, is 0 anyway).
    """
    bias = torch.zeros(allowed.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~allowed, float("-inf"))
    probs = (scores + bias).softmax(-1)
    if not training or p == 0.0:
        return probs @ v
    draw = _own_draw(probs, p)
    if draw is None:
        return F.dropout(probs, p, True) @ v
    return (probs * _kept(probs.shape, p, draw).to(probs.dtype)) @ (v * (1.0 / (1.0 - p)))


def attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    r"""Scaled dot-product attention with dropout on the attention probabilities:

    .. math:: \mathrm{Drop}_p\big(\mathrm{softmax}(q k^\top / \sqrt{d_h} + M)\big)\, v,\qquad
              M_{ij} = 0 \text{ if allowed}_{ij} \text{ else } -\infty

    Shapes: q ``[B, H, Lq, d_h]``, k and v ``[B, H, Lk, d_h]``, allowed bool broadcastable to
    ``[B, H, Lq, Lk]`` (every row must allow one key) -> ``[B, H, Lq, d_h]``. Without dropout, or where
    ``bernoulli_`` makes the masks (:func:`mask_draw`), this is
    :func:`torch.nn.functional.scaled_dot_product_attention` (which with dropout on CPU takes its unfused
    path and draws the mask with ``bernoulli_``); otherwise :func:`attend` on :math:`(q / \sqrt{d_h}) k^\top`,
    the scale applied to q, :math:`L_k / d_h` times smaller than the scores.
    """
    if not training or p == 0.0 or _own_draw(q, p) is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p if training else 0.0)
    return attend((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), v, allowed, p, training)
