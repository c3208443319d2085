"""Matching, Relation and Siamese networks and pair sampling: scores checked by hand on known
embeddings."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from metalab.algorithms.distances import class_sums, cosine_similarity, per_class
from metalab.algorithms.metric.matching import MatchingNet, attention
from metalab.algorithms.metric.relation import RelationNet, relation_pairs
from metalab.algorithms.metric.siamese import SiameseNet, koch_distortion, weighted_l1
from metalab.config import Config, load_config
from metalab.data.base import ClassIndexedDataset
from metalab.errors import ConfigError, DataError
from metalab.tasks.episodes import Episode, EpisodeSampler
from metalab.tasks.pairs import PairBatch, PairSampler

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "omniglot"


def episode_of(
    support: list[list[float]],
    support_y: list[int],
    query: list[list[float]],
    query_y: list[int],
    ways: int,
) -> Episode:
    """One task whose images are 1×1×D 'pixels': with a Flatten encoder the embeddings are these
    rows."""
    sx = torch.tensor(support)[None, :, None, None, :]  # (1, S, 1, 1, D)
    qx = torch.tensor(query)[None, :, None, None, :]
    return Episode(sx, torch.tensor([support_y]), qx, torch.tensor([query_y]), ways)


def tiny_dataset(
    counts=(2, 3, 4, 2, 3, 5), groups=("a", "a", "b", "b", "b", "c")
) -> ClassIndexedDataset:
    """Image j of class c has pixels (c, j, 0, 0): every drawn image names its class and index."""
    per_class = [
        torch.tensor([[c, j, 0, 0] for j in range(n)], dtype=torch.uint8).view(n, 1, 2, 2)
        for c, n in enumerate(counts)
    ]
    return ClassIndexedDataset.from_class_tensors(
        "tiny", per_class, [f"c{c}" for c in range(len(counts))], list(groups)
    )


def tiny_28(classes: int = 6, per_class: int = 5) -> ClassIndexedDataset:
    g = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (per_class, 1, 28, 28), dtype=torch.uint8, generator=g)
        for _ in range(classes)
    ]
    return ClassIndexedDataset.from_class_tensors(
        "tiny28", images, [str(c) for c in range(classes)], ["a", "b"] * (classes // 2)
    )


# Shared parts ------------------------------------------------------------------------------------


def test_class_sums_and_per_class_reductions():
    support = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 5.0]]])  # class 1 twice, class 0 once
    labels = torch.tensor([[1, 1, 0]])
    assert torch.equal(class_sums(support, labels, 2), torch.tensor([[[0.0, 5.0], [3.0, 1.0]]]))
    scores = torch.tensor([[[0.5, -1.0, 2.0]]])
    assert torch.equal(per_class(scores, labels, 2, "max"), torch.tensor([[[2.0, 0.5]]]))
    expected = torch.tensor([[[2.0, math.log(math.exp(0.5) + math.exp(-1.0))]]])
    assert torch.allclose(per_class(scores, labels, 2, "logsumexp"), expected)


# Matching Networks --------------------------------------------------------------------------------


def test_matching_attention_is_softmax_of_cosines_and_sums_per_class():
    learner = MatchingNet(MatchingNet.Config(), (1, 1, 2))
    learner.encoder = nn.Flatten()
    # Class 0: (1, 0); class 1: (0, 1) and (1, 1). Query (1, 0): cosines 1, 0, 1/√2.
    ep = episode_of([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0, 1, 1], [[1.0, 0.0]], [1], ways=2)
    e = [math.exp(1.0), 1.0, math.exp(1 / math.sqrt(2))]
    a = torch.tensor([[[v / sum(e) for v in e]]])  # ≈ 0.473, 0.174, 0.353
    got = attention(torch.tensor([[[1.0, 0.0]]]), ep.support_x.flatten(2), scale=1.0)
    assert torch.allclose(got, a, atol=1e-6)
    probs = learner.predict(ep).exp()  # eq. (1): ŷ = Σ a_i y_i
    assert torch.allclose(probs, torch.tensor([[[a[0, 0, 0], a[0, 0, 1] + a[0, 0, 2]]]]), atol=1e-6)
    assert int(probs.argmax(-1)) == 1  # two moderately similar shots outweigh one close one
    out = learner.meta_loss(ep)
    assert torch.allclose(out.loss, -torch.log(a[0, 0, 1] + a[0, 0, 2]), atol=1e-6)
    assert float(out.metrics["accuracy"]) == 1.0


def test_matching_cosine_scale_sharpens_attention():
    learner = MatchingNet(MatchingNet.Config(cosine_scale=10.0), (1, 1, 2))
    learner.encoder = nn.Flatten()
    ep = episode_of([[1.0, 0.0], [0.0, 1.0]], [0, 1], [[2.0, 1.0]], [0], ways=2)
    cos = cosine_similarity(torch.tensor([[[2.0, 1.0]]]), ep.support_x.flatten(2))
    assert torch.allclose(cos, torch.tensor([[[2 / math.sqrt(5), 1 / math.sqrt(5)]]]))
    assert torch.allclose(learner.predict(ep), (10 * cos).log_softmax(-1), atol=1e-6)


def test_fce_shapes_and_the_query_embedding_depends_on_the_support_set():
    torch.manual_seed(0)
    learner = MatchingNet(MatchingNet.Config(fce=True, fce_steps=3, hidden=8), (1, 28, 28)).eval()
    sampler = EpisodeSampler(tiny_28(), ways=3, shots=2, queries=2, meta_batch=2)
    ep = sampler.sample(torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert learner.predict(ep).shape == (2, 6, 3)
        f, g = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
        g_ctx = learner.context.support(g)
        assert g_ctx.shape == (2, 6, 8)
        assert learner.context.query(f, g_ctx).shape == (2, 6, 8)
        other = g.clone()
        other[:, -1] += 1.0  # change one support embedding
        assert not torch.allclose(
            learner.context.support(other)[:, 0], g_ctx[:, 0]
        )  # g(x_0, S) sees x_5
        assert not torch.allclose(
            learner.context.query(f, learner.context.support(other)),
            learner.context.query(f, g_ctx),
        )
    learner.train()
    learner.meta_loss(ep).loss.backward()
    assert all(p.grad is not None for p in learner.context.parameters())


# Relation Networks --------------------------------------------------------------------------------


def test_relation_pairs_put_the_class_first_then_the_query():
    classes = torch.tensor([10.0, 20.0]).view(1, 2, 1, 1, 1)  # (B, N, C, h, w)
    queries = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1)  # (B, M, C, h, w)
    pairs = relation_pairs(classes, queries)
    assert pairs.shape == (1, 3, 2, 2, 1, 1)
    for m in range(3):
        for n in range(2):
            assert pairs[0, m, n, :, 0, 0].tolist() == [10.0 * (n + 1), m + 1.0]


class Recorder(nn.Module):
    """Stands in for the relation module: keeps its input, scores a pair by class · query
    channel."""

    def forward(self, pairs):
        self.pairs = pairs
        return pairs[:, 0, 0, 0] * pairs[:, 1, 0, 0]


def test_relation_sums_each_class_support_then_scores_with_mse():
    learner = RelationNet(RelationNet.Config(), (1, 28, 28))
    learner.encoder = nn.Identity()  # feature maps = the images: (1, 1, D) per example
    learner.relation = Recorder()
    # 2-way 2-shot, class-major: class 0 = 1 and 2, class 1 = 0.5 and −1.5; queries 1 and −1.
    ep = Episode(
        torch.tensor([1.0, 2.0, 0.5, -1.5]).view(1, 4, 1, 1, 1),
        torch.tensor([[0, 0, 1, 1]]),
        torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1),
        torch.tensor([[0, 1]]),
        ways=2,
    )
    logits = learner.predict(ep)
    pairs = learner.relation.pairs.view(1, 2, 2, 2)  # (B, M, N, [class, query])
    assert pairs[0, :, :, 0].tolist() == [[3.0, -1.0], [3.0, -1.0]]  # K-shot sum per class
    assert pairs[0, :, :, 1].tolist() == [[1.0, 1.0], [-1.0, -1.0]]
    assert logits.tolist() == [[[3.0, -1.0], [-3.0, 1.0]]]
    r = torch.sigmoid(torch.tensor([[3.0, -1.0], [-3.0, 1.0]]))
    expected = ((r - torch.eye(2)) ** 2).mean()  # eq. (2), averaged
    assert torch.allclose(learner.meta_loss(ep).loss, expected)


# Siamese networks ---------------------------------------------------------------------------------


def siamese_with_known_embeddings(**options) -> SiameseNet:
    """Twin = identity; p = σ(−Σ|h1 − h2|): α_j = −1, no bias."""
    learner = SiameseNet(SiameseNet.Config(features=8, **options), (1, 28, 28))
    learner.twin = nn.Flatten()
    learner.distance = nn.Linear(2, 1)
    with torch.no_grad():
        learner.distance.weight.fill_(-1.0)
        learner.distance.bias.zero_()
    return learner


def test_siamese_two_way_one_shot_labels_by_the_most_similar_support_image():
    learner = siamese_with_known_embeddings()
    ep = episode_of([[0.0, 0.0], [1.0, 1.0]], [0, 1], [[0.2, 0.1], [0.9, 1.0]], [0, 1], ways=2)
    logits = learner.predict(ep)
    assert torch.allclose(
        logits, torch.tensor([[[-0.3, -1.7], [-1.9, -0.1]]]), atol=1e-6
    )  # −L1 = logit p
    assert logits.argmax(-1).tolist() == [[0, 1]]
    pairs = PairBatch(
        torch.tensor([[0.2, 0.1], [0.2, 0.1]]),
        torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
        torch.tensor([1.0, 0.0]),
    )
    out = learner.meta_loss(pairs)
    p = torch.sigmoid(torch.tensor([-0.3, -1.7]))
    assert torch.allclose(out.loss, -(torch.log(p[0]) + torch.log(1 - p[1])) / 2, atol=1e-6)
    assert float(out.metrics["accuracy"]) == 0.5  # p(same) < 1/2 for the same-class pair


def test_siamese_k_shot_mean_and_max_of_similarity_per_class():
    # Query 0; class 0 at L1 0.5 and 3.0, class 1 at 1.0 and 1.2: max picks class 0, mean picks
    # class 1.
    ep = episode_of(
        [[0.5, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 1.2]], [0, 0, 1, 1], [[0.0, 0.0]], [1], ways=2
    )
    by_max = siamese_with_known_embeddings(shot_reduce="max").predict(ep)
    assert torch.allclose(by_max, torch.tensor([[[-0.5, -1.0]]]))
    by_mean = siamese_with_known_embeddings(shot_reduce="mean").predict(ep)
    mean_p = torch.tensor(
        [
            (torch.sigmoid(torch.tensor(-0.5)) + torch.sigmoid(torch.tensor(-3.0))) / 2,
            (torch.sigmoid(torch.tensor(-1.0)) + torch.sigmoid(torch.tensor(-1.2))) / 2,
        ]
    )
    assert torch.allclose(by_mean, torch.logit(mean_p).view(1, 1, 2), atol=1e-5)
    assert int(by_max.argmax()) == 0 and int(by_mean.argmax()) == 1


def test_weighted_l1_matches_the_explicit_sum_for_weights_of_both_signs():
    g = torch.Generator().manual_seed(0)
    q, s, w = (
        torch.randn(2, 3, 5, generator=g),
        torch.randn(2, 4, 5, generator=g),
        torch.randn(5, generator=g),
    )
    explicit = ((q[:, :, None] - s[:, None]).abs() * w).sum(-1)
    assert torch.allclose(weighted_l1(q, s, w), explicit, atol=1e-5)


def test_koch_distortion_is_a_function_of_the_generator_only():
    images = torch.rand(6, 1, 28, 28)
    state = torch.random.get_rng_state()
    a = koch_distortion(images, torch.Generator().manual_seed(3))
    b = koch_distortion(images, torch.Generator().manual_seed(3))
    c = koch_distortion(images, torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_koch_architecture_for_105_pixel_images():
    learner = SiameseNet(SiameseNet.Config(backbone="koch"), (1, 105, 105))
    assert sum(p.numel() for p in learner.parameters()) == 38_951_745  # the paper's count
    with pytest.raises(ConfigError, match="too small"):
        SiameseNet(SiameseNet.Config(backbone="koch"), (1, 28, 28))


# Pair sampling ------------------------------------------------------------------------------------


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, image-within-class) of each gathered image of tiny_dataset."""
    pixels = (x * 255).round().long().flatten(1)
    return pixels[:, 0], pixels[:, 1]


