r"""What every perturbation shares: the plugin base class, channel selection and keyed randomness.

**Keyed uniforms.** Sequence-level perturbations must give every sample the same perturbation in
every batch and epoch, whatever else the batch holds. They therefore draw no numbers from a stream;
each number is a hash of its key (a counter-based generator):

.. math::
    h_0 = \mathrm{mix}(s),\qquad h_i = \mathrm{mix}\big((h_{i-1} + k_i) \bmod 2^{32}\big),\qquad
    u(s; k_1, \dots, k_r) = h_r / 2^{32} \in [0, 1)

with seed s, integer keys :math:`k_i` (taken mod :math:`2^{32}`) and ``mix`` the bijective 32-bit
avalanche function "lowbias32" (C. Wellons, 2018; shifts 16/15/16, multipliers 0x7feb352d and
0x846ca68b). Products are formed mod :math:`2^{32}` from 16-bit halves, so every intermediate fits in
int64: the same keys give the same bits on any device. Keys broadcast like tensors.

**Counts.** "round(p · m) of m" is round-half-to-even of the float64 product, as Python's ``round``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Mapping, Union

import torch
from torch import Tensor

from fusionbench.context import ModalityTable, SeqBatch
from fusionbench.data.splits import Samples
from fusionbench.options import NoOptions, OptionError, PluginOptions

MASK32 = 0xFFFFFFFF
Key = Union[Tensor, int]
Level = Literal["catalog", "sequence"]


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2^32`` for int64 ``x`` in [0, 2^32) and a 32-bit constant, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x: Tensor) -> Tensor:
    """lowbias32 on int64 tensors holding 32-bit words (values in [0, 2^32)); same shape out."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_words(seed: int, *keys: Key) -> Tensor:
    """32-bit words ``h_r`` (int64) of the keys, broadcast together (module docstring)."""
    h = mix32(torch.tensor(seed & MASK32, dtype=torch.long))
    for key in keys:
        h = mix32((h + (torch.as_tensor(key, dtype=torch.long) & MASK32)) & MASK32)
    return h


def keyed_uniform(seed: int, *keys: Key) -> Tensor:
    """float64 uniforms in [0, 1), one per broadcast key, a pure function of ``(seed, keys)``."""
    return keyed_words(seed, *keys).double() / 2.0 ** 32


def round_count(p: float, m: Union[int, Tensor]) -> Union[int, Tensor]:
    """round(p · m), half to even (Python ``round``); elementwise for a tensor ``m``."""
    if isinstance(m, Tensor):
        return torch.round(p * m.double()).long()
    return round(p * m)


def generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for catalog-level draws, seeded from ``(seed, stream)``: perturbations with the
    same run seed draw independently, and the draws never depend on the device."""
    return torch.Generator().manual_seed(int(keyed_words(seed, stream)))


def check_severity(severity: object, where: str = "severity") -> float:
    """``severity`` as a float in [0, 1], or an :class:`OptionError` naming ``where``."""
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or math.isnan(severity) \
            or not 0.0 <= severity <= 1.0:
        raise OptionError(f"{where} must be a number in [0, 1], got {severity!r}")
    return float(severity)


@dataclass(frozen=True)
class PerturbContext:
    """What a perturbation is built from (its options come separately).

    Attributes:
        severity: p in [0, 1]; 0 returns every input unchanged.
        seed: the run's seed.
        channels: modality channels of the run's model (sorted names); the ones perturbed by default.
        available: channel names option ``modalities`` may name (the dataset's channels); defaults to
            ``channels``. A named channel the model does not use is left alone.
    """

    severity: float
    seed: int
    channels: tuple[str, ...] = ()
    available: tuple[str, ...] = ()


class Perturbation:
    """Base of the stress-test perturbations (specs/protocol.md §4), built as ``Cls(ctx, opts)``.

    A perturbation acts at one ``level``: ``catalog`` (:meth:`tables` maps the ``{name: ModalityTable}``
    dict, so an item carries the same perturbed side data everywhere) or ``sequence`` (:meth:`batch`
    maps a batch of prefix samples, each perturbed by keys of its (user, target position)). Both are
    pure functions of their input, p and the seed (the same bits on any device); at p = 0 they return
    their input unchanged (the batch itself, a dict of the same table objects).
    """

    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, ctx: PerturbContext, opts: PluginOptions):
        self.severity = check_severity(ctx.severity, f"perturbation {self.registry_name!r}: severity")
        self.seed = int(ctx.seed)
        self.ctx, self.opts = ctx, opts

    @classmethod
    def level_for(cls, opts: PluginOptions) -> Level:
        """The level this perturbation acts at with options ``opts`` (it never depends on p or data)."""
        raise NotImplementedError(f"{cls.__name__} must define level_for")

    @property
    def level(self) -> Level:
        return self.level_for(self.opts)

    def tables(self, tables: Mapping[str, ModalityTable]) -> dict[str, ModalityTable]:
        """Catalog level: perturbed tables (sorted by name); other levels return them as given."""
        if self.level != "catalog" or self.severity == 0.0:
            return dict(tables)
        return self.perturb_tables(tables)

    def batch(self, batch: SeqBatch, samples: Samples) -> SeqBatch:
        """Sequence level: the perturbed batch of prefix samples ``samples`` (one ``target`` per row;
        rows keyed by ``(samples.user, samples.pos)``); other levels return the batch as given."""
        if self.level != "sequence" or self.severity == 0.0:
            return batch
        if batch.targets is not None or batch.target is None:
            raise ValueError(f"perturbation {self.registry_name!r}: sequence-level perturbations take "
                             "prefix-sample batches (target [B]); causal rows hold a target per position")
        if len(samples) != batch.size:
            raise ValueError(f"perturbation {self.registry_name!r}: {len(samples)} sample keys for "
                             f"{batch.size} batch rows")
        return self.perturb_batch(batch, samples)

    def perturb_tables(self, tables: Mapping[str, ModalityTable]) -> dict[str, ModalityTable]:
        """The catalog-level transform at p > 0 (catalog-level subclasses define it)."""
        raise NotImplementedError(f"{type(self).__name__} acts at level {self.level!r}, not on tables")

    def perturb_batch(self, batch: SeqBatch, samples: Samples) -> SeqBatch:
        """The sequence-level transform at p > 0 (sequence-level subclasses define it)."""
        raise NotImplementedError(f"{type(self).__name__} acts at level {self.level!r}, not on batches")


@dataclass(frozen=True)
class ChannelOptions(PluginOptions):
    """``modalities``: channels to perturb (comma-separated); empty = every channel of the model."""

    modalities: tuple[str, ...] = ()


class ChannelPerturbation(Perturbation):
    """A perturbation of modality channels; option ``modalities`` picks them (default: all)."""

    def __init__(self, ctx: PerturbContext, opts: ChannelOptions):
        super().__init__(ctx, opts)
        known = ctx.available or ctx.channels
        unknown = [m for m in opts.modalities if m not in known]
        if unknown:
            have = ", ".join(known) if known else "none (the data has no modality channels)"
            raise OptionError(f"perturbation {self.registry_name!r}: option 'modalities': unknown channel "
                              f"{unknown[0]!r}; channels: {have}")

    def selected(self, names) -> list[str]:
        """The channels among ``names`` this perturbation changes, in the given order."""
        return [m for m in names if not self.opts.modalities or m in self.opts.modalities]


def batch_offsets(items: Tensor) -> Tensor:
    """long ``[W]`` for items ``[B, W]``: how far each column is from the target (1 = the most recent
    input item). Keys built from (user, target position, offset) name the same history slot whatever
    the batch's width W (batches are trimmed to their longest row), so a sample's perturbation never
    depends on the other rows of its batch."""
    width = items.shape[1]
    return width - torch.arange(width, device=items.device)
