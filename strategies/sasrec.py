r"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Fusion: none.

.. math::
    H = \mathrm{CausalTransformer}(E_{v_{1..L}}\,s),\qquad P = H_L,\qquad
    \hat y_v = \langle P, E_v \rangle

``init="scaled"`` (default): E ~ N(0, 1/d), s = √d as in SASRec; ``init="normal"``: every Linear and
Embedding weight N(0, 0.02) and s = 1 (RecBole's SASRec). ``norm`` places the LayerNorms
(:class:`~strategies.backbones.CausalTransformer`; ``"post"`` with ``init="normal"`` and ``ffn_mult=4`` is
RecBole's SASRec layout).

Item embeddings E ``[n_items + 1, d]`` are shared between input and output. ``item_bias=True`` adds a
learned per-item bias to the score, :math:`\hat y_v = \langle P, E_v \rangle + \beta_v` (not in SASRec;
BERT4Rec's output layer has one): an ablation of what late fusion's ID-only form adds to this model (its
shared output map gives a term :math:`b^\top (W e_v + b)` that tracks item popularity), written as one
more dimension, :math:`[P; 1] \cdot [E_v; \beta_v]`, so scoring and ranking stay the harness's.

Trained with one causal pass per sequence and a full-softmax cross-entropy at every position that has a
target (the same (prefix, target) pairs as the all-prefixes protocol). The original's sampled BCE loss is replaced by
full softmax so that strategies differ by fusion only (specs/baselines.md).

Shapes: items ``[B, L]`` -> encode ``[B, d]``; item_embeddings ``[n_items + 1, d]`` (``d + 1`` for both
with ``item_bias``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import Ge, Lt, PluginOptions, require
from fusionbench.registry import STRATEGIES
from fusionbench.strategy import CausalStrategy
from strategies.backbones import CausalTransformer, embedding_init_, normal_init_


@dataclass(frozen=True)
class SASRecOptions(PluginOptions):
    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(1)] = 2
    heads: Annotated[int, Ge(1)] = 2
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.5
    ffn_mult: Annotated[int, Ge(1)] = 1
    norm: Literal["pre", "post"] = "pre"
    init: Literal["scaled", "normal"] = "scaled"
    item_bias: bool = False

    ONLY_WHEN_SET = frozenset({"item_bias"})   # added after runs were stored

    def check(self) -> None:
        require(self.dim % self.heads == 0, f"option 'dim' ({self.dim}) must be divisible by 'heads' ({self.heads})")


@STRATEGIES.register("sasrec")
class SASRec(CausalStrategy):
    Options = SASRecOptions
    fusion_stage = "none"
    uses_modalities = False
    paper = "Kang & McAuley, ICDM 2018"
    notes = ("ID-only causal transformer; `norm=post`, `init=normal`, `ffn_mult=4` is RecBole's layout; "
             "`item_bias=true` adds a learned per-item score bias (an ablation, not in SASRec).")

    def __init__(self, ctx: StrategyContext, opts: SASRecOptions):
        super().__init__(ctx, opts)
        self.item = nn.Embedding(ctx.n_items + 1, opts.dim, padding_idx=0)
        self.encoder = CausalTransformer(opts.dim, opts.layers, opts.heads, opts.dropout, ctx.max_len,
                                         opts.ffn_mult * opts.dim, norm=opts.norm)
        self.scale = math.sqrt(opts.dim) if opts.init == "scaled" else 1.0
        self.bias = nn.Parameter(torch.zeros(ctx.n_items + 1)) if opts.item_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.opts.init == "normal":
            normal_init_(self)
        else:
            super().reset_parameters()
            embedding_init_(self.item.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def hidden(self, batch: SeqBatch) -> Tensor:
        """``[B, L, d]`` (``[B, L, d + 1]``, a last column of ones, with ``item_bias``): the representation
        after every position."""
        h = self.encoder(self.item(batch.items) * self.scale, batch.mask)
        return h if self.bias is None else torch.cat([h, torch.ones_like(h[..., :1])], -1)

    def item_embeddings(self) -> Tensor:
        if self.bias is None:
            return self.item.weight
        return torch.cat([self.item.weight, self.bias[:, None]], -1)

