r"""Early fusion (MMSR, Hu et al., CIKM 2023, Eqs. 3-4), and its preset SASRec^F (RecBole ``SASRecF``).
Fusion stage: early (channels fused per item before the sequence encoder).

.. math::
    x_t = \sigma\big(W_f\,[\,e_{v_t};\ c_1(v_t);\ \dots;\ c_M(v_t)\,] + b_f\big),\qquad
    H = M(x_1, \dots, x_L),\qquad P = H_L

with :math:`e_v` the ID embedding, :math:`c_m` the projected modality channels (learned missing
vector where absent; see :mod:`strategies.fusion`), σ = identity or GELU, and M the sequence backbone
(``sasrec``: the shared causal transformer; ``gru4rec``: the shared causal GRU). Other fusion
operators: ``sum`` and ``gate``. Item side (``target="fused"``, the default):

.. math:: \hat y_v = \langle P,\ \sigma(W_f [e_v; c_1(v); \dots; c_M(v)] + b_f) \rangle

or the ID embeddings only (``target="id"``, SASRec^F's choice). ``ids=False`` drops the ID channel
:math:`e_v` from both sides (modality channels only: the fusion stage is then the only way to combine
information about an item, which the synthetic testbed's early-vs-late comparison needs). Trained with one causal
pass per sequence and full-softmax cross-entropy at every position that has a target.

Shapes:
    items ``[B, L]`` -> channels ``[B, L, 1 + M, d]`` (``[B, L, M, d]`` with ``ids=False``) -> inputs ``[B, L, d]``
    -> encode ``[B, d]``;
    item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.registry import STRATEGIES
from fusionbench.space import Choice, Uniform
from fusionbench.strategy import CausalStrategy
from strategies.backbones import embedding_init_
from strategies.fusion import (
    ChannelFusion,
    IdChannelOptions,
    SequenceBackbone,
    SequenceOptions,
    id_and_modality_channels,
    with_ids,
)


@dataclass(frozen=True)
class EarlyOptions(IdChannelOptions, SequenceOptions):
    """``backbone``: sequence encoder M. ``fusion``: channel operator. ``activation``: σ.
    ``target``: score against fused item embeddings or ID embeddings only. ``ids``: include the item-ID
    channel (False: modality channels only; needs a modality and ``target="fused"``)."""

    backbone: Literal["sasrec", "gru4rec"] = "sasrec"
    fusion: Literal["concat", "sum", "gate"] = "concat"
    activation: Literal["identity", "gelu"] = "identity"
    target: Literal["fused", "id"] = "fused"
    ids: bool = True


@STRATEGIES.register("early")
class Early(CausalStrategy):
    """Early fusion: fuse each item's channels, then run one sequence encoder."""

    Options = EarlyOptions
    search_space = {"fusion": Choice(("concat", "sum", "gate")), "feature_dropout": Uniform(0.0, 0.5)}
    fusion_stage = "early"
    paper = "Hu, Guo, Liu, Kan, CIKM 2023 (MMSR), Eqs. 3-4"
    notes = (
        "Channels fused per position, then one encoder; `backbone` sasrec or gru4rec, `fusion` concat, sum or gate; "
        "`ids=false` drops the item-ID channel (modality channels only)."
    )

    def __init__(self, ctx: StrategyContext, opts: EarlyOptions):
        super().__init__(ctx, opts)
        d = opts.dim
        self.item, self.side = id_and_modality_channels(ctx, d, opts.ids, opts.feature_dropout)
        self.fuse = ChannelFusion(opts.ids + len(self.side), d, opts.fusion, opts.activation)
        self.backbone = SequenceBackbone(opts.backbone, d, opts.layers, opts.heads, opts.dropout, ctx.max_len,
                                         opts.ffn_mult * d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.item is not None:
            embedding_init_(self.item.weight)

    def channels(self, batch: SeqBatch) -> Tensor:
        """``[B, L, 1 + M, d]``: ID embedding (unless ``ids=False``), then every modality channel."""
        return with_ids(self.item, self.side.lookup(batch.items, batch.present, batch.shown), batch.items)

    def inputs(self, batch: SeqBatch) -> Tensor:
        """``[B, L, d]``: the fused per-item inputs of the sequence encoder."""
        return self.fuse(self.channels(batch))

    def hidden(self, batch: SeqBatch) -> Tensor:
        return self.backbone(self.inputs(batch), batch.mask)

    def item_embeddings(self) -> Tensor:
        if self.opts.target == "id":
            return self.item.weight
        return self.fuse(with_ids(self.item, self.side.table()))



@dataclass(frozen=True)
class SASRecFOptions(EarlyOptions):
    """SASRec^F: early fusion by concatenation, transformer backbone, ID-only item side (RecBole)."""

    target: Literal["fused", "id"] = "id"


@STRATEGIES.register("sasrecf")
class SASRecF(Early):
    r"""SASRec^F (RecBole SASRecF): early concat fusion + SASRec encoder, ID item side (preset of early).

    :math:`x_t = W [e_{v_t}; c_1(v_t); \dots] + b`, then the SASRec encoder; scored against ID
    embeddings. Differs from :class:`Early` by option defaults only."""

    Options = SASRecFOptions
    paper = "RecBole SASRecF (SASRec, Kang & McAuley, ICDM 2018, with feature concatenation)"
    notes = "Preset of `early`: transformer, concatenation, ID-only item side (`target=id`)."
