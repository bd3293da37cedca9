r"""Shared machinery of the graph-CF baselines (``mmgcn``, ``mgat``, ``bm3`` of MMSR Table 2, with ``lightgcn``
and ``pop`` below them; specs/cf-baselines.md): the user–item interaction graph, the base class, BPR and
negatives.

**Graph** (:class:`InteractionGraph`). The bipartite graph of the (user, item) pairs of a
:class:`~fusionbench.data.core.SequenceData`, duplicates merged. Built once per run from
``ctx.history`` (the training interactions of the split: ``loo``: :math:`s_1..s_{T-2}`) for training
and validation; the test ranking uses ``ctx.test_history`` (``loo``: the validation item added, as the
sequential models see it in their test inputs; ``ratio``: nothing added, see docs/graph-cf.md).
Nodes: users ``0..U-1`` then items at ``U + v`` for v in ``0..n`` (node ``U`` is the padding item,
isolated), so the item rows of a node table are ``table[U:]``, shaped ``[n_items + 1, d]`` like every
strategy's item table. Adjacencies are sparse CSR ``[N, N]`` (N = U + n + 1), never dense:

.. math::
    \hat A_{\mathrm{sym}} = D^{-1/2} A D^{-1/2},\qquad \hat A_{\mathrm{mean}} = D^{-1} A

with A the symmetric 0/1 user–item adjacency and D its degrees (isolated nodes: rows of zeros).

**Strategy** (:class:`GraphCFStrategy`). A user is the sample's user id (``SeqBatch.user``), not its
history: ``encode(batch) = users[batch.user]`` and ``item_embeddings() = items`` of one propagation
(:meth:`GraphCFStrategy.propagate`) over the whole graph, computed once per evaluation (cached while
the model is in eval mode without gradients and its parameters unchanged). ``for_test()`` returns a
view with the same weights on the test-time graph. Batches are drawn uniformly (``bucket_key`` = 0).

**BPR** (:func:`bpr_loss`), one uniform negative per positive, drawn outside the user's graph items
(:func:`sample_negatives`):

.. math:: \mathcal L = -\frac1B \sum_b \log\sigma(\langle r_u, r_{i^+}\rangle - \langle r_u, r_{i^-}\rangle)

The positives are the training samples' (user, target) pairs, i.e. every graph edge but each user's
first item (a sample's target is never position 0), which is in the graph all the same.
"""
from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.data.core import SequenceData
from fusionbench.errors import UserInputError
from fusionbench.strategy import Strategy

NORMS = ("sym", "mean")

# contract checks without meaning for a multimodal model that ignores its history (declared by mmgcn, mgat, bm3)
FEATURE_CF_SKIPS: dict[str, str] = {
    "shifted_channels": "item features enter through the item table only; per-position 'shown' "
                        "channels of a history have nothing to act on in a model that ignores the history "
                        "(the user id identifies the user)",
}


@dataclass(frozen=True)
class InteractionGraph:
    """Unique (user, item) pairs of some interactions.

    Attributes:
        n_users: U. n_items: n (item ids 1..n).
        user, item: long ``[E]``, the unique pairs sorted by ``user * (n + 1) + item``.
        item_count: long ``[n_items + 1]``: interactions per item, repeats included (row 0: 0).
    """

    n_users: int
    n_items: int
    user: Tensor
    item: Tensor
    item_count: Tensor

    @classmethod
    def from_history(cls, history: SequenceData) -> "InteractionGraph":
        user = torch.repeat_interleave(torch.arange(history.n_users), history.lengths)
        keys = torch.unique(user * (history.n_items + 1) + history.flat)  # sorted, duplicates merged
        return cls(history.n_users, history.n_items, keys // (history.n_items + 1), keys % (history.n_items + 1),
                   torch.bincount(history.flat, minlength=history.n_items + 1))

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items + 1

    @property
    def keys(self) -> Tensor:
        """Sorted long ``[E]``: ``user * (n + 1) + item`` of every pair (membership by ``searchsorted``)."""
        return self.user * (self.n_items + 1) + self.item

    def edges(self) -> tuple[Tensor, Tensor]:
        """``dst [2E]``, ``src [2E]`` node ids, both directions of every pair (edge src -> dst)."""
        u, i = self.user, self.n_users + self.item
        return torch.cat([u, i]), torch.cat([i, u])

    def degree(self) -> Tensor:
        """float ``[N]``: the number of neighbours of every node."""
        dst, _ = self.edges()
        return torch.bincount(dst, minlength=self.n_nodes).float()

    def adjacency(self, norm: str) -> Tensor:
        """Sparse CSR ``[N, N]``: :math:`D^{-1/2} A D^{-1/2}` (``"sym"``) or :math:`D^{-1} A` (``"mean"``)."""
        if norm not in NORMS:
            raise ValueError(f"InteractionGraph.adjacency: unknown norm {norm!r}; known: {', '.join(NORMS)}")
        dst, src = self.edges()
        deg = self.degree().clamp(min=1)
        value = deg[dst].rsqrt() * deg[src].rsqrt() if norm == "sym" else 1.0 / deg[dst]
        order = torch.argsort(dst * self.n_nodes + src)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_coo_tensor(torch.stack([dst[order], src[order]]), value[order],
                                           (self.n_nodes, self.n_nodes), is_coalesced=True,
                                           check_invariants=False).to_sparse_csr()

    def adjacency_t(self, norm: str) -> Tensor:
        """Sparse CSR ``[N, N]``: the transpose of :meth:`adjacency` (the same for ``"sym"``)."""
        adj = self.adjacency(norm)
        if norm == "sym":
            return adj
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return adj.t().to_sparse_csr()


