"""The contract every algorithm of every family implements, and the one the engine knows.

    learner = ALGORITHMS.get("protonet").from_config(cfg, input_shape=(1, 28, 28))
    sampler = learner.training_batches(train_split, cfg)  # what batches it trains on
    out = learner.meta_loss(sampler.sample(generator))  # StepOutput: differentiable loss + metrics
    logits = learner.predict(episode)                   # adapt on the support set, score the query

Each algorithm says which training batches it needs by returning a sampler (episodes for most; pairs
for Siamese networks; label-delayed sequences for MANN and SNAIL; flat mini-batches for pre-training
baselines), so the engine serves every method without a special case. Evaluation is always on fixed
:class:`~metalab.tasks.episodes.Episode` sets through ``predict``.

The rules every algorithm shares live here, written once:

- **Ways.** A learner with one output unit per way (a classifier head, a label input) declares
  ``fixed_ways = True``; the base stores the ways it was built with (``self.ways``, from
  ``train.ways``), refuses a config whose ``eval.ways`` differs (``from_config``) and refuses any
  batch of other ways before the subclass's code runs: every subclass's ``predict`` and
  ``meta_loss`` go through :meth:`MetaLearner.check_ways` first.
- **Modes.** ``with learner.eval_mode():`` (or :func:`eval_mode` for any module) switches to eval
  mode and restores the previous mode afterwards.
- **Shapes.** :func:`output_shape` probes what a network outputs for one input.
- **Building.** The default ``from_config`` passes the typed options, the input shape and
  ``train.ways``; a subclass overrides it only when it needs more from the config. ``replace``
  builds the same learner with other options (``learner.replace(parallel="loop")``).

``predict`` may be called under ``torch.no_grad()``; a method that needs gradients to adapt (MAML)
enables them itself (``torch.func.grad`` ignores an outer ``no_grad``).

Regression (sinusoid): episodes have ``ways = 0`` and float targets (B, K, 1); a method that
handles them sets ``regression = True`` and its ``predict`` returns query values (B, Q, 1). The
engine refuses to train a method without it on a regression source (:func:`check_source`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.config import Config, algorithm_options
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError
from metalab.tasks.episodes import Episode, episode_sampler, is_regression

M = TypeVar("M", bound=nn.Module)


@dataclass
class StepOutput:
    """A training step's differentiable loss and its detached metrics (e.g. ``{"accuracy":
    0.93}``)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Sampler(Protocol):
    """Anything that draws a training batch from an explicit generator."""

    def sample(self, generator: torch.Generator) -> Any: ...


@contextmanager
def eval_mode(module: M) -> Iterator[M]:
    """Eval mode inside the block (BatchNorm on its running statistics, no dropout), the previous
    mode restored after it, even on an exception."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def output_shape(net: nn.Module, input_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Shape of ``net``'s output for one input, e.g. (64,) or (64, 7, 7).

    A probe of two zero inputs in eval mode without gradients: nothing in ``net`` changes (BatchNorm
    neither updates nor needs running statistics) and no random number is drawn. An input too small
    for the net's pooling raises a ConfigError naming ``what`` and the input shape.
    """
    try:
        with eval_mode(net), torch.no_grad():
            return tuple(net(torch.zeros(2, *input_shape)).shape[1:])
    except RuntimeError:
        raise ConfigError(
            f"images of shape {tuple(input_shape)} are too small for {what}; "
            f"use a larger data.image_size"
        ) from None


def _checks_ways(method: Callable) -> Callable:
    """``method(batch, ...)`` preceded by the learner's ways check of ``batch``."""

    @functools.wraps(method)
    def checked(self: MetaLearner, batch: Any, *args: Any, **kwargs: Any) -> Any:
        self.check_ways(batch)
        return method(self, batch, *args, **kwargs)

    checked.checks_ways = True
    return checked


