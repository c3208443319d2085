"""The field's evaluation protocol: fixed test episodes, mean accuracy and its 95% confidence interval.

``ci95 = 1.96 · s / √n`` with s the sample standard deviation of per-episode accuracies over the n
episodes (Snell et al. 2017; Finn et al. 2017; Chen et al. 2019 all report this interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metalab.algorithms.base import MetaLearner, accuracy
from metalab.episodes import FixedEpisodes


@dataclass
class EvalResult:
    accuracy: float  # mean per-episode accuracy, percent
    ci95: float  # half-width of the 95% confidence interval, percentage points
    per_episode: Tensor  # (episodes,) accuracies in [0, 1], in the fixed set's order


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96·s/√n of a 1-D tensor (s with Bessel's correction; 0 for a single value)."""
    v = values.double()
    n = v.numel()
    sd = float(v.std(unbiased=True)) if n > 1 else 0.0
    return float(v.mean()), 1.96 * sd / math.sqrt(n)


@torch.no_grad()
def evaluate(learner: MetaLearner, episodes: FixedEpisodes, batch_size: int = 25) -> EvalResult:
    """Accuracy of `learner.predict` over a fixed episode set (the learner is put in eval mode)."""
    was_training = learner.training
    learner.eval()
    try:
        scores = [accuracy(learner.predict(ep), ep.query_y).cpu() for ep in episodes.batches(batch_size)]
    finally:
        learner.train(was_training)
    per_episode = torch.cat(scores)
    mean, ci = mean_ci95(per_episode)
    return EvalResult(100.0 * mean, 100.0 * ci, per_episode)
