r"""MDSRec: Li, Guo, Li, Zou, "Multimodal Difference Learning for Sequential Recommendation", arXiv
2412.08103 (2024). Fusion stage: late (one item graph and one sequence encoder per channel, user
vectors fused at the end). Only the abstract is public: which parts are the paper's and which are
ours is in docs/mdsrec.md (specs/mdsrec.md).

**Item relation graphs** and the item enhancement on them: :mod:`strategies.item_graphs` (one graph
per channel m, built once from the frozen features and the split's training-visible history). A position
whose modality is hidden by ``SeqBatch.present`` sees the item's enhanced vector as if the item lacked m,
:math:`\tilde e^m_v + \kappa_v(\mu_m - x^m_v)`; one where ``SeqBatch.shown`` shows item s's modality sees
:math:`\tilde e^m_v + \kappa_v(x^m_s - x^m_v)` (κ: :class:`strategies.item_graphs.GraphPropagation`).

**Interest-centralized attention** (one encoder per channel, no shared parameters). Inputs
:math:`X = \sqrt d\,\tilde e^m_{v_{1..L}}`; interest centre :math:`c_t` (``center``: prefix mean of X,
the last item X_t, or a learned vector); each causal layer adds a centrality term to the logits,

.. math::
    a_{tj} = \frac{(q_t + W_Q c_t)\cdot k_j}{\sqrt{d_h}},\qquad
    u_t = \sum_{j \le t} \mathrm{softmax}_j\Big(\frac{W^r_Q c_t \cdot W^r_K h_j}{\sqrt{d_h}}\Big) W^r_V h_j

(readout ``center``; ``last``: :math:`u_t = h_t`). Everything at position t depends on items up to t
only, so one causal pass scores every prefix.

**Fusion** of the channel users :math:`u^m` (``fusion``): ``sum_scores`` :math:`\hat y_v = \sum_m
u^m\cdot\tilde e^m_v`; ``gate_user`` :math:`\hat y_v = \sum_m g_m\,u^m\cdot\tilde e^m_v`,
:math:`g = \mathrm{softmax}(W_g[u^1;\dots;u^C])`; ``concat`` :math:`\hat y_v = W_u[u^1;\dots] \cdot
W_e[\tilde e^1_v;\dots]`. Loss: full-softmax CE on the fused scores plus
:math:`\beta\sum_m \mathrm{CE}(u^m\cdot\tilde e^m)`.

Shapes:
    items ``[B, L]`` -> channel inputs ``[B, L, C, d]`` -> channel users ``[B, L, C, d]`` -> encode
    ``[B, C*d]`` (``concat``: ``[B, d]``); item_embeddings ``[n_items + 1, C*d]`` (``concat``: d);
    C = number of channels (``id`` and the modalities).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from fusionbench import full_softmax
from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.dropout import Dropout, attention
from fusionbench.errors import UserInputError
from fusionbench.options import Ge, Le, Lt, require
from fusionbench.registry import STRATEGIES
from fusionbench.space import Choice, LogUniform, Uniform
from fusionbench.strategy import CausalStrategy
from strategies.backbones import causal_allowed, embedding_init_, forward_positions, split_heads
from strategies.fusion import ModalityChannel, SequenceOptions
from strategies.item_graphs import (
    GraphPropagation,
    behaviour_counts,
    channel_edges,
    normalised_adjacency,
    similarity_features,
)

ID = "id"


# --------------------------------------------------------------------------------------- encoder


class CentredAttention(nn.Module):
    r"""Multi-head attention with queries and keys/values from different inputs:
    :math:`\mathrm{softmax}((Q_{in} W_Q + b_Q)(K_{in} W_K + b_K)^\top/\sqrt{d_h} + M) (K_{in} W_V + b_V) W_O`.

    Shapes: queries ``[B, L, d]``, keys ``[B, L, d]``, allowed ``[B, L, L]`` bool -> ``[B, L, d]``.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, queries: Tensor, keys: Tensor, allowed: Tensor) -> Tensor:
        b, length, d = keys.shape
        q = split_heads(self.query(queries), self.heads)
        k, v = split_heads(self.key(keys), self.heads), split_heads(self.value(keys), self.heads)
        y = attention(q, k, v, allowed[:, None], self.dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class CentredBlock(nn.Module):
    r"""Pre-LayerNorm causal block whose queries carry the interest centre:

    .. math::
        X = \mathrm{LN}(H),\quad H \leftarrow H + \mathrm{Drop}(\mathrm{Attn}(X + \mathrm{LN}_c(c), X)),\quad
        H \leftarrow H + \mathrm{Drop}(\mathrm{FFN}(\mathrm{LN}(H)))

    so the logits are :math:`(q_t + W_Q \mathrm{LN}_c(c_t)) \cdot k_j / \sqrt{d_h}`.
    Shapes: h ``[B, L, d]``, centre ``[B, L, d]``, allowed ``[B, L, L]`` -> ``[B, L, d]``.
    """

    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int):
        super().__init__()
        self.norm1, self.norm_centre, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CentredAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, h: Tensor, centre: Tensor, allowed: Tensor) -> Tensor:
        x = self.norm1(h)
        h = h + self.drop(self.attn(x + self.norm_centre(centre), x, allowed))
        return h + self.drop(self.ffn(self.norm2(h)))


