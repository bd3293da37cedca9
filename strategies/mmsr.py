r"""MMSR: Hu, Guo, Liu, Kan, "Adaptive Multi-Modalities Fusion in Sequential Recommendation Systems",
CIKM 2023 (arXiv 2308.15980). Fusion: graph (node-wise adaptive order, specs/mmsr.md).

Each history becomes an MSGraph (``strategies.msgraph``): one node per distinct item and one per
distinct modality code of those items, typed sequential / cross-modal relations and self-loops. Node
inputs (mmsr.md §4):

.. math::
    h^0_x = [\,e_x ;\ e^{ty}_{t(x)} ;\ e^{po}_x\,]\, W_{pt},\qquad
    e^{po}_x = \frac{1}{|P_x|}\sum_{l \in P_x} p_{l}

with P_x the positions where node x occurs (counted from the most recent item by default). The
chosen aggregator propagates (``han`` = the paper's dual attention with the asynchronous update gate);
after each layer dropout is applied and padded nodes are zeroed. The sequence representation is the
final state of the last item's node (an aggregator with ``forward_rows`` computes the last layer for that
node only), and items are scored against the input item embeddings:

.. math:: \hat y_v = \langle h^{L}_{\mathrm{last}},\ e_v \rangle

Options map to the paper's ablations (Table 4): the han aggregator's ``agg.update`` (its update rules),
``use_pos`` (w/o e^po), ``use_type`` (w/o e^ty); Table 3 rows are ``--aggregator NAME``.

Shapes: items ``[B, W]`` -> graph of N nodes -> encode ``[B, d]``; item_embeddings ``[n_items + 1, d]``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aggregators.base import FIRST_MODALITY_NODE_TYPE, n_relations_for
from fusionbench.context import AggregatorContext, ModalityTable, SeqBatch, StrategyContext
from fusionbench.data.core import SequenceData
from fusionbench.data.splits import Samples, sample_batch
from fusionbench.dropout import Dropout
from fusionbench.errors import UserInputError
from fusionbench.options import Ge, Lt, OptionError, PluginOptions
from fusionbench.registry import AGGREGATORS, STRATEGIES
from fusionbench.space import Choice
from fusionbench.strategy import Strategy
from strategies.backbones import embedding_init_
from strategies.msgraph import MSGraph, build_msgraph, count_nodes


@dataclass(frozen=True)
class MMSROptions(PluginOptions):
    """The HAN-GNN update rule (Table 4 rows) is the han aggregator's option ``agg.update``; MMSR's own
    ``update``, which duplicated it, is gone (``REMOVED``; ``fusionbench store upgrade`` moves it in stored
    runs). ``position``: count node
    positions from the most "recent" item (default, invariant to padding) or from the "oldest" (the
    reference code). ``code_init``: code embeddings start from the mean feature of the items holding
    the code ("centroid") or at random. ``backend``: "dense" runs the aggregator on ``adj [B, R, N, N]``;
    "dgl" runs the same aggregator modules through DGL's sparse message passing over the real nodes
    (CPU only; for large graphs, see docs/dgl.md). ``init``: "own" (default) keeps each module's own
    initialisation (Glorot in the aggregators, node embeddings N(0, 1/d)); "uniform" draws every
    parameter, LayerNorm weights and biases included, from U(-1/sqrt(d), 1/sqrt(d)) as the reference's
    ``reset_parameters`` does; either way the code rows then start from ``code_init``."""

    dim: Annotated[int, Ge(1)] = 128
    layers: Annotated[int, Ge(1)] = 1
    use_pos: bool = True
    use_type: bool = True
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.4
    position: Literal["recent", "oldest"] = "recent"
    code_init: Literal["centroid", "random"] = "centroid"
    backend: Literal["dense", "dgl"] = "dense"
    init: Literal["own", "uniform"] = "own"

    ONLY_WHEN_SET = frozenset({"init"})   # added after runs were stored
    REMOVED = {"update": "the HAN update rule is the han aggregator's option: --set agg.update=VALUE"}

    def check(self) -> None:
        if self.backend == "dgl" and importlib.util.find_spec("dgl") is None:
            raise OptionError("option 'backend=dgl' needs the dgl package, which lives in its own "
                              "environment (torch 2.2.1): run it there, e.g. `tox -e dgl`, or use backend=dense")


def centroid_features(table: ModalityTable) -> Tensor:
    """The item vectors ``[n_items + 1, d_m]`` whose per-code means initialise a modality's code
    embeddings: the table's features, or for a code-only table (``d_m = 0``: ``attr`` under
    ``features.attr=ids``) the TruncatedSVD embedding of each item's code multi-hot with the feature
    pipeline's size and seed (:func:`~fusionbench.features.codes.code_set_features`, ``ATTR_DIM`` = 128).
    For attribute-id codes that keep every id of every item (``attr_max_codes`` >= the most attributes an
    item has; Beauty: 6 <= 8) these are exactly the ``svd`` encoding's features, so under ``ids`` MMSR
    starts from the centroids it started from before ``features.attr`` existed."""
    if table.dim > 0 or not bool((table.codes >= 0).any()):
        return table.features.float()
    from fusionbench.features.codes import code_set_features
    from fusionbench.features.tables import ATTR_DIM, SEED

    return torch.from_numpy(code_set_features(table.codes.cpu().numpy(), table.n_codes, ATTR_DIM, SEED))


def code_centroids(ctx: StrategyContext, dim: int, seed: int = 2023) -> Tensor:
    """Initial code embeddings ``[sum_m C_m, dim]``: per modality (sorted names), the mean feature
    (:func:`centroid_features`) of the items holding each code, mapped to ``dim`` by a fixed seeded
    Gaussian projection when the feature size differs, then min-max rescaled jointly into
    [-1/sqrt(d), 1/sqrt(d)] (as the reference code rescales its KMeans centres). Codes no item holds get
    zeros before rescaling."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for table in ctx.modalities.values():
        feats = F.normalize(centroid_features(table), dim=1)
        if feats.shape[1] != dim:
            feats = feats @ (torch.randn(feats.shape[1], dim, generator=g) / feats.shape[1] ** 0.5)
        valid = table.codes >= 0                                   # [n+1, k]
        item = torch.arange(table.codes.shape[0])[:, None].expand_as(table.codes)[valid]
        code = table.codes[valid]
        sums = torch.zeros(table.n_codes, dim).index_add_(0, code, feats[item])
        counts = torch.bincount(code, minlength=table.n_codes).clamp(min=1)[:, None]
        means = sums / counts
        low, high = means.min(), means.max()
        bound = dim ** -0.5
        blocks.append((means - low) / (high - low).clamp(min=1e-12) * 2 * bound - bound)
    return torch.cat(blocks) if blocks else torch.zeros(0, dim)


