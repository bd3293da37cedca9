r"""GRU4Rec: Hidasi, Karatzoglou, Baltrunas, Tikk, "Session-based Recommendations with Recurrent
Neural Networks", ICLR 2016. Fusion: none (item IDs only).

.. math::
    h_t = \mathrm{GRU}(\mathrm{Drop}(E_{v_t}), h_{t-1}),\qquad P_t = W h_t + b,\qquad
    \hat y_v = \langle P_L, E_v \rangle

(the dense layer :math:`W, b` is optional, ``dense=True`` as in RecBole). The GRU is the shared
:class:`~strategies.backbones.CausalGRU`: it starts at the oldest real item and never reads left
padding. The original TOP1/BPR losses with session-parallel mini-batches are replaced by the
full-softmax cross-entropy at every position (RecBole's choice; specs/baselines.md).

Shapes: items ``[B, L]`` -> states ``[B, L, d]`` -> encode ``[B, d]``; item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import Ge, Lt, PluginOptions
from fusionbench.registry import STRATEGIES
from fusionbench.strategy import CausalStrategy
from strategies.backbones import CausalGRU, embedding_init_


@dataclass(frozen=True)
class GRU4RecOptions(PluginOptions):
    """``dim``: d (embedding and hidden size). ``layers``: GRU layers. ``dropout``: on the input
    embeddings. ``dense``: Linear(d -> d) after the GRU."""

    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(1)] = 1
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.3
    dense: bool = True


@STRATEGIES.register("gru4rec")
class GRU4Rec(CausalStrategy):
    """GRU4Rec (ICLR 2016) with full-softmax cross-entropy."""

    Options = GRU4RecOptions
    fusion_stage = "none"
    uses_modalities = False
    train_defaults = {"batch_size": 256}
    paper = "Hidasi, Karatzoglou, Baltrunas, Tikk, ICLR 2016"
    notes = "ID-only GRU."

    def __init__(self, ctx: StrategyContext, opts: GRU4RecOptions):
        super().__init__(ctx, opts)
        self.item = nn.Embedding(ctx.n_items + 1, opts.dim, padding_idx=0)
        self.gru = CausalGRU(opts.dim, opts.layers, opts.dropout)
        self.dense = nn.Linear(opts.dim, opts.dim) if opts.dense else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        embedding_init_(self.item.weight)

    def hidden(self, batch: SeqBatch) -> Tensor:
        """``[B, L, d]``: the representation after every position."""
        return self.dense(self.gru(self.item(batch.items), batch.mask))

    def item_embeddings(self) -> Tensor:
        return self.item.weight