class MetaLearner(nn.Module):
    """Base class of all algorithms. Subclasses define ``Config`` (a dataclass of their options),
    ``meta_loss`` and ``predict``, and call ``super().__init__(options, input_shape, ways)``.

    Attributes:
        options: the typed options (``Config``); read-only by convention: another setting is another
            learner (:meth:`replace`).
        input_shape: one input's shape, e.g. (1, 28, 28).
        ways: the N it was built with (``train.ways``; 0 for regression; None when not given).
    """

    Config: ClassVar[type]
    regression: ClassVar[bool] = False  # handles regression episodes (ways = 0, float targets)
    # applies data.augment itself (contrastive views), rather than as task augmentation
    augments_itself: ClassVar[bool] = False
    # One output unit per way: only episodes of ``self.ways`` ways can be scored. A learner whose
    # options decide (MANN's string labels) sets the attribute on the instance in __init__.
    fixed_ways: bool = False

    def __init__(
        self, options: Any = None, input_shape: tuple[int, ...] = (), ways: int | None = None
    ) -> None:
        super().__init__()
        self.options, self.input_shape, self.ways = options, tuple(input_shape), ways

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("meta_loss", "predict"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "checks_ways", False):
                setattr(cls, name, _checks_ways(method))

    @classmethod
    def from_config(cls, cfg: Config, input_shape: tuple[int, ...]) -> MetaLearner:
        """The learner of ``cfg``: its ``algorithm:`` options, ``input_shape``, ``train.ways``."""
        learner = cls(algorithm_options(cfg, cls.Config), input_shape, cfg.train.ways)
        learner.check_config_ways(cfg)
        return learner

    @property
    def registered_name(self) -> str:
        """The name it is registered under (``maml``), else the class name."""
        from metalab.registry import ALGORITHMS

        names = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n) is type(self)]
        return names[0] if names else type(self).__name__

    def check_config_ways(self, cfg: Config) -> None:
        """A learner with fixed ways is evaluated with the ways it is trained with."""
        if self.fixed_ways and cfg.eval.ways != self.ways:
            raise ConfigError(
                f"train.ways = {self.ways} but eval.ways = {cfg.eval.ways}: "
                f"{self.registered_name} has one output unit per way, so they must be equal; "
                f"set eval.ways to {self.ways} (or train with --ways {cfg.eval.ways})"
            )

    def check_ways(self, batch: Any) -> None:
        """Refuse a batch (anything with ``.ways``) of other ways than a fixed-ways learner's."""
        ways = getattr(batch, "ways", None)
        if not self.fixed_ways or ways is None or ways == self.ways:
            return
        if 0 in (ways, self.ways):
            kind = lambda n: "regression" if n == 0 else "classification"  # noqa: E731
            raise ConfigError(
                f"the episodes are {kind(ways)} tasks but this {self.registered_name} model was "
                f"trained for {kind(self.ways)}; evaluate it on the dataset it was trained on"
            )
        raise ConfigError(
            f"the episodes have {ways} ways but this {self.registered_name} model has one output "
            f"unit per way and was trained with {self.ways}; evaluate with --ways {self.ways}"
        )

    def replace(self, **changes: Any) -> MetaLearner:
        """A new learner of the same class, input shape, ways, weights, dtype and device, with
        ``changes`` to its options (like :func:`dataclasses.replace`), e.g. ``parallel="loop"``.
        The global random state is left as it was."""
        options = dataclasses.replace(self.options, **changes)
        with torch.random.fork_rng(devices=[]):
            twin = type(self)(options, self.input_shape, self.ways, **self.build_kwargs())
        like = next(self.parameters(), None)
        if like is not None:
            twin = twin.to(like.device, like.dtype)
        twin.load_state_dict(self.state_dict())
        return twin.train(self.training)

    def build_kwargs(self) -> dict[str, Any]:
        """Constructor arguments beyond (options, input_shape, ways) that :meth:`replace` passes on
        (SNAIL's shots). Default: none."""
        return {}

    def eval_mode(self) -> Any:
        """``with learner.eval_mode():`` — eval mode inside the block, the previous mode after."""
        return eval_mode(self)

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> Sampler:
        """Training batches: by default episode batches of ``cfg.train``'s shape from any task
        source (N-way K-shot for images; K support and Q query points for regression)."""
        t = cfg.train
        return episode_sampler(
            split, t.ways, t.shots, t.queries, t.meta_batch, cfg.data.within_group
        )

    def training_batches(self, split: Any, cfg: Config) -> Sampler:
        """What the engine draws training batches from: :meth:`train_sampler`'s, with every image
        augmented when ``data.augment`` made ``split`` an
        :class:`~metalab.tasks.unsupervised.AugmentedImages` (task augmentation, for every kind of
        batch) and the learner does not apply ``data.augment`` itself."""
        from metalab.tasks.unsupervised import AugmentedBatches, AugmentedImages

        if isinstance(split, AugmentedImages) and not self.augments_itself:
            return AugmentedBatches(self.train_sampler(split.dataset, cfg), split.augment)
        return self.train_sampler(split, cfg)

    def meta_loss(self, batch: Any) -> StepOutput:
        raise NotImplementedError

    def predict(self, episode: Episode) -> Tensor:
        """Adapt to each task's support set; return query logits (B, N*Q, N)."""
        raise NotImplementedError

    def protocol_report(self, split: Any, eval_cfg: Any) -> dict[str, Any]:
        """Results of the method's own evaluation protocol, added to ``metalab eval``'s report
        beside the standard episodes (e.g. MANN's accuracy by instance number). Default: none."""
        return {}


def check_source(cfg: Config, source: Any) -> None:
    """Refuse, before anything is built, an algorithm or task shape the source's kind of task rules
    out: on a regression source, a method without ``regression = True`` or ways other than 0."""
    if not is_regression(source):
        return
    from metalab.registry import ALGORITHMS

    if not getattr(ALGORITHMS.get(cfg.algorithm_name), "regression", False):
        able = [n for n in ALGORITHMS.names() if getattr(ALGORITHMS.get(n), "regression", False)]
        raise ConfigError(
            f"algorithm '{cfg.algorithm_name}' does not do regression, and dataset "
            f"'{cfg.data.dataset}' is a regression dataset; choices: {', '.join(able)}"
        )
    for key, ways in (("train.ways", cfg.train.ways), ("eval.ways", cfg.eval.ways)):
        if ways != 0:
            raise ConfigError(
                f"--ways {ways} ({key}) given for '{cfg.data.dataset}', a regression dataset: its "
                f"tasks have no classes; drop --ways (set train.ways and eval.ways to 0)"
            )


def classification_step(logits: Tensor, labels: Tensor) -> StepOutput:
    """The training step of a classifier over the query set: mean cross-entropy and accuracy.
    (B, M, N) logits or log-probabilities, (B, M) labels."""
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    return StepOutput(loss, {"accuracy": accuracy(logits, labels).mean().detach()})


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per task: (B, M, N), (B, M) → (B,)."""
    return (logits.argmax(-1) == labels).float().mean(-1)
