"""The data a trained run is evaluated on: its own dataset, or another one (cross-domain few-shot).

A learner trained on Omniglot can be scored on a user's own glyphs
(``--dataset folder --data-dir DIR``): the other dataset's images are decoded as the run's were (its
checkpoint's ``preprocess``: image size, channels, inversion), and a dataset whose inputs cannot fit
the run (a regression run on images, RGB images for a grayscale run) is refused before anything is
loaded.

    data = evaluation_data(cfg, state, dataset="folder", data_dir="my-glyphs")
    split = load_split(data, "test")
    check_fits(split, state, data)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from metalab.config import Config, DataConfig
from metalab.errors import ConfigError
from metalab.registry import DATASETS
from metalab.tasks.episodes import input_shape
from metalab.tasks.sources import DatasetSpec

_DECODING = ("image_size", "channels", "invert", "encoder")  # DataConfig fields that shape inputs


def _shape(shape: Any) -> str:
    return "×".join(str(int(s)) for s in shape)


def _decodes_images(spec: DatasetSpec) -> bool:
    return spec.preprocess(DataConfig()) is not None


def evaluation_data(
    cfg: Config, state: dict[str, Any], dataset: str | None, data_dir: str | Path | None
) -> DataConfig:
    """The data config to evaluate a run on.

    Args:
        cfg, state: the run's config and checkpoint state (its ``preprocess`` and
            ``input_shape``).
        dataset: another registered dataset (``--dataset``); None or the run's own: the run's data.
        data_dir: its folder (``--data-dir``); None: the run's own folder for the run's dataset,
            none (an error naming --data-dir when the dataset needs one) for another dataset.

    Raises:
        ConfigError: an unknown dataset, or one whose inputs cannot have the run's input shape.
    """
    data_dir = str(data_dir) if data_dir else None
    if dataset is None or dataset == cfg.data.dataset:
        return dataclasses.replace(cfg.data, data_dir=data_dir or cfg.data.data_dir)
    if dataset not in DATASETS:
        raise ConfigError(
            f"--dataset '{dataset}' is unknown; choices: {', '.join(DATASETS.names())}"
        )
    spec: DatasetSpec = DATASETS.get(dataset)
    pre = state.get("preprocess")
    # the run's decoding travels with it: image size, channels, inversion (as recorded in the
    # checkpoint, whatever its own dataset implied) and the sentence encoder of text runs
    decoding = {k: getattr(cfg.data, k) for k in _DECODING if hasattr(cfg.data, k)}
    decoding |= {k: pre[k] for k in ("image_size", "channels", "invert")} if pre else {}
    data = DataConfig(dataset=dataset, data_dir=data_dir, **decoding)
    theirs = spec.preprocess(data)
    trained = f"{state['path']} was trained on '{cfg.data.dataset}' inputs of shape "
    trained += _shape(state["input_shape"])
    if pre is not None and theirs is None:
        images = [n for n in DATASETS.names() if _decodes_images(DATASETS.get(n))]
        raise ConfigError(
            f"--dataset {dataset} holds no images, but {trained}; evaluate it on an image "
            f"dataset: {', '.join(images)}"
        )
    if pre is None and theirs is not None:
        raise ConfigError(
            f"--dataset {dataset} holds images, but {trained}; evaluate it on data like its own"
        )
    if theirs is not None:
        shape = (theirs.channels, theirs.image_size, theirs.image_size)
        if tuple(shape) != tuple(state["input_shape"]):
            raise ConfigError(
                f"--dataset {dataset} decodes images as {_shape(shape)}, but {trained}; "
                f"evaluate it on a dataset decoded like its own"
            )
    return data


def check_fits(split: Any, state: dict[str, Any], data: DataConfig) -> None:
    """Refuse a loaded split whose examples do not have the run's input shape (names both)."""
    if tuple(input_shape(split)) != tuple(state["input_shape"]):
        raise ConfigError(
            f"{split.name} ({data.dataset}) has inputs of shape {_shape(input_shape(split))}, but "
            f"{state['path']} was trained on {_shape(state['input_shape'])}; evaluate it on data "
            "of the shape it was trained on"
        )
