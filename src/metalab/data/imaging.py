"""Image files → uint8 tensors, the one place that decodes pixels (datasets and `metalab predict`
alike)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from metalab.data.base import Preprocess
from metalab.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_MODES = {1: "L", 3: "RGB"}

log = logging.getLogger("metalab")


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
            image = _without_alpha(image, name)
            pixels = np.asarray(image.convert(mode).resize(size, Image.LANCZOS), dtype=np.uint8)
    # PIL raises many types for bad files (OSError, SyntaxError, ValueError, ...)
    except Exception as error:
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


def _has_alpha(image: Image.Image) -> bool:
    return (
        image.mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (image.mode == "P" and "transparency" in image.info)
        or (image.mode in ("L", "RGB", "1") and "transparency" in image.info)
    )


def _without_alpha(image: Image.Image, name: str) -> Image.Image:
    """An image with transparency, composited onto a background that contrasts with what it
    draws: white behind dark strokes, black behind bright ones (converting it to grayscale or RGB
    would drop the alpha and leave the colour of the transparent pixels, often the strokes' own:
    a blank image). Images without transparency are returned as they are."""
    if not _has_alpha(image):
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() == 255:
        return rgba.convert("RGB")
    opaque = alpha >= 128
    if not opaque.any():
        log.warning("image %s is fully transparent: it decodes to a blank image", name)
        return rgba.convert("RGB")
    luminance = np.asarray(rgba.convert("L"), dtype=np.float32)
    background = (255, 255, 255, 255) if luminance[opaque].mean() < 128 else (0, 0, 0, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")


def load_images(paths: list[Path], preprocess: Preprocess) -> Tensor:
    """Decode image files (for example the query images of `metalab predict`) into one (n, C, H, W)
    uint8 tensor."""
    if not paths:
        raise DataError("no image files given")
    images = []
    for path in map(Path, paths):
        try:
            if path.is_dir():
                raise DataError(
                    f"{path} is a folder, not an image file; pass its images (e.g. {path}/*.png)"
                )
            if not path.is_file():
                what = "is not a regular file" if path.exists() else "not found"
                raise DataError(f"image file {path} {what}")
        except OSError as e:
            raise DataError(f"image file {path} cannot be read ({e.strerror})") from None
        images.append(decode_image(path, preprocess, str(path)))
    return torch.stack(images)
