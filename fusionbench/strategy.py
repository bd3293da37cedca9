"""The strategy contract (specs/architecture.md): three verbs on a :class:`SeqBatch`.

The harness owns it: the trainer, the evaluator, the profiler and the stress plans type against
:class:`Strategy`, and plugins (the built-ins in ``strategies/`` and third-party ones) subclass it from here.

A strategy is an ``nn.Module`` built as ``Cls(ctx: StrategyContext, opts)``. It implements
``encode(batch) -> [B, d]`` and ``item_embeddings() -> [n_items + 1, d]`` (row 0 = padding);
scores for full ranking are their product unless ``score`` is overridden, and the default loss is
full-softmax cross-entropy over the n real items.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from fusionbench import full_softmax
from fusionbench.context import SeqBatch, StrategyContext
from fusionbench.length_groups import causal_pass, length_groups
from fusionbench.options import PluginOptions

if TYPE_CHECKING:
    from fusionbench.data.core import SequenceData
    from fusionbench.data.splits import Samples
    from fusionbench.space import Dimension


class Strategy(nn.Module):
    """Base class of every fusion strategy and baseline.

    Class attributes a subclass sets:
        Options: its option dataclass.
        fusion_stage: "none" | "early" | "late" | "attention" | "holistic" | "graph" (docs and reports).
        uses_modalities: False for ID-only models (the harness then skips feature extraction).
        causal_training: True if ``loss`` accepts ``batch.targets [B, L]`` (one causal pass per
            sequence, a loss at every position) instead of one ``batch.target [B]`` per row.
        contract_skips: contract-test name -> reason, for checks this strategy cannot meet.
        train_defaults: training options this model's paper or reference code uses (e.g. its lr);
            applied before the user's ``--set train.*`` overrides.
        default_aggregator: for graph strategies, the aggregator used when none is named.
        search_space: what ``fusionbench tune`` searches beyond the shared knobs
            (:data:`fusionbench.space.SHARED`: ``train.lr``, and ``dropout``, ``dim``, ``layers`` where the
            options have them): option key (``--set`` form) -> :class:`fusionbench.space.Dimension`, or
            ``None`` to leave a shared knob out. An aggregator class may declare one too (its own keys,
            searched as ``agg.*`` for the graph strategies it is the default of).
        paper: the paper (authors, venue) or reference code it implements, one line.
        notes: one paragraph (Markdown) on how this implementation reads its paper: its row of
            docs/strategies.md (``fusionbench list --format md``).
    """

    Options: ClassVar[type[PluginOptions]]
    fusion_stage: ClassVar[str] = "none"
    uses_modalities: ClassVar[bool] = True
    causal_training: ClassVar[bool] = False
    contract_skips: ClassVar[dict[str, str]] = {}
    train_defaults: ClassVar[dict[str, object]] = {}
    default_aggregator: ClassVar[Optional[str]] = None
    search_space: ClassVar[dict[str, Optional["Dimension"]]] = {}
    paper: ClassVar[str] = ""
    notes: ClassVar[str] = ""

    def __init__(self, ctx: StrategyContext, opts: PluginOptions):
        super().__init__()
        self.ctx = ctx
        self.opts = opts

    def encode(self, batch: SeqBatch) -> Tensor:
        """Sequence representation ``[B, d]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode()")

    def item_embeddings(self) -> Tensor:
        """Item representations ``[n_items + 1, d]``; row 0 is padding and never ranked."""
        raise NotImplementedError(f"{type(self).__name__} must implement item_embeddings()")

    def score(self, batch: SeqBatch) -> Tensor:
        """Scores ``[B, n_items + 1]`` (column 0 = padding, ignored by the evaluator)."""
        return self.encode(batch) @ self.item_embeddings().T

    def loss(self, batch: SeqBatch) -> Tensor:
        """Full-softmax cross-entropy over the real items (:func:`fusionbench.full_softmax.cross_entropy`);
        scalar. The padding row is dropped from the item table (a row slice, no copy), not from scores."""
        return full_softmax.cross_entropy(self.encode(batch), self.item_embeddings()[1:], batch.target - 1)

    def for_test(self) -> "Strategy":
        """The model that ranks the test samples (``train.evaluate_trained``): the model itself for every
        sequential strategy, whose test inputs already hold what it may see. Graph-CF strategies return a
        view with the same weights on the graph of ``ctx.test_history`` (``loo``: the validation item added)."""
        return self

    def bucket_key(self, data: "SequenceData", samples: "Samples") -> Tensor:
        """Per-sample work estimate ``[S]`` by which the trainer and evaluator group similar samples
        into batches (less padding work); the default is the prefix length (target position)."""
        return samples.pos

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (each submodule's own ``reset_parameters``)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


class CausalStrategy(Strategy):
    """A strategy with a state after every position (one causal pass over the sequence).

    Subclasses implement ``hidden(batch) -> [B, L, d]``; the representation is the state at the last
    position, and the loss is full-softmax cross-entropy at every position that has a target
    (``batch.targets``) or at the last position (``batch.target``): the same (prefix, target) pairs
    either way, because the state at position t only sees items up to t.
    """

    causal_training: ClassVar[bool] = True

    def hidden(self, batch: SeqBatch) -> Tensor:
        """``[B, L, d]``: the representation after every position."""
        raise NotImplementedError(f"{type(self).__name__} must implement hidden()")

    def encode(self, batch: SeqBatch) -> Tensor:
        return self.hidden(batch)[:, -1]

    def states_and_targets(self, batch: SeqBatch) -> tuple[Tensor, Tensor]:
        """States ``[S, d]`` at the positions that have a target, and those targets ``[S]`` (1..n)."""
        return self.at_targets(batch, self.hidden)

    @staticmethod
    def at_targets(batch: SeqBatch, per_position: Callable[[SeqBatch], Tensor]) -> tuple[Tensor, Tensor]:
        """``per_position(batch)`` ``[B, L, ...]`` at the positions that have a target ``[S, ...]``, and those
        targets ``[S]`` (1..n); at the last position under ``batch.target``. A batch with ``targets`` is
        encoded in groups of rows of similar length (:mod:`fusionbench.length_groups`): the same (state,
        target) pairs, grouped by length."""
        if batch.targets is None:
            return per_position(batch)[:, -1], batch.target
        groups = length_groups(batch) if causal_pass() == "grouped" else [batch]
        outputs, targets = [], []
        for group in groups:
            where = group.targets > 0
            outputs.append(per_position(group)[where])
            targets.append(group.targets[where])
        return torch.cat(outputs), torch.cat(targets)

    def loss(self, batch: SeqBatch) -> Tensor:
        states, targets = self.states_and_targets(batch)
        return full_softmax.cross_entropy(states, self.item_embeddings()[1:], targets - 1)
