"""Contrastive pre-training: SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020) and supervised
contrastive learning, SupCon (Khosla et al., NeurIPS 2020), then a frozen-backbone few-shot
classifier.

Pre-training, through the same engine as every learner: a batch of M images is drawn from the
training split (labels unused by SimCLR: it trains on ``data.labels: none``), each is augmented
twice (:mod:`metalab.tasks.augment`, ``data.augment``), and the 2M views pass through the backbone f
and a projection head g (Linear–ReLU–Linear, SimCLR §2.1); z = g(f(x)) / ‖g(f(x))‖.

- **NT-Xent** (SimCLR eq. 1), for the positive pair (i, j) of views of one image::

      ℓ(i, j) = −log  exp(z_i·z_j / τ) / Σ_{a ≠ i} exp(z_i·z_a / τ)

  averaged over all 2M anchors; the 2M − 2 negatives of an anchor are both views of every other
  image (``same_view_negatives``; without them only the other images' views from the opposite
  side: M − 1 negatives).
- **SupCon** (Khosla et al. eq. 2, L_out), P(i) the other views of i's class in the batch::

      ℓ_i = −1/|P(i)| Σ_{p ∈ P(i)} log  exp(z_i·z_p / τ) / Σ_{a ≠ i} exp(z_i·z_a / τ)

  With one class per image (labels = image ids) P(i) = {j} and SupCon is NT-Xent.

**Contrastive learning as meta-learning** (Ni et al., "The Close Relationship Between Contrastive
Learning and Meta-Learning", ICLR 2022): take the batch as one M-way 1-shot task whose support is
the first views z^1 and whose queries are the second views z^2. A ProtoNet-style learner (prototype
= the support embedding, logits = cos(q, c)/τ, i.e. ``protonet`` with ``distance: cosine`` and
``cosine_scale = 1/τ``) has the episodic cross-entropy::

      −1/M Σ_i log  exp(z^2_i·z^1_i / τ) / Σ_k exp(z^2_i·z^1_k / τ)

which is InfoNCE with the M − 1 negatives of the opposite view, and its average over the two
directions (support z^1 / query z^2 and back) is NT-Xent without same-view negatives
(``same_view_negatives=False``). With squared Euclidean distance on normalised embeddings the
same holds at scale 1/(2τ), since −‖a − b‖² = 2a·b − 2. SimCLR's NT-Xent adds the M − 1 same-view
negatives to each denominator. ``tests/test_unsupervised.py`` checks all three identities.

Test time (as the transfer baselines, :mod:`metalab.algorithms.transfer.finetune`): the projection
head is dropped, the backbone is frozen, and the support set of each task is classified by
``classifier: centroid`` (nearest centroid of L2-normalised embeddings) or ``logistic`` (Tian et al.
2020's logistic regression on them).

Sentences (a text dataset, ``data.text_input: tokens`` with a ``transformer`` backbone): the two
views of a sentence are the sentence itself, made different by the encoder's dropout — SimCSE's
views (Gao, Yao & Chen, EMNLP 2021); SupCon on them pulls the sentences of a class together, the
contrastive fine-tuning that SetFit (Tunstall et al. 2022) does on sentence pairs.

Defaults: a 2-layer projection head to 128 dimensions (SimCLR's output size); τ = 0.5 for SimCLR
(one of the temperatures the paper compares; not tuned here) and 0.1 for SupCon (Khosla et al.'s);
a batch of 256 images (512 views) instead of SimCLR's 4096, for a CPU. Deviations: metalab's
Conv-4 backbone instead of a ResNet; Adam instead of LARS; the augmentations are
:mod:`metalab.tasks.augment`'s (affine, erasing, stroke thickness) instead of crops and colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, output_shape
from metalab.algorithms.heads import logistic_regression_logits, nearest_centroid_logits
from metalab.config import Config, option
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.augment import Augment, augment_config
from metalab.tasks.episodes import Episode, to_float
from metalab.tasks.unsupervised import AugmentedImages, UnlabeledImages, distinct_rows

CLASSIFIERS = ("centroid", "logistic")


# --- the objectives, as pure functions of embeddings ---------------------------------------------
def nt_xent(z1: Tensor, z2: Tensor, temperature: float, same_view_negatives: bool = True) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1) over M positive pairs: (M, D), (M, D) → ().

    Rows are L2-normalised here. Anchor z1_i's positive is z2_i and vice versa; negatives are
    every other image's two views (``same_view_negatives``) or only its opposite view.
    """
    m = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2M, D)
    sim = z @ z.T / temperature  # (2M, 2M)
    self_mask = torch.eye(2 * m, dtype=torch.bool, device=z.device)
    if not same_view_negatives:
        same_side = torch.zeros(2, 2, dtype=torch.bool, device=z.device)
        same_side[0, 0] = same_side[1, 1] = True
        self_mask = same_side.repeat_interleave(m, 0).repeat_interleave(m, 1)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(m, 2 * m), torch.arange(m)]).to(z.device)
    return F.cross_entropy(sim, positive)


