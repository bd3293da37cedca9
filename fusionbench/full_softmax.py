r"""Full-softmax cross-entropy of states against every item, formed in row blocks that stay in cache.

For states :math:`H` ``[S, d]``, item vectors :math:`E` ``[n, d]`` and targets :math:`t` ``[S]`` in
``0..n-1``, with scores :math:`Z = H E^\top` ``[S, n]``:

.. math::
    \mathcal L = \frac1S \sum_s \Big(\log \sum_j e^{z_{sj}} - z_{s t_s}\Big), \qquad
    G = \frac{\partial \mathcal L}{\partial Z} = \frac{\mathrm{softmax}(Z) - \mathrm{onehot}(t)}{S}, \qquad
    \frac{\partial \mathcal L}{\partial H} = G E, \qquad \frac{\partial \mathcal L}{\partial E} = G^\top H.

``F.cross_entropy(H @ E.T, t)`` computes the same, but holds :math:`Z` and its gradient whole (``[S, n]``
each: for a causal strategy on Beauty, a batch's every target position against 12,101 items, tens to
hundreds of MB) and streams them through memory five times (product, log-softmax, its backward, two
products). Above 32 MiB (``WHOLE_BYTES``, glibc's largest mmap threshold) each of those tensors is a
fresh mapping the OS zero-fills page by page, every step. There :func:`cross_entropy` forms :math:`Z` a
block of rows at a time, sized to stay in a core's L2 cache (``BLOCK_BYTES``), keeps only each row's
log-sum-exp, and forms the block again in the backward pass, where it becomes its gradient in place and
feeds both products: one more ``[S, d] x [d, n]`` product (four instead of three) for none of the mapping
and less memory traffic (docs/performance.md has the measured effect). Smaller scores, which malloc serves
again from its heap, and scores off the CPU (one large product is what an accelerator does best) go
through ``F.cross_entropy`` over the whole product. Under autocast the blocked products run in the
autocast dtype and the softmax in float32, as ``F.cross_entropy`` over autocast scores does; their item
gradient :math:`G^\top H` is summed in float32 over groups of blocks (``GROUP_BYTES`` of gradient rows per
product) rather than block by block, each of whose ``[n, d]`` products would be another pass over the table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_BYTES = 3 << 20   # float32 scores per row block: 3 MiB, within a core's L2 cache
WHOLE_BYTES = 32 << 20  # whole [S, n] float32 scores up to this size: glibc's largest mmap threshold
GROUP_BYTES = 16 << 20  # low-precision gradient rows gathered for one item-gradient product: under WHOLE_BYTES


def group_rows(n_items: int, dtype: torch.dtype) -> int:
    """Rows of ``dtype`` gradient gathered for one item-gradient product: ``GROUP_BYTES`` over ``n_items``
    columns, at least one block (:func:`block_rows`)."""
    return max(block_rows(n_items), GROUP_BYTES // (dtype.itemsize * n_items))


def block_rows(n_items: int) -> int:
    """Rows per score block: ``BLOCK_BYTES`` of float32 scores over ``n_items`` columns, at least one."""
    return max(1, BLOCK_BYTES // (4 * n_items))


def cross_entropy(states: Tensor, items: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``softmax(states @ items.T)`` at ``targets``: states ``[S, d]``, items
    ``[n, d]``, targets ``[S]`` (``0..n-1``) -> scalar; the same value and gradients as
    ``F.cross_entropy(states @ items.T, targets)``, without ``[S, n]`` scores above ``WHOLE_BYTES`` on
    the CPU."""
    if states.device.type != "cpu" or 4 * len(states) * len(items) <= WHOLE_BYTES:
        return whole_cross_entropy(states, items, targets)
    return _BlockedCrossEntropy.apply(states, items, targets,
                                      cpu_autocast_dtype() or torch.promote_types(states.dtype, items.dtype))


def whole_cross_entropy(states: Tensor, items: Tensor, targets: Tensor) -> Tensor:
    """The same loss over the whole ``[S, n]`` product (``F.cross_entropy``): :func:`cross_entropy`'s form
    below ``WHOLE_BYTES`` and off the CPU, and the definition its tests hold the blocked form to."""
    return F.cross_entropy(states @ items.T, targets)


def cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of CPU autocast where it is on, else None (torch 2.4's device-type calls; the DGL stack's
    torch 2.2 has only the ``*_cpu_*`` forms)."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class _BlockedCrossEntropy(torch.autograd.Function):
    """The autograd form of :func:`cross_entropy`; products in ``dtype``, softmax in float32 (float64 for
    float64 inputs)."""

    @staticmethod
    def forward(ctx, states: Tensor, items: Tensor, targets: Tensor, dtype: torch.dtype) -> Tensor:
        with torch.autocast("cpu", enabled=False):
            h, e = states.to(dtype), items.to(dtype)
            acc = torch.promote_types(dtype, torch.float32)                       # softmax dtype
            rows = block_rows(len(e))
            lse = torch.empty(len(h), dtype=acc)
            picked = torch.empty(len(h), dtype=acc)
            for start in range(0, len(h), rows):
                z = (h[start:start + rows] @ e.T).to(acc)                          # [rows, n]
                lse[start:start + rows] = torch.logsumexp(z, 1)
                picked[start:start + rows] = z.gather(1, targets[start:start + rows, None])[:, 0]
        ctx.save_for_backward(h, e, targets, lse)
        ctx.dtypes = states.dtype, items.dtype
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, e, targets, lse = ctx.saved_tensors
        states_dtype, items_dtype = ctx.dtypes
        want_h, want_e = ctx.needs_input_grad[:2]
        scale = grad.to(lse.dtype) / len(h)
        grad_h = torch.empty_like(h) if want_h else None
        grad_e = torch.zeros(e.shape, dtype=lse.dtype) if want_e else None
        rows = block_rows(len(e))
        # products in a lower precision than the sum's (bf16): the item gradient G^T H is formed once per group
        # of blocks, their G rows gathered in ``held``, and added to the float32 sum; an [n, d] product per
        # block, cast and added, would be a pass over the whole item table per block
        low = want_e and h.dtype != grad_e.dtype
        low_h = h.dtype not in (torch.float32, torch.float64)   # bf16: no out= product (fusionbench.bf16)
        group = group_rows(len(e), h.dtype) if low else rows
        held = torch.empty(min(group, len(h)), len(e), dtype=h.dtype) if low else None
        for first in range(0, len(h), group):
            last = min(first + group, len(h))
            for start in range(first, last, rows):
                stop = min(start + rows, last)
                hb, tb = h[start:stop], targets[start:stop]
                g = (hb @ e.T).to(lse.dtype)                                        # Z block, then G block
                g.sub_(lse[start:stop, None]).exp_().mul_(scale)
                g.scatter_add_(1, tb[:, None], (-scale).expand(len(tb), 1))
                if held is not None:
                    g = held[start - first:stop - first].copy_(g)
                else:
                    g = g.to(h.dtype)
                if want_h and low_h:
                    grad_h[start:stop] = g @ e       # functional: fusionbench.bf16 may form it in float32
                elif want_h:
                    torch.mm(g, e, out=grad_h[start:stop])
                if want_e and held is None:
                    grad_e.addmm_(g.T, hb)
            if held is not None:
                grad_e.add_(held[:last - first].T @ h[first:last])                 # summed in the softmax dtype
        return (None if grad_h is None else grad_h.to(states_dtype),
                None if grad_e is None else grad_e.to(items_dtype), None, None)
