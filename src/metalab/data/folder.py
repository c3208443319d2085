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
        "alpha": "composited",  # transparent images onto a contrasting background (imaging.py)
    }
    cache_name = "folder-" + re.sub(r"[^\w.-]", "_", name)
    payload = load_or_build(cache_name, params, [root], build, cache_dir)
    per_class = list(payload["images"].split(payload["counts"]))
    return ClassIndexedDataset.from_class_tensors(
        name, per_class, list(files), preprocess=preprocess
    )


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name → its image files, both sorted; checks the layout."""
    try:
        return _class_files_checked(root)
    except OSError as e:
        where = e.filename if e.filename is not None else root
        raise DataError(f"cannot read {where} ({e.strerror}); expected {LAYOUT}") from None


def _images_below(folder: Path) -> int:
    """How many image files the sub-folders of `folder` hold, at any depth (hidden ones aside)."""
    return sum(
        1
        for f in folder.rglob("*")
        if f.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
        and f.is_file()
    )


def _class_files_checked(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"image folder {root} {what}; expected {LAYOUT}")
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    class_dirs = [d for d in entries if d.is_dir()]
    if not class_dirs:
        loose = sum(1 for e in entries if e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS)
        found = f" (it holds {loose} image(s) directly: put them in class folders)" if loose else ""
        raise DataError(f"{root} has no class folders{found}; expected {LAYOUT}")
    files = {}
    for class_dir in class_dirs:
        children = sorted(e for e in class_dir.iterdir() if not e.name.startswith("."))
        visible = [f for f in children if f.is_file()]
        images = [f for f in visible if f.suffix.lower() in IMAGE_EXTENSIONS]
        nested = [(d, _images_below(d)) for d in children if d.is_dir()]
        nested = [(d, n) for d, n in nested if n]
        if nested and not images:
            d, n = nested[0]
            raise DataError(
                f"class folder {class_dir} has no images of its own, but its sub-folder {d} holds "
                f"{n}; images of a class go directly in its folder ({LAYOUT}): move them up"
            )
        if nested:
            d, n = nested[0]
            more = f" and {len(nested) - 1} more sub-folder(s)" if len(nested) > 1 else ""
            log.warning(
                "ignored %d image(s) in sub-folder %s%s: only the images directly in a class "
                "folder belong to the class",
                sum(n for _, n in nested),
                d,
                more,
            )
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
