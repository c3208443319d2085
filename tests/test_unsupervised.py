"""Tasks without labels (UMTRA), task augmentation, and contrastive pre-training (SimCLR, SupCon)
with Ni et al. 2022's identity between episodic cross-entropy and InfoNCE / NT-Xent."""

import pytest
import torch
import torch.nn.functional as F

import metalab.algorithms  # noqa: F401
from fixtures.blobs import blobs, scrambled, serve
from metalab.algorithms.distances import squared_euclidean
from metalab.algorithms.metric.protonet import ProtoNet
from metalab.algorithms.transfer.contrastive import info_nce, nt_xent, supcon
from metalab.config import parse_config
from metalab.engine.build import build_learner, load_learner
from metalab.engine.evaluate import evaluate
from metalab.engine.trainer import train
from metalab.errors import ConfigError, DataError
from metalab.tasks.augment import augment_config
from metalab.tasks.episodes import EpisodeSampler, FixedEpisodes, episode_sampler
from metalab.tasks.sources import load_split
from metalab.tasks.unsupervised import AugmentedBatches, UnlabeledImages


def synthetic(classes=30, per_class=5, seed=0):
    """Blobs at class-specific places, so that a few steps can learn something."""
    return blobs(classes, per_class, square=6, columns=6, noise=60, seed=seed)


use_dataset = serve


def run_config(name="protonet", labels="none", steps=3, **algorithm):
    return parse_config(
        {
            "algorithm": {"name": name, **algorithm},
            "data": {"dataset": "omniglot", "labels": labels, "val_split": None},
            "train": {
                "steps": steps,
                "ways": 5,
                "shots": 1,
                "queries": 2,
                "meta_batch": 2,
                "val_every": 0,
                "tensorboard": False,
                "checkpoint_every": 1,
                "device": "cpu",
            },
            "eval": {"ways": 5, "shots": 1, "queries": 2, "episodes": 4},
        }
    )


# --- UMTRA tasks ---------------------------------------------------------------------------------
def test_umtra_episodes_are_n_images_and_their_views():
    data = synthetic()
    src = UnlabeledImages(data, {"support": "original", "strength": 0.0})
    e = episode_sampler(src, 5, 2, 3, meta_batch=4).sample(torch.Generator().manual_seed(0))
    assert e.support_x.shape == (4, 10, 1, 28, 28) and e.query_x.shape == (4, 15, 1, 28, 28)
    assert e.classes is None and e.ways == 5
    assert torch.equal(e.support_y[0], torch.arange(5).repeat_interleave(2))
    assert torch.equal(e.query_y[0], torch.arange(5).repeat_interleave(3))
    # strength 0: every view of image n is image n itself; the N images of a task differ
    s = e.support_x.view(4, 5, 2, -1)
    q = e.query_x.view(4, 5, 3, -1)
    assert torch.equal(s[:, :, :1].expand_as(q), q) and torch.equal(s[:, :, 0], s[:, :, 1])
    rows = (s[:, :, 0, None] == data.images.flatten(1).float()[None, None] / 255).all(-1)
    assert bool((rows.sum(-1) >= 1).all())  # each support image is a stored image
    # original support: the first support view is the image, the queries are augmented
    aug = UnlabeledImages(data, {"support": "original"})
    e2 = episode_sampler(aug, 5, 1, 3).sample(torch.Generator().manual_seed(0))
    first = (e2.support_x[0, :, None].flatten(2) == data.images.flatten(1).float() / 255).all(-1)
    assert bool(first.any(-1).all())
    assert not torch.equal(e2.query_x[0, :1], e2.support_x[0, :1])


def test_unlabeled_source_refuses_what_needs_labels():
    src = UnlabeledImages(synthetic())
    with pytest.raises(DataError, match="data.labels is none"):
        _ = src.num_classes
    with pytest.raises(DataError, match="data.labels is none"):
        src.fixed_episodes(5, 1, 1, 10, 0)
    with pytest.raises(DataError, match="--ways 200"):
        episode_sampler(src, 200, 1, 1)


