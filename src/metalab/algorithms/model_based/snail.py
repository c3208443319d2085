"""SNAIL: A Simple Neural Attentive Meta-Learner (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018).

A task is one sequence: the N·K support pairs (embedded image, one-hot label), then a query whose
label slot is zeros; the network's output at the query position is its class scores. Two kinds of
causal layers are interleaved (§3, Appendix B):

* DenseBlock(R, D): ``xf, xg = CausalConv(X, dilation R, D filters)`` (kernel 2),
  ``X ← concat(X, tanh(xf) ⊙ σ(xg))``; a TCBlock(T, D) stacks ⌈log₂ T⌉ dense blocks;
* AttentionBlock(K, V): keys, query (size K) and values (size V) are affine maps of X,
  ``X ← concat(X, softmax(mask(q kᵀ) / √K) v)`` with the causal mask (position t sees positions ≤
  t).

Omniglot architecture (Appendix B): an embedding of 4 blocks {3×3 conv, 64 filters, BatchNorm, leaky
ReLU 0.01, 2×2 max-pool} and a fully connected layer to 64 features; then AttentionBlock(64, 32),
TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128), AttentionBlock(512, 256) and a 1×1
convolution to N outputs, with T = N·K + 1. Reported (Table 1): 99.07 / 99.78 / 97.64 / 99.36
(5w1s / 5w5s / 20w1s / 20w5s). The loss is the cross-entropy of the query predictions.

Queries share their support prefix: every layer maps (prefix (B, S, C), tail (B, M, C)) to both, the
prefix causally, each of the M query positions from the prefix and itself only — exactly the
computation of M separate sequences (support + one query), with the prefix computed once.
Deviations: dilations 1, 2, 4, … (the paper's pseudocode starts at 2, which reaches only even
offsets); training episodes have the support in a random order per task, evaluation one fixed
interleaving (:func:`metalab.tasks.sequences.support_order`); train and test ways must be equal (one
output per label).

Vector form (inputs of shape ``(dim,)``, e.g. frozen sentence embeddings; chosen by the input
shape): not in the paper. The sequence is the same, of embedding vectors; the conv embedding is
replaced by an MLP ``dim → hidden → hidden → features`` (:func:`vector_embedding`), each conv block
becoming {Linear, BatchNorm, leaky ReLU 0.01} (no pooling), and everything after the embedding is
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, classification_step, output_shape
from metalab.config import Config, algorithm_options, option
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode, EpisodeSampler
from metalab.tasks.sequences import ShuffledSupportSampler, support_order

Pair = tuple[Tensor, Tensor]  # (prefix (B, S, C), tail (B, M, C))


def embedding(
    in_channels: int, hidden: int, features: int, input_shape: tuple[int, ...]
) -> nn.Sequential:
    """Appendix B: 4 × {conv 3×3, BatchNorm, leaky ReLU 0.01, max-pool 2×2}, then FC. (n, C, H, W) →
    (n, features)."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01),
            nn.MaxPool2d(2),
        ]
    convs = nn.Sequential(*layers, nn.Flatten())
    (flat,) = output_shape(convs, input_shape, "SNAIL's embedding")
    return nn.Sequential(convs, nn.Linear(flat, features))


def vector_embedding(dim: int, hidden: int, features: int) -> nn.Sequential:
    """The vector form's embedding: 2 × {Linear, BatchNorm, leaky ReLU 0.01}, then Linear.
    (n, dim) → (n, features)."""
    layers: list[nn.Module] = []
    for i in range(2):
        layers += [nn.Linear(dim if i == 0 else hidden, hidden), nn.BatchNorm1d(hidden)]
        layers.append(nn.LeakyReLU(0.01))
    return nn.Sequential(*layers, nn.Linear(hidden, features))


