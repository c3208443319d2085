"""Episodes: batches of N-way K-shot tasks gathered from a class-indexed dataset.

An :class:`Episode` holds B tasks at once (B = 1 is fine)::

    support_x (B, N*K, C, H, W)   support_y (B, N*K)   labels 0..N-1, relabelled per task
    query_x   (B, N*Q, C, H, W)   query_y   (B, N*Q)

Support and query are class-major: example j of class n sits at n*K + j (n*Q + j). Sampling draws
only indices, with an explicit CPU ``torch.Generator`` (so the same seed gives the same tasks on
every device); the images are then gathered on the dataset's own device in one indexing operation.

A :class:`FixedEpisodes` set is a pure function of (dataset split, ways, shots, queries, count,
seed): every algorithm evaluated with the same arguments sees exactly the same episodes, so methods
can be compared pairwise.

Other task sources: a regression source (sinusoid, :mod:`metalab.tasks.sinusoid`) has float targets
``support_y (B, K, 1)``, ``query_y (B, Q, 1)`` and ``ways = 0``; it supplies its own sampler and
fixed sets. Code that serves any source (the engine, ``MetaLearner.train_sampler``) goes through
:func:`episode_sampler`, :func:`fixed_episodes`, :func:`input_shape` and :func:`is_regression`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.errors import DataError


@dataclass
class Episode:
    """A batch of B few-shot tasks (see the module docstring for shapes)."""

    image_fields: ClassVar[tuple[str, ...]] = ("support_x", "query_x")  # what augmentation changes
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int
    classes: Tensor | None = None  # (B, N) dataset class ids behind labels 0..N-1, when known

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    @classmethod
    def class_major(cls, x: Tensor, shots: int, classes: Tensor | None = None) -> Episode:
        """The episode of images ``x`` (B, N, K+Q, ...) whose first K per class are the support
        set: class n gets label n, support and query sets in class-major order."""
        b, n, m = x.shape[:3]
        y = torch.arange(n, device=x.device).view(1, n, 1)
        return cls(
            x[:, :, :shots].flatten(1, 2),
            y.expand(b, n, shots).reshape(b, n * shots),
            x[:, :, shots:].flatten(1, 2),
            y.expand(b, n, m - shots).reshape(b, n * (m - shots)),
            n,
            classes,
        )

    def to(self, device: torch.device | str) -> Episode:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Episode(
            move(self.support_x),
            move(self.support_y),
            move(self.query_x),
            move(self.query_y),
            self.ways,
            move(self.classes),
        )

    def task(self, i: int) -> Episode:
        """Task i alone, as an episode batch of one."""
        sl = slice(i, i + 1)
        return replace(
            self,
            support_x=self.support_x[sl],
            support_y=self.support_y[sl],
            query_x=self.query_x[sl],
            query_y=self.query_y[sl],
            classes=None if self.classes is None else self.classes[sl],
        )


def to_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] → float32 in [0, 1]; float inputs (text embeddings) as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def check_episode_shape(ways: int, shots: int, queries: int, meta_batch: int = 1) -> None:
    """One line naming the flag when a task shape is impossible (N, K, B ≥ 1; Q ≥ 0)."""
    for flag, value, low in (
        ("--ways", ways, 1),
        ("--shots", shots, 1),
        ("--queries", queries, 0),
        ("--meta-batch", meta_batch, 1),
    ):
        if value < low:
            raise DataError(f"{flag} {value} is invalid: it must be at least {low}")


class EpisodeSampler:
    """Draws batches of N-way K-shot Q-query tasks: no class twice in a task, no image twice in a
    task.

    Args:
        dataset: the split to sample from (its tensors may live on any device).
        ways, shots, queries: N, K, Q.
        meta_batch: tasks per episode batch (B).
        within_group: draw all N classes of a task from one group (an Omniglot alphabet).
    """

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        ways: int,
        shots: int,
        queries: int,
        meta_batch: int = 1,
        within_group: bool = False,
    ) -> None:
        check_episode_shape(ways, shots, queries, meta_batch)
        if ways > dataset.num_classes:
            raise DataError(
                f"--ways {ways} but {dataset.name} has only {dataset.num_classes} classes; "
                f"use at most {dataset.num_classes} ways"
            )
        dataset.require_images_per_class(shots + queries, f"--shots {shots} + --queries {queries}")
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.meta_batch, self.within_group = meta_batch, within_group
        # CPU copies of the small index tables: sampling never waits on the accelerator.
        self._offsets, self._counts = dataset.offsets.cpu(), dataset.counts.cpu()
        self._groups = dataset.groups.cpu()
        if within_group:
            sizes = torch.bincount(self._groups, minlength=len(dataset.group_names))
            self._eligible = (sizes >= ways).nonzero().flatten()
            if len(self._eligible) == 0:
                raise DataError(
                    f"--ways {ways} with within-group episodes, but no group of {dataset.name} "
                    f"has {ways} classes (largest: {int(sizes.max())}); lower --ways"
                )

    def sample_indices(
        self, generator: torch.Generator, tasks: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Class ids (B, N) and image indices (B, N, K+Q) into ``dataset.images``, on the CPU."""
        b = self.meta_batch if tasks is None else tasks
        n, m = self.ways, self.shots + self.queries
        keys = torch.rand(b, self.dataset.num_classes, generator=generator)
        if self.within_group:
            pick = self._eligible[torch.randint(len(self._eligible), (b,), generator=generator)]
            keys = keys.masked_fill(self._groups[None, :] != pick[:, None], 2.0)
        # (B, N): a uniformly random ordered choice of N classes
        classes = keys.argsort(dim=1)[:, :n]
        counts = self._counts[classes]  # (B, N)
        most = int(counts.max())
        keys = torch.rand(b, n, most, generator=generator)
        keys = keys.masked_fill(torch.arange(most) >= counts[..., None], 2.0)
        within = keys.argsort(dim=2)[..., :m]  # (B, N, K+Q) distinct images of each class
        return classes, self._offsets[classes][..., None] + within

    def gather(self, classes: Tensor, index: Tensor) -> Episode:
        """Build the Episode for given indices, gathering the images on the dataset's device."""
        device = self.dataset.device
        x = to_float(self.dataset.images[index.to(device)])  # (B, N, K+Q, C, H, W)
        return Episode.class_major(x, self.shots, classes.to(device))

    def sample(self, generator: torch.Generator) -> Episode:
        return self.gather(*self.sample_indices(generator))


