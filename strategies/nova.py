r"""NOVA: Liu, Li, Cai, Dong, Zhu, Shang, "Noninvasive Self-attention for Side Information Fusion in
Sequential Recommendation", AAAI 2021. Fusion stage: attention (side information enters the
attention scores only).

Item stream :math:`H^0 = \sqrt{d}\,E_{v}` (pure ID embeddings, no positions). In every layer the
current (layer-normalised) item stream is fused with the side information, here the position
embedding and every modality channel of :mod:`strategies.fusion`, into an integrated
representation that feeds queries and keys only; values come from the item stream:

.. math::
    R_t = \mathcal F\big(h_t,\ p_t,\ c_1(v_t), \dots, c_M(v_t)\big),\qquad
    \mathrm{Attn} = \mathrm{softmax}\Big(\frac{(R W_Q)(R W_K)^\top}{\sqrt{d_h}} + M_{causal}\Big)\,(H W_V)

with :math:`\mathcal F` ∈ {``sum`` (NOVA's "add"), ``concat`` (+ Linear), ``gate`` (NOVA's
"gating")}, one fusion per layer. Because the side features never enter V, the output stays in
item space and items are scored against the ID embeddings. The paper's BERT4Rec backbone is
replaced by the causal SASRec-style stack (specs/baselines.md [A]); one causal pass per sequence.

Shapes:
    items ``[B, L]`` -> side ``[B, L, 1 + M, d]`` -> hidden ``[B, L, d]`` -> encode ``[B, d]``;
    item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from fusionbench.context import StrategyContext
from fusionbench.registry import STRATEGIES
from fusionbench.space import Choice, Uniform
from strategies.backbones import ScoredTransformer, split_heads
from strategies.fusion import AttentionLevelStrategy, ChannelFusion, SequenceOptions


class NonInvasiveScorer(nn.Module):
    r"""Attention scores from the integrated representation :math:`R = \mathcal F(h, \text{side})`.

    Shapes: x ``[B, L, d]`` (item stream), side ``[B, L, S, d]`` -> scores ``[B, heads, L, L]``.
    """

    def __init__(self, dim: int, heads: int, n_side: int, fusion: str):
        super().__init__()
        self.heads = heads
        self.fuse = ChannelFusion(1 + n_side, dim, fusion)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)

    def integrated(self, x: Tensor, side: Tensor) -> Tensor:
        """R ``[B, L, d]``."""
        return self.fuse(torch.cat([x[..., None, :], side], -2))

    def forward(self, x: Tensor, side: Tensor) -> Tensor:
        r = self.integrated(x, side)
        q, k = split_heads(self.query(r), self.heads), split_heads(self.key(r), self.heads)
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


@dataclass(frozen=True)
class NOVAOptions(SequenceOptions):
    """``fusion``: the side-information fusion F of every layer (NOVA's add / concat / gating)."""

    fusion: Literal["sum", "concat", "gate"] = "gate"


@STRATEGIES.register("nova")
class NOVA(AttentionLevelStrategy):
    """NOVA (AAAI 2021): side information in queries and keys, pure item stream in values."""

    Options = NOVAOptions
    search_space = {"fusion": Choice(("sum", "concat", "gate")), "feature_dropout": Uniform(0.0, 0.5)}
    fusion_stage = "attention"
    paper = "Liu, Li, Cai, Dong, Zhu, Shang, AAAI 2021"
    notes = "Side information enters queries and keys only; values from item IDs."

    def __init__(self, ctx: StrategyContext, opts: NOVAOptions):
        super().__init__(ctx, opts)
        d = opts.dim
        self.init_streams(ctx, d, d, opts.feature_dropout)
        n_side = 1 + len(self.side)
        scorers = [NonInvasiveScorer(d, opts.heads, n_side, opts.fusion) for _ in range(opts.layers)]
        self.encoder = ScoredTransformer(d, opts.heads, opts.dropout, opts.ffn_mult * d, scorers)
        self.reset_parameters()


