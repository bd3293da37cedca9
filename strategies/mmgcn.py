r"""MMGCN: Wei, Wang, Nie, He, Hong, Chua, "MMGCN: Multi-modal Graph Convolution Network for Personalized
Recommendation of Micro-video", ACM MM 2019 [P], and the authors' code [C]. Fusion: late (one graph
branch per modality channel, averaged at the end). Graph and protocol: :mod:`strategies.cf_graph`.

Per named channel m (``text``, ``attr``, ``image``, ...), node inputs are a learned user preference
:math:`P^m_u` and the item's projected feature :math:`\mathrm{MLP}_m(f^m_i)` (feature -> ``hidden`` ->
LeakyReLU -> d; an item without the channel gets the learned absent vector instead of its projected
feature, :class:`~strategies.fusion.ModalityChannel`), both L2-normalised. Each of ``layers`` layers
(:class:`MMGCNLayer`, its own weights per channel and depth):

.. math::
    h_v = \mathrm{LReLU}\Big(\frac{1}{|N(v)|}\sum_{w \in N(v)} W_1 x_w\Big),\qquad
    \hat x_v = \mathrm{LReLU}(W_2 x_v + b_2) + e^{id}_v,\qquad
    x'_v = \mathrm{LReLU}(W_3 [h_v \,\Vert\, \hat x_v] + b_3)

with :math:`e^{id}` one ID embedding per node shared by the channels. :math:`r_v` = mean over channels
of the last layer; score :math:`\langle r_u, r_i\rangle`. Loss: BPR with one uniform negative outside the
user's training items + :math:`\lambda` · batch mean of :math:`\lVert e^{id}_u\rVert^2 + \lVert e^{id}_{i^+}\rVert^2
+ \lVert e^{id}_{i^-}\rVert^2 + \sum_m \lVert P^m_u\rVert^2` (``reg``). A context without modalities gets
one branch whose item input is a learned item table (the model then is ID-only). ``layout=reference``
(:class:`MMGCNOptions`) is the authors' code's layout instead: the features mapped linearly to ``hidden``
and the first layer at that width (:math:`W_1` ``[hidden, hidden]``, :math:`W_3` ``[d, hidden + d]``).

Defects of the shipped code [C] that are **not** reproduced: its ID embeddings and user preferences were
plain tensors (never trained; here they are parameters); a string ``'False'`` option switched the
concatenation combination on always (here the concatenation of the paper is the one combination); its
evaluation "masked" training items to 1e-5 instead of excluding them (here: the harness's full ranking,
no masking, as for every strategy).

Shapes: node inputs ``[N, d]`` per channel (N = users + n_items + 1) -> ``[N, d]`` per layer; encode
``[B, d]``; item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.options import Ge, PluginOptions
from fusionbench.registry import STRATEGIES
from fusionbench.space import LogUniform
from strategies.cf_graph import (
    FEATURE_CF_SKIPS,
    GraphCFStrategy,
    InteractionGraph,
    bpr_loss,
    csr_rows,
    register_graph_buffer,
    sparse_dense,
)
from strategies.fusion import ModalityChannel


@dataclass(frozen=True)
class MMGCNOptions(PluginOptions):
    """``layers``: graph layers per channel. ``hidden``: the feature MLP's hidden size. ``reg``: λ.
    ``layout``: "compact" (the default) maps each channel's features to d by an MLP (feature -> ``hidden``
    -> LeakyReLU -> d) and runs every layer at width d; "reference" is the authors' code's layout: one
    linear map of the features to ``hidden``, user preferences of that width, and a first layer that
    reads ``hidden``-wide inputs (it aggregates at that width and maps to d), the later layers at d."""

    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(1)] = 3
    hidden: Annotated[int, Ge(1)] = 256
    reg: Annotated[float, Ge(0)] = 1e-5
    layout: Literal["compact", "reference"] = "compact"

    ONLY_WHEN_SET = frozenset({"layout"})   # added after runs were stored


class MMGCNLayer(nn.Module):
    r"""One MMGCN layer of one channel (see the module docstring for the equations).

    Args: dim: d (output). negative_slope: of every LeakyReLU (0.01, torch's default). in_dim: the input
    width d_in (default d): W_1 is ``[d_in, d_in]``, W_2 ``[d, d_in]``, W_3 ``[d, d_in + d]``.

    Shapes: x ``[N, d_in]``, adj ``[N, N]`` sparse :math:`D^{-1}A` (mean over neighbours), e_id ``[N, d]``
    -> ``[N, d]``. A node without neighbours aggregates zeros. ``adj_t``: the transpose of adj (sparse CSR),
    for the backward (:func:`~strategies.cf_graph.sparse_dense`; the strategy builds it once per graph).
    ``rows [R]`` long: the output at these nodes only, ``[R, d]`` (the same rows of the full output).
    """

    def __init__(self, dim: int, negative_slope: float = 0.01, in_dim: Optional[int] = None):
        super().__init__()
        in_dim = in_dim or dim
        self.dim, self.in_dim, self.slope = dim, in_dim, negative_slope
        self.w1 = nn.Linear(in_dim, in_dim, bias=False)
        self.w2 = nn.Linear(in_dim, dim)
        self.w3 = nn.Linear(in_dim + dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.w1, self.w2, self.w3):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, adj: Tensor, e_id: Tensor, adj_t: Optional[Tensor] = None,
                rows: Optional[Tensor] = None) -> Tensor:
        if rows is None:
            h = F.leaky_relu(sparse_dense(adj, self.w1(x), adj_t), self.slope)
        else:
            h = F.leaky_relu(sparse_dense(csr_rows(adj, rows), self.w1(x)), self.slope)
            x, e_id = x[rows], e_id[rows]
        own = F.leaky_relu(self.w2(x), self.slope) + e_id
        return F.leaky_relu(self.w3(torch.cat([h, own], -1)), self.slope)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_dim} -> {self.dim})"


class ItemInput(nn.Module):
    """An item-side branch input ``[n_items + 1, d]``: ``MLP_m(f^m)`` of a modality channel (feature ->
    ``hidden`` with the absent vector where the channel is missing -> LeakyReLU -> d), or a learned
    item table when the context has no modality (``table=None``). ``compact=False`` (layout "reference"):
    the channel's one linear map to ``hidden`` alone, ``[n_items + 1, hidden]`` (a learned table of that
    width without a modality)."""

    def __init__(self, table, n_items: int, dim: int, hidden: int, compact: bool = True):
        super().__init__()
        width = dim if compact else hidden
        if table is None:
            self.channel, self.out = None, None
            self.weight = nn.Parameter(torch.empty(n_items + 1, width))
        else:
            self.channel, self.weight = ModalityChannel(table, hidden, 0.0), None
            self.out = nn.Linear(hidden, dim) if compact else None
        self.dim = width
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.dim))

    def forward(self) -> Tensor:
        if self.channel is None:
            return self.weight
        if self.out is None:
            return channel_table(self.channel)
        return self.out(F.leaky_relu(channel_table(self.channel)))


def channel_table(channel: ModalityChannel) -> Tensor:
    """``channel.table()`` ``[n_items + 1, dim]``, a code channel's mean code embedding taken with one
    ``embedding_bag`` (sum over each item's codes, then divided by their count, as ``ModalityChannel.raw``)
    instead of gathering ``[n_items + 1, k, dim]`` code vectors first: the same values, about 7x less time
    on beauty's ``attr`` table (k = 8, dim 256), forward and backward."""
    if not channel.uses_codes or channel.codes.shape[1] == 0:
        return channel.table()
    codes = channel.codes
    valid = codes >= 0
    summed = F.embedding_bag(codes.masked_fill(~valid, channel.pad_code), channel.code_weight, mode="sum",
                             padding_idx=channel.pad_code)
    raw = summed / valid.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(channel.present[:, None], channel.drop(raw), channel.missing)


class MultiBranchCF(GraphCFStrategy):
    """Shared skeleton of MMGCN and MGAT: per channel, user preferences and item inputs, ``layers``
    graph layers, channels averaged; BPR with the ID / preference L2 term. Subclasses set ``norm``
    (adjacency they read) and override ``make_layer`` and ``item_activation``."""

    contract_skips: ClassVar[dict[str, str]] = FEATURE_CF_SKIPS
    fusion_stage = "late"
    norm: ClassVar[str] = "mean"

    def __init__(self, ctx: StrategyContext, opts):
        super().__init__(ctx, opts)
        d = opts.dim
        compact = opts.layout == "compact"
        width = d if compact else opts.hidden                    # of the first layer's inputs
        self.names = tuple(ctx.modalities) or ("id",)
        self.id_emb = nn.Parameter(torch.empty(self.graph.n_nodes, d))
        self.preference = nn.Parameter(torch.empty(len(self.names), self.n_users, width))
        self.item_inputs = nn.ModuleList(
            ItemInput(ctx.modalities.get(m), ctx.n_items, d, opts.hidden, compact) for m in self.names)
        self.branches = nn.ModuleList(
            nn.ModuleList(self.make_layer(d, width if depth == 0 else d) for depth in range(opts.layers))
            for _ in self.names)
        self.reset_parameters()

    def make_layer(self, dim: int, in_dim: int) -> nn.Module:
        """One layer of a branch, reading ``in_dim``-wide inputs."""
        return MMGCNLayer(dim, in_dim=in_dim)

    def set_graph(self, graph: InteractionGraph) -> None:
        register_graph_buffer(self, "adj", graph.adjacency(self.norm))
        register_graph_buffer(self, "adj_t", graph.adjacency_t(self.norm))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.xavier_uniform_(self.id_emb)
        nn.init.xavier_uniform_(self.preference)

    def item_activation(self, x: Tensor) -> Tensor:
        return x

    def layer(self, layer: nn.Module, x: Tensor, e_id: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """One layer's output ``[N, d]``, or ``[R, d]`` at the nodes ``rows`` only."""
        return layer(x, self.adj, e_id, self.adj_t, rows)

    def node_vectors(self, rows: Optional[Tensor] = None) -> Tensor:
        """:math:`r_v` (the channels' last layers averaged) of every node ``[N, d]``, or ``[R, d]`` of the
        nodes ``rows [R]``: then the last layer runs at those nodes only, as its other rows are never read."""
        out = []
        for c, (inputs, layers) in enumerate(zip(self.item_inputs, self.branches)):
            x = torch.cat([F.normalize(self.preference[c]),
                           F.normalize(self.item_activation(inputs()))])
            for depth, layer in enumerate(layers):
                x = self.layer(layer, x, self.id_emb, rows if depth == len(layers) - 1 else None)
            out.append(x)
        return torch.stack(out).mean(0)

    def propagate(self) -> tuple[Tensor, Tensor]:
        r = self.node_vectors()
        return r[:self.n_users], r[self.n_users:]

    def loss(self, batch: SeqBatch) -> Tensor:
        """BPR on the batch's (user, target, negative) triples; the last layers run at those nodes only
        (:meth:`node_vectors`), the same values as read from a full :meth:`propagate`."""
        u, pos, neg = self.users_of(batch), batch.target, self.negatives(batch)
        nodes, where = torch.unique(torch.cat([u, self.n_users + pos, self.n_users + neg]), return_inverse=True)
        r_u, r_pos, r_neg = self.node_vectors(nodes)[where].split(u.numel())
        e = self.id_emb
        reg = (e[u].pow(2).sum(-1) + e[self.n_users + pos].pow(2).sum(-1) + e[self.n_users + neg].pow(2).sum(-1)
               + self.preference[:, u].pow(2).sum((0, 2))).mean()
        return bpr_loss(r_u, r_pos, r_neg) + self.opts.reg * reg


@STRATEGIES.register("mmgcn")
class MMGCN(MultiBranchCF):
    Options = MMGCNOptions
    # reg is its L2. The authors' grid reaches λ = 0.1 on squares averaged over the embedding width as
    # well as the batch, about 0.1 / d = 1.6e-3 here (squares summed over the width); the range goes a
    # decade further because at the defaults the model peaks within 7-11 epochs on Beauty and Toys
    # and overfits after.
    search_space = {"reg": LogUniform(1e-6, 1e-2), "train.weight_decay": None}
    paper = "Wei, Wang, Nie, He, Hong, Chua, ACM MM 2019"
    notes = (
        "One GCN branch per modality channel on the training user–item graph (user preference vectors, item feature "
        "MLP, mean aggregation, shared ID embedding in the combination), branches averaged; BPR. The shipped code's "
        "untrained ID/preference tensors are parameters here; `layout=reference` runs its first layer at the feature "
        "width as that code does. Graph-CF protocol: [graph-cf.md](graph-cf.md)."
    )
    # batch: the authors' main.py; lr: the harness's 1e-3, chosen on validation over main.py's 1e-4 (docs/graph-cf.md)
    train_defaults = {"batch_size": 1024}