class FixedEpisodes:
    """A fixed evaluation set: ``count`` episodes drawn once from ``seed``, iterated in batches.

    The indices are drawn on the CPU in one call, so the set does not depend on the batch size used
    to evaluate it, nor on the device.
    """

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        ways: int,
        shots: int,
        queries: int,
        count: int,
        seed: int,
        within_group: bool = False,
    ) -> None:
        if count < 1:
            raise DataError(f"--episodes {count} is invalid: evaluate at least one episode")
        self.sampler = EpisodeSampler(dataset, ways, shots, queries, 1, within_group)
        self.count, self.seed = count, seed
        generator = torch.Generator().manual_seed(seed)
        self.classes, self.index = self.sampler.sample_indices(generator, tasks=count)

    def batches(self, batch_size: int) -> Iterator[Episode]:
        for start in range(0, self.count, batch_size):
            sl = slice(start, start + batch_size)
            yield self.sampler.gather(self.classes[sl], self.index[sl])

    def __len__(self) -> int:
        return self.count


# Any task source: a ClassIndexedDataset here; another source (sinusoid regression) by its own
# methods ``episode_sampler(ways, shots, queries, meta_batch, within_group)`` and
# ``fixed_episodes(ways, shots, queries, count, seed, within_group)``, which check their arguments
# (a regression source rejects ways ≠ 0).


def episode_sampler(
    source: Any,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int = 1,
    within_group: bool = False,
) -> Any:
    """Training episode batches from any task source (an object with
    ``sample(generator) -> Episode``)."""
    if isinstance(source, ClassIndexedDataset):
        return EpisodeSampler(source, ways, shots, queries, meta_batch, within_group)
    return source.episode_sampler(ways, shots, queries, meta_batch, within_group)


def fixed_episodes(
    source: Any,
    ways: int,
    shots: int,
    queries: int,
    count: int,
    seed: int,
    within_group: bool = False,
) -> Any:
    """A fixed evaluation set from any task source (``batches(batch_size)``, ``len``): a pure
    function of (split, ways, shots, queries, count, seed), the same for every algorithm and
    device."""
    if isinstance(source, ClassIndexedDataset):
        return FixedEpisodes(source, ways, shots, queries, count, seed, within_group)
    return source.fixed_episodes(ways, shots, queries, count, seed, within_group)


def input_shape(source: Any) -> tuple[int, ...]:
    """The shape of one input example: (C, H, W) for images, (1,) for sinusoid regression."""
    return (
        source.image_shape if isinstance(source, ClassIndexedDataset) else tuple(source.input_shape)
    )


def is_regression(source: Any) -> bool:
    """Whether the source's tasks are regression tasks (float targets, episodes with
    ``ways = 0``)."""
    return bool(getattr(source, "regression", False))
