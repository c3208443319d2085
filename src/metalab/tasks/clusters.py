"""Tasks from k-means clusters of embedded unlabeled images (CACTUs).

CACTUs (Hsu, Levine & Finn, "Unsupervised Learning via Meta-Learning", ICLR 2019): embed every
unlabeled training image with an embedding learned without labels, cluster the embeddings with
k-means into P partitions of k clusters, and treat the clusters of a partition as classes: an
N-way K-shot task draws one partition, N of its clusters, and K + Q images of each. Clusters with
fewer than K + Q images are never drawn. P > 1 partitions differ because every partition after
the first clusters the embeddings with each dimension multiplied by a random weight (CACTUs'
device for diverse partitions; its code draws the weights ``U(0, 1)`` per dimension, independently
per partition, and leaves the first partition unscaled — so do we).

Here (``data.labels: clusters``; the options are ``data.clusters``,
:class:`metalab.config.ClustersConfig`):

- **Embedding**: the learner of a trained metalab run (``data.clusters.embedding: RUN_DIR``;
  best.pt, else last.pt) embeds the split's images with its frozen backbone (``learner.embed``,
  features flattened), in batches of :data:`EMBED_BATCH`, without gradients, in eval mode, on
  the device the run was configured for (the CPU when that device is not available here). Any
  learner with an ``embed`` does: simclr, supcon, protonet (e.g. a UMTRA-ProtoNet run),
  matching, relation, baseline, baseline_pp.
- **k-means**: k-means++ seeding (Arthur & Vassilvitskii 2007: each next centre drawn with
  probability proportional to the squared distance to the nearest centre chosen) and Lloyd
  iterations until no assignment changes (at most ``iterations``), in float32 torch on the
  embedding device, with a CPU generator seeded by ``data.clusters.seed``; distances are computed
  in row blocks (:data:`BLOCK` floats at most), so 82,240 × 64 embeddings take a few MB. A cluster
  that empties during Lloyd iterations is moved to the point farthest from its centre.
- **Tasks**: ``partitions: 1`` gives a plain :class:`ClassIndexedDataset` whose classes are the
  clusters (the images reordered by cluster; clusters below ``min_size`` images dropped), so every
  learner — episodic, flat-batch (Baseline), pairs, sequences — trains on it unchanged.
  ``partitions > 1`` gives :class:`ClusterTasks`, whose sampler draws each task's partition
  uniformly at random among the partitions with at least N usable clusters, then N of that
  partition's clusters with at least K + Q images (and ``min_size``), per task, with tensor
  operations only (no Python loop over tasks).
- **Cache**: the assignment, a ``(P, images)`` int32 tensor, is cached under ``$METALAB_CACHE``
  (:func:`metalab.data.cache.load_or_build`: atomic write, verified on load), keyed by the
  embedding checkpoint file (path, size, mtime and sha256), the split's name and image bytes
  (sha256), and k, partitions, seed and iterations.

**Training labels are never read**: the split's images are the only thing read (its class
table is dropped), so a split whose labels are scrambled gives identical clusters and tasks.

Hyper-parameters of the paper (Omniglot, their §4 and code): k = 500 clusters; the Omniglot
run of its published script uses 1 partition (its comment: "100 partitions takes a while");
20-way 1-shot training tasks with 5 queries per class; ACAI or BiGAN embeddings (256 or 200
dimensions) — here any metalab run's backbone instead.

Deviations: CACTUs' code runs scikit-learn's k-means (``n_init`` 10 restarts for one partition,
1 for several, up to 3000 iterations) and re-runs a clustering whose share of clusters with
more than K + Q images is below 75%; here one seeded k-means++ run per partition, at most
``iterations`` Lloyd steps, and no re-run (clusters too small for a task are only skipped).
For ``partitions: 1`` the minimum cluster size is ``min_size`` (the dataset is built before the
learner says its K + Q): a learner that needs more images per class than a cluster holds stops
with an error naming ``data.clusters.min_size``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metalab.config import ClustersConfig
from metalab.data.base import ClassIndexedDataset
from metalab.errors import CheckpointError, ConfigError, DataError
from metalab.tasks.episodes import Episode, check_episode_shape, to_float
from metalab.tasks.unsupervised import ImagesWithoutClasses

EMBED_BATCH = 512  # images embedded at once
BLOCK = 2**22  # floats of one block of the (points × centres) distance matrix

log = logging.getLogger("metalab")


# --- k-means --------------------------------------------------------------------------------------
def _sq_distances(x: Tensor, centres: Tensor) -> Tensor:
    """(n, d), (k, d) → (n, k) squared Euclidean distances (clamped at 0)."""
    d = x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.T + centres.pow(2).sum(1)[None]
    return d.clamp_min_(0)


def nearest(x: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Index of each point's nearest centre and its squared distance, (n,) each, computed in row
    blocks of at most :data:`BLOCK` distances."""
    rows = max(1, BLOCK // max(1, len(centres)))
    index, dist = [], []
    for start in range(0, len(x), rows):
        d = _sq_distances(x[start : start + rows], centres)  # (rows, k)
        best = d.min(1)
        index.append(best.indices)
        dist.append(best.values)
    return torch.cat(index), torch.cat(dist)


def kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: (n, d) → (k, d) centres, drawn with the CPU ``generator``."""
    n = len(x)
    u = torch.rand(k, generator=generator, dtype=torch.float64)  # one uniform per centre
    centres = x.new_empty(k, x.shape[1])
    centres[0] = x[min(int(u[0] * n), n - 1)]
    d2 = _sq_distances(x, centres[:1]).squeeze(1).double()  # (n,) to the nearest centre so far
    for i in range(1, k):
        cum = d2.cumsum(0)
        total = float(cum[-1])
        if total > 0:
            j = int(torch.searchsorted(cum, u[i].to(cum.device) * total, right=True))
        else:  # every point sits on a centre: any point
            j = int(u[i] * n)
        centres[i] = x[min(j, n - 1)]
        d2 = torch.minimum(d2, _sq_distances(x, centres[i : i + 1]).squeeze(1).double())
    return centres


def kmeans(
    x: Tensor, k: int, generator: torch.Generator, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then Lloyd iterations until no assignment changes.

    Args:
        x: (n, d) points (any device; float32 is used).
        k: clusters (at most n).
        generator: a CPU generator (the seeding's only randomness).
        iterations: at most so many Lloyd iterations.

    Returns:
        (n,) int64 cluster of each point (on x's device) and the (k, d) centres.
    """
    x = x.float()
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k = {k} on {n} points")
    mean = x.mean(0)
    x = x - mean  # centred: smaller norms, less cancellation in |x|² - 2x·c + |c|²
    centres = kmeans_pp(x, k, generator)
    assign = None
    for _ in range(iterations):
        new, dist = nearest(x, centres)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # move each empty cluster to one of the points farthest from their centre
            far = dist.topk(len(empty)).indices
            centres[empty] = x[far]
    if assign is None or assign.shape != (n,):  # pragma: no cover - iterations >= 1
        assign = nearest(x, centres)[0]
    return assign, centres + mean


def dimension_scalings(partitions: int, dims: int, generator: torch.Generator) -> Tensor:
    """(P, D) per-dimension weights of each partition: ones for the first, ``U(0, 1)`` for the
    others (CACTUs' random scaling for diverse partitions)."""
    weights = torch.rand(partitions, dims, generator=generator)
    weights[0] = 1.0
    return weights


def cluster_partitions(
    embeddings: Tensor, k: int, partitions: int, seed: int, iterations: int = 100
) -> Tensor:
    """(n, d) embeddings → (P, n) int32 cluster ids: partition p clusters the embeddings scaled
    by :func:`dimension_scalings` row p (seeded by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    scalings = dimension_scalings(partitions, embeddings.shape[1], generator)
    assign = []
    for p in range(partitions):
        z = embeddings * scalings[p].to(embeddings.device)
        assign.append(kmeans(z, k, generator, iterations)[0].cpu().to(torch.int32))
    return torch.stack(assign)


# --- embedding with a trained run -----------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_sha256(t: Tensor) -> str:
    return hashlib.sha256(
        t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    ).hexdigest()


def embedding_checkpoint(options: ClustersConfig) -> Path:
    """The checkpoint file of ``data.clusters.embedding`` (a one-line error naming the option)."""
    from metalab.engine.checkpoint import resolve_checkpoint

    if not options.embedding:
        raise ConfigError(
            "data.labels: clusters needs data.clusters.embedding: RUN_DIR (a trained metalab run "
            "whose learner embeds images, e.g. runs/simclr-unsupervised); set it"
        )
    try:
        return resolve_checkpoint(Path(options.embedding).expanduser(), options.checkpoint)
    except CheckpointError as error:
        raise ConfigError(
            f"data.clusters.embedding: {error}; point it at a trained run (e.g. train "
            "configs/omniglot/simclr-unsupervised.yaml first)"
        ) from None


def embed_images(checkpoint: Path, images: Tensor) -> Tensor:
    """(n, C, H, W) uint8 images → (n, D) float32 features of the run's frozen backbone, on the
    device the run was configured for (the CPU when it is not available)."""
    from metalab.algorithms.base import eval_mode
    from metalab.engine.build import load_learner, resolve_device
    from metalab.engine.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    algorithm = state.get("algorithm", "?")
    try:
        device = resolve_device(str(state.get("config", {}).get("train", {}).get("device", "cpu")))
    except ConfigError:
        device = torch.device("cpu")
    learner, _, _ = load_learner(checkpoint, device)
    if not callable(getattr(learner, "embed", None)):
        from metalab.registry import ALGORITHMS

        able = [
            n for n in ALGORITHMS.names() if callable(getattr(ALGORITHMS.get(n), "embed", None))
        ]
        raise ConfigError(
            f"data.clusters.embedding: {checkpoint} is a '{algorithm}' run, which does not embed "
            f"images; use a run of one of: {', '.join(able)}"
        )
    shape = tuple(state.get("input_shape", ()))
    if shape != tuple(images.shape[1:]):
        raise ConfigError(
            f"data.clusters.embedding: {checkpoint} takes inputs of shape {shape} but the training "
            f"images have shape {tuple(images.shape[1:])}; use a run trained on images like these"
        )
    parts = []
    with torch.no_grad(), eval_mode(learner):
        for start in range(0, len(images), EMBED_BATCH):
            x = to_float(images[start : start + EMBED_BATCH].to(device))  # (b, C, H, W)
            parts.append(learner.embed(x[None])[0].flatten(1).float())  # (b, D)
    return torch.cat(parts)


# --- the pseudo-labelled training split -----------------------------------------------------------
def cluster_assignments(
    images: Tensor, name: str, split: str, options: ClustersConfig, cache_dir: Path | None = None
) -> Tensor:
    """(P, n) int32 cluster ids of the images, from the cache or clustered now."""
    from metalab.data.cache import load_or_build

    checkpoint = embedding_checkpoint(options)
    if options.k > len(images):
        raise ConfigError(
            f"data.clusters.k = {options.k} but {name} holds only {len(images)} images; use at "
            f"most {len(images)} clusters"
        )
    params = {
        "kind": "cactus-clusters",
        "split": split,
        "name": name,
        "images": _tensor_sha256(images),
        "shape": list(images.shape),
        "checkpoint_sha256": _sha256_file(checkpoint),
        "k": options.k,
        "partitions": options.partitions,
        "seed": options.seed,
        "iterations": options.iterations,
    }

    def build() -> dict[str, Any]:
        started = time.perf_counter()
        z = embed_images(checkpoint, images)
        embedded = time.perf_counter()
        assign = cluster_partitions(
            z, options.k, options.partitions, options.seed, options.iterations
        )
        log.info(
            "clustered %d images of %s (%d dims) into %d partition(s) of %d: embedding %.1fs, "
            "k-means %.1fs",
            len(images),
            name,
            z.shape[1],
            options.partitions,
            options.k,
            embedded - started,
            time.perf_counter() - embedded,
        )
        return {"assign": assign}

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "split"
    payload = load_or_build(f"cactus-{safe}-k{options.k}", params, [checkpoint], build, cache_dir)
    return payload["assign"]  # type: ignore[return-value]


def _by_cluster(assign: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(n,) cluster ids → image rows ordered by cluster (stable), and each cluster's offset and
    count in that order, (n,), (k,), (k,)."""
    assign = assign.long()
    rows = torch.sort(assign, stable=True).indices
    counts = torch.bincount(assign, minlength=k)
    return rows, torch.cumsum(counts, 0) - counts, counts


class ClusteredImages(ClassIndexedDataset):
    """A split whose classes are k-means clusters (``partitions: 1``): a plain
    :class:`ClassIndexedDataset`, but a learner that needs more images per class than a cluster
    holds is told to set ``data.clusters.min_size``."""

    def require_images_per_class(self, needed: int, what: str) -> None:
        short = int((self.counts < needed).sum())
        if short:
            raise DataError(
                f"{short} of the {self.num_classes} clusters of {self.name} hold fewer than "
                f"{needed} images but {what} needs {needed}; set data.clusters.min_size: {needed} "
                "to drop them (CACTUs keeps only clusters with at least K + Q images)"
            )


def clustered_dataset(
    dataset: ClassIndexedDataset, assign: Tensor, k: int, min_size: int | None
) -> ClusteredImages:
    """The split with its images reordered by cluster, one class per cluster of at least
    ``min_size`` (default 1) images."""
    rows, offsets, counts = _by_cluster(assign, k)
    keep = (counts >= (min_size or 1)).nonzero().flatten()
    if len(keep) == 0:
        raise DataError(
            f"no cluster of {dataset.name} holds data.clusters.min_size = {min_size} images "
            f"(largest: {int(counts.max())}); lower data.clusters.min_size or data.clusters.k"
        )
    kept = torch.cat(
        [rows[o : o + c] for o, c in zip(offsets[keep].tolist(), counts[keep].tolist())]
    )
    new_counts = counts[keep]
    return ClusteredImages(
        f"{dataset.name} (k-means clusters)",
        dataset.images[kept.to(dataset.images.device)],
        torch.cumsum(new_counts, 0) - new_counts,
        new_counts,
        [f"cluster-{int(c)}" for c in keep],
        torch.zeros(len(keep), dtype=torch.int64),
        ["clusters"],
        dataset.preprocess,
    )


class ClusterTasks(ImagesWithoutClasses):
    """A training split as ``P > 1`` partitions into clusters (see the module docstring): an
    episodic task source only.

    Args:
        dataset: the split; only its ``images`` are kept.
        assign: (P, n) cluster ids of the images.
        k: clusters per partition.
        min_size: the smallest cluster a task may draw from (besides K + Q).
    """

    def __init__(
        self, dataset: ClassIndexedDataset, assign: Tensor, k: int, min_size: int | None = None
    ) -> None:
        self.name = f"{dataset.name} ({len(assign)} k-means partitions)"
        self.images, self.preprocess = dataset.images, dataset.preprocess
        self.assign, self.k, self.min_size = assign.cpu(), k, min_size

    @property
    def partitions(self) -> int:
        return len(self.assign)

    def to(self, device: torch.device | str) -> ClusterTasks:
        new = ClusterTasks.__new__(ClusterTasks)
        new.__dict__.update(self.__dict__)
        new.images = self.images.to(device)
        return new

    def _refuse(self, what: str) -> DataError:
        return DataError(
            f"{self.name}: data.clusters.partitions > 1 gives episodic tasks only, so the split "
            f"has no single set of {what}; train an episodic learner (protonet, maml, ...) or set "
            "data.clusters.partitions: 1"
        )

    def episode_sampler(
        self, ways: int, shots: int, queries: int, meta_batch: int = 1, within_group: bool = False
    ) -> ClusterEpisodes:
        if within_group:
            raise DataError(
                f"{self.name} has no alphabets (groups) for data.within_group; set it to false"
            )
        return ClusterEpisodes(self, ways, shots, queries, meta_batch)


class ClusterEpisodes:
    """Batches of N-way K-shot tasks from :class:`ClusterTasks`: per task a random partition, N
    of its clusters with at least K + Q images, K + Q distinct images of each (class-major, like
    :class:`metalab.tasks.episodes.EpisodeSampler`; ``classes = None``)."""

    def __init__(
        self, source: ClusterTasks, ways: int, shots: int, queries: int, meta_batch: int = 1
    ) -> None:
        check_episode_shape(ways, shots, queries, meta_batch)
        self.source, self.ways, self.shots, self.queries = source, ways, shots, queries
        self.meta_batch = meta_batch
        need = max(shots + queries, source.min_size or 1)
        n = source.assign.shape[1]
        rows, offsets, counts, parts = [], [], [], []
        for assign in source.assign:  # one table over the clusters of every partition
            r, o, c = _by_cluster(assign, source.k)
            keep = (c >= need).nonzero().flatten()
            if len(keep) < ways:
                continue  # this partition cannot give an N-way task
            rows.append(r)
            offsets.append(o[keep] + n * len(offsets))
            counts.append(c[keep])
            parts.append(torch.full((len(keep),), len(parts)))
        if not parts:
            raise DataError(
                f"--ways {ways} but no partition of {source.name} has {ways} clusters with at "
                f"least {need} images (--shots {shots} + --queries {queries}); lower --ways, "
                "--shots/--queries or data.clusters.k"
            )
        self._rows = torch.cat(rows)  # (P' * n,) image row, partition-major then cluster-major
        self._offsets, self._counts = torch.cat(offsets), torch.cat(counts)  # (clusters,)
        self._part = torch.cat(parts)  # (clusters,) partition of each usable cluster
        self.partitions = len(parts)  # partitions that can give a task

    def sample_indices(self, generator: torch.Generator) -> Tensor:
        """(B, N, K+Q) image rows, on the CPU."""
        b, n, m = self.meta_batch, self.ways, self.shots + self.queries
        part = torch.randint(self.partitions, (b,), generator=generator)  # (B,) one per task
        keys = torch.rand(b, len(self._part), generator=generator)
        keys = keys.masked_fill(self._part[None, :] != part[:, None], 2.0)
        clusters = keys.argsort(dim=1)[:, :n]  # (B, N) distinct clusters of the task's partition
        counts = self._counts[clusters]  # (B, N)
        most = int(counts.max())
        keys = torch.rand(b, n, most, generator=generator)
        keys = keys.masked_fill(torch.arange(most) >= counts[..., None], 2.0)
        within = keys.argsort(dim=2)[..., :m]  # (B, N, K+Q) distinct members of each cluster
        return self._rows[self._offsets[clusters][..., None] + within]

    def sample(self, generator: torch.Generator) -> Episode:
        images = self.source.images
        x = to_float(images[self.sample_indices(generator).to(images.device)])  # (B, N, K+Q, ...)
        return Episode.class_major(x, self.shots)


def clustered_source(
    dataset: ClassIndexedDataset, options: ClustersConfig, split: str, augment: Any = None
) -> ClusteredImages | ClusterTasks:
    """The training split with k-means pseudo-labels (``data.labels: clusters``): a
    :class:`ClusteredImages` for one partition (``data.augment`` then augments its episodes like
    any labelled split's), a :class:`ClusterTasks` for several (not augmented)."""
    if augment is not None and options.partitions > 1:
        raise ConfigError(
            "data.augment with data.clusters.partitions > 1 is not supported; remove "
            "data.augment or set data.clusters.partitions: 1"
        )
    assign = cluster_assignments(dataset.images, dataset.name, split, options)
    if options.partitions == 1:
        return clustered_dataset(dataset, assign[0], options.k, options.min_size)
    return ClusterTasks(dataset, assign, options.k, options.min_size)
