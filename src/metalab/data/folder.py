"""A user's own images as a few-shot dataset: ``root/<class>/<image files>``, one folder per
class."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from metalab.data.base import ClassIndexedDataset, Preprocess
from metalab.data.cache import Payload, load_or_build
from metalab.data.imaging import IMAGE_EXTENSIONS, decode_image
from metalab.errors import DataError

log = logging.getLogger("metalab")

LAYOUT = "ROOT/<class name>/<image files>, one folder per class"


def load_image_folder(
    root: Path, preprocess: Preprocess, cache_dir: Path | None = None, name: str | None = None
) -> ClassIndexedDataset:
    """Every class folder under `root` as one class (sorted by folder name), decoded once and
    cached.

    Hidden files are ignored; other files without an image extension (see ``IMAGE_EXTENSIONS``) are
    skipped with a warning. All classes are in the single group "".

    Args:
        root: the folder holding one sub-folder per class.
        preprocess: size, channels and inversion of the decoded images.
        cache_dir: decoded-image cache (default $METALAB_CACHE or ~/.cache/metalab).
        name: the dataset's name (default: the folder's name).

    Raises:
        DataError: `root` is missing or has no class folders, a class folder has no images, or an
            image file cannot be decoded (the message names it).
    """
    root = Path(root)
    name = name or root.name
    files = _class_files(root)

    def build() -> Payload:
        images = [
            decode_image(path, preprocess, str(path)) for paths in files.values() for path in paths
        ]
        return {"images": torch.stack(images), "counts": [len(paths) for paths in files.values()]}

    params = {
        "root": str(root.resolve()),
        "size": preprocess.image_size,
        "channels": preprocess.channels,
        "invert": preprocess.invert,
    }
    cache_name = "folder-" + re.sub(r"[^\w.-]", "_", name)
    payload = load_or_build(cache_name, params, [root], build, cache_dir)
    per_class = list(payload["images"].split(payload["counts"]))
    return ClassIndexedDataset.from_class_tensors(
        name, per_class, list(files), preprocess=preprocess
    )


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name → its image files, both sorted; checks the layout."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; expected {LAYOUT}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class folders; expected {LAYOUT}")
    files = {}
    for class_dir in class_dirs:
        visible = sorted(
            f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith(".")
        )
        images = [f for f in visible if f.suffix.lower() in IMAGE_EXTENSIONS]
        skipped = len(visible) - len(images)
        if skipped:
            example = next(f for f in visible if f not in images)
            log.warning(
                "skipped %d non-image file(s) in %s, e.g. %s", skipped, class_dir, example.name
            )
        if not images:
            extensions = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DataError(
                f"class folder {class_dir} has no images ({extensions}); add images or remove the "
                "folder"
            )
        files[class_dir.name] = images
    return files