@STRATEGIES.register("mmsr")
class MMSR(Strategy):
    """MMSR (CIKM 2023): modality-code graphs per sequence with an adaptive fusion order."""

    Options = MMSROptions
    search_space = {"dim": Choice((64, 128, 256))}   # and the han aggregator's agg.update, agg.attn_dropout
    fusion_stage = "graph"
    default_aggregator = "han"
    # the reference configuration (specs/mmsr.md §7): StepLR every 40 epochs, with the decay 0.1 of
    # SR-GNN-style configs instead of the reference's 1e-4 (which stops training after epoch 40)
    train_defaults = {"lr": 0.002, "epochs": 100, "patience": 8, "lr_step": 40, "lr_gamma": 0.1}
    paper = "Hu, Guo, Liu, Kan, CIKM 2023"
    notes = (
        "MSGraph per sequence + any aggregator (`--aggregator`, default `han`); Table 4 rows via `agg.update`, "
        "`use_pos`, `use_type`; `backend` dense or dgl."
    )

    def __init__(self, ctx: StrategyContext, opts: MMSROptions):
        super().__init__(ctx, opts)
        names = list(ctx.modalities)
        self.n_codes = {m: ctx.modalities[m].n_codes for m in names}
        n_nodes = ctx.n_items + 1 + sum(self.n_codes.values())
        d = opts.dim
        self.node = nn.Embedding(n_nodes, d)
        self.register_buffer("code_init", code_centroids(ctx, d), persistent=False)
        self.node_type = nn.Embedding(FIRST_MODALITY_NODE_TYPE + len(names), d) if opts.use_type else None
        self.position = nn.Embedding(ctx.max_len, d) if opts.use_pos else None
        self.project = nn.Linear(d * (1 + opts.use_type + opts.use_pos), d, bias=False)
        agg_ctx = AggregatorContext(dim=d, n_relations=n_relations_for(len(names)),
                                    n_node_types=FIRST_MODALITY_NODE_TYPE + len(names))
        agg_name = ctx.aggregator or self.default_aggregator
        self.layers = nn.ModuleList(AGGREGATORS.create(agg_name, agg_ctx, **ctx.aggregator_options)
                                    for _ in range(opts.layers))
        self.drop = Dropout(opts.dropout)
        for m in names:  # table data, not parameters: never saved in or loaded from a state dict
            self.register_buffer(f"codes_{m}", ctx.modalities[m].codes, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        embedding_init_(self.node.weight)
        with torch.no_grad():
            if self.opts.init == "uniform":
                bound = self.opts.dim ** -0.5
                for p in self.parameters():
                    p.uniform_(-bound, bound)
            first_code = self.ctx.n_items + 1
            if self.opts.code_init == "centroid" and self.code_init.numel():
                self.node.weight[first_code:] = self.code_init

    @torch.no_grad()
    def bucket_key(self, data: SequenceData, samples: Samples) -> Tensor:
        """Node count N of each sample's MSGraph (``msgraph.count_nodes``, no edges built): the cost of
        a graph batch grows with N and N^2, so batching by it leaves little padding."""
        codes = {m: getattr(self, f"codes_{m}").cpu() for m in self.n_codes}
        counts = [count_nodes(sample_batch(data, chunk, self.ctx.max_len).items, codes, self.ctx.n_items, self.n_codes)
                  for chunk in (samples.take(i) for i in torch.arange(len(samples)).split(4096))]
        return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)

    def graph(self, batch: SeqBatch) -> MSGraph:
        codes = {m: getattr(self, f"codes_{m}") for m in self.n_codes}
        return build_msgraph(batch.items, codes, self.ctx.n_items, self.n_codes, present=batch.present,
                             shown=batch.shown)

    def node_inputs(self, g: MSGraph) -> Tensor:
        """h^0 ``[B, N, d]`` = [e_x ; e^ty ; e^po] W_pt, zero at padded nodes.

        W_pt (``project.weight``, ``[d, d * parts]``) is applied block by block: e_x W_x per node, while
        the type and position tables are mapped once and then gathered / averaged, which is the same sum
        without a ``[B, N, 3d]`` concatenation."""
        blocks = iter(self.project.weight.split(self.opts.dim, dim=1))
        h = F.linear(self.node(g.node_ids), next(blocks))
        if self.node_type is not None:
            h = h + F.linear(self.node_type.weight, next(blocks))[g.node_type]
        if self.position is not None:
            width = g.pos_mask.shape[-1]
            col = torch.arange(width, device=g.pos_mask.device)
            if self.opts.position == "recent":
                index = width - 1 - col                                       # [W]
            else:
                n_real = g.pos_mask.any(1).sum(-1, keepdim=True)              # [B, 1]
                index = col - (width - n_real)                                # [B, W]
            table = F.linear(self.position(index.clamp(min=0, max=self.ctx.max_len - 1)), next(blocks))
            occurs = g.pos_mask.float()                                       # [B, N, W]
            h = h + (occurs @ table) / occurs.sum(-1, keepdim=True).clamp(min=1)
        return h * g.node_mask[..., None]

    def encode(self, batch: SeqBatch) -> Tensor:
        g = self.graph(batch)
        h = self.node_inputs(g)
        if self.opts.backend == "dgl":
            return self._encode_sparse(g, h)
        *inner, last = self.layers
        for layer in inner:
            h = self.drop(layer(h, g.adj, g.node_type, g.node_mask)) * g.node_mask[..., None]
        if hasattr(last, "forward_rows"):  # the readout needs the last item's row only
            return self.drop(last.forward_rows(h, g.adj, g.node_type, g.node_mask, g.last_node))
        h = self.drop(last(h, g.adj, g.node_type, g.node_mask))
        return h[torch.arange(h.shape[0], device=h.device), g.last_node]

    def _encode_sparse(self, g: MSGraph, h: Tensor) -> Tensor:
        """``encode`` through ``aggregators.dgl_backend``: the layers work on the ``[V, d]`` rows of the
        V real nodes of the batch (padded nodes never exist there)."""
        from aggregators.dgl_backend import forward_nodes, to_sparse

        if h.device.type != "cpu":
            raise UserInputError("strategy 'mmsr': backend=dgl runs on the CPU only (PyPI's DGL build has no "
                                 "CUDA); use --device cpu or backend=dense")
        sparse = to_sparse(g.adj, g.node_type, g.node_mask)
        rows = sparse.gather(h)
        for layer in self.layers:
            rows = self.drop(forward_nodes(layer, rows, sparse))
        h = sparse.scatter(rows)
        return h[torch.arange(h.shape[0], device=h.device), g.last_node]

    def item_embeddings(self) -> Tensor:
        return self.node.weight[: self.ctx.n_items + 1]