def supcon(z1: Tensor, z2: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Khosla et al. 2020's L_out (eq. 2): (M, D), (M, D), (M,) class ids → ().

    Every one of the 2M views is an anchor; its positives are all other views of its class (at
    least its own second view), its denominator all 2M − 1 other views.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2M, D)
    y = torch.cat([labels, labels])
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - sim.logsumexp(1, keepdim=True)  # (2M, 2M), −inf on the diagonal
    positive = (y[:, None] == y[None, :]) & ~self_mask
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)
    return -mean_log_prob.mean()


def info_nce(query: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """InfoNCE with in-batch negatives (van den Oord et al. 2018): query i's positive is key i,
    its negatives the other M − 1 keys. (M, D), (M, D) → (); rows L2-normalised here."""
    logits = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


# --- training batches: two views of each of M images ---------------------------------------------
@dataclass
class ViewBatch:
    """Two augmented views of M images: x1, x2 (M, C, H, W); y (M,) class ids or None (unlabeled).
    ``ways`` is None: these are not episodes."""

    x1: Tensor
    x2: Tensor
    y: Tensor | None
    ways: None = None


class ViewSampler:
    """Draws M distinct images of the training split and two augmentations of each.

    Args:
        images: (total, C, H, W) uint8, on any device; or sentences (total, T).
        labels: (total,) class id of each image (SupCon), or None (SimCLR: never read).
        batch_size: M.
        augment: the ``data.augment`` options (for sentences: must be None).
    """

    def __init__(self, images: Tensor, labels: Tensor | None, batch_size: int, augment) -> None:
        if batch_size < 2 or batch_size > len(images):
            raise ConfigError(
                f"algorithm.batch_size {batch_size} is invalid: between 2 and the {len(images)} "
                "training images"
            )
        self.images, self.labels, self.batch_size = images, labels, batch_size
        # sentences (token ids or embeddings, (total, T)): both views are the input itself and
        # differ by the encoder's dropout only, as in SimCSE (Gao et al., EMNLP 2021)
        sentences = images.dim() == 2
        if sentences and augment is not None:
            raise ConfigError(
                "data.augment transforms images, and this dataset holds sentences: remove "
                "data.augment (the two views of a sentence differ by the encoder's dropout)"
            )
        self.augment = None if sentences else Augment(augment)

    def sample(self, generator: torch.Generator) -> ViewBatch:
        rows = distinct_rows(len(self.images), 1, self.batch_size, generator)[0]  # (M,) CPU
        x = to_float(self.images[rows.to(self.images.device)])  # (M, C, H, W)
        if self.augment is None:
            views = torch.cat([x, x])
        else:
            views = self.augment(torch.cat([x, x]), generator)  # (2M, C, H, W)
        y = None if self.labels is None else self.labels[rows].to(x.device)
        return ViewBatch(views[: len(x)], views[len(x) :], y)


@ALGORITHMS.register("simclr")
class SimCLR(MetaLearner):
    """SimCLR pre-training (NT-Xent), frozen-backbone few-shot evaluation (module docstring)."""

    objective = "nt_xent"
    augments_itself = True  # data.augment is its view augmentation, not task augmentation

    @dataclass
    class Config:
        backbone: str = "conv4"
        hidden: int = option(64, ge=1)  # filters per conv block
        projection: int = option(128, ge=1)  # output of the projection head g (SimCLR: 128)
        temperature: float = option(0.5, gt=0)  # τ (SimCLR's CIFAR-10 setting)
        batch_size: int = option(256, ge=1)  # images per step (2× views)
        same_view_negatives: bool = True  # NT-Xent as SimCLR; false: the episodic form (Ni et al.)
        classifier: str = "centroid"  # test time: centroid | logistic (Tian et al. 2020)
        logistic_c: float = option(1.0, gt=0)
        logistic_steps: int = option(100, ge=1)

    def __init__(
        self, options: SimCLR.Config, input_shape: tuple[int, ...], ways: int | None = None
    ) -> None:
        super().__init__(options, input_shape, ways)
        if options.classifier not in CLASSIFIERS:
            raise ConfigError(
                f"algorithm.classifier '{options.classifier}' is unknown; choices: "
                + ", ".join(CLASSIFIERS)
            )
        if options.temperature <= 0:
            raise ConfigError(
                f"algorithm.temperature = {options.temperature} is invalid: it must be > 0"
            )
        if options.projection < 1:
            raise ConfigError(f"algorithm.projection = {options.projection} must be at least 1")
        self.backbone = build_backbone(
            options.backbone, in_channels=input_shape[0], hidden=options.hidden
        )
        (features,) = output_shape(self.backbone, input_shape, f"backbone '{options.backbone}'")
        self.projector = nn.Sequential(
            nn.Linear(features, features), nn.ReLU(), nn.Linear(features, options.projection)
        )

    # --- pre-training ----------------------------------------------------------------------------
    def train_sampler(self, split, cfg: Config) -> ViewSampler:
        """Two views of each of ``batch_size`` training images; class ids only for SupCon."""
        augment = augment_config(cfg.data.augment)
        if isinstance(split, UnlabeledImages):
            images, labels = split.images, None
        else:
            dataset = split.dataset if isinstance(split, AugmentedImages) else split
            if not isinstance(dataset, ClassIndexedDataset):
                raise ConfigError(
                    f"{self.registered_name} pre-trains on images; dataset '{cfg.data.dataset}' "
                    "has none"
                )
            images = dataset.images
            labels = self.image_labels(dataset) if self.objective == "supcon" else None
        if self.objective == "supcon" and labels is None:
            raise ConfigError(
                "supcon needs class labels and data.labels is none; use simclr or data.labels: "
                "given"
            )
        if images.dim() == 2:  # sentences: data.augment must be unset (ViewSampler)
            augment = cfg.data.augment
        return ViewSampler(images, labels, self.options.batch_size, augment)

    @staticmethod
    def image_labels(dataset: ClassIndexedDataset) -> Tensor:
        """(total,) class id of each stored image, on the CPU."""
        counts, offsets = dataset.counts.cpu(), dataset.offsets.cpu()
        classes = torch.repeat_interleave(torch.arange(len(counts)), counts)  # per listed image
        rank = torch.arange(len(classes)) - (torch.cumsum(counts, 0) - counts)[classes]
        labels = torch.full((len(dataset.images),), -1, dtype=torch.int64)
        labels[offsets[classes] + rank] = classes
        return labels

    def project(self, x: Tensor) -> Tensor:
        """(M, C, H, W) → (M, projection), not normalised."""
        return self.projector(self.backbone(x))

    def meta_loss(self, batch: ViewBatch) -> StepOutput:
        m = batch.x1.shape[0]
        z = self.project(torch.cat([batch.x1, batch.x2]))  # one pass: BatchNorm sees both views
        z1, z2 = z[:m], z[m:]
        o = self.options
        if self.objective == "supcon":
            loss = supcon(z1, z2, batch.y, o.temperature)
        else:
            loss = nt_xent(z1, z2, o.temperature, o.same_view_negatives)
        with torch.no_grad():  # instance discrimination accuracy: is z2_i the closest z1?
            hits = (F.normalize(z2, dim=-1) @ F.normalize(z1, dim=-1).T).argmax(1)
            acc = (hits == torch.arange(m, device=hits.device)).float().mean()
        return StepOutput(loss, {"accuracy": acc})

    # --- test time: frozen backbone, no projection head ------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) → (B, M, D) backbone features."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def predict(self, episode: Episode) -> Tensor:
        o, n, s = self.options, episode.ways, episode.support_x.shape[1]
        with torch.no_grad():
            z = self.embed(torch.cat([episode.support_x, episode.query_x], dim=1))
        support, query = z[:, :s], z[:, s:]
        if o.classifier == "centroid":
            return nearest_centroid_logits(support, episode.support_y, n, query)
        return logistic_regression_logits(
            support, episode.support_y, n, query, o.logistic_c, o.logistic_steps
        )


@ALGORITHMS.register("supcon")
class SupCon(SimCLR):
    """Supervised contrastive pre-training (Khosla et al. 2020, L_out), same evaluation."""

    objective = "supcon"

    @dataclass
    class Config(SimCLR.Config):
        temperature: float = option(0.1, gt=0)  # Khosla et al.'s default
