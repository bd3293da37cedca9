"""Modality codes (mmsr.md §2): reduce item features, cluster them, give each item its k nearest centres.

Pipeline for one modality, on the rows where it is present:

1. reduction to ``reduce_dim`` (128) dimensions: ``"ae"`` an autoencoder whose sigmoid code is the
   reduced feature, ``"pca"`` scikit-learn PCA, ``"none"`` the raw features;
2. ``MiniBatchKMeans(n_clusters=C, init_size=max(512, 3C), batch_size=1024, n_init=3,
   random_state=seed)``;
3. ``codes[i] = argsort_c ||z_i - \\mu_c||_2`` truncated to the k nearest, nearest first.

Row 0 and items lacking the modality get :data:`~fusionbench.context.CODE_SENTINEL` in every slot.
Everything is seeded: two calls with the same inputs return identical arrays.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from fusionbench.context import CODE_SENTINEL
from fusionbench.errors import UserInputError

CODES_VERSION = "1"  # bump when the code construction changes, so cached codes are recomputed

Reduce = Literal["ae", "pca", "none"]


@dataclass(frozen=True)
class AutoencoderOptions:
    """Autoencoder schedule of the reference pipeline (mmsr.md §2 step 2)."""

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 500
    check_every: int = 10
    patience: int = 4


@dataclass(frozen=True)
class Codebook:
    """Result of :func:`fit_codebook`.

    Attributes:
        codes: int64 ``[n + 1, k]``, nearest centre first; ``CODE_SENTINEL`` for row 0 / absent rows.
        centres: float64 ``[C, r]`` KMeans centres in the reduced space (used to initialise code
            embeddings).
        reduced: float64 ``[n + 1, r]`` reduced features (zeros where absent).
    """

    codes: np.ndarray
    centres: np.ndarray
    reduced: np.ndarray


@contextlib.contextmanager
def single_threaded():
    """Run torch and the BLAS/OpenMP pools of numpy and scikit-learn on one thread, restoring them after.

    The autoencoder's and MiniBatchKMeans' operations are small; extra threads barely help and, on a
    busy machine, OpenMP spin-waiting makes them many times slower. One thread also keeps the results
    independent of the core count.
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def train_autoencoder(x: np.ndarray, dim: int, seed: int,
                      opts: AutoencoderOptions = AutoencoderOptions()) -> tuple[nn.Sequential, list[float]]:
    r"""Train ``z = \sigma(W_e x + b_e)``, ``\hat x = W_d z + b_d`` with MSE and Adam (mmsr.md §2 step 2).

    The full-data reconstruction MSE is evaluated before training and every ``check_every`` epochs;
    training stops after ``patience`` checks without a strict improvement (or at ``max_epochs``) and the
    model is restored to the best check (a deep copy of that state, not a reference to the live
    parameters). Initialisation (PyTorch's default Linear init) and shuffling draw from one local
    generator seeded with ``seed``; runs on one thread, so results are bit-identical across calls.

    Shapes: x ``[m, d]``. Returns the model ``Sequential(Linear(d, dim), Sigmoid(), Linear(dim, d))``
    in its best state and the list of checked losses (first entry: before training).
    """
    g = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    m, d = data.shape
    encoder, decoder = nn.Linear(d, dim), nn.Linear(dim, d)
    for layer in (encoder, decoder):  # nn.Linear's default init, drawn from the local generator
        bound = 1.0 / layer.in_features ** 0.5
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=g)
            layer.bias.uniform_(-bound, bound, generator=g)
    model = nn.Sequential(encoder, nn.Sigmoid(), decoder)

    def full_loss() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(data), data))

    with single_threaded():
        optim = torch.optim.Adam(model.parameters(), lr=opts.lr)
        losses = [full_loss()]
        best_loss, best_state, bad = losses[0], copy.deepcopy(model.state_dict()), 0
        for epoch in range(1, opts.max_epochs + 1):
            shuffled = data[torch.randperm(m, generator=g)]
            for start in range(0, m, opts.batch_size):
                batch = shuffled[start:start + opts.batch_size]
                loss = nn.functional.mse_loss(model(batch), batch)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
            if epoch % opts.check_every == 0:
                losses.append(full_loss())
                if losses[-1] < best_loss:
                    best_loss, best_state, bad = losses[-1], copy.deepcopy(model.state_dict()), 0
                else:
                    bad += 1
                    if bad >= opts.patience:
                        break
        model.load_state_dict(best_state)
    return model, losses


def autoencoder_reduce(x: np.ndarray, dim: int, seed: int,
                       opts: AutoencoderOptions = AutoencoderOptions()) -> np.ndarray:
    """The sigmoid codes of :func:`train_autoencoder`'s best model: ``[m, d]`` -> float64 ``[m, dim]`` in (0, 1)."""
    model, _ = train_autoencoder(x, dim, seed, opts)
    with torch.no_grad():
        return model[1](model[0](torch.as_tensor(np.asarray(x), dtype=torch.float32))).double().numpy()


