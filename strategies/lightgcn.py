r"""LightGCN: He, Deng, Wang, Li, Zhang, Wang, "LightGCN: Simplifying and Powering Graph Convolution
Network for Recommendation", SIGIR 2020. ID-only graph CF (the ID backbone of BM3). Fusion: none.

.. math::
    E^{(0)} = [P; Q],\qquad E^{(l+1)} = \hat A\,E^{(l)},\qquad
    E = \frac{1}{L+1}\sum_{l=0}^{L} E^{(l)},\qquad \hat y_{u,v} = \langle E_u, E_v \rangle

with :math:`\hat A = D^{-1/2} A D^{-1/2}` the symmetric-normalised user–item graph of the training
interactions (:mod:`strategies.cf_graph`), P the user and Q the item embeddings (N(0, 0.1²) as in the
authors' code). Loss: BPR with one uniform negative outside the user's graph items, plus
:math:`\lambda\,(\lVert e^{(0)}_u\rVert^2 + \lVert e^{(0)}_{i^+}\rVert^2 + \lVert e^{(0)}_{i^-}\rVert^2)/(2B)`
(``reg``; the authors' 1e-4). Batch 2048 as in the authors' code.

Shapes: user ids ``[B]`` -> encode ``[B, d]``; item_embeddings ``[n_items + 1, d]``; graph ``[N, N]``
sparse CSR, N = users + n_items + 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import Ge, PluginOptions
from fusionbench.registry import STRATEGIES
from fusionbench.space import LogUniform
from strategies.cf_graph import GraphCFStrategy, InteractionGraph, bpr_loss, register_graph_buffer, sparse_dense


@dataclass(frozen=True)
class LightGCNOptions(PluginOptions):
    """``layers``: propagation depth L. ``reg``: λ of the ego-embedding L2 term."""

    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(0)] = 3
    reg: Annotated[float, Ge(0)] = 1e-4


def light_propagate(adj: Tensor, ego: Tensor, layers: int) -> Tensor:
    """``adj [N, N]`` sparse and symmetric, ``ego [N, d]`` -> the mean of ``adj^l ego`` for l = 0..layers
    ``[N, d]``. Each product goes through :func:`strategies.cf_graph.sparse_dense` with ``adj`` as its own
    transpose: the backward reuses it instead of transposing it on every call, and a bf16 autocast input is
    multiplied in float32 (CPU CSR products have no bfloat16 kernel)."""
    total, x = ego, ego
    for _ in range(layers):
        x = sparse_dense(adj, x, adj_t=adj)
        total = total + x
    return total / (layers + 1)


@STRATEGIES.register("lightgcn")
class LightGCN(GraphCFStrategy):
    Options = LightGCNOptions
    search_space = {"reg": LogUniform(1e-5, 1e-2), "train.weight_decay": None}   # reg is its L2
    fusion_stage = "none"
    uses_modalities = False
    paper = "He, Deng, Wang, Li, Zhang, Wang, SIGIR 2020"
    notes = (
        "ID-only graph CF: mean of `layers` symmetric-normalised propagations of user and item embeddings over the "
        "training user–item graph; BPR with one uniform negative + ego-embedding L2 (`reg`). Graph-CF protocol: "
        "[graph-cf.md](graph-cf.md)."
    )

    def __init__(self, ctx: StrategyContext, opts: LightGCNOptions):
        super().__init__(ctx, opts)
        self.user = nn.Embedding(self.n_users, opts.dim)
        self.item = nn.Embedding(ctx.n_items + 1, opts.dim, padding_idx=0)
        self.reset_parameters()

    def set_graph(self, graph: InteractionGraph) -> None:
        register_graph_buffer(self, "adj", graph.adjacency("sym"))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def propagate(self) -> tuple[Tensor, Tensor]:
        out = light_propagate(self.adj, torch.cat([self.user.weight, self.item.weight]), self.opts.layers)
        return out[:self.n_users], out[self.n_users:]

    def loss(self, batch: SeqBatch) -> Tensor:
        users, items = self.propagate()
        u, pos, neg = self.users_of(batch), batch.target, self.negatives(batch)
        reg = (self.user.weight[u].pow(2).sum() + self.item.weight[pos].pow(2).sum()
               + self.item.weight[neg].pow(2).sum()) / (2 * batch.size)
        return bpr_loss(users[u], items[pos], items[neg]) + self.opts.reg * reg
