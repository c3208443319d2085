"""Siamese Neural Networks for one-shot image recognition (Koch, Zemel & Salakhutdinov, ICML DL
Workshop 2015).

Twin networks with shared weights map two images to feature vectors h1, h2 (a sigmoid fully
connected layer); the probability that they show the same class is a sigmoid of the weighted L1
distance, ``p = σ(Σ_j α_j |h1_j − h2_j|)`` (plus a bias). Training is verification: balanced
same/different pairs of the training classes (:class:`~metalab.tasks.pairs.PairSampler`) and binary
cross-entropy. N-way one-shot classification picks the support image most similar to the query,
``argmax_c p(x̂, x_c)``; for K shots the class score is the mean or the max of p over its support
images (``shot_reduce``). ``predict`` returns the logit of that class score (B, N*Q, N).

Affine distortions (``distort: true``): each image of a pair gets its own random affine map with
rotation θ ∈ [−10°, 10°], shear ρ ∈ [−0.3, 0.3], scale s ∈ [0.8, 1.2] and translation t ∈ ±2 px of a
105-pixel image (±2/105 of the side at any size), each component present with probability 1/2; drawn
from the sampler's generator and applied with ``affine_grid`` / ``grid_sample`` (the map is used as
the sampling grid's inverse transform; the ranges are roughly symmetric about the identity).

Architecture: ``backbone: koch`` is the paper's net for 105×105 images (Fig. 4: conv 64@10×10,
128@7×7, 128@4×4, 256@4×4 with ReLU, max-pooling after the first three, then 4096 sigmoid units).
Deviations: the default ``backbone: conv4`` (Conv-4, then ``features`` sigmoid units) suits
metalab's 28×28 Omniglot; the paper's per-layer learning rates, momenta and L2 weights (tuned by
Bayesian optimisation), its weight initialisation and its fixed set of pre-distorted pairs are
replaced by one SGD-with-momentum optimizer, PyTorch's default initialisation and pairs drawn afresh
every step. Use SGD, as the paper does: with Adam, whose steps are normalised per weight, about half
of the 4096 α_j end up positive (a larger difference raising p) and one-shot accuracy stalls
(measured with 32 filters and 32 pairs a step: 58% 5-way 1-shot on validation after 431 steps of
Adam at 1e-3, 76% after 333 steps of SGD at 0.05 with momentum 0.9). Koch et al. report 92.0% 20-way
one-shot on Lake's split (105×105, within alphabets); the presets' targets on the Vinyals split are
the Siamese figures of Vinyals et al. 2016, Table 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, output_shape
from metalab.algorithms.distances import per_class
from metalab.config import Config as RunConfig
from metalab.config import option
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode
from metalab.tasks.pairs import PairBatch, PairSampler


def koch_convnet(in_channels: int) -> nn.Sequential:
    """The paper's convolutional layers (Fig. 4): (P, C, 105, 105) → (P, 256·6·6)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 10),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 7),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 4),
        nn.ReLU(),
        nn.Flatten(),
    )


def koch_distortion(images: Tensor, generator: torch.Generator) -> Tensor:
    """The paper's random affine distortions, one per image, drawn from `generator`: (P, C, H, W) →
    same."""
    p = images.shape[0]
    low = torch.tensor([-math.radians(10), -0.3, -0.3, 0.8, 0.8, -2 / 105, -2 / 105])
    high = torch.tensor([math.radians(10), 0.3, 0.3, 1.2, 1.2, 2 / 105, 2 / 105])
    identity = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    draw = low + (high - low) * torch.rand(p, 7, generator=generator)
    keep = torch.rand(p, 7, generator=generator) < 0.5
    theta, rho_x, rho_y, s_x, s_y, t_x, t_y = torch.where(keep, draw, identity).unbind(1)
    cos, sin = theta.cos(), theta.sin()
    rotation = torch.stack([cos, -sin, sin, cos], 1).view(p, 2, 2)
    # [[1, ρx], [ρy, 1]] · diag(s)
    shear_scale = torch.stack([s_x, rho_x * s_y, rho_y * s_x, s_y], 1).view(p, 2, 2)
    # fractions of the side → normalised coordinates in [−1, 1]
    shift = 2 * torch.stack([t_x, t_y], 1)[..., None]
    # (P, 2, 3)
    matrix = torch.cat([rotation @ shear_scale, shift], 2).to(images.device, images.dtype)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def weighted_l1(query: Tensor, support: Tensor, weight: Tensor) -> Tensor:
    """Σ_j α_j |q_j − s_j| for every pair: (B, M, D), (B, S, D), (D,) → (B, M, S).

    As ``|α q − α s| = |α| |q − s|``, it is an L1 distance over the positively weighted features
    minus one over the negatively weighted ones: ``torch.cdist`` never holds the (B, M, S, D)
    differences.
    """
    pos, neg = weight.clamp(min=0), (-weight).clamp(min=0)
    return torch.cdist(query * pos, support * pos, p=1) - torch.cdist(
        query * neg, support * neg, p=1
    )


