"""The field's evaluation protocol: fixed test episodes, a per-episode score, its mean and 95%
interval.

``ci95 = 1.96 · s / √n`` with s the sample standard deviation of per-episode scores over the n
episodes (Snell et al. 2017; Finn et al. 2017; Chen et al. 2019 all report this interval).

The score follows from the episodes: classification (``ways > 0``) is scored by accuracy (percent,
higher is better), regression (``ways = 0``, sinusoid) by the mean squared error over each task's
query points (lower is better; Finn et al. 2017, §5.1). One code path serves both: the trainer keeps
the best checkpoint by :meth:`EvalResult.better_than`, whatever the metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metalab.algorithms.base import MetaLearner, accuracy, eval_mode
from metalab.tasks.episodes import Episode


def mse(values: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error per task: (B, M, D), (B, M, D) → (B,)."""
    return (values - targets).pow(2).flatten(1).mean(-1)


@dataclass(frozen=True)
class Metric:
    name: str  # the key in reports and logs ("accuracy" → val_accuracy)
    higher_is_better: bool
    scale: float  # reported value = scale · mean per-episode score (accuracy in percent)
    per_episode: Callable[[Tensor, Tensor], Tensor]  # (predictions, query targets) → (B,)


ACCURACY = Metric("accuracy", True, 100.0, accuracy)
MSE = Metric("mse", False, 1.0, mse)


def metric_of(episode: Episode) -> Metric:
    """Accuracy for classification episodes, MSE for regression episodes (``ways = 0``)."""
    return MSE if episode.ways == 0 else ACCURACY


@dataclass
class EvalResult:
    value: float  # mean per-episode score, in the metric's unit (accuracy: percent)
    ci95: float  # half-width of the 95% confidence interval, same unit
    # (episodes,) raw scores (accuracies in [0, 1], MSEs), in the fixed set's order
    per_episode: Tensor
    metric: str = "accuracy"
    higher_is_better: bool = True

    @property
    def accuracy(self) -> float:
        """The mean accuracy in percent (classification results only)."""
        if self.metric != "accuracy":
            raise AttributeError(
                f"this result is scored by {self.metric}, not accuracy; use .value"
            )
        return self.value

    def better_than(self, other: float | None) -> bool:
        """Whether this result beats a previous best value (None: nothing to beat)."""
        if other is None:
            return True
        return self.value > other if self.higher_is_better else self.value < other


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96·s/√n of a 1-D tensor (s with Bessel's correction; 0 for a single value)."""
    v = values.double()
    n = v.numel()
    sd = float(v.std(unbiased=True)) if n > 1 else 0.0
    return float(v.mean()), 1.96 * sd / math.sqrt(n)


@torch.no_grad()
def evaluate(
    learner: MetaLearner, episodes: Any, batch_size: int = 25, **predict_options: Any
) -> EvalResult:
    """Score `learner.predict` over a fixed episode set (the learner is put in eval mode).

    ``predict_options`` are passed to ``predict`` (e.g. ``steps=5`` for an optimization method)."""
    metric, scores = ACCURACY, []
    with eval_mode(learner):
        for ep in episodes.batches(batch_size):
            metric = metric_of(ep)
            scores.append(
                metric.per_episode(learner.predict(ep, **predict_options), ep.query_y).cpu()
            )
    per_episode = torch.cat(scores)
    mean, ci = mean_ci95(per_episode)
    return EvalResult(
        metric.scale * mean, metric.scale * ci, per_episode, metric.name, metric.higher_is_better
    )
