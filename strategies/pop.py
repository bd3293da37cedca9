r"""Most popular (the floor below the graph-CF rows; not a row of MMSR Table 2): every user gets the same
ranking, items by their number of training interactions (repeats included) in the graph's interactions
(``ctx.history``; for the test ranking ``ctx.test_history``, see :mod:`strategies.cf_graph`). Fusion: none.

.. math:: \hat y_{u,v} = e^{s}\,\log(1 + c_v)

with :math:`c_v` the interaction count and one learned scalar s, which changes no ranking (a positive
scale of one fixed vector): it only gives the harness's trainer a parameter and a BPR loss to run. One
epoch is all it needs (``train.epochs=1``).

Shapes: encode ``[B, 1]`` (ones); item_embeddings ``[n_items + 1, 1]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import PluginOptions
from fusionbench.registry import STRATEGIES
from strategies.cf_graph import GraphCFStrategy, InteractionGraph, bpr_loss, register_graph_buffer


@dataclass(frozen=True)
class PopOptions(PluginOptions):
    """No options: the ranking is the training interaction count."""


@STRATEGIES.register("pop")
class Pop(GraphCFStrategy):
    Options = PopOptions
    # nothing to search: the ranking is the popularity count
    search_space = {"train.lr": None, "train.weight_decay": None}
    fusion_stage = "none"
    uses_modalities = False
    paper = "most popular (a floor below the graph-CF rows; not in MMSR Table 2)"
    notes = (
        "Items ranked by training-interaction count, the same list for every user; one learned positive scale (no "
        "effect on the ranking) so the trainer has something to step. Graph-CF protocol: [graph-cf.md](graph-cf.md)."
    )
    train_defaults = {"batch_size": 2048, "epochs": 1}

    def __init__(self, ctx: StrategyContext, opts: PopOptions):
        super().__init__(ctx, opts)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    def set_graph(self, graph: InteractionGraph) -> None:
        register_graph_buffer(self, "popularity", torch.log1p(graph.item_count.float()))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.log_scale)

    def propagate(self) -> tuple[Tensor, Tensor]:
        ones = self.log_scale.new_ones(self.n_users, 1)
        return ones, (self.log_scale.exp() * self.popularity)[:, None]

    def loss(self, batch: SeqBatch) -> Tensor:
        _, items = self.propagate()
        u = items.new_ones(batch.size, 1)
        return bpr_loss(u, items[batch.target], items[self.negatives(batch)])
