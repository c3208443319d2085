"""Task chunking (engine/step.py): the meta-gradient of a batch processed in chunks of tasks equals
the unchunked one (float64, second-order MAML, whose tasks share no statistics), and for any learner
it equals the mean of the chunks' own gradients."""

from __future__ import annotations

import pytest
import torch

from fixtures.tasks import random_episode
from metalab.config import parse_config
from metalab.engine.build import build_learner
from metalab.engine.step import accumulate_gradients
from metalab.errors import ConfigError
from metalab.tasks.batching import select_group


def _learner(name: str, **options):
    cfg = parse_config(
        {
            "algorithm": {"name": name, "hidden": 4, **options},
            "train": {"ways": 3, "shots": 1, "queries": 2},
            "eval": {"ways": 3, "shots": 1, "queries": 2},
        },
        "test",
    )
    return build_learner(cfg, (1, 16, 16), seed=0).double()


def _grads(learner) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None])


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_maml_meta_gradient_equals_the_unchunked_one(chunk: int) -> None:
    ep = random_episode(tasks=4, ways=3, shots=1, queries=2, size=16)
    whole = _learner("maml", inner_steps=2, parallel="loop")
    full = accumulate_gradients(whole, ep)
    chunked = _learner("maml", inner_steps=2, parallel="loop")
    part = accumulate_gradients(chunked, ep, chunk=chunk)
    torch.testing.assert_close(_grads(chunked), _grads(whole), rtol=1e-12, atol=1e-14)
    assert part.loss == pytest.approx(full.loss, rel=1e-12)
    assert part.metrics.keys() == full.metrics.keys()


def test_chunks_average_their_own_gradients() -> None:
    """ProtoNet's BatchNorm pools the tasks it sees: chunking is defined as the mean over chunks."""
    ep = random_episode(tasks=4, ways=3, shots=1, queries=2, size=16)
    chunked = _learner("protonet")
    accumulate_gradients(chunked, ep, chunk=2)
    reference = _learner("protonet")
    for g in range(2):
        (reference.meta_loss(select_group(ep, g, 2)).loss / 2).backward()
    torch.testing.assert_close(_grads(chunked), _grads(reference), rtol=1e-12, atol=1e-14)


def test_a_chunk_that_does_not_divide_the_batch_is_refused() -> None:
    ep = random_episode(tasks=4, ways=3, shots=1, queries=2, size=16)
    with pytest.raises(ConfigError, match="task_chunk = 3"):
        accumulate_gradients(_learner("protonet"), ep, chunk=3)
