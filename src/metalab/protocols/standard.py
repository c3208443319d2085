"""The field's protocol: fixed test episodes, the mean score and its 95% confidence interval.

The episodes are a function of (split, ways, shots, queries, episodes, seed) only, so every method
evaluated with the same arguments sees exactly the same tasks; the interval is 1.96·s/√n over the
per-episode scores (:mod:`metalab.engine.evaluate`). The report is what ``metalab eval --json``
prints: the score (``accuracy`` in percent, or ``mse``), ``ci95``, the settings, the run, and the
results of the method's own protocol (``learner.protocol_report``, e.g. MANN's accuracy by
instance).
"""

from __future__ import annotations

from typing import Any

from metalab.engine.distributed import current_world, evaluate_on_ranks
from metalab.engine.evaluate import EvalResult
from metalab.errors import ConfigError
from metalab.protocols.base import Evaluation, Protocol
from metalab.tasks.episodes import fixed_episodes


def standard_report(ev: Evaluation) -> tuple[dict[str, Any], EvalResult]:
    """Evaluate ``ev`` on its fixed episodes: the JSON report and the raw result."""
    e = ev.settings
    if e.ways == 1:
        raise ConfigError(
            "--ways 1 is invalid: a 1-way task has one answer, so every query would be right; "
            "evaluate with --ways 2 or more"
        )
    split = ev.split
    episodes = fixed_episodes(
        split, e.ways, e.shots, e.queries, e.episodes, e.seed, ev.data.within_group
    )
    # under torchrun the ranks share the episodes; every rank gets one process's numbers
    result = evaluate_on_ranks(ev.learner, episodes, e.batch, current_world())
    report = {
        result.metric: round(result.value, 4),
        "ci95": round(result.ci95, 4),
        "episodes": e.episodes,
        "ways": e.ways,
        "shots": e.shots,
        "queries": e.queries,
        "split": e.split,
        "seed": e.seed,
        "algorithm": ev.cfg.algorithm_name,
        "dataset": split.name,
        "checkpoint": str(ev.state["path"]),
        "step": ev.state["step"],
        "device": str(ev.device),
    }
    return report | ev.learner.protocol_report(split, e), result


class Standard(Protocol):
    """Fixed N-way K-shot test episodes: mean accuracy ± 95% CI (any run, the default)."""

    name = "standard"
    automatic = True

    def run(self, ev: Evaluation) -> dict[str, Any]:
        return standard_report(ev)[0]

    def text(self, report: dict[str, Any]) -> str:
        r = report
        if "accuracy" in r:
            score = f"{r['accuracy']:.2f} ± {r['ci95']:.2f}%"
        else:
            score = f"MSE {r['mse']:.3f} ± {r['ci95']:.3f}"
        return (
            f"{r['algorithm']} on {r['dataset']}, {r['ways']}-way {r['shots']}-shot "
            f"({r['queries']} queries), {r['episodes']} episodes: {score}"
        )