class DenseBlock(nn.Module):
    """Causal convolution (kernel 2, ``dilation``) with a gated activation, concatenated to the
    input."""

    def __init__(self, channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Linear(2 * channels, 2 * filters)  # [x_{t−d}; x_t] → [xf; xg]

    def gated(self, past: Tensor, now: Tensor) -> Tensor:
        xf, xg = self.conv(torch.cat([past, now], -1)).chunk(2, -1)
        return torch.tanh(xf) * torch.sigmoid(xg)

    def forward(self, pair: Pair) -> Pair:
        prefix, tail = pair
        b, s, c = prefix.shape
        d = self.dilation
        past = F.pad(prefix, (0, 0, d, 0))[:, :s]  # x_{t−d}, zeros before the start
        # the query sits at position s
        tail_past = prefix[:, s - d] if s >= d else prefix.new_zeros(b, c)
        return (
            torch.cat([prefix, self.gated(past, prefix)], -1),
            torch.cat([tail, self.gated(tail_past[:, None].expand_as(tail), tail)], -1),
        )


class AttentionBlock(nn.Module):
    """Causal single-head soft attention (key size K, value size V), concatenated to the input."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(channels, key_size), nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)

    def forward(self, pair: Pair) -> Pair:
        prefix, tail = pair
        s = prefix.shape[1]
        k, v = self.key(prefix), self.value(prefix)  # (B, S, K), (B, S, V)
        logits = self.query(prefix) @ k.transpose(1, 2) * self.scale  # (B, S, S)
        causal = torch.ones(s, s, dtype=torch.bool, device=prefix.device).tril()
        read = logits.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        # each query: the prefix and itself
        q_t, k_t, v_t = self.query(tail), self.key(tail), self.value(tail)
        tail_logits = (
            torch.cat([q_t @ k.transpose(1, 2), (q_t * k_t).sum(-1, keepdim=True)], -1) * self.scale
        )
        p = tail_logits.softmax(-1)  # (B, M, S + 1)
        tail_read = p[..., :s] @ v + p[..., s:] * v_t
        return torch.cat([prefix, read], -1), torch.cat([tail, tail_read], -1)


def tc_block(channels: int, length: int, filters: int) -> tuple[list[nn.Module], int]:
    """TCBlock(T, D): ⌈log₂ T⌉ dense blocks with dilations 1, 2, 4, …; returns them and the output
    channels."""
    blocks = []
    for i in range(max(1, math.ceil(math.log2(length)))):
        blocks.append(DenseBlock(channels, 2**i, filters))
        channels += filters
    return blocks, channels


@ALGORITHMS.register("snail")
class SNAIL(MetaLearner):
    fixed_ways = True  # one label input and output per way

    @dataclass
    class Config:
        hidden: int = option(64, ge=1)  # embedding conv filters (paper: 64); vectors: MLP units
        features: int = option(64, ge=1)  # embedding size (paper: 64)
        tc_filters: int = 128  # D of both TC blocks (paper: 128)
        # (key, value) sizes of the 3 attention blocks; None: paper's
        attention: list[list[int]] | None = None

    def __init__(
        self, options: SNAIL.Config, input_shape: tuple[int, ...], ways: int = 5, shots: int = 1
    ) -> None:
        super().__init__(options, input_shape, ways)
        sizes = options.attention or [[64, 32], [256, 128], [512, 256]]
        if len(sizes) != 3 or any(len(kv) != 2 or min(kv) < 1 for kv in sizes):
            raise ConfigError(
                f"algorithm.attention {options.attention} is invalid: give three [key, value] "
                f"size pairs, e.g. [[64, 32], [256, 128], [512, 256]]"
            )
        self.shots = shots
        if len(input_shape) == 1:  # vectors (dim,): the MLP form (module docstring)
            self.embed = vector_embedding(input_shape[0], options.hidden, options.features)
        elif len(input_shape) == 3:
            self.embed = embedding(input_shape[0], options.hidden, options.features, input_shape)
        else:
            raise ConfigError(
                f"snail takes images (C, H, W) or vectors (dim,), not inputs of shape "
                f"{tuple(input_shape)}"
            )
        length = ways * shots + 1  # T
        c, layers = options.features + ways, []
        for i, (key, value) in enumerate(sizes):
            layers.append(AttentionBlock(c, key, value))
            c += value
            if i < 2:
                blocks, c = tc_block(c, length, options.tc_filters)
                layers += blocks
        self.layers = nn.Sequential(*layers)
        self.out = nn.Linear(c, ways)  # the final 1×1 convolution

    @classmethod
    def from_config(cls, cfg: Config, input_shape: tuple[int, ...]) -> SNAIL:
        """Also passes ``train.shots``: the length T = N·K + 1 sets the TC blocks' depth."""
        learner = cls(
            algorithm_options(cfg, cls.Config), input_shape, cfg.train.ways, cfg.train.shots
        )
        learner.check_config_ways(cfg)
        return learner

    def build_kwargs(self) -> dict[str, int]:
        return {"shots": self.shots}

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> ShuffledSupportSampler:
        t = cfg.train
        return ShuffledSupportSampler(
            EpisodeSampler(split, t.ways, t.shots, t.queries, t.meta_batch, cfg.data.within_group)
        )

    def sequence(self, episode: Episode) -> Pair:
        """Per-position outputs: support prefix (B, S, N) and every query after it (B, M, N)."""
        b, s = episode.support_y.shape
        z = self.embed(torch.cat([episode.support_x, episode.query_x], 1).flatten(0, 1)).unflatten(
            0, (b, -1)
        )
        labels = F.one_hot(episode.support_y, self.ways).to(z.dtype)  # (B, S, N)
        prefix = torch.cat([z[:, :s], labels], -1)
        tail = F.pad(z[:, s:], (0, self.ways))  # the query's label slot: zeros
        prefix, tail = self.layers((prefix, tail))
        return self.out(prefix), self.out(tail)

    def meta_loss(self, episode: Episode) -> StepOutput:
        return classification_step(self.sequence(episode)[1], episode.query_y)  # (B, M, N) logits

    def predict(self, episode: Episode) -> Tensor:
        return self.sequence(support_order(episode))[1]
