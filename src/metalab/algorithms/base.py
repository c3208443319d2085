"""The contract every algorithm of every family implements, and the one the engine knows.

    learner = ALGORITHMS.get("protonet").from_config(cfg, input_shape=(1, 28, 28))
    sampler = learner.train_sampler(train_split, cfg)   # what batches it trains on
    out = learner.meta_loss(sampler.sample(generator))  # StepOutput: differentiable loss + metrics
    logits = learner.predict(episode)                   # adapt on the support set, score the query
    set

Each algorithm says which training batches it needs by returning a sampler (episodes for most; pairs
for Siamese networks; label-delayed sequences for MANN and SNAIL; flat mini-batches for pre-training
baselines), so the engine serves every method without a special case. Evaluation is always on fixed
:class:`~metalab.tasks.episodes.Episode` sets through ``predict``.

``predict`` may be called under ``torch.no_grad()``; a method that needs gradients to adapt (MAML)
enables them itself (``torch.func.grad`` ignores an outer ``no_grad``).

Regression (sinusoid): episodes have ``ways = 0`` and float targets (B, K, 1); a method that handles
them sets ``regression = True`` and its ``predict`` returns query values (B, Q, 1). The engine
refuses
to train a method without it on a regression source (:func:`check_source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.config import Config, algorithm_options
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError
from metalab.tasks.episodes import Episode, episode_sampler, is_regression


@dataclass
class StepOutput:
    """A training step's differentiable loss and its detached metrics (e.g. ``{"accuracy":
    0.93}``)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Sampler(Protocol):
    """Anything that draws a training batch from an explicit generator."""

    def sample(self, generator: torch.Generator) -> Any: ...


class MetaLearner(nn.Module):
    """Base class of all algorithms. Subclasses define ``Config`` (a dataclass of their options)."""

    Config: ClassVar[type]
    regression: ClassVar[bool] = False  # handles regression episodes (ways = 0, float targets)

    @classmethod
    def from_config(cls, cfg: Config, input_shape: tuple[int, ...]) -> MetaLearner:
        return cls(algorithm_options(cfg, cls.Config), input_shape)

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> Sampler:
        """Training batches: by default episode batches of ``cfg.train``'s shape from any task
        source
        (N-way K-shot for images; K support and Q query points for regression)."""
        t = cfg.train
        return episode_sampler(
            split, t.ways, t.shots, t.queries, t.meta_batch, cfg.data.within_group
        )

    def meta_loss(self, batch: Any) -> StepOutput:
        raise NotImplementedError

    def predict(self, episode: Episode) -> Tensor:
        """Adapt to each task's support set; return query logits (B, N*Q, N)."""
        raise NotImplementedError

    def protocol_report(self, split: Any, eval_cfg: Any) -> dict[str, Any]:
        """Results of the method's own evaluation protocol, added to ``metalab eval``'s report
        beside the
        standard episodes (e.g. MANN's accuracy by instance number). Default: none."""
        return {}


def check_source(cfg: Config, source: Any) -> None:
    """Refuse, before anything is built, an algorithm or task shape the source's kind of task rules
    out:
    on a regression source, a method without ``regression = True`` or ways other than 0."""
    if not is_regression(source):
        return
    from metalab.registry import ALGORITHMS

    if not getattr(ALGORITHMS.get(cfg.algorithm_name), "regression", False):
        able = [n for n in ALGORITHMS.names() if getattr(ALGORITHMS.get(n), "regression", False)]
        raise ConfigError(
            f"algorithm '{cfg.algorithm_name}' does not do regression, and dataset "
            f"'{cfg.data.dataset}' is a regression dataset; choices: {', '.join(able)}"
        )
    for key, ways in (("train.ways", cfg.train.ways), ("eval.ways", cfg.eval.ways)):
        if ways != 0:
            raise ConfigError(
                f"--ways {ways} ({key}) given for '{cfg.data.dataset}', a regression dataset: its "
                f"tasks have no classes; drop --ways (set train.ways and eval.ways to 0)"
            )


def classification_step(logits: Tensor, labels: Tensor) -> StepOutput:
    """The training step of a classifier over the query set: mean cross-entropy and accuracy.
    (B, M, N) logits or log-probabilities, (B, M) labels."""
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    return StepOutput(loss, {"accuracy": accuracy(logits, labels).mean().detach()})


def require_equal_ways(cfg: Config, why: str) -> None:
    """Methods with one output unit per way cannot be trained with N ways and tested with
    another N."""
    if cfg.train.ways != cfg.eval.ways:
        raise ConfigError(
            f"train.ways = {cfg.train.ways} but eval.ways = {cfg.eval.ways}: "
            f"{cfg.algorithm_name} {why}, so they must be equal"
        )


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per task: (B, M, N), (B, M) → (B,)."""
    return (logits.argmax(-1) == labels).float().mean(-1)