@pytest.mark.parametrize("within_group", [False, True])
def test_pair_sampler_invariants(within_group):
    data = tiny_dataset()
    sampler = PairSampler(data, batch_size=64, within_group=within_group)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = sampler.sample(g)
        assert batch.x1.shape == batch.x2.shape == (64, 1, 2, 2) and batch.x1.dtype == torch.float32
        assert batch.same.tolist() == [1.0] * 32 + [0.0] * 32  # balanced
        (c1, j1), (c2, j2) = decode(batch.x1), decode(batch.x2)
        same = batch.same.bool()
        assert torch.equal(c1 == c2, same)  # same-label pairs are one class, the others two
        assert bool((j1[same] != j2[same]).all())  # no image paired with itself
        assert bool((j1 < data.counts[c1]).all() and (j2 < data.counts[c2]).all())
        if within_group:
            assert torch.equal(data.groups[c1], data.groups[c2])
    again = PairSampler(data, 64, within_group).sample(torch.Generator().manual_seed(0))
    first = PairSampler(data, 64, within_group).sample(torch.Generator().manual_seed(0))
    assert torch.equal(again.x1, first.x1) and torch.equal(again.x2, first.x2)


def test_pair_sampler_covers_every_class_and_image():
    data = tiny_dataset()
    batch = PairSampler(data, batch_size=4000).sample(torch.Generator().manual_seed(1))
    (c1, j1), (c2, j2) = decode(batch.x1), decode(batch.x2)
    seen = set(zip(torch.cat([c1, c2]).tolist(), torch.cat([j1, j2]).tolist()))
    assert seen == {(c, j) for c, n in enumerate(data.counts.tolist()) for j in range(n)}


