r"""``synthetic``: seeded multimodal sequences whose generating rules are known exactly.

The testbed separates three kinds of sequential signal, so that a fusion strategy's score can be
traced to the signal it can (or cannot) use: signal in the item IDs only, signal inside each modality
channel on its own (which late fusion can exploit), and signal in the interplay of the two channels
(which needs the channels combined before the sequence encoder, i.e. early fusion).

Items. With :math:`C` = ``n_codes`` and :math:`P` = ``per_cell`` there are :math:`n = C^2 P` items.
Every item :math:`i \in 1..n` has an image code :math:`a(i)` and a text code :math:`b(i)` in
:math:`0..C-1`; each of the :math:`C^2` cells :math:`(a, b)` holds exactly :math:`P` items, and which
ids land in which cell is a seeded random permutation (ids carry no order information).
:math:`\mathrm{cell}(a, b)` denotes the set of items of that cell.

Features (dense channels ``image`` and ``text``, float32 ``[n + 1, d]``, row 0 zero):

.. math::
    x^{img}_i = \mu^{img}_{a(i)} + \sigma \varepsilon_i, \qquad
    x^{txt}_i = \mu^{txt}_{b(i)} + \sigma \varepsilon'_i, \qquad
    \mu^{img}_c, \varepsilon_i \sim \mathcal N(0, I_{d_{img}} / d_{img}), \;
    \mu^{txt}_c, \varepsilon'_i \sim \mathcal N(0, I_{d_{txt}} / d_{txt})

so centroids have norm about 1 and :math:`\sigma` = ``noise`` is a noise-to-signal ratio in norm. With
``missing_rate`` = r > 0, exactly round(r n) items per channel (drawn independently per channel) are
absent: ``present`` False and a zero feature row.

Sequences. User u has length :math:`L_u \in [L_{min}, L_{max}]` with
:math:`P(L_u = l) \propto q^{\,l - L_{min}}` (a truncated geometric, q = ``length_decay``; q = 1 is
uniform), and starts from a uniformly random item :math:`i_1`. Each later item is produced by one
mechanism :math:`m_t`, drawn independently per step with probabilities
:math:`(w_{id}, w_{modal}, w_{cross}, 1 - w_{id} - w_{modal} - w_{cross})`; with
:math:`a = a(i_t), b = b(i_t)`:

- ``id`` (signal only in IDs): :math:`i_{t+1} \sim \mathrm{Uniform}(S(i_t))`, where the successor table
  :math:`S(i)` holds ``n_successors`` distinct random items other than :math:`i`.
- ``modal`` (each channel predicts itself; favours late fusion):
  :math:`i_{t+1} \sim \mathrm{Uniform}(\mathrm{cell}(\pi_a(a), \pi_b(b)))`, where
  :math:`\pi_a, \pi_b` are random cyclic permutations of :math:`0..C-1` (one C-cycle each, so no code
  maps to itself). The image codes alone follow :math:`a_{t+1} = \pi_a(a_t)`, the text codes
  :math:`b_{t+1} = \pi_b(b_t)`.
- ``cross`` (only the pair predicts; favours early fusion): the next image code is the sum of the
  current pair and the next text code is fresh,

  .. math::  i_{t+1} \sim \mathrm{Uniform}\big(\mathrm{cell}(f(a, b),\ \beta_{t+1})\big), \qquad
             f(a, b) = (a + b) \bmod C, \qquad \beta_{t+1} \sim \mathrm{Uniform}(0..C-1).

  f is a Latin square (a bijection in either argument), so with :math:`b_t` uniform and independent
  of the image history, :math:`a_{t+1}` is uniform given all earlier image codes, and given all
  earlier text codes (which are i.i.d. along a cross chain); only the pair :math:`(a_t, b_t)` of one
  item predicts it. A rule that also fixed the next text code by the pair (an orthogonal Latin-square
  pair (f, g), as an earlier version did) leaks: along a chain, two consecutive codes of one channel
  recover the other channel's code, so each channel's own sequence predicts the next cell and late
  fusion needs no cross-channel interplay. Best possible HR@K on a pure cross chain: K / (C P).
- ``noise``: :math:`i_{t+1} \sim \mathrm{Uniform}(1..n)`.

Both channels share the code count C (the cross rule needs :math:`C_a = C_b`). The mixture weights
come either from ``w_id``, ``w_modal``, ``w_cross`` (``preset="custom"``, the default) or from a named
preset, which replaces them (:data:`PRESETS`; ``ids``, ``modal`` and ``cross`` are pure, ``mixed`` is
0.3 / 0.3 / 0.3 + 0.1 noise, the same as the default weights). Setting a preset together with weights
other than the defaults is an error rather than a silent override. One field (not named constructors)
keeps presets usable from ``--set preset=modal`` and sweep files.

Randomness: ``seed`` feeds a :class:`numpy.random.SeedSequence` spawned into five independent streams:
structure (id layout, :math:`\pi_a, \pi_b`, successor table), centroids, feature noise, missingness,
sequences. Equal
options give bit-identical data, and, e.g., changing ``n_users`` leaves items and features unchanged.
:func:`ground_truth` recomputes only the structure and features; :func:`generate` also returns the
mechanism behind every interaction.

Shapes: :math:`U` users, :math:`N = \sum_u L_u` interactions ->
``flat`` long [N] in 1..n, ``offsets`` long [U + 1], ``image`` [n + 1, d_img], ``text`` [n + 1, d_txt].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch

from fusionbench.data.core import DenseChannel, ItemSide, SequenceData
from fusionbench.options import Ge, Gt, Le, Lt, PluginOptions, require
from fusionbench.registry import DATASETS

MECHANISMS = ("id", "modal", "cross", "noise")
"""Mechanism names; :attr:`Generated.mechanism` holds indices into this tuple (-1 = first item)."""

PRESETS: dict[str, tuple[float, float, float]] = {
    "ids": (1.0, 0.0, 0.0),
    "modal": (0.0, 1.0, 0.0),
    "cross": (0.0, 0.0, 1.0),
    "mixed": (0.3, 0.3, 0.3),
}
"""Preset name -> ``(w_id, w_modal, w_cross)``; the rest of the mass is uniform noise."""

_WEIGHTS = ("w_id", "w_modal", "w_cross")


@dataclass(frozen=True)
class SyntheticOptions(PluginOptions):
    """Options of the ``synthetic`` dataset (see the module docstring for the generative process).

    ``n_users``: U. ``n_codes``: C, codes per channel. ``per_cell``: P, items per (image, text) code
    cell; n = C^2 P. ``image_dim`` / ``text_dim``: feature sizes. ``noise``: sigma. ``min_len`` /
    ``max_len``: sequence length range. ``length_decay``: q of the truncated geometric length law.
    ``w_id`` / ``w_modal`` / ``w_cross``: mechanism probabilities (rest = noise), used when
    ``preset="custom"``. ``n_successors``: successors per item of the ID mechanism.
    ``missing_rate``: fraction of items without each channel. ``seed``: all randomness.
    ``preset``: "custom" or a name in :data:`PRESETS`, replacing the three weights.
    """

    n_users: Annotated[int, Ge(1)] = 2000
    n_codes: Annotated[int, Ge(2)] = 8
    per_cell: Annotated[int, Ge(1)] = 4
    image_dim: Annotated[int, Ge(1)] = 32
    text_dim: Annotated[int, Ge(1)] = 32
    noise: Annotated[float, Ge(0), Lt(math.inf)] = 0.5
    min_len: Annotated[int, Ge(2)] = 5
    max_len: int = 20
    length_decay: Annotated[float, Gt(0), Le(1)] = 0.85
    w_id: Annotated[float, Ge(0), Le(1)] = 0.3
    w_modal: Annotated[float, Ge(0), Le(1)] = 0.3
    w_cross: Annotated[float, Ge(0), Le(1)] = 0.3
    n_successors: Annotated[int, Ge(1)] = 4
    missing_rate: Annotated[float, Ge(0), Le(1)] = 0.0
    seed: Annotated[int, Ge(0)] = 0
    preset: Literal["custom", "ids", "modal", "cross", "mixed"] = "custom"

    @property
    def n_items(self) -> int:
        return self.n_codes * self.n_codes * self.per_cell

    def mixture(self) -> tuple[float, float, float, float]:
        """Effective ``(w_id, w_modal, w_cross, w_noise)`` after applying the preset."""
        w = PRESETS[self.preset] if self.preset != "custom" else (self.w_id, self.w_modal, self.w_cross)
        return (w[0], w[1], w[2], max(0.0, 1.0 - sum(w)))

    def check(self) -> None:
        require(self.max_len >= self.min_len,
                f"option 'max_len' must be >= min_len ({self.min_len}), got {self.max_len}")
        if self.preset != "custom":
            defaults = {name: default for name, _, default in self.fields()}
            changed = [name for name in _WEIGHTS if getattr(self, name) != defaults[name]]
            require(not changed,
                    f"option 'preset' ({self.preset!r}) sets the mixture weights; it cannot be combined with "
                    f"{', '.join(repr(c) for c in changed)} (use preset='custom' to set weights)")
        total = self.w_id + self.w_modal + self.w_cross
        require(total <= 1.0 + 1e-9,
                f"options 'w_id' + 'w_modal' + 'w_cross' must sum to <= 1 (rest = noise), got {total:g}")
        require(self.n_successors <= self.n_items - 1,
                f"option 'n_successors' must be <= n_items - 1 = {self.n_items - 1}, got {self.n_successors}")


@dataclass(frozen=True)
class GroundTruth:
    """The hidden structure of one synthetic dataset (numpy arrays; item rows are ids, row 0 padding).

    Attributes:
        image_code: long ``[n + 1]``, a(i); row 0 is -1.
        text_code: long ``[n + 1]``, b(i); row 0 is -1.
        cell_items: long ``[C, C, P]``, the item ids of cell (a, b).
        perm_image: long ``[C]``, pi_a.
        perm_text: long ``[C]``, pi_b.
        cross_image: long ``[C, C]``, f(a, b): next image code of the cross mechanism (the next
            text code is uniform).
        successors: long ``[n + 1, S]``, S(i) of the ID mechanism; row 0 is 0.
        image_centroids: float ``[C, d_img]``; text_centroids: float ``[C, d_txt]``.
        weights: effective ``(w_id, w_modal, w_cross, w_noise)``.
    """

    image_code: np.ndarray
    text_code: np.ndarray
    cell_items: np.ndarray
    perm_image: np.ndarray
    perm_text: np.ndarray
    cross_image: np.ndarray
    successors: np.ndarray
    image_centroids: np.ndarray
    text_centroids: np.ndarray
    weights: tuple[float, float, float, float]

    def consistent(self, prev: np.ndarray, nxt: np.ndarray) -> dict[str, np.ndarray]:
        """Which deterministic rules explain each transition ``prev[j] -> nxt[j]`` (item ids, ``[N]``).

        Returns bool ``[N]`` per mechanism name ``"id"``, ``"modal"``, ``"cross"`` (a transition may
        satisfy several by chance; ``noise`` explains anything and is not listed).
        """
        prev, nxt = np.asarray(prev), np.asarray(nxt)
        a, b = self.image_code[prev], self.text_code[prev]
        a2, b2 = self.image_code[nxt], self.text_code[nxt]
        return {
            "id": (self.successors[prev] == nxt[:, None]).any(1),
            "modal": (a2 == self.perm_image[a]) & (b2 == self.perm_text[b]),
            "cross": a2 == self.cross_image[a, b],
        }


@dataclass(frozen=True)
class Generated:
    """A generated dataset with its truth: ``mechanism`` int8 ``[N]`` aligned with ``data.flat``, an
    index into :data:`MECHANISMS` for the step that produced each item (-1 for a user's first item)."""

    data: SequenceData
    mechanism: np.ndarray
    truth: GroundTruth


def cross_table(n_codes: int) -> np.ndarray:
    """f(a, b) = (a + b) mod C as long ``[C, C]`` (module docstring, ``cross``)."""
    code = np.arange(n_codes)
    return (code[:, None] + code[None, :]) % n_codes


def _cycle(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random cyclic permutation of 0..n-1 (a single n-cycle)."""
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators: structure, centroids, feature noise, missingness, sequences."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]


def ground_truth(opts: SyntheticOptions) -> GroundTruth:
    """The structure behind ``opts`` (the same arrays :func:`generate` uses); cheap, no sequences."""
    structure, centroids = _streams(opts.seed)[:2]
    C, P, n, S = opts.n_codes, opts.per_cell, opts.n_items, opts.n_successors
    slot = structure.permutation(n)  # item id i sits at slot[i - 1] in cell-major order
    cell = slot // P
    image_code = np.concatenate([[-1], cell // C]).astype(np.int64)
    text_code = np.concatenate([[-1], cell % C]).astype(np.int64)
    cell_items = np.empty(n, dtype=np.int64)
    cell_items[slot] = np.arange(1, n + 1)
    perm_image, perm_text = _cycle(structure, C), _cycle(structure, C)
    # S distinct offsets in 1..n-1 per item (sorted draws + 0..S-1 are distinct), never the item itself
    draws = np.sort(structure.integers(0, n - S, size=(n, S)), axis=1) + np.arange(S)
    successors = np.zeros((n + 1, S), dtype=np.int64)
    successors[1:] = (np.arange(n)[:, None] + 1 + draws) % n + 1
    image_centroids = centroids.normal(0.0, 1.0 / math.sqrt(opts.image_dim), size=(C, opts.image_dim))
    text_centroids = centroids.normal(0.0, 1.0 / math.sqrt(opts.text_dim), size=(C, opts.text_dim))
    return GroundTruth(
        image_code=image_code, text_code=text_code, cell_items=cell_items.reshape(C, C, P),
        perm_image=perm_image, perm_text=perm_text, cross_image=cross_table(C),
        successors=successors, image_centroids=image_centroids, text_centroids=text_centroids,
        weights=opts.mixture(),
    )


def _channel(centroids: np.ndarray, codes: np.ndarray, noise: float, rng: np.random.Generator,
             absent: np.ndarray) -> DenseChannel:
    n, d = codes.shape[0] - 1, centroids.shape[1]
    features = np.zeros((n + 1, d), dtype=np.float64)
    features[1:] = centroids[codes[1:]] + noise * rng.normal(0.0, 1.0 / math.sqrt(d), size=(n, d))
    present = np.ones(n + 1, dtype=bool)
    present[0] = False
    present[absent] = False
    features[~present] = 0.0
    return DenseChannel(features=features.astype(np.float32), present=present)


def generate(opts: SyntheticOptions) -> Generated:
    """Generate the dataset of ``opts`` with its ground truth and per-interaction mechanisms.

    Loops over the ``max_len - 1`` time steps, vectorised across users.
    """
    truth = ground_truth(opts)
    _, _, features, missing, seq_rng = _streams(opts.seed)
    n, U, T = opts.n_items, opts.n_users, opts.max_len

    n_absent = int(math.floor(opts.missing_rate * n + 0.5))
    absent_image = missing.permutation(n)[:n_absent] + 1
    absent_text = missing.permutation(n)[:n_absent] + 1
    dense = {
        "image": _channel(truth.image_centroids, truth.image_code, opts.noise, features, absent_image),
        "text": _channel(truth.text_centroids, truth.text_code, opts.noise, features, absent_text),
    }

    support = np.arange(opts.min_len, T + 1)
    law = opts.length_decay ** (support - opts.min_len).astype(np.float64)
    lengths = seq_rng.choice(support, size=U, p=law / law.sum())
    items = np.zeros((U, T), dtype=np.int64)
    items[:, 0] = seq_rng.integers(1, n + 1, size=U)
    u = seq_rng.random((U, T - 1))
    pick = seq_rng.integers(0, opts.n_successors, size=(U, T - 1))
    member = seq_rng.integers(0, opts.per_cell, size=(U, T - 1))
    uniform = seq_rng.integers(1, n + 1, size=(U, T - 1))
    fresh_text = seq_rng.integers(0, opts.n_codes, size=(U, T - 1))
    w_id, w_modal, w_cross, _ = opts.mixture()
    bounds = np.array([w_id, w_id + w_modal, w_id + w_modal + w_cross])
    mech = (u[..., None] >= bounds).sum(-1).astype(np.int8)  # [U, T-1] in 0..3
    for t in range(1, T):
        cur, s = items[:, t - 1], t - 1
        a, b = truth.image_code[cur], truth.text_code[cur]
        by_id = truth.successors[cur, pick[:, s]]
        modal = truth.cell_items[truth.perm_image[a], truth.perm_text[b], member[:, s]]
        cross = truth.cell_items[truth.cross_image[a, b], fresh_text[:, s], member[:, s]]
        items[:, t] = np.choose(mech[:, s], [by_id, modal, cross, uniform[:, s]])

    keep = np.arange(T)[None, :] < lengths[:, None]
    mechanisms = np.concatenate([np.full((U, 1), -1, dtype=np.int8), mech], axis=1)
    offsets = np.zeros(U + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    data = SequenceData(
        name="synthetic", n_items=n, flat=torch.from_numpy(items[keep]), offsets=torch.from_numpy(offsets),
        side=ItemSide(dense=dense), source=f"synthetic(seed={opts.seed}, preset={opts.preset})",
    )
    return Generated(data=data, mechanism=mechanisms[keep], truth=truth)


@DATASETS.register("synthetic")
class SyntheticDataset:
    """Seeded multimodal sequences with known ground truth (``image`` and ``text`` dense channels).

    See :mod:`fusionbench.data.synthetic` for the generative process and its equations; presets
    ``ids``, ``modal``, ``cross``, ``mixed`` isolate one kind of sequential signal each (or blend them).
    """

    Options = SyntheticOptions

    def __init__(self, ctx: Any, opts: SyntheticOptions):
        self.ctx, self.opts = ctx, opts

    def text_sources(self) -> tuple[str, ...]:
        """None: the ``text`` channel is given as features, there are no texts for ``features.text`` to pick."""
        return ()

    def load(self) -> SequenceData:
        return generate(self.opts).data

    def ground_truth(self) -> GroundTruth:
        return ground_truth(self.opts)
