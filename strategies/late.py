r"""Late fusion (MMSR, Hu et al., CIKM 2023, Eqs. 5-6), and its preset GRU4Rec^F (Hidasi et al.,
"Parallel Recurrent Neural Network Architectures for Feature-rich Session-based Recommendations",
RecSys 2016; RecBole ``GRU4RecF``). Fusion stage: late (channels encoded separately, fused after).

For every channel c (the ID channel and each modality channel, see :mod:`strategies.fusion`) a
separate backbone encodes the channel's own sequence; the per-position states are fused:

.. math::
    p_c = M_c\big(x_{1,c}, \dots, x_{L,c}\big),\qquad
    P = \sigma\big(W_f\,[\,p_{id};\ p_1;\ \dots;\ p_M\,] + b_f\big)

(``fusion`` = ``concat``; ``sum`` and ``gate`` as options; ``shared=True`` uses one backbone for
every channel). With ``features="merged"`` the modality channels are first concatenated and mapped
to one feature channel, :math:`x_{t,f} = W_m [c_1(v_t); \dots; c_M(v_t)] + b_m`, and two backbones run
(ID and features): p-RNN's parallel architecture, which is the GRU4Rec^F preset
(``backbone="gru4rec"``, ``features="merged"``, ``target="id"``). Item side (``target="fused"``):

.. math:: \hat y_v = \langle P,\ \sigma(W_f [e_v; c_1(v); \dots; c_M(v)] + b_f) \rangle

or ID embeddings (``target="id"``). The ID channel's states never see modality features before
the final fusion. ``ids=False`` drops the ID channel from both sides (modality channels only, as in
:mod:`strategies.early`). One causal pass per sequence, CE at every position with a target.

Shapes:
    items ``[B, L]`` -> channel states ``[B, L, C, d]`` -> fused ``[B, L, d]`` -> encode ``[B, d]``;
    item_embeddings ``[n_items + 1, d]``; C = 1 + M (separate), 2 (merged, M > 0) or 1 (M = 0);
    one fewer with ``ids=False``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import Ge, Lt
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
class LateOptions(IdChannelOptions, SequenceOptions):
    """``backbone``: per-channel encoder M_c. ``shared``: one encoder for all channels. ``features``:
    one channel per modality ("separate") or all modalities merged into one ("merged").
    ``fusion``/``activation``: the final fusion. ``target``: fused item embeddings or ID only.
    ``ids``: include the item-ID channel (False: modality channels only; needs ``target="fused"``)."""

    backbone: Literal["sasrec", "gru4rec"] = "sasrec"
    shared: bool = False
    features: Literal["separate", "merged"] = "separate"
    fusion: Literal["concat", "sum", "gate"] = "concat"
    activation: Literal["identity", "gelu"] = "identity"
    target: Literal["fused", "id"] = "fused"
    ids: bool = True


@STRATEGIES.register("late")
class Late(CausalStrategy):
    """Late fusion: one sequence encoder per channel, states fused at the end."""

    Options = LateOptions
    search_space = {"fusion": Choice(("concat", "sum", "gate")), "feature_dropout": Uniform(0.0, 0.5)}
    fusion_stage = "late"
    paper = "Hu, Guo, Liu, Kan, CIKM 2023 (MMSR), Eqs. 5-6"
    notes = "One encoder per channel, then fused; same `backbone` / `fusion` choices as `early`."

    def __init__(self, ctx: StrategyContext, opts: LateOptions):
        super().__init__(ctx, opts)
        d = opts.dim
        self.item, self.side = id_and_modality_channels(ctx, d, opts.ids, opts.feature_dropout)
        n_side = len(self.side)
        self.merge: Optional[nn.Linear] = None
        if opts.features == "merged" and n_side:
            self.merge = nn.Linear(n_side * d, d)
            n_side = 1
        self.n_channels = opts.ids + n_side
        self.backbones = nn.ModuleList(
            SequenceBackbone(opts.backbone, d, opts.layers, opts.heads, opts.dropout, ctx.max_len, opts.ffn_mult * d)
            for _ in range(1 if opts.shared else self.n_channels)
        )
        self.fuse = ChannelFusion(self.n_channels, d, opts.fusion, opts.activation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.item is not None:
            embedding_init_(self.item.weight)

    def _channels(self, items: Tensor, present=None, shown=None) -> Tensor:
        """``[..., C, d]`` channel inputs of the given items."""
        side = self.side.lookup(items, present, shown)
        if self.merge is not None:
            side = self.merge(side.flatten(-2))[..., None, :]
        return with_ids(self.item, side, items)

    def channel_states(self, batch: SeqBatch) -> Tensor:
        """``[B, L, C, d]``: each channel's own encoder states (channel 0 = IDs unless ``ids=False``), before fusion."""
        x = self._channels(batch.items, batch.present, batch.shown)
        mask = batch.mask
        states = [self.backbones[0 if self.opts.shared else c](x[:, :, c], mask) for c in range(self.n_channels)]
        return torch.stack(states, -2)

    def hidden(self, batch: SeqBatch) -> Tensor:
        return self.fuse(self.channel_states(batch))

    def item_embeddings(self) -> Tensor:
        if self.opts.target == "id":
            return self.item.weight
        return self.fuse(self._channels(torch.arange(self.ctx.n_items + 1, device=next(self.parameters()).device)))



@dataclass(frozen=True)
class GRU4RecFOptions(LateOptions):
    """GRU4Rec^F: parallel GRUs over IDs and merged features, concatenated, ID item side
    (hyperparameters as GRU4Rec: d = 64, 1 layer, dropout 0.3)."""

    layers: Annotated[int, Ge(1)] = 1
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.3
    backbone: Literal["sasrec", "gru4rec"] = "gru4rec"
    features: Literal["separate", "merged"] = "merged"
    target: Literal["fused", "id"] = "id"


@STRATEGIES.register("gru4recf")
class GRU4RecF(Late):
    r"""GRU4Rec^F (p-RNN, RecBole GRU4RecF): parallel ID and feature GRUs, concatenated (preset of late).

    :math:`P = W [\mathrm{GRU}_{id}(e); \mathrm{GRU}_f(x_f)] + b`. Differs from :class:`Late` by option
    defaults only; the p-RNN "concat input" variant is ``early --set backbone=gru4rec``."""

    Options = GRU4RecFOptions
    train_defaults = {"batch_size": 256}
    paper = "Hidasi, Quadrana, Karatzoglou, Tikk, RecSys 2016 (p-RNN); RecBole GRU4RecF"
    notes = "Preset of `late`: GRU, features merged into one side stream, ID-only item side."
