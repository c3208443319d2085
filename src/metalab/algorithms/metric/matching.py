"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x̂ is labelled by attention over the support set S = {(x_i, y_i)} (eq. 1):
``ŷ = Σ_i a(x̂, x_i) y_i``, with the attention a softmax over cosine similarities of the embeddings
(eq. 2): ``a(x̂, x_i) = exp(c(f(x̂), g(x_i))) / Σ_j exp(c(f(x̂), g(x_j)))``. Training minimises
``−log ŷ_y`` over the query set. ``predict`` returns ``log ŷ`` (B, N*Q, N), computed stably as a
per-class log-sum-exp of the attention scores.

Full Context Embeddings (``fce: true``, the paper's appendix; f' = g' = the Conv-4 embedding):
    g(x_i, S) = h→_i + h←_i + g'(x_i)   a bidirectional LSTM over the support embeddings g'(x_i);
    f(x̂, S) = attLSTM(f'(x̂), g(S), K): for k = 1..K (``fce_steps``)
        ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1});   h_k = ĥ_k + f'(x̂)
        r_k = Σ_i softmax_i(h_k · g(x_i)) g(x_i)
    with ĥ_0 = c_0 = 0 (so h_0 = f'(x̂), r_0 a read with it; the paper leaves the start unstated).
    The LSTM whose state is [h, r] is ``nn.LSTMCell`` fed [f'(x̂), r_{k−1}]: the same gates, since
    a linear map of a concatenation is the sum of the maps of its parts.

Paper defaults (Omniglot, Table 1 — 98.1 / 98.9 / 93.8 / 98.5 for 5w1s / 5w5s / 20w1s / 20w5s,
without FCE): Conv-4 with 64 filters, cosine attention, training tasks of the test's ways and shots.
Option: ``cosine_scale`` multiplies the cosine before the softmax (the paper: 1; a larger scale
sharpens the attention and speeds up training). Deviations: the presets' optimizer and schedule are
ProtoNet's (Adam 1e-3, halved every 2000 steps), not the paper's. The support sequence of the
bidirectional LSTM is in the episode's class-major order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, classification_step, output_shape
from metalab.algorithms.distances import cosine_similarity, per_class
from metalab.config import option
from metalab.errors import ConfigError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode


def attention(query: Tensor, support: Tensor, scale: float = 1.0) -> Tensor:
    """Eq. (2): softmax over the support of scaled cosine similarities. (B, M, D), (B, S, D) →
    (B, M, S)."""
    return (scale * cosine_similarity(query, support)).softmax(-1)


def attention_log_probs(scores: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Eq. (1) on a log scale: log Σ_{i: y_i = n} softmax(scores)_i. (B, M, S), (B, S) →
    (B, M, N)."""
    return per_class(scores, labels, ways, "logsumexp") - scores.logsumexp(-1, keepdim=True)


class FullContextEmbedding(nn.Module):
    """The appendix's g(x_i, S) (bidirectional LSTM) and f(x̂, S) (attention LSTM, K read steps)."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        # input [f'(x̂), r_{k−1}], state (h_{k−1}, c_{k−1})
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def support(self, g: Tensor) -> Tensor:
        """g(x_i, S) = h→_i + h←_i + g'(x_i): (B, S, D) → (B, S, D)."""
        h, _ = self.support_lstm(g)  # (B, S, 2D): forward and backward states
        forward, backward = h.chunk(2, dim=-1)
        return forward + backward + g

    def query(self, f: Tensor, g: Tensor) -> Tensor:
        """f(x̂, S) = h_K of the attention LSTM: (B, M, D), (B, S, D) context-embedded support →
        (B, M, D)."""
        b, m, d = f.shape
        flat = f.reshape(b * m, d)
        h, c = f, torch.zeros_like(flat)  # h_0 = ĥ_0 + f' with ĥ_0 = 0
        for _ in range(self.steps):
            read = (h @ g.transpose(1, 2)).softmax(-1) @ g  # r_{k−1}: (B, M, D)
            h_hat, c = self.query_cell(
                torch.cat([flat, read.reshape(b * m, d)], -1), (h.reshape(b * m, d), c)
            )
            h = h_hat.view(b, m, d) + f
        return h


@ALGORITHMS.register("matching")
class MatchingNet(MetaLearner):
    @dataclass
    class Config:
        backbone: str = "conv4"
        hidden: int = option(64, ge=1)  # filters per conv block
        # attention = softmax(cosine_scale · cos); the paper: 1
        cosine_scale: float = option(1.0, gt=0)
        fce: bool = False  # Full Context Embeddings (the paper's appendix)
        fce_steps: int = option(5, ge=1)  # K, read steps of the attention LSTM (FCE only)

    def __init__(
        self, options: MatchingNet.Config, input_shape: tuple[int, ...], ways: int | None = None
    ) -> None:
        super().__init__(options, input_shape, ways)
        if options.fce_steps < 1:
            raise ConfigError(
                f"algorithm.fce_steps {options.fce_steps} is invalid: it must be at least 1"
            )
        if options.cosine_scale <= 0:
            raise ConfigError(
                f"algorithm.cosine_scale {options.cosine_scale} is invalid: it must be positive"
            )
        self.encoder = build_backbone(
            options.backbone, in_channels=input_shape[0], hidden=options.hidden
        )
        self.context = None
        if options.fce:
            (dim,) = output_shape(self.encoder, input_shape, f"backbone '{options.backbone}'")
            self.context = FullContextEmbedding(dim, options.fce_steps)

    def embed(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) → (B, M, D)."""
        return self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def logits(self, episode: Episode) -> Tensor:
        """log ŷ: (B, N*Q, N) log attention mass on each class."""
        s = episode.support_x.shape[1]
        # one pass, as in ProtoNet
        z = self.embed(torch.cat([episode.support_x, episode.query_x], dim=1))
        g, f = z[:, :s], z[:, s:]  # (B, S, D), (B, M, D)
        if self.context is not None:
            g = self.context.support(g)
            f = self.context.query(f, g)
        scores = self.options.cosine_scale * cosine_similarity(f, g)  # (B, M, S)
        return attention_log_probs(scores, episode.support_y, episode.ways)

    def meta_loss(self, episode: Episode) -> StepOutput:
        # log-probabilities: CE = NLL
        return classification_step(self.logits(episode), episode.query_y)

    def predict(self, episode: Episode) -> Tensor:
        return self.logits(episode)
