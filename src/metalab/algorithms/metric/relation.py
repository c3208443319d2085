"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module f_φ maps images to feature maps; a relation module g_φ scores each
(class, query) pair from their depth-wise concatenation C(·, ·) (eq. 1):
``r_{i,j} = g_φ(C(f_φ(x_i), f_φ(x_j)))``, a relation score in [0, 1] (a sigmoid). For K-shot, the
class's feature map is the element-wise sum of the embeddings of its K support examples. Training
regresses the scores on the one-hot match with mean squared error (eq. 2):
``Σ_i Σ_j (r_{i,j} − 1(y_i == y_j))²``, averaged over the pairs as in the authors' code. ``predict``
returns the relation module's pre-sigmoid output (B, N*Q, N), the logit of r (the same ranking).

Architecture (Omniglot, Fig. 2): the embedding module is four blocks of 3×3 convolution (64
filters), BatchNorm and ReLU, the first two followed by 2×2 max-pooling; the relation module is two
such blocks, both pooled, over the 128-channel concatenation [class, query], then fully connected
layers of 8 units (ReLU) and 1 unit (sigmoid). Paper defaults: Adam 1e-3 halved every 100,000
episodes; training episodes of the test's ways and shots with 19 / 15 / 10 / 5 queries per class for
5w1s / 5w5s / 20w1s / 20w5s. Paper (Table 1): 99.6 / 99.8 / 97.6 / 99.1.

Deviations: the blocks are metalab's ``conv_block``, which pads every convolution by 1 (the authors'
code leaves the first two unpadded): a 28×28 image gives 64×7×7 feature maps instead of 64×5×5, and
the relation module reduces either to 64×1×1. Weights use PyTorch's default initialisation. Support
and query are embedded in one pass (BatchNorm sees both).

Vector form (inputs of shape ``(dim,)``, e.g. frozen sentence embeddings; chosen by the input
shape): not in the paper, whose modules are convolutional. Every conv block becomes a
:func:`linear_block` (Linear, BatchNorm, ReLU; no pooling): the embedding module is two of them,
``dim → hidden → hidden`` (four conv blocks in the paper, but the extra depth only served to shrink
the image), and the relation module is two over the concatenated pair ``[class, query]``
(2·hidden → hidden → hidden), then the same ``fc_hidden``-unit layer and 1 output. The K-shot sum,
the sigmoid scores and the MSE loss are the paper's. BatchNorm is kept on purpose: without it the
relation module's ReLUs die on small-norm inputs (L2-normalised sentence embeddings) and every
pair gets the same score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, accuracy, output_shape
from metalab.algorithms.distances import class_sums
from metalab.config import option
from metalab.errors import ConfigError
from metalab.models import conv_block
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode


def relation_pairs(classes: Tensor, queries: Tensor) -> Tensor:
    """C(class_n, query_m), class first: (B, N, C, h, w), (B, M, C, h, w) → (B, M, N, 2C, h, w);
    vectors: (B, N, C), (B, M, C) → (B, M, N, 2C)."""
    b, n = classes.shape[:2]
    m = queries.shape[1]
    return torch.cat(
        [
            classes[:, None].expand(b, m, n, *classes.shape[2:]),
            queries[:, :, None].expand(b, m, n, *queries.shape[2:]),
        ],
        dim=3,
    )


def linear_block(in_features: int, out_features: int) -> nn.Sequential:
    """The vector form's conv block: Linear → BatchNorm → ReLU."""
    return nn.Sequential(
        nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU()
    )


class RelationModule(nn.Module):
    """g_φ: (P, 2C, h, w) concatenated feature maps (or (P, 2C) vectors) → (P,) pre-sigmoid
    relation scores."""

    def __init__(self, feature_shape: tuple[int, ...], hidden: int, fc_hidden: int) -> None:
        super().__init__()
        channels = feature_shape[0]
        if len(feature_shape) == 1:  # the vector form: linear blocks for the conv blocks
            self.blocks = nn.Sequential(
                linear_block(2 * channels, hidden), linear_block(hidden, hidden)
            )
        else:
            self.blocks = nn.Sequential(
                conv_block(2 * channels, hidden), conv_block(hidden, hidden), nn.Flatten()
            )
        (flat,) = output_shape(
            self.blocks, (2 * channels, *feature_shape[1:]), "the relation module"
        )
        self.fc = nn.Sequential(nn.Linear(flat, fc_hidden), nn.ReLU(), nn.Linear(fc_hidden, 1))

    def forward(self, pairs: Tensor) -> Tensor:
        return self.fc(self.blocks(pairs)).squeeze(-1)


@ALGORITHMS.register("relation")
class RelationNet(MetaLearner):
    @dataclass
    class Config:
        # filters of every conv block (embedding and relation modules); vectors: linear block units
        hidden: int = option(64, ge=1)
        # units of the relation module's first fully connected layer (Omniglot: 8)
        fc_hidden: int = 8

    def __init__(
        self, options: RelationNet.Config, input_shape: tuple[int, ...], ways: int | None = None
    ) -> None:
        super().__init__(options, input_shape, ways)
        h = options.hidden
        if len(input_shape) == 1:  # vectors (dim,): linear blocks (module docstring)
            self.encoder = nn.Sequential(linear_block(input_shape[0], h), linear_block(h, h))
        elif len(input_shape) == 3:
            self.encoder = nn.Sequential(
                conv_block(input_shape[0], h),
                conv_block(h, h),
                conv_block(h, h, pool=False),
                conv_block(h, h, pool=False),
            )
        else:
            raise ConfigError(
                f"relation takes images (C, H, W) or vectors (dim,), not inputs of shape "
                f"{tuple(input_shape)}"
            )
        feature_shape = output_shape(
            self.encoder, input_shape, "the relation network's embedding module"
        )
        self.relation = RelationModule(feature_shape, h, options.fc_hidden)

    def embed(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) → (B, M, hidden, h, w) feature maps; vectors (B, M, dim) →
        (B, M, hidden)."""
        return self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def logits(self, episode: Episode) -> Tensor:
        """(B, N*Q, N) pre-sigmoid relation scores of every (query, class) pair."""
        s = episode.support_x.shape[1]
        z = self.embed(torch.cat([episode.support_x, episode.query_x], dim=1))
        # (B, N, hidden, h, w) or (B, N, hidden): K-shot sum
        classes = class_sums(z[:, :s], episode.support_y, episode.ways)
        pairs = relation_pairs(classes, z[:, s:])  # (B, M, N, 2·hidden, ...)
        return self.relation(pairs.flatten(0, 2)).view(pairs.shape[:3])

    def meta_loss(self, episode: Episode) -> StepOutput:
        logits = self.logits(episode)
        relation_score = torch.sigmoid(logits)
        target = F.one_hot(episode.query_y, episode.ways).to(relation_score.dtype)
        loss = F.mse_loss(relation_score, target)
        return StepOutput(loss, {"accuracy": accuracy(logits, episode.query_y).mean().detach()})

    def predict(self, episode: Episode) -> Tensor:
        return self.logits(episode)
