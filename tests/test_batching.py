"""Groups of a training batch (tasks/batching.py): a partition of the units, of the batch's own
type, with one-line errors when ranks or chunks cannot share the units equally."""

from __future__ import annotations

import pytest
import torch

from metalab.errors import ConfigError
from metalab.tasks.batching import group_count, select_group, units
from metalab.tasks.episodes import Episode
from metalab.tasks.flat import FlatBatch
from metalab.tasks.pairs import PairBatch
from metalab.tasks.sequences import SequenceBatch


def _episode(tasks: int) -> Episode:
    x = torch.arange(tasks, dtype=torch.float).view(tasks, 1, 1).expand(tasks, 5, 3)
    y = torch.arange(5).expand(tasks, 5)
    classes = torch.arange(tasks).view(tasks, 1).expand(tasks, 5)
    return Episode(x, y, x + 0.5, y, 5, classes)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_groups_partition_the_tasks(groups: int) -> None:
    ep = _episode(8)
    seen = []
    for g in range(groups):
        part = select_group(ep, g, groups)
        assert isinstance(part, Episode) and part.ways == 5
        assert units(part) == 8 // groups
        ids = part.support_x[:, 0, 0].long().tolist()
        assert ids == list(range(g, 8, groups))  # strided
        assert part.classes[:, 0].tolist() == ids  # every field follows its task
        assert torch.equal(part.query_x, part.support_x + 0.5)
        seen += ids
    assert sorted(seen) == list(range(8))


def test_every_batch_type_splits() -> None:
    pairs = PairBatch(
        torch.rand(6, 1, 4, 4), torch.rand(6, 1, 4, 4), torch.tensor([1.0] * 3 + [0.0] * 3)
    )
    a, b = select_group(pairs, 0, 2), select_group(pairs, 1, 2)
    assert a.same.tolist() == [1.0, 1.0, 0.0] and b.same.tolist() == [1.0, 0.0, 0.0]
    flat = FlatBatch(torch.rand(4, 1, 2, 2), torch.arange(4))
    assert select_group(flat, 1, 2).y.tolist() == [1, 3]
    seq = SequenceBatch(torch.rand(4, 6, 8), torch.zeros(4, 6).long(), torch.zeros(4, 6).long(), 3)
    assert units(select_group(seq, 0, 4)) == 1 and select_group(seq, 0, 4).ways == 3


def test_group_count() -> None:
    assert group_count(8) == 1
    assert group_count(8, world=2) == 2
    assert group_count(8, world=2, chunk=2) == 4
    assert group_count(8, world=1, chunk=2) == 4
    assert group_count(8, world=2, chunk=16) == 2
    with pytest.raises(ConfigError, match="multiple of the world size 3"):
        group_count(8, world=3)
    with pytest.raises(ConfigError, match="task_chunk = 3"):
        group_count(8, world=2, chunk=3)


def test_units_refuses_a_ragged_batch() -> None:
    with pytest.raises(TypeError, match="first dim"):
        units(FlatBatch(torch.rand(4, 2), torch.arange(3)))
