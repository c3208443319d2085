"""Groups of a training batch: the unit of task chunking and of distributed ranks.

Every training batch type — :class:`~metalab.tasks.episodes.Episode` (tasks),
:class:`~metalab.tasks.pairs.PairBatch` (pairs), :class:`~metalab.tasks.sequences.SequenceBatch`
(label-delayed episodes), :class:`~metalab.tasks.flat.FlatBatch` (images) — is a dataclass whose
tensor fields all hold the batch's units along dim 0; other fields (``ways``) are shared.

A step over G groups takes group g = units g, g+G, g+2G, … (strided, so each group of a pair batch
keeps its share of same- and different-class pairs), computes each group's mean loss and averages
the groups' gradients: with equal group sizes this is the gradient of the mean over the whole batch.
Ranks and chunks are both groups: with W ranks, rank r takes groups r, r+W, r+2W, … So the result
is a function of the global batch (the run seed and the step) and of G, never of W.

    groups = group_count(units(batch), world=2, chunk=4)   # tasks per group ≤ 4, a multiple of 2
    mine = [select_group(batch, g, groups) for g in range(rank, groups, world)]
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import Tensor

from metalab.errors import ConfigError

B = TypeVar("B")


def units(batch: Any) -> int:
    """The number of units (tasks, pairs, sequences, images) along dim 0 of the batch's tensors."""
    sizes = {
        f.name: getattr(batch, f.name).shape[0]
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), Tensor)
    }
    if len(set(sizes.values())) != 1:
        raise TypeError(f"{type(batch).__name__} tensors disagree on their first dim: {sizes}")
    return next(iter(sizes.values()))


def select_group(batch: B, group: int, groups: int) -> B:
    """Units ``group, group + groups, …`` of the batch, as a batch of the same type."""

    def take(value: Any) -> Any:
        if not isinstance(value, Tensor):
            return value
        return value[torch.arange(group, value.shape[0], groups, device=value.device)]

    return dataclasses.replace(
        batch, **{f.name: take(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    )


def group_count(
    total: int,
    world: int = 1,
    chunk: int | None = None,
    unit: str = "tasks",
    flag: str = "--meta-batch (train.meta_batch)",
) -> int:
    """How many equal groups a batch of ``total`` units is split into: one per rank, or more when
    ``chunk`` (``train.task_chunk``: units per group) asks for smaller ones. Raises a one-line
    ConfigError when the units cannot be shared equally (``unit`` and ``flag`` name them)."""
    if total % world:
        raise ConfigError(
            f"a training batch holds {total} {unit}, which {world} processes cannot share "
            f"equally; set {flag} to a multiple of the world size {world}"
        )
    per_rank = total // world
    if chunk is None or chunk >= per_rank:
        return world
    if chunk < 1 or per_rank % chunk:
        raise ConfigError(
            f"train.task_chunk = {chunk} does not divide the {per_rank} {unit} of each process "
            f"({total} over {world} processes); choose a divisor of {per_rank}"
        )
    return total // chunk
