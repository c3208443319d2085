"""CACTUs (Hsu, Levine & Finn 2019): tasks from k-means clusters of embedded unlabeled images
(metalab.tasks.clusters), on small synthetic data."""

import os

import pytest
import torch

import metalab.algorithms  # noqa: F401
from fixtures.blobs import blobs, scrambled, serve
from metalab.config import ClustersConfig, DataConfig, parse_config
from metalab.data.base import ClassIndexedDataset
from metalab.engine.trainer import train
from metalab.errors import ConfigError, DataError, MetalabError
from metalab.tasks import clusters
from metalab.tasks.clusters import (
    ClusteredImages,
    ClusterTasks,
    cluster_assignments,
    cluster_partitions,
    kmeans,
    nearest,
)
from metalab.tasks.episodes import episode_sampler
from metalab.tasks.sources import load_split
from metalab.tasks.unsupervised import AugmentedImages


def synthetic(classes=12, per_class=10, seed=0):
    """Bright squares at class-specific places on noise: clusters a barely trained net can see."""
    return blobs(classes, per_class, square=7, columns=4, noise=40, seed=seed)


def run_config(name="protonet", labels="none", clusters_=None, steps=2, **algorithm):
    data = {"dataset": "omniglot", "labels": labels, "val_split": None}
    if clusters_ is not None:
        data["clusters"] = clusters_
    return parse_config(
        {
            "algorithm": {"name": name, **algorithm},
            "data": data,
            "train": {
                "steps": steps,
                "ways": 4,
                "shots": 1,
                "queries": 2,
                "meta_batch": 2,
                "val_every": 0,
                "tensorboard": False,
                "checkpoint_every": 1,
                "device": "cpu",
            },
            "eval": {"ways": 4, "shots": 1, "queries": 2, "episodes": 4},
        }
    )


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory):
    """A 2-step UMTRA-ProtoNet run (no labels) whose encoder embeds the synthetic images."""
    run = tmp_path_factory.mktemp("embedding") / "umtra"
    with pytest.MonkeyPatch.context() as mp:
        serve(mp, synthetic(), synthetic(seed=9))
        train(run_config(hidden=8), run, progress=False)
    return run


def options(run, **kw):
    return ClustersConfig(embedding=str(run), **kw)


def same_partition(a, b):
    """Whether two cluster assignments group the points identically (up to cluster names)."""
    return torch.equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


# --- k-means -------------------------------------------------------------------------------------
def test_kmeans_recovers_well_separated_blobs(monkeypatch):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g) * 20
    truth = torch.arange(6).repeat_interleave(50)
    x = centres[truth] + torch.randn(300, 16, generator=g)
    assign, found = kmeans(x, 6, torch.Generator().manual_seed(1))
    assert same_partition(assign, truth)
    assert found.shape == (6, 16)
    # blocked distances: the same nearest centres whatever the block size
    full = nearest(x, found)
    monkeypatch.setattr(clusters, "BLOCK", 7)
    blocked = nearest(x, found)
    assert torch.equal(full[0], blocked[0]) and torch.allclose(full[1], blocked[1], atol=1e-2)
    # seeded: the same generator seed, the same clustering
    again, _ = kmeans(x, 6, torch.Generator().manual_seed(1))
    assert torch.equal(assign, again)


def test_partitions_differ_and_are_seeded():
    z = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    a = cluster_partitions(z, 5, 3, seed=4)
    assert a.shape == (3, 200) and a.dtype == torch.int32
    assert torch.equal(a, cluster_partitions(z, 5, 3, seed=4))  # reproducible
    assert not same_partition(a[1], a[2]) and not same_partition(a[0], a[1])  # diverse
    # the first partition is k-means on the unscaled embeddings (after the scalings are drawn)
    g = torch.Generator().manual_seed(4)
    scalings = clusters.dimension_scalings(3, 8, g)
    assert bool((scalings[0] == 1).all()) and bool(((scalings[1:] >= 0) & (scalings[1:] < 1)).all())
    assert torch.equal(a[0].long(), kmeans(z, 5, g)[0])
    assert not torch.equal(a, cluster_partitions(z, 5, 3, seed=5))


