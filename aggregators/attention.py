"""Shared tensor helpers of the dense aggregators: masks, relation unions, masked softmax, typed maps.

Everything here works on whole batches (no loop over graphs or nodes) and never builds a
``[B, N, N, d]`` tensor. Conventions are those of :mod:`aggregators.base`:
``adj [B, R, N, N]`` bool with ``adj[b, r, i, j]`` = edge j -> i of relation r, ``node_mask [B, N]``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from aggregators.base import NODE_PAD


def pair_mask(node_mask: Tensor) -> Tensor:
    """bool ``[B, N, N]``: True where both ends of a pair are real nodes."""
    return node_mask[:, :, None] & node_mask[:, None, :]


def zero_padded(x: Tensor, node_mask: Tensor) -> Tensor:
    """``x`` with the rows of padded nodes set to 0 (also when they hold inf or NaN).

    Shapes: x [B, N, d], node_mask [B, N] -> [B, N, d].
    """
    return x.masked_fill(~node_mask[..., None], 0.0)


def masked_adjacency(adj: Tensor, node_mask: Tensor, channels: Optional[Sequence[int]] = None) -> Tensor:
    """``adj`` restricted to real pairs (and optionally to some relation channels).

    Shapes: adj [B, R, N, N] bool, node_mask [B, N] -> [B, R', N, N] bool.
    """
    if channels is not None:
        adj = adj[:, list(channels)]
    return adj & pair_mask(node_mask)[:, None]


def adjacency_rows(adj: Tensor, rows: Tensor) -> Tensor:
    """The in-edges of the query nodes ``rows[b, q]`` only: ``adj[b, :, rows[b, q], :]``.

    Shapes: adj [B, R, N, N], rows [B, Q] long -> [B, R, Q, N].
    """
    at = torch.arange(adj.shape[0], device=adj.device)[:, None]
    return adj.transpose(1, 2)[at, rows].transpose(1, 2)


def relation_union(adj: Tensor, node_mask: Tensor, channels: Optional[Sequence[int]] = None,
                   self_loops: Optional[bool] = None) -> Tensor:
    """Union over relations of the edges between real nodes.

    Args:
        channels: relation channels to merge (all when ``None``).
        self_loops: ``True`` sets the diagonal of every real node, ``False`` clears the whole
            diagonal, ``None`` keeps the diagonal as the chosen channels give it.

    Shapes: adj [B, R, N, N] bool, node_mask [B, N] -> [B, N, N] bool.
    """
    a = masked_adjacency(adj, node_mask, channels).any(dim=1)
    if self_loops is None:
        return a
    eye = torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    if self_loops:
        return a | (eye & node_mask[:, :, None])
    return a & ~eye


def masked_softmax(scores: Tensor, mask: Tensor, dim: int | tuple[int, ...] = -1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to ``mask``; all-masked slices give zeros.

    Unlike a softmax over ``-inf``-filled (NaN) or ``-9e15``-filled (uniform) scores, a node
    without any neighbour receives exactly zero weight everywhere, and gradients stay finite.
    ``dim`` may be a tuple (a joint softmax, e.g. over relations and neighbours).

    Shapes: scores [...], mask broadcastable to scores (bool) -> same shape as scores.
    """
    mask = mask.expand_as(scores)
    s = scores.masked_fill(~mask, float("-inf"))
    top = s.amax(dim=dim, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(s - top)                               # exactly 0 where masked
    z = e.sum(dim=dim, keepdim=True)
    return e / z.clamp_min(torch.finfo(e.dtype).tiny)


def inv_sqrt_or_zero(deg: Tensor) -> Tensor:
    """``deg ** -1/2`` with 0 where ``deg`` is 0."""
    return torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))


def mean_aggregate(a: Tensor, x: Tensor) -> Tensor:
    """Mean of the in-neighbours' rows (0 for a node without in-neighbours).

    Shapes: a [..., N, N] bool or float (a[..., i, j]: j -> i), x [..., N, d] -> [..., N, d].
    """
    a = a.to(x.dtype)
    return (a @ x) / a.sum(-1, keepdim=True).clamp_min(1.0)


def typed_linear(x: Tensor, node_type: Tensor, weight: Tensor) -> Tensor:
    """Node-type-specific linear map ``x_i W_{t_i}``: nodes are grouped by type and each group meets
    only its own matrix (T small matmuls instead of one T-times-wider matmul and a gather, and never a
    ``[B, N, d, d]`` gather). Padding nodes (type 0, ``base.NODE_PAD``) map to zeros without a matmul;
    types above T-1 are clamped to T-1.

    Shapes: x [B, N, d_in], node_type [B, N] long in 0..T-1, weight [T, d_in, d_out] -> [B, N, d_out].
    """
    t, d_in, d_out = weight.shape
    flat_type = node_type.reshape(-1).clamp(0, t - 1)
    order = torch.argsort(flat_type, stable=True)
    sizes = torch.bincount(flat_type, minlength=t).tolist()
    n_pad = sizes[NODE_PAD]
    groups = x.reshape(-1, d_in).index_select(0, order[n_pad:]).split(sizes[NODE_PAD + 1:])
    mapped = torch.cat([x.new_zeros(n_pad, d_out)] +
                       [group @ weight[i] for i, group in enumerate(groups, start=NODE_PAD + 1)])
    out = torch.empty_like(mapped).index_copy_(0, order, mapped)
    return out.view(*x.shape[:-1], d_out)


def glorot_(tensor: Tensor) -> Tensor:
    """Glorot/Xavier uniform over the last two dimensions (leading dimensions are a stack)."""
    fan_in, fan_out = tensor.shape[-2], tensor.shape[-1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def check_divisible(name: str, dim: int, heads: int, concat: bool = True) -> None:
    """Raise :class:`OptionError` if ``dim`` cannot be split over ``heads`` concatenated heads."""
    from fusionbench.options import OptionError

    if concat and dim % heads:
        raise OptionError(f"aggregator {name!r}: option 'heads' ({heads}) must divide the hidden size "
                          f"{dim} when heads are concatenated")
