"""Sinusoid regression evaluation (Finn et al. 2017, §5.1, Fig. 2 and 3): MSE against inner steps.

    curve = regression_curve(learner, source)   # {5: {"mse": [11 values], "ci95": [...]}, ...}
    plot_regression("curve.png", curve, baseline_curve, example_fits(learner, source, baseline=pre))

Each point of a curve is the engine's protocol (:func:`metalab.engine.evaluate.evaluate`): the mean
MSE over a fixed set of test tasks and its 95% interval, here after ``steps = 0..max_steps`` inner
steps on K support points (``learner.predict(episode, steps=k)``). The task sets are a function of
(split, K, queries, count, seed) only, so MAML and the pre-trained baseline are measured on the same
tasks, and the K = 5, 10, 20 sets share their sinusoids (see :mod:`metalab.tasks.sinusoid`).

The baseline is the network "pretrained on all tasks" (algorithm ``pretrain``,
configs/sinusoid/pretrained.yaml), a run of its own:
``metalab eval MAML_RUN --baseline PRETRAINED_RUN``. :class:`Regression` is the protocol
``metalab eval`` picks for a regression run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from metalab.algorithms.base import MetaLearner, eval_mode
from metalab.engine.evaluate import evaluate
from metalab.errors import ConfigError
from metalab.protocols.base import Evaluation, Protocol
from metalab.protocols.standard import standard_report
from metalab.tasks.episodes import Episode, fixed_episodes, is_regression
from metalab.tasks.sinusoid import sinusoid

SHOTS = (5, 10, 20)  # K of the paper's curves
MAX_STEPS = 10  # the paper's curves: 0..10 gradient steps at test time
Curve = dict[int, dict[str, list[float]]]  # K → {"mse": [step 0..max], "ci95": [...]}


def regression_curve(
    learner: MetaLearner,
    source: Any,
    shots_list: Sequence[int] = SHOTS,
    max_steps: int = MAX_STEPS,
    queries: int = 100,
    count: int = 600,
    seed: int = 0,
    batch: int = 100,
) -> Curve:
    """Mean MSE (and 95% interval) over ``count`` fixed tasks after 0..``max_steps`` inner steps,
    per K.

    ``learner.predict`` must accept ``steps`` (every optimization method does)."""
    curve: Curve = {}
    for k in shots_list:
        tasks = fixed_episodes(source, 0, k, queries, count, seed)
        results = [evaluate(learner, tasks, batch, steps=s) for s in range(max_steps + 1)]
        curve[k] = {"mse": [r.value for r in results], "ci95": [r.ci95 for r in results]}
    return curve


@torch.no_grad()
def example_fits(
    learner: MetaLearner,
    source: Any,
    baseline: MetaLearner | None = None,
    shots: int = 5,
    tasks: int = 2,
    steps: Sequence[int] = (0, 1, MAX_STEPS),
    seed: int = 0,
    points: int = 200,
) -> list[dict[str, Any]]:
    """Fits on a fixed set of ``tasks`` K-shot tasks (a function of split, K, count and seed): the
    true function and each model's prediction on a grid of x after the given step counts (the
    baseline after the last one only)."""
    fixed = fixed_episodes(source, 0, shots, 1, tasks, seed)
    lo, hi = source.x_range
    grid = torch.linspace(lo, hi, points).view(1, points, 1).expand(tasks, points, 1)
    truth = sinusoid(fixed.amplitude, fixed.phase, grid)
    support = next(fixed.batches(tasks))
    device = support.support_x.device
    episode = Episode(
        support.support_x, support.support_y, grid.to(device), truth.to(device), ways=0
    )
    models = [(type(learner).__name__.lower(), learner, list(steps))]
    if baseline is not None:
        models.append(("pretrained", baseline, [steps[-1]]))
    fits = []
    with ExitStack() as modes:
        for _, m, _ in models:
            modes.enter_context(eval_mode(m))
        predictions = {
            f"{name}, {s} step{'s' * (s != 1)}": m.predict(episode, steps=s).cpu()
            for name, m, counts in models
            for s in counts
        }
    for i in range(tasks):
        fits.append(
            {
                "x": grid[i, :, 0],
                "truth": truth[i, :, 0],
                "support_x": support.support_x[i, :, 0].cpu(),
                "support_y": support.support_y[i, :, 0].cpu(),
                "predictions": {label: p[i, :, 0] for label, p in predictions.items()},
                "amplitude": float(fixed.amplitude[i]),
                "phase": float(fixed.phase[i]),
            }
        )
    return fits


def plot_regression(
    path: str | Path,
    curve: Curve,
    baseline_curve: Curve | None,
    fits: list[dict[str, Any]],
    title: str = "sinusoid regression",
) -> Path:
    """A PNG: MSE against inner steps for each K (shaded 95% intervals; the baseline dashed), then
    one panel per example fit. Drawn with matplotlib's Agg canvas (no display, no global backend
    change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(5 + 4 * len(fits), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(fits), squeeze=False)[0]
    ax = axes[0]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for j, (k, row) in enumerate(sorted(curve.items())):
        c = colors[j % len(colors)]
        for rows, style, who in (
            (row, "-", "meta-learned"),
            ((baseline_curve or {}).get(k), "--", "pretrained"),
        ):
            if rows is None:
                continue
            steps = list(range(len(rows["mse"])))
            mse, ci = torch.tensor(rows["mse"]), torch.tensor(rows["ci95"])
            ax.plot(steps, mse, style, color=c, marker="o", markersize=3, label=f"{who}, K={k}")
            ax.fill_between(steps, mse - ci, mse + ci, color=c, alpha=0.15)
    ax.set_xlabel("inner gradient steps at test")
    ax.set_ylabel("mean squared error")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    for ax, fit in zip(axes[1:], fits):
        ax.plot(fit["x"], fit["truth"], color="black", linewidth=2, label="ground truth")
        for label, p in fit["predictions"].items():
            ax.plot(fit["x"], p, "--" if label.startswith("pretrained") else "-", label=label)
        ax.scatter(
            fit["support_x"],
            fit["support_y"],
            color="red",
            zorder=5,
            label=f"{len(fit['support_x'])} support points",
        )
        ax.set_title(f"A = {fit['amplitude']:.2f}, φ = {fit['phase']:.2f}")
        ax.set_xlabel("x")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def regression_report(
    learner: MetaLearner,
    source: Any,
    e: Any,
    baseline: MetaLearner | None,
    plot: str | Path,
    shots: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What ``metalab eval`` adds for a regression run: the curve (MSE and 95% interval by step
    0..10 for each K), the baseline's curve on the same tasks (or None), and the PNG plot's path.
    ``e`` is the run's evaluation config (queries, episodes, seed, batch)."""
    shots_list = tuple(shots or SHOTS)
    options = dict(queries=e.queries, count=e.episodes, seed=e.seed, batch=e.batch)
    curve = regression_curve(learner, source, shots_list, **options)
    base = None if baseline is None else regression_curve(baseline, source, shots_list, **options)
    fits = example_fits(learner, source, baseline, shots=min(shots_list), seed=e.seed)
    path = plot_regression(plot, curve, base, fits, title=f"{source.name}, {e.episodes} tasks")
    as_json = lambda c: {  # noqa: E731
        str(k): {key: [round(v, 4) for v in row[key]] for key in ("mse", "ci95")}
        for k, row in c.items()
    }
    return {
        "curve": as_json(curve),
        "baseline_curve": None if base is None else as_json(base),
        "plot": str(path),
    }


class Regression(Protocol):
    """``metalab eval`` on a regression run: the standard report plus the MSE-by-step curve for
    each K, the pre-trained baseline's curve on the same tasks (``--baseline``) and a PNG
    (``--plot``)."""

    name = "regression"
    flags = ("baseline", "plot")
    automatic = True

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--baseline",
            metavar="RUN",
            help="regression: a run of the pre-trained baseline "
            "(configs/sinusoid/pretrained.yaml) measured on the same tasks, reported as "
            "baseline_curve",
        )
        parser.add_argument(
            "--plot",
            metavar="PATH",
            help="regression: where to write the PNG plot "
            "(default: regression-<split>.png beside the checkpoint)",
        )

    def refusal(self, ev: Evaluation) -> str | None:
        if is_regression(ev.split):
            return None
        return (
            "--baseline and --plot are for regression runs (sinusoid); "
            f"this run was trained on {ev.cfg.data.dataset}"
            + (
                f" and is evaluated on {ev.data.dataset}"
                if ev.data.dataset != ev.cfg.data.dataset
                else ""
            )
        )

    def run(self, ev: Evaluation) -> dict[str, Any]:
        from metalab.engine.build import load_learner

        report, _ = standard_report(ev)
        options, e = ev.options, ev.settings
        baseline = None
        if getattr(options, "baseline", None):
            checkpoint = getattr(options, "checkpoint", None) or "best"
            baseline, bcfg, bstate = load_learner(options.baseline, ev.device, checkpoint)
            report["baseline"] = str(bstate["path"])
            if bcfg.data.dataset != ev.data.dataset:
                raise ConfigError(
                    f"--baseline {options.baseline} was trained on '{bcfg.data.dataset}', not "
                    f"'{ev.data.dataset}'; train it with configs/sinusoid/pretrained.yaml"
                )
        plot = getattr(options, "plot", None) or (
            Path(ev.state["path"]).parent / f"regression-{e.split}.png"
        )
        shots = (options.shots,) if getattr(options, "shots", None) else None
        return report | regression_report(ev.learner, ev.split, e, baseline, plot, shots)

    def text(self, report: dict[str, Any]) -> str:
        r = report
        lines = [
            f"{r['algorithm']} on {r['dataset']}, {r['shots']}-shot ({r['queries']} query points), "
            f"{r['episodes']} tasks: MSE {r['mse']:.3f} ± {r['ci95']:.3f}"
        ]
        for k, row in r["curve"].items():
            lines.append(
                f"  K={k:<3s} MSE by step 0..{len(row['mse']) - 1}: "
                + " ".join(f"{v:.3f}" for v in row["mse"])
            )
            if r["baseline_curve"]:
                lines.append(
                    "        pretrained baseline:  "
                    + " ".join(f"{v:.3f}" for v in r["baseline_curve"][k]["mse"])
                )
        if not r["baseline_curve"]:
            lines.append(
                "  (no baseline: pass --baseline RUN, a run of configs/sinusoid/pretrained.yaml)"
            )
        lines.append(f"  plot: {r['plot']}")
        return "\n".join(lines)