@ALGORITHMS.register("siamese")
class SiameseNet(MetaLearner):
    @dataclass
    class Config:
        # conv4 (any registered backbone) | koch (the paper's net, 105×105 images)
        backbone: str = "conv4"
        hidden: int = option(64, ge=1)  # filters per conv block of a registered backbone
        # sigmoid units of the twin's last layer, h (the paper: 4096)
        features: int = option(4096, ge=1)
        # pairs per training step, half same, half different (the paper: 128)
        batch_size: int = option(128, ge=1)
        distort: bool = False  # the paper's random affine distortions of training pairs
        # K-shot class score: mean | max of p over the class's support images
        shot_reduce: str = "mean"

    def __init__(
        self, options: SiameseNet.Config, input_shape: tuple[int, ...], ways: int | None = None
    ) -> None:
        super().__init__(options, input_shape, ways)
        if options.shot_reduce not in ("mean", "max"):
            raise ConfigError(
                f"algorithm.shot_reduce '{options.shot_reduce}' is unknown; choices: mean, max"
            )
        if options.backbone == "koch":
            convs = koch_convnet(input_shape[0])
        else:
            convs = build_backbone(
                options.backbone, in_channels=input_shape[0], hidden=options.hidden
            )
        (dim,) = output_shape(convs, input_shape, f"backbone '{options.backbone}'")
        self.twin = nn.Sequential(convs, nn.Linear(dim, options.features), nn.Sigmoid())
        self.distance = nn.Linear(options.features, 1)  # α_j and a bias

    def train_sampler(self, split: ClassIndexedDataset, cfg: RunConfig) -> PairSampler:
        """Verification pairs of the training classes (``cfg.train``'s ways/shots/queries are
        unused)."""
        transform = koch_distortion if self.options.distort else None
        return PairSampler(split, self.options.batch_size, cfg.data.within_group, transform)

    def meta_loss(self, batch: PairBatch) -> StepOutput:
        h1, h2 = self.twin(torch.cat([batch.x1, batch.x2])).chunk(2)  # (P, features) each, one pass
        logits = self.distance((h1 - h2).abs()).squeeze(-1)  # (P,)
        loss = F.binary_cross_entropy_with_logits(logits, batch.same)
        correct = ((logits > 0).float() == batch.same).float().mean()  # verification accuracy
        return StepOutput(loss, {"accuracy": correct.detach()})

    def predict(self, episode: Episode) -> Tensor:
        """logit of each class's score: (B, N*Q, N). One-shot: the logit of p for its support
        image."""
        s = episode.support_x.shape[1]
        x = torch.cat([episode.support_x, episode.query_x], dim=1)
        h = self.twin(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # (B, S+M, features)
        # (B, M, S)
        z = weighted_l1(h[:, s:], h[:, :s], self.distance.weight[0]) + self.distance.bias
        y, n = episode.support_y, episode.ways
        if self.options.shot_reduce == "max":
            return per_class(z, y, n, "max")  # max logit = logit of the max p
        # logit(mean p) = log Σ σ(z) − log Σ σ(−z) over the class's support images
        return per_class(F.logsigmoid(z), y, n, "logsumexp") - per_class(
            F.logsigmoid(-z), y, n, "logsumexp"
        )
