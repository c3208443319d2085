"""Dataset builders by name: a run's ``data:`` config and a split name → a task source: a
ClassIndexedDataset for images, a :class:`~metalab.tasks.sinusoid.SinusoidTasks` for sinusoid
regression."""

from __future__ import annotations

from pathlib import Path

from metalab.config import DataConfig
from metalab.data.base import ClassIndexedDataset, Preprocess
from metalab.errors import ConfigError, DataError
from metalab.registry import DATASETS
from metalab.tasks.sinusoid import SPLITS as SINUSOID_SPLITS
from metalab.tasks.sinusoid import SinusoidTasks


def _data_dir(data: DataConfig) -> Path:
    if not data.data_dir:
        raise DataError(
            "no data directory given: pass --data-dir DIR (the folder that holds the dataset)"
        )
    return Path(data.data_dir).expanduser()


@DATASETS.register("omniglot")
def omniglot_split(data: DataConfig, split: str) -> ClassIndexedDataset:
    from metalab.data.omniglot import load_omniglot

    rotations = None if data.rotations is None else tuple(data.rotations)
    return load_omniglot(
        _data_dir(data),
        data.scheme,
        split,
        image_size=data.image_size,
        rotations=rotations,
        download=data.download,
    )


@DATASETS.register("folder")
def folder_split(data: DataConfig, split: str) -> ClassIndexedDataset:
    """A user's images: ``DATA_DIR/<split>/<class>/<image files>`` (split = train, val or test)."""
    from metalab.data.folder import load_image_folder

    root = _data_dir(data) / split
    if not root.is_dir():
        raise DataError(
            f"{root} not found: a folder dataset needs {root.parent}/{split}/<class>/<images>"
        )
    return load_image_folder(root, preprocess_of(data), name=f"folder-{split}")


@DATASETS.register("sinusoid")
def sinusoid_split(data: DataConfig, split: str) -> SinusoidTasks:
    """Sinusoid regression (Finn et al. 2017, §5.1): no files; the split only changes fixed-set
    seeds."""
    if split not in SINUSOID_SPLITS:
        raise DataError(
            f"split '{split}' is unknown for sinusoid; choices: {', '.join(SINUSOID_SPLITS)}"
        )
    return SinusoidTasks(split)


sinusoid_split.splits = (
    SINUSOID_SPLITS  # a builder's `splits`: the splits it offers without looking at files
)


def preprocess_of(data: DataConfig) -> Preprocess:
    """The decoding a dataset config implies (Omniglot: grayscale, strokes bright)."""
    if data.dataset == "omniglot":
        return Preprocess(data.image_size, 1, True)
    if data.channels not in (1, 3):
        raise ConfigError(f"data.channels {data.channels} is invalid; choices: 1, 3")
    return Preprocess(data.image_size, data.channels, data.invert)


def split_names(data: DataConfig) -> tuple[str, ...]:
    """The splits a dataset config offers (the trainer validates only where a 'val' split
    exists)."""
    if data.dataset == "omniglot":
        from metalab.data.omniglot import SCHEMES

        if data.scheme not in SCHEMES:
            raise ConfigError(
                f"data.scheme '{data.scheme}' is unknown; choices: {', '.join(SCHEMES)}"
            )
        return SCHEMES[data.scheme]
    fixed = getattr(DATASETS.get(data.dataset), "splits", None)
    if fixed is not None:
        return tuple(fixed)
    root = _data_dir(data)
    return tuple(s for s in ("train", "val", "test") if (root / s).is_dir())


def load_split(data: DataConfig, split: str) -> ClassIndexedDataset | SinusoidTasks:
    return DATASETS.get(data.dataset)(data, split)
