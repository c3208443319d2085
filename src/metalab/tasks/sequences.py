"""Label-delayed sequences: the episodes of Santoro et al. (2016) for memory-augmented networks.

A :class:`SequenceBatch` holds B episodes of T = N·I steps (N classes × I instances of each)::

    x         (B, T, C, H, W)   the images, in a random order per episode
    y         (B, T)            their labels 0..N-1, the class → label map shuffled per episode
    instance  (B, T)            1 at a class's first appearance, 2 at its second, ... (1-based)
    delayed_y (B, T)            the label shown with x_t: y_{t-1}, and NULL_LABEL (-1) at step 0
    strings   (B, N, L)         optional: label n written as an L-character string over an alphabet
                                of A characters, distinct within an episode and drawn per episode
                                (Santoro et al.'s string labels: L = 5, A = 5, so 3125 labels)

The learner sees x_t together with y_{t−1} and must predict y_t before it is revealed at step t+1
(Santoro et al. 2016, §3.1 and Fig. 1; Omniglot protocol: 5 classes × 10 instances = 50 steps).

Sampling is the episode layer's: :meth:`EpisodeSampler.sample_indices` draws the N classes and I
distinct images of each (``shots = instances``, no queries) with an explicit CPU generator; the step
order and the label permutation are drawn from the same generator, and the images are gathered on
the dataset's device. A :class:`FixedSequences` set is a pure function of (split, ways, instances,
count, seed), like :class:`~metalab.tasks.episodes.FixedEpisodes`.

Standard N-way K-shot episodes become sequences too (MANN's and SNAIL's ``predict``): the
class-major support set is interleaved by :func:`support_order` — random per task in training
(:class:`ShuffledSupportSampler`), one fixed permutation at evaluation, so results do not depend on
how the fixed episodes are batched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.errors import DataError
from metalab.tasks.episodes import Episode, EpisodeSampler, to_float

NULL_LABEL = -1  # the "label" shown with the first step: no previous example


@dataclass
class SequenceBatch:
    """B label-delayed episodes (see the module docstring for shapes)."""

    image_fields: ClassVar[tuple[str, ...]] = ("x",)  # what augmentation changes
    x: Tensor
    y: Tensor
    instance: Tensor
    ways: int
    classes: Tensor | None = None  # (B, N) dataset class ids behind labels 0..N-1
    strings: Tensor | None = None  # (B, N, L) the string of each label (string labels only)

    @property
    def delayed_y(self) -> Tensor:
        """(B, T): y shifted one step right, NULL_LABEL at step 0 — the label input of each step."""
        null = torch.full_like(self.y[:, :1], NULL_LABEL)
        return torch.cat([null, self.y[:, :-1]], dim=1)

    def to(self, device: torch.device | str) -> SequenceBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SequenceBatch(
            self.x.to(device),
            self.y.to(device),
            self.instance.to(device),
            self.ways,
            move(self.classes),
            move(self.strings),
        )


@dataclass
class SequenceIndices:
    """What defines a batch of sequences, all on the CPU: class ids (B, N) with label 0..N-1 in
    their order, image indices (B, N, I), and the step order (B, T): step t shows flat item
    order[t] = n·I + i."""

    classes: Tensor
    index: Tensor
    order: Tensor
    strings: Tensor | None = None  # (B, N, L) string labels, if any

    def __getitem__(self, sl: slice) -> SequenceIndices:
        return SequenceIndices(
            self.classes[sl],
            self.index[sl],
            self.order[sl],
            None if self.strings is None else self.strings[sl],
        )


def string_label_space(n: int, length: int, alphabet: int) -> int:
    """How many strings of ``length`` characters over ``alphabet`` symbols there are; raises
    DataError if they cannot name n classes distinctly or do not fit in 64-bit codes."""
    space = alphabet**length
    if space < n:
        raise DataError(
            f"{alphabet}^{length} = {space} distinct string labels cannot name {n} classes; "
            f"raise algorithm.label_length or algorithm.label_alphabet"
        )
    if space > 2**62:
        raise DataError(
            f"{alphabet}^{length} string labels do not fit in 64-bit codes; lower "
            "algorithm.label_length"
        )
    return space


def random_strings(
    n: int, length: int, alphabet: int, generator: torch.Generator, tasks: int = 1
) -> Tensor:
    """``tasks`` sets of n distinct strings of ``length`` characters in 0..alphabet-1:
    (tasks, n, length)."""
    space = string_label_space(n, length, alphabet)
    if space <= 4096:  # a random permutation of every code: always distinct
        codes = torch.rand(tasks, space, generator=generator).argsort(dim=1)[:, :n]  # (tasks, n)
    else:  # large spaces: draw codes, redraw the rare tasks with a repeated code
        codes = torch.randint(space, (tasks, n), generator=generator)
        while (repeated := (codes.sort(dim=1).values.diff(dim=1) == 0).any(dim=1)).any():
            codes[repeated] = torch.randint(space, (int(repeated.sum()), n), generator=generator)
    # base-A digits
    return codes[..., None] // alphabet ** torch.arange(length - 1, -1, -1) % alphabet


class SequenceSampler:
    """Draws batches of label-delayed sequences: N classes × I instances in a random order.

    Args:
        dataset: the split to sample from (its tensors may live on any device).
        ways: N classes per episode (Santoro et al.: 5).
        instances: I images per class (Santoro et al.: 10), so T = N·I steps.
        meta_batch: episodes per batch (B).
        within_group: draw all N classes from one group (an Omniglot alphabet).
        label_length, label_alphabet: string labels of that many characters over that many symbols
            (Santoro et al.: 5 and 5), drawn per episode after the step order; 0: integer labels
            only.
    """

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        ways: int,
        instances: int,
        meta_batch: int = 1,
        within_group: bool = False,
        label_length: int = 0,
        label_alphabet: int = 5,
    ) -> None:
        if instances < 1:
            raise DataError(f"algorithm.instances {instances} is invalid: it must be at least 1")
        self.episodes = EpisodeSampler(dataset, ways, instances, 0, meta_batch, within_group)
        self.dataset, self.ways, self.instances, self.meta_batch = (
            dataset,
            ways,
            instances,
            meta_batch,
        )
        self.label_length, self.label_alphabet = label_length, label_alphabet
        if label_length:
            # fail early, before any training
            string_label_space(ways, label_length, label_alphabet)

    def sample_indices(
        self, generator: torch.Generator, tasks: int | None = None
    ) -> SequenceIndices:
        classes, index = self.episodes.sample_indices(generator, tasks)  # (B, N), (B, N, I)
        b, n = classes.shape
        # Labels shuffled per episode: label l names class classes[l] (a random permutation of the
        # draw).
        labels = torch.rand(b, n, generator=generator).argsort(dim=1)  # (B, N)
        classes, index = (
            classes.gather(1, labels),
            index.gather(1, labels[..., None].expand_as(index)),
        )
        order = torch.rand(b, n * self.instances, generator=generator).argsort(dim=1)  # (B, T)
        strings = (
            random_strings(n, self.label_length, self.label_alphabet, generator, b)
            if self.label_length
            else None
        )
        return SequenceIndices(classes, index, order, strings)

    def gather(self, ids: SequenceIndices) -> SequenceBatch:
        """Build the SequenceBatch for given indices, gathering the images on the dataset's
        device."""
        b, n, i = ids.index.shape
        device = self.dataset.device
        flat = ids.index.flatten(1).gather(1, ids.order)  # (B, T) image index of each step
        x = to_float(self.dataset.images[flat.to(device)])  # (B, T, C, H, W)
        y = ids.order // i  # (B, T): item n·I + j belongs to label n
        # instance number: how many times the step's label has appeared up to and including this
        # step
        seen = torch.nn.functional.one_hot(y, n).cumsum(1)  # (B, T, N)
        instance = seen.gather(2, y[..., None]).squeeze(2)  # (B, T)
        strings = None if ids.strings is None else ids.strings.to(device)
        return SequenceBatch(
            x, y.to(device), instance.to(device), n, ids.classes.to(device), strings
        )

    def sample(self, generator: torch.Generator) -> SequenceBatch:
        return self.gather(self.sample_indices(generator))


class FixedSequences:
    """A fixed evaluation set of ``count`` sequences drawn once from ``seed`` (CPU indices, one
    call), so it depends neither on the batch size used to evaluate it nor on the device."""

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        ways: int,
        instances: int,
        count: int,
        seed: int,
        within_group: bool = False,
        label_length: int = 0,
        label_alphabet: int = 5,
    ) -> None:
        if count < 1:
            raise DataError(f"--episodes {count} is invalid: evaluate at least one sequence")
        self.sampler = SequenceSampler(
            dataset, ways, instances, 1, within_group, label_length, label_alphabet
        )
        self.count, self.seed = count, seed
        self.ids = self.sampler.sample_indices(torch.Generator().manual_seed(seed), tasks=count)

    def batches(self, batch_size: int) -> Iterator[SequenceBatch]:
        for start in range(0, self.count, batch_size):
            yield self.sampler.gather(self.ids[start : start + batch_size])

    def __len__(self) -> int:
        return self.count


def support_order(episode: Episode, generator: torch.Generator | None = None) -> Episode:
    """The episode with its support set reordered: a random permutation per task drawn from
    ``generator``, or (None) one fixed permutation of the S positions, the same for every task."""
    b, s = episode.support_y.shape
    if generator is None:
        perm = torch.randperm(s, generator=torch.Generator().manual_seed(0)).expand(b, s)
    else:
        perm = torch.rand(b, s, generator=generator).argsort(dim=1)  # (B, S)
    perm = perm.to(episode.support_y.device)
    x_index = perm.view(b, s, *[1] * (episode.support_x.dim() - 2)).expand_as(episode.support_x)
    return Episode(
        episode.support_x.gather(1, x_index),
        episode.support_y.gather(1, perm),
        episode.query_x,
        episode.query_y,
        episode.ways,
        episode.classes,
    )


class ShuffledSupportSampler:
    """N-way K-shot episodes (an :class:`EpisodeSampler`) whose support sets are in a random order
    per task, drawn from the same generator: training batches for sequence learners such as
    SNAIL."""

    def __init__(self, episodes: EpisodeSampler) -> None:
        self.episodes = episodes

    def sample(self, generator: torch.Generator) -> Episode:
        return support_order(self.episodes.sample(generator), generator)