def reduce_features(x: np.ndarray, method: Reduce, dim: int, seed: int) -> np.ndarray:
    """Reduce ``x [m, d]`` to ``[m, min(dim, d)]`` float64 (``"none"``: ``x`` as float64)."""
    dim = min(dim, x.shape[1])
    if method == "none":
        return np.asarray(x, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        dim = min(dim, x.shape[0])
        return PCA(n_components=dim, svd_solver="full", random_state=seed).fit_transform(
            np.asarray(x, dtype=np.float64))
    if method == "ae":
        return autoencoder_reduce(x, dim, seed)
    raise UserInputError(f"option 'reduce' must be 'ae', 'pca' or 'none', got {method!r}")


def nearest_centres(z: np.ndarray, centres: np.ndarray, k: int, block: int = 1 << 22) -> np.ndarray:
    """Indices of the ``k`` nearest ``centres [C, r]`` (Euclidean) for each row of ``z [m, r]`` -> int64 ``[m, k]``.

    Sorted by distance, ties by centre index. Rows are processed in blocks of about ``block / C``.
    """
    z = np.asarray(z, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    c_sq = (c * c).sum(1)
    out = np.empty((z.shape[0], k), dtype=np.int64)
    step = max(1, block // max(1, c.shape[0]))
    for start in range(0, z.shape[0], step):
        zb = z[start:start + step]
        dist = (zb * zb).sum(1, keepdims=True) - 2.0 * zb @ c.T + c_sq  # squared distances [b, C]
        out[start:start + step] = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return out


def _check_features(features: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    present = np.asarray(present, dtype=bool)
    if features.ndim != 2 or present.shape != (features.shape[0],):
        raise ValueError(
            f"features must be [n + 1, d] and present [n + 1], got {list(features.shape)} and {list(present.shape)}"
        )
    present = present.copy()
    present[0] = False
    if not np.isfinite(features[present]).all():
        raise ValueError("features of present items must be finite")
    return features, present


def fit_codebook(features: np.ndarray, present: np.ndarray, n_clusters: int = 30, k: int = 3,
                 reduce: Reduce = "ae", reduce_dim: int = 128, seed: int = 2023) -> Codebook:
    """:func:`compute_codes` plus the fitted centres and the reduced features (see :class:`Codebook`)."""
    features, present = _check_features(features, present)
    n_present = int(present.sum())
    if n_clusters < 1:
        raise UserInputError(f"option 'n_clusters' must be >= 1, got {n_clusters}")
    if not 1 <= k <= n_clusters:
        raise UserInputError(f"option 'k' must be in 1..n_clusters = 1..{n_clusters}, got {k}")
    if n_clusters > n_present:
        raise UserInputError(
            f"option 'n_clusters' = {n_clusters} exceeds the number of items with this modality ({n_present})"
        )
    if reduce_dim < 1:
        raise UserInputError(f"option 'reduce_dim' must be >= 1, got {reduce_dim}")
    from sklearn.cluster import MiniBatchKMeans

    rows = np.flatnonzero(present)
    with single_threaded():
        z = reduce_features(features[rows], reduce, reduce_dim, seed)
        kmeans = MiniBatchKMeans(n_clusters=n_clusters, init_size=max(512, 3 * n_clusters), batch_size=1024,
                                 n_init=3, random_state=seed).fit(z)
    centres = kmeans.cluster_centers_.astype(np.float64)
    codes = np.full((features.shape[0], k), CODE_SENTINEL, dtype=np.int64)
    codes[rows] = nearest_centres(z, centres, k)
    reduced = np.zeros((features.shape[0], z.shape[1]), dtype=np.float64)
    reduced[rows] = z
    return Codebook(codes=codes, centres=centres, reduced=reduced)


def compute_codes(features: np.ndarray, present: np.ndarray, n_clusters: int = 30, k: int = 3,
                  reduce: Reduce = "ae", reduce_dim: int = 128, seed: int = 2023) -> np.ndarray:
    """Modality codes of every item -> int64 ``[n + 1, k]`` in ``0..n_clusters-1``, nearest centre first.

    Args:
        features: float ``[n + 1, d]``; only rows with ``present`` are read.
        present: bool ``[n + 1]``; row 0 is treated as absent.
        n_clusters: C, the code vocabulary size.
        k: codes per item (k <= C).
        reduce: ``"ae"`` (autoencoder, mmsr.md §2), ``"pca"`` or ``"none"``.
        reduce_dim: reduced size, capped at d.
        seed: seeds the autoencoder / PCA and KMeans.

    Raises:
        UserInputError (a ValueError) naming the option: k > C, C > number of present items, bad reduce.
    """
    return fit_codebook(features, present, n_clusters, k, reduce, reduce_dim, seed).codes


def _flatten(attributes: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Row index and attribute id of every (item, attribute) pair, row 0 skipped, in the given order."""
    if len(attributes) < 1:
        raise ValueError("attributes must have one entry per item id 0..n (index 0 unused)")
    lengths = np.fromiter((len(a) for a in attributes), dtype=np.int64, count=len(attributes))
    lengths[0] = 0
    ids = np.fromiter((a for t in attributes[1:] for a in t), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(attributes), dtype=np.int64), lengths)
    return rows, ids


def attribute_codes(attributes: list[tuple[int, ...]], max_codes: int) -> np.ndarray:
    """Attribute ids used directly as codes -> int64 ``[n + 1, max_codes]``.

    ``attributes[i]`` holds item i's attribute ids (1-based; index 0 unused). Code = id - 1; the first
    ``max_codes`` ids in the given order are kept, the rest of the row is ``CODE_SENTINEL``.
    """
    if max_codes < 1:
        raise UserInputError(f"option 'attr_max_codes' must be >= 1, got {max_codes}")
    rows, ids = _flatten(attributes)
    if ids.size and ids.min() < 1:
        raise ValueError(f"attribute ids must be >= 1, got {int(ids.min())}")
    starts = np.searchsorted(rows, rows, side="left")  # rows is sorted: first pair of each row
    slot = np.arange(rows.size) - starts
    keep = slot < max_codes
    codes = np.full((len(attributes), max_codes), CODE_SENTINEL, dtype=np.int64)
    codes[rows[keep], slot[keep]] = ids[keep] - 1
    return codes


def attribute_features(attributes: list[tuple[int, ...]], n_attributes: int, dim: int = 128,
                       seed: int = 2023) -> np.ndarray:
    """Item attribute sets as features -> float32 ``[n + 1, min(dim, n_attributes)]``.

    Rows are multi-hot over ``n_attributes`` (duplicates count once), L2-normalised; when
    ``n_attributes > dim`` they are projected by scikit-learn ``TruncatedSVD(dim, random_state=seed)``
    fitted on the sparse matrix. Rows without attributes (and row 0) are zeros.
    """
    if n_attributes < 1:
        raise ValueError(f"n_attributes must be >= 1, got {n_attributes}")
    rows, ids = _flatten(attributes)
    if ids.size and (ids.min() < 1 or ids.max() > n_attributes):
        bad = int(ids[(ids < 1) | (ids > n_attributes)][0])
        raise ValueError(f"attribute id {bad} outside 1..n_attributes = 1..{n_attributes}")
    return _multi_hot_svd(rows, ids - 1, len(attributes), n_attributes, dim, seed)


def code_set_features(codes: np.ndarray, n_codes: int, dim: int = 128, seed: int = 2023) -> np.ndarray:
    """:func:`attribute_features` of code sets: codes int ``[n + 1, k]`` (``CODE_SENTINEL`` = none) ->
    float32 ``[n + 1, min(dim, n_codes)]``, the multi-hot of each row's valid codes, L2-normalised and,
    when ``n_codes > dim``, projected by the same seeded TruncatedSVD.

    For attribute-id codes (:func:`attribute_codes`) that kept every id of every item, the result equals
    ``attribute_features(attributes, n_attributes, dim, seed)`` bit for bit (same sparse matrix, same
    order of entries)."""
    if n_codes < 1:
        raise ValueError(f"n_codes must be >= 1, got {n_codes}")
    codes = np.asarray(codes)
    rows, slots = np.nonzero(codes != CODE_SENTINEL)          # row-major: each row's codes in their order
    return _multi_hot_svd(rows, codes[rows, slots], codes.shape[0], n_codes, dim, seed)


def _multi_hot_svd(rows: np.ndarray, columns: np.ndarray, n_rows: int, width: int, dim: int,
                   seed: int) -> np.ndarray:
    """The L2-normalised multi-hot ``[n_rows, width]`` of the (row, column) pairs (duplicates count once),
    TruncatedSVD-projected to ``dim`` when ``width > dim``; empty rows stay zeros. float32."""
    import scipy.sparse as sp

    hot = sp.csr_matrix((np.ones(columns.size), (rows, columns)), shape=(n_rows, width))
    hot.sum_duplicates()
    hot.data[:] = 1.0
    norm = np.sqrt(np.asarray(hot.sum(axis=1)).ravel())
    hot = sp.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)) @ hot
    if width <= dim:
        return hot.toarray().astype(np.float32)
    from sklearn.decomposition import TruncatedSVD

    out = TruncatedSVD(n_components=dim, algorithm="randomized", random_state=seed).fit_transform(hot.tocsr())
    out[norm == 0] = 0.0
    return out.astype(np.float32)
