r"""MGAT: Tao, Wei, Wang, He, Huang, Chua, "MGAT: Multimodal Graph Attention Network for Recommendation",
Information Processing & Management 57(5), 2020 [P], and the authors' code [C]. Fusion: late (one
gated-attention graph branch per modality channel, averaged). Graph and protocol: :mod:`strategies.cf_graph`.

Inputs as :mod:`strategies.mmgcn` (user preferences :math:`P^m_u`, items
:math:`\tanh(\mathrm{MLP}_m(f^m_i))`, both L2-normalised). Each layer (:class:`GatedAttentionLayer`,
own weights per channel and depth), for a node v with neighbours N(v):

.. math::
    s_{vw} = \langle W x_v,\ \mathrm{LReLU}(W x_w)\rangle,\quad
    g_{vw} = \sigma\big(s_{vw} / \sqrt{|N(v)|}\big),\quad
    \alpha_{vw} = \mathrm{softmax}_{w \in N(v)}(s_{vw}\,g_{vw})

.. math::
    h_v = \frac{\sum_w \alpha_{vw} W x_w + b}{\lVert \sum_w \alpha_{vw} W x_w + b \rVert},\qquad
    x'_v = \mathrm{LReLU}\big(W_g h_v + \mathrm{LReLU}(W_l x_v) + e^{id}_v\big)

Channels averaged; score and BPR loss (with ``reg``) as MMGCN. Depth is an option (default 2: the shipped
code silently ran one layer). Ranking is the harness's full ranking (the shipped code ranked against
1,000 sampled negatives: not reproduced).

Shapes: x ``[N, d]``, edges ``dst, src [2E]`` (both directions of every user–item pair),
degree ``[N]``, e_id ``[N, d]`` -> ``[N, d]``; per-edge tensors ``[2E]`` only (no gathered ``[2E, d]``
operands: sparse kernels, :class:`GatedAttentionLayer`), never ``[N, N]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionbench.options import Ge, PluginOptions
from fusionbench.registry import STRATEGIES
from fusionbench.space import LogUniform
from strategies.cf_graph import EdgePattern, InteractionGraph, edge_weighted_sum, register_graph_buffer, sampled_dot
from strategies.mmgcn import MultiBranchCF


@dataclass(frozen=True)
class MGATOptions(PluginOptions):
    """``layers``: gated-attention layers per channel. ``hidden``: feature MLP hidden size. ``reg``: λ.
    ``layout``: as MMGCN's (:class:`~strategies.mmgcn.MMGCNOptions`); "reference" also gives every layer
    the authors' code's form: a LeakyReLU on the normalised message and biases on W_g and W_l."""

    dim: Annotated[int, Ge(1)] = 64
    layers: Annotated[int, Ge(1)] = 2
    hidden: Annotated[int, Ge(1)] = 256
    reg: Annotated[float, Ge(0)] = 1e-5
    layout: Literal["compact", "reference"] = "compact"

    ONLY_WHEN_SET = frozenset({"layout"})   # added after runs were stored


def segment_softmax(score: Tensor, index: Tensor, n: int) -> Tensor:
    """Softmax of ``score [E]`` over the entries sharing ``index [E]`` (values in 0..n-1)."""
    top = torch.full((n,), -math.inf, dtype=score.dtype, device=score.device)
    top = top.scatter_reduce(0, index, score, reduce="amax", include_self=True)
    ex = torch.exp(score - top[index])
    return ex / torch.zeros(n, dtype=score.dtype, device=score.device).index_add(0, index, ex)[index]


class GatedAttentionLayer(nn.Module):
    r"""One MGAT layer of one channel (equations in the module docstring).

    Args: dim: d (output). negative_slope: of every LeakyReLU (0.01). in_dim: the input width d_in (default
    d): W and b act at d_in, W_g and W_l map d_in to d. reference: the authors' code's form,
    :math:`x'_v = \mathrm{LReLU}(W_g\,\mathrm{LReLU}(h_v) + b_g + \mathrm{LReLU}(W_l x_v + b_l) + e^{id}_v)`.

    Shapes: x ``[N, d_in]``, dst / src ``[2E]`` long (edge src -> dst), degree ``[N]`` float, e_id ``[N, d]``
    -> ``[N, d]``. A node without neighbours gets :math:`h_v = b / \lVert b \rVert`. ``pattern``: the
    :class:`~strategies.cf_graph.EdgePattern` of (dst, src), built from them when not given (MGAT builds it
    once per graph).

    The per-edge work runs as sparse kernels on that pattern, never on gathered ``[2E, d]`` operands: the
    logits :math:`s_{vw}` by a sampled dense-dense product of :math:`Wx` and :math:`\mathrm{LReLU}(Wx)`
    (the LeakyReLU applied once per node), the aggregation :math:`\sum_w \alpha_{vw} W x_w` as a
    sparse (values α) times dense product; gate and softmax are ``[2E]`` vectors. The per-edge form
    (gather, multiply, ``index_add``) is ``tests/mgat_reference.py``; the parity tests of
    ``tests/test_cf.py`` hold the two to float rounding, outputs and gradients.
    """

    def __init__(self, dim: int, negative_slope: float = 0.01, in_dim: Optional[int] = None, reference: bool = False):
        super().__init__()
        in_dim = in_dim or dim
        self.dim, self.in_dim, self.slope, self.reference = dim, in_dim, negative_slope, reference
        self.w = nn.Linear(in_dim, in_dim, bias=False)
        self.bias = nn.Parameter(torch.empty(in_dim))
        self.w_g = nn.Linear(in_dim, dim, bias=reference)
        self.w_l = nn.Linear(in_dim, dim, bias=reference)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.w, self.w_g, self.w_l):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.normal_(self.bias, std=1.0 / math.sqrt(self.in_dim))

    def forward(self, x: Tensor, dst: Tensor, src: Tensor, degree: Tensor, e_id: Tensor,
                pattern: Optional[EdgePattern] = None) -> Tensor:
        if pattern is None:
            pattern = EdgePattern.from_edges(dst, src, x.shape[0])
        wx = self.w(x)
        s = sampled_dot(wx, F.leaky_relu(wx, self.slope), pattern)                  # [2E], CSR order
        gate = torch.sigmoid(s / degree[pattern.row].clamp(min=1).sqrt())
        alpha = segment_softmax(s * gate, pattern.row, x.shape[0])
        agg = edge_weighted_sum(alpha, wx, pattern)
        h = F.normalize(agg + self.bias, dim=-1)
        if self.reference:
            h = F.leaky_relu(h, self.slope)
        return F.leaky_relu(self.w_g(h) + F.leaky_relu(self.w_l(x), self.slope) + e_id, self.slope)

    def __repr__(self) -> str:
        form = ", reference" if self.reference else ""
        return f"{type(self).__name__}({self.in_dim} -> {self.dim}{form})"


PATTERN_BUFFERS = EdgePattern._fields[1:]  # every field but n


@STRATEGIES.register("mgat")
class MGAT(MultiBranchCF):
    Options = MGATOptions
    # reg is its L2, over MMGCN's range (strategies/mmgcn.py says why); MGAT peaks at epochs 23-33 on
    # Beauty at the defaults and declines after.
    search_space = {"reg": LogUniform(1e-6, 1e-2), "train.weight_decay": None}
    paper = "Tao, Wei, Wang, He, Huang, Chua, IP&M 2020"
    notes = (
        "As `mmgcn` with gated attention per layer (degree-scaled sigmoid gate on the attention logits, L2-normalised"
        " messages); depth 2 (the shipped code ran 1), full ranking (it sampled 1,000 negatives); `layout=reference` "
        "is the shipped code's layer layout. Graph-CF protocol: [graph-cf.md](graph-cf.md)."
    )
    train_defaults = {"lr": 1e-4, "batch_size": 2048}

    def set_graph(self, graph: InteractionGraph) -> None:
        dst, src = graph.edges()
        register_graph_buffer(self, "dst", dst)
        register_graph_buffer(self, "src", src)
        register_graph_buffer(self, "degree", graph.degree())
        pattern = EdgePattern.from_edges(dst, src, graph.n_nodes)
        for name in PATTERN_BUFFERS:
            register_graph_buffer(self, f"pattern_{name}", getattr(pattern, name))

    def pattern(self) -> EdgePattern:
        """The graph's :class:`~strategies.cf_graph.EdgePattern`, from buffers (they follow ``.to(device)``)."""
        return EdgePattern(self.degree.shape[0], *(getattr(self, f"pattern_{name}") for name in PATTERN_BUFFERS))

    def make_layer(self, dim: int, in_dim: int) -> nn.Module:
        return GatedAttentionLayer(dim, in_dim=in_dim, reference=self.opts.layout == "reference")

    def item_activation(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def layer(self, layer: nn.Module, x: Tensor, e_id: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        out = layer(x, self.dst, self.src, self.degree, e_id, self.pattern())
        return out if rows is None else out[rows]
