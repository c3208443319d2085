"""The LSTM meta-learner: an LSTM whose cell state is the learner's parameters.

Paper: Sachin Ravi & Hugo Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017.

The learner (Conv-4 + a linear head, parameters θ flattened to one vector of P coordinates) is
trained on a task's support set for T steps by a meta-learner LSTM. Its cell update is gradient
descent with learned, per-coordinate, per-step rates (eq. 2-4)::

    c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t,          c̃_t = −∇_{θ_{t-1}} L_t,      c_t = θ_t
    i_t = σ(W_I · [∇_t, L_t, θ_{t-1}, i_{t-1}] + b_I)      (learning rate)
    f_t = σ(W_F · [∇_t, L_t, θ_{t-1}, f_{t-1}] + b_F)      (forgetting / shrinkage)

With f_t = 1 and i_t = α this is SGD with rate α (tests/test_meta_lstm.py checks it). The initial
cell state c_0 — the learner's initial parameters — is meta-learned with the LSTM weights.

Architecture (paper §3.3 and §4, and the authors' code): two layers, shared across coordinates
(every coordinate of θ is a row of a batch of P; each has its own hidden state, the weights are
shared):

1. a standard LSTM (hidden 20) whose input is the preprocessed gradient and loss of each coordinate,
   4 numbers: ``preprocess(∇_t)`` and ``preprocess(L_t)`` (Andrychowicz et al. 2016, p = 10)::

       x ↦ (log|x| / p, sign(x))   if |x| ≥ e^{−p}
       x ↦ (−1, e^p · x)           otherwise

2. the meta-learner cell above, where the [∇_t, L_t] entries of eq. 2-3 are the first layer's output
   h_t (20 numbers), so each gate is a linear map of 22 inputs to 1, then a sigmoid. The raw
   gradient ∇_t is used as c̃_t.

Meta-training: L_query(θ_T) on the query set, back-propagated through the T cell updates into the
LSTM weights, the gate weights and c_0. As in the paper (§3.2), the learner's gradients ∇_t and
losses L_t are inputs treated as constants: they are computed at a detached θ_{t-1}, which drops the
second-derivative term (θ_{t-1} itself still enters the gates and the cell, so the meta-gradient
flows through them). ``predict`` runs the same T updates (gradients enabled locally, so it works
under ``torch.no_grad()``) and scores the query set with θ_T.

Defaults from the paper and the authors' code (twitter/meta-learning-lstm): LSTM hidden 20; p = 10;
gate weights U(−0.01, 0.01); forget bias large (authors: U(4, 5); here 5, so f_0 ≈ 0.993) and input
bias small and negative (authors: U(−5, −4); here −4.5, so i_0 ≈ 0.011: training starts close to SGD
with a small rate); T = 12 updates for 5-way 1-shot with the whole support set as the batch; Adam
1e-3 and meta-gradient clipping at 0.25 (``train.grad_clip``); learner Conv-4 with 32 filters. Paper
results (miniImageNet 5-way): 43.44 ± 0.77 (1-shot), 60.60 ± 0.71 (5-shot). The paper reports no
Omniglot results.

Deviations and choices:

- BatchNorm uses the statistics of the batch it sees (``track_running_stats=False``, like MAML in
  metalab): the support set during the T updates, the whole query set at the end (transductive), and
  no running statistics at all. The paper (§3.4) also keeps BatchNorm statistics from leaking
  between tasks (statistics per dataset, reset for each new task); the authors' code keeps running
  averages within a task (momentum 0.9 for 1-shot, 0.95 for 5-shot). Whether their final query pass
  used those averages or the query batch's own statistics was not verified here.
- f_0 and i_0 (the previous gate values at the first step) are 0; the first LSTM starts at zeros.
- Gate inputs are the previous gate *values* σ(·) as written in eq. 2-3 (the authors' code and its
  PyTorch port feed the pre-sigmoid values).
- Fixed biases 5 and −4.5 instead of draws from U(4, 5) and U(−5, −4).
- The tasks of an episode batch are adapted one after another (a Python loop; the paper used one
  task per meta-update); the meta-loss is their mean query loss.
- Classification only; training and test ways must be equal (one head output per way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, classification_step
from metalab.algorithms.optimization.network import build_network
from metalab.config import option
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016, appendix A) preprocessing of gradients and losses, one pair per
    entry: ``(log|x|/p, sign(x))`` if ``|x| ≥ e^{−p}``, else ``(−1, e^p·x)``. Shapes: (...) →
    (..., 2)."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], dim=-1)


class MetaLSTMCell(nn.Module):
    """The meta-learner cell (eq. 2-4), coordinate-wise: its cell state is the learner's parameters.

    ``forward(x, grad, (theta, f, i))`` with x (P, input_size) the first layer's output, grad (P,)
    the learner's gradient ∇_t, theta (P,) = c_{t-1}, f, i (P,) the previous gate values →
    (c_t, f_t, i_t).
    """

    def __init__(self, input_size: int, forget_bias: float, input_bias: float) -> None:
        super().__init__()
        self.forget = nn.Linear(input_size + 2, 1)  # W_F, b_F over [x, θ_{t-1}, f_{t-1}]
        self.input = nn.Linear(input_size + 2, 1)  # W_I, b_I over [x, θ_{t-1}, i_{t-1}]
        for gate, bias in ((self.forget, forget_bias), (self.input, input_bias)):
            nn.init.uniform_(gate.weight, -0.01, 0.01)
            nn.init.constant_(gate.bias, bias)

    def forward(
        self, x: Tensor, grad: Tensor, state: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        theta, f_prev, i_prev = state  # (P,) each
        f = torch.sigmoid(self.forget(torch.cat([x, theta[:, None], f_prev[:, None]], -1))).squeeze(
            -1
        )  # (P,)
        i = torch.sigmoid(self.input(torch.cat([x, theta[:, None], i_prev[:, None]], -1))).squeeze(
            -1
        )  # (P,)
        return f * theta + i * (-grad), f, i  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t, c̃_t = −∇_t


@ALGORITHMS.register("meta_lstm")
class MetaLSTM(MetaLearner):
    """Ravi & Larochelle (2017); see the module docstring."""

    fixed_ways = True  # the learner's head has one output per way

    @dataclass
    class Config:
        backbone: str = "conv4"  # the learner's body (built with track_running_stats=False)
        hidden: int = option(32, ge=1)  # learner filters per conv block (paper: 32)
        # T learner updates on the support set, in training and test (paper 1-shot: 12)
        inner_steps: int = 12
        lstm_hidden: int = 20  # hidden units of the first (standard) LSTM layer (paper: 20)
        preprocess_p: float = 10.0  # p of the gradient/loss preprocessing (paper: 10)
        # b_F at initialisation: f ≈ 0.993, keep the parameters (authors: U(4, 5))
        forget_bias: float = 5.0
        # b_I at initialisation: i ≈ 0.011, a small step (authors: U(-5, -4))
        input_bias: float = -4.5

    def __init__(
        self, options: MetaLSTM.Config, input_shape: tuple[int, ...], ways: int = 5
    ) -> None:
        super().__init__(options, input_shape, ways)
        if options.inner_steps < 0:
            raise ConfigError(
                f"algorithm.inner_steps = {options.inner_steps} is invalid: it must be at least 0"
            )
        if ways < 1:
            raise ConfigError(
                "meta_lstm is a classification method: ways must be at least 1 (no regression)"
            )
        if options.backbone.startswith("transformer"):
            raise ConfigError(
                f"meta_lstm updates every weight through its LSTM cell ({options.lstm_hidden} "
                f"states per weight), and a transformer backbone ('{options.backbone}') has "
                "millions of weights: use maml, anil or reptile to adapt a transformer"
            )
        net = build_network(options.backbone, options.hidden, input_shape, ways)
        self.names = [k for k, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        # c_0: the learner's initial parameters, flattened (P,), meta-learned.
        self.theta0 = nn.Parameter(torch.cat([p.detach().flatten() for p in net.parameters()]))
        # The learner is only a template run with functional_call on views of the cell state; it is
        # kept out of the module tree (not a meta-parameter) and holds no data (meta device, no
        # buffers).
        self._template = (net.to("meta"),)
        self.lstm = nn.LSTMCell(4, options.lstm_hidden)  # layer 1: preprocessed (∇, L) → h (P, 20)
        # layer 2
        self.cell = MetaLSTMCell(options.lstm_hidden, options.forget_bias, options.input_bias)

    def learner(self, theta: Tensor, x: Tensor) -> Tensor:
        """The learner with flat parameters θ (P,) on a batch x (M, C, H, W) → logits (M, N)."""
        views = torch.split(theta, [s.numel() for s in self.shapes])
        params = {k: v.view(s) for k, v, s in zip(self.names, views, self.shapes)}
        return torch.func.functional_call(
            self._template[0], params, (x,), tie_weights=False, strict=True
        )

    def adapt(self, sx: Tensor, sy: Tensor, steps: int) -> Tensor:
        """T meta-learner updates of the learner on one support set (S, C, H, W), (S,) → θ_T (P,).
        Differentiable w.r.t. c_0 and the meta-learner's weights when gradients are enabled."""
        theta = self.theta0  # c_0 (P,)
        f = i = torch.zeros_like(theta.detach())  # f_0, i_0 (P,)
        h = c = theta.new_zeros(theta.shape[0], self.options.lstm_hidden)  # layer-1 state (P, 20)
        p = self.options.preprocess_p
        for _ in range(steps):
            # the learner's ∇_t and L_t, at a detached θ_{t-1}: constants (paper §3.2)
            with torch.enable_grad():
                at = theta.detach().requires_grad_()
                loss = F.cross_entropy(self.learner(at, sx), sy)
                (grad,) = torch.autograd.grad(loss, at)
            loss = loss.detach()
            # (P, 4)
            x = torch.cat([preprocess(grad, p), preprocess(loss, p).expand(grad.shape[0], 2)], -1)
            h, c = self.lstm(x, (h, c))  # (P, 20)
            theta, f, i = self.cell(h, grad, (theta, f, i))
        return theta

    def run(self, episode: Episode, steps: int) -> Tensor:
        """Adapt on each task's support set, one task after another; query logits (B, N*Q, N)."""
        logits = [
            self.learner(
                self.adapt(episode.support_x[b], episode.support_y[b], steps), episode.query_x[b]
            )
            for b in range(episode.tasks)
        ]
        return torch.stack(logits)

    def meta_loss(self, episode: Episode) -> StepOutput:
        return classification_step(self.run(episode, self.options.inner_steps), episode.query_y)

    def predict(self, episode: Episode, steps: int | None = None) -> Tensor:
        """Query logits (B, N*Q, N) after ``steps`` meta-learner updates (default
        ``inner_steps``)."""
        if steps is not None and steps < 0:
            raise ConfigError(f"steps = {steps} is invalid: it must be at least 0")
        return self.run(episode, self.options.inner_steps if steps is None else steps)
