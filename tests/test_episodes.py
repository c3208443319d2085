"""Episode sampler invariants and fixed evaluation sets, on a synthetic dataset whose pixels name
their image."""

import pytest
import torch

from metalab.data.base import ClassIndexedDataset
from metalab.errors import DataError
from metalab.tasks.episodes import EpisodeSampler, FixedEpisodes


def synthetic(
    counts=(5, 7, 6, 9, 5, 8, 6, 7), groups=("a", "a", "a", "b", "b", "b", "c", "c")
) -> ClassIndexedDataset:
    """Image i of the whole set has every pixel equal to i (so gathered images can be traced
    back)."""
    per_class, start = [], 0
    for c in counts:
        per_class.append(
            torch.arange(start, start + c, dtype=torch.uint8)
            .view(c, 1, 1, 1)
            .expand(c, 1, 2, 2)
            .clone()
        )
        start += c
    return ClassIndexedDataset.from_class_tensors(
        "synthetic", per_class, [f"c{i}" for i in range(len(counts))], list(groups)
    )


def image_ids(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 0, 0, 0] * 255).round().long()


@pytest.mark.parametrize("ways,shots,queries,batch", [(5, 1, 3, 4), (3, 2, 2, 1), (8, 1, 4, 2)])
def test_episode_invariants(ways, shots, queries, batch):
    ds = synthetic()
    sampler = EpisodeSampler(ds, ways, shots, queries, batch)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        ep = sampler.sample(g)
        assert ep.support_x.shape == (batch, ways * shots, 1, 2, 2)
        assert ep.query_x.shape == (batch, ways * queries, 1, 2, 2)
        assert ep.support_x.dtype == torch.float32 and ep.support_x.max() <= 1
        for b in range(batch):
            assert len(set(ep.classes[b].tolist())) == ways  # no class twice
            ids = torch.cat([image_ids(ep.support_x[b]), image_ids(ep.query_x[b])])
            assert len(set(ids.tolist())) == len(ids)  # no image twice within a task
            # every image belongs to the class its label names
            for x, y in ((ep.support_x[b], ep.support_y[b]), (ep.query_x[b], ep.query_y[b])):
                cls = ep.classes[b][y]
                ids = image_ids(x)
                assert ((ids >= ds.offsets[cls]) & (ids < ds.offsets[cls] + ds.counts[cls])).all()
            assert sorted(set(ep.support_y[b].tolist())) == list(range(ways))


def test_all_classes_and_images_are_drawn():
    ds = synthetic()
    sampler = EpisodeSampler(ds, 2, 1, 1, 64)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        ep = sampler.sample(g)
        seen |= set(image_ids(ep.support_x).flatten().tolist()) | set(
            image_ids(ep.query_x).flatten().tolist()
        )
    assert seen == set(range(int(ds.counts.sum())))


def test_within_group_tasks_stay_in_one_group():
    ds = synthetic()
    sampler = EpisodeSampler(ds, 3, 1, 1, 32, within_group=True)
    ep = sampler.sample(torch.Generator().manual_seed(0))
    groups = ds.groups[ep.classes]
    assert (groups == groups[:, :1]).all()
    assert set(groups[:, 0].tolist()) <= {0, 1}  # group c has only 2 classes, too few for 3 ways


def test_fixed_episodes_are_a_function_of_their_arguments():
    ds = synthetic()
    a = FixedEpisodes(ds, 4, 1, 2, count=10, seed=3)
    b = FixedEpisodes(ds, 4, 1, 2, count=10, seed=3)
    c = FixedEpisodes(ds, 4, 1, 2, count=10, seed=4)
    xa = torch.cat([e.query_x for e in a.batches(3)])
    xb = torch.cat([e.query_x for e in b.batches(7)])  # the batch size does not change the set
    xc = torch.cat([e.query_x for e in c.batches(10)])
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert len(a) == 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fixed_episodes_same_on_gpu():
    ds = synthetic()
    cpu = torch.cat([e.support_x for e in FixedEpisodes(ds, 4, 1, 2, 10, 0).batches(5)])
    gpu = torch.cat([e.support_x for e in FixedEpisodes(ds.to("cuda"), 4, 1, 2, 10, 0).batches(5)])
    assert torch.equal(cpu, gpu.cpu())


def test_sampler_errors_name_the_problem():
    ds = synthetic()
    with pytest.raises(DataError, match="--ways 9 but synthetic has only 8 classes"):
        EpisodeSampler(ds, 9, 1, 1)
    with pytest.raises(DataError, match="class 'c0' .* has 5 images"):
        EpisodeSampler(ds, 2, 3, 3)
    with pytest.raises(DataError, match="no group"):
        EpisodeSampler(ds, 4, 1, 1, within_group=True)
    with pytest.raises(DataError, match="--shots 0"):
        EpisodeSampler(ds, 2, 0, 1)
