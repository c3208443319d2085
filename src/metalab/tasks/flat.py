"""Flat mini-batches: ordinary supervised batches (image, class id) over all classes of a training
split.

Transfer baselines pre-train a classifier over every training class (Chen et al. 2019, §3.1) rather
than on episodes; their ``train_sampler`` returns a :class:`FlatBatchSampler`, so pre-training runs
through the same engine (checkpoints, logs, resume) as every meta-learner::

    sampler = FlatBatchSampler(train_split, batch_size=16)
    batch = sampler.sample(generator)      # FlatBatch: x (16, C, H, W) float in [0, 1],
                                           # y (16,) class ids

Each batch draws its images uniformly at random (with replacement across batches) with the explicit
CPU generator, rather than walking through shuffled epochs: the sampler then holds no state besides
the generator, which the trainer checkpoints, so a resumed run draws the same batches as one never
stopped. Images are gathered on the dataset's own device in one indexing operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError, DataError
from metalab.tasks.episodes import to_float


@dataclass
class FlatBatch:
    """A supervised mini-batch: ``x`` (batch, C, H, W) float in [0, 1], ``y`` (batch,) class ids
    0..classes-1."""

    image_fields: ClassVar[tuple[str, ...]] = ("x",)  # what augmentation changes
    x: Tensor
    y: Tensor

    def to(self, device: torch.device | str) -> FlatBatch:
        return FlatBatch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


class FlatBatchSampler:
    """Draws mini-batches of ``batch_size`` images of any class, labelled with their class id in the
    split.

    Args:
        dataset: the training split (its tensors may live on any device).
        batch_size: images per batch.
    """

    def __init__(self, dataset: ClassIndexedDataset, batch_size: int) -> None:
        if batch_size < 1:
            raise ConfigError(
                f"algorithm.batch_size {batch_size} is invalid: it must be at least 1"
            )
        counts = dataset.counts.cpu()
        if int(counts.sum()) == 0:
            raise DataError(f"{dataset.name} holds no images to pre-train on")
        self.dataset, self.batch_size = dataset, batch_size
        # CPU tables over every image of the split: its class id and its row in dataset.images.
        # (total,)
        self._labels = torch.repeat_interleave(torch.arange(dataset.num_classes), counts)
        # position of each class's first image in the table
        first = torch.cumsum(counts, 0) - counts
        # index of the image within its class
        rank = torch.arange(len(self._labels)) - first[self._labels]
        self._rows = dataset.offsets.cpu()[self._labels] + rank  # (total,)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def sample(self, generator: torch.Generator) -> FlatBatch:
        pick = torch.randint(len(self._rows), (self.batch_size,), generator=generator)  # (batch,)
        device = self.dataset.device
        x = to_float(self.dataset.images[self._rows[pick].to(device)])  # (batch, C, H, W)
        return FlatBatch(x, self._labels[pick].to(device))
