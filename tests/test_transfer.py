"""Transfer baselines (Baseline, Baseline++, Tian et al.'s classifiers), flat batches, the
comparison
report with its paired statistics, and Lake et al.'s one-shot challenge."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fixtures.challenge_runs import make_challenge_runs, zip_runs
from metalab.algorithms.base import MetaLearner
from metalab.algorithms.heads import head_logits, logistic_regression, nearest_centroid_logits
from metalab.algorithms.transfer.finetune import (
    Baseline,
    BaselinePP,
    authors_cosine_scale,
    sgd_step,
)
from metalab.config import parse_config
from metalab.data.base import ClassIndexedDataset, Preprocess
from metalab.engine.trainer import train
from metalab.errors import ConfigError
from metalab.protocols.compare import compare_runs, paired_difference
from metalab.protocols.omniglot_challenge import (
    check_background_only,
    evaluate_challenge,
    evaluate_within_alphabet,
    within_alphabet_episodes,
)
from metalab.tasks.episodes import Episode
from metalab.tasks.flat import FlatBatchSampler


def toy_episode(tasks=2, ways=3, shots=2, queries=2, seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g)
    qx = torch.rand(tasks, ways * queries, 1, 28, 28, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return Episode(sx, sy, qx, qy, ways)


def small(cls=Baseline, **options) -> Baseline:
    learner = cls(cls.Config(**({"hidden": 8, "finetune_epochs": 5} | options)), (1, 28, 28))
    return learner.eval()


# --- flat batches
# ----------------------------------------------------------------------------------------


def test_flat_batches_label_every_image_with_its_class():
    per_class = [
        torch.full((n, 1, 2, 2), c, dtype=torch.uint8) for c, n in enumerate([3, 1, 5])
    ]  # pixel = class id
    data = ClassIndexedDataset.from_class_tensors("toy", per_class, ["a", "b", "c"])
    sampler = FlatBatchSampler(data, batch_size=64)
    batch = sampler.sample(torch.Generator().manual_seed(0))
    assert batch.x.shape == (64, 1, 2, 2) and batch.x.dtype == torch.float32
    assert torch.equal((batch.x[:, 0, 0, 0] * 255).round().long(), batch.y)
    assert set(batch.y.tolist()) == {0, 1, 2}
    again = sampler.sample(torch.Generator().manual_seed(0))
    assert torch.equal(again.x, batch.x) and torch.equal(again.y, batch.y)
    with pytest.raises(ConfigError, match="batch_size"):
        FlatBatchSampler(data, 0)


# --- heads and classifiers by hand
# -----------------------------------------------------------------------


def test_cosine_head_by_hand():
    z = torch.tensor([[3.0, 4.0]])  # unit direction (0.6, 0.8)
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-5.0, 0.0]])
    assert torch.allclose(
        head_logits("cosine", {"weight": w}, z, 2.0), torch.tensor([[1.2, 1.6, -1.2]])
    )
    assert torch.allclose(
        head_logits("linear", {"weight": w, "bias": torch.tensor([1.0, 0.0, 0.0])}, z, 2.0),
        torch.tensor([[4.0, 8.0, -15.0]]),
    )
    assert authors_cosine_scale(200) == 2.0 and authors_cosine_scale(4112) == 10.0


def test_baseline_pp_pretraining_logits_are_scaled_cosines():
    learner = BaselinePP(BaselinePP.Config(hidden=8, classes=300), (1, 28, 28))
    assert learner.head.bias is None
    x = torch.rand(4, 1, 28, 28)
    z = learner.backbone(x)
    expected = (
        10.0
        * (z / z.norm(dim=1, keepdim=True))
        @ (learner.head.weight / learner.head.weight.norm(dim=1, keepdim=True)).T
    )
    got = head_logits("cosine", dict(learner.head.named_parameters()), z, learner.scale(300))
    assert torch.allclose(got, expected, atol=1e-6)


def test_sgd_step_matches_torch_sgd_with_dampening():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    params, buffers = {"p": p.detach().clone()}, {}
    for g in (torch.tensor([0.5, 1.0]), torch.tensor([-1.0, 2.0]), torch.tensor([0.3, 0.3])):
        p.grad = g.clone()
        opt.step()
        params, buffers = sgd_step(params, {"p": g}, buffers, 0.01, 0.9, 0.9, 1e-3)
    assert torch.allclose(params["p"], p.detach(), atol=1e-7)


def test_nearest_centroid_by_hand():
    support = torch.tensor(
        [[[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]]]
    )  # class 0 twice, same direction; class 1
    query = torch.tensor([[[2.0, 1.0]]])  # unit (2, 1)/√5; unit vectors: |a − b|² = 2 − 2 a·b
    logits = nearest_centroid_logits(support, torch.tensor([[0, 0, 1]]), 2, query)
    r5 = math.sqrt(5)
    assert torch.allclose(logits, -torch.tensor([[[2 - 4 / r5, 2 - 2 / r5]]]), atol=1e-6)


def test_logistic_regression_by_hand():
    # z = ±1 (labels 0, 1); by symmetry W = (w, −w), b = 0, and the objective 2 log(1 + e^{−2w}) +
    # w²/C
    # is stationary where w = 2C σ(−2w). Solve that by bisection.
    z, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 1])
    lo, hi = 0.0, 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid - 2 / (1 + math.exp(2 * mid)) < 0 else (lo, mid)
    head = logistic_regression(z, y, 2, c=1.0)
    assert torch.allclose(head["weight"], torch.tensor([[lo], [-lo]]), atol=1e-5)
    assert torch.allclose(head["bias"], torch.zeros(2), atol=1e-6)
    # A generic task: the gradient of Σ CE + |W|²/(2C) vanishes at the solution.
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(12, 4, generator=g), dim=-1)
    y = torch.arange(3).repeat(4)
    head = logistic_regression(z, y, 3, c=0.5)
    p = torch.softmax(z @ head["weight"].T + head["bias"], -1) - F.one_hot(y, 3)
    assert torch.allclose(p.T @ z + head["weight"] / 0.5, torch.zeros(3, 4), atol=1e-4)
    assert torch.allclose(p.sum(0), torch.zeros(3), atol=1e-4)


# --- predict: frozen backbone, support labels only, reproducible
# ------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"head": "cosine"},
        {"classifier": "logistic"},
        {"classifier": "centroid"},
        {"finetune_backbone": True},
    ],
)
def test_backbone_stays_frozen_and_only_support_labels_are_seen(options):
    learner = small(**options)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    episode = toy_episode()
    with torch.no_grad():
        logits = learner.predict(episode)
    assert logits.shape == (2, 6, 3)
    logits_grad_enabled = learner.predict(
        episode
    )  # gradients enabled: still nothing reaches the model
    assert all(p.grad is None for p in learner.parameters())
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert torch.allclose(logits, logits_grad_enabled)
    shuffled = Episode(
        episode.support_x, episode.support_y, episode.query_x, episode.query_y.flip(-1), 3
    )
    assert torch.equal(learner.predict(shuffled), logits)  # query labels change nothing


def test_finetuning_is_per_task_and_reproducible():
    learner = small()
    episode = toy_episode(tasks=3)
    together = learner.predict(episode)
    alone = torch.cat([learner.predict(episode.task(i)) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.equal(learner.predict(episode), together)
    relabelled = Episode(
        episode.support_x, episode.support_y.flip(-1), episode.query_x, episode.query_y, 3
    )
    assert not torch.allclose(
        learner.predict(relabelled), together
    )  # the head does learn the support labels


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_finetuned_head_fits_a_separable_support_set(head):
    learner = small(finetune_epochs=100, head=head)
    learner.backbone = (
        torch.nn.Flatten()
    )  # known embeddings: the pixels, of norm 5 (Conv-4 features: a few units)
    learner.features = 4
    sx = 5 * torch.eye(4).view(1, 4, 1, 2, 2).repeat_interleave(
        2, dim=1
    )  # 4 classes, 2 identical shots each
    episode = Episode(
        sx,
        torch.arange(4).repeat_interleave(2)[None],
        5 * torch.eye(4).view(1, 4, 1, 2, 2),
        torch.arange(4)[None],
        4,
    )
    assert torch.equal(learner.predict(episode).argmax(-1), episode.query_y)


# --- paired statistics
# ---------------------------------------------------------------------------------------


def test_paired_difference_by_hand():
    mean, ci = paired_difference(
        [1.0, 0.8, 0.6], [0.9, 0.8, 0.4]
    )  # d = (0.1, 0, 0.2): mean 0.1, s = 0.1
    assert mean == pytest.approx(0.1) and ci == pytest.approx(1.96 * 0.1 / math.sqrt(3))
    # a constant advantage on very different episodes: the pair's spread is 0, however much the
    # episodes vary
    assert paired_difference([0.95, 0.55, 0.75], [0.9, 0.5, 0.7]) == pytest.approx((0.05, 0.0))
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 0.5])


# --- the one-shot challenge
# ------------------------------------------------------------------------------


class Oracle(MetaLearner):
    """Scores the true query label highest (``wrong``: lowest) — checks how trials are paired and
    counted."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.wrong = wrong

    def predict(self, episode):
        hot = F.one_hot(episode.query_y, episode.ways).float()
        return -hot if self.wrong else hot


