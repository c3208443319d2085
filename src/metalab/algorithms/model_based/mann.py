"""Memory-Augmented Neural Networks (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016).

An LSTM controller reads a label-delayed sequence (:mod:`metalab.sequences`): at step t its input is
x_t with the one-hot label of x_{t−1} and the read vectors r_{t−1}; it must predict y_t. It binds
images to labels in an external memory M (slots × width), with, per read head (§3.1):

* content read (eqs. 2-4): key k_t = tanh(W_k h_t), ``w^r_t(i) = softmax_i(cos(k_t, M_t(i)))``,
  ``r_t = Σ_i w^r_t(i) M_t(i)``;
* Least Recently Used Access writes (eqs. 5-8): usage ``w^u_t = γ w^u_{t−1} + w^r_t + w^w_t``; the
  least-used weights w^lu_t mark the n slots of smallest usage (n = read heads); write weights
  ``w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}`` with α a learned scalar gate; before writing, the
  slots marked by w^lu_{t−1} are zeroed; then ``M_t(i) = M_{t−1}(i) + w^w_t(i) k_t``.

The output ``softmax(W_o [h_t; r_t])`` predicts y_t; the loss is the cross-entropy of every step. Paper
defaults (Omniglot, one-hot labels): 200 LSTM units, 128 × 40 memory, 4 read heads, 5 classes × 10
instances per episode, batch 16, 20 × 20 images (presets: ``data.image_size: 20``). Table 1
(accuracy at the 1st/2nd/3rd/4th/5th/10th instance): MANN 36.4 / 82.8 / 91.0 / 92.6 / 94.9 / 98.1,
LSTM 24.4 / 49.5 / 55.3 / 61.0 / 63.6 / 62.5. ``memory: false`` is that LSTM baseline (x_t and the
delayed label into an LSTM, output from h_t).

Deviations: (1) with n > 1 heads, head j writes with the j-th least-used slot (w^lu's slots taken in
order of usage), so each head's write weights sum to 1; the paper's w^lu marks all n slots in every
head's write (1 head: identical). (2) γ = 0.95 and the initial state (memory 1e-6, w^r_0 head j on
slot j, usage 0) are not given in the paper. (3) Ties in usage are broken by slot index (a stable sort).
(4) The paper's 5-character string labels and per-image random translations/rotations are not
implemented; the paper's RMSProp is replaced by the engine's Adam. (5) ``encoder: conv4`` (Conv-4
features instead of raw pixels) is an option for fast CPU runs; the paper feeds flattened pixels.
Standard N-way K-shot episodes (``predict``): the support set, interleaved by a fixed permutation, is
the sequence prefix (labels delayed); each query is one more step from the prefix's final state (the
state is branched per query), with the last support label as its delayed label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, require_equal_ways
from metalab.config import Config, algorithm_options
from metalab.data.base import ClassIndexedDataset
from metalab.episodes import Episode
from metalab.errors import ConfigError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.sequences import NULL_LABEL, FixedSequences, SequenceBatch, SequenceSampler, support_order

REPORTED_INSTANCES = (1, 2, 3, 4, 5, 10)  # the columns of Santoro et al.'s Table 1


def least_used(usage: Tensor, n: int) -> Tensor:
    """w^lu: one-hot rows of the n least-used slots, in order of usage. (B, S) → (B, n, S)."""
    slots = usage.argsort(dim=-1, stable=True)[:, :n]  # (B, n)
    return F.one_hot(slots, usage.shape[-1]).to(usage.dtype)


def write_weights(read_prev: Tensor, least_used_prev: Tensor, gate: Tensor) -> Tensor:
    """Eq. (7): w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}. (B, H, S), (B, H, S), (B, H) → (B, H, S)."""
    s = torch.sigmoid(gate)[..., None]
    return s * read_prev + (1 - s) * least_used_prev


def update_usage(usage: Tensor, read: Tensor, write: Tensor, gamma: float) -> Tensor:
    """Eq. (5): w^u_t = γ w^u_{t−1} + w^r_t + w^w_t, summed over heads. (B, S), (B, H, S) ×2 → (B, S)."""
    return gamma * usage + read.sum(1) + write.sum(1)


def read_weights(keys: Tensor, memory: Tensor) -> Tensor:
    """Eqs. (2-3): softmax over slots of the cosine similarity. (B, H, W), (B, S, W) → (B, H, S)."""
    return (F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)).softmax(-1)


@dataclass
class MemoryState:
    """The recurrent state: LSTM h, c (B, U); memory (B, S, W); last read weights (B, H, S); usage (B, S);
    last read vectors (B, H·W). ``memory``… are empty tensors for the LSTM baseline."""

    h: Tensor
    c: Tensor
    memory: Tensor
    read_w: Tensor
    usage: Tensor
    reads: Tensor

    def repeat(self, m: int) -> "MemoryState":
        """Branch every state m times: (B, ...) → (B·m, ...), copies of one episode adjacent."""
        return MemoryState(*(t.repeat_interleave(m, dim=0) for t in vars(self).values()))


@ALGORITHMS.register("mann")
class MANN(MetaLearner):
    @dataclass
    class Config:
        instances: int = 10  # I: examples per class in a training sequence (paper: 10, so T = 50)
        memory: bool = True  # false: the paper's LSTM baseline (no external memory)
        controller: int = 200  # LSTM units (paper: 200)
        slots: int = 128  # memory rows (paper: 128)
        slot_width: int = 40  # memory columns (paper: 40)
        read_heads: int = 4  # n (paper: 4)
        gamma: float = 0.95  # usage decay γ
        encoder: str = "flat"  # flat: raw pixels (paper) | conv4: Conv-4 features (fast CPU runs)
        hidden: int = 64  # conv4 filters

    def __init__(self, options: "MANN.Config", input_shape: tuple[int, ...], ways: int = 5) -> None:
        super().__init__()
        if options.encoder not in ("flat", "conv4"):
            raise ConfigError(f"algorithm.encoder '{options.encoder}' is unknown; choices: flat, conv4")
        for key in ("instances", "controller", "slots", "slot_width", "read_heads"):
            if getattr(options, key) < 1:
                raise ConfigError(f"algorithm.{key} = {getattr(options, key)} is invalid: it must be at least 1")
        if options.memory and options.read_heads > options.slots:
            raise ConfigError(f"algorithm.read_heads = {options.read_heads} exceeds algorithm.slots = {options.slots}")
        self.options, self.ways = options, ways
        o = options
        if o.encoder == "conv4":
            self.encoder = build_backbone("conv4", in_channels=input_shape[0], hidden=o.hidden)
            with torch.no_grad():
                features = self.encoder(torch.zeros(2, *input_shape)).shape[-1]
        else:
            self.encoder, features = nn.Flatten(), int(torch.tensor(input_shape).prod())
        reads = o.read_heads * o.slot_width if o.memory else 0
        self.controller = nn.LSTMCell(features + ways + reads, o.controller)
        if o.memory:
            self.key = nn.Linear(o.controller, reads)  # k_t for every head
            self.gate = nn.Linear(o.controller, o.read_heads)  # α_t for every head
        self.out = nn.Linear(o.controller + reads, ways)

    @classmethod
    def from_config(cls, cfg: Config, input_shape: tuple[int, ...]) -> "MANN":
        require_equal_ways(cfg, "has one output unit per label")
        return cls(algorithm_options(cfg, cls.Config), input_shape, cfg.train.ways)

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> SequenceSampler:
        return SequenceSampler(split, cfg.train.ways, self.options.instances, cfg.train.meta_batch,
                               cfg.data.within_group)

    def initial_state(self, b: int, device: torch.device) -> MemoryState:
        o = self.options
        h = torch.zeros(b, o.controller, device=device)
        if not o.memory:
            empty = h.new_zeros(b, 0)
            return MemoryState(h, h, empty, empty, empty, empty)
        memory = torch.full((b, o.slots, o.slot_width), 1e-6, device=device)
        read_w = F.one_hot(torch.arange(o.read_heads, device=device), o.slots).float().expand(b, -1, -1)
        return MemoryState(h, h, memory, read_w, h.new_zeros(b, o.slots), h.new_zeros(b, o.read_heads * o.slot_width))

    def step(self, state: MemoryState, features: Tensor, label: Tensor) -> tuple[Tensor, MemoryState]:
        """One time step: features (B, D), delayed label (B,) (−1: none) → logits (B, N), next state."""
        o = self.options
        shown = F.one_hot(label.clamp_min(0), self.ways).float() * (label >= 0)[:, None].float()  # (B, N)
        h, c = self.controller(torch.cat([features, shown, state.reads], 1), (state.h, state.c))
        if not o.memory:
            return self.out(h), MemoryState(h, c, state.memory, state.read_w, state.usage, state.reads)
        b = h.shape[0]
        keys = torch.tanh(self.key(h)).view(b, o.read_heads, o.slot_width)  # (B, H, W)
        lu_prev = least_used(state.usage, o.read_heads)  # w^lu_{t−1} (B, H, S)
        write_w = write_weights(state.read_w, lu_prev, self.gate(h))  # (B, H, S)
        memory = state.memory * (1 - lu_prev.sum(1).clamp_max(1))[..., None]  # zero the least-used slots
        memory = memory + write_w.transpose(1, 2) @ keys  # (B, S, W)
        read_w = read_weights(keys, memory)  # (B, H, S)
        reads = (read_w @ memory).flatten(1)  # (B, H·W)
        usage = update_usage(state.usage, read_w, write_w, o.gamma)
        return self.out(torch.cat([h, reads], 1)), MemoryState(h, c, memory, read_w, usage, reads)

    def run(self, x: Tensor, delayed_y: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        """A sequence: images (B, T, C, H, W), delayed labels (B, T) → logits (B, T, N), final state."""
        b, t = delayed_y.shape
        features = self.encoder(x.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, D)
        state = self.initial_state(b, x.device) if state is None else state
        logits = []
        for i in range(t):
            out, state = self.step(state, features[:, i], delayed_y[:, i])
            logits.append(out)
        return torch.stack(logits, 1), state

    def meta_loss(self, batch: SequenceBatch) -> StepOutput:
        logits, _ = self.run(batch.x, batch.delayed_y)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.y.flatten())
        correct = (logits.argmax(-1) == batch.y).float().detach()  # (B, T)
        metrics = {"accuracy": correct.mean()}
        for k in REPORTED_INSTANCES:
            if k <= self.options.instances:
                metrics[f"instance_{k}"] = correct[batch.instance == k].mean()
        return StepOutput(loss, metrics)

    def predict(self, episode: Episode) -> Tensor:
        """Support as the prefix (fixed interleaving, delayed labels); each query one step after it. → (B, M, N)."""
        if episode.ways != self.ways:
            raise ConfigError(f"the episodes have {episode.ways} ways but this MANN has {self.ways} label "
                              f"units; evaluate with --ways {self.ways}")
        b, m = episode.query_y.shape
        prefix = support_order(episode)
        sx, sy = prefix.support_x, prefix.support_y
        delayed = torch.cat([torch.full_like(sy[:, :1], NULL_LABEL), sy[:, :-1]], 1)
        _, state = self.run(sx, delayed)
        query = self.encoder(episode.query_x.flatten(0, 1))  # (B·M, D)
        logits, _ = self.step(state.repeat(m), query, sy[:, -1].repeat_interleave(m))
        return logits.view(b, m, -1)

    def protocol_report(self, split: Any, eval_cfg: Any) -> dict[str, Any]:
        """Santoro et al.'s sequence protocol on the evaluation split: accuracy by instance number."""
        sequences = FixedSequences(split, eval_cfg.ways, self.options.instances, eval_cfg.episodes, eval_cfg.seed)
        return {"instance_accuracy": instance_accuracy(self, sequences, eval_cfg.batch)}


@torch.no_grad()
def instance_accuracy(learner: MANN, sequences: FixedSequences, batch_size: int = 25) -> dict[str, float]:
    """Santoro et al.'s Table 1 protocol: accuracy (percent) at each instance number 1..I over a fixed
    sequence set, e.g. ``{"1": 36.4, "2": 82.8, ..., "10": 98.1}``. The learner is put in eval mode."""
    was_training = learner.training
    learner.eval()
    device = next(learner.parameters()).device
    correct = torch.zeros(sequences.sampler.instances, dtype=torch.float64)
    total = torch.zeros_like(correct)
    try:
        for batch in sequences.batches(batch_size):
            batch = batch.to(device)
            hit = (learner.run(batch.x, batch.delayed_y)[0].argmax(-1) == batch.y).double().cpu().flatten()
            k = batch.instance.cpu().flatten() - 1
            correct.index_add_(0, k, hit)
            total.index_add_(0, k, torch.ones_like(hit))
    finally:
        learner.train(was_training)
    return {str(i + 1): float(100.0 * c / n) for i, (c, n) in enumerate(zip(correct, total))}