# --- the pseudo-labelled split -------------------------------------------------------------------
def test_one_partition_is_a_dataset_of_clusters(embedding_run):
    data = synthetic()
    split = clusters.clustered_source(data, options(embedding_run, k=12), "train")
    assert isinstance(split, ClassIndexedDataset) and isinstance(split, ClusteredImages)
    assert int(split.counts.sum()) == len(data.images) and split.num_classes <= 12
    # the images are the split's, reordered by cluster
    order = lambda t: t.flatten(1).float().sum(1).sort().values  # noqa: E731
    assert torch.equal(order(split.images), order(data.images))
    moved = split.to("cpu")
    assert isinstance(moved, ClusteredImages) and torch.equal(moved.counts, split.counts)
    # min_size drops the small clusters; a learner that needs more is told to set it
    big = clusters.clustered_source(data, options(embedding_run, k=12, min_size=9), "train")
    assert bool((big.counts >= 9).all())
    need = int(split.counts.min()) + 1
    with pytest.raises(DataError, match=f"data.clusters.min_size: {need}") as e:
        episode_sampler(split, 2, need - 1, 1)
    assert "\n" not in str(e.value)


def test_several_partitions_sample_tasks_per_partition(embedding_run):
    data = synthetic()
    src = clusters.clustered_source(data, options(embedding_run, k=6, partitions=3), "train")
    assert isinstance(src, ClusterTasks) and src.partitions == 3 and len(src) == 120
    sampler = episode_sampler(src, 3, 1, 2, meta_batch=64)
    e = sampler.sample(torch.Generator().manual_seed(0))
    assert e.support_x.shape == (64, 3, 1, 28, 28) and e.query_x.shape == (64, 6, 1, 28, 28)
    assert e.classes is None
    # every task: its 3 classes are distinct clusters of one partition; K+Q distinct images each
    rows = sampler.sample_indices(torch.Generator().manual_seed(0))  # (B, N, K+Q) image rows
    assign = src.assign.long()
    labels = assign[:, rows]  # (P, B, N, K+Q)
    one = (labels == labels[..., :1]).all(-1).all(-1)  # (P, B): members agree in partition p
    firsts = labels[..., 0].sort(-1).values  # (P, B, N)
    distinct = (firsts.diff(dim=-1) > 0).all(-1)  # (P, B): N distinct clusters of partition p
    ok = one & distinct
    assert bool(ok.any(0).all())  # each task is N clusters of some partition
    assert not bool(ok.all(1).any())  # and the tasks of one batch come from several partitions
    assert bool((rows.sort(-1).values.diff(dim=-1) > 0).all())  # K+Q distinct images
    with pytest.raises(DataError, match="partitions: 1"):
        _ = src.num_classes
    with pytest.raises(DataError, match="no partition"):
        episode_sampler(src, 6, 30, 30)


