r"""Shared modality machinery of every feature-aware strategy (one place, never copied).

**Channel inputs** (:class:`ModalityInputs`). For every named modality m of ``ctx.modalities`` (any
names, any number, possibly none) the frozen item features are projected to the model size and the
learned "missing" vector :math:`\mu_m` is substituted wherever the modality is absent:

.. math::
    c_m(v) = \begin{cases} \mathrm{Drop}(W_m f_m(v) + b_m) & \text{present}_m(v) \wedge
    \text{occurrence mask} \\ \mu_m & \text{otherwise} \end{cases}

A channel whose table has no dense features (``d_m = 0``, e.g. ``attr`` under ``features.attr=ids``, the
default: only attribute-id codes) uses the mean of learned code embeddings of the item's valid codes
instead of :math:`W_m f_m(v)`; an item without any valid code counts as absent. Absent items never
produce zeros pushed through a bias, and never NaN (specs/baselines.md, shared conventions).

**Channel fusion** (:class:`ChannelFusion`), over a stack of C channel vectors ``[..., C, d]``:

.. math::
    \mathrm{concat}: \sigma(W_f [x_1; \dots; x_C] + b_f),\qquad
    \mathrm{sum}: \sigma(\textstyle\sum_c x_c),\qquad
    \mathrm{gate}: \sigma(\textstyle\sum_c \alpha_c x_c),\ \alpha = \mathrm{softmax}_c(w_c^\top x_c + b_c)

with σ = identity (default) or GELU.

**Sequence backbones** (:class:`SequenceBackbone`): ``sasrec`` (the shared :class:`CausalTransformer`,
inputs scaled by √d as in SASRec) or ``gru4rec`` (the shared :class:`CausalGRU`); both give one
causal state per position, so strategies built on them train with one pass per sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.context import ModalityTable, SeqBatch, StrategyContext
from fusionbench.dropout import Dropout
from fusionbench.options import Ge, Lt, OptionError, PluginOptions, require
from fusionbench.strategy import CausalStrategy
from strategies.backbones import CausalGRU, CausalTransformer, embedding_init_, forward_positions

FUSION_OPS = ("concat", "sum", "gate")
ACTIVATIONS = ("identity", "gelu")
BACKBONES = ("sasrec", "gru4rec")


class ModalityChannel(nn.Module):
    """One modality channel: frozen table + projection (or code embeddings) + learned missing vector.

    Shapes:
        lookup: items ``[...]`` long, occurrence ``[...]`` bool or None -> ``[..., d]``;
        table: ``[n_items + 1, d]``.
    """

    def __init__(self, table: ModalityTable, dim: int, dropout: float):
        super().__init__()
        self.dim = dim
        self.uses_codes = table.dim == 0
        self.register_buffer("features", table.features.float(), persistent=False)
        self.register_buffer("codes", table.codes, persistent=False)
        present = table.present.clone()
        if self.uses_codes:
            present &= (table.codes >= 0).any(1) if table.codes.shape[1] else torch.zeros_like(present)
            self.pad_code = table.n_codes
            self.code_weight = nn.Parameter(torch.empty(table.n_codes + 1, dim))
            self.proj = None
        else:
            self.proj = nn.Linear(table.dim, dim)
        self.register_buffer("present", present, persistent=False)
        self.missing = nn.Parameter(torch.empty(dim))
        self.drop = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.missing, std=1.0 / math.sqrt(self.dim))
        if self.uses_codes:
            nn.init.normal_(self.code_weight, std=1.0 / math.sqrt(self.dim))
            with torch.no_grad():
                self.code_weight[self.pad_code].zero_()
        # self.proj (nn.Linear) is re-initialised by its own reset_parameters

    def raw(self, items: Optional[Tensor] = None) -> Tensor:
        """Projected channel vector ``[..., d]`` of every item in ``items`` (``None``: of every item, in id
        order), before missing substitution. A feature table is projected once per distinct item: a
        padded batch of ``[B, L]`` ids repeats the padding id and popular items many times."""
        if self.uses_codes:
            codes = self.codes if items is None else self.codes[items]            # [..., k]
            valid = codes >= 0
            emb = F.embedding(codes.masked_fill(~valid, self.pad_code), self.code_weight, padding_idx=self.pad_code)
            return emb.sum(-2) / valid.sum(-1, keepdim=True).clamp(min=1)
        if items is None:
            return self.proj(self.features)
        distinct, where = torch.unique(items, return_inverse=True)
        return self.proj(self.features[distinct])[where]

    def lookup(self, items: Optional[Tensor] = None, occurrence: Optional[Tensor] = None,
               shown: Optional[Tensor] = None) -> Tensor:
        """``items`` ``None``: every item (the table). ``shown`` (same shape as items): the items whose
        modality is shown instead (0 = missing)."""
        items = items if shown is None else shown
        present = self.present if items is None else self.present[items]
        if occurrence is not None:
            present = present & occurrence
        return torch.where(present[..., None], self.drop(self.raw(items)), self.missing)

    def table(self) -> Tensor:
        return self.lookup()


class ModalityInputs(nn.Module):
    """All modality channels of a context, in the context's (sorted) name order.

    Args:
        ctx: the strategy context (``ctx.modalities`` may hold any names, or none).
        dim: output size of every channel. dropout: on the projected features.

    Shapes:
        lookup: items ``[B, L]``, present (``SeqBatch.present``: name -> ``[B, L]`` bool, optional),
        shown (``SeqBatch.shown``: name -> ``[B, L]`` long, optional) -> ``[B, L, M, dim]``;
        table: ``[n_items + 1, M, dim]``; M = number of modalities (may be 0).
    """

    def __init__(self, ctx: StrategyContext, dim: int, dropout: float = 0.0):
        super().__init__()
        self.names = tuple(ctx.modalities)
        self.dim = dim
        self.n_items = ctx.n_items
        self.channels = nn.ModuleList(ModalityChannel(ctx.modalities[m], dim, dropout) for m in self.names)
        # follows .to(device) even without channels, so table() is made where the model lives
        self.register_buffer("anchor", torch.empty(0), persistent=False)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, items: Tensor, present: Optional[Mapping[str, Tensor]] = None,
               shown: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        present, shown = present or {}, shown or {}
        if not self.names:
            return items.new_zeros(*items.shape, 0, self.dim, dtype=torch.float)
        return torch.stack([ch.lookup(items, present.get(m), shown.get(m))
                            for m, ch in zip(self.names, self.channels)], -2)

    def table(self) -> Tensor:
        if not self.names:
            return self.anchor.new_zeros(self.n_items + 1, 0, self.dim)
        return torch.stack([ch.table() for ch in self.channels], -2)


def with_ids(item: Optional[nn.Embedding], side: Tensor, items: Optional[Tensor] = None) -> Tensor:
    """The channel stack ``[..., C, d]``: the ID embeddings of ``items [...]`` first (of the whole table
    ``[N + 1, d]`` when ``items`` is None; no ID channel when the strategy has none, ``item`` None), then
    the modality channels ``side [..., M, d]``."""
    if item is None:
        return side
    ids = item.weight if items is None else item(items)
    return torch.cat([ids[..., None, :], side], -2)


class IdChannelOptions:
    """Mixin of option classes with an ``ids`` and a ``target`` field (early, late): without the
    ID channel there are no ID embeddings to score against, so ``ids=False`` needs ``target="fused"``."""

    def check(self) -> None:
        super().check()
        require(self.ids or self.target == "fused",
                "option 'ids=false' needs target='fused' (no ID embeddings to score)")


def id_and_modality_channels(ctx: StrategyContext, dim: int, ids: bool,
                             feature_dropout: float) -> tuple[Optional[nn.Embedding], "ModalityInputs"]:
    """The item-ID embedding table (``None`` when ``ids`` is False) and the modality channels of a
    strategy; refuses a strategy that would have neither."""
    item = nn.Embedding(ctx.n_items + 1, dim, padding_idx=0) if ids else None
    side = ModalityInputs(ctx, dim, feature_dropout)
    if item is None and not len(side):
        raise OptionError("option 'ids=false' leaves no channel: the context has no modality "
                          "(use ids=true, or a dataset with modality features)")
    return item, side


class ChannelFusion(nn.Module):
    """Fuse C channel vectors into one: ``concat`` (+ Linear), ``sum`` or ``gate`` (see module doc).

    With a single channel ``sum`` and ``gate`` are the identity (no parameters); ``concat`` keeps its
    Linear so that the formula does not change with the number of channels.

    Shapes: x ``[..., C, d]`` -> ``[..., d]``.
    """

    def __init__(self, n_channels: int, dim: int, op: str = "concat", activation: str = "identity"):
        super().__init__()
        if op not in FUSION_OPS:
            raise ValueError(f"unknown channel fusion {op!r}; known: {', '.join(FUSION_OPS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        self.op, self.n_channels, self.dim = op, n_channels, dim
        self.activation = nn.GELU() if activation == "gelu" else nn.Identity()
        self.linear = nn.Linear(n_channels * dim, dim) if op == "concat" else None
        if op == "gate" and n_channels > 1:
            self.gate_weight = nn.Parameter(torch.empty(n_channels, dim))
            self.gate_bias = nn.Parameter(torch.empty(n_channels))
        else:
            self.gate_weight = self.gate_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.gate_weight is not None:
            nn.init.normal_(self.gate_weight, std=1.0 / math.sqrt(self.dim))
            nn.init.zeros_(self.gate_bias)

    def gate(self, x: Tensor) -> Tensor:
        """Gate weights ``[..., C]`` (softmax over channels); only for ``op="gate"``."""
        if self.gate_weight is None:
            return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
        return ((x * self.gate_weight).sum(-1) + self.gate_bias).softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] != self.n_channels:
            raise ValueError(f"ChannelFusion built for {self.n_channels} channels, got {x.shape[-2]}")
        if self.op == "concat":
            y = self.linear(x.flatten(-2))
        elif self.op == "sum":
            y = x.sum(-2)
        else:
            y = (self.gate(x)[..., None] * x).sum(-2)
        return self.activation(y)

    def extra_repr(self) -> str:
        return f"op={self.op}, channels={self.n_channels}, dim={self.dim}"


class SequenceBackbone(nn.Module):
    """The sequence encoder M of the generic strategies: ``sasrec`` or ``gru4rec``.

    Shapes: x ``[B, L, d]`` (no positions), mask ``[B, L]`` -> ``[B, L, d]`` causal states, zeros at
    padding.
    """

    def __init__(self, kind: str, dim: int, layers: int, heads: int, dropout: float, max_len: int, ffn_dim: int):
        super().__init__()
        if kind not in BACKBONES:
            raise ValueError(f"unknown backbone {kind!r}; known: {', '.join(BACKBONES)}")
        self.kind = kind
        if kind == "sasrec":
            self.encoder = CausalTransformer(dim, layers, heads, dropout, max_len, ffn_dim)
            self.scale = math.sqrt(dim)
        else:
            self.encoder = CausalGRU(dim, layers, dropout)
            self.scale = 1.0

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.encoder(x * self.scale, mask)


@dataclass(frozen=True)
class SequenceOptions(PluginOptions):
    """Options shared by the sequence strategies (each strategy subclasses it and adds its own).

    ``dim``: d. ``layers``, ``heads``: encoder depth and attention heads (heads unused by GRUs).
    ``dropout``: on inputs and sub-layers. ``ffn_mult``: FFN hidden size = ffn_mult * d.
    ``feature_dropout``: on the projected modality features."""

    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(1)] = 2
    heads: Annotated[int, Ge(1)] = 2
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.5
    ffn_mult: Annotated[int, Ge(1)] = 1
    feature_dropout: Annotated[float, Ge(0), Lt(1)] = 0.1

    def check(self) -> None:
        require(self.dim % self.heads == 0, f"option 'dim' ({self.dim}) must be divisible by 'heads' ({self.heads})")


class AttentionLevelStrategy(CausalStrategy):
    r"""Shared body of the attention-level strategies (NOVA, DIF-SR).

    The item stream :math:`E_{v}\sqrt{d}` alone feeds the attention values of a
    :class:`~strategies.backbones.ScoredTransformer`; the side information (a positional embedding and
    every modality channel, each of size ``side_dim``) enters only the per-layer scorers that subclasses
    pass in. Items are scored against the ID embeddings.

    Shapes: side_info ``[B, L, 1 + M, side_dim]``; hidden ``[B, L, d]``.
    """

    def init_streams(self, ctx: StrategyContext, dim: int, side_dim: int, feature_dropout: float) -> None:
        """Create the item table, the modality inputs and the positional table (call before the scorers)."""
        self.item = nn.Embedding(ctx.n_items + 1, dim, padding_idx=0)
        self.side = ModalityInputs(ctx, side_dim, feature_dropout)
        self.pos = nn.Embedding(ctx.max_len, side_dim)
        self.scale = math.sqrt(dim)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        embedding_init_(self.item.weight)

    def side_info(self, batch: SeqBatch) -> Tensor:
        """``[B, L, 1 + M, side_dim]``: position embedding, then every modality channel."""
        pos = self.pos(forward_positions(batch.mask, self.ctx.max_len))
        return torch.cat([pos[..., None, :], self.side.lookup(batch.items, batch.present, batch.shown)], -2)

    def hidden(self, batch: SeqBatch) -> Tensor:
        return self.encoder(self.item(batch.items) * self.scale, batch.mask, self.side_info(batch))

    def item_embeddings(self) -> Tensor:
        return self.item.weight
