"""MAML and its settings: first-order MAML, Meta-SGD, ANIL (and NIL at test time).

MAML (Finn, Abbeel & Levine, ICML 2017): learn an initialisation θ such that a few gradient steps on
a task's support set give good query predictions. Inner loop (eq. 1):
``θ'_i = θ − α ∇_θ L_support_i(θ)``; meta-objective (eq. 2/3): ``min_θ Σ_i L_query_i(θ'_i)``,
differentiated through the inner loop (second order). First-order MAML (§5.2) drops the second
derivatives: ∇L_support is treated as a constant. Meta-SGD (Li, Zhou, Chen & Li, 2017, eq. 3):
``θ' = θ − α ⊙ ∇L_support(θ)`` with α a learnable tensor of θ's shape, meta-learned with θ. ANIL
(Raghu, Raghu, Bengio & Vinyals, ICLR 2020): only the head adapts in the inner loop; the body is
meta-learned in the outer loop only. NIL (same paper, §5): no head at test time; a query is scored
by a softmax-weighted vote of the support labels with weights from the cosine similarity of its
penultimate features to each support example's.

Paper defaults (Omniglot 5-way, Finn et al. 2017, appendix A.1): Conv-4 with 64 filters, one inner
step with α = 0.4 in training and 3 at test, meta-batch 32, 60000 iterations, Adam (β = 1e-3 is the
authors' code default; A.1 does not state it); 20-way: 5 steps with α = 0.1, meta-batch 16. Paper
results (Table 1): 98.7 ± 0.4 (5w1s), 95.8 ± 0.3 (20w1s). Finn et al. report first-order MAML on
MiniImagenet only; the Omniglot first-order figure 98.3 ± 0.5 (5w1s) is from Nichol et al. 2018
(Reptile paper), Table 2, "1st-order MAML + Transduction".

The network is Conv-4 with ``track_running_stats=False`` (BatchNorm always uses the statistics of
the batch it sees: support in the inner loop, the whole query set after it — transductive, as in the
authors' code) and a linear head with one output per way, so training and test ways must be equal.
Tasks of a meta-batch run in parallel (``parallel: vmap``) or one after another (``loop``, the
reference); ``auto`` (default) times both on the first batch of each shape and keeps the faster
(:class:`metalab.functional.AutoParallel`); see :mod:`metalab.functional`. Deviations: Meta-SGD's α
starts at ``inner_lr`` everywhere; 28×28 inputs and max-pooling (the paper's strided convolutions
without pooling are not used for Omniglot here).

The zeroing trick (Kao, Chiu & Chen, "MAML is a Noisy Contrastive Learner in Classification", ICLR
2022, §3.3; ``zero_head: true``): the linear head starts every task's inner loop at zero instead of
at a meta-learned initialisation. After one inner step the head's rows are then the support
features' class means less their overall mean, scaled by α/N (the body does not move in
that step: its gradient passes through the zero head), so the query logits are ProtoNet-like
inner products, and the interference of a random non-zero head initialisation with the label
permutation of each task is gone. Not in Finn et al.; used by ``configs/omniglot/fomaml-cpu.yaml``
(measured there; see ``benchmarks/first_order_gap.py`` for how far first-order MAML's meta-gradient
is from MAML's with and without it).

Regression (sinusoid, Finn et al. 2017, §5.1; episodes with ``ways = 0``, so
``train.ways = eval.ways = 0``): the head has one output and the inner and outer losses are the mean
squared error. Paper settings: the MLP 1-40-40-1 with ReLU (``backbone: mlp, hidden: 40``), K = 10,
one inner step with α = 0.01, meta-batch 25, Adam 1e-3, 70K iterations; evaluated after 0..10 steps
of α = 0.01 (``predict(episode, steps=k)``). Deviation: PyTorch's default initialisation, not the
authors' truncated normal (σ = 0.01).

``pretrain`` is the paper's "pretrained on all tasks" baseline (§5.1) in the same code: no inner
loop in training (``inner_steps: 0``), so the meta-loss is the plain loss of θ on the query points
of every task of the batch (ordinary regression on points drawn from many tasks), and at test time
the same ``predict`` fine-tunes θ on the support set with ``eval_inner_steps`` SGD steps of
``inner_lr``. (For classification it runs too, but labels are relabelled per task, so it learns
little that transfers.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab import functional as fn
from metalab.algorithms.base import MetaLearner, StepOutput, accuracy
from metalab.algorithms.optimization.network import build_network, check_parallel
from metalab.config import option
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode

PARALLEL = ("auto", "vmap", "loop")


@ALGORITHMS.register("maml")
class MAML(MetaLearner):
    regression = True  # ways = 0: one output, mean squared error
    fixed_ways = True  # the head has one output per way

    @dataclass
    class Config:
        backbone: str = "conv4"  # Conv-4, as in the paper (built with track_running_stats=False)
        hidden: int = option(64, ge=1)  # filters per conv block (paper: 64 for Omniglot)
        inner_lr: float = option(0.4, gt=0)  # α (paper: 0.4 for 5-way Omniglot, 0.1 for 20-way)
        # inner SGD steps in meta-training (paper: 1 for 5-way, 5 for 20-way)
        inner_steps: int = option(1, ge=0)
        # inner steps at test time (paper: 3 for 5-way, 5 for 20-way)
        eval_inner_steps: int = option(3, ge=0)
        first_order: bool = False  # first-order MAML: no second derivatives through the inner loop
        # Meta-SGD: a learnable α per parameter entry, initialised to inner_lr
        learn_inner_lr: bool = False
        adapt: str = "all"  # parameters adapted in the inner loop: all (MAML) | head (ANIL)
        # ANIL's NIL at test time: no head, cosine-similarity vote over the support set
        nil: bool = False
        # tasks of a meta-batch: vmap | loop | auto (the faster, timed on the first batch)
        parallel: str = "auto"
        # Kao et al. 2022's zeroing trick: the head starts every task at zero (not meta-learned)
        zero_head: bool = False

    def __init__(self, options: MAML.Config, input_shape: tuple[int, ...], ways: int = 5) -> None:
        super().__init__(options, input_shape, ways)
        if options.adapt not in ("all", "head"):
            raise ConfigError(f"algorithm.adapt '{options.adapt}' is unknown; choices: all, head")
        if options.parallel not in PARALLEL:
            raise ConfigError(
                f"algorithm.parallel '{options.parallel}' is unknown; choices: "
                f"{', '.join(PARALLEL)}"
            )
        for key in ("inner_steps", "eval_inner_steps"):
            if getattr(options, key) < 0:
                raise ConfigError(
                    f"algorithm.{key} = {getattr(options, key)} is invalid: it must be at least 0"
                )
        if options.nil and ways == 0:
            raise ConfigError(
                "algorithm.nil is a classification method (a vote of support labels); "
                "set it to false for regression (ways 0)"
            )
        self.auto = fn.AutoParallel()  # parallel: auto's measured choices
        self.task_loss = F.mse_loss if ways == 0 else F.cross_entropy  # inner and outer loss
        self.net = build_network(options.backbone, options.hidden, input_shape, ways)
        check_parallel(self.net, options.parallel, "maml")
        if options.zero_head:  # the head's weights are never used (task() starts it at zero)
            nn.init.zeros_(self.net.head.weight)
            nn.init.zeros_(self.net.head.bias)
        # Meta-SGD: one learnable rate per adapted parameter entry (Li et al. 2017), same order as
        # _adapted().
        self.inner_lrs = nn.ParameterList(
            [
                nn.Parameter(torch.full_like(p, options.inner_lr))
                for p in self._adapted(fn.parameters(self)).values()
            ]
            if options.learn_inner_lr
            else []
        )

    def _adapted(self, params: fn.Params) -> fn.Params:
        """The inner loop's parameters among the learner's, named relative to the module they are
        called on."""
        return fn.subset(params, "net.head" if self.options.adapt == "head" else "net")

    def _lr(self, params: fn.Params) -> fn.LR:
        if self.options.learn_inner_lr:
            return {k: params[f"inner_lrs.{i}"] for i, k in enumerate(self._adapted(params))}
        return self.options.inner_lr

    def task(
        self,
        grad_fn: fn.GradFn,
        params: fn.Params,
        sx: Tensor,
        sy: Tensor,
        qx: Tensor,
        qy: Tensor,
        steps: int,
    ) -> tuple[Tensor, Tensor]:
        """One task with the learner's ``params``: adapt on the support set, score the query set.
        (S, C, H, W), (S,), (M, C, H, W), (M,) → query loss (), query logits (M, N); regression:
        (S, 1), (S, 1), (M, 1), (M, 1) → query loss (), query values (M, 1)."""
        o = self.options
        if o.zero_head:  # Kao et al. 2022, §3.3: every task's inner loop starts from a zero head
            # (v * 0 keeps the head in the graph: its meta-gradient is zero, not None)
            zero = lambda k, v: v * 0 if k.startswith("net.head.") else v  # noqa: E731
            params = {k: zero(k, v) for k, v in params.items()}
        net = fn.subset(params, "net")
        # ANIL: the body is fixed within the task, so its features are computed once
        if o.adapt == "head":
            body = fn.subset(net, "backbone")
            # (S, D), (M, D)
            fs, fq = fn.call(self.net.backbone, body, sx), fn.call(self.net.backbone, body, qx)
            head = self.net.head
            fast = fn.sgd(
                lambda p: self.task_loss(fn.call(head, p, fs), sy),
                self._adapted(params),
                self._lr(params),
                steps,
                o.first_order,
                grad_fn,
            )
            logits = fn.call(head, fast, fq)
        else:
            fast = fn.sgd(
                lambda p: self.task_loss(fn.call(self.net, p, sx), sy),
                net,
                self._lr(params),
                steps,
                o.first_order,
                grad_fn,
            )
            logits = fn.call(self.net, fast, qx)
        return self.task_loss(logits, qy), logits

    def run(self, episode: Episode, steps: int) -> tuple[Tensor, Tensor]:
        """Every task of the episode batch: the mean query loss (its backward gives the
        meta-gradient) and the query logits (B, N*Q, N) (regression: values (B, Q, 1))."""
        task = lambda g, p, *t: self.task(g, p, *t, steps=steps)  # noqa: E731
        tasks = (episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        # the faster one, timed on the first batch of each shape
        if self.options.parallel == "auto":
            loss, _, logits = self.auto.run_tasks(task, fn.parameters(self), *tasks, key=steps)
        else:
            loss, _, logits = fn.run_tasks(
                task, fn.parameters(self), *tasks, parallel=self.options.parallel
            )
        return loss, logits

    def meta_loss(self, episode: Episode) -> StepOutput:
        loss, logits = self.run(episode, self.options.inner_steps)
        if self.ways == 0:
            return StepOutput(loss)  # the loss is the query MSE
        return StepOutput(loss, {"accuracy": accuracy(logits, episode.query_y).mean().detach()})

    def predict(self, episode: Episode, steps: int | None = None) -> Tensor:
        """Query logits (B, N*Q, N), or values (B, Q, 1) for regression, after ``steps`` inner steps
        on each task's support set (default ``eval_inner_steps``; 0 = the meta-learned θ itself)."""
        if steps is not None and steps < 0:
            raise ConfigError(f"steps = {steps} is invalid: it must be at least 0")
        if self.options.nil:
            return self.nil_logits(episode)
        return self.run(episode, self.options.eval_inner_steps if steps is None else steps)[1]

    def nil_logits(self, episode: Episode) -> Tensor:
        """NIL (Raghu et al. 2020, §5): log of the cosine-softmax-weighted vote of the support
        labels."""
        embed = lambda x: self.net.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # noqa: E731
        fs, fq = (
            F.normalize(embed(episode.support_x), dim=-1),
            F.normalize(embed(episode.query_x), dim=-1),
        )
        weights = torch.softmax(fq @ fs.transpose(1, 2), dim=-1)  # (B, N*Q, N*K)
        # (B, N*Q, N)
        votes = weights @ F.one_hot(episode.support_y, episode.ways).to(weights.dtype)
        return votes.clamp_min(1e-12).log()


