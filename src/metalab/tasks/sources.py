"""Datasets by name: a run's ``data:`` config and a split name → a task source.

Each registered dataset is a :class:`DatasetSpec` that carries everything a caller may ask of it —
how to load a split, which splits it offers, how its images are decoded, what ``metalab data info``
prints — so no code outside the dataset's own entry branches on its name. A new dataset (text
intents, a user's format) is one ``DATASETS.register(name)(DatasetSpec(...))``.

    split = load_split(cfg.data, "train")   # ClassIndexedDataset (images) or SinusoidTasks
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metalab.config import DataConfig
from metalab.data.base import ClassIndexedDataset, Preprocess
from metalab.errors import ConfigError, DataError
from metalab.registry import DATASETS
from metalab.tasks.sinusoid import SPLITS as SINUSOID_SPLITS
from metalab.tasks.sinusoid import SinusoidTasks


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Args:
        load: ``(data config, split name) → task source``.
        splits: the splits the config offers (the trainer validates only where ``val`` exists).
        preprocess: how images are decoded (None for sources that decode nothing).
        info: what ``metalab data info`` reports (None: the dataset offers no listing).
    """

    load: Callable[[DataConfig, str], Any]
    splits: Callable[[DataConfig], tuple[str, ...]]
    preprocess: Callable[[DataConfig], Preprocess | None] = lambda data: None
    info: Callable[[DataConfig], dict] | None = None


def data_dir_of(data: DataConfig) -> Path:
    """The configured data directory; an error naming the flag when there is none."""
    if not data.data_dir:
        raise DataError(
            "no data directory given: pass --data-dir DIR (the folder that holds the dataset)"
        )
    return Path(data.data_dir).expanduser()


# --- Omniglot (Lake et al. 2015): the official zips, Vinyals or Lake splits --------------------


def _omniglot_splits(data: DataConfig) -> tuple[str, ...]:
    from metalab.data.omniglot import SCHEMES

    if data.scheme not in SCHEMES:
        raise ConfigError(f"data.scheme '{data.scheme}' is unknown; choices: {', '.join(SCHEMES)}")
    return SCHEMES[data.scheme]


def _omniglot_load(data: DataConfig, split: str) -> ClassIndexedDataset:
    from metalab.data.omniglot import load_omniglot

    rotations = None if data.rotations is None else tuple(data.rotations)
    return load_omniglot(
        data_dir_of(data),
        data.scheme,
        split,
        image_size=data.image_size,
        rotations=rotations,
        download=data.download,
    )


def _omniglot_info(data: DataConfig) -> dict:
    from metalab.data.omniglot import omniglot_info

    return omniglot_info(data_dir_of(data), data.scheme, download=data.download)


DATASETS.register("omniglot")(
    DatasetSpec(
        load=_omniglot_load,
        splits=_omniglot_splits,
        preprocess=lambda data: Preprocess(data.image_size, 1, True),  # strokes bright on black
        info=_omniglot_info,
    )
)


# --- A user's images: DATA_DIR/<split>/<class>/<image files> ------------------------------------


def _folder_preprocess(data: DataConfig) -> Preprocess:
    if data.channels not in (1, 3):
        raise ConfigError(f"data.channels {data.channels} is invalid; choices: 1, 3")
    return Preprocess(data.image_size, data.channels, data.invert)


def _folder_load(data: DataConfig, split: str) -> ClassIndexedDataset:
    from metalab.data.folder import load_image_folder

    root = data_dir_of(data) / split
    if not root.is_dir():
        if root.parent.is_file():
            what = f"--data-dir {root.parent} is a file, not a folder"
        else:
            what = f"{root} is a file, not a folder" if root.exists() else f"{root} not found"
        raise DataError(f"{what}: a folder dataset needs {root.parent}/{split}/<class>/<images>")
    return load_image_folder(root, _folder_preprocess(data), name=f"folder-{split}")


def _folder_splits(data: DataConfig) -> tuple[str, ...]:
    root = data_dir_of(data)
    return tuple(s for s in ("train", "val", "test") if (root / s).is_dir())


def _folder_info(data: DataConfig) -> dict:
    splits = {}
    for split in _folder_splits(data):
        ds = _folder_load(data, split)
        splits[split] = {"classes": ds.num_classes, "images": int(ds.counts.sum())}
    return {"dataset": "folder", "data_dir": str(data_dir_of(data)), "splits": splits}


DATASETS.register("folder")(
    DatasetSpec(
        load=_folder_load,
        splits=_folder_splits,
        preprocess=_folder_preprocess,
        info=_folder_info,
    )
)


# --- Sinusoid regression (Finn et al. 2017, §5.1): no files; a split changes fixed-set seeds -----


def _sinusoid_load(data: DataConfig, split: str) -> SinusoidTasks:
    if split not in SINUSOID_SPLITS:
        raise DataError(
            f"split '{split}' is unknown for sinusoid; choices: {', '.join(SINUSOID_SPLITS)}"
        )
    return SinusoidTasks(split)


DATASETS.register("sinusoid")(
    DatasetSpec(load=_sinusoid_load, splits=lambda data: tuple(SINUSOID_SPLITS))
)


# --- What callers use ----------------------------------------------------------------------------


def dataset_spec(data: DataConfig) -> DatasetSpec:
    """The registered entry of ``data.dataset`` (an unknown name lists the choices)."""
    return DATASETS.get(data.dataset)


def preprocess_of(data: DataConfig) -> Preprocess | None:
    """The decoding a dataset config implies (Omniglot: grayscale, strokes bright)."""
    return dataset_spec(data).preprocess(data)


def split_names(data: DataConfig) -> tuple[str, ...]:
    """The splits a dataset config offers (the trainer validates only where a 'val' split
    exists)."""
    return dataset_spec(data).splits(data)


def load_split(data: DataConfig, split: str) -> ClassIndexedDataset | SinusoidTasks:
    """One split of the configured dataset as a task source; the training split as ``data.labels``
    and ``data.augment`` make it (unlabeled or augmented: :mod:`metalab.tasks.unsupervised`)."""
    from metalab.tasks.text_sources import TEXT_DATASETS

    if data.text_input == "tokens" and data.dataset not in TEXT_DATASETS:
        raise ConfigError(
            f"data.text_input: tokens is for text datasets ({', '.join(TEXT_DATASETS)}), but "
            f"data.dataset is '{data.dataset}'; remove data.text_input"
        )
    source = dataset_spec(data).load(data, split)
    if split == data.train_split:
        from metalab.tasks.unsupervised import training_source

        source = training_source(data, source)
    return source


def dataset_info(data: DataConfig) -> dict:
    """What ``metalab data info`` prints for the configured dataset."""
    spec = dataset_spec(data)
    if spec.info is None:
        raise ConfigError(
            f"dataset '{data.dataset}' has no listing; choices: "
            + ", ".join(n for n in DATASETS.names() if DATASETS.get(n).info is not None)
        )
    return spec.info(data)


import metalab.tasks.text_sources  # noqa: E402,F401  (registers clinc150, banking77, hwu64, fewrel, text)
