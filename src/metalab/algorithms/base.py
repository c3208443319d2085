"""The contract every algorithm of every family implements, and the one the engine knows.

    learner = ALGORITHMS.get("protonet").from_config(cfg, input_shape=(1, 28, 28))
    sampler = learner.train_sampler(train_split, cfg)   # what batches it trains on
    out = learner.meta_loss(sampler.sample(generator))  # StepOutput: differentiable loss + metrics
    logits = learner.predict(episode)                   # adapt on the support set, score the query set

Each algorithm says which training batches it needs by returning a sampler (episodes for most; pairs
for Siamese networks; label-delayed sequences for MANN and SNAIL; flat mini-batches for pre-training
baselines), so the engine serves every method without a special case. Evaluation is always on fixed
:class:`~metalab.episodes.Episode` sets through ``predict``.

``predict`` may be called under ``torch.no_grad()``; a method that needs gradients to adapt (MAML)
enables them itself (``torch.func.grad`` ignores an outer ``no_grad``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from metalab.config import Config, algorithm_options
from metalab.data.base import ClassIndexedDataset
from metalab.episodes import Episode, EpisodeSampler


@dataclass
class StepOutput:
    """A training step's differentiable loss and its detached metrics (e.g. ``{"accuracy": 0.93}``)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Sampler(Protocol):
    """Anything that draws a training batch from an explicit generator."""

    def sample(self, generator: torch.Generator) -> Any: ...


class MetaLearner(nn.Module):
    """Base class of all algorithms. Subclasses define ``Config`` (a dataclass of their options)."""

    Config: ClassVar[type]

    @classmethod
    def from_config(cls, cfg: Config, input_shape: tuple[int, ...]) -> "MetaLearner":
        return cls(algorithm_options(cfg, cls.Config), input_shape)

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> Sampler:
        """Training batches: by default N-way K-shot episode batches of ``cfg.train``'s shape."""
        t = cfg.train
        return EpisodeSampler(split, t.ways, t.shots, t.queries, t.meta_batch, cfg.data.within_group)

    def meta_loss(self, batch: Any) -> StepOutput:
        raise NotImplementedError

    def predict(self, episode: Episode) -> Tensor:
        """Adapt to each task's support set; return query logits (B, N*Q, N)."""
        raise NotImplementedError


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per task: (B, M, N), (B, M) → (B,)."""
    return (logits.argmax(-1) == labels).float().mean(-1)
