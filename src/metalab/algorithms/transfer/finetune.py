"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019), with the frozen-embedding classifiers of Tian, Wang, Krishnan,
Tenenbaum & Isola ("Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?",
ECCV 2020).

Pre-training (Chen et al. §3.1, "training stage"): a backbone f and a classifier over all C training
classes, trained with cross-entropy on ordinary mini-batches of the training split
(:class:`metalab.tasks.flat.FlatBatchSampler`) through the same engine as every meta-learner.

- Baseline: ``logits = W f(x) + b``, a linear layer.
- Baseline++ (§3.2): ``logits_c = s · cos(f(x), w_c)``, the cosine similarity to each class's weight
  vector, scaled by s (the authors' code: s = 2 for at most 200 classes, else 10; ``cosine_scale``).

Test time (§3.1, "fine-tuning stage"): f is frozen, the support set is embedded once and a new head
of the same kind over the task's N ways is trained on the support embeddings and labels only: SGD
with learning rate 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3, mini-batches of 4 support
examples, 100 passes over the support set — the authors' code (``methods/baselinefinetune.py``; the
paper's text says "100 iterations with a batch size of 4"; the code runs 100 epochs, which we
follow). The tasks of an episode batch are fine-tuned independently and in parallel (a head per
task, batched matrix products); each task's head initialisation and mini-batch order come from a
generator seeded by the task's own support set, so evaluation is reproducible and does not depend on
how episodes are batched.

Options:
    ``finetune_backbone: true`` fine-tunes backbone and head together on the support set (one task
    after another, on functional copies of the weights: the trained model itself never changes;
    BatchNorm uses its running statistics, as in eval mode).
    ``classifier: logistic`` — Tian et al. 2020: multinomial logistic regression on L2-normalised
    embeddings, scikit-learn's objective ``Σ CE + ||W||² / (2C)`` (C = ``logistic_c`` = 1, bias not
    penalised), solved with L-BFGS from zero.
    ``classifier: centroid`` — nearest centroid on L2-normalised embeddings: logits are the negative
    squared distances to the class means of the normalised support embeddings.

