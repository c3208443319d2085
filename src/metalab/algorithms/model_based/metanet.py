"""Meta Networks (Munkhdalai & Yu, ICML 2017), simplified where the paper leaves room (see below).

A base learner b and a representation learner u, each with slow weights (meta-learned) and fast
weights generated per task from the support set's loss gradients, the meta information (§3, Alg. 1):

1. Task-level fast weights: the gradient of an embedding loss of u on the support set,
   ``∇_Q L_emb``, is mapped by the meta learner d to Q* (eq. 3-4).
2. Example-level fast weights: for every support example, the gradient of the base learner's loss
   ``∇_W L_task(b(W; x'_i), y'_i)`` is mapped by the meta learner m to W*_i (eq. 5), stored in a
   memory M = [W*_i] under the key r'_i = u(Q, Q*; x'_i).
3. A query x reads its fast weights by soft attention, ``a = softmax(cos(R, u(Q, Q*; x)))``,
   ``W* = aᵀ M`` (eq. 6-7), and is classified by b(W, W*; x).

Layer augmentation (§3.3): an augmented layer with slow weights W and fast weights W* outputs
``relu(W h) + relu(W* h)`` (the output layer: the sum of both pre-softmax scores). Meta learners m
and d act on each gradient coordinate independently, after Andrychowicz et al.'s preprocessing
``(clamp(log|g| / p, −1), clamp(e^p g, −1, 1))`` with p = 10, as in the paper. Reported (Omniglot,
Table 1): 98.95 (5w1s), 97.00 (20w1s).

Deviations: (1) only the fully connected heads carry fast weights: b = Conv-4 features → augmented
hidden layer → augmented output layer; u = Conv-4 features → one augmented layer (the paper augments
its convolutional layers too). (2) L_emb is a pairwise loss over all support pairs,
``BCE(σ(5·cos(r_i, r_j)), [y_i = y_j])``; the paper's d is an LSTM over T sampled examples'
gradients, here an MLP on the mean gradient. (3) The base learner's per-example gradients are
computed in closed form and, like ∇_Q L_emb, treated as inputs (no second derivatives). (4) The
attention's cosine is multiplied by a learned scale (initially 10), else the softmax over few slots
is nearly uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, classification_step, output_shape
from metalab.config import option
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode


def preprocess(grad: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016), appendix A: each coordinate → 2 features. (...) → (..., 2)."""
    log = (grad.abs().clamp_min(1e-30).log() / p).clamp_min(-1.0)
    return torch.stack([log, (math.exp(p) * grad).clamp(-1.0, 1.0)], -1)


