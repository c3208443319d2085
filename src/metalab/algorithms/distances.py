"""Similarities, distances and per-class reductions shared across families (metric methods, the
transfer baselines' nearest centroid): pure functions of tensors, no learner.

A metric method scores every query against every support example (B, M, S) and then reduces the
scores of each class's support examples to one score per class (B, M, N); or it reduces the support
first, to one prototype per class (B, N, D). Labels are 0..N-1 per task, in any order and with any
number of shots per class (every class needs at least one).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def prototypes(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Snell et al. 2017, eq. (1): class means of the support embeddings, c_k = 1/|S_k| Σ f(x_i).
    (B, S, D), (B, S) → (B, N, D); any shots per class."""
    one_hot = F.one_hot(labels, ways).to(support.dtype)  # (B, S, N)
    return one_hot.transpose(1, 2) @ support / one_hot.sum(1)[..., None]


def squared_euclidean(query: Tensor, protos: Tensor) -> Tensor:
    """(B, M, D), (B, N, D) → (B, M, N) squared distances."""
    return (query[:, :, None, :] - protos[:, None, :, :]).pow(2).sum(-1)


def cosine_similarity(query: Tensor, support: Tensor, eps: float = 1e-8) -> Tensor:
    """cos(q_m, s_i) for every pair: (B, M, D), (B, S, D) → (B, M, S)."""
    return F.normalize(query, dim=-1, eps=eps) @ F.normalize(support, dim=-1, eps=eps).transpose(
        1, 2
    )


def class_sums(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Sum of each class's support items of any trailing shape: (B, S, ...), (B, S) →
    (B, N, ...)."""
    one_hot = F.one_hot(labels, ways).to(support.dtype)  # (B, S, N)
    return (one_hot.transpose(1, 2) @ support.flatten(2)).unflatten(2, support.shape[2:])


def per_class(scores: Tensor, labels: Tensor, ways: int, reduce: str) -> Tensor:
    """Reduce the scores of each class's support examples: (B, M, S), (B, S) → (B, M, N).

    ``reduce``: ``max`` or ``logsumexp`` (log Σ exp, so that ``logsumexp − logsumexp over all S`` is
    the log of the class's total softmax weight).
    """
    member = F.one_hot(labels, ways).bool()[:, None]  # (B, 1, S, N)
    masked = scores[..., None].masked_fill(~member, float("-inf"))  # (B, M, S, N)
    if reduce == "max":
        return masked.amax(2)
    if reduce == "logsumexp":
        return masked.logsumexp(2)
    raise ValueError(f"per_class reduce '{reduce}' is unknown; choices: max, logsumexp")
