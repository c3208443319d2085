"""Tasks without labels: N-way tasks built from N unlabeled images and their augmentations (UMTRA).

UMTRA (Khodadadeh, Bölöni & Shah, "Unsupervised Meta-Learning for Few-Shot Image Classification",
NeurIPS 2019), Algorithm 1: draw N images x_1..x_N at random from the unlabeled training set and
give image n the label n; the support set is (x_n, n) (K = 1), the query set is (A(x_n), n) for a
random augmentation A. With many more classes than N, the N images are from N different classes
with high probability (Omniglot's Vinyals train split: 4112 classes, so two images of one class in
a 20-way task have probability about C(20, 2)/4112 ≈ 5%).

Ni et al. ("The Close Relationship Between Contrastive Learning and Meta-Learning", ICLR 2022)
augment the support views as well (contrastive learning's two random views): ``support: augmented``
(the default here) gives each image K augmented support views and Q augmented query views;
``support: original`` is UMTRA's (the first support view is the image itself, any others are
augmented).

**Training labels are never read.** :class:`UnlabeledImages` keeps only the split's image tensor
(rows in storage order), not its class table: the offsets, counts, class and group names of the
labelled split are dropped when it is built, and asking it for classes raises a :class:`DataError`
naming the switch. Episodes carry ``classes = None``.

Switch: ``data.labels: none`` in a run's config makes the training split of any image dataset
(Omniglot, a folder of images — with ``DIR/train/`` holding the images in any sub-folders)
unlabeled; :func:`metalab.tasks.sources.load_split` wraps it. Every episodic learner (``protonet``,
``maml``, ``matching``, ``relation``, …) then trains on these tasks through its unchanged
``train_sampler`` (:func:`metalab.tasks.episodes.episode_sampler` asks the source for its sampler),
the contrastive learners (:mod:`metalab.algorithms.transfer.contrastive`) draw their views from it.
Validation and evaluation splits keep their labels (the presets set ``data.val_split: null`` so
that no label of any split is used during training).

With labels (``data.labels: given``) and a ``data.augment`` mapping, :class:`AugmentedImages` is
task augmentation for every supervised learner: the learner draws its usual training batches from
the labelled split (episodes, flat batches, pairs, label-delayed sequences) and
:class:`AugmentedBatches` augments every image of every batch (the batch type's
``image_fields``), so task augmentation reaches metric, model-based, optimization and transfer
learners alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from metalab.data.base import ClassIndexedDataset
from metalab.errors import DataError
from metalab.tasks.augment import Augment, AugmentConfig, augment_config
from metalab.tasks.episodes import Episode, check_episode_shape, to_float

LABELS = ("given", "none", "clusters")  # clusters: CACTUs pseudo-labels (tasks/clusters.py)


def distinct_rows(total: int, b: int, n: int, generator: torch.Generator) -> Tensor:
    """(B, N) row indices, distinct within each row: N draws without replacement from ``total``.
    Sparse draws (8N < total) redraw the rare rows with a repeat; dense ones sort random keys."""
    if n * 8 < total:
        # sample with replacement, then redraw the rare rows that repeat an index
        rows = torch.randint(total, (b, n), generator=generator)
        while True:
            sorted_rows = rows.sort(1).values
            bad = (sorted_rows[:, 1:] == sorted_rows[:, :-1]).any(1)
            if not bool(bad.any()):
                return rows
            rows[bad] = torch.randint(total, (int(bad.sum()), n), generator=generator)
    return torch.rand(b, total, generator=generator).argsort(1)[:, :n]


class ImagesWithoutClasses:
    """A training split that keeps its image tensor but no class table (:class:`UnlabeledImages`,
    :class:`metalab.tasks.clusters.ClusterTasks`): an episodic task source whose refusals of what
    a labelled consumer asks for (``num_classes``, ``counts``, ``fixed_episodes``) name the switch,
    through :meth:`_refuse`. Records and meta-features describe it without classes."""

    regression = False
    labelled = False
    images: Tensor

    def _refuse(self, what: str) -> DataError:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    image_shape = input_shape

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        raise self._refuse("classes (this algorithm needs class labels)")

    @property
    def counts(self) -> Tensor:
        raise self._refuse("classes (this algorithm needs class labels)")

    def fixed_episodes(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("labelled episodes to evaluate on; evaluate on a labelled split")


class UnlabeledImages(ImagesWithoutClasses):
    """A training split seen as images only (see the module docstring).

    Args:
        dataset: the labelled split; only ``images`` (and how they were decoded) is kept.
        augment: the augmentation options of the views (``data.augment``).
    """

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        augment: AugmentConfig | dict[str, Any] | None = None,
    ) -> None:
        if len(dataset.images) < 2:
            raise DataError(f"{dataset.name} holds {len(dataset.images)} image(s); tasks need 2")
        self.name = f"{dataset.name} (unlabeled)"
        self.images = dataset.images  # (total, C, H, W) uint8; the only thing read
        self.preprocess = dataset.preprocess
        self.augment = augment_config(augment)

    @classmethod
    def _of(cls, images: Tensor, name: str, preprocess: Any, augment: AugmentConfig):
        new = cls.__new__(cls)
        new.name, new.images, new.preprocess, new.augment = name, images, preprocess, augment
        return new

    def to(self, device: torch.device | str) -> UnlabeledImages:
        return self._of(self.images.to(device), self.name, self.preprocess, self.augment)

    def _refuse(self, what: str) -> DataError:
        return DataError(
            f"{self.name}: data.labels is none, so the training split has no {what}; train an "
            "episodic learner (protonet, maml, ...) or a contrastive one (simclr), or set "
            "data.labels: given"
        )

    # --- tasks ----------------------------------------------------------------------------------
    def episode_sampler(
        self, ways: int, shots: int, queries: int, meta_batch: int = 1, within_group: bool = False
    ) -> UnsupervisedEpisodes:
        if within_group:
            raise self._refuse("alphabets (groups) for data.within_group; set it to false")
        return UnsupervisedEpisodes(self, ways, shots, queries, meta_batch)


class UnsupervisedEpisodes:
    """Draws batches of UMTRA tasks: N distinct images per task, K support and Q query views each.

    Episode layout is the labelled one (class-major, labels 0..N-1, ``classes = None``)::

        support_x (B, N*K, C, H, W)   query_x (B, N*Q, C, H, W)
    """

    def __init__(
        self, source: UnlabeledImages, ways: int, shots: int, queries: int, meta_batch: int = 1
    ) -> None:
        check_episode_shape(ways, shots, queries, meta_batch)
        if ways > len(source):
            raise DataError(
                f"--ways {ways} but {source.name} holds only {len(source)} images; use at most "
                f"{len(source)} ways"
            )
        self.source, self.ways, self.shots, self.queries = source, ways, shots, queries
        self.meta_batch = meta_batch
        self.augment = Augment(source.augment)

    def sample(self, generator: torch.Generator) -> Episode:
        b, n, k, q = self.meta_batch, self.ways, self.shots, self.queries
        images = self.source.images
        rows = distinct_rows(len(images), b, n, generator)  # (B, N) on the CPU
        x = to_float(images[rows.to(images.device)])  # (B, N, C, H, W)
        views = x[:, :, None].expand(b, n, k + q, *x.shape[2:])  # (B, N, K+Q, C, H, W)
        views = self.augment(views.flatten(0, 2), generator).view_as(views)
        if self.source.augment.support == "original":
            views = torch.cat([x[:, :, None], views[:, :, 1:]], dim=2)
        return Episode.class_major(views, k)


class AugmentedImages:
    """A labelled training split whose training batches are augmented (task augmentation).
    :meth:`metalab.algorithms.base.MetaLearner.training_batches` hands the learner the labelled
    ``dataset`` and augments what its sampler draws; anything else read of this wrapper directly
    is refused by name rather than answered unaugmented."""

    regression = False

    def __init__(self, dataset: ClassIndexedDataset, augment: AugmentConfig | dict | None) -> None:
        self.dataset, self.augment = dataset, augment_config(augment)
        self.name, self.preprocess = dataset.name, dataset.preprocess

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.image_shape

    image_shape = input_shape

    # what describes the split (run records): the labelled split's own tables
    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def counts(self) -> Tensor:
        return self.dataset.counts

    @property
    def images(self) -> Tensor:
        return self.dataset.images

    @property
    def group_names(self) -> list[str]:
        return self.dataset.group_names

    def to(self, device: torch.device | str) -> AugmentedImages:
        return AugmentedImages(self.dataset.to(device), self.augment)

    def fixed_episodes(self, *args: Any, **kwargs: Any) -> Any:
        raise DataError(
            f"{self.name} is an augmented training split; evaluate on a split without data.augment"
        )

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes not defined above (offsets, require_images_per_class, ...):
        # a learner that would draw from the split itself (flat batches, pairs, sequences) is
        # refused; a name the split does not have either is an ordinary AttributeError
        if name.startswith("__") or name == "dataset" or not hasattr(self.dataset, name):
            raise AttributeError(name)
        raise DataError(
            f"data.augment augments the training batches a learner draws, and this code reads "
            f"'{name}' of the augmented split {self.dataset.name} directly; remove data.augment"
        )


class AugmentedBatches:
    """Any sampler's batches with every image augmented: the fields the batch type names in
    ``image_fields`` (an episode's support and query images, a flat batch's, both images of each
    pair, every step of a sequence), each image drawn its own augmentation, in one batched call."""

    def __init__(self, sampler: Any, augment: AugmentConfig) -> None:
        self.sampler, self.augment = sampler, Augment(augment)

    def sample(self, generator: torch.Generator) -> Any:
        batch = self.sampler.sample(generator)
        fields = getattr(batch, "image_fields", None)
        if not fields:
            raise DataError(
                f"data.augment: this learner's training batches ({type(batch).__name__}) hold no "
                "images to augment; remove data.augment"
            )
        images = [getattr(batch, f) for f in fields]
        shape = images[0].shape[-3:]  # (C, H, W)
        flat = torch.cat([x.reshape(-1, *shape) for x in images])
        out = self.augment(flat, generator).split([x.shape[:-3].numel() for x in images])
        changed = {f: y.view_as(x) for f, x, y in zip(fields, images, out, strict=True)}
        return dataclasses.replace(batch, **changed)


def training_source(data: Any, source: Any) -> Any:
    """The training split as ``data.labels`` and ``data.augment`` make it: unlabeled (UMTRA tasks),
    augmented (task augmentation), or ``source`` itself."""
    labels = getattr(data, "labels", "given")
    if labels not in LABELS:
        from metalab.errors import ConfigError

        raise ConfigError(f"data.labels '{labels}' is unknown; choices: {', '.join(LABELS)}")
    augment = getattr(data, "augment", None)
    if labels == "given" and augment is None:
        return source
    if not isinstance(source, ClassIndexedDataset):
        from metalab.errors import ConfigError

        raise ConfigError(
            f"data.labels: {labels} / data.augment apply to image datasets; dataset "
            f"'{data.dataset}' has no images to augment; remove them"
        )
    if labels == "none":
        return UnlabeledImages(source, augment)
    if labels == "clusters":
        from metalab.tasks.clusters import clustered_source

        source = clustered_source(source, data.clusters, data.train_split, augment)
        if augment is None:
            return source
    return AugmentedImages(source, augment)
