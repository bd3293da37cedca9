r"""Shared sequence encoders. Every transformer- or GRU-based strategy uses these, never a copy:
``CausalTransformer`` (SASRec and the transformer variants), ``ScoredTransformer`` (attention scores
supplied by the strategy, values from the item stream: NOVA, DIF-SR) and ``CausalGRU``.

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
from torch import Tensor, nn

from fusionbench.dropout import Dropout, attend, attention

NORMS = ("pre", "post")  # LayerNorm placement of CausalTransformer and ScoredTransformer


def forward_positions(mask: Tensor, max_len: int) -> Tensor:
    """mask ``[B, L]`` -> ``[B, L]``: 0 at the oldest real item, +1 per real item; 0 at padding."""
    return (mask.long().cumsum(1) - 1).clamp(min=0, max=max_len - 1)


def causal_allowed(mask: Tensor) -> Tensor:
    """mask ``[B, L]`` -> allowed ``[B, L, L]``: real query i sees real keys j <= i; every query also
    sees itself, so rows of padded queries stay finite (the same rule as :class:`CausalTransformer`)."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return (causal & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=mask.device)


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
        y = attention(q, k, v, allowed[:, None], self.dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class TransformerBlock(nn.Module):
    """One block; ``post_norm`` puts each LayerNorm after its residual sum instead of before the sub-layer."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int, post_norm: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        if self.post_norm:
            h = self.norm1(h + self.drop(self.attn(h, allowed)))
            return self.norm2(h + self.drop(self.ffn(h)))
        h = h + self.drop(self.attn(self.norm1(h), allowed))
        return h + self.drop(self.ffn(self.norm2(h)))


class CausalTransformer(nn.Module):
    """Causal transformer encoder over left-padded sequences.

    Args:
        dim: d. layers: number of blocks. heads: attention heads. dropout: on inputs, attention and
        sub-layers. max_len: L (size of the positional table). ffn_dim: hidden size of the FFN.
        norm: ``"pre"`` (the blocks above) or ``"post"`` (BERT/RecBole order: a LayerNorm on the input
        sum, each block's LayerNorms after its residual sums, no final LayerNorm).

    Shapes:
        x ``[B, L, d]`` input embeddings (without positions), mask ``[B, L]`` bool -> ``[B, L, d]``;
        rows at padded positions are zeros.
    """

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_len: int, ffn_dim: int,
                 norm: str = "pre"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
        self.max_len, self.post_norm = max_len, norm == "post"
        self.pos = nn.Embedding(max_len, dim)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout, ffn_dim, self.post_norm)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)  # post: on the input sum; pre: on the output

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = x + self.pos(forward_positions(mask, self.max_len))
        h = self.drop(self.norm(h) if self.post_norm else h)
        allowed = causal_allowed(mask)
        for block in self.blocks:
            h = block(h, allowed)
        return (h if self.post_norm else self.norm(h)) * mask[..., None]


def normal_init_(module: nn.Module, std: float = 0.02) -> None:
    """BERT/RecBole initialisation of every submodule: Linear and Embedding weights N(0, std), Linear
    biases 0, LayerNorms to (1, 0); Embedding padding rows zeroed."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()


def embedding_init_(weight: Tensor) -> None:
    """N(0, 1/d) init with the padding row zeroed (item embedding tables)."""
    nn.init.normal_(weight, std=1.0 / math.sqrt(weight.shape[1]))
    with torch.no_grad():
        weight[0].zero_()


class CausalGRU(nn.Module):
    r"""GRU over left-padded sequences that never reads padding before a real item.

    Each row is rotated so that its real items come first (``[v_1..v_n, 0..0]``), the GRU runs from
    the oldest real item, and the outputs are rotated back. Padding is only read after the last real
    item, and those outputs are discarded, so extra left padding changes nothing and the output at
    position t depends on the real items up to t only (one causal pass = all prefixes).

    .. math:: h_t = \mathrm{GRU}(\mathrm{Drop}(x_t), h_{t-1}),\qquad h_0 = 0

    Args:
        dim: d (input and hidden size). layers: stacked GRU layers. dropout: on the inputs (and
        between layers when ``layers > 1``).

    Shapes:
        x ``[B, L, d]``, mask ``[B, L]`` bool (left-padded) -> ``[B, L, d]``, zeros at padding.
    """

    def __init__(self, dim: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.drop = Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, length, d = x.shape
        n_pad = length - mask.long().sum(1, keepdim=True)                        # [B, 1]
        col = torch.arange(length, device=x.device)[None, :]
        first = ((col + n_pad) % length)[..., None]                              # real items first
        out, _ = self.gru(self.drop(x.gather(1, first.expand(-1, -1, d))))
        back = ((col - n_pad) % length)[..., None]
        return out.gather(1, back.expand(-1, -1, out.shape[-1])) * mask[..., None]


class ScoredAttention(nn.Module):
    r"""Multi-head attention with supplied scores and values from the item stream:

    .. math:: \mathrm{Attn}(H, S) = \mathrm{Drop}_p\big(\mathrm{softmax}(S + M_{causal})\big)\,(H W_V)\,W_O

    (:func:`fusionbench.dropout.attend`; p = ``dropout``, on the probabilities). Shapes:
        h ``[B, L, d]``, scores ``[B, heads, L, L]`` (pre-softmax), allowed ``[B, L, L]`` bool
        -> ``[B, L, d]``.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: Tensor, scores: Tensor, allowed: Tensor) -> Tensor:
        b, length, d = h.shape
        v = self.value(h).view(b, length, self.heads, d // self.heads).transpose(1, 2)
        y = attend(scores, v, allowed[:, None], self.dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class ScoredBlock(nn.Module):
    r"""Pre-LayerNorm transformer block whose attention scores come from ``scorer(LN(H), side)``:

    .. math::
        X = \mathrm{LN}(H),\quad H \leftarrow H + \mathrm{Drop}(\mathrm{Attn}(X, \mathrm{scorer}(X, s))),\quad
        H \leftarrow H + \mathrm{Drop}(\mathrm{FFN}(\mathrm{LN}(H)))

    or, with ``post_norm`` (BERT/RecBole order, as DIF-SR's reference layer),

    .. math::
        H \leftarrow \mathrm{LN}(H + \mathrm{Drop}(\mathrm{Attn}(H, \mathrm{scorer}(H, s)))),\quad
        H \leftarrow \mathrm{LN}(H + \mathrm{Drop}(\mathrm{FFN}(H)))

    ``scorer`` is any module mapping ``(x [B, L, d], side) -> [B, heads, L, L]``; side information
    enters the scores only, never the values (non-invasive fusion).
    """

    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int, scorer: nn.Module,
                 attn_dropout: float | None = None, post_norm: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.scorer = scorer
        self.attn = ScoredAttention(dim, heads, dropout if attn_dropout is None else attn_dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, h: Tensor, allowed: Tensor, side) -> Tensor:
        if self.post_norm:
            h = self.norm1(h + self.drop(self.attn(h, self.scorer(h, side), allowed)))
            return self.norm2(h + self.drop(self.ffn(h)))
        x = self.norm1(h)
        h = h + self.drop(self.attn(x, self.scorer(x, side), allowed))
        return h + self.drop(self.ffn(self.norm2(h)))


class ScoredTransformer(nn.Module):
    """Causal stack of :class:`ScoredBlock` (one scorer per layer) with a final LayerNorm (``norm="pre"``) or
    a LayerNorm on the input (``norm="post"``).

    Unlike :class:`CausalTransformer` no positional embedding is added to the item stream: the
    strategies that use it treat position as side information inside their scorers. ``norm`` places the
    blocks' LayerNorms as in :class:`CausalTransformer`.

    Shapes:
        x ``[B, L, d]`` item stream, mask ``[B, L]`` bool, side (whatever the scorers take)
        -> ``[B, L, d]``, zeros at padding.
    """

    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int, scorers, attn_dropout: float | None = None,
                 norm: str = "pre"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
        self.post_norm = norm == "post"
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(ScoredBlock(dim, heads, dropout, ffn_dim, s, attn_dropout, self.post_norm)
                                    for s in scorers)
        self.norm = nn.LayerNorm(dim)  # post: on the input; pre: on the output

    def forward(self, x: Tensor, mask: Tensor, side) -> Tensor:
        h = self.drop(self.norm(x) if self.post_norm else x)
        allowed = causal_allowed(mask)
        for block in self.blocks:
            h = block(h, allowed, side)
        return (h if self.post_norm else self.norm(h)) * mask[..., None]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``[B, L, heads * e]`` -> ``[B, heads, L, e]``."""
    b, length, d = x.shape
    return x.view(b, length, heads, d // heads).transpose(1, 2)
