"""Side-by-side comparison of trained runs on the same fixed test episodes, with paired statistics.

Every run is evaluated on exactly the same :class:`~metalab.tasks.episodes.FixedEpisodes` per
(ways, shots), so two methods can be compared episode by episode: the paired difference of their
per-episode accuracies ``d_e = acc_a(e) − acc_b(e)`` has mean ``d̄`` and 95% confidence interval
``d̄ ± 1.96·s_d/√n`` (s_d with Bessel's correction). Pairing removes the between-episode variance
that both methods share, so the interval is much narrower than the two separate intervals suggest.

    report = compare_runs([Path("runs/protonet"), Path("runs/baseline")], data_dir=None,
                          out_dir=Path("cmp"))

writes ``cmp/compare.md`` (tables), ``cmp/compare.json`` (numbers, skipped settings, environment)
and ``cmp/compare.png`` (per ways: error rate against shots on a log scale, and each method's paired
difference to the first run). A method that cannot run a setting — a head with one output per
training way (MAML, MANN, SNAIL, MetaNet), or a dataset with too few images per class for shots +
queries — is skipped for that setting with the reason, not an error. ``dataset=`` scores every run
on another dataset's episodes (cross-domain), each decoded as the run was trained.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metalab.config import EvalConfig
from metalab.engine.build import load_learner
from metalab.engine.distributed import current_world, evaluate_on_ranks
from metalab.engine.evaluate import mean_ci95
from metalab.errors import ConfigError, DataError
from metalab.protocols.base import check_finite
from metalab.protocols.target import check_fits, evaluation_data
from metalab.tasks.episodes import FixedEpisodes
from metalab.tasks.sources import load_split
from metalab.tools.provenance import environment

# The data settings that define the test tasks: runs differing in one of these see other classes.
_SPLIT_KEYS = ("dataset", "scheme", "rotations")
# The settings that only render the same examples differently: such runs get the same episodes,
# each as it was trained (MANN's 20×20 beside Conv-4's 28×28; a text run's sentence encoder).
_RENDER_KEYS = ("image_size", "channels", "invert", "encoder")


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean per-episode difference a − b and its 95% CI half-width, over the same episodes in the
    same order.

    Example:
        >>> paired_difference([1.0, 0.8, 0.6], [0.9, 0.8, 0.4])  # d = (0.1, 0, 0.2), s = 0.1
        (0.1, 0.113...)                                          # 1.96 · 0.1 / √3
    """
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(
            f"paired_difference needs the same, non-empty episodes: {len(a)} vs {len(b)} values"
        )
    return mean_ci95(
        torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    )


def setting_name(ways: int, shots: int) -> str:
    return f"{ways}-way {shots}-shot"


def _split_identity(data) -> dict[str, Any]:
    return {k: getattr(data, k) for k in _SPLIT_KEYS}


def _render(data) -> tuple:
    return tuple(getattr(data, k) for k in _RENDER_KEYS)