@ALGORITHMS.register("fomaml")
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, §5.2): MAML with ``first_order: true`` by default."""

    @dataclass
    class Config(MAML.Config):
        first_order: bool = True  # drop the second derivatives (paper: 98.3 ± 0.5 on Omniglot 5w1s)


@ALGORITHMS.register("metasgd")
class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with ``learn_inner_lr: true`` by default.

    Paper (Omniglot): 99.53 ± 0.26 (5w1s), 95.93 ± 0.38 (20w1s), one inner step in training and
    test."""

    @dataclass
    class Config(MAML.Config):
        learn_inner_lr: bool = True  # α is a learnable tensor per parameter, meta-learned with θ
        # Meta-SGD adapts in one step, in training and at test time
        eval_inner_steps: int = option(1, ge=0)


@ALGORITHMS.register("anil")
class ANIL(MAML):
    """ANIL (Raghu et al. 2020): MAML with ``adapt: head`` by default; ``nil: true`` evaluates
    NIL."""

    @dataclass
    class Config(MAML.Config):
        # only the head adapts in the inner loop; the body is learned in the outer loop
        adapt: str = "head"


@ALGORITHMS.register("pretrain")
class Pretrain(MAML):
    """The "pretrained on all tasks" baseline of Finn et al. 2017, §5.1 (see the module docstring):
    no inner loop in training, fine-tuning on the support set at test time."""

    @dataclass
    class Config(MAML.Config):
        # ordinary training of θ on the query points of many tasks
        inner_steps: int = option(0, ge=0)