def _csr(crow: Tensor, col: Tensor, values: Tensor, n: int, n_cols: Optional[int] = None) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, (n, n if n_cols is None else n_cols),
                                       check_invariants=False)


def csr_rows(adj: Tensor, rows: Tensor) -> Tensor:
    """Sparse CSR ``[R, n]``: the rows ``rows [R]`` (long, any order, repeats allowed) of the sparse CSR
    ``adj [m, n]``, their entries in the same order as in ``adj``."""
    crow, col, values = adj.crow_indices(), adj.col_indices(), adj.values()
    start, count = crow[rows], crow[rows + 1] - crow[rows]
    sub_crow = torch.zeros(rows.numel() + 1, dtype=crow.dtype, device=crow.device)
    sub_crow[1:] = count.cumsum(0)
    take = torch.repeat_interleave(start - sub_crow[:-1], count) + torch.arange(int(sub_crow[-1]), device=crow.device)
    return _csr(sub_crow, col[take], values[take], rows.numel(), adj.shape[1])


class EdgePattern(NamedTuple):
    r"""A directed edge list ``src -> dst`` on ``n`` nodes in CSR order (rows ``dst``, columns ``src``), with
    its transpose, for per-edge values ``[M]`` kept in that order (:func:`sampled_dot`,
    :func:`edge_weighted_sum`): the per-edge work of graph attention as sparse kernels instead of gathered
    ``[M, d]`` operands.

    Attributes:
        n: the number of nodes. crow ``[n + 1]``, col ``[M]``: the CSR pattern; row ``[M]``: each edge's
        dst (sorted). crow_t, col_t ``[n + 1]``, ``[M]``: the transposed pattern (rows ``src``); perm_t ``[M]``: the
        CSR-order position of each entry of the transpose (values of the transpose: ``values[perm_t]``).
    """

    n: int
    crow: Tensor
    col: Tensor
    row: Tensor
    crow_t: Tensor
    col_t: Tensor
    perm_t: Tensor

    @classmethod
    def from_edges(cls, dst: Tensor, src: Tensor, n: int) -> "EdgePattern":
        """From ``dst, src [M]`` long node ids (edge src -> dst), any order."""
        order = torch.argsort(dst * n + src, stable=True)
        row, col = dst[order], src[order]
        perm_t = torch.argsort(col * n + row, stable=True)
        return cls(n, cls._crow(row, n), col, row, cls._crow(col[perm_t], n), row[perm_t], perm_t)

    @staticmethod
    def _crow(sorted_rows: Tensor, n: int) -> Tensor:
        crow = torch.zeros(n + 1, dtype=torch.long, device=sorted_rows.device)
        crow[1:] = torch.bincount(sorted_rows, minlength=n).cumsum(0)
        return crow

    def matrix(self, values: Tensor) -> Tensor:
        """Sparse CSR ``[n, n]`` with ``values [M]`` (CSR order) at (dst, src)."""
        return _csr(self.crow, self.col, values, self.n)

    def transposed(self, values: Tensor) -> Tensor:
        """Sparse CSR ``[n, n]``: the transpose of :meth:`matrix` (``values`` in CSR order)."""
        return _csr(self.crow_t, self.col_t, values[self.perm_t], self.n)


