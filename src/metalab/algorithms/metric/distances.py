"""Shared parts of the metric family: similarities, per-class reductions, and a network's output
shape.

A metric method scores every query against every support example (B, M, S) and then reduces the
scores of each class's support examples to one score per class (B, M, N). Labels are 0..N-1 per
task,
in any order and with any number of shots per class (every class needs at least one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.errors import ConfigError


def cosine_similarity(query: Tensor, support: Tensor, eps: float = 1e-8) -> Tensor:
    """cos(q_m, s_i) for every pair: (B, M, D), (B, S, D) → (B, M, S)."""
    return F.normalize(query, dim=-1, eps=eps) @ F.normalize(support, dim=-1, eps=eps).transpose(
        1, 2
    )


def class_sums(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Sum of each class's support items of any trailing shape: (B, S, ...), (B, S) → (B, N,
    ...)."""
    one_hot = F.one_hot(labels, ways).to(support.dtype)  # (B, S, N)
    return (one_hot.transpose(1, 2) @ support.flatten(2)).unflatten(2, support.shape[2:])


def per_class(scores: Tensor, labels: Tensor, ways: int, reduce: str) -> Tensor:
    """Reduce the scores of each class's support examples: (B, M, S), (B, S) → (B, M, N).

    ``reduce``: ``max`` or ``logsumexp`` (log Σ exp, so that ``logsumexp − logsumexp over all S`` is
    the
    log of the class's total softmax weight).
    """
    member = F.one_hot(labels, ways).bool()[:, None]  # (B, 1, S, N)
    masked = scores[..., None].masked_fill(~member, float("-inf"))  # (B, M, S, N)
    if reduce == "max":
        return masked.amax(2)
    if reduce == "logsumexp":
        return masked.logsumexp(2)
    raise ValueError(f"per_class reduce '{reduce}' is unknown; choices: max, logsumexp")


def output_shape(net: nn.Module, input_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Shape of ``net``'s output for one input, e.g. (64,) or (64, 7, 7): a probe in eval mode, no
    grad.

    An input too small for the net's pooling raises a ConfigError naming ``what`` and the input
    shape.
    """
    was_training = net.training
    net.eval()  # BatchNorm uses (and does not update) its running statistics
    try:
        with torch.no_grad():
            return tuple(net(torch.zeros(1, *input_shape)).shape[1:])
    except RuntimeError:
        raise ConfigError(
            f"images of shape {tuple(input_shape)} are too small for {what}; "
            f"use a larger data.image_size"
        ) from None
    finally:
        net.train(was_training)
