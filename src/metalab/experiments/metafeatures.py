"""Meta-features of a task source: a short numeric description of "what kind of tasks these are",
cheap (seconds on a CPU) and deterministic (fixed seeds, fixed episode sets), so that past studies
on similar tasks can be found (warm starts).

Classification sources (images or embeddings, :class:`ClassIndexedDataset`):
    - size: classes, examples per class, input size (log scale);
    - statistics of up to 10 examples of each of up to 100 classes (a fixed draw), on raw inputs
      and under a fixed random-feature network (one random linear layer of 256 units, N(0, 1/d)
      weights from seed 0, then ReLU): mean, spread, sparsity, and class separability (mean
      distance to the own class's centroid over mean distance between centroids);
    - landmarkers: nearest-centroid 5-way 1-shot (and 5-shot, where classes have 10 examples)
      accuracy on 100 fixed episodes, on raw inputs and on the random features.
Unlabeled sources (``data.labels: none``): the size and the statistics above that need no class
(mean, spread, sparsity, raw and under the random features) of a fixed draw of 1000 examples.
Regression sources (sinusoid): the spread of targets within and across tasks and landmarkers on 100
fixed 5-shot tasks: the MSE of predicting the support mean, of 1-nearest-neighbour, and of ridge
regression on fixed random Fourier features of the inputs (log scale).

Why not pymfe: its measures describe one tabular dataset with a fixed label set (the same classes
at training and test), while a few-shot source is a distribution of tasks over classes never seen
in training; on Omniglot (4112 classes of 20 images, 784 inputs) most of its groups (model-based,
info-theory, clustering) are slow and say little about new tasks. The landmarkers above are the
few-shot analogue of its "landmarking" group, computed on episodes as the learners see them.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch

FEATURE_SEED = 0
SAMPLE_CLASSES, SAMPLE_PER_CLASS = 100, 10  # the examples the statistics are computed on
EPISODES = 100  # fixed episodes (tasks) for the landmarkers
RANDOM_UNITS = 256


def task_key(data_cfg, source: Any) -> str:
    """A stable id of the task source: the data config (without the download flag) and the
    source's name."""
    import dataclasses

    values = dataclasses.asdict(data_cfg) if dataclasses.is_dataclass(data_cfg) else dict(data_cfg)
    values.pop("download", None)
    values["source"] = getattr(source, "name", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_features(data_cfg, source: Any) -> tuple[str, dict[str, float]]:
    """(task key, meta-features) of a source."""
    return task_key(data_cfg, source), metafeatures(source)


def metafeatures(source: Any) -> dict[str, float]:
    """The meta-features of a task source (see the module docstring), rounded to 6 digits."""
    from metalab.tasks.episodes import is_regression

    with torch.no_grad():
        if is_regression(source):
            feats = _regression(source)
        elif not getattr(source, "labelled", True):
            feats = _unlabeled(source)
        else:
            feats = _classification(source)
    return {k: round(float(v), 6) for k, v in feats.items()}


def _random_features(x: torch.Tensor, units: int = RANDOM_UNITS) -> torch.Tensor:
    """A fixed random ReLU layer: (n, d) → (n, units), weights N(0, 1/d) from FEATURE_SEED."""
    g = torch.Generator().manual_seed(FEATURE_SEED)
    w = torch.randn(x.shape[1], units, generator=g) / math.sqrt(x.shape[1])
    return torch.relu(x @ w)


def _separability(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean distance to the own class centroid over mean distance between centroids."""
    classes = y.unique()
    centroids = torch.stack([x[y == c].mean(0) for c in classes])
    own = centroids[torch.searchsorted(classes, y)]
    within = (x - own).norm(dim=1).mean()
    between = torch.pdist(centroids).mean() if len(classes) > 1 else torch.tensor(1.0)
    return float(within / between.clamp_min(1e-12))


def _nearest_centroid(episodes, embed) -> float:
    """Mean query accuracy (percent) of nearest-centroid on the support set."""
    correct = total = 0
    for ep in episodes.batches(25):
        b, n, ks, qs = ep.tasks, ep.ways, ep.support_x.shape[1], ep.query_x.shape[1]
        s = embed(ep.support_x.cpu().reshape(b * ks, -1)).view(b, n, ks // n, -1)  # class-major
        q = embed(ep.query_x.cpu().reshape(b * qs, -1)).view(b, qs, -1)
        centroids = s.mean(2)  # (B, N, D)
        pred = torch.cdist(q, centroids).argmin(-1)
        correct += int((pred == ep.query_y.cpu()).sum())
        total += pred.numel()
    return 100.0 * correct / total


def _classification(source) -> dict[str, float]:
    from metalab.tasks.episodes import FixedEpisodes, to_float

    counts, offsets = source.counts.cpu(), source.offsets.cpu()
    # the statistics sample: up to SAMPLE_CLASSES classes (a fixed draw), the first
    # SAMPLE_PER_CLASS examples of each, so every class in it has several examples
    g = torch.Generator().manual_seed(FEATURE_SEED)
    classes = torch.randperm(len(counts), generator=g)[:SAMPLE_CLASSES].sort().values
    take = counts[classes].clamp(max=SAMPLE_PER_CLASS)
    pick = torch.cat([offsets[c] + torch.arange(int(m)) for c, m in zip(classes, take)])
    labels = torch.repeat_interleave(classes, take)
    x = to_float(source.images[pick.to(source.images.device)].cpu()).flatten(1)
    feats = {
        "log_classes": math.log(source.num_classes),
        "log_examples_per_class": math.log(float(counts.float().mean())),
        "log_input_size": math.log(x.shape[1]),
        **_statistics(x),
        "raw_separability": _separability(x, labels),
        "rf_separability": _separability(_random_features(x), labels),
    }
    identity = lambda v: v  # noqa: E731
    for shots in (1, 5):
        if source.num_classes < 5 or int(counts.min()) < shots + 1:
            continue
        queries = min(5, int(counts.min()) - shots)
        episodes = FixedEpisodes(source, 5, shots, queries, EPISODES, FEATURE_SEED)
        feats[f"nc_raw_5w{shots}s"] = _nearest_centroid(episodes, identity)
        feats[f"nc_rf_5w{shots}s"] = _nearest_centroid(episodes, _random_features)
    return feats


def _statistics(x: torch.Tensor) -> dict[str, Any]:
    """Mean, spread and sparsity of flat examples, raw and under the random features."""
    r = _random_features(x)
    return {
        "raw_mean": x.mean(),
        "raw_std": x.std(),
        "raw_sparsity": (x == 0).float().mean(),
        "rf_mean": r.mean(),
        "rf_std": r.std(),
        "rf_sparsity": (r == 0).float().mean(),
    }


def _unlabeled(source) -> dict[str, float]:
    from metalab.tasks.episodes import to_float

    g = torch.Generator().manual_seed(FEATURE_SEED)
    pick = torch.randperm(len(source), generator=g)[: SAMPLE_CLASSES * SAMPLE_PER_CLASS]
    x = to_float(source.images[pick.to(source.images.device)].cpu()).flatten(1)
    return {"log_examples": math.log(len(source)), "log_input_size": math.log(x.shape[1])} | (
        _statistics(x)
    )


def _regression(source) -> dict[str, float]:
    from metalab.tasks.episodes import fixed_episodes

    shots, queries = 5, 20
    tasks = fixed_episodes(source, 0, shots, queries, EPISODES, FEATURE_SEED)
    sx, sy, qx, qy = [], [], [], []
    for ep in tasks.batches(EPISODES):
        sx.append(ep.support_x.cpu().flatten(2))
        sy.append(ep.support_y.cpu().flatten(1))
        qx.append(ep.query_x.cpu().flatten(2))
        qy.append(ep.query_y.cpu().flatten(1))
    sx, sy, qx, qy = (torch.cat(t).double() for t in (sx, sy, qx, qy))
    ally = torch.cat([sy, qy], 1)
    mean_mse = ((qy - sy.mean(1, keepdim=True)) ** 2).mean()
    nearest = torch.cdist(qx, sx).argmin(-1)  # (T, Q)
    nn_mse = ((qy - sy.gather(1, nearest)) ** 2).mean()
    # ridge regression on fixed random Fourier features of the inputs
    g = torch.Generator().manual_seed(FEATURE_SEED)
    w = torch.randn(sx.shape[-1], 64, generator=g, dtype=torch.float64)
    b = 2 * math.pi * torch.rand(64, generator=g, dtype=torch.float64)
    phi = lambda v: torch.cos(v @ w + b)  # noqa: E731
    ps, pq = phi(sx), phi(qx)  # (T, K, 64), (T, Q, 64)
    gram = ps.transpose(1, 2) @ ps + 0.1 * torch.eye(64, dtype=torch.float64)
    coef = torch.linalg.solve(gram, ps.transpose(1, 2) @ sy.unsqueeze(-1))
    ridge_mse = ((pq @ coef).squeeze(-1) - qy).pow(2).mean()
    x_all = torch.cat([sx, qx], 1)
    return {
        "log_input_size": math.log(sx.shape[-1]),
        "x_std": x_all.std(),
        "log_y_std_within": math.log(float(ally.std(1).mean()) + 1e-12),
        "log_y_std_across": math.log(float(ally.mean(1).std()) + 1e-12),
        "log_y_absmax": math.log(float(ally.abs().max(1).values.mean()) + 1e-12),
        "log_mse_support_mean": math.log(float(mean_mse) + 1e-12),
        "log_mse_1nn": math.log(float(nn_mse) + 1e-12),
        "log_mse_rff_ridge": math.log(float(ridge_mse) + 1e-12),
    }


def distance(a: dict[str, float], b: dict[str, float], scale: dict[str, float]) -> float:
    """Root-mean-square difference over the features both have, each divided by its spread
    ``scale`` (a feature without spread adds nothing when equal; inf when there is none in
    common)."""
    keys = [k for k in a if k in b]
    if not keys:
        return math.inf
    total = 0.0
    for k in keys:
        if scale.get(k, 0) > 0:
            total += ((a[k] - b[k]) / scale[k]) ** 2
        elif a[k] != b[k]:
            return math.inf
    return math.sqrt(total / len(keys))
