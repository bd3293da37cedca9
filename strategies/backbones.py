r"""Shared sequence encoders. Every transformer- or GRU-based strategy uses these, never a copy.

``CausalTransformer``: SASRec-style stack of pre-LayerNorm blocks,

.. math::
    H \leftarrow H + \mathrm{Drop}(\mathrm{MHA}(\mathrm{LN}(H)))\,,\quad
    H \leftarrow H + \mathrm{Drop}(\mathrm{FFN}(\mathrm{LN}(H)))\,,\quad \text{output } \mathrm{LN}(H)

with causal attention over real positions only (position i attends to j <= i, never to padding).
Positions are counted from the oldest real item of the row (index 0), so extra left padding never
changes what a real position sees, and a prefix seen inside a longer causal row gets exactly the
positions it gets as a sample of its own (one causal pass = all prefixes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def forward_positions(mask: Tensor, max_len: int) -> Tensor:
    """mask ``[B, L]`` -> ``[B, L]``: 0 at the oldest real item, +1 per real item; 0 at padding."""
    return (mask.long().cumsum(1) - 1).clamp(min=0, max=max_len - 1)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention. x ``[B, L, d]``, allowed ``[B, L, L]`` bool."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        h = h + self.drop(self.attn(self.norm1(h), allowed))
        return h + self.drop(self.ffn(self.norm2(h)))


class CausalTransformer(nn.Module):
    """Causal transformer encoder over left-padded sequences.

    Args:
        dim: d. layers: number of blocks. heads: attention heads. dropout: on inputs, attention and
        sub-layers. max_len: L (size of the positional table). ffn_dim: hidden size of the FFN.

    Shapes:
        x ``[B, L, d]`` input embeddings (without positions), mask ``[B, L]`` bool -> ``[B, L, d]``;
        rows at padded positions are zeros.
    """

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_len: int, ffn_dim: int):
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout, ffn_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        length = x.shape[1]
        h = self.drop(x + self.pos(forward_positions(mask, self.max_len)))
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # real queries see earlier real keys; every query also sees itself, so padded rows stay finite
        allowed = (causal & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=x.device)
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h) * mask[..., None]


def embedding_init_(weight: Tensor) -> None:
    """N(0, 1/d) init with the padding row zeroed (item embedding tables)."""
    nn.init.normal_(weight, std=1.0 / math.sqrt(weight.shape[1]))
    with torch.no_grad():
        weight[0].zero_()