class _SampledDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, pattern: EdgePattern) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.pattern = pattern
        zeros = torch.zeros(pattern.col.shape, dtype=a.dtype, device=a.device)
        with torch.autocast(a.device.type, enabled=False):
            return torch.sparse.sampled_addmm(pattern.matrix(zeros), a, b.T, beta=0.0).values().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        pattern, grad = ctx.pattern, grad.contiguous()
        grad_a = pattern.matrix(grad) @ b if ctx.needs_input_grad[0] else None
        grad_b = pattern.transposed(grad) @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


class _EdgeWeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, x: Tensor, pattern: EdgePattern) -> Tensor:
        ctx.save_for_backward(weight, x)
        ctx.pattern = pattern
        with torch.autocast(x.device.type, enabled=False):
            return pattern.matrix(weight) @ x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        weight, x = ctx.saved_tensors
        pattern, grad = ctx.pattern, grad.contiguous()
        grad_w = sampled_dot(grad, x, pattern) if ctx.needs_input_grad[0] else None
        grad_x = pattern.transposed(weight) @ grad if ctx.needs_input_grad[1] else None
        return grad_w, grad_x, None


def _kernel_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the sparse kernels run in: the inputs' common one, float32 in place of bfloat16 or half
    (CPU ``sampled_addmm`` has no bfloat16 kernel; under autocast the inputs can differ)."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def sampled_dot(a: Tensor, b: Tensor, pattern: EdgePattern) -> Tensor:
    r"""``[M]``: :math:`\langle a_{dst}, b_{src}\rangle` of every edge in CSR order, for ``a, b [n, d]``, without
    gathering ``[M, d]`` operands (``torch.sparse.sampled_addmm``; backward: two sparse-dense products).
    Equals ``(a[pattern.row] * b[pattern.col]).sum(-1)`` up to float rounding. Low-precision inputs (autocast)
    are computed in float32 and the result cast back to their common dtype."""
    dtype = _kernel_dtype(a, b)
    out = _SampledDot.apply(a.to(dtype), b.to(dtype), pattern)
    return out.to(torch.promote_types(a.dtype, b.dtype))


def edge_weighted_sum(weight: Tensor, x: Tensor, pattern: EdgePattern) -> Tensor:
    r"""``[n, d]``: :math:`\sum_{w \to v} \mathrm{weight}_{vw}\, x_w` for every node v (zeros where v has no
    in-edge), ``weight [M]`` in CSR order, ``x [n, d]``: one sparse-dense product (backward: one more and a
    :func:`sampled_dot`). Equals ``zeros.index_add(0, pattern.row, weight[:, None] * x[pattern.col])`` up to
    float rounding; dtypes as in :func:`sampled_dot`."""
    dtype = _kernel_dtype(weight, x)
    out = _EdgeWeightedSum.apply(weight.to(dtype), x.to(dtype), pattern)
    return out.to(torch.promote_types(weight.dtype, x.dtype))


class _SparseDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:
        ctx.adj_t = adj_t
        with torch.autocast(x.device.type, enabled=False):
            return adj @ x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return ctx.adj_t @ grad.contiguous(), None, None


def sparse_dense(adj: Tensor, x: Tensor, adj_t: Optional[Tensor] = None) -> Tensor:
    """``adj @ x`` for a constant sparse ``adj [n, n]`` (no gradient) and ``x [n, d]``. ``adj_t``: the transpose
    of ``adj`` (sparse CSR), built once per graph; the backward is then ``adj_t @ grad``, where torch's own
    backward transposes ``adj`` (a sort of its entries) on every call. Inputs of another dtype than ``adj``
    (autocast) are cast to it, and the result back to theirs."""
    if adj_t is None:
        with torch.autocast(x.device.type, enabled=False):
            return (adj @ x.to(adj.dtype)).to(x.dtype)
    return _SparseDense.apply(x.to(adj.dtype), adj, adj_t).to(x.dtype)


def sample_negatives(keys: Tensor, user: Tensor, n_items: int, max_rounds: int = 50) -> Tensor:
    """One item per row of ``user [B]``, uniform over 1..n among the items the user has no edge to
    (``keys``: :attr:`InteractionGraph.keys`, sorted); draws from the global torch RNG, redrawing the
    rows that hit a user's item (at most ``max_rounds`` times, then kept)."""
    neg = torch.randint(1, n_items + 1, user.shape, device=user.device)
    if not keys.numel():
        return neg
    for _ in range(max_rounds):
        key = user * (n_items + 1) + neg
        hit = keys[torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)] == key
        if not hit.any():
            break
        neg = torch.where(hit, torch.randint(1, n_items + 1, user.shape, device=user.device), neg)
    return neg