class PixelMatch(MetaLearner):
    """Nearest support image in pixel space."""

    def predict(self, episode):
        return -torch.cdist(episode.query_x.flatten(2), episode.support_x.flatten(2))


def test_challenge_runs_reader_on_the_fixture(data_dir, tmp_path):
    images = data_dir / "omniglot" / "images_evaluation.zip"
    pre = Preprocess(28, 1, True)
    runs = make_challenge_runs(images, tmp_path / "runs", runs=2, ways=5)
    assert evaluate_challenge(Oracle(), runs, pre) == {
        "error_rate": 0.0,
        "trials": 10,
        "runs": 2,
        "per_run_error": [0.0, 0.0],
        "errors": 0,
    }
    assert evaluate_challenge(Oracle(wrong=True), runs, pre)["error_rate"] == 100.0
    same = make_challenge_runs(images, tmp_path / "same", runs=2, ways=5, same_drawing=True)
    for path in (
        same,
        zip_runs(same, tmp_path / "all_runs.zip"),
        tmp_path,
    ):  # folder, zip, folder holding the zip
        result = evaluate_challenge(PixelMatch(), path, pre)
        assert result["error_rate"] == 0.0 and result["trials"] == 10


def test_challenge_refuses_a_vinyals_run_and_accepts_background_only():
    with pytest.raises(ConfigError, match="vinyals.*baseline-lake.yaml"):
        check_background_only(
            parse_config({"algorithm": {"name": "baseline"}, "data": {"scheme": "vinyals"}})
        )
    assert (
        check_background_only(
            parse_config({"algorithm": "baseline", "data": {"scheme": "lake-small1"}})
        )
        is None
    )
    assert "cannot check" in check_background_only(
        parse_config({"algorithm": "baseline", "data": {"dataset": "folder"}})
    )