def test_cache_is_reused_and_rebuilt(embedding_run, monkeypatch, tmp_path):
    built = []
    real = clusters.cluster_partitions
    monkeypatch.setattr(
        clusters,
        "cluster_partitions",
        lambda *a, **k: built.append(a[1:]) or real(*a, **k),
    )
    images = synthetic().images

    def assign(run=embedding_run, **kw):
        return cluster_assignments(images, "synthetic", "train", options(run, **kw), tmp_path)

    a = assign(k=6)
    assert len(built) == 1 and torch.equal(assign(k=6), a) and len(built) == 1  # reused
    assign(k=7)
    assign(k=6, seed=1)
    assign(k=6, partitions=2)
    assert len(built) == 4
    assert len(list(tmp_path.glob("cactus-*.pt"))) == 4
    assign(k=6, seed=1)
    assert len(built) == 4
    # another checkpoint (same run, rewritten weights) builds again
    ckpt = embedding_run / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()
    }
    run2 = tmp_path / "run2"
    run2.mkdir()
    torch.save(state, run2 / "last.pt")
    assign(run2, k=6)
    assert len(built) == 5
    stat = (run2 / "last.pt").stat()
    os.utime(run2 / "last.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    assign(run2, k=6)
    assert len(built) == 6


def test_scrambled_labels_give_identical_clusters_and_tasks(embedding_run, monkeypatch, tmp_path):
    data = synthetic()
    other = scrambled(data)
    assert other.num_classes != data.num_classes
    for part in (1, 3):
        cfg = DataConfig(labels="clusters", clusters=options(embedding_run, k=6, partitions=part))
        episodes = []
        for name, split in (("given", data), ("scrambled", other)):
            serve(monkeypatch, split, split)
            monkeypatch.setenv("METALAB_CACHE", str(tmp_path / f"{name}-{part}"))  # cluster anew
            src = load_split(cfg, "train")
            assert list(tmp_path.glob(f"{name}-{part}/cactus-*.pt"))
            e = episode_sampler(src, 3, 1, 2, 4).sample(torch.Generator().manual_seed(5))
            episodes.append(e)
        a, b = episodes
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


def test_protonet_and_baseline_train_on_clusters_end_to_end(embedding_run, monkeypatch, tmp_path):
    serve(monkeypatch, synthetic(), synthetic(seed=9))
    run = str(embedding_run)
    for name, part in (("protonet", 1), ("protonet", 2), ("baseline", 1)):
        spec = {"embedding": run, "k": 6, "partitions": part, "min_size": 3}
        cfg = run_config(name, labels="clusters", clusters_=spec, hidden=8)
        result = train(cfg, tmp_path / f"{name}-{part}", progress=False)
        assert result.step == 2
    # with task augmentation on top (one partition)
    cfg = run_config(
        "protonet",
        labels="clusters",
        clusters_={"embedding": run, "k": 6, "min_size": 3},
        hidden=8,
    )
    cfg.data.augment = {"strength": 0.5}
    assert isinstance(load_split(cfg.data, "train"), AugmentedImages)


# --- errors: one line, naming the option ---------------------------------------------------------
def test_bad_inputs_are_one_line_errors(embedding_run, monkeypatch, tmp_path):
    serve(monkeypatch, synthetic(), synthetic(seed=9))
    run = str(embedding_run)
    cases = [
        (lambda: run_config(labels="clusters"), "data.clusters.embedding"),
        (lambda: run_config(labels="clusters", clusters_={"k": 5}), "data.clusters.embedding"),
        (lambda: run_config(labels="given", clusters_={"embedding": run}), "data.labels: clusters"),
        (lambda: run_config(labels="clusters", clusters_={"embedding": run, "kk": 5}), "kk"),
        (lambda: run_config(labels="clusters", clusters_={"embedding": run, "k": 1}), "k = 1"),
        (
            lambda: run_config(labels="clusters", clusters_={"embedding": run, "partitions": 0}),
            "partitions",
        ),
        (
            lambda: load_split(
                DataConfig(labels="clusters", clusters=options(tmp_path / "nothing")), "train"
            ),
            "data.clusters.embedding",
        ),
        (
            lambda: load_split(
                DataConfig(labels="clusters", clusters=options(run, k=500)), "train"
            ),
            "data.clusters.k = 500",
        ),
        (
            lambda: load_split(
                DataConfig(
                    labels="clusters",
                    clusters=options(run, k=6, partitions=2),
                    augment={"strength": 1.0},
                ),
                "train",
            ),
            "data.augment",
        ),
    ]
    for make, words in cases:
        with pytest.raises(MetalabError) as e:
            make()
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    # a run whose learner does not embed images (MAML)
    maml = tmp_path / "maml"
    train(run_config("maml", steps=1, hidden=8, inner_steps=1), maml, progress=False)
    with pytest.raises(ConfigError, match="does not embed images") as e:
        load_split(DataConfig(labels="clusters", clusters=options(maml, k=6)), "train")
    assert "\n" not in str(e.value) and "protonet" in str(e.value)
    # a flat-batch learner on several partitions
    spec = {"embedding": run, "k": 6, "partitions": 2}
    with pytest.raises(MetalabError, match="partitions: 1"):
        train(
            run_config("baseline", labels="clusters", clusters_=spec),
            tmp_path / "b",
            progress=False,
        )
