"""The model-based family: LRUA memory addressing, causality of MANN and SNAIL, the sequence
sampler,
and Meta Networks' fast weights. Small synthetic data: fast."""

from __future__ import annotations

import pytest
import torch

from metalab.algorithms.model_based import mann as mann_module
from metalab.algorithms.model_based.mann import (
    MANN,
    least_used,
    read_weights,
    update_usage,
    write_weights,
)
from metalab.algorithms.model_based.snail import SNAIL
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError, DataError
from metalab.tasks.episodes import EpisodeSampler
from metalab.tasks.sequences import (
    NULL_LABEL,
    FixedSequences,
    SequenceSampler,
    ShuffledSupportSampler,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset() -> ClassIndexedDataset:
    g = torch.Generator().manual_seed(0)
    per_class = [
        torch.randint(0, 256, (12, 1, 16, 16), generator=g, dtype=torch.uint8) for _ in range(9)
    ]
    return ClassIndexedDataset.from_class_tensors("toy", per_class, [f"c{i}" for i in range(9)])


# --- sequence sampler ---------------------------------------------------------------------------


def test_sequence_invariants(dataset):
    sampler = SequenceSampler(dataset, ways=3, instances=4, meta_batch=5)
    batch = sampler.sample(torch.Generator().manual_seed(1))
    assert batch.x.shape == (5, 12, 1, 16, 16) and batch.y.shape == batch.instance.shape == (5, 12)
    for b in range(5):
        assert torch.equal(
            torch.bincount(batch.y[b], minlength=3), torch.full((3,), 4)
        )  # each class I times
        for n in range(3):  # instance numbers count appearances 1..I in order
            assert batch.instance[b][batch.y[b] == n].tolist() == [1, 2, 3, 4]
        # every image of label n comes from class classes[b, n]
        for t in range(12):
            c = int(batch.classes[b, batch.y[b, t]])
            lo = int(dataset.offsets[c])
            assert any(
                torch.equal(batch.x[b, t], dataset.images[i].float() / 255)
                for i in range(lo, lo + 12)
            )
    assert torch.equal(batch.delayed_y[:, 0], torch.full((5,), NULL_LABEL))
    assert torch.equal(batch.delayed_y[:, 1:], batch.y[:, :-1])
    # labels shuffled per episode: the class → label map is not the sorted order everywhere
    many = sampler.sample_indices(torch.Generator().manual_seed(2), tasks=200)
    assert not (many.classes.diff(dim=1) > 0).all()
    first = many.order[:, 0] // 4  # the first step's label is uniform-ish over 0..N-1
    assert set(first.tolist()) == {0, 1, 2}


def test_fixed_sequences_reproducible(dataset):
    a = FixedSequences(dataset, 3, 4, count=5, seed=3)
    b = FixedSequences(dataset, 3, 4, count=5, seed=3)
    one = next(a.batches(5))
    split = list(b.batches(2))
    assert torch.equal(one.x, torch.cat([s.x for s in split])) and torch.equal(
        one.y, torch.cat([s.y for s in split])
    )
    other = next(FixedSequences(dataset, 3, 4, count=5, seed=4).batches(5))
    assert not torch.equal(one.x, other.x)


def test_shuffled_support_sampler(dataset):
    ep = ShuffledSupportSampler(EpisodeSampler(dataset, 3, 2, 1, 4)).sample(
        torch.Generator().manual_seed(0)
    )
    assert torch.equal(ep.support_y.sort(1).values, torch.tensor([0, 0, 1, 1, 2, 2]).expand(4, 6))
    assert not (ep.support_y.diff(dim=1) >= 0).all()  # not all in class-major order


# --- LRUA memory addressing --------------------------------------------------------------------


def test_lrua_usage_by_hand():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.1]])  # ties broken by slot index
    lu = least_used(usage, 2)  # slots 1 and 3, in that order
    assert torch.equal(lu, torch.tensor([[[0.0, 1, 0, 0], [0, 0, 0, 1]]]))
    read_prev = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 1.0, 0]]])
    gate = torch.tensor([[0.0, 0.0]])  # σ = 0.5
    w = write_weights(read_prev, lu, gate)
    assert torch.allclose(w, torch.tensor([[[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]]))
    read = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.0, 0, 0, 1]]])
    new = update_usage(usage, read, w, gamma=0.9)
    # γ·u + Σ_heads (w^r + w^w): slot 0: 0.45 + 0.25 + 0.5; slot 3: 0.09 + 1.25 + 0.5
    assert torch.allclose(new, torch.tensor([[1.2, 0.84, 1.56, 1.84]]))


