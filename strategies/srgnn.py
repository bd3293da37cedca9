r"""SR-GNN: Wu, Tang, Zhu, Wang, Xie, Tan, "Session-based Recommendation with Graph Neural Networks",
AAAI 2019. Fusion: none (item IDs only).

Session graph (:func:`session_graph`, batched tensor ops): one node per **distinct** item of the
history (sorted by item id, so left padding never changes the graph), a directed edge
:math:`v_t \to v_{t+1}` per consecutive pair, weighted by its occurrence count, and

.. math::
    A^{out}_{ij} = \frac{\#(i \to j)}{\sum_k \#(i \to k)},\qquad
    A^{in}_{ij} = \frac{\#(j \to i)}{\sum_k \#(k \to i)}

Gated GNN (T steps, 1 by default):

.. math::
    a_i = [A^{in}_i (H W_{in} + b_{in});\ A^{out}_i (H W_{out} + b_{out})],\quad
    z = \sigma(W_z a + U_z h),\quad r = \sigma(W_r a + U_r h),\quad
    \tilde h = \tanh(W_h a + U_h (r \odot h)),\quad h' = (1 - z) \odot h + z \odot \tilde h

Readout over the real positions t (repeats counted per position):

.. math::
    s_l = h_{v_L},\quad \alpha_t = q^\top \sigma(W_1 s_l + W_2 h_{v_t} + c),\quad
    s_g = \sum_t \alpha_t h_{v_t},\quad s = W_3 [s_l; s_g],\quad \hat y_v = \langle s, E_v \rangle

Loss: full-softmax cross-entropy (as the paper). Hyperparameters [P]: d = 100, lr 1e-3 decayed by
0.1 every 3 epochs, L2 1e-5, batch 100.

Shapes: items ``[B, L]`` -> graph of N = max distinct items nodes -> encode ``[B, d]``;
item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import Ge, PluginOptions
from fusionbench.registry import STRATEGIES
from fusionbench.space import Choice, IntRange
from fusionbench.strategy import Strategy
from strategies.backbones import embedding_init_


@dataclass
class SessionGraph:
    """Batched session graphs.

    Attributes:
        node_items: ``[B, N]`` item id of every node (0 for padded node slots), sorted by id.
        node_mask: ``[B, N]`` bool, real nodes.
        alias: ``[B, L]`` node index of the item at every position (0 at padding positions).
        a_in, a_out: ``[B, N, N]`` normalised in-/out-adjacency (see module doc).
    """

    node_items: Tensor
    node_mask: Tensor
    alias: Tensor
    a_in: Tensor
    a_out: Tensor


def session_graph(items: Tensor) -> SessionGraph:
    """Build the session graphs of a left-padded batch ``items [B, L]`` with tensor ops only."""
    b, length = items.shape
    mask = items > 0
    values, order = items.sort(1)                                     # padding (0) first
    first = torch.ones_like(mask)
    first[:, 1:] = values[:, 1:] != values[:, :-1]
    first &= values > 0                                               # first occurrence of a real item
    rank = first.long().cumsum(1) - 1                                 # node index of each sorted entry
    n_nodes = max(1, int(first.sum(1).max()))
    alias = torch.zeros_like(items).scatter_(1, order, rank.clamp(min=0))
    alias = alias * mask
    slot = torch.where(first, rank, n_nodes)                          # non-first entries -> dummy slot
    node_items = torch.zeros(b, n_nodes + 1, dtype=items.dtype, device=items.device)
    node_items = node_items.scatter_(1, slot, values * first)[:, :n_nodes]
    edge = mask[:, :-1] & mask[:, 1:]
    flat = alias[:, :-1] * n_nodes + alias[:, 1:]
    counts = torch.zeros(b, n_nodes * n_nodes, device=items.device).scatter_add_(1, flat, edge.float())
    counts = counts.view(b, n_nodes, n_nodes)                         # counts[b, i, j] = #(i -> j)
    a_out = counts / counts.sum(2, keepdim=True).clamp(min=1)
    incoming = counts.transpose(1, 2)
    a_in = incoming / incoming.sum(2, keepdim=True).clamp(min=1)
    return SessionGraph(node_items, node_items > 0, alias, a_in, a_out)


class GatedSessionGNN(nn.Module):
    """SR-GNN's gated graph layer (see module doc), applied ``steps`` times with shared weights.

    Shapes: h ``[B, N, d]``, a_in ``[B, N, N]``, a_out ``[B, N, N]`` -> ``[B, N, d]``.
    """

    def __init__(self, dim: int, steps: int = 1):
        super().__init__()
        self.steps = steps
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        self.w_a = nn.Linear(2 * dim, 3 * dim)            # W_z, W_r, W_h on a
        self.u_zr = nn.Linear(dim, 2 * dim, bias=False)   # U_z, U_r on h
        self.u_h = nn.Linear(dim, dim, bias=False)        # U_h on r * h

    def forward(self, h: Tensor, a_in: Tensor, a_out: Tensor) -> Tensor:
        for _ in range(self.steps):
            a = torch.cat([a_in @ self.edge_in(h), a_out @ self.edge_out(h)], -1)
            a_z, a_r, a_h = self.w_a(a).chunk(3, -1)
            u_z, u_r = self.u_zr(h).chunk(2, -1)
            z, r = torch.sigmoid(a_z + u_z), torch.sigmoid(a_r + u_r)
            h = (1 - z) * h + z * torch.tanh(a_h + self.u_h(r * h))
        return h


@dataclass(frozen=True)
class SRGNNOptions(PluginOptions):
    """``dim``: d. ``steps``: GNN propagation steps T."""

    dim: Annotated[int, Ge(1)] = 100
    steps: Annotated[int, Ge(1)] = 1


@STRATEGIES.register("srgnn")
class SRGNN(Strategy):
    """SR-GNN (AAAI 2019): gated GNN on the session graph, attention readout."""

    Options = SRGNNOptions
    search_space = {"dim": Choice((50, 100, 200)), "steps": IntRange(1, 3)}
    fusion_stage = "none"
    uses_modalities = False
    train_defaults = {"batch_size": 100, "lr": 1e-3, "lr_step": 3, "lr_gamma": 0.1, "weight_decay": 1e-5}
    paper = "Wu, Tang, Zhu, Wang, Xie, Tan, AAAI 2019"
    notes = "ID-only session graph (own session-graph builder, gated GNN, attention readout)."

    def __init__(self, ctx: StrategyContext, opts: SRGNNOptions):
        super().__init__(ctx, opts)
        d = opts.dim
        self.item = nn.Embedding(ctx.n_items + 1, d, padding_idx=0)
        self.gnn = GatedSessionGNN(d, opts.steps)
        self.w_1 = nn.Linear(d, d, bias=False)
        self.w_2 = nn.Linear(d, d)                         # its bias is c
        self.q = nn.Linear(d, 1, bias=False)
        self.w_3 = nn.Linear(2 * d, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        embedding_init_(self.item.weight)

    def encode(self, batch: SeqBatch) -> Tensor:
        g = session_graph(batch.items)
        h = self.gnn(self.item(g.node_items), g.a_in, g.a_out)                      # [B, N, d]
        seq = h.gather(1, g.alias[..., None].expand(-1, -1, h.shape[-1]))           # [B, L, d]
        last = seq[:, -1]
        alpha = self.q(torch.sigmoid(self.w_1(last)[:, None] + self.w_2(seq)))      # [B, L, 1]
        s_g = (alpha * seq * batch.mask[..., None]).sum(1)
        return self.w_3(torch.cat([last, s_g], -1))

    def item_embeddings(self) -> Tensor:
        return self.item.weight
