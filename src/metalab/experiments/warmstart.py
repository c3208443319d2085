"""Warm starts: the best configurations of the past studies whose tasks are nearest in meta-feature
space (``metalab tune --warm-start K``, ``metalab suggest CONFIG``).

Candidates are the registry's ``study`` records of the same algorithm with meta-features of the
same kind (classification or regression) and a best value. Each feature is divided by its spread
over the candidates and the new task (so no feature dominates by its units), distances are
Euclidean, and the K nearest studies' best configurations, restricted to the new search space
(values clipped into its ranges, categorical values outside its choices dropped and left to the
sampler), are enqueued in the new study with ``Study.enqueue_trial``; TPE goes on from there.
"""

from __future__ import annotations

import statistics
from typing import Any

from metalab.experiments.metafeatures import distance
from metalab.experiments.spaces import Param


def _get(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def nearest_studies(
    registry,
    algorithm: str,
    features: dict[str, float],
    k: int,
    exclude_study: str | None = None,
    exclude_task: str | None = None,
) -> list[tuple[float, dict[str, Any]]]:
    """The k nearest past studies as (distance, study record), nearest first; one record per
    study name (its best)."""
    if registry is None:
        return []
    best: dict[str, dict[str, Any]] = {}
    for r in registry.query(kind="study", algorithm=algorithm):
        mf = r.get("metafeatures")
        if not mf or r.get("value") is None or not r.get("config"):
            continue
        if r["study"] == exclude_study or (exclude_task and r.get("task_key") == exclude_task):
            continue
        if set(mf) != set(features):  # another kind of task (classification vs regression)
            continue
        higher = (r.get("results") or {}).get("direction", "maximize") == "maximize"
        old = best.get(r["study"])
        if old is None or (r["value"] > old["value"] if higher else r["value"] < old["value"]):
            best[r["study"]] = r
    if not best:
        return []
    scale = {}
    for key in features:
        column = [features[key]] + [r["metafeatures"][key] for r in best.values()]
        scale[key] = statistics.pstdev(column)
    ranked = sorted(
        ((distance(features, r["metafeatures"], scale), r) for r in best.values()),
        key=lambda x: (x[0], x[1]["study"]),
    )
    return ranked[:k]


def warm_params(record: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    """A study record's best configuration as parameters of ``space``."""
    params = {}
    for key, p in space.items():
        value = p.clip(_get(record["config"], key))
        if value is not None:
            params[key] = value
    return params


def warm_starts(registry, space, cfg, features, k, exclude_study=None, exclude_task=None):
    """[{params, study, uid, distance, value, metric}] for the k nearest past studies."""
    out = []
    for d, r in nearest_studies(
        registry, cfg.algorithm_name, features, k, exclude_study, exclude_task
    ):
        params = warm_params(r, space)
        if params and all(params != o["params"] for o in out):
            out.append(
                {
                    "params": params,
                    "study": r["study"],
                    "uid": r["uid"],
                    "trial": r.get("trial"),
                    "dataset": r.get("dataset_name") or r.get("dataset"),
                    "distance": round(d, 4),
                    "value": r["value"],
                    "metric": r["metric"],
                }
            )
    return out


def enqueue_warm_starts(
    study, registry, space, cfg, features, k, exclude_study=None, exclude_task=None
) -> list[dict[str, Any]]:
    """Enqueue the warm starts in an Optuna study (skipped when already enqueued or tried)."""
    starts = warm_starts(registry, space, cfg, features, k, exclude_study, exclude_task)
    for s in starts:
        study.enqueue_trial(
            s["params"],
            user_attrs={"warm_start_from": s["uid"], "warm_start_distance": s["distance"]},
            skip_if_exists=True,
        )
    return starts