class InterestCentredEncoder(nn.Module):
    r"""Interest-centralized attention encoder of one channel (module doc).

    Args:
        dim: d. layers: centred blocks. heads, dropout, ffn_dim: as the shared transformer.
        max_len: L. center: ``"mean"`` (prefix mean of the inputs), ``"last"`` (the input at t) or
        ``"learned"`` (one learned vector). readout: ``"center"`` (attention of the centre query over
        positions <= t) or ``"last"`` (the block output at t).

    Shapes: x ``[B, L, d]`` (scaled item vectors, no positions), mask ``[B, L]`` -> ``[B, L, d]``
    (the user vector after every position; zeros at padding).
    """

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_len: int, ffn_dim: int,
                 center: str, readout: str):
        super().__init__()
        self.max_len, self.center = max_len, center
        self.pos = nn.Embedding(max_len, dim)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(CentredBlock(dim, heads, dropout, ffn_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.learned_centre = nn.Parameter(torch.empty(dim)) if center == "learned" else None
        if readout == "center":
            self.readout_norm = nn.LayerNorm(dim)
            self.readout = CentredAttention(dim, heads, dropout)
        else:
            self.readout_norm = self.readout = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # submodules are re-initialised by their own reset_parameters
        if self.learned_centre is not None:
            nn.init.normal_(self.learned_centre, std=1.0 / math.sqrt(self.learned_centre.numel()))

    def interest_centre(self, x: Tensor, mask: Tensor) -> Tensor:
        r"""c ``[B, L, d]``: ``mean`` :math:`c_t = \sum_{j \le t} m_j x_j / \max(1, \sum_{j \le t} m_j)`,
        ``last`` :math:`c_t = x_t`, ``learned`` :math:`c_t = c`."""
        if self.center == "mean":
            m = mask[..., None].to(x.dtype)
            return (x * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        if self.center == "last":
            return x
        return self.learned_centre.expand_as(x)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        centre = self.interest_centre(x, mask)
        h = self.drop(x + self.pos(forward_positions(mask, self.max_len)))
        allowed = causal_allowed(mask)
        for block in self.blocks:
            h = block(h, centre, allowed)
        h = self.norm(h)
        if self.readout is not None:
            h = self.readout(self.readout_norm(centre), h, allowed)
        return h * mask[..., None]


# --------------------------------------------------------------------------------------- strategy


@dataclass(frozen=True)
class MDSRecOptions(SequenceOptions):
    """``channels``: channels to model, ``id`` and modality names (empty = ``id`` and every modality of
    the data). ``k_sim``: similarity neighbours per item. ``k_graph``: graph edges kept per item.
    ``window``: co-occurrence window w. ``graph``: ``mix`` or ``intersect`` of similarity and behaviour.
    ``lambda_b``: behaviour weight of ``mix``. ``graph_layers``: propagation depth (1 or 2; 0 = graphs off, the
    ablation). ``center``: interest centre. ``readout``: centre-query attention or last state. ``fusion``:
    ``sum_scores``, ``gate_user`` or ``concat``. ``beta``: weight of the per-channel CE terms."""

    layers: Annotated[int, Ge(1)] = 1
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.3
    channels: tuple[str, ...] = ()
    k_sim: Annotated[int, Ge(1)] = 10
    k_graph: Annotated[int, Ge(1)] = 10
    window: Annotated[int, Ge(1)] = 1
    graph: Literal["mix", "intersect"] = "mix"
    lambda_b: Annotated[float, Ge(0), Le(1)] = 0.5
    graph_layers: Annotated[int, Ge(0), Le(2)] = 1
    center: Literal["mean", "last", "learned"] = "mean"
    readout: Literal["center", "last"] = "center"
    fusion: Literal["sum_scores", "gate_user", "concat"] = "sum_scores"
    beta: Annotated[float, Ge(0)] = 0.1

    def check(self) -> None:
        super().check()
        require(len(set(self.channels)) == len(self.channels),
                f"option 'channels' names a channel twice: {', '.join(self.channels)}")


def channel_names(ctx: StrategyContext, channels: tuple[str, ...]) -> tuple[str, ...]:
    """The modelled channels in order: ``id`` first (if chosen), then modalities in the context's order."""
    if ID in ctx.modalities:
        raise UserInputError(f"mdsrec: a modality may not be named {ID!r} (that is the ID channel's name)")
    if not channels:
        return (ID, *ctx.modalities)
    unknown = [c for c in channels if c != ID and c not in ctx.modalities]
    if unknown:
        available = ", ".join([ID, *ctx.modalities])
        raise UserInputError(f"mdsrec: option 'channels' names {unknown[0]!r}, which this data does not have; "
                             f"available: {available}")
    return tuple(c for c in (ID, *ctx.modalities) if c in channels)


@STRATEGIES.register("mdsrec")
class MDSRec(CausalStrategy):
    """MDSRec (arXiv 2412.08103): per-modality item graphs with behaviour signal, interest-centralized
    attention per modality, fused user vectors.

    Attributes: ``names`` (the modelled channels, ``id`` first), ``graphs`` (one
    :class:`GraphPropagation` per channel), ``encoders`` (one :class:`InterestCentredEncoder` per
    channel), ``graph_seconds`` (wall time of building the graphs)."""

    Options = MDSRecOptions
    search_space = {"lambda_b": Uniform(0.0, 1.0), "beta": LogUniform(0.01, 1.0),
                    "fusion": Choice(("sum_scores", "gate_user", "concat"))}
    fusion_stage = "late"
    train_defaults = {"lr": 1e-3, "batch_size": 256}
    paper = "Li, Guo, Li, Zou, arXiv 2412.08103 (abstract only; our design marked [A] in docs/mdsrec.md)"
    notes = (
        "Modal-aware item graphs from training history + interest-centred attention per channel; see docs/mdsrec.md."
    )

    def __init__(self, ctx: StrategyContext, opts: MDSRecOptions):
        super().__init__(ctx, opts)
        if ctx.history is None:
            raise UserInputError("mdsrec needs the split's history (StrategyContext.history: the training-visible "
                                 "interactions its item graphs are built from), but it is None; build the context "
                                 "with a split: runner.build_context(config, data, split)")
        if ctx.history.n_items != ctx.n_items:
            raise UserInputError(f"mdsrec: ctx.history has {ctx.history.n_items} items, the context {ctx.n_items}")
        d, n_nodes = opts.dim, ctx.n_items + 1
        self.names = channel_names(ctx, opts.channels)
        self.item = nn.Embedding(n_nodes, d, padding_idx=0) if ID in self.names else None
        self.modal = nn.ModuleDict({m: ModalityChannel(ctx.modalities[m], d, opts.feature_dropout)
                                    for m in self.names if m != ID})

        started = time.perf_counter()
        behaviour = behaviour_counts(ctx.history, opts.window)
        graphs = {}
        for name in self.names:
            if opts.graph_layers == 0:  # graphs off: nothing to build
                empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n_nodes, n_nodes),
                                                check_invariants=True)
                graphs[name] = GraphPropagation(empty.coalesce(), 0)
                continue
            similarity = None if name == ID else similarity_features(ctx.modalities[name])
            edges = channel_edges(behaviour, n_nodes, opts.k_graph, similarity, opts.k_sim, opts.graph, opts.lambda_b)
            graphs[name] = GraphPropagation(normalised_adjacency(*edges, n_nodes), opts.graph_layers)
        self.graphs = nn.ModuleDict(graphs)
        self.graph_seconds = time.perf_counter() - started

        self.encoders = nn.ModuleDict({
            name: InterestCentredEncoder(d, opts.layers, opts.heads, opts.dropout, ctx.max_len, opts.ffn_mult * d,
                                         opts.center, opts.readout)
            for name in self.names
        })
        n_channels = len(self.names)
        self.gate = nn.Linear(n_channels * d, n_channels) if opts.fusion == "gate_user" else None
        if opts.fusion == "concat":
            self.user_proj, self.item_proj = nn.Linear(n_channels * d, d), nn.Linear(n_channels * d, d)
        else:
            self.user_proj = self.item_proj = None
        self.scale = math.sqrt(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.item is not None:
            embedding_init_(self.item.weight)

    def item_tables(self) -> tuple[Tensor, Tensor]:
        """Per-channel item inputs x ``[n_items + 1, C, d]`` and their graph-enhanced versions (same shape)."""
        raw = [self.item.weight if name == ID else self.modal[name].table() for name in self.names]
        enhanced = [self.graphs[name](x) for name, x in zip(self.names, raw)]
        return torch.stack(raw, 1), torch.stack(enhanced, 1)

    def channel_inputs(self, batch: SeqBatch, raw: Tensor, enhanced: Tensor) -> Tensor:
        r"""``[B, L, C, d]`` enhanced vectors of the batch's items. Where ``batch.shown`` shows item s's
        modality at item v's position, or ``batch.present`` hides it (s = 0, whose row is the missing
        vector), the position gets v's enhanced vector as if v's own input were s's:
        :math:`\tilde e^m_v + \kappa_v (x^m_s - x^m_v)` (exact; zero change where s = v)."""
        x = enhanced[batch.items]
        present, shown = batch.present or {}, batch.shown or {}
        columns = []
        for c, name in enumerate(self.names):
            column = x[:, :, c]
            if name in present or name in shown:
                source = shown.get(name, batch.items)
                if name in present:
                    source = torch.where(present[name], source, 0)
                weight = self.graphs[name].self_weight[batch.items][..., None]
                column = column + weight * (raw[source, c] - raw[batch.items, c])
            columns.append(column)
        return torch.stack(columns, 2)

    def channel_users(self, batch: SeqBatch, raw: Tensor, enhanced: Tensor) -> Tensor:
        """``[B, L, C, d]``: each channel's user vector after every position (own encoder per channel)."""
        x = self.channel_inputs(batch, raw, enhanced) * self.scale
        return torch.stack([self.encoders[name](x[:, :, c], batch.mask) for c, name in enumerate(self.names)], 2)

    def channel_weights(self, users: Tensor) -> Tensor:
        r"""``[..., C]``: the gate :math:`g = \mathrm{softmax}(W_g [u^1; \dots; u^C])` (``gate_user``), else ones."""
        if self.gate is None:
            return users.new_ones(users.shape[:-1])
        return self.gate(users.flatten(-2)).softmax(-1)

    def fuse_users(self, users: Tensor) -> Tensor:
        """``[..., C, d]`` -> ``[..., C*d]`` (``sum_scores``; ``gate_user``: each block scaled by its gate)
        or ``[..., d]`` (``concat``)."""
        if self.user_proj is not None:
            return self.user_proj(users.flatten(-2))
        return (self.channel_weights(users)[..., None] * users).flatten(-2)

    def fuse_items(self, enhanced: Tensor) -> Tensor:
        """``[n_items + 1, C, d]`` -> ``[n_items + 1, C*d]`` or ``[n_items + 1, d]`` (``concat``)."""
        flat = enhanced.flatten(-2)
        return flat if self.item_proj is None else self.item_proj(flat)

    def hidden(self, batch: SeqBatch) -> Tensor:
        return self.fuse_users(self.channel_users(batch, *self.item_tables()))

    def item_embeddings(self) -> Tensor:
        return self.fuse_items(self.item_tables()[1])

    def loss(self, batch: SeqBatch) -> Tensor:
        r"""CE on the fused scores + :math:`\beta \sum_m` CE on each channel's own scores; at every
        position with a target (``batch.targets``) or at the last one (``batch.target``). ``sum_scores``
        and ``gate_user`` fuse the channel scores with per-row weights, so all the losses come from the
        channels' products, formed once (:func:`fusionbench.full_softmax.channel_cross_entropy`);
        ``concat`` scores by one product, ``fuse_users(u) @ fuse_items(e).T``
        (:func:`fusionbench.full_softmax.cross_entropy`). No ``[C, S, n]`` stack of channel scores, and no
        ``[S, n]`` scores above the size threshold of those functions."""
        raw, enhanced = self.item_tables()
        users, targets = self.at_targets(batch, lambda rows: self.channel_users(rows, raw, enhanced))
        if self.user_proj is None:
            return full_softmax.channel_cross_entropy(users, enhanced[1:], targets - 1, self.channel_weights(users),
                                                      self.opts.beta)
        loss = full_softmax.cross_entropy(self.fuse_users(users), self.fuse_items(enhanced)[1:], targets - 1)
        if self.opts.beta > 0:
            loss = loss + self.opts.beta * full_softmax.each_channel_cross_entropy(users, enhanced[1:], targets - 1)
        return loss
