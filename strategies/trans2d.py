r"""Trans2D: Singer, Roitman, Eshel, Nus, Guy, Levi, Hasson, Kiperwasser, "Sequential Modeling with
Multiple Attributes for Watchlist Recommendation in E-Commerce", WSDM 2022 (arXiv 2110.11072).
Fusion stage: holistic (joint attention over the positions x channels grid).

Input grid: C = 1 + M channels per position (item ID, then each modality channel of
:mod:`strategies.fusion`), the position embedding added to every channel:

.. math:: X_{i,a} = \sqrt{d}\, x_{i,a} + p_i,\qquad X \in \mathbb{R}^{L \times C \times d}

Blocks (pre-LayerNorm) use **Linear2D** (separate weights per channel, :math:`W \in \mathbb{R}^{C
\times d_{in} \times d_{out}}`) for Q, K, V, output and FFN, and **Attention2D** in its full
cell-to-cell form (fusionbench reference form, specs/baselines.md):

.. math::
    A_{(i,a),(j,b)} = \frac{Q_{i,a} \cdot K_{j,b}}{\sqrt{d_h}}\ \ (j \le i),\qquad
    O_{i,a} = \sum_{j \le i,\ b} \mathrm{softmax}_{(j,b)}(A_{(i,a),\cdot})\, V_{j,b}

so every cell attends to every channel of every earlier real position (item-item,
attribute-attribute and item-attribute patterns) at O(L²C²d) cost. Readout and item side:

.. math::
    P_i = W_r\,[H_{i,1}; \dots; H_{i,C}] + b_r,\qquad
    \hat y_v = \langle P_L,\ W_r [e_v; c_1(v); \dots; c_M(v)] + b_r \rangle

(``target="id"``: against ID embeddings). The paper's reduced "decomposed" attention is not
implemented (its coefficients are unverified, see specs/baselines.md). One causal pass per sequence.

Shapes:
    items ``[B, L]`` -> grid ``[B, L, C, d]`` -> hidden ``[B, L, d]`` -> encode ``[B, d]``;
    item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.dropout import Dropout, attention
from fusionbench.options import Ge, Lt
from fusionbench.registry import STRATEGIES
from fusionbench.space import Uniform
from fusionbench.strategy import CausalStrategy
from strategies.backbones import causal_allowed, embedding_init_, forward_positions
from strategies.fusion import ModalityInputs, SequenceOptions


class Linear2D(nn.Module):
    r"""Per-channel linear map :math:`y_{\cdot,c} = x_{\cdot,c} W_c + b_c`.

    Shapes: x ``[..., C, d_in]`` -> ``[..., C, d_out]``; weight ``[C, d_in, d_out]``, bias ``[C, d_out]``.
    """

    def __init__(self, channels: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(channels, d_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])       # nn.Linear's default, per channel
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...ci,cio->...co", x, self.weight) + self.bias

    def extra_repr(self) -> str:
        c, i, o = self.weight.shape
        return f"channels={c}, d_in={i}, d_out={o}"


class Attention2D(nn.Module):
    """Full cell-to-cell multi-head attention over a (position, channel) grid, causal on positions.

    Shapes: x ``[B, L, C, d]``, allowed ``[B, L, L]`` bool (position-level) -> ``[B, L, C, d]``.
    """

    def __init__(self, channels: int, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = Linear2D(channels, dim, 3 * dim)
        self.out = Linear2D(channels, dim, dim)

    def cell_allowed(self, allowed: Tensor, channels: int) -> Tensor:
        """``[B, L*C, L*C]``: cell (i, a) may see cell (j, b) iff position i may see position j."""
        return allowed.repeat_interleave(channels, 1).repeat_interleave(channels, 2)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, length, c, d = x.shape
        q, k, v = self.qkv(x).reshape(b, length * c, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, self.cell_allowed(allowed, c)[:, None], self.dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, length, c, d))


class Block2D(nn.Module):
    """Pre-LayerNorm transformer block on the grid: Attention2D and a Linear2D FFN."""

    def __init__(self, channels: int, dim: int, heads: int, dropout: float, ffn_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention2D(channels, dim, heads, dropout)
        self.ffn = nn.Sequential(Linear2D(channels, dim, ffn_dim), nn.GELU(), Dropout(dropout),
                                 Linear2D(channels, ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        h = h + self.drop(self.attn(self.norm1(h), allowed))
        return h + self.drop(self.ffn(self.norm2(h)))


@dataclass(frozen=True)
class Trans2DOptions(SequenceOptions):
    """``target``: fused item embeddings (the readout Linear over the item's own channels) or ID only."""

    dropout: Annotated[float, Ge(0), Lt(1)] = 0.3
    target: Literal["fused", "id"] = "fused"


@STRATEGIES.register("trans2d")
class Trans2D(CausalStrategy):
    """Trans2D (WSDM 2022): Linear2D + full Attention2D over positions x channels."""

    Options = Trans2DOptions
    search_space = {"feature_dropout": Uniform(0.0, 0.5)}
    fusion_stage = "holistic"
    paper = "Singer et al., WSDM 2022 (arXiv 2110.11072)"
    notes = "Attention over positions x channels jointly."

    def __init__(self, ctx: StrategyContext, opts: Trans2DOptions):
        super().__init__(ctx, opts)
        d = opts.dim
        self.item = nn.Embedding(ctx.n_items + 1, d, padding_idx=0)
        self.side = ModalityInputs(ctx, d, opts.feature_dropout)
        self.n_channels = c = 1 + len(self.side)
        self.pos = nn.Embedding(ctx.max_len, d)
        self.drop = Dropout(opts.dropout)
        self.blocks = nn.ModuleList(Block2D(c, d, opts.heads, opts.dropout, opts.ffn_mult * d)
                                    for _ in range(opts.layers))
        self.norm = nn.LayerNorm(d)
        self.readout = nn.Linear(c * d, d)
        self.scale = math.sqrt(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        embedding_init_(self.item.weight)

    def _cells(self, items: Optional[Tensor] = None, present=None, shown=None) -> Tensor:
        """``[..., C, d]``: each item's ID embedding and modality channels (``None``: every item's, the
        ``[n_items + 1, C, d]`` table, without gathering)."""
        if items is None:
            return torch.cat([self.item.weight[:, None, :], self.side.table()], -2)
        return torch.cat([self.item(items)[..., None, :], self.side.lookup(items, present, shown)], -2)

    def grid(self, batch: SeqBatch) -> Tensor:
        """``[B, L, C, d]``: final states of every (position, channel) cell, zeros at padding."""
        mask = batch.mask
        x = self._cells(batch.items, batch.present, batch.shown) * self.scale
        h = self.drop(x + self.pos(forward_positions(mask, self.ctx.max_len))[:, :, None])
        allowed = causal_allowed(mask)
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h) * mask[..., None, None]

    def hidden(self, batch: SeqBatch) -> Tensor:
        return self.readout(self.grid(batch).flatten(-2))

    def item_embeddings(self) -> Tensor:
        if self.opts.target == "id":
            return self.item.weight
        return self.readout(self._cells().flatten(-2))