@pytest.mark.parametrize("sharp_read_first", [False, True])
def test_read_and_write_weights_sum_to_one(sharp_read_first):
    torch.manual_seed(0)
    options = MANN.Config(
        controller=16,
        slots=8,
        slot_width=5,
        read_heads=3,
        key_strength=sharp_read_first,
        read_after_write=not sharp_read_first,
    )
    learner = MANN(options, (1, 6, 6), ways=3)
    keys = torch.randn(2, 3, 5)
    assert torch.allclose(read_weights(keys, torch.randn(2, 8, 5)).sum(-1), torch.ones(2, 3))
    state = learner.initial_state(2, torch.device("cpu"))
    for t in range(6):
        prev = state
        _, state = learner.step(
            state, torch.randn(2, 36), learner.encode_labels(torch.tensor([[t % 3 - 1], [1]]))[:, 0]
        )
        assert torch.allclose(state.read_w.sum(-1), torch.ones(2, 3), atol=1e-5)
        h = state.h
        w = write_weights(prev.read_w, least_used(prev.usage, 3), learner.gate(h))
        assert torch.allclose(w.sum(-1), torch.ones(2, 3), atol=1e-5)
        assert torch.allclose(
            state.usage, update_usage(prev.usage, state.read_w, w, 0.95), atol=1e-5
        )


# --- causality ---------------------------------------------------------------------------------

VARIANTS = {
    "paper": {},
    "lstm": {"memory": False},  # last: the CPU preset (NTM key strength, read before write)
    "sharp-read-first": {"key_strength": True, "read_after_write": False},
    "string-labels": {"labels": "string", "label_length": 3, "label_alphabet": 2},
}


def test_read_before_write_reads_the_previous_memory():
    torch.manual_seed(0)
    learner = MANN(
        MANN.Config(
            controller=16,
            slots=8,
            slot_width=5,
            read_heads=2,
            key_strength=True,
            read_after_write=False,
        ),
        (1, 6, 6),
        ways=3,
    )
    state = learner.initial_state(2, torch.device("cpu"))
    for t in range(4):
        prev = state
        _, state = learner.step(
            state, torch.randn(2, 36), learner.encode_labels(torch.tensor([[t % 3 - 1], [1]]))[:, 0]
        )
        keys = torch.tanh(learner.key(state.h)).view(2, 2, 5)
        strength = 1 + torch.nn.functional.softplus(learner.strength(state.h))
        assert (strength >= 1).all()
        want = read_weights(keys, prev.memory, strength)  # M_{t−1}, sharpened by β_t
        assert torch.allclose(state.read_w, want, atol=1e-6)
        assert torch.allclose(state.reads, (want @ prev.memory).flatten(1), atol=1e-6)
    assert not torch.allclose(state.memory, prev.memory)  # it still writes


def _small_mann(dataset, variant):
    """A small MANN of one variant (3 ways) and a batch of 2 sequences of 3 classes × 4 instances
    for it."""
    torch.manual_seed(0)
    options = MANN.Config(controller=16, slots=8, slot_width=5, read_heads=2, **VARIANTS[variant])
    learner = MANN(options, (1, 16, 16), 3)
    batch = SequenceSampler(dataset, 3, 4, 2, False, *learner.string_labels).sample(
        torch.Generator().manual_seed(0)
    )
    return learner, batch


@pytest.mark.parametrize("variant", VARIANTS)
def test_mann_causal(dataset, variant):
    learner, batch = _small_mann(dataset, variant)
    learner.eval()
    x, delayed = batch.x, batch.delayed_y
    base = learner.run(x, delayed, batch.strings)[0]
    t = 5
    x2, d2 = x.clone(), delayed.clone()
    x2[:, t + 1 :] = torch.rand_like(x2[:, t + 1 :])  # later images
    d2[:, t + 1 :] = (d2[:, t + 1 :] + 1) % 3  # y_t and later labels (y_t is shown at step t + 1)
    out = learner.run(x2, d2, batch.strings)[0]
    assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
    assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def _reference_run(learner, x, delayed, strings=None):
    """MANN as first written, one nn.LSTMCell call and one layer call per step, for run()'s batched
    products."""
    o, (b, t) = learner.options, delayed.shape
    state = learner.initial_state(b, x.device)
    h, c, memory, read_w, usage, reads = vars(state).values()
    features, shown, outputs = x.flatten(2), learner.encode_labels(delayed, strings), []
    for i in range(t):
        h, c = learner.controller(torch.cat([features[:, i], shown[:, i], reads], 1), (h, c))
        if o.memory:
            keys = torch.tanh(learner.key(h)).view(b, o.read_heads, o.slot_width)
            lu = least_used(usage, o.read_heads)
            write_w = write_weights(read_w, lu, learner.gate(h))
            strength = (
                1 + torch.nn.functional.softplus(learner.strength(h)) if o.key_strength else None
            )
            new_memory = (
                memory * (1 - lu.sum(1).clamp_max(1))[..., None] + write_w.transpose(1, 2) @ keys
            )
            read_from = new_memory if o.read_after_write else memory
            read_w = (
                torch.nn.functional.normalize(keys, dim=-1)
                @ torch.nn.functional.normalize(read_from, dim=-1).mT
            )
            read_w = (read_w * (strength[..., None] if strength is not None else 1)).softmax(-1)
            reads, memory = (read_w @ read_from).flatten(1), new_memory
            usage = update_usage(usage, read_w, write_w, o.gamma)
        outputs.append(learner.out(torch.cat([h, reads], 1)))
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mann_run_matches_step_by_step_reference(dataset, variant):
    """run() batches the products that do not depend on the recurrence; outputs and gradients are
    unchanged."""
    learner, batch = _small_mann(dataset, variant)
    learner.double()
    x = batch.x.double()
    got = learner.run(x, batch.delayed_y, batch.strings)[0]
    want = _reference_run(learner, x, batch.delayed_y, batch.strings)
    assert torch.allclose(got, want, atol=1e-12)
    params = list(learner.parameters())
    for g, r in zip(
        torch.autograd.grad(got.square().sum(), params),
        torch.autograd.grad(want.square().sum(), params),
    ):
        assert torch.allclose(g, r, atol=1e-10)


