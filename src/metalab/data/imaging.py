"""Image files → uint8 tensors, the one place that decodes pixels (datasets and `metalab predict`
alike)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from metalab.data.base import Preprocess
from metalab.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_MODES = {1: "L", 3: "RGB"}


def decode_image(source: bytes | Path, preprocess: Preprocess, name: str) -> Tensor:
    """Decode one image file (its path or its bytes) as `preprocess` says.

    The image is converted to grayscale ("L") or RGB, resized to a square with the antialiasing
    Lanczos filter, then inverted (255 - x) if ``preprocess.invert``.

    Args:
        source: the file's path, or its bytes (a zip member).
        preprocess: output size, channels and inversion.
        name: how to name the file in an error, e.g. ``"a/b.png"`` or ``"images.zip:dir/b.png"``.

    Returns:
        (C, H, W) uint8 tensor with H = W = ``preprocess.image_size``.

    Raises:
        DataError: the file is not a readable image (wrong format, truncated).
    """
    mode = _MODES.get(preprocess.channels)
    if mode is None:
        raise ConfigError(f"image channels {preprocess.channels} is invalid; choices: 1, 3")
    size = (preprocess.image_size, preprocess.image_size)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            pixels = np.asarray(image.convert(mode).resize(size, Image.LANCZOS), dtype=np.uint8)
    except (
        Exception
    ) as error:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError, ...)
        raise DataError(
            f"cannot decode image {name} ({error}); remove or replace the file"
        ) from error
    tensor = (
        torch.from_numpy(pixels.copy())
        .reshape(size[0], size[1], preprocess.channels)
        .permute(2, 0, 1)
    )
    tensor = tensor.contiguous()
    return 255 - tensor if preprocess.invert else tensor


def load_images(paths: list[Path], preprocess: Preprocess) -> Tensor:
    """Decode image files (for example the query images of `metalab predict`) into one (n, C, H, W)
    uint8 tensor."""
    if not paths:
        raise DataError("no image files given")
    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"image file {path} not found")
        images.append(decode_image(path, preprocess, str(path)))
    return torch.stack(images)
