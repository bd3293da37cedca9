"""What models are built from and what they consume: modality tables, contexts and batches.

Item ids are 1..n; row/id 0 is padding everywhere. Modalities are named channels (``"text"``,
``"attr"``, ``"image"``), always looked up by name, never by position.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fusionbench.data.core import SequenceData

CODE_SENTINEL = -1  # codes[m][item, j] for "no code" (padding row, absent modality, fewer than k codes)


@dataclass(frozen=True)
class ModalityTable:
    """Side information of one modality for every item.

    Attributes:
        features: float ``[n_items + 1, d_m]``; row 0 and absent rows are zeros.
        present: bool ``[n_items + 1]``; False for row 0 and for items lacking the modality.
        codes: long ``[n_items + 1, k]`` in ``0..n_codes-1``; ``CODE_SENTINEL`` where there is no code.
        n_codes: size of the code vocabulary (C).
    """

    features: Tensor
    present: Tensor
    codes: Tensor
    n_codes: int

    def __post_init__(self) -> None:
        n = self.present.shape[0]
        if self.features.shape[0] != n or self.codes.shape[0] != n:
            raise ValueError(
                f"modality table rows disagree: features {tuple(self.features.shape)}, "
                f"present {tuple(self.present.shape)}, codes {tuple(self.codes.shape)}"
            )
        if self.present.dtype != torch.bool or self.codes.dtype != torch.long:
            raise ValueError("modality table: present must be bool and codes long")

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def replace(self, **changes) -> "ModalityTable":
        return dataclasses.replace(self, **changes)

    def without_items(self, absent: Tensor) -> "ModalityTable":
        """Mark items in the bool mask ``absent [n_items + 1]`` as lacking this modality."""
        present = self.present & ~absent
        keep = present[:, None]
        return ModalityTable(
            features=self.features * keep.to(self.features.dtype),
            present=present,
            codes=torch.where(keep, self.codes, torch.full_like(self.codes, CODE_SENTINEL)),
            n_codes=self.n_codes,
        )


@dataclass(frozen=True)
class StrategyContext:
    """Everything a strategy is built from (its options come separately).

    Attributes:
        n_items: number of real items n (ids 1..n).
        max_len: maximum input length L.
        modalities: name -> :class:`ModalityTable`, sorted by name; may be empty (ID-only data).
        aggregator: name of the graph aggregator for graph strategies (``None`` = strategy default).
        aggregator_options: options for that aggregator.
        history: the interactions a model may build item-item graphs or statistics from: every user's
            sequence cut at ``Split.history_end`` (no validation or test target in it); ``None`` when
            the caller has no split (strategies that need it must then raise a clear error).
        test_history: the interactions a model may use when it ranks the test samples: every user's
            sequence cut at ``Split.test_history_end`` (``loo``: ``history`` plus the validation item,
            which the sequential models see in their test inputs; ``ratio`` / ``ratio-paper``: the same
            as ``history``). Only graph-CF strategies read it, and only in ``Strategy.for_test``;
            ``None`` without a split.
    """

    n_items: int
    max_len: int
    modalities: Mapping[str, ModalityTable] = field(default_factory=dict)
    aggregator: Optional[str] = None
    aggregator_options: Mapping[str, object] = field(default_factory=dict)
    history: Optional["SequenceData"] = None
    test_history: Optional["SequenceData"] = None

    def with_modalities(self, modalities: Mapping[str, ModalityTable]) -> "StrategyContext":
        return dataclasses.replace(self, modalities=dict(sorted(modalities.items())))

    def with_all_modalities_missing(self) -> "StrategyContext":
        return self.with_modalities(
            {m: t.without_items(torch.ones_like(t.present)) for m, t in self.modalities.items()}
        )


@dataclass(frozen=True)
class AggregatorContext:
    """What an aggregator is built from.

    Attributes:
        dim: node feature size d (input and output).
        n_relations: R, the number of relation channels of ``adj [B, R, N, N]``; channel 0 is the
            self-loop, channels 1..3 the sequential (homogeneous) relations, channels >= 4 the
            cross-type (heterogeneous) relations (see ``aggregators.base``).
        n_node_types: number of node types including padding type 0.
    """

    dim: int
    n_relations: int
    n_node_types: int


@dataclass
class SeqBatch:
    """A batch of histories.

    Attributes:
        items: long ``[B, L]`` item ids, left-padded with 0, most recent item last.
        target: long ``[B]`` next item (1..n) of each row, or ``None``.
        targets: long ``[B, L]`` next item after each position (0 = no loss there), for strategies
            trained with one causal pass per sequence; ``None`` otherwise.
        present: optional per-occurrence modality masks, name -> bool ``[B, L]``; False hides that
            modality at that position (stress test ``missing`` in ``occurrence`` mode).
        shown: optional name -> long ``[B, L]``: the item whose modality is shown at each position
            (0 = none, i.e. missing); positions of modalities not named show their own item (stress
            test ``mismatch`` in ``shift`` mode).
        user: optional long ``[B]``: the user index (into ``SequenceData``) of each row; batches built
            from samples (``splits.sample_batch``, ``causal_batch``) carry it. Graph-CF strategies
            identify the user by it; sequential ones ignore it.
    """

    items: Tensor
    target: Optional[Tensor] = None
    targets: Optional[Tensor] = None
    present: Optional[dict[str, Tensor]] = None
    shown: Optional[dict[str, Tensor]] = None
    user: Optional[Tensor] = None

    @property
    def size(self) -> int:
        return self.items.shape[0]

    @property
    def mask(self) -> Tensor:
        """bool ``[B, L]``: True at real (non-padding) positions."""
        return self.items > 0

    def mapped(self, per_position: Callable[[Tensor], Tensor], per_row: Callable[[Tensor], Tensor]) -> "SeqBatch":
        """A batch of the same fields, each ``[B, L, ...]`` one (``items``, ``targets``, every ``present``
        and ``shown`` mask) through ``per_position`` and each ``[B]`` one (``target``, ``user``) through
        ``per_row``; absent fields stay ``None``."""
        one = lambda f, t: None if t is None else f(t)  # noqa: E731
        each = lambda d: None if d is None else {k: per_position(v) for k, v in d.items()}  # noqa: E731
        return SeqBatch(one(per_position, self.items), one(per_row, self.target), one(per_position, self.targets),
                        each(self.present), each(self.shown), one(per_row, self.user))

    def rows(self, index: Tensor, width: int) -> "SeqBatch":
        """The rows ``index`` ``[b]`` of this batch, each cut to its last ``width`` positions: ``[b, width]``
        per-position fields (left padding dropped where ``width`` covers every real position), ``[b]`` per-row
        ones."""
        return self.mapped(lambda t: t[index, -width:], lambda t: t[index])

    def to(self, device: torch.device | str) -> "SeqBatch":
        move = lambda t: t.to(device)  # noqa: E731
        return self.mapped(move, move)