def test_within_alphabet_episodes(data_dir):
    cfg = parse_config(
        {"algorithm": "baseline", "data": {"scheme": "lake", "data_dir": str(data_dir)}}
    )
    fixed = within_alphabet_episodes(cfg, episodes=3)
    groups = fixed.sampler.dataset.groups[fixed.classes]  # (3, 20) alphabet of each class
    assert fixed.classes.shape == (3, 20) and bool((groups == groups[:, :1]).all())
    result = evaluate_within_alphabet(Oracle(), cfg, episodes=3)
    assert result["error_rate"] == 0.0 and result["trials"] == 60


# --- the comparison report
# ------------------------------------------------------------------------------------


def test_compare_runs_writes_tables_and_plot(data_dir, tmp_path):
    runs = []
    for name, extra in (
        ("baseline", {"finetune_epochs": 2}),
        ("protonet", {}),
        ("maml", {"inner_steps": 1, "eval_inner_steps": 1}),
    ):
        cfg = parse_config(
            {
                "algorithm": {"name": name, **extra},
                "data": {"data_dir": str(data_dir)},
                "train": {
                    "steps": 2,
                    "ways": 5,
                    "shots": 1,
                    "queries": 1,
                    "val_every": 0,
                    "tensorboard": False,
                },
            }
        )
        runs.append(train(cfg, tmp_path / name, progress=False).run_dir)
    out = tmp_path / "cmp"
    report = compare_runs(runs, None, out, ways=(5, 20), shots=(1, 20), queries=2, episodes=4)
    assert {"compare.md", "compare.json", "compare.png"} <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "compare.json").read_text())
    results = saved["methods"]["baseline"]["results"]
    assert 0 <= results["5-way 1-shot"]["accuracy"] <= 100 and "skipped" in results["5-way 20-shot"]
    assert (
        "skipped" in saved["methods"]["maml"]["results"]["20-way 1-shot"]
    )  # a 5-output head cannot do 20 ways
    assert "accuracy" in saved["methods"]["maml"]["results"]["5-way 1-shot"]
    pairs = {(p["setting"], p["a"], p["b"]) for p in report["paired"]}
    assert ("5-way 1-shot", "baseline", "protonet") in pairs and (
        "20-way 1-shot",
        "baseline",
        "maml",
    ) not in pairs
    md = (out / "compare.md").read_text()
    assert "| baseline | baseline |" in md and "Paired differences" in md


def test_compare_runs_at_two_image_sizes_share_the_episodes(data_dir, tmp_path):
    runs = []
    for size in (28, 20):
        cfg = parse_config(
            {
                "algorithm": "protonet",
                "data": {"data_dir": str(data_dir), "image_size": size},
                "train": {
                    "steps": 1,
                    "ways": 5,
                    "shots": 1,
                    "queries": 1,
                    "val_every": 0,
                    "tensorboard": False,
                },
            }
        )
        runs.append(train(cfg, tmp_path / f"protonet-{size}", progress=False).run_dir)
    report = compare_runs(
        runs, None, tmp_path / "cmp", ways=(5,), shots=(1,), queries=2, episodes=3
    )
    assert {m["image_size"] for m in report["methods"].values()} == {28, 20}
    assert all("accuracy" in m["results"]["5-way 1-shot"] for m in report["methods"].values())
    assert "protonet (20×20)" in (tmp_path / "cmp" / "compare.md").read_text()
    other = parse_config(
        {
            "algorithm": "protonet",
            "data": {"data_dir": str(data_dir), "scheme": "lake"},
            "train": {
                "steps": 1,
                "ways": 5,
                "shots": 1,
                "queries": 1,
                "val_every": 0,
                "tensorboard": False,
            },
        }
    )
    lake = train(other, tmp_path / "protonet-lake", progress=False).run_dir
    with pytest.raises(ConfigError, match="data.scheme"):
        compare_runs(
            [runs[0], lake], None, tmp_path / "cmp2", ways=(5,), shots=(1,), queries=2, episodes=3
        )