def test_mann_predict_queries_independent(dataset):
    torch.manual_seed(0)
    learner = MANN(
        MANN.Config(controller=16, slots=8, slot_width=5, read_heads=2), (1, 16, 16), 3
    ).eval()
    ep = EpisodeSampler(dataset, 3, 2, 2, 2).sample(torch.Generator().manual_seed(0))
    logits = learner.predict(ep)
    assert logits.shape == (2, 6, 3)
    ep.query_x[:, 1:] = torch.rand_like(ep.query_x[:, 1:])  # other queries
    ep.query_y[:, 0] = 2  # the query's own label is never an input
    assert torch.allclose(learner.predict(ep)[:, 0], logits[:, 0], atol=1e-6)


def test_string_label_sampler(dataset):
    from metalab.tasks.sequences import random_strings

    sampler = SequenceSampler(
        dataset, ways=4, instances=3, meta_batch=6, label_length=3, label_alphabet=2
    )
    batch = sampler.sample(torch.Generator().manual_seed(0))
    assert (
        batch.strings.shape == (6, 4, 3) and batch.strings.min() >= 0 and batch.strings.max() <= 1
    )
    for b in range(6):  # distinct within an episode
        assert len({tuple(r) for r in batch.strings[b].tolist()}) == 4
    assert (
        len({tuple(batch.strings[b].flatten().tolist()) for b in range(6)}) > 1
    )  # drawn per episode
    again = sampler.sample(torch.Generator().manual_seed(0))
    assert torch.equal(again.strings, batch.strings) and torch.equal(again.x, batch.x)
    plain = SequenceSampler(dataset, ways=4, instances=3, meta_batch=6).sample(
        torch.Generator().manual_seed(0)
    )
    assert plain.strings is None and torch.equal(
        plain.y, batch.y
    )  # strings are drawn after everything else
    with pytest.raises(DataError, match="label_length"):
        random_strings(5, 2, 2, torch.Generator())  # 2^2 = 4 strings cannot name 5 classes
    with pytest.raises(DataError, match="label_length"):
        SequenceSampler(
            dataset, ways=5, instances=3, label_length=2, label_alphabet=2
        )  # refused up front
    with pytest.raises(ConfigError, match="algorithm.labels 'words'"):
        MANN(MANN.Config(labels="words"), (1, 16, 16), ways=3)


def test_string_labels_score_and_any_ways(dataset):
    torch.manual_seed(0)
    options = MANN.Config(
        controller=16,
        slots=8,
        slot_width=5,
        read_heads=2,
        labels="string",
        label_length=2,
        label_alphabet=3,
    )
    learner = MANN(options, (1, 16, 16), ways=3).eval()
    strings = torch.tensor([[[0, 1], [2, 2], [1, 0]]])  # labels 0, 1, 2 of one episode
    logits = torch.full((1, 2, 6), -5.0)
    logits[0, 0, [0, 4]] = 5.0  # step 0 says "0 1": label 0, right
    logits[0, 1, [2, 3]] = 5.0  # step 1 says "2 0": first character right, second wrong for label 1
    loss, correct = learner.score(logits, torch.tensor([[0, 1]]), strings)
    assert correct.tolist() == [[True, False]] and loss > 0
    assert learner.encode_labels(torch.tensor([[-1, 1]]), strings).tolist() == [
        [[0] * 6, [0, 0, 1, 0, 0, 1]]
    ]
    ep = EpisodeSampler(dataset, 5, 1, 2, 2).sample(
        torch.Generator().manual_seed(0)
    )  # 5 ways, trained with 3
    scores = learner.predict(ep)
    assert (
        scores.shape == (2, 10, 5) and (scores <= 0).all()
    )  # log-probabilities of each class's string
    probs = scores.exp().sum(-1)
    assert (probs <= 1 + 1e-6).all()  # distinct strings: the class probabilities sum to at most 1


