"""HAN-GNN: MMSR's heterogeneity-aware dual attention with the asynchronous update gate
(Hu et al., CIKM 2023, §4.3 / Eqs. 12-17; see specs/mmsr.md §5)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aggregators.attention import adjacency_rows, glorot_, masked_softmax, typed_linear, zero_padded
from aggregators.base import SELF, heterogeneous_relations, homogeneous_relations
from fusionbench.context import AggregatorContext
from fusionbench.dropout import dropout
from fusionbench.options import Ge, Lt, PluginOptions, require
from fusionbench.registry import AGGREGATORS
from fusionbench.space import Choice, Uniform

if TYPE_CHECKING:
    from aggregators.dgl_backend import SparseBatch

UPDATES = ("gate", "sync", "ni_hohe", "ni_heho", "hohe", "heho", "ho", "he")
NEEDS_HO = ("ho", "sync", "ni_hohe", "hohe", "gate")
"""Update rules that read the phase-1 homogeneous output :math:`u^{ho}`."""
NEEDS_HE = ("he", "sync", "ni_heho", "heho", "gate")
"""Update rules that read the phase-1 heterogeneous output :math:`u^{he}`."""


@dataclass
class PhaseTwo:
    """The second attention phase of a two-phase update rule, as one backend computes it.

    Attributes:
        homo: ``(scores, values) -> agg^ho``: homogeneous attention whose content scores are read from
            ``scores`` (vectors already through :math:`W_V`), aggregating ``values``.
        hetero: ``(states, values) -> agg^he``: heterogeneous attention whose queries and keys are the
            typed maps :math:`W_Q, W_K` of ``states``, aggregating ``values``.
        value: ``u -> W_V u`` (typed) in the space of the phase's sending nodes.
        values: :math:`W_V h` of the sending nodes (the original values, which non-invasive rules keep).
        receivers: phase-1 states of the sending nodes -> those of the phase's receiving nodes.
    """

    homo: Callable[[Tensor, Tensor], Tensor]
    hetero: Callable[[Tensor, Tensor], Tensor]
    value: Callable[[Tensor], Tensor]
    values: Tensor
    receivers: Callable[[Tensor], Tensor] = lambda u: u


def apply_update(layer: "HAN", first_ho: Callable[[], Tensor], first_he: Callable[[], Tensor],
                 second: Callable[[], PhaseTwo]) -> Tensor:
    r"""HAN-GNN's update rule (``layer.opts.update``), written once for every path that computes it: the
    dense ``forward``, ``forward_rows`` and the sparse (DGL) ``forward_sparse``. Each supplies its own
    attentions; this function decides which run and how their outputs combine.

    ``first_ho()`` and ``first_he()`` give :math:`u^{ho} = \operatorname{agg}^{ho}(h, h)` and
    :math:`u^{he} = \operatorname{agg}^{he}(h, h)` for the nodes that phase 2 reads (each is called at most
    once, ho before he, so dropout draws come in one order on every path); ``second()`` builds phase 2
    (:class:`PhaseTwo`) and is called only by two-phase rules. Phase-2 scores always come from the phase-1
    output; non-invasive rules aggregate the original values, invasive ones :math:`W_V u`; ``gate`` mixes
    both non-invasive orders with ``layer.mix`` (Eq. 17), ``sync`` maps both phase-1 outputs with
    ``layer.sync`` (Eq. 15). Under ``hohe_scores="input"`` (the reference code) ``gate`` mixes
    :math:`u^{he}` with the non-invasive heho output."""
    update = layer.opts.update
    reference_hohe = update == "gate" and layer.opts.hohe_scores == "input"
    u_ho = first_ho() if update in NEEDS_HO and not reference_hohe else None
    u_he = first_he() if update in NEEDS_HE else None
    if update == "ho":
        return u_ho
    if update == "he":
        return u_he
    if update == "sync":
        return layer.sync(torch.cat([u_ho, u_he], -1))
    two = second()
    if update == "ni_hohe":
        return two.hetero(u_ho, two.values)
    if update == "ni_heho":
        return two.homo(two.value(u_he), two.values)
    if update == "hohe":
        return two.hetero(u_ho, two.value(u_ho))
    if update == "heho":
        w = two.value(u_he)
        return two.homo(w, w)
    hohe = two.receivers(u_he) if reference_hohe else two.hetero(u_ho, two.values)
    return layer.mix(hohe, two.homo(two.value(u_he), two.values))


@dataclass(frozen=True)
class HANOptions(PluginOptions):
    """``update``: the update rule (MMSR Table 4 rows): "gate" = both non-invasive orders mixed by the
    update gate (full model); "sync" = Eq. 15; "ni_hohe"/"ni_heho" = one non-invasive order;
    "hohe"/"heho" = one invasive order; "ho"/"he" = one relation group only. The hohe orders' phase-2
    scores are of fourth order in the weights and can run away at MMSR's lr 0.002 (docs/departures.md,
    HAN-GNN; ``train.grad_clip=1.0`` keeps them stable).
    ``gate``: "concat" = MLP([h_hohe; h_heho]) 2d -> d -> ReLU -> 2 (paper, Eq. 16); "per_candidate" =
    a shared scorer d -> d -> ReLU -> 1 on each candidate, softmax over the two (reference code).
    ``scale``: divide query-key scores by sqrt(d). ``attn_dropout``: dropout on attention weights.
    ``negative_slope``: LeakyReLU slope applied to both kinds of scores. ``projections``: "separate"
    typed maps W_Q, W_K, W_V (paper); "query" = the reference code's form, where keys and values are the
    queries (W_K = W_V = W_Q, so heterogeneous scores are (W_Q h_j)·(W_Q h_i) and every value is W_Q h).
    ``hohe_scores`` (``update="gate"`` only): the hohe order's second attention scores "phase1" = the
    phase-1 homogeneous output u^ho (paper) or "input" = the input states again, as the reference code does,
    so that its non-invasive output is the phase-1 heterogeneous output u^he (one dropout draw, where the
    reference draws twice) and the gate mixes u^he with the heho order."""

    update: Literal["gate", "sync", "ni_hohe", "ni_heho", "hohe", "heho", "ho", "he"] = "gate"
    gate: Literal["concat", "per_candidate"] = "concat"
    scale: bool = True
    attn_dropout: Annotated[float, Ge(0), Lt(1)] = 0.2
    negative_slope: Annotated[float, Ge(0)] = 0.1
    projections: Literal["separate", "query"] = "separate"
    hohe_scores: Literal["phase1", "input"] = "phase1"

    ONLY_WHEN_SET = frozenset({"projections", "hohe_scores"})   # added after runs were stored

    def check(self) -> None:
        super().check()
        require(self.update == "gate" or self.hohe_scores == "phase1",
                f"option 'hohe_scores=input' applies to update 'gate' only (got update '{self.update}')")


@AGGREGATORS.register("han")
class HAN(nn.Module):
    r"""HAN-GNN of Hu, Guo, Liu & Kan, "Adaptive Multi-Modalities Fusion in Sequential Recommendation
    Systems" (CIKM 2023): heterogeneity-aware dual attention with asynchronous, non-invasive updates
    and a node-wise update gate. Not Wang et al.'s meta-path HAN (that is closer to ``hgat``).

    Per node type t: distinct maps :math:`W_{Q,t}, W_{K,t}, W_{V,t}`; values :math:`V_j = W_{V,t_j}^\top h_j`.
    Homogeneous (content) attention over :math:`N^{ho}_i` (channels ``base.homogeneous_relations``),
    one vector :math:`a_r` per homogeneous relation, and heterogeneous (query-key) attention over
    :math:`N^{he}_i` (channels ``base.heterogeneous_relations``):

    .. math::
        e^{ho}_{ij}(h) = a_{r(i,j)}^\top \big(W_{V,t_i}^\top h_i \odot W_{V,t_j}^\top h_j\big), \qquad
        e^{he}_{ij}(h) = \frac{(W_{Q,t_j}^\top h_j)\cdot(W_{K,t_i}^\top h_i)}{\sqrt d}, \\
        \operatorname{agg}^{*}(s, v)_i = \sum_{j \in N^{*}_i}
            \operatorname{softmax}_j\big(\operatorname{LeakyReLU}(e^{*}_{ij}(s))\big)\, W_{V,t_j}^\top v_j

    Update rules (``update``), with :math:`u^{ho} = \operatorname{agg}^{ho}(h, h)`,
    :math:`u^{he} = \operatorname{agg}^{he}(h, h)`:

    .. math::
        \text{ho: } u^{ho}, \quad \text{he: } u^{he}, \quad
        \text{sync: } W_s [u^{ho}; u^{he}] + b_s, \\
        \text{ni\_hohe: } \operatorname{agg}^{he}(u^{ho}, h), \quad
        \text{ni\_heho: } \operatorname{agg}^{ho}(u^{he}, h), \quad
        \text{hohe: } \operatorname{agg}^{he}(u^{ho}, u^{ho}), \quad
        \text{heho: } \operatorname{agg}^{ho}(u^{he}, u^{he}), \\
        \text{gate: } \beta_i = \operatorname{softmax}\big(\mathrm{MLP}([h^{hohe}_i; h^{heho}_i])\big), \quad
        h'_i = \beta_{i,0}\, h^{hohe}_i + \beta_{i,1}\, h^{heho}_i

    where gate uses the non-invasive orders. Phase-2 *scores* always come from the phase-1 output (in
    both orders); non-invasive variants aggregate the original values :math:`W_V h`, invasive ones
    :math:`W_V u`. Content scores are :math:`(V \odot a_r) V^\top` per relation, never a
    ``[B, N, N, d]`` tensor; if a pair carries several homogeneous relations their scores add up.
    A node without neighbours in a group gets 0 from that group (masked softmax, no uniform weights).
    Attention dropout applies to every attention map. No residual, output dropout or activation:
    the strategy adds those.

    Shapes:
        x [B, N, d], adj [B, R, N, N] bool (adj[b, r, i, j]: edge j -> i),
        node_type [B, N] long in 0..T-1, node_mask [B, N] bool  ->  [B, N, d], zero at padded nodes.
        Content logits ``[B, R_ho, N, N]``; ``W_Q, W_K, W_V`` are ``[T, d, d]`` (used as ``x @ W[t]``).
    """

    Options = HANOptions
    search_space = {"update": Choice(("gate", "sync", "ni_hohe", "ni_heho")), "attn_dropout": Uniform(0.0, 0.5)}

    def __init__(self, ctx: AggregatorContext, opts: HANOptions):
        super().__init__()
        self.ctx, self.opts = ctx, opts
        d, t = ctx.dim, ctx.n_node_types
        self.homo = homogeneous_relations(ctx)
        assert self.homo[0] == SELF, "homogeneous_logits reads channel SELF first"
        self.hetero = heterogeneous_relations(ctx)
        self.w_q = nn.Parameter(torch.empty(t, d, d))
        separate = opts.projections == "separate"
        self.w_k = nn.Parameter(torch.empty(t, d, d)) if separate else None
        self.w_v = nn.Parameter(torch.empty(t, d, d)) if separate else None
        self.att_ho = nn.Parameter(torch.empty(len(self.homo), d))
        self.sync = nn.Linear(2 * d, d) if opts.update == "sync" else None
        self.gate = None
        if opts.update == "gate":
            width = 2 * d if opts.gate == "concat" else d
            self.gate = nn.Sequential(nn.Linear(width, d), nn.ReLU(),
                                      nn.Linear(d, 2 if opts.gate == "concat" else 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.w_q, self.w_k, self.w_v, self.att_ho):
            if w is not None:
                glorot_(w)
        for lin in [self.sync] + ([self.gate[0], self.gate[2]] if self.gate is not None else []):
            if lin is not None:
                glorot_(lin.weight)
                nn.init.zeros_(lin.bias)

    @property
    def key_map(self) -> Tensor:
        """W_K ``[T, d, d]`` (W_Q under ``projections="query"``)."""
        return self.w_q if self.w_k is None else self.w_k

    @property
    def value_map(self) -> Tensor:
        """W_V ``[T, d, d]`` (W_Q under ``projections="query"``)."""
        return self.w_q if self.w_v is None else self.w_v

    # -- the two attentions ------------------------------------------------------------------
    def homogeneous_logits(self, v: Tensor, adj_ho: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        r""":math:`e^{ho}_{ij} = \sum_r A_r[i, j]\, a_r^\top (v_i \odot v_j)` (0 off the homogeneous edges),
        for every receiving node i, or only for the Q nodes i = ``rows[b, q]`` of graph b.

        Channel ``SELF`` is a self loop, so only its diagonal is read: its term is
        :math:`a_{self}^\top (v_i \odot v_i)` at (i, i), O(N d). The other R_ho - 1 products
        :math:`(V_Q \odot a_r) V^\top` run as one ``[B, (R_ho - 1) Q, d] @ [B, d, N]`` matmul.

        Shapes: v [B, N, d] (already through W_V); adj_ho [B, R_ho, N, N] bool (channel 0 = SELF), or with
        rows [B, Q] long only the rows' in-edges [B, R_ho, Q, N] (``attention.adjacency_rows``)
        -> [B, Q, N] (Q = N without ``rows``).
        """
        batch, n, d = v.shape
        if rows is None:
            v_q, self_loops = v, adj_ho[:, 0].diagonal(dim1=-2, dim2=-1)                   # [B, N]
        else:
            v_q = v[torch.arange(batch, device=v.device)[:, None], rows]                   # [B, Q, d]
            self_loops = adj_ho[:, 0].gather(-1, rows[..., None])[..., 0]                  # [B, Q]
        between = adj_ho[:, 1:]
        relations, queries = between.shape[1], v_q.shape[1]
        left = (v_q[:, None] * self.att_ho[None, 1:, None, :]).reshape(batch, relations * queries, d)
        per_relation = (left @ v.transpose(1, 2)).view(batch, relations, queries, n)
        logits = (per_relation * between.to(v.dtype)).sum(1)
        self_term = ((v_q * v_q) @ self.att_ho[0]) * self_loops.to(v.dtype)              # [B, Q]
        if rows is None:
            logits.diagonal(dim1=-2, dim2=-1).add_(self_term)
        else:
            logits = logits.scatter_add(2, rows[..., None], self_term[..., None])
        return logits

    def heterogeneous_logits(self, q: Tensor, k: Tensor) -> Tensor:
        r""":math:`e^{he}_{ij} = (W_{Q,t_j} h_j) \cdot (W_{K,t_i} h_i)\,[/\sqrt d]`.

        Shapes: q [B, N, d], k [B, Q, d] (typed queries of every node, keys of the Q receiving nodes,
        from the scoring states) -> [B, Q, N].
        """
        e = k @ q.transpose(-1, -2)
        return e / math.sqrt(self.ctx.dim) if self.opts.scale else e

    def _attend(self, logits: Tensor, mask: Tensor, values: Tensor) -> Tensor:
        alpha = masked_softmax(F.leaky_relu(logits, self.opts.negative_slope), mask)
        return dropout(alpha, self.opts.attn_dropout, self.training) @ values

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor) -> Tensor:
        return zero_padded(self._update(x, adj, node_type, node_mask), node_mask)

    def forward_rows(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor, rows: Tensor) -> Tensor:
        """``forward(x, adj, node_type, node_mask)[b, rows[b]]`` without the other rows' outputs (a
        readout that reads one node per graph). The last phase and the gate run for ``rows`` only; a
        two-phase update runs phase 1 for the rows' neighbourhoods only (:meth:`neighbourhoods`), as
        phase 2 at a node reads phase-1 states of that node and its neighbours and nothing else, and
        its phase 2 attends over those K members instead of all N nodes. ``rows`` must be real nodes.

        Shapes: as ``forward``, rows [B] long -> [B, d].
        """
        return self._update(x, adj, node_type, node_mask, rows[:, None])[:, 0]

    @staticmethod
    def neighbourhoods(adj: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each row node with its in-neighbours over all relations, as a padded index set.

        Returns ``members [B, K]`` (K = the largest neighbourhood of the batch, members in node order;
        the row node itself pads shorter sets, so every entry is a real node), ``real [B, K]`` (False at
        those pads) and ``row_slot [B, 1]``: the position of the row node in ``members``.

        Shapes: adj [B, R, N, N] bool, rows [B, 1] long -> [B, K], [B, K], [B, 1].
        """
        batch = adj.shape[0]
        at = torch.arange(batch, device=adj.device)[:, None]
        inside = adjacency_rows(adj, rows).any(1)[:, 0]                              # [B, N]
        inside[at, rows] = True
        count = inside.sum(1, keepdim=True)
        k = int(count.max())
        order = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)[:, :k]   # members first
        real = torch.arange(k, device=adj.device)[None] < count
        row_slot = (inside.cumsum(1) - 1).gather(1, rows)
        return torch.where(real, order, rows), real, row_slot

    def edges(self, adj: Tensor, node_mask: Tensor, rows: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """In-edges between real nodes of every node, or of the query nodes ``rows`` only: the homogeneous
        channels ``[B, R_ho, Q, N]`` and the masks of homogeneous / heterogeneous neighbours ``[B, Q, N]``.

        Shapes: adj [B, R, N, N] bool, node_mask [B, N], rows None or [B, Q] long (Q = N without rows).
        """
        if rows is None:
            real = node_mask[:, :, None]
        else:
            adj = adjacency_rows(adj, rows)
            real = node_mask[torch.arange(adj.shape[0], device=adj.device)[:, None], rows][..., None]
        pairs = real & node_mask[:, None, :]                                  # [B, Q, N]
        adj_ho = adj[:, self.homo] & pairs[:, None]
        return adj_ho, adj_ho.any(1), adj[:, self.hetero].any(1) & pairs

    @staticmethod
    def edges_from(edges: tuple[Tensor, Tensor, Tensor], columns: Tensor,
                   keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`edges` restricted to the sending nodes ``columns`` (in that order), where ``keep``.

        Shapes: edges as :meth:`edges` gives them ([B, R_ho, Q, N], [B, Q, N], [B, Q, N]), columns [B, C]
        long, keep [B, C] bool -> [B, R_ho, Q, C], [B, Q, C], [B, Q, C].
        """
        adj_ho, _, mask_he = edges
        at = columns[:, None, :].expand(-1, mask_he.shape[1], -1)                   # [B, Q, C]
        adj_ho = adj_ho.gather(-1, at[:, None].expand(-1, adj_ho.shape[1], -1, -1)) & keep[:, None, None, :]
        return adj_ho, adj_ho.any(1), mask_he.gather(-1, at) & keep[:, None, :]

    def _update(self, x: Tensor, adj: Tensor, node_type: Tensor, node_mask: Tensor,
                rows: Optional[Tensor] = None) -> Tensor:
        """The update rule for every node (``rows`` None: [B, N, d]) or for one query node per graph
        (``rows`` [B, 1] -> [B, 1, d]).

        With ``rows`` and two phases, both phases work in the ``[B, K]`` space of the rows'
        neighbourhoods (:meth:`neighbourhoods`): phase 1 runs for the K members (attending over all N
        nodes) and phase 2 for the row, attending over the K members only, which hold all its
        neighbours. ``rows`` must be real nodes."""
        h = zero_padded(x, node_mask)
        at = torch.arange(x.shape[0], device=x.device)[:, None]
        if rows is None or self.opts.update in ("ho", "he", "sync"):
            first = rows                              # phase 1 is the last phase, or runs for every node
        else:
            first, real, row_slot = self.neighbourhoods(adj, rows)
        if first is None:
            q, k, v = typed_linear(h, node_type, torch.cat([self.w_q, self.key_map, self.value_map], -1)).chunk(3, -1)
        else:                                         # keys are read at the receiving nodes only
            q, v = typed_linear(h, node_type, torch.cat([self.w_q, self.value_map], -1)).chunk(2, -1)
            k = typed_linear(h[at, first], node_type[at, first], self.key_map)

        def homo(score_v: Tensor, values: Tensor, idx: Optional[Tensor], edges) -> Tensor:
            adj_ho, mask_ho, _ = edges
            return self._attend(self.homogeneous_logits(score_v, adj_ho, idx), mask_ho, values)

        def hetero(queries: Tensor, keys: Tensor, values: Tensor, edges) -> Tensor:
            """keys: those of the receiving nodes [B, Q, d]."""
            return self._attend(self.heterogeneous_logits(queries, keys), edges[2], values)

        edges_1 = self.edges(adj, node_mask, first)

        def second() -> PhaseTwo:  # over all nodes, or for the row over its neighbourhood (K phase-1 states)
            if rows is None:
                types, values, idx, edges_2 = node_type, v, None, edges_1
            else:
                types, values, idx = node_type[at, first], v[at, first], row_slot
                edges_2 = self.edges_from(self.edges(adj, node_mask, rows), first, real)

            def query_key(u: Tensor) -> tuple[Tensor, Tensor]:  # queries of every node, keys of the receivers
                queries, keys = typed_linear(u, types, torch.cat([self.w_q, self.key_map], -1)).chunk(2, -1)
                return queries, (keys if idx is None else keys[at, idx])

            return PhaseTwo(homo=lambda scores, values: homo(scores, values, idx, edges_2),
                            hetero=lambda states, values: hetero(*query_key(states), values, edges_2),
                            value=lambda u: typed_linear(u, types, self.value_map), values=values,
                            receivers=lambda u: u if idx is None else u[at, idx])

        return apply_update(self, lambda: homo(v, v, first, edges_1), lambda: hetero(q, k, v, edges_1), second)

    def forward_sparse(self, h: Tensor, batch: SparseBatch) -> Tensor:
        r"""The sparse (DGL) path of ``forward`` on the real-node rows of a
        :class:`~aggregators.dgl_backend.SparseBatch`: content logits :math:`a_r^\top (v_i \odot v_j)` per typed
        homogeneous edge, summed over the relations of a pair, and query-key logits per heterogeneous pair,
        composed by the same update rule as the dense layer (:func:`apply_update`); dgl is imported here only.

        Shapes: h [V, d] -> [V, d].
        """
        from dgl import ops

        from aggregators.dgl_backend import attend

        opts, nt = self.opts, batch.node_type
        ho_pairs = batch.union(self.homo)
        ho_slots = batch.slots(self.homo)
        he_graph = batch.union(self.hetero).graph
        value = lambda t: typed_linear(t, nt, self.value_map)                 # noqa: E731
        v = value(h)

        def homo(score_v: Tensor, values: Tensor) -> Tensor:
            keyed = (score_v[:, None, :] * self.att_ho[None]).reshape(-1, score_v.shape[-1])   # slot (j, r)
            per_edge = ops.u_dot_v(ho_slots.slot_to_node, keyed, score_v).squeeze(-1)        # [E_ho]
            pair = per_edge.new_zeros(ho_pairs.graph.num_edges()).index_add_(0, ho_pairs.inverse, per_edge)
            logits = F.leaky_relu(pair, opts.negative_slope)
            return attend(ho_pairs.graph, logits[:, None], values, opts.attn_dropout, self.training)

        def hetero(score_h: Tensor, values: Tensor) -> Tensor:
            q, k = typed_linear(score_h, nt, self.w_q), typed_linear(score_h, nt, self.key_map)
            e = ops.u_dot_v(he_graph, q, k)                                    # [E_he, 1]: q_j . k_i
            e = e / math.sqrt(self.ctx.dim) if opts.scale else e
            return attend(he_graph, F.leaky_relu(e, opts.negative_slope), values, opts.attn_dropout, self.training)

        return apply_update(self, lambda: homo(v, v), lambda: hetero(h, v),
                            lambda: PhaseTwo(homo=homo, hetero=hetero, value=value, values=v))

    def gate_weights(self, hohe: Tensor, heho: Tensor) -> Tensor:
        """β ``[B, N, 2]`` of the update gate (Eq. 16), from the two candidates ``[B, N, d]``."""
        if self.opts.gate == "concat":
            logits = self.gate(torch.cat([hohe, heho], -1))
        else:
            logits = torch.cat([self.gate(hohe), self.gate(heho)], -1)
        return logits.softmax(-1)

    def mix(self, hohe: Tensor, heho: Tensor) -> Tensor:
        """Eq. 17: :math:`\\beta_0 h^{hohe} + \\beta_1 h^{heho}`; shapes [B, N, d] -> [B, N, d]."""
        beta = self.gate_weights(hohe, heho)
        return beta[..., :1] * hohe + beta[..., 1:] * heho

    def extra_repr(self) -> str:
        return (f"{self.ctx.dim}, {self.ctx.dim}, node_types={self.ctx.n_node_types}, "
                f"homogeneous={self.homo}, heterogeneous={self.hetero}, update={self.opts.update}, "
                f"gate={self.opts.gate}")