Paper defaults (Omniglot): Conv-4 on 28×28 images, Adam with learning rate 1e-3, batch 16, 5 epochs
over the 4112 rotated training classes (the authors' ``train.py``). Deviations: the cosine head is
the paper's plain cosine (the authors' code also learns a norm per class through weight
normalisation); pre-training batches are drawn uniformly at random instead of by shuffled epochs
(see :mod:`metalab.tasks.flat`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab import functional as fn
from metalab.algorithms.base import MetaLearner, StepOutput, accuracy, output_shape
from metalab.algorithms.heads import (
    head_logits,
    logistic_regression_logits,
    nearest_centroid_logits,
)
from metalab.config import Config, algorithm_options, option
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError, MetalabError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode
from metalab.tasks.flat import FlatBatch, FlatBatchSampler

HEADS = ("linear", "cosine")
CLASSIFIERS = ("finetune", "logistic", "centroid")


def authors_cosine_scale(classes: int) -> float:
    """The scale s of the authors' cosine head: 2 for at most 200 classes, 10 above (Omniglot's
    4112)."""
    return 2.0 if classes <= 200 else 10.0


def sgd_step(
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    buffers: dict[str, Tensor],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One step of ``torch.optim.SGD`` (no Nesterov) on tensors: ``d = g + λp``; ``v = d`` at the
    first step, then ``v = μv + (1 − dampening)d``; ``p = p − lr·v``. Returns the new parameters and
    momentum buffers."""
    new_params, new_buffers = {}, {}
    for k, p in params.items():
        d = grads[k] + weight_decay * p
        v = d if k not in buffers else momentum * buffers[k] + (1.0 - dampening) * d
        new_params[k], new_buffers[k] = p - lr * v, v
    return new_params, new_buffers


def training_classes(cfg: Config) -> int:
    """The number of classes of the run's training split: the pre-training head's outputs."""
    from metalab.tasks.sources import load_split

    try:
        return load_split(cfg.data, cfg.data.train_split).num_classes
    except MetalabError as e:
        raise ConfigError(
            f"{cfg.algorithm_name}'s pre-training head has one output per training class, and the "
            f"training split could not be counted ({e}); set algorithm.classes to that number"
        ) from None


def task_seed(support_x: Tensor, support_y: Tensor) -> int:
    """A seed that is a function of one task's support set (its images at 8 bits and its labels)."""
    pixels = (
        (support_x.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().tobytes()
    )
    return zlib.crc32(support_y.cpu().numpy().tobytes(), zlib.crc32(pixels))


@ALGORITHMS.register("baseline")
class Baseline(MetaLearner):
    @dataclass
    class Config:
        backbone: str = "conv4"  # Chen et al.: Conv-4 (1 input channel, 28×28) on Omniglot
        hidden: int = option(64, ge=1)  # filters per conv block
        # C, outputs of the pre-training head; None: the training split's classes (from_config)
        classes: int | None = option(None, ge=2)
        # linear (Baseline) | cosine (Baseline++): the pre-training and the fine-tuned head
        head: str = "linear"
        # s of the cosine head; None: the authors' 2 (≤ 200 classes) or 10
        cosine_scale: float | None = None
        batch_size: int = option(16, ge=1)  # pre-training mini-batch (authors' code: 16)
        # test time: finetune (a new head) | logistic | centroid (Tian et al. 2020)
        classifier: str = "finetune"
        # finetune: also adapt the backbone (default: frozen, as in the paper)
        finetune_backbone: bool = False
        finetune_epochs: int = option(100, ge=1)  # passes over the support set (authors' code)
        finetune_batch: int = option(4, ge=1)  # support examples per fine-tuning step
        finetune_lr: float = option(0.01, gt=0)
        finetune_momentum: float = option(0.9, ge=0, lt=1)
        finetune_dampening: float = option(0.9, ge=0, le=1)  # authors' code
        finetune_weight_decay: float = option(1e-3, ge=0)
        # inverse L2 strength (scikit-learn's default, used by Tian et al.)
        logistic_c: float = option(1.0, gt=0)
        # L-BFGS iterations (scikit-learn's default max_iter)
        logistic_steps: int = option(100, ge=1)

    def __init__(
        self,
        options: Baseline.Config,
        input_shape: tuple[int, ...],
        ways: int | None = None,
        seed: int = 0,
    ) -> None:
        """``seed`` draws the pre-training head's initial weights (``train.seed`` in a run)."""
        super().__init__(options, input_shape, ways)
        for key, value, choices in (
            ("head", options.head, HEADS),
            ("classifier", options.classifier, CLASSIFIERS),
        ):
            if value not in choices:
                raise ConfigError(
                    f"algorithm.{key} '{value}' is unknown; choices: {', '.join(choices)}"
                )
        for key in ("batch_size", "finetune_epochs", "finetune_batch", "logistic_steps"):
            if getattr(options, key) < 1:
                raise ConfigError(
                    f"algorithm.{key} = {getattr(options, key)} is invalid: it must be at least 1"
                )
        if options.classes is not None and options.classes < 1:
            raise ConfigError(
                f"algorithm.classes = {options.classes} is invalid: it must be at least 1"
            )
        self.backbone = build_backbone(
            options.backbone, in_channels=input_shape[0], hidden=options.hidden
        )
        (self.features,) = output_shape(
            self.backbone, input_shape, f"backbone '{options.backbone}'"
        )
        # the classifier over all training classes (None: a learner that only predicts)
        self.head = (
            None if options.classes is None else self.pretraining_head(options.classes, seed)
        )

    @classmethod
    def from_config(cls, cfg: Config, input_shape: tuple[int, ...]) -> Baseline:
        """Also sizes the pre-training head (``algorithm.classes``, else the number of classes of
        the training split) and draws it from ``train.seed``."""
        options = algorithm_options(cfg, cls.Config)
        if options.classes is None:
            options = replace(options, classes=training_classes(cfg))
        return cls(options, input_shape, cfg.train.ways, cfg.train.seed)

    # --- pre-training ---------------------------------------------------------------------------
    def pretraining_head(self, classes: int, seed: int) -> nn.Linear:
        """The classifier over all training classes: weight ~ U(±1/√D) (as nn.Linear), bias 0
        (authors' code), drawn from a generator seeded by ``seed``."""
        head = nn.Linear(self.features, classes, bias=self.options.head == "linear")
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(self.features)
        with torch.no_grad():
            head.weight.copy_(
                torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator)
            )
            if head.bias is not None:
                head.bias.zero_()
        return head

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> FlatBatchSampler:
        """Flat mini-batches over every class of the training split, one head output each."""
        if self.head is None or self.head.out_features != split.num_classes:
            raise ConfigError(
                f"algorithm.classes = {self.options.classes} but the training split "
                f"'{split.name}' has {split.num_classes} classes; set algorithm.classes to "
                f"{split.num_classes} (or leave it unset: the training split's classes are counted)"
            )
        return FlatBatchSampler(split, self.options.batch_size)

    def scale(self, classes: int) -> float:
        return self.options.cosine_scale or authors_cosine_scale(classes)

    def meta_loss(self, batch: FlatBatch) -> StepOutput:
        if self.head is None:
            raise ConfigError(
                "this baseline has no pre-training head: build it with algorithm.classes set "
                "(from_config counts the training split's classes)"
            )
        z = self.backbone(batch.x)  # (batch, D)
        logits = head_logits(
            self.options.head,
            dict(self.head.named_parameters()),
            z,
            self.scale(self.head.out_features),
        )
        loss = F.cross_entropy(logits, batch.y)
        return StepOutput(loss, {"accuracy": accuracy(logits[None], batch.y[None]).mean().detach()})

    # --- test time ------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) → (B, M, D)."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def predict(self, episode: Episode) -> Tensor:
        o, n = self.options, episode.ways
        if o.classifier == "finetune" and o.finetune_backbone:
            return self._finetune_all(episode)
        s = episode.support_x.shape[1]
        with torch.no_grad():  # the backbone is frozen: no gradient ever reaches it
            z = self.embed(torch.cat([episode.support_x, episode.query_x], dim=1))  # (B, S+M, D)
        support, query = z[:, :s], z[:, s:]
        if o.classifier == "centroid":
            return nearest_centroid_logits(support, episode.support_y, n, query)
        if o.classifier == "logistic":
            return logistic_regression_logits(
                support, episode.support_y, n, query, o.logistic_c, o.logistic_steps
            )
        params = self.finetune_heads(support, episode.support_y, n, self._generators(episode))
        return head_logits(o.head, params, query, self.scale(n))

    def _generators(self, episode: Episode) -> list[torch.Generator]:
        return [
            torch.Generator().manual_seed(task_seed(episode.support_x[i], episode.support_y[i]))
            for i in range(episode.tasks)
        ]

    def _new_head(
        self, ways: int, generator: torch.Generator, device: torch.device
    ) -> dict[str, Tensor]:
        """A new N-way head, U(±1/√D) as nn.Linear initialises it."""
        bound = 1.0 / math.sqrt(self.features)
        shapes = {"weight": (ways, self.features)} | (
            {"bias": (ways,)} if self.options.head == "linear" else {}
        )
        return {
            k: torch.empty(shape).uniform_(-bound, bound, generator=generator).to(device)
            for k, shape in shapes.items()
        }

    def _batches(self, size: int, generator: torch.Generator) -> Tensor:
        """The fine-tuning order: a permutation of the support set per epoch, (epochs, S)."""
        return torch.rand(self.options.finetune_epochs, size, generator=generator).argsort(-1)

    def _sgd(self, params: dict[str, Tensor], grads: dict[str, Tensor], buffers: dict[str, Tensor]):
        o = self.options
        return sgd_step(
            params,
            grads,
            buffers,
            o.finetune_lr,
            o.finetune_momentum,
            o.finetune_dampening,
            o.finetune_weight_decay,
        )

    def finetune_heads(
        self, support: Tensor, labels: Tensor, ways: int, generators: list[torch.Generator]
    ) -> dict[str, Tensor]:
        """Train one new head per task on its frozen support embeddings, all tasks at once.

        Shapes: support (B, S, D), labels (B, S) → weight (B, N, D) (and bias (B, N) for a linear
        head). Only the support labels are seen. Each task's loss is its own mini-batch mean, so the
        summed loss gives every head exactly the gradient it would get alone.
        """
        b, s, d = support.shape
        support = support.detach()
        heads = [self._new_head(ways, g, support.device) for g in generators]
        params = {k: torch.stack([h[k] for h in heads]) for k in heads[0]}
        # (B, epochs, S)
        order = torch.stack([self._batches(s, g) for g in generators]).to(support.device)
        scale, buffers = self.scale(ways), {}
        with torch.enable_grad():
            for epoch in range(self.options.finetune_epochs):
                # (B, S, D) this epoch's order
                shuffled = support.gather(1, order[:, epoch, :, None].expand(-1, -1, d))
                shuffled_y = labels.gather(1, order[:, epoch])  # (B, S)
                for start in range(0, s, self.options.finetune_batch):
                    z = shuffled[:, start : start + self.options.finetune_batch]  # (B, m, D)
                    y = shuffled_y[:, start : start + self.options.finetune_batch]  # (B, m)
                    live = {k: v.detach().requires_grad_() for k, v in params.items()}
                    logits = head_logits(self.options.head, live, z, scale)  # (B, m, N)
                    loss = (
                        F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                        .view(b, -1)
                        .mean(1)
                        .sum()
                    )
                    grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
                    params, buffers = self._sgd(
                        {k: v.detach() for k, v in live.items()}, grads, buffers
                    )
        return params

    def _finetune_all(self, episode: Episode) -> Tensor:
        """Fine-tune copies of backbone and a new head on each task's support set, one task after
        another."""
        o, n = self.options, episode.ways
        scale, outputs = self.scale(n), []
        for i, generator in enumerate(self._generators(episode)):
            sx, sy = episode.support_x[i], episode.support_y[i]  # (S, C, H, W), (S,)
            params = {
                f"backbone.{k}": v.detach().clone() for k, v in self.backbone.named_parameters()
            }
            params |= {f"head.{k}": v for k, v in self._new_head(n, generator, sx.device).items()}
            # BatchNorm never writes the model's
            stats = {k: v.clone() for k, v in self.backbone.named_buffers()}
            order, buffers = self._batches(len(sx), generator).to(sx.device), {}

            def logits(p: dict[str, Tensor], x: Tensor) -> Tensor:
                z = fn.call(self.backbone, fn.subset(p, "backbone") | stats, x)  # (m, D)
                return head_logits(o.head, fn.subset(p, "head"), z, scale)

            with torch.enable_grad():
                for epoch in range(o.finetune_epochs):
                    for start in range(0, len(sx), o.finetune_batch):
                        pick = order[epoch, start : start + o.finetune_batch]
                        live = {k: v.requires_grad_() for k, v in params.items()}
                        loss = F.cross_entropy(logits(live, sx[pick]), sy[pick])
                        grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
                        params, buffers = self._sgd(
                            {k: v.detach() for k, v in live.items()}, grads, buffers
                        )
            with torch.no_grad():
                outputs.append(logits(params, episode.query_x[i]))
        return torch.stack(outputs)  # (B, N*Q, N)


@ALGORITHMS.register("baseline_pp")
class BaselinePP(Baseline):
    """Baseline++ (Chen et al. 2019, §3.2): Baseline with the cosine-similarity head."""

    @dataclass
    class Config(Baseline.Config):
        head: str = "cosine"  # Baseline++: s · cos(f(x), w_c)
