"""A dataset for few-shot learning: images grouped by class, held as one uint8 tensor.

Every image dataset (Omniglot, a user's class folders) becomes a :class:`ClassIndexedDataset`; the
episode samplers gather from it with index arithmetic only, so no per-image Python work happens
while training. Regression tasks (sinusoid) and text have their own sources; this type is for
images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from metalab.errors import DataError


@dataclass(frozen=True)
class Preprocess:
    """How a source image becomes a tensor; stored with every run so `predict` decodes user images
    alike.

    Attributes:
        image_size: side of the square output, resized with an antialiasing (Lanczos) filter.
        channels: 1 (grayscale) or 3 (RGB).
        invert: map dark-on-light to light-on-dark (Omniglot: strokes = 1, background = 0).
    """

    image_size: int = 28
    channels: int = 1
    invert: bool = False


@dataclass
class ClassIndexedDataset:
    """Images of many classes in one tensor, class c occupying
    ``images[offsets[c] : offsets[c] + counts[c]]``.

    Shapes:
        images: (total, channels, H, W) uint8.
        offsets, counts: (classes,) int64.
        groups: (classes,) int64 group id per class (Omniglot: the alphabet), for within-group
            episodes.
    """

    name: str
    images: Tensor
    offsets: Tensor
    counts: Tensor
    class_names: list[str]
    groups: Tensor
    group_names: list[str]
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if self.offsets.shape != (n,) or self.counts.shape != (n,) or self.groups.shape != (n,):
            raise ValueError(f"{self.name}: offsets/counts/groups must have shape ({n},)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ClassIndexedDataset:
        """The same dataset with its tensors on `device` (images are moved once, then gathered
        there); a subclass stays itself."""
        return type(self)(
            self.name,
            self.images.to(device),
            self.offsets.to(device),
            self.counts.to(device),
            self.class_names,
            self.groups.to(device),
            self.group_names,
            self.preprocess,
        )

    def require_images_per_class(self, needed: int, what: str) -> None:
        """Raise a DataError naming the first class with fewer than `needed` images."""
        short = (self.counts < needed).nonzero().flatten()
        if len(short):
            c = int(short[0])
            raise DataError(
                f"class '{self.class_names[c]}' of {self.name} has {int(self.counts[c])} images "
                f"but {what} "
                f"needs {needed} per class ({len(short)} classes are short); lower "
                "--shots/--queries or add images"
            )

    @staticmethod
    def from_class_tensors(
        name: str,
        per_class: list[Tensor],
        class_names: list[str],
        group_of_class: list[str] | None = None,
        preprocess: Preprocess | None = None,
    ) -> ClassIndexedDataset:
        """Build from one (count, C, H, W) uint8 tensor per class; `group_of_class` names each
        class's group."""
        if not per_class:
            raise DataError(f"{name}: no classes found")
        counts = torch.tensor([len(t) for t in per_class], dtype=torch.int64)
        offsets = torch.cumsum(counts, 0) - counts
        group_of_class = group_of_class or [""] * len(per_class)
        group_names = sorted(set(group_of_class))
        index = {g: i for i, g in enumerate(group_names)}
        groups = torch.tensor([index[g] for g in group_of_class], dtype=torch.int64)
        return ClassIndexedDataset(
            name,
            torch.cat(per_class),
            offsets,
            counts,
            list(class_names),
            groups,
            group_names,
            preprocess or Preprocess(),
        )