def test_training_labels_are_never_read(monkeypatch, tmp_path):
    """The same images under scrambled labels give the same tasks and the same trained weights."""
    data, test = synthetic(), synthetic(seed=9)
    other = scrambled(data)
    assert not torch.equal(other.counts, data.counts[: len(other.counts)])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    e1 = episode_sampler(UnlabeledImages(data), 5, 1, 2, 2).sample(g1)
    e2 = episode_sampler(UnlabeledImages(other), 5, 1, 2, 2).sample(g2)
    assert torch.equal(e1.support_x, e2.support_x) and torch.equal(e1.query_x, e2.query_x)
    weights = []
    for name, split in (("given", data), ("scrambled", other)):
        use_dataset(monkeypatch, split, test)
        train(run_config(), tmp_path / name, progress=False)
        state = torch.load(tmp_path / name / "last.pt", weights_only=True)
        weights.append(state["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # with labels the same two datasets train differently (the check above can fail)
    use_dataset(monkeypatch, data, test)
    train(run_config(labels="given"), tmp_path / "labelled", progress=False)
    labelled = torch.load(tmp_path / "labelled" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(labelled[k], weights[0][k]) for k in labelled)


def test_labels_none_on_omniglot_and_on_a_folder(data_dir, tmp_path):
    from PIL import Image

    cfg = parse_config({"data": {"data_dir": str(data_dir), "labels": "none"}})
    src = load_split(cfg.data, "train")
    assert isinstance(src, UnlabeledImages) and len(src) == 4112 * 20
    assert not isinstance(load_split(cfg.data, "test"), UnlabeledImages)
    # a user's unlabeled images: one folder of images under train/
    root = tmp_path / "mine"
    g = torch.Generator().manual_seed(0)
    for split, classes, count in (("train", ["all"], 30), ("test", ["a", "b", "c", "d", "e"], 4)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(28, 28, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    cfg = run_config(steps=2)
    cfg.data.dataset, cfg.data.data_dir = "folder", str(root)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2
    learner, cfg, _ = load_learner(tmp_path / "run", torch.device("cpu"), "last")
    out = evaluate(learner, FixedEpisodes(load_split(cfg.data, "test"), 5, 1, 2, 4, 0), 2)
    assert out.per_episode.shape == (4,)


def test_task_augmentation_for_supervised_episodes():
    data = synthetic()
    plain = EpisodeSampler(data, 5, 1, 2, 2).sample(torch.Generator().manual_seed(0))
    same = AugmentedBatches(EpisodeSampler(data, 5, 1, 2, 2), augment_config({"strength": 0.0}))
    e = same.sample(torch.Generator().manual_seed(0))
    assert torch.equal(e.support_x, plain.support_x) and torch.equal(e.classes, plain.classes)
    augmented = AugmentedBatches(EpisodeSampler(data, 5, 1, 2, 2), augment_config({}))
    e = augmented.sample(torch.Generator().manual_seed(0))
    assert torch.equal(e.classes, plain.classes) and torch.equal(e.query_y, plain.query_y)
    assert not torch.equal(e.support_x, plain.support_x)


# every kind of training batch: episodes, flat batches (Baseline), pairs (Siamese), label-delayed
# sequences (MANN), shuffled-support episodes (SNAIL)
AUGMENTED_LEARNERS = [
    ("protonet", {}),
    ("baseline", {"batch_size": 8}),
    ("siamese", {"batch_size": 8}),
    ("mann", {"instances": 2}),
    ("snail", {}),
]


@pytest.mark.parametrize("name, options", AUGMENTED_LEARNERS)
def test_task_augmentation_reaches_every_kind_of_batch(monkeypatch, tmp_path, name, options):
    data = synthetic()
    use_dataset(monkeypatch, data, synthetic(seed=9))
    cfg = run_config(name, labels="given", **options)
    learner = build_learner(cfg, (1, 28, 28), 0)
    draw = lambda sampler: sampler.sample(torch.Generator().manual_seed(0))  # noqa: E731
    plain = draw(learner.training_batches(data, cfg))
    fields = type(plain).image_fields
    # strength 0: the very batch the learner draws without augmentation
    cfg.data.augment = {"strength": 0.0}
    same = draw(learner.training_batches(load_split(cfg.data, "train"), cfg))
    assert all(torch.equal(getattr(same, f), getattr(plain, f)) for f in fields)
    cfg.data.augment = {"strength": 1.0}
    changed = draw(learner.training_batches(load_split(cfg.data, "train"), cfg))
    for f in fields:  # every image field is augmented, nothing else is touched
        assert getattr(changed, f).shape == getattr(plain, f).shape
        assert not torch.equal(getattr(changed, f), getattr(plain, f))
    for key, value in vars(plain).items():
        if key not in fields and isinstance(value, torch.Tensor):
            assert torch.equal(getattr(changed, key), value), key
    assert train(cfg, tmp_path / name, progress=False).step == 3


def test_contrastive_learners_apply_data_augment_as_their_views(monkeypatch):
    use_dataset(monkeypatch, synthetic(), synthetic(seed=9))
    cfg = run_config("simclr", labels="given", batch_size=8)
    cfg.data.augment = {"strength": 0.5}
    learner = build_learner(cfg, (1, 28, 28), 0)
    sampler = learner.training_batches(load_split(cfg.data, "train"), cfg)
    assert not isinstance(sampler, AugmentedBatches)  # not augmented twice


# --- contrastive learning as meta-learning (Ni et al. 2022) --------------------------------------
def views(m=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(m, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.7 * torch.randn(m, d, generator=g, dtype=torch.float64)


def reference_nt_xent(z1, z2, tau):
    """SimCLR eq. 1 written term by term."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    m, total = len(z1), 0.0
    for i in range(2 * m):
        j = (i + m) % (2 * m)
        denominator = sum(torch.exp(z[i] @ z[a] / tau) for a in range(2 * m) if a != i)
        total = total - torch.log(torch.exp(z[i] @ z[j] / tau) / denominator)
    return total / (2 * m)


def test_nt_xent_and_supcon_match_their_equations():
    z1, z2 = views()
    assert torch.allclose(nt_xent(z1, z2, 0.5), reference_nt_xent(z1, z2, 0.5))
    # SupCon with one class per image is NT-Xent (Khosla et al. 2020)
    assert torch.allclose(supcon(z1, z2, torch.arange(8), 0.5), nt_xent(z1, z2, 0.5))
    # SupCon with shared classes, term by term (eq. 2, L_out)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    z, yy = F.normalize(torch.cat([z1, z2]), dim=-1), torch.cat([y, y])
    total = 0.0
    for i in range(16):
        denominator = sum(torch.exp(z[i] @ z[a] / 0.1) for a in range(16) if a != i)
        pos = [p for p in range(16) if p != i and yy[p] == yy[i]]
        total = total - sum(
            torch.log(torch.exp(z[i] @ z[p] / 0.1) / denominator) for p in pos
        ) / len(pos)
    assert torch.allclose(supcon(z1, z2, y, 0.1), total / 16)


def test_episodic_cross_entropy_of_protonet_is_infonce():
    """Ni et al. 2022: the batch as one M-way 1-shot task, support = first views, queries = second
    views. ProtoNet's episodic loss (cosine scores scaled by 1/τ) is InfoNCE with the other images'
    opposite views as negatives; with squared Euclidean distance on normalised embeddings the same
    holds at scale 1/(2τ); averaged over both directions it is NT-Xent without same-view negatives,
    and SimCLR's NT-Xent (with them) is larger."""
    tau, m = 0.5, 8
    torch.manual_seed(0)
    learner = ProtoNet(ProtoNet.Config(distance="cosine", cosine_scale=1 / tau), (1, 28, 28), m)
    learner = learner.double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(m, 1, 28, 28, generator=g, dtype=torch.float64)
    x1, x2 = x, x.flip(-1) * 0.9 + 0.05  # two "views" of each image
    from metalab.tasks.episodes import Episode

    labels = torch.arange(m)[None]
    episode = Episode(x1[None], labels, x2[None], labels, m)
    episodic = learner.meta_loss(episode).loss
    z = learner.encoder(torch.cat([x1, x2]))  # one pass, as ProtoNet embeds support and query
    z1, z2 = z[:m], z[m:]
    assert torch.allclose(episodic, info_nce(z2, z1, tau))
    # squared Euclidean distance on normalised embeddings, scaled by 1/(2τ)
    n1, n2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    euclid = -squared_euclidean(n2[None], n1[None])[0] / (2 * tau)
    assert torch.allclose(F.cross_entropy(euclid, torch.arange(m)), episodic)
    # both directions: NT-Xent without same-view negatives
    both = 0.5 * (info_nce(z2, z1, tau) + info_nce(z1, z2, tau))
    assert torch.allclose(nt_xent(z1, z2, tau, same_view_negatives=False), both)
    assert nt_xent(z1, z2, tau) > both  # SimCLR's M − 1 extra negatives per anchor


def test_simclr_trains_without_labels_and_evaluates_frozen(monkeypatch, tmp_path):
    data, test = synthetic(), synthetic(seed=9)
    use_dataset(monkeypatch, data, test)
    cfg = run_config("simclr", batch_size=16, classifier="logistic")
    result = train(cfg, tmp_path / "simclr", progress=False)
    assert result.step == 3
    learner, cfg, _ = load_learner(tmp_path / "simclr", torch.device("cpu"), "last")
    out = evaluate(learner, FixedEpisodes(test, 5, 1, 2, 4, 0), 2)
    assert out.per_episode.shape == (4,)
    with pytest.raises(ConfigError, match="supcon needs class labels"):
        train(run_config("supcon", batch_size=16), tmp_path / "supcon", progress=False)
    assert (
        train(
            run_config("supcon", labels="given", batch_size=16), tmp_path / "sc", progress=False
        ).step
        == 3
    )


def test_simclr_reads_no_labels_even_from_a_labelled_split(monkeypatch, tmp_path):
    """SimCLR on a labelled split trains exactly as on the same images with scrambled labels, and as
    with data.labels: none."""
    data, test = synthetic(), synthetic(seed=9)
    weights = []
    for name, split, labels in (
        ("given", data, "given"),
        ("scrambled", scrambled(data), "given"),
        ("none", data, "none"),
    ):
        use_dataset(monkeypatch, split, test)
        train(run_config("simclr", labels=labels, batch_size=16), tmp_path / name, progress=False)
        weights.append(torch.load(tmp_path / name / "last.pt", weights_only=True)["model"])
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_unlabeled_runs_are_recorded_with_their_descriptor_and_metafeatures(monkeypatch, tmp_path):
    """A run on unlabeled data lands in the registry (it used to be refused: the descriptor asked
    the source for its classes), described without classes; meta-features need no labels."""
    from metalab.experiments.metafeatures import metafeatures
    from metalab.experiments.record import TrainRecord
    from metalab.experiments.registry import open_registry

    data = synthetic()
    use_dataset(monkeypatch, data, synthetic(seed=9))
    cfg, run = run_config(steps=2), tmp_path / "run"
    with TrainRecord.start(cfg, run) as rec:  # as `metalab train` records a run
        rec.finish(train(cfg, run, progress=False))
    (record,) = open_registry().query(run_dir=str(run.resolve()))
    assert record["status"] == "finished"
    desc = record["dataset_desc"]
    assert desc["labels"] == "none" and desc["examples"] == len(data.images)
    feats = metafeatures(UnlabeledImages(data))
    assert feats["log_examples"] == pytest.approx(float(torch.tensor(150.0).log()), abs=1e-6)
    assert {"raw_std", "rf_sparsity"} <= set(feats) and "raw_separability" not in feats