def test_pair_sampler_errors_name_the_problem():
    with pytest.raises(DataError, match="even"):
        PairSampler(tiny_dataset(), batch_size=7)
    with pytest.raises(DataError, match="c0"):
        PairSampler(
            tiny_dataset(counts=(1, 3), groups=("a", "a")), batch_size=4
        )  # class c0 has a single image
    with pytest.raises(DataError, match="within_group"):
        PairSampler(tiny_dataset(counts=(2, 2), groups=("a", "b")), batch_size=4, within_group=True)


def test_siamese_trains_on_pairs_and_distorts_with_the_sampler_generator():
    learner = SiameseNet(
        SiameseNet.Config(hidden=8, features=16, batch_size=8, distort=True), (1, 28, 28)
    )
    cfg = Config(algorithm={"name": "siamese"})
    sampler = learner.train_sampler(tiny_28(), cfg)
    assert isinstance(sampler, PairSampler) and sampler.transform is koch_distortion
    batch = sampler.sample(torch.Generator().manual_seed(0))
    out = learner.meta_loss(batch)
    out.loss.backward()
    assert math.isfinite(float(out.loss.detach())) and learner.distance.weight.grad is not None


# Presets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(
        p.name
        for p in CONFIGS.glob("*.yaml")
        if p.name.split("-")[0] in ("matching", "relation", "siamese")
    ),
)
def test_presets_parse(path):
    cfg = load_config(CONFIGS / path)
    assert cfg.algorithm_name == path.split("-")[0]


def test_every_paper_setting_has_a_preset():
    for name in ("matching", "relation", "siamese"):
        for setting in ("5w1s", "5w5s", "20w1s", "20w5s", "cpu"):
            assert (CONFIGS / f"{name}-{setting}.yaml").is_file()
    assert load_config(CONFIGS / "matching-fce-5w1s.yaml").algorithm["fce"] is True