def test_mann_instance_accuracy(dataset):
    learner = MANN(MANN.Config(controller=8, slots=4, slot_width=3, read_heads=1), (1, 16, 16), 3)
    acc = mann_module.instance_accuracy(
        learner, FixedSequences(dataset, 3, 4, count=3, seed=0), batch_size=2
    )
    assert list(acc) == ["1", "2", "3", "4"] and all(0 <= v <= 100 for v in acc.values())
    assert learner.training  # restored


def _snail(ways=3, shots=2) -> SNAIL:
    torch.manual_seed(0)
    options = SNAIL.Config(hidden=8, features=8, tc_filters=4, attention=[[4, 4], [4, 4], [4, 4]])
    return SNAIL(options, (1, 16, 16), ways, shots).eval()


def test_snail_causal(dataset):
    learner = _snail()
    ep = EpisodeSampler(dataset, 3, 2, 2, 2).sample(torch.Generator().manual_seed(0))
    prefix, tail = learner.sequence(ep)
    t = 3
    ep.support_x[:, t + 1 :] = torch.rand_like(ep.support_x[:, t + 1 :])  # later steps
    ep.support_y[:, t + 1 :] = (ep.support_y[:, t + 1 :] + 1) % 3
    ep.query_x[:, 1:] = torch.rand_like(ep.query_x[:, 1:])  # the other queries
    ep.query_y[:, 0] = (ep.query_y[:, 0] + 1) % 3  # the query's own label
    prefix2, tail2 = learner.sequence(ep)
    assert torch.allclose(prefix2[:, : t + 1], prefix[:, : t + 1], atol=1e-5)
    assert not torch.allclose(prefix2[:, t + 1 :], prefix[:, t + 1 :])
    assert not torch.allclose(tail2[:, 0], tail[:, 0])  # the query does see the (changed) support


def test_snail_branching_equals_full_sequence(dataset):
    """A query branched off the shared prefix equals the last step of the sequence support + that
    query."""
    learner = _snail()
    ep = EpisodeSampler(dataset, 3, 2, 2, 1).sample(torch.Generator().manual_seed(0))
    tail = learner.sequence(ep)[1]
    for j in range(ep.query_x.shape[1]):
        z = learner.embed(torch.cat([ep.support_x[0], ep.query_x[0, j : j + 1]]))[None]
        labels = torch.nn.functional.one_hot(ep.support_y, 3).float()
        seq = torch.cat([z, torch.cat([labels, torch.zeros(1, 1, 3)], 1)], -1)
        full = learner.out(learner.layers((seq, seq[:, :0]))[0])
        assert torch.allclose(full[0, -1], tail[0, j], atol=1e-5)


# --- Meta Networks -----------------------------------------------------------------------------


def test_metanet_fast_weights_and_support_dependence(dataset):
    from metalab.algorithms.model_based.metanet import MetaNet

    torch.manual_seed(0)
    learner = MetaNet(
        MetaNet.Config(hidden=8, head_hidden=6, meta_hidden=4), (1, 16, 16), ways=3
    ).eval()
    ep = EpisodeSampler(dataset, 3, 2, 2, 2).sample(torch.Generator().manual_seed(0))
    feats = learner.base_body(ep.support_x.flatten(0, 1)).unflatten(0, (2, 6))  # (B, S, D)
    d = feats.shape[-1]
    assert learner.task_fast_weights(feats, ep.support_y).shape == (
        2,
        6,
        d,
    )  # Q*: like Q (H, D) per task
    assert learner.example_fast_weights(feats, ep.support_y).shape == (
        2,
        6,
        6 * d + 3 * 6,
    )  # W*_i per example
    with torch.no_grad():
        logits = learner.predict(ep)
        assert logits.shape == (2, 6, 3)
        relabelled = EpisodeSampler(dataset, 3, 2, 2, 2).sample(torch.Generator().manual_seed(0))
        relabelled.support_y = (relabelled.support_y + 1) % 3  # same images, other labels
        assert not torch.allclose(learner.predict(relabelled), logits)
        relabelled.support_x = torch.rand_like(relabelled.support_x)  # other support images
        assert not torch.allclose(learner.predict(relabelled), logits)
