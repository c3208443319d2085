"""Memory-Augmented Neural Networks (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016).

An LSTM controller reads a label-delayed sequence (:mod:`metalab.tasks.sequences`): at step t its
input is x_t with the one-hot label of x_{t−1} and the read vectors r_{t−1}; it must predict y_t. It
binds images to labels in an external memory M (slots × width), with, per read head (§3.1):

* content read (eqs. 2-4): key k_t = tanh(W_k h_t), ``w^r_t(i) = softmax_i(cos(k_t, M_t(i)))``,
  ``r_t = Σ_i w^r_t(i) M_t(i)``;
* Least Recently Used Access writes (eqs. 5-8): usage ``w^u_t = γ w^u_{t−1} + w^r_t + w^w_t``; the
  least-used weights w^lu_t mark the n slots of smallest usage (n = read heads); write weights
  ``w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}`` with α a learned scalar gate; before writing,
  the slots marked by w^lu_{t−1} are zeroed; then ``M_t(i) = M_{t−1}(i) + w^w_t(i) k_t``.

The output ``softmax(W_o [h_t; r_t])`` predicts y_t; the loss is the cross-entropy of every step.
Paper defaults (Omniglot, one-hot labels): 200 LSTM units, 128 × 40 memory, 4 read heads, 5 classes
× 10 instances per episode, batch 16, 20 × 20 images (presets: ``data.image_size: 20``). Table 1
(accuracy at the 1st/2nd/3rd/4th/5th/10th instance): MANN 36.4 / 82.8 / 91.0 / 92.6 / 94.9 / 98.1,
LSTM 24.4 / 49.5 / 55.3 / 61.0 / 63.6 / 62.5. ``memory: false`` is that LSTM baseline (x_t and the
delayed label into an LSTM, output from h_t).

Labels, as in the paper's Omniglot experiments: one-hot (``labels: onehot``, one output unit per
way), or the paper's strings (``labels: string``): each label is a string of 5 characters over 5
symbols, drawn per episode and distinct within it; the label input is the concatenated one-hot codes
of its characters and the output is one softmax per character (loss: the sum of their
cross-entropies; a prediction is right when every character is). String labels do not fix the number
of ways, so such a model can be evaluated on any N.

Deviations: (1) with n > 1 heads, head j writes with the j-th least-used slot (w^lu's slots taken in
order of usage), so each head's write weights sum to 1; the paper's w^lu marks all n slots in every
head's write (1 head: identical). (2) γ = 0.95 and the initial state (memory 1e-6, w^r_0 head j on
slot j, usage 0) are not given in the paper. (3) Ties in usage are broken by slot index (a stable
sort). (4) Two options, off by default (the paper's equations), on in the CPU preset
``mann-cpu.yaml``: ``key_strength: true`` multiplies the cosine by a learned β_t = 1 +
softplus(w_β·h_t) per head (the Neural Turing Machine's content addressing; its bias starts at 9,
β_0 ≈ 10), because with cosines in [−1, 1] the unscaled softmax puts at most e²/(e² + S − 1) of a
read on the best slot; ``read_after_write: false`` computes the read from M_{t−1}, before this
step's write, because reading M_t as eqs. (2-4) are written, the slot just written with k_t matches
k_t exactly and a sharp read returns the current input's own key. Measured on the 2-core CPU: with
both options (batch 16, flat pixels) the accuracy by instance number started rising within 5
minutes; with neither (Conv-4 features, batch 8) or with β alone (pixels, batch 16) it stayed at
chance over the 200-300 steps tried (the paper trains for 100,000 episodes). (5) The paper's
per-image random translations and rotations are not in the preset; ``data.augment`` (task
augmentation, :mod:`metalab.tasks.augment`) applies such distortions to every image of every
training sequence. The engine's Adam replaces the paper's RMSProp. (6) ``encoder: conv4`` (Conv-4
features instead of raw pixels) is an option; the paper and the CPU preset feed flattened pixels
(on the CPU the Conv-4 took most of each step's time).

Standard N-way K-shot episodes (``predict``): the support set, interleaved by a fixed permutation,
is the sequence prefix (labels delayed); each query is one more step from the prefix's final state
(the state is branched per query), with the last support label as its delayed label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, StepOutput, output_shape
from metalab.config import Config, option
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError
from metalab.models import build_backbone
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import Episode
from metalab.tasks.sequences import (
    NULL_LABEL,
    FixedSequences,
    SequenceBatch,
    SequenceSampler,
    random_strings,
    support_order,
)

REPORTED_INSTANCES = (1, 2, 3, 4, 5, 10)  # the columns of Santoro et al.'s Table 1


def least_used(usage: Tensor, n: int) -> Tensor:
    """w^lu: one-hot rows of the n least-used slots, in order of usage. (B, S) → (B, n, S)."""
    slots = usage.argsort(dim=-1, stable=True)[:, :n]  # (B, n)
    return F.one_hot(slots, usage.shape[-1]).to(usage.dtype)


def write_weights(read_prev: Tensor, least_used_prev: Tensor, gate: Tensor) -> Tensor:
    """Eq. (7): w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}. (B, H, S), (B, H, S), (B, H) →
    (B, H, S)."""
    s = torch.sigmoid(gate)[..., None]
    return s * read_prev + (1 - s) * least_used_prev


def update_usage(usage: Tensor, read: Tensor, write: Tensor, gamma: float) -> Tensor:
    """Eq. (5): w^u_t = γ w^u_{t−1} + w^r_t + w^w_t, summed over heads. (B, S), (B, H, S) ×2 →
    (B, S)."""
    return gamma * usage + read.sum(1) + write.sum(1)


def read_weights(keys: Tensor, memory: Tensor, strength: Tensor | None = None) -> Tensor:
    """Eqs. (2-3): softmax over slots of the cosine similarity, optionally scaled by a key strength
    β ≥ 1 per head (the NTM's eq. 5; not in Santoro et al.). (B, H, W), (B, S, W), (B, H) →
    (B, H, S)."""
    norms = (
        keys.norm(dim=-1).clamp_min(1e-8)[..., None] * memory.norm(dim=-1).clamp_min(1e-8)[:, None]
    )  # (B, H, S)
    # dividing the (B, H, S) products, not the (B, S, W) memory
    cos = (keys @ memory.transpose(1, 2)) / norms
    return (cos if strength is None else cos * strength[..., None]).softmax(-1)


class Weights(NamedTuple):
    """The per-step weights of :meth:`MANN.recur`, prepared once per sequence by
    :meth:`MANN.weights`."""

    inputs: Tensor  # LSTM input weights for [x_t; y_{t−1}] (4U, D + D_label)
    reads: Tensor  # LSTM input weights for r_{t−1} (4U, H·W)
    bias: Tensor  # b_ih + b_hh (4U,)
    hidden: Tensor  # W_hh (4U, U)
    # key, gate and strength layers stacked ((H·W + H [+ H]), U); None without memory
    heads: Tensor | None
    heads_bias: Tensor | None


@dataclass
class MemoryState:
    """The recurrent state: LSTM h, c (B, U); memory (B, S, W); last read weights (B, H, S); usage
    (B, S); last read vectors (B, H·W). ``memory``… are empty tensors for the LSTM baseline."""

    h: Tensor
    c: Tensor
    memory: Tensor
    read_w: Tensor
    usage: Tensor
    reads: Tensor

    def repeat(self, m: int) -> MemoryState:
        """Branch every state m times: (B, ...) → (B·m, ...), copies of one episode adjacent."""
        return MemoryState(*(t.repeat_interleave(m, dim=0) for t in vars(self).values()))


@ALGORITHMS.register("mann")
class MANN(MetaLearner):
    @dataclass
    class Config:
        # I: examples per class in a training sequence (paper: 10, so T = 50)
        instances: int = option(10, ge=1)
        memory: bool = True  # false: the paper's LSTM baseline (no external memory)
        controller: int = option(200, ge=1)  # LSTM units (paper: 200)
        slots: int = option(128, ge=1)  # memory rows (paper: 128)
        slot_width: int = option(40, ge=1)  # memory columns (paper: 40)
        read_heads: int = option(4, ge=1)  # n (paper: 4)
        gamma: float = option(0.95, ge=0, le=1)  # usage decay γ
        encoder: str = "flat"  # flat: raw pixels (paper) | conv4: Conv-4 features (fast CPU runs)
        hidden: int = option(64, ge=1)  # conv4 filters
        # read M_t (eqs. 2-4 as written) | false: read M_{t−1} (deviation)
        read_after_write: bool = True
        # true: learned β_t ≥ 1 sharpens the cosine read (the NTM's; deviation)
        key_strength: bool = False
        labels: str = "onehot"  # onehot: one unit per way | string: the paper's 5-character strings
        label_length: int = option(5, ge=1)  # characters per string label (paper: 5)
        label_alphabet: int = option(5, ge=2)  # symbols per character (paper: 5, "a"-"e")

    def __init__(self, options: MANN.Config, input_shape: tuple[int, ...], ways: int = 5) -> None:
        super().__init__(options, input_shape, ways)
        if options.encoder not in ("flat", "conv4"):
            raise ConfigError(
                f"algorithm.encoder '{options.encoder}' is unknown; choices: flat, conv4"
            )
        for key in ("instances", "controller", "slots", "slot_width", "read_heads"):
            if getattr(options, key) < 1:
                raise ConfigError(
                    f"algorithm.{key} = {getattr(options, key)} is invalid: it must be at least 1"
                )
        if options.labels not in ("onehot", "string"):
            raise ConfigError(
                f"algorithm.labels '{options.labels}' is unknown; choices: onehot, string"
            )
        if options.labels == "string" and min(options.label_length, options.label_alphabet) < 1:
            raise ConfigError(
                "algorithm.label_length and algorithm.label_alphabet must be at least 1"
            )
        if options.memory and options.read_heads > options.slots:
            raise ConfigError(
                f"algorithm.read_heads = {options.read_heads} exceeds algorithm.slots = "
                f"{options.slots}"
            )
        self.fixed_ways = options.labels == "onehot"  # one output unit per way; strings: any N
        o = options
        if o.encoder == "conv4":
            self.encoder = build_backbone("conv4", in_channels=input_shape[0], hidden=o.hidden)
            (features,) = output_shape(self.encoder, input_shape, "MANN's conv4 encoder")
        else:
            self.encoder, features = nn.Flatten(), int(torch.tensor(input_shape).prod())
        reads = self.reads_size = o.read_heads * o.slot_width if o.memory else 0
        # label input and output size
        label = o.label_length * o.label_alphabet if o.labels == "string" else ways
        self.controller = nn.LSTMCell(features + label + reads, o.controller)
        self.strength = None
        if o.memory:
            self.key = nn.Linear(o.controller, reads)  # k_t for every head
            self.gate = nn.Linear(o.controller, o.read_heads)  # α_t for every head
            self.strength = nn.Linear(o.controller, o.read_heads) if o.key_strength else None  # β_t
            # start sharp: β_0 ≈ 10, so a read picks out the best-matching slot
            if self.strength is not None:
                nn.init.constant_(self.strength.bias, 9.0)
        self.out = nn.Linear(o.controller + reads, label)

    @property
    def string_labels(self) -> tuple[int, int]:
        """(characters, alphabet) of string labels; (0, 5) for one-hot labels."""
        o = self.options
        return (o.label_length, o.label_alphabet) if o.labels == "string" else (0, o.label_alphabet)

    def train_sampler(self, split: ClassIndexedDataset, cfg: Config) -> SequenceSampler:
        return SequenceSampler(
            split,
            cfg.train.ways,
            self.options.instances,
            cfg.train.meta_batch,
            cfg.data.within_group,
            *self.string_labels,
        )

    def encode_labels(self, labels: Tensor, strings: Tensor | None = None) -> Tensor:
        """The label inputs: (B, T) labels (NULL_LABEL: none) → (B, T, D) one-hot codes, or for
        string labels the one-hot codes of the label's characters, concatenated (strings
        (B, N, L))."""
        dtype = self.out.weight.dtype
        known = (labels >= 0)[..., None].to(dtype)
        labels = labels.clamp_min(0)
        if self.options.labels == "onehot":
            return F.one_hot(labels, self.ways).to(dtype) * known
        chars = strings.gather(1, labels[..., None].expand(-1, -1, strings.shape[-1]))  # (B, T, L)
        return F.one_hot(chars, self.options.label_alphabet).flatten(-2).to(dtype) * known

    def score(
        self, logits: Tensor, y: Tensor, strings: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Loss and correctness of the outputs (B, T, D) for labels y (B, T): cross-entropy of the
        label, or for string labels the sum over characters of each character's cross-entropy
        (independent softmaxes), a step being correct when every character is."""
        if self.options.labels == "onehot":
            return F.cross_entropy(logits.flatten(0, 1), y.flatten()), logits.argmax(-1) == y
        chars = strings.gather(1, y[..., None].expand(-1, -1, strings.shape[-1]))  # (B, T, L)
        # (B, T, L, A)
        logits = logits.unflatten(-1, (chars.shape[-1], self.options.label_alphabet))
        loss = F.cross_entropy(logits.flatten(0, 2), chars.flatten()) * chars.shape[-1]
        return loss, (logits.argmax(-1) == chars).all(-1)

    def initial_state(self, b: int, device: torch.device) -> MemoryState:
        o = self.options
        h = torch.zeros(b, o.controller, device=device, dtype=self.out.weight.dtype)
        if not o.memory:
            empty = h.new_zeros(b, 0)
            return MemoryState(h, h, empty, empty, empty, empty)
        memory = h.new_full((b, o.slots, o.slot_width), 1e-6)
        read_w = (
            F.one_hot(torch.arange(o.read_heads, device=device), o.slots)
            .to(h.dtype)
            .expand(b, -1, -1)
        )
        return MemoryState(
            h,
            h,
            memory,
            read_w,
            h.new_zeros(b, o.slots),
            h.new_zeros(b, o.read_heads * o.slot_width),
        )

    def weights(self) -> Weights:
        """The step's weight matrices, sliced and merged once per sequence rather than once per
        step: the LSTM's input weights split into the part applied to [x_t; y_{t−1}] (computed for
        the whole sequence in one product) and the part applied to r_{t−1}; the key, gate and
        key-strength layers as one."""
        lstm = self.controller
        n = lstm.weight_ih.shape[1] - self.reads_size
        heads = (
            [m for m in (self.key, self.gate, self.strength) if m is not None]
            if self.options.memory
            else []
        )
        return Weights(
            lstm.weight_ih[:, :n],
            lstm.weight_ih[:, n:].contiguous(),
            lstm.bias_ih + lstm.bias_hh,
            lstm.weight_hh,
            torch.cat([m.weight for m in heads]) if heads else None,
            torch.cat([m.bias for m in heads]) if heads else None,
        )

    def recur(self, state: MemoryState, gates_in: Tensor, w: Weights) -> MemoryState:
        """One time step from the inputs' share of the LSTM gates, W_x [x_t; y_{t−1}] + b (B, 4U) →
        next state. The cell is ``nn.LSTMCell``'s (gates i, f, g, o), its weights applied to
        [x_t; y_{t−1}; r_{t−1}]."""
        o = self.options
        gates = gates_in + state.h @ w.hidden.T
        if o.memory:
            gates = gates + state.reads @ w.reads.T
        i, f, g, out = gates.chunk(4, 1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(out) * torch.tanh(c)
        if not o.memory:
            return MemoryState(h, c, state.memory, state.read_w, state.usage, state.reads)
        b, heads = h.shape[0], o.read_heads
        sizes = [self.reads_size, heads] + ([heads] if self.strength is not None else [])
        # [key | gate α | strength β]
        key, gate, *beta = F.linear(h, w.heads, w.heads_bias).split(sizes, 1)
        keys = torch.tanh(key).view(b, heads, o.slot_width)  # (B, H, W)
        lu_prev = least_used(state.usage, heads)  # w^lu_{t−1} (B, H, S)
        write_w = write_weights(state.read_w, lu_prev, gate)  # (B, H, S)
        strength = 1 + F.softplus(beta[0]) if beta else None  # β_t ≥ 1 (B, H)
        if not o.read_after_write:  # read M_{t−1}: the slot written now cannot match its own key
            read_w = read_weights(keys, state.memory, strength)  # (B, H, S)
            reads = (read_w @ state.memory).flatten(1)  # (B, H·W)
        # zero the least-used slots
        memory = state.memory * (1 - lu_prev.sum(1).clamp_max(1))[..., None]
        memory = memory + write_w.transpose(1, 2) @ keys  # (B, S, W)
        if o.read_after_write:  # eqs. (2-4) as written: read M_t, which already holds k_t
            read_w = read_weights(keys, memory, strength)  # (B, H, S)
            reads = (read_w @ memory).flatten(1)  # (B, H·W)
        usage = update_usage(state.usage, read_w, write_w, o.gamma)
        return MemoryState(h, c, memory, read_w, usage, reads)

    def step(
        self, state: MemoryState, features: Tensor, shown: Tensor
    ) -> tuple[Tensor, MemoryState]:
        """One time step: features (B, D), the delayed label's code (B, D_label) → logits
        (B, D_label), next state."""
        w = self.weights()
        state = self.recur(state, F.linear(torch.cat([features, shown], -1), w.inputs, w.bias), w)
        return self.out(torch.cat([state.h, state.reads], 1)), state

    def run(
        self,
        x: Tensor,
        delayed_y: Tensor,
        strings: Tensor | None = None,
        state: MemoryState | None = None,
    ) -> tuple[Tensor, MemoryState]:
        """A sequence: images (B, T, C, H, W), delayed labels (B, T) (and the string of each label,
        (B, N, L), for string labels) → logits (B, T, D_label), final state. The same as ``step`` T
        times, with the products that do not depend on the recurrence (the inputs' share of the LSTM
        gates, the output layer) done once for the whole sequence."""
        b, t = delayed_y.shape
        features = self.encoder(x.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, D)
        shown = self.encode_labels(delayed_y, strings)  # (B, T, D_label)
        w = self.weights()
        gates_in = F.linear(torch.cat([features, shown], -1), w.inputs, w.bias)  # (B, T, 4U)
        state = self.initial_state(b, x.device) if state is None else state
        outputs = []
        # unbind: one backward op, not T zero-filled (B, T, 4U) buffers
        for step_gates in gates_in.unbind(1):
            state = self.recur(state, step_gates, w)
            outputs.append(torch.cat([state.h, state.reads], 1))
        return self.out(torch.stack(outputs, 1)), state

    def meta_loss(self, batch: SequenceBatch) -> StepOutput:
        logits, _ = self.run(batch.x, batch.delayed_y, batch.strings)
        loss, correct = self.score(logits, batch.y, batch.strings)
        correct = correct.float().detach()  # (B, T)
        metrics = {"accuracy": correct.mean()}
        for k in REPORTED_INSTANCES:
            if k <= self.options.instances:
                metrics[f"instance_{k}"] = correct[batch.instance == k].mean()
        return StepOutput(loss, metrics)

    def predict(self, episode: Episode) -> Tensor:
        """Support as the prefix (fixed interleaving, delayed labels); each query one step after it.
        → (B, M, N). String labels: label n is the n-th of a fixed draw of distinct strings (seed
        0), and a class's score is the log-probability of its string (the sum over its
        characters)."""
        o, n = self.options, episode.ways
        b, m = episode.query_y.shape
        strings = None
        if o.labels == "string":
            strings = random_strings(
                n, o.label_length, o.label_alphabet, torch.Generator().manual_seed(0)
            )
            strings = strings.to(episode.support_y.device).expand(b, -1, -1)  # (B, N, L)
        prefix = support_order(episode)
        sx, sy = prefix.support_x, prefix.support_y
        delayed = torch.cat([torch.full_like(sy[:, :1], NULL_LABEL), sy[:, :-1]], 1)
        _, state = self.run(sx, delayed, strings)
        query = self.encoder(episode.query_x.flatten(0, 1))  # (B·M, D)
        # (B·M, D_label)
        last = self.encode_labels(sy[:, -1:], strings)[:, 0].repeat_interleave(m, dim=0)
        logits, _ = self.step(state.repeat(m), query, last)
        if o.labels == "onehot":
            return logits.view(b, m, -1)
        logp = logits.view(b, m, o.label_length, o.label_alphabet).log_softmax(-1)  # (B, M, L, A)
        chars = strings[:, None].expand(-1, m, -1, -1)  # (B, M, N, L)
        # Σ_l log p(char_l of class n): (B, M, N)
        return logp.gather(3, chars.transpose(2, 3)).sum(2)

    def protocol_report(self, split: Any, eval_cfg: Any) -> dict[str, Any]:
        """Santoro et al.'s sequence protocol on the evaluation split: accuracy by instance
        number."""
        if self.fixed_ways and eval_cfg.ways != self.ways:
            return {}  # predict() explains the mismatch
        sequences = FixedSequences(
            split,
            eval_cfg.ways,
            self.options.instances,
            eval_cfg.episodes,
            eval_cfg.seed,
            False,
            *self.string_labels,
        )
        return {"instance_accuracy": instance_accuracy(self, sequences, eval_cfg.batch)}


@torch.no_grad()
def instance_accuracy(
    learner: MANN, sequences: FixedSequences, batch_size: int = 25
) -> dict[str, float]:
    """Santoro et al.'s Table 1 protocol: accuracy (percent) at each instance number 1..I over a
    fixed sequence set, e.g. ``{"1": 36.4, "2": 82.8, ..., "10": 98.1}``. The learner is put in eval
    mode."""
    device = next(learner.parameters()).device
    correct = torch.zeros(sequences.sampler.instances, dtype=torch.float64)
    total = torch.zeros_like(correct)
    with learner.eval_mode():
        for batch in sequences.batches(batch_size):
            batch = batch.to(device)
            hit = (
                learner.score(
                    learner.run(batch.x, batch.delayed_y, batch.strings)[0], batch.y, batch.strings
                )[1]
                .double()
                .cpu()
                .flatten()
            )
            k = batch.instance.cpu().flatten() - 1
            correct.index_add_(0, k, hit)
            total.index_add_(0, k, torch.ones_like(hit))
    return {str(i + 1): float(100.0 * c / n) for i, (c, n) in enumerate(zip(correct, total))}
