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


def channel_cross_entropy(states: Tensor, items: Tensor, targets: Tensor, weights: Tensor, beta: float) -> Tensor:
    r"""The loss of a model that scores with C channels, each its own states against its own item
    vectors, fused by per-row weights: states ``[S, C, d]``, items ``[n, C, d]``, targets ``[S]``
    (``0..n-1``), weights ``[S, C]`` -> scalar

    .. math::
        Z^c = H^c {E^c}^\top,\qquad F = \sum_c \mathrm{diag}(w^c)\, Z^c,\qquad
        \mathcal L = \mathrm{CE}(F, t) + \beta \sum_c \mathrm{CE}(Z^c, t)

    (CE: the mean over rows of :func:`cross_entropy`'s loss; :math:`F` is the product of the weighted,
    concatenated states with the concatenated items). Above ``WHOLE_BYTES`` of ``[S, n]`` scores on the
    CPU, outside autocast, it is formed in row blocks: each block's C channel products are formed once and
    give all C + 1 softmaxes, forward and backward, where the products per loss would form the fused scores
    again (C times the work of a channel's) and each channel's scores once more. With
    :math:`G^F = (\mathrm{softmax}(F) - Y)/S` and :math:`G^c = w^c \circ G^F + \beta(\mathrm{softmax}(Z^c) - Y)/S`,

    .. math::
        \frac{\partial \mathcal L}{\partial H^c} = G^c E^c,\qquad
        \frac{\partial \mathcal L}{\partial E^c} = {G^c}^\top H^c,\qquad
        \frac{\partial \mathcal L}{\partial w^c_s} = \sum_j G^F_{sj} Z^c_{sj}.
    """
    if states.device.type != "cpu" or cpu_autocast_dtype() is not None or \
            4 * len(states) * len(items) <= WHOLE_BYTES:
        return whole_channel_cross_entropy(states, items, targets, weights, beta)
    return _BlockedChannelCrossEntropy.apply(states, items, targets, weights, beta)


def whole_channel_cross_entropy(states: Tensor, items: Tensor, targets: Tensor, weights: Tensor,
                                beta: float) -> Tensor:
    """:func:`channel_cross_entropy` as one :func:`cross_entropy` per loss: the fused scores as one product
    of the weighted, concatenated states with the concatenated items, and each channel's; its form on
    small scores, off the CPU and under autocast, and the definition its tests hold the blocked form to."""
    loss = cross_entropy((weights[..., None] * states).flatten(1), items.flatten(1), targets)
    return loss + beta * each_channel_cross_entropy(states, items, targets) if beta > 0 else loss


def each_channel_cross_entropy(states: Tensor, items: Tensor, targets: Tensor) -> Tensor:
    r""":math:`\sum_c \mathrm{CE}(H^c {E^c}^\top, t)`, one :func:`cross_entropy` per channel: states
    ``[S, C, d]``, items ``[n, C, d]``, targets ``[S]`` -> scalar."""
    return sum(cross_entropy(states[:, c], items[:, c], targets) for c in range(states.shape[1]))


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


def weighted_sum(blocks: list[Tensor], weights: Tensor) -> Tensor:
    """``sum_c weights[:, c, None] * blocks[c]``: blocks C x ``[r, n]``, weights ``[r, C]``, in one new block."""
    out = blocks[0] * weights[:, :1]
    for c in range(1, len(blocks)):
        out.addcmul_(blocks[c], weights[:, c:c + 1])
    return out


class _BlockedChannelCrossEntropy(torch.autograd.Function):
    """The autograd form of :func:`channel_cross_entropy` in row blocks (float32, or float64 for float64
    inputs)."""

    @staticmethod
    def forward(ctx, states: Tensor, items: Tensor, targets: Tensor, weights: Tensor, beta: float) -> Tensor:
        h = [states[:, c].contiguous() for c in range(states.shape[1])]              # C x [S, d]
        e = [items[:, c].contiguous() for c in range(items.shape[1])]                # C x [n, d]
        rows = block_rows(len(items))                     # C blocks of scores at a time
        lse = torch.empty(len(e) + 1, len(states), dtype=states.dtype)              # fused first, then C
        picked = torch.empty_like(lse)
        for start in range(0, len(states), rows):
            stop, tb = min(start + rows, len(states)), targets[start:start + rows, None]
            z = [hc[start:stop] @ ec.T for hc, ec in zip(h, e)]                      # C x [rows, n]
            fused = weighted_sum(z, weights[start:stop])
            for k, scores in enumerate((fused, *z)):
                lse[k, start:stop] = torch.logsumexp(scores, 1)
                picked[k, start:stop] = scores.gather(1, tb)[:, 0]
        ctx.save_for_backward(*h, *e, targets, weights, lse)
        ctx.beta = beta
        each = (lse - picked).mean(1)
        return each[0] + beta * each[1:].sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        *tables, targets, weights, lse = ctx.saved_tensors
        n_channels = len(tables) // 2
        h, e = tables[:n_channels], tables[n_channels:]
        want_h, want_e, _, want_w, _ = ctx.needs_input_grad
        scale = grad.to(lse.dtype) / len(targets)
        grad_h = [torch.empty_like(hc) for hc in h] if want_h else None
        grad_e = [torch.zeros_like(ec) for ec in e] if want_e else None
        grad_w = torch.empty_like(weights) if want_w else None
        rows = block_rows(len(e[0]))
        for start in range(0, len(targets), rows):
            stop = min(start + rows, len(targets))
            tb, wb = targets[start:stop, None], weights[start:stop]
            z = [hc[start:stop] @ ec.T for hc, ec in zip(h, e)]                      # C x [rows, n]
            g_fused = weighted_sum(z, wb)                                           # F block, then G^F
            g_fused.sub_(lse[0, start:stop, None]).exp_().mul_(scale)
            g_fused.scatter_add_(1, tb, (-scale).expand(len(tb), 1))
            for c, zc in enumerate(z):
                if grad_w is not None:
                    grad_w[start:stop, c] = (g_fused * zc).sum(1)
                g = zc.sub_(lse[c + 1, start:stop, None]).exp_().mul_(ctx.beta * scale)   # Z^c block -> G^c
                g.scatter_add_(1, tb, (-ctx.beta * scale).expand(len(tb), 1))
                g.addcmul_(wb[:, c, None], g_fused)
                if grad_h is not None:
                    torch.mm(g, e[c], out=grad_h[c][start:stop])
                if grad_e is not None:
                    grad_e[c].addmm_(g.T, h[c][start:stop])
        return (None if grad_h is None else torch.stack(grad_h, 1), None if grad_e is None else torch.stack(grad_e, 1),
                None, grad_w, None)
