"""Same/different image pairs for verification training (Siamese networks, Koch et al. 2015).

A :class:`PairBatch` of P pairs is balanced: the first P/2 pairs show two different images of one
class (``same = 1``), the last P/2 images of two different classes (``same = 0``). Like the episode
sampler, :class:`PairSampler` draws only indices, with an explicit CPU ``torch.Generator``, and
gathers the images on the dataset's device as floats in [0, 1]; an optional
``transform(images, generator)`` (e.g. random affine distortions) is applied to each side of the
batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.errors import DataError
from metalab.tasks.episodes import to_float

Transform = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class PairBatch:
    """P image pairs: x1, x2 (P, C, H, W) floats in [0, 1]; same (P,) 1.0 for one class, 0.0 for
    two."""

    image_fields: ClassVar[tuple[str, ...]] = ("x1", "x2")  # what augmentation changes
    x1: Tensor
    x2: Tensor
    same: Tensor


def _below(high: Tensor, generator: torch.Generator) -> Tensor:
    """One uniform integer in [0, high_i) per entry of ``high`` (int64, all ≥ 1)."""
    u = torch.rand(high.shape, generator=generator, dtype=torch.float64)
    return (u * high).long().clamp_max(high - 1)


class PairSampler:
    """Draws balanced batches of same/different pairs: no image is paired with itself.

    Args:
        dataset: the split to sample from (its tensors may live on any device).
        batch_size: P, pairs per batch (even: half same, half different).
        within_group: draw both classes of a different pair from one group (an Omniglot alphabet).
        transform: applied to x1 and x2 after gathering, as ``transform(images, generator)``.
    """

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        batch_size: int,
        within_group: bool = False,
        transform: Transform | None = None,
    ) -> None:
        if batch_size < 2 or batch_size % 2:
            raise DataError(
                f"pair batch size {batch_size} is invalid: it must be even and at least 2 "
                f"(half same-class, half different-class pairs)"
            )
        if dataset.num_classes < 2:
            raise DataError(
                f"{dataset.name} has {dataset.num_classes} class; different-class pairs need at "
                "least 2"
            )
        dataset.require_images_per_class(2, "a same-class pair")
        self.dataset, self.batch_size, self.within_group, self.transform = (
            dataset,
            batch_size,
            within_group,
            transform,
        )
        self._offsets, self._counts = dataset.offsets.cpu(), dataset.counts.cpu()
        # Classes sorted by group: group g's classes are _members[_start[g] : _start[g] + _size[g]].
        groups = (
            dataset.groups.cpu()
            if within_group
            else torch.zeros(dataset.num_classes, dtype=torch.int64)
        )
        self._groups = groups
        self._members = groups.argsort(stable=True)
        self._size = torch.bincount(groups)
        self._start = torch.cumsum(self._size, 0) - self._size
        self._rank = torch.empty_like(self._members)
        self._rank[self._members] = (
            torch.arange(dataset.num_classes) - self._start[groups[self._members]]
        )
        # classes a different pair may start from
        self._first = (self._size[groups] >= 2).nonzero().flatten()
        if len(self._first) == 0:
            raise DataError(
                f"within-group pairs, but no group of {dataset.name} has 2 classes; "
                f"set data.within_group: false"
            )

    def sample_indices(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Image indices i1, i2 (P,) into ``dataset.images`` and the labels same (P,), on the
        CPU."""
        half = self.batch_size // 2
        # Same: a class, then two distinct images of it.
        c = torch.randint(self.dataset.num_classes, (half,), generator=generator)
        count = self._counts[c]
        a = _below(count, generator)
        b = (a + 1 + _below(count - 1, generator)) % count
        same1, same2 = self._offsets[c] + a, self._offsets[c] + b
        # Different: a class, then another class of its group (of the whole set unless
        # within_group).
        c1 = self._first[torch.randint(len(self._first), (half,), generator=generator)]
        g, size = self._groups[c1], self._size[self._groups[c1]]
        c2 = self._members[
            self._start[g] + (self._rank[c1] + 1 + _below(size - 1, generator)) % size
        ]
        diff1 = self._offsets[c1] + _below(self._counts[c1], generator)
        diff2 = self._offsets[c2] + _below(self._counts[c2], generator)
        same = torch.cat([torch.ones(half), torch.zeros(half)])
        return torch.cat([same1, diff1]), torch.cat([same2, diff2]), same

    def sample(self, generator: torch.Generator) -> PairBatch:
        i1, i2, same = self.sample_indices(generator)
        device = self.dataset.device
        x1 = to_float(self.dataset.images[i1.to(device)])  # (P, C, H, W)
        x2 = to_float(self.dataset.images[i2.to(device)])
        if self.transform is not None:
            x1, x2 = self.transform(x1, generator), self.transform(x2, generator)
        return PairBatch(x1, x2, same.to(device))
