"""Sinusoid regression (Finn, Abbeel & Levine, ICML 2017, §5.1): a distribution of regression tasks.

A task is ``y = A · sin(x − φ)`` with amplitude ``A ~ U[0.1, 5]`` and phase ``φ ~ U[0, π]``; its
points have ``x ~ U[−5, 5]`` (the authors' code: ``amplitude * np.sin(inputs - phase)``). An episode
batch of B tasks has the usual layout, with float targets and no ways::

    support_x (B, K, 1)   support_y (B, K, 1)   float32
    query_x   (B, Q, 1)   query_y   (B, Q, 1)
    ways = 0              (regression: no classes, no labels)

There is no data on disk: a split is the task distribution itself. Training draws fresh tasks from
the trainer's generator; a fixed evaluation set is a pure function of (split, shots, queries, count,
seed) — the split name is mixed into the seed, so the validation and test tasks differ. All
randomness is drawn on the CPU from an explicit ``torch.Generator`` (same tasks on every device);
amplitudes and phases are drawn before the points, so sets of one seed and count share their
functions whatever the number of shots (the K = 5, 10 and 20 curves are measured on the same
sinusoids).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from metalab.errors import DataError
from metalab.tasks.episodes import Episode

SPLITS = ("train", "val", "test")


def sinusoid(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
    """``y = A · sin(x − φ)`` for each task: A, φ (B,), x (B, P, 1) → y (B, P, 1)."""
    return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


def check_task_shape(
    name: str, ways: int, shots: int, queries: int, meta_batch: int = 1, within_group: bool = False
) -> None:
    """Reject classification arguments and impossible sizes with a message naming the flag."""
    if ways != 0:
        raise DataError(
            f"--ways {ways} given for {name}, a regression dataset: its tasks have no classes; "
            f"drop --ways (set train.ways and eval.ways to 0)"
        )
    if within_group:
        raise DataError(
            f"data.within_group is set but {name} has no groups of classes; set it to false"
        )
    for flag, value, low in (
        ("--shots", shots, 1),
        ("--queries", queries, 0),
        ("--meta-batch", meta_batch, 1),
    ):
        if value < low:
            raise DataError(f"{flag} {value} is invalid: it must be at least {low}")


@dataclass(frozen=True)
class SinusoidTasks:
    """The task distribution of one split, as a task source for
    :func:`metalab.tasks.episodes.episode_sampler`.

    Attributes:
        split: train | val | test (only the seeds of fixed sets depend on it).
        amplitude, phase, x_range: the uniform ranges of A, φ and x (paper defaults).
        device: where episodes are built.
    """

    split: str = "train"
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    device: torch.device = torch.device("cpu")

    regression: ClassVar[bool] = True  # targets are floats; episodes have ways = 0
    input_shape: ClassVar[tuple[int, ...]] = (1,)  # one scalar input per point
    preprocess: ClassVar[None] = None  # nothing to decode

    @property
    def name(self) -> str:
        return f"sinusoid-{self.split}"

    def to(self, device: torch.device | str) -> SinusoidTasks:
        return replace(self, device=torch.device(device))

    def draw(
        self, generator: torch.Generator, tasks: int, points: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """On the CPU: amplitudes (B,), phases (B,) and inputs (B, P, 1) of B tasks with P points
        each."""
        uniform = lambda lo_hi, *shape: (  # noqa: E731
            lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(*shape, generator=generator)
        )
        amplitude = uniform(self.amplitude, tasks)
        phase = uniform(self.phase, tasks)
        x = uniform(self.x_range, tasks, points, 1)
        return amplitude, phase, x

    def episode(self, amplitude: Tensor, phase: Tensor, x: Tensor, shots: int) -> Episode:
        """The episode batch of given tasks: the first ``shots`` points of each form its support
        set."""
        x = x.to(self.device)
        y = sinusoid(amplitude.to(self.device), phase.to(self.device), x)
        return Episode(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], ways=0)

    def episode_sampler(
        self, ways: int, shots: int, queries: int, meta_batch: int = 1, within_group: bool = False
    ) -> SinusoidSampler:
        return SinusoidSampler(self, ways, shots, queries, meta_batch, within_group)

    def fixed_episodes(
        self, ways: int, shots: int, queries: int, count: int, seed: int, within_group: bool = False
    ) -> FixedSinusoidTasks:
        return FixedSinusoidTasks(self, ways, shots, queries, count, seed, within_group)


class SinusoidSampler:
    """Draws episode batches of ``meta_batch`` fresh tasks, K support and Q query points each."""

    def __init__(
        self,
        source: SinusoidTasks,
        ways: int,
        shots: int,
        queries: int,
        meta_batch: int = 1,
        within_group: bool = False,
    ) -> None:
        check_task_shape(source.name, ways, shots, queries, meta_batch, within_group)
        self.source, self.shots, self.queries, self.meta_batch = source, shots, queries, meta_batch
        self.ways = 0

    def sample(self, generator: torch.Generator) -> Episode:
        return self.source.episode(
            *self.source.draw(generator, self.meta_batch, self.shots + self.queries), self.shots
        )


def split_seed(split: str, seed: int) -> int:
    """The generator seed of a fixed set: a stable function of the split name and the user's
    seed."""
    return zlib.crc32(f"sinusoid/{split}/{seed}".encode())


class FixedSinusoidTasks:
    """A fixed evaluation set of ``count`` tasks, drawn once on the CPU (independent of batch size
    and device); ``amplitude``, ``phase`` (count,) and ``x`` (count, K+Q, 1) are kept for plotting
    fits."""

    def __init__(
        self,
        source: SinusoidTasks,
        ways: int,
        shots: int,
        queries: int,
        count: int,
        seed: int,
        within_group: bool = False,
    ) -> None:
        check_task_shape(source.name, ways, shots, queries, 1, within_group)
        if queries < 1:
            raise DataError(
                f"--queries {queries} is invalid for evaluation: the MSE needs at least 1 query "
                "point"
            )
        if count < 1:
            raise DataError(f"--episodes {count} is invalid: evaluate at least one task")
        self.source, self.shots, self.queries, self.count, self.seed = (
            source,
            shots,
            queries,
            count,
            seed,
        )
        self.ways = 0
        generator = torch.Generator().manual_seed(split_seed(source.split, seed))
        self.amplitude, self.phase, self.x = source.draw(generator, count, shots + queries)

    def batches(self, batch_size: int) -> Iterator[Episode]:
        for start in range(0, self.count, batch_size):
            sl = slice(start, start + batch_size)
            yield self.source.episode(self.amplitude[sl], self.phase[sl], self.x[sl], self.shots)

    def __len__(self) -> int:
        return self.count