def compare_runs(
    runs: Sequence[Path],
    data_dir: Path | None,
    out_dir: Path,
    ways: Sequence[int] = (5, 20),
    shots: Sequence[int] = (1, 5, 10, 20),
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    split: str = "test",
    batch: int = 25,
    checkpoint: str = "best",
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Evaluate trained runs on the same fixed episodes for every (ways, shots); write md, json
    and png.

    Args:
        runs: run directories (or checkpoint files); each method is named by its directory. The
            first is the reference of the plot's paired differences.
        data_dir: the dataset folder (None: the one the first run was trained on; needed with
            ``dataset``).
        out_dir: where compare.md, compare.json and compare.png are written (created).
        ways, shots: the settings, every combination. queries: per class, lowered to what the
            images allow (Omniglot has 20 per class: 10 shots leave 10 queries; 20 shots none, so
            it is skipped).
        episodes, seed: the fixed episode set of each setting (the field's protocol: 1000).
        split, batch, checkpoint: test split, episodes per evaluation batch, best or last
            checkpoint.
        command: the command line that produced the comparison, recorded in compare.json.
        log: called with one line per evaluated (method, setting), e.g. ``print``.
        dataset: another registered dataset to evaluate every run on (cross-domain), its images
            decoded as each run was trained (None: the runs' own dataset).

    Returns:
        The dict written to compare.json: ``settings``, ``methods`` (per method and setting
        accuracy, ci95 or ``skipped``), ``paired`` (per setting and pair of methods: difference,
        ci95, significant).

    Raises:
        ConfigError: runs trained on different test splits (dataset, scheme, rotations), or a
            ``dataset`` whose inputs cannot fit a run. Runs that differ only in image size,
            channels or inversion are compared on the same episodes (the same images, each
            rendered as the run was trained).
    """
    if not runs:
        raise ConfigError("compare needs at least one run directory")
    check_settings(ways, shots, queries, episodes, seed, split, batch)
    learners = {}
    for run in map(Path, runs):
        learner, cfg, state = load_learner(run, device, checkpoint)
        check_finite(learner, state["path"])
        name = run.name if run.is_dir() else f"{run.parent.name}/{run.stem}"
        if name in learners:
            name = str(run)
        learners[name] = (learner, cfg, state, run)
    _, first_cfg, _, first_run = next(iter(learners.values()))
    if data_dir is None and dataset in (None, first_cfg.data.dataset):
        data_dir = first_cfg.data.data_dir
    # what each run is evaluated on: its own data, or ``dataset`` decoded as the run's
    data_of = {
        name: evaluation_data(cfg, state, dataset, data_dir)
        for name, (_, cfg, state, _) in learners.items()
    }
    first_name = next(iter(learners))
    reference = _split_identity(data_of[first_name])
    for name, (_, _, _, run) in learners.items():
        if _split_identity(data_of[name]) != reference:
            theirs = _split_identity(data_of[name])
            diff = ", ".join(
                f"data.{k} {theirs[k]!r} vs {reference[k]!r}"
                for k in _SPLIT_KEYS
                if theirs[k] != reference[k]
            )
            raise ConfigError(
                f"{run} was trained with other data than {first_run} ({diff}); compare runs "
                f"that share one test split"
            )
    tests = {}  # one test split per rendering, all holding the same classes and images
    for name, (_, _, state, _) in learners.items():
        data = data_of[name]
        if _render(data) not in tests:
            tests[_render(data)] = load_split(data, split).to(device)
        check_fits(tests[_render(data)], state, data)
    test = tests[_render(data_of[first_name])]
    for other in tests.values():
        if other.class_names != test.class_names or not torch.equal(
            other.counts.cpu(), test.counts.cpu()
        ):
            raise DataError(
                f"the {split} split holds different classes at different image sizes; compare runs "
                f"trained at one image size"
            )
    most = int(test.counts.min())

    settings = []
    methods = {
        name: {
            "run": str(run),
            "algorithm": cfg.algorithm_name,
            "checkpoint": str(state["path"]),
            "step": state["step"],
            "image_size": cfg.data.image_size,
            "results": {},
        }
        for name, (_, cfg, state, run) in learners.items()
    }
    per_episode: dict[tuple[str, str], list[float]] = {}
    for n, k in itertools.product(ways, shots):
        key, q = setting_name(n, k), min(queries, most - k)
        settings.append({"name": key, "ways": n, "shots": k, "queries": q})
        try:
            if q < 1:
                raise DataError(
                    f"{test.name} has {most} images per class: {k} shots leave no query"
                )
            fixed = {
                render: FixedEpisodes(t, n, k, q, episodes, seed) for render, t in tests.items()
            }
        except (ConfigError, DataError) as e:
            for m in methods.values():
                m["results"][key] = {"skipped": str(e)}
            continue
        first = fixed[_render(data_of[first_name])]
        # the same classes and image indices at every rendering: one episode set
        assert all(
            torch.equal(f.classes, first.classes) and torch.equal(f.index, first.index)
            for f in fixed.values()
        )
        for name, (learner, *_rest) in learners.items():
            try:
                # under torchrun the ranks share the episodes (one process's numbers)
                result = evaluate_on_ranks(
                    learner, fixed[_render(data_of[name])], batch, current_world()
                )
            except (ConfigError, DataError) as e:  # e.g. a head with one output per training way
                methods[name]["results"][key] = {"skipped": str(e)}
                continue
            per_episode[name, key] = result.per_episode.tolist()
            methods[name]["results"][key] = {
                "accuracy": round(result.accuracy, 4),
                "ci95": round(result.ci95, 4),
            }
            if log is not None and current_world().is_main:
                log(f"{name}: {key} ({q} queries) {result.accuracy:.2f} ± {result.ci95:.2f}%")

    paired = []
    for s in settings:
        for a, b in itertools.combinations(methods, 2):
            if (a, s["name"]) in per_episode and (b, s["name"]) in per_episode:
                mean, ci = paired_difference(per_episode[a, s["name"]], per_episode[b, s["name"]])
                paired.append(
                    {
                        "setting": s["name"],
                        "a": a,
                        "b": b,
                        "difference": round(100 * mean, 4),
                        "ci95": round(100 * ci, 4),
                        "significant": abs(mean) > ci,
                    }
                )
    if not per_episode:
        raise DataError(_nothing_evaluable(settings, methods))
    report = {
        "command": command,
        "split": split,
        "dataset": test.name,
        "episodes": episodes,
        "seed": seed,
        "settings": settings,
        "methods": methods,
        "paired": paired,
        "environment": environment(device),
    }
    if not current_world().is_main:  # rank 0 alone writes
        return report
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "compare.md").write_text(markdown_report(report))
        plot_report(report, out_dir / "compare.png")
    except OSError as e:
        where = e.filename if e.filename is not None else out_dir
        raise DataError(
            f"the comparison could not be written to {where} ({e.strerror or e}); free space "
            "or choose another --out"
        ) from None
    return report


def check_settings(
    ways: Sequence[int],
    shots: Sequence[int],
    queries: int,
    episodes: int,
    seed: int,
    split: str = "test",
    batch: int = 25,
) -> None:
    """Refuse settings outside their ranges (those of ``eval:``, naming the flag) before any run is
    loaded; ways must be at least 2 (a 1-way task has one answer)."""
    if not ways or not shots:
        raise ConfigError("compare needs at least one --ways and one --shots")
    for n, k in itertools.product(ways, shots):
        EvalConfig(
            split=split, ways=n, shots=k, queries=queries, episodes=episodes, seed=seed, batch=batch
        )
        if n < 2:
            raise ConfigError(
                f"--ways {n} is invalid for a comparison of classifiers: it must be at least 2"
            )


def _nothing_evaluable(settings: list[dict[str, Any]], methods: dict[str, Any]) -> str:
    """The one line saying that no run could be evaluated at any setting, with the reasons."""
    reasons: dict[str, list[str]] = {}
    for m in methods.values():
        for key, r in m["results"].items():
            if "skipped" in r and key not in reasons.setdefault(r["skipped"], []):
                reasons[r["skipped"]].append(key)
    why = "; ".join(f"{', '.join(keys)}: {reason}" for reason, keys in reasons.items())
    return (
        f"nothing to compare: no run could be evaluated at any of the {len(settings)} settings "
        f"({why}); choose --ways and --shots that the runs and the data allow"
    )


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown tables of a :func:`compare_runs` report: accuracy ± CI, then the paired
    differences."""
    settings = [s["name"] for s in report["settings"]]
    lines = [
        f"# Comparison on {report['dataset']} ({report['split']} split)",
        "",
        f"{report['episodes']} fixed episodes per setting (seed {report['seed']}), the same for "
        "every method; "
        f"accuracy in % ± 95% confidence interval.",
        "",
    ]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [
        "| method | algorithm | " + " | ".join(settings) + " |",
        "|---|---|" + "---|" * len(settings),
    ]
    notes: list[str] = []
    sizes = {m.get("image_size") for m in report["methods"].values()}  # shown when runs differ
    for name, m in report["methods"].items():
        cells = []
        for s in settings:
            r = m["results"][s]
            if "skipped" in r:
                if r["skipped"] not in notes:
                    notes.append(r["skipped"])
                cells.append(f"— [{notes.index(r['skipped']) + 1}]")
            else:
                cells.append(f"{r['accuracy']:.2f} ± {r['ci95']:.2f}")
        size = f" ({m['image_size']}×{m['image_size']})" if len(sizes) > 1 else ""
        lines.append(f"| {name} | {m['algorithm']}{size} | " + " | ".join(cells) + " |")
    queries = ", ".join(f"{s['name']}: {s['queries']}" for s in report["settings"])
    lines += ["", f"Queries per class: {queries}."]
    if notes:
        lines += ["", "Skipped:"] + [f"{i + 1}. {note}" for i, note in enumerate(notes)]
    if report["paired"]:
        lines += [
            "",
            "## Paired differences (a − b, same episodes)",
            "",
            "Mean of the per-episode accuracy differences ± 1.96·s/√n, in percentage points; "
            "* marks an interval that excludes 0.",
            "",
            "| setting | a | b | a − b |",
            "|---|---|---|---|",
        ]
        for p in report["paired"]:
            star = " *" if p["significant"] else ""
            lines.append(
                f"| {p['setting']} | {p['a']} | {p['b']} | {p['difference']:+.2f} ± "
                f"{p['ci95']:.2f}{star} |"
            )
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> None:
    """compare.png: per ways, the error rate (100 − accuracy, ± CI) against shots on a log scale,
    and below it each method's paired difference to the first method (± paired CI, same episodes)
    on a symmetric log scale (linear within ±1 point, logarithmic beyond), so methods within a
    point of each other stay apart and a method 50 points behind stays in view. Markers of one
    setting are spread sideways so their intervals do not hide each other. Written with the Agg
    canvas (no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullLocator

    ways = sorted({s["ways"] for s in report["settings"]})
    shots = sorted({s["shots"] for s in report["settings"]})
    names = list(report["methods"])
    reference = names[0]
    # b − a for every method b paired with the reference a (pairs run in method order)
    versus = {(p["b"], p["setting"]): p for p in report["paired"] if p["a"] == reference}
    fig = Figure(figsize=(5 * len(ways) + 3.5, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(ways), squeeze=False, sharex=True)
    colors = [f"C{i}" for i in range(10)]
    markers = "osD^v<>pPX*h"
    width = 0.7 / max(len(names), 1)  # sideways spread of one setting's markers
    for col, n in enumerate(ways):
        top, bottom = axes[0, col], axes[1, col]
        for i, name in enumerate(names):
            style = dict(
                color=colors[i % len(colors)],
                marker=markers[i % len(markers)],
                capsize=2,
                markersize=5,
                label=name,
            )
            offset = (i - (len(names) - 1) / 2) * width
            rows = [
                (shots.index(s["shots"]) + offset, report["methods"][name]["results"][s["name"]], s)
                for s in report["settings"]
                if s["ways"] == n
            ]
            done = [(x, r) for x, r, _ in rows if "accuracy" in r]
            if done:
                error = [max(100.0 - r["accuracy"], _FLOOR) for _, r in done]
                low = [min(r["ci95"], e - _FLOOR / 2) for (_, r), e in zip(done, error)]
                top.errorbar(
                    [x for x, _ in done],
                    error,
                    yerr=[low, [r["ci95"] for _, r in done]],
                    linestyle="-",
                    linewidth=1,
                    **style,
                )
            diffs = [
                (x, versus[name, s["name"]]) for x, _, s in rows if (name, s["name"]) in versus
            ]
            if diffs:
                bottom.errorbar(
                    [x for x, _ in diffs],
                    [-p["difference"] for _, p in diffs],
                    yerr=[p["ci95"] for _, p in diffs],
                    linestyle="none",
                    **style,
                )
        top.set_yscale("log")
        lo, hi = top.get_ylim()
        few = math.log10(hi / lo) < 1.5  # less than 1.5 decades: more labelled ticks
        top.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 5, 7) if few else (1, 2, 5)))
        top.yaxis.set_minor_locator(NullLocator())
        top.yaxis.set_major_formatter(_percent)
        top.set_title(f"{n}-way ({report['dataset']})")
        top.set_ylabel("error rate (%, log scale)")
        bottom.axhline(0.0, color=colors[0], linewidth=1, linestyle="--")
        bottom.set_yscale("symlog", linthresh=1.0)
        bottom.margins(y=0.06)
        bottom.autoscale_view()
        lo, hi = bottom.get_ylim()
        bottom.set_yticks([t for t in _DIFF_TICKS if lo <= t <= hi])
        bottom.yaxis.set_minor_locator(NullLocator())
        bottom.yaxis.set_major_formatter(_points)
        bottom.set_title(f"paired difference to {reference}", fontsize="medium")
        bottom.set_ylabel("accuracy difference (points)")
        bottom.set_xlabel("shots per class")
        bottom.set_xticks(range(len(shots)), [str(k) for k in shots])
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
    handles = {}  # one legend beside the panels, clear of the curves; every method once
    for ax in axes.flat:
        handles |= {
            label: h for h, label in zip(*ax.get_legend_handles_labels()) if label not in handles
        }
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside right center", fontsize="small"
        )
    fig.savefig(path, dpi=120)


_DIFF_TICKS = [s * v for v in (100, 50, 20, 10, 5, 2, 1, 0.5) for s in (-1, 1)] + [0]
_FLOOR = 0.01  # error rates are drawn at least this high (percent): 0 has no place on a log scale


def _percent(value: float, _pos: int) -> str:
    return f"{value:g}"


def _points(value: float, _pos: int) -> str:
    return f"{value:+g}" if value else "0"