def bpr_loss(u: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``u, pos, neg [B, d]`` -> scalar mean of
    :math:`-\\log\\sigma(\\langle u, pos\\rangle - \\langle u, neg\\rangle)`."""
    return -F.logsigmoid((u * pos).sum(-1) - (u * neg).sum(-1)).mean()


def register_graph_buffer(module: torch.nn.Module, name: str, value: Tensor) -> None:
    """(Re)set a non-persistent buffer: graph data follow ``.to(device)`` but stay out of the state dict."""
    if name in module._buffers:
        setattr(module, name, value)
    else:
        module.register_buffer(name, value, persistent=False)


def require_history(ctx: StrategyContext, name: str) -> SequenceData:
    if ctx.history is None:
        raise UserInputError(f"{name} builds its user-item graph from the training interactions "
                             "(StrategyContext.history); build the context with a split")
    return ctx.history


class GraphCFStrategy(Strategy):
    """Base of the graph-CF baselines: user vectors by user id, one propagation per evaluation.

    Subclasses implement :meth:`propagate` (``-> users [U, d], items [n_items + 1, d]``) and
    :meth:`set_graph` (store what they need of an :class:`InteractionGraph` as non-persistent
    buffers), and usually ``loss``.
    """

    train_defaults: ClassVar[dict[str, object]] = {"batch_size": 2048}

    def __init__(self, ctx: StrategyContext, opts):
        super().__init__(ctx, opts)
        self.graph = InteractionGraph.from_history(require_history(ctx, type(self).__name__))
        self.n_users = self.graph.n_users
        self._cache: Optional[tuple] = None
        self.register_buffer("edge_keys", self.graph.keys, persistent=False)
        self.set_graph(self.graph)

    def set_graph(self, graph: InteractionGraph) -> None:
        """Register what the model reads of ``graph`` (non-persistent buffers: never in the state dict)."""

    def propagate(self) -> tuple[Tensor, Tensor]:
        """``users [U, d]``, ``items [n_items + 1, d]`` (row 0 padding) over the whole graph."""
        raise NotImplementedError(f"{type(self).__name__} must implement propagate()")

    def propagated(self) -> tuple[Tensor, Tensor]:
        """:meth:`propagate`, cached while evaluating: ranking a split calls ``encode`` once per block of
        samples, the graph needs one pass. The cache lives from one ``eval()`` to the next ``train()`` /
        ``eval()`` call (``evaluate.rank_samples`` makes both), is dropped by ``load_state_dict`` and
        ``reset_parameters``, and is never used in training mode or with gradients enabled. (Parameter
        version counters cannot tell: torch's foreach Adam updates parameters without bumping them.)"""
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.propagate()
        if self._cache is None:
            self._cache = self.propagate()
        return self._cache

    def train(self, mode: bool = True) -> "GraphCFStrategy":
        self._cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def reset_parameters(self) -> None:
        self._cache = None
        super().reset_parameters()

    def users_of(self, batch: SeqBatch) -> Tensor:
        if batch.user is None:
            raise ValueError(f"{type(self).__name__} identifies users by SeqBatch.user, which this batch lacks "
                             "(batches from splits.sample_batch carry it)")
        if batch.user.numel() and int(batch.user.max()) >= self.n_users:
            raise ValueError(f"{type(self).__name__}: user id {int(batch.user.max())} outside the graph's "
                             f"{self.n_users} users")
        return batch.user

    def encode(self, batch: SeqBatch) -> Tensor:
        return self.propagated()[0][self.users_of(batch)]

    def item_embeddings(self) -> Tensor:
        return self.propagated()[1]

    def negatives(self, batch: SeqBatch) -> Tensor:
        """``[B]`` one uniform negative per row outside the row's user's graph items."""
        return sample_negatives(self.edge_keys, self.users_of(batch), self.ctx.n_items)

    def for_test(self) -> "GraphCFStrategy":
        if self.ctx.test_history is None:
            return self
        view = copy.copy(self)                 # same parameters and submodules, own buffers and cache
        view._buffers = dict(self._buffers)
        view._cache = None
        device = self.edge_keys.device
        view.graph = InteractionGraph.from_history(self.ctx.test_history)
        view.edge_keys = view.graph.keys.to(device)
        view.set_graph(view.graph)
        for name, buf in view._buffers.items():
            if buf is not None:
                view._buffers[name] = buf.to(device)
        return view

    def bucket_key(self, data, samples) -> Tensor:
        """Zero for every sample: the order of a history means nothing here, so batches stay uniform."""
        return torch.zeros_like(samples.pos)