class CoordinateMLP(nn.Module):
    """A meta learner applied to every gradient coordinate independently: (...) → (...)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, grad: Tensor) -> Tensor:
        return self.net(preprocess(grad)).squeeze(-1)


@ALGORITHMS.register("metanet")
class MetaNet(MetaLearner):
    fixed_ways = True  # the base learner has one output per way

    @dataclass
    class Config:
        backbone: str = "conv4"  # body of both the base and the representation learner
        hidden: int = option(64, ge=1)  # conv filters
        head_hidden: int = 64  # units of the base learner's augmented hidden layer (and of u's)
        meta_hidden: int = 20  # hidden units of the coordinate-wise meta learners m and d

    def __init__(
        self, options: MetaNet.Config, input_shape: tuple[int, ...], ways: int = 5
    ) -> None:
        super().__init__(options, input_shape, ways)
        o, c = options, input_shape[0]
        # b's convolutions
        self.base_body = build_backbone(o.backbone, in_channels=c, hidden=o.hidden)
        # u's convolutions
        self.repr_body = build_backbone(o.backbone, in_channels=c, hidden=o.hidden)
        (d,) = output_shape(self.base_body, input_shape, f"backbone '{o.backbone}'")
        h = o.head_hidden
        self.w1 = nn.Parameter(torch.randn(h, d) / math.sqrt(d))  # b's slow hidden layer W1
        self.w2 = nn.Parameter(torch.randn(ways, h) / math.sqrt(h))  # b's slow output layer W2
        self.q = nn.Parameter(torch.randn(h, d) / math.sqrt(d))  # u's slow layer Q
        self.m = CoordinateMLP(o.meta_hidden)  # example-level fast weights
        self.d = CoordinateMLP(o.meta_hidden)  # task-level fast weights
        self.attention_scale = nn.Parameter(torch.tensor(10.0))

    def represent(self, feats: Tensor, q_fast: Tensor | None) -> Tensor:
        """u: (B, n, D) features, (B, H, D) task fast weights Q* (or None) → (B, n, H)."""
        r = F.relu(feats @ self.q.T)
        return r if q_fast is None else r + F.relu(feats @ q_fast.transpose(1, 2))

    def task_fast_weights(self, feats: Tensor, labels: Tensor) -> Tensor:
        """Q* = d(∇_Q L_emb) from the support pairs: (B, S, D), (B, S) → (B, H, D)."""
        with torch.enable_grad():
            # one copy per task
            q = self.q.detach().expand(labels.shape[0], -1, -1).clone().requires_grad_()
            r = F.normalize(F.relu(feats.detach() @ q.transpose(1, 2)), dim=-1)  # (B, S, H)
            same = (labels[:, :, None] == labels[:, None, :]).float()  # (B, S, S)
            pairs = 1 - torch.eye(labels.shape[1], device=labels.device)  # all pairs i ≠ j
            loss = F.binary_cross_entropy_with_logits(
                5 * r @ r.transpose(1, 2), same, reduction="none"
            )
            task_losses = (loss * pairs).sum((1, 2)) / pairs.sum().clamp_min(1)  # (B,)
            # (B, H, D): each task's own gradient
            (grads,) = torch.autograd.grad(task_losses.sum(), q)
        return self.d(grads)

    def example_fast_weights(self, feats: Tensor, labels: Tensor) -> Tensor:
        """W*_i = m(∇_W L_task(b(W; x'_i), y'_i)), in closed form for b's two slow layers.
        (B, S, D), (B, S) → (B, S, P) with P = H·D + N·H, the memory M."""
        feats = feats.detach()
        pre = feats @ self.w1.T.detach()  # (B, S, H)
        hid = F.relu(pre)
        # ∂L/∂logits (B, S, N)
        err = (hid @ self.w2.T.detach()).softmax(-1) - F.one_hot(labels, self.ways).float()
        g2 = err[..., :, None] * hid[..., None, :]  # (B, S, N, H)
        delta = (err @ self.w2.detach()) * (pre > 0)  # (B, S, H)
        g1 = delta[..., :, None] * feats[..., None, :]  # (B, S, H, D)
        return self.m(torch.cat([g1.flatten(2), g2.flatten(2)], -1))

    def logits(self, episode: Episode) -> Tensor:
        """(B, N*Q, N) scores of b(W, W*) with each query's fast weights read from the support
        memory."""
        b, s = episode.support_y.shape
        x = torch.cat([episode.support_x, episode.query_x], 1).flatten(0, 1)
        base = self.base_body(x).unflatten(0, (b, -1))  # (B, S + M, D)
        rep = self.repr_body(x).unflatten(0, (b, -1))
        q_fast = self.task_fast_weights(rep[:, :s], episode.support_y)
        memory = self.example_fast_weights(base[:, :s], episode.support_y)  # (B, S, P)
        keys = F.normalize(self.represent(rep[:, :s], q_fast), dim=-1)  # (B, S, H)
        query = F.normalize(self.represent(rep[:, s:], q_fast), dim=-1)  # (B, M, H)
        attention = (self.attention_scale * query @ keys.transpose(1, 2)).softmax(-1)  # (B, M, S)
        fast = attention @ memory  # (B, M, P)
        h, d = self.w1.shape
        w1_fast = fast[..., : h * d].unflatten(-1, (h, d))  # (B, M, H, D)
        w2_fast = fast[..., h * d :].unflatten(-1, (self.ways, h))  # (B, M, N, H)
        fq = base[:, s:]  # (B, M, D)
        # layer augmentation
        hid = F.relu(fq @ self.w1.T) + F.relu((w1_fast @ fq[..., None]).squeeze(-1))
        return hid @ self.w2.T + (w2_fast @ hid[..., None]).squeeze(-1)

    def meta_loss(self, episode: Episode) -> StepOutput:
        return classification_step(self.logits(episode), episode.query_y)

    def predict(self, episode: Episode) -> Tensor:
        return self.logits(episode)
