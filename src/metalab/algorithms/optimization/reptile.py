"""Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms").

For each task of a meta-batch, run k steps of SGD or Adam from the initialisation θ on the support
set, giving φ̃_i; then move θ towards the adapted weights (Algorithm 2):
``θ ← θ + ε · mean_i(φ̃_i − θ)``.

Through the engine's contract: ``meta_loss`` returns the surrogate
``mean_i ½‖θ − stopgrad(φ̃_i)‖²``, whose gradient w.r.t. θ is ``mean_i(θ − φ̃_i)``. With
``train.optimizer: sgd``, ``momentum: 0`` and ``lr: ε`` the engine's step is exactly Reptile's outer
update (``lr`` is the paper's outer step size ε). The tasks' inner loops run in parallel with
``torch.func.vmap`` (``parallel: vmap``) or one after another (``loop``); ``auto`` (default) times
both on the first batch of each shape and keeps the faster
(:class:`metalab.functional.AutoParallel`). No gradient flows through them.

Paper defaults (Omniglot 5-way 1-shot, appendix A; the same flags as the 1-shot 5-way Omniglot
commands in openai/supervised-reptile's README): Adam in the inner loop (β1 = 0) with rate 1e-3, 5
inner iterations on mini-batches of 10 from 10 training shots per class, meta-batch 5, outer step
1.0 annealed linearly to 0 over 100K iterations; at test 50 iterations on mini-batches of 5. Paper
(Table 2): 95.39 ± 0.09 (5w1s), 97.68 ± 0.04 with transduction.

Evaluation: ``transductive: true`` scores the whole query set in one batch (BatchNorm statistics of
the query set); ``false`` scores each query example in a batch with the support set, as the authors'
code does, so no query sees another. The outer step is annealed linearly to 0 over ``train.steps``
with ``train.lr_schedule: linear`` (the preset's). Deviation: inner mini-batches cycle through the
support set in a fixed interleaved order (every class in every mini-batch) instead of reshuffling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab import functional as fn
from metalab.algorithms.base import MetaLearner, StepOutput, accuracy
from metalab.algorithms.optimization.network import build_network, check_parallel
from metalab.config import option
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode


def interleave(n: int, per_class: int) -> Tensor:
    """Class-major order (n*K + j) → example-major (j*N + n): consecutive slices cover every
    class."""
    return torch.arange(n * per_class).view(n, per_class).t().flatten()


@ALGORITHMS.register("reptile")
class Reptile(MetaLearner):
    fixed_ways = True  # the head has one output per way

    @dataclass
    class Config:
        backbone: str = "conv4"  # Conv-4 with BatchNorm on batch statistics, as MAML
        hidden: int = option(64, ge=1)  # filters per conv block (paper: 64)
        inner_optimizer: str = "adam"  # adam (paper, β1 = 0) | sgd
        inner_lr: float = option(0.001, gt=0)  # paper: Adam 1e-3
        inner_steps: int = option(5, ge=0)  # paper: 5 inner iterations in training
        # support examples per inner step (paper: 10); 0 = the whole support set
        inner_batch: int = 10
        eval_inner_steps: int = option(50, ge=0)  # paper: 50 at test
        eval_inner_batch: int = option(5, ge=1)  # paper: 5 at test
        adam_beta1: float = option(0.0, ge=0, lt=1)  # paper: 0
        adam_beta2: float = option(0.999, ge=0, lt=1)
        # score the query set as one batch (paper's better-scoring variant)
        transductive: bool = True
        parallel: str = "auto"  # tasks: vmap | loop | auto (the faster, timed on the first batch)

    def __init__(
        self, options: Reptile.Config, input_shape: tuple[int, ...], ways: int = 5
    ) -> None:
        super().__init__(options, input_shape, ways)
        if options.inner_optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"algorithm.inner_optimizer '{options.inner_optimizer}' is unknown; choices: "
                "adam, sgd"
            )
        if options.parallel not in ("auto", "vmap", "loop"):
            raise ConfigError(
                f"algorithm.parallel '{options.parallel}' is unknown; choices: auto, vmap, loop"
            )
        self.auto = fn.AutoParallel()  # parallel: auto's measured choices
        self.net = build_network(options.backbone, options.hidden, input_shape, ways)
        check_parallel(self.net, options.parallel, "reptile")

    def adapt(self, params: fn.Params, sx: Tensor, sy: Tensor, steps: int, batch: int) -> fn.Params:
        """k steps of SGD or Adam (Kingma & Ba 2015) on one task's support set: (S, C, H, W), (S,) →
        φ̃."""
        o, s = self.options, sx.shape[0]
        batch = s if batch <= 0 else min(batch, s)
        order = interleave(self.ways, s // self.ways).to(sx.device)
        m = {k: torch.zeros_like(p) for k, p in params.items()}
        v = {k: torch.zeros_like(p) for k, p in params.items()}
        for i in range(steps):
            idx = order[(torch.arange(batch, device=sx.device) + i * batch) % s]
            x, y = sx[idx], sy[idx]
            grads = fn.func_grad(
                lambda p: F.cross_entropy(fn.call(self.net, p, x), y), params, True
            )
            if o.inner_optimizer == "sgd":
                params = {k: p - o.inner_lr * grads[k] for k, p in params.items()}
                continue
            b1, b2 = o.adam_beta1, o.adam_beta2
            m = {k: b1 * m[k] + (1 - b1) * g for k, g in grads.items()}
            v = {k: b2 * v[k] + (1 - b2) * g * g for k, g in grads.items()}
            c1, c2 = 1 - b1 ** (i + 1), 1 - b2 ** (i + 1)
            params = {
                k: p - o.inner_lr * (m[k] / c1) / ((v[k] / c2).sqrt() + 1e-8)
                for k, p in params.items()
            }
        return params

    def scores(self, fast: fn.Params, sx: Tensor, qx: Tensor) -> Tensor:
        """Query logits (M, N) with the adapted weights: transductively, or each query with the
        support set."""
        if qx.shape[0] == 0:  # training episodes without queries
            return qx.new_zeros(0, self.ways)
        if self.options.transductive:
            return fn.call(self.net, fast, qx)
        one = lambda q: fn.call(self.net, fast, torch.cat([sx, q[None]]))[-1]  # noqa: E731
        return torch.func.vmap(one)(qx)

    def run(self, episode: Episode, steps: int, batch: int) -> tuple[fn.Params, Tensor]:
        """Adapted weights of every task (each (B, ...)) and query logits (B, N*Q, N); no
        gradients."""
        params = {k: p.detach() for k, p in fn.parameters(self.net).items()}

        def task(sx: Tensor, sy: Tensor, qx: Tensor) -> tuple[fn.Params, Tensor]:
            fast = self.adapt(params, sx, sy, steps, batch)
            return fast, self.scores(fast, sx, qx)

        def tasks(impl: str) -> tuple[fn.Params, Tensor]:
            e = episode
            if impl == "vmap":
                return torch.func.vmap(task)(e.support_x, e.support_y, e.query_x)
            outs = [task(e.support_x[i], e.support_y[i], e.query_x[i]) for i in range(e.tasks)]
            return {k: torch.stack([f[k] for f, _ in outs]) for k in params}, torch.stack(
                [q for _, q in outs]
            )

        with torch.no_grad():
            impl = self.options.parallel
            if impl == "auto":  # the faster one, timed on the first batch of each shape
                key = (steps, batch, episode.support_x.shape, episode.query_x.shape)
                impl = self.auto.choose(key, tasks, episode.support_x.device)
            return tasks(impl)

    def meta_loss(self, episode: Episode) -> StepOutput:
        fast, logits = self.run(episode, self.options.inner_steps, self.options.inner_batch)
        theta = fn.parameters(self.net)
        # ½ Σ_params ‖θ − φ̃_i‖², averaged over tasks: its gradient is mean_i(θ − φ̃_i).
        loss = sum(0.5 * (theta[k][None] - fast[k]).pow(2).sum() for k in theta) / episode.tasks
        metrics = (
            {"accuracy": accuracy(logits, episode.query_y).mean()}
            if episode.query_y.shape[1]
            else {}
        )
        return StepOutput(loss, metrics)

    def predict(self, episode: Episode) -> Tensor:
        return self.run(episode, self.options.eval_inner_steps, self.options.eval_inner_batch)[1]
