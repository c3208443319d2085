"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean of its embedded support examples, its prototype (eq. 1):
``c_k = 1/|S_k| Σ f(x_i)``; a query is classified by a softmax over negative distances to the
prototypes (eq. 2): ``p(y = k | x) ∝ exp(−d(f(x), c_k))`` with d the squared Euclidean distance.
Training minimises the negative log-probability of the true class over the query set.

Paper defaults (Omniglot): Conv-4 with 64 filters, Adam with learning rate 1e-3 halved every 2000
episodes, 60-way training episodes with 5 queries per class, and the test shot used for training.
Options: ``distance: cosine`` scores by scaled cosine similarity (``cosine_scale``·cos) instead.
Deviation: the paper stops early on validation loss; metalab keeps the best checkpoint by validation
accuracy on a fixed validation set and trains the configured number of steps. Support and query are
embedded in one pass, as in the authors' code (BatchNorm sees both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.algorithms.base import MetaLearner, StepOutput, classification_step
from metalab.algorithms.distances import prototypes, squared_euclidean
from metalab.config import option
from metalab.errors import ConfigError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode


@ALGORITHMS.register("protonet")
class ProtoNet(MetaLearner):
    @dataclass
    class Config:
        backbone: str = "conv4"
        hidden: int = option(64, ge=1)  # filters per conv block
        distance: str = "euclidean"  # euclidean (paper) | cosine
        # logits = cosine_scale · cos(f(x), c_k) when distance = cosine
        cosine_scale: float = option(10.0, gt=0)

    def __init__(
        self, options: ProtoNet.Config, input_shape: tuple[int, ...], ways: int | None = None
    ) -> None:
        super().__init__(options, input_shape, ways)
        if options.distance not in ("euclidean", "cosine"):
            raise ConfigError(
                f"algorithm.distance '{options.distance}' is unknown; choices: euclidean, cosine"
            )
        self.encoder = build_backbone(
            options.backbone, in_channels=input_shape[0], hidden=options.hidden
        )

    def embed(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) → (B, M, D)."""
        return self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def logits(self, episode: Episode) -> Tensor:
        """(B, N*Q, N) negative distances (or scaled cosine similarities) to the prototypes."""
        s = episode.support_x.shape[1]
        z = self.embed(torch.cat([episode.support_x, episode.query_x], dim=1))
        protos = prototypes(z[:, :s], episode.support_y, episode.ways)
        query = z[:, s:]
        if self.options.distance == "cosine":
            return (
                self.options.cosine_scale
                * F.normalize(query, dim=-1)
                @ F.normalize(protos, dim=-1).transpose(1, 2)
            )
        return -squared_euclidean(query, protos)

    def meta_loss(self, episode: Episode) -> StepOutput:
        return classification_step(self.logits(episode), episode.query_y)

    def predict(self, episode: Episode) -> Tensor:
        return self.logits(episode)
