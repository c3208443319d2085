"""The command line: ``metalab train | eval | predict | list | data``.

Errors on bad input are printed as one line on stderr with a non-zero exit (2); ``--debug`` shows
the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from metalab.errors import ConfigError, MetalabError
from metalab.tools.allocator import keep_freed_memory_unless_opted_out

PRESETS = Path(__file__).resolve().parents[3] / "configs"


def _add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ways", type=int, help="N classes per task")
    p.add_argument("--shots", type=int, help="K support examples per class")
    p.add_argument("--queries", type=int, help="Q query examples per class")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalab", description="Meta-learning on PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train an algorithm from a YAML config")
    p.add_argument("config", help="YAML config, e.g. configs/omniglot/protonet-5w1s.yaml")
    p.add_argument(
        "--data-dir",
        help="folder holding the dataset (for Omniglot: the zips or an omniglot/ folder)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--steps", type=int)
    _add_task_flags(p)
    p.add_argument("--meta-batch", type=int, help="tasks per step")
    p.add_argument("--lr", type=float, help="meta learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget; training ends cleanly with checkpoints",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt"
    )
    p.add_argument(
        "--download", action="store_true", help="fetch missing official dataset files first"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr_step=500 --set "
        "algorithm.distance=cosine",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "eval",
        help="evaluate a trained run on fixed test episodes (mean accuracy or MSE ± 95%% CI)",
    )
    p.add_argument("run", help="run directory (uses best.pt, else last.pt) or checkpoint file")
    p.add_argument(
        "--data-dir", help="folder holding the dataset (default: the one the run was trained on)"
    )
    p.add_argument("--split", help="split to evaluate on (default: test)")
    _add_task_flags(p)
    p.add_argument("--episodes", type=int, help="number of fixed test episodes (default 1000)")
    p.add_argument("--seed", type=int, help="seed of the fixed episode set (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--challenge-runs",
        metavar="DIR",
        help="Lake et al.'s one-shot challenge: the official runs (all_runs.zip or its folder); "
        "reports error_rate",
    )
    p.add_argument(
        "--within-alphabet",
        action="store_true",
        help="20-way 1-shot within-alphabet episodes on the evaluation alphabets (Lake et al. "
        "2015)",
    )
    p.add_argument(
        "--baseline",
        metavar="RUN",
        help="regression: a run of the pre-trained baseline "
        "(configs/sinusoid/pretrained.yaml) measured on the same tasks, reported as baseline_curve",
    )
    p.add_argument(
        "--plot",
        metavar="PATH",
        help="regression: where to write the PNG plot "
        "(default: regression-<split>.png beside the checkpoint)",
    )

    p = sub.add_parser(
        "predict", help="adapt a trained learner to your own examples and classify queries"
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument(
        "--support", required=True, help="folder of class folders: SUPPORT/<class>/<images>"
    )
    p.add_argument("--query", required=True, nargs="+", help="image files to classify")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")

    sub.add_parser("list", help="algorithms, datasets, backbones and presets")

    p = sub.add_parser(
        "compare", help="evaluate runs side by side on the same fixed episodes (paired statistics)"
    )
    p.add_argument("runs", nargs="+", help="run directories or checkpoints")
    p.add_argument(
        "--out", required=True, help="folder for compare.md, compare.json and compare.png"
    )
    p.add_argument("--data-dir", help="dataset folder (default: the one each run was trained on)")
    p.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")

    p = sub.add_parser(
        "bench", help="MAML meta-training speed: tasks in parallel (vmap) vs the per-task loop"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per setting (best is kept)")
    p.add_argument(
        "--out", help="also write the results with command, commit and hardware to this JSON file"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("info", help="alphabets, characters, images and classes per split")
    q.add_argument("dataset", help="a registered dataset with a listing (metalab list)")
    q.add_argument("--data-dir", required=True)
    q.add_argument("--scheme", default="vinyals")
    q.add_argument(
        "--download", action="store_true", help="fetch the official zips first when missing"
    )
    q.add_argument("--json", action="store_true")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from metalab.config import load_config
    from metalab.engine.trainer import train

    data_dir = (
        str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    )  # eval finds it later
    flags = {
        "data.data_dir": data_dir,
        "train.steps": args.steps,
        "train.ways": args.ways,
        "train.shots": args.shots,
        "train.queries": args.queries,
        "train.meta_batch": args.meta_batch,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "train.device": args.device,
        "train.max_minutes": args.max_minutes,
        "data.download": args.download or None,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + args.overrides
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    unit = "%" if result.metric == "accuracy" else ""
    best = (
        ""
        if result.best_val is None
        else f", best validation {result.metric} {result.best_val:.4g}{unit}"
    )
    how = {"steps": "finished", "time": "stopped by --max-minutes", "interrupted": "interrupted"}[
        result.stopped
    ]
    print(
        f"{how} at step {result.step}{best}; checkpoints in {out}"
        + ("; continue with --resume" if result.stopped != "steps" else ""),
        file=sys.stderr,
    )
    return 130 if result.stopped == "interrupted" else 0


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from metalab.engine.build import load_learner, resolve_device
    from metalab.engine.evaluate import evaluate
    from metalab.tasks.episodes import fixed_episodes, is_regression
    from metalab.tasks.sources import load_split

    device = resolve_device(args.device)
    learner, cfg, state = load_learner(args.run, device, args.checkpoint)
    if args.challenge_runs or args.within_alphabet:
        return eval_challenge(args, learner, cfg, state, device)
    data = dataclasses.replace(cfg.data, data_dir=args.data_dir or cfg.data.data_dir)
    e = dataclasses.replace(
        cfg.eval,
        **{
            k: v
            for k, v in (
                ("split", args.split),
                ("ways", args.ways),
                ("shots", args.shots),
                ("queries", args.queries),
                ("episodes", args.episodes),
                ("seed", args.seed),
            )
            if v is not None
        },
    )
    split = load_split(data, e.split).to(device)
    if (args.baseline or args.plot) and not is_regression(split):
        raise ConfigError(
            "--baseline and --plot are for regression runs (sinusoid); "
            f"this run was trained on {cfg.data.dataset}"
        )
    episodes = fixed_episodes(
        split, e.ways, e.shots, e.queries, e.episodes, e.seed, data.within_group
    )
    result = evaluate(learner, episodes, e.batch)
    report = {
        result.metric: round(result.value, 4),
        "ci95": round(result.ci95, 4),
        "episodes": e.episodes,
        "ways": e.ways,
        "shots": e.shots,
        "queries": e.queries,
        "split": e.split,
        "seed": e.seed,
        "algorithm": cfg.algorithm_name,
        "dataset": split.name,
        "checkpoint": str(state["path"]),
        "step": state["step"],
        "device": str(device),
    }
    report |= learner.protocol_report(split, e)
    if is_regression(split):
        from metalab.protocols.regression import regression_report

        baseline = None
        if args.baseline:
            baseline, bcfg, bstate = load_learner(args.baseline, device, args.checkpoint)
            report["baseline"] = str(bstate["path"])
            if bcfg.data.dataset != cfg.data.dataset:
                raise ConfigError(
                    f"--baseline {args.baseline} was trained on '{bcfg.data.dataset}', not "
                    f"'{cfg.data.dataset}'; train it with configs/sinusoid/pretrained.yaml"
                )
        plot = (
            Path(args.plot)
            if args.plot
            else Path(state["path"]).parent / f"regression-{e.split}.png"
        )
        shots = (args.shots,) if args.shots else None
        report |= regression_report(learner, split, e, baseline, plot, shots)
    if args.json:
        print(json.dumps(report))
    elif is_regression(split):
        print(
            f"{cfg.algorithm_name} on {split.name}, {e.shots}-shot ({e.queries} query points), "
            f"{e.episodes} "
            f"tasks: MSE {result.value:.3f} ± {result.ci95:.3f}"
        )
        for k, row in report["curve"].items():
            print(
                f"  K={k:<3s} MSE by step 0..{len(row['mse']) - 1}: "
                + " ".join(f"{v:.3f}" for v in row["mse"])
            )
            if report["baseline_curve"]:
                print(
                    "        pretrained baseline:  "
                    + " ".join(f"{v:.3f}" for v in report["baseline_curve"][k]["mse"])
                )
        if not report["baseline_curve"]:
            print("  (no baseline: pass --baseline RUN, a run of configs/sinusoid/pretrained.yaml)")
        print(f"  plot: {report['plot']}")
    else:
        print(
            f"{cfg.algorithm_name} on {split.name}, {e.ways}-way {e.shots}-shot ({e.queries} "
            "queries), "
            f"{e.episodes} episodes: {result.accuracy:.2f} ± {result.ci95:.2f}%"
        )
    return 0


def eval_challenge(args: argparse.Namespace, learner, cfg, state, device) -> int:
    """Lake et al. 2015's one-shot challenge: the official runs, or within-alphabet 20-way 1-shot
    episodes."""
    from metalab.data.base import Preprocess
    from metalab.protocols.omniglot_challenge import (
        check_background_only,
        evaluate_challenge,
        evaluate_within_alphabet,
    )

    warning = check_background_only(cfg)  # refuses a run trained on evaluation alphabets
    if args.challenge_runs:
        report = evaluate_challenge(
            learner, Path(args.challenge_runs), Preprocess(**state["preprocess"]), device
        )
    else:
        report = evaluate_within_alphabet(
            learner,
            cfg,
            Path(args.data_dir) if args.data_dir else None,
            args.episodes or 1000,
            args.seed or 0,
            device,
        )
    report |= {
        "algorithm": cfg.algorithm_name,
        "checkpoint": str(state["path"]),
        "step": state["step"],
        "warning": warning,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{cfg.algorithm_name}: error rate {report['error_rate']:.2f}% over "
            f"{report['trials']} trials" + (f" (warning: {warning})" if warning else "")
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from metalab.engine.build import resolve_device
    from metalab.protocols.compare import compare_runs

    report = compare_runs(
        [Path(r) for r in args.runs],
        Path(args.data_dir) if args.data_dir else None,
        Path(args.out),
        ways=tuple(args.ways),
        shots=tuple(args.shots),
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        device=resolve_device(args.device),
        checkpoint=args.checkpoint,
        command="metalab " + " ".join(sys.argv[1:]),
        log=lambda line: print(line, file=sys.stderr),
    )
    print(Path(args.out) / "compare.md")
    return 0 if report else 1


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from metalab.data.base import Preprocess
    from metalab.data.folder import load_image_folder
    from metalab.data.imaging import load_images
    from metalab.engine.build import load_learner, resolve_device
    from metalab.tasks.episodes import Episode, to_float

    device = resolve_device(args.device)
    learner, cfg, state = load_learner(args.run, device, args.checkpoint)
    if state.get("preprocess") is None:
        raise ConfigError(
            f"{state['path']} was trained on '{cfg.data.dataset}', which has no images; "
            f"predict classifies images with a run trained on an image dataset"
        )
    pre = Preprocess(**state["preprocess"])
    support = load_image_folder(Path(args.support), pre, name=f"support folder {args.support}")
    labels = torch.repeat_interleave(torch.arange(support.num_classes), support.counts)
    query = load_images([Path(q) for q in args.query], pre)
    episode = Episode(
        to_float(support.images)[None],
        labels[None],
        to_float(query)[None],
        torch.zeros(1, len(query), dtype=torch.long),
        support.num_classes,
    ).to(device)
    learner.eval()
    with torch.no_grad():
        probs = learner.predict(episode)[0].softmax(-1).cpu()
    rows = [
        {
            "query": q,
            "class": support.class_names[int(p.argmax())],
            "probability": round(float(p.max()), 4),
            "probabilities": {c: round(float(v), 4) for c, v in zip(support.class_names, p)},
        }
        for q, p in zip(args.query, probs)
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['query']}\t{r['class']}\t{r['probability']:.3f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from metalab.engine.build import resolve_device
    from metalab.tools.bench import run_bench
    from metalab.tools.provenance import write_result

    device = resolve_device(args.device)
    result = run_bench(device, args.repeats)
    if args.out:
        write_result(args.out, "metalab " + " ".join(sys.argv[1:]), result, device)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"second-order MAML meta-training on {result['device']} ({result['hardware']}), tasks/s:")
    for row in result["settings"]:
        print(
            f"  {row['name']:18s} vmap {row['vmap_tasks_per_s']:8.1f}   loop "
            f"{row['loop_tasks_per_s']:8.1f}   "
            f"ratio {row['ratio']:.2f}x   batching alone {row['batching_gain']:.2f}x"
        )
    print(
        "(batching alone: plain training of the same network on the same images, all tasks in one "
        "batch "
        "vs one batch per task)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import metalab.algorithms  # noqa: F401
    import metalab.models  # noqa: F401
    import metalab.tasks.sources  # noqa: F401
    from metalab.registry import ALGORITHMS, BACKBONES, DATASETS

    print("algorithms: " + ", ".join(ALGORITHMS.names()))
    print("datasets:   " + ", ".join(DATASETS.names()))
    print("backbones:  " + ", ".join(BACKBONES.names()))
    presets = (
        sorted(str(p.relative_to(PRESETS.parent)) for p in PRESETS.glob("**/*.yaml"))
        if PRESETS.is_dir()
        else []
    )
    print(
        "presets:\n" + "\n".join(f"  {p}" for p in presets)
        if presets
        else "presets:    (none found)"
    )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from metalab.config import DataConfig
    from metalab.tasks.sources import dataset_info

    data = DataConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        scheme=args.scheme,
        download=args.download,
    )
    info = dataset_info(data)
    if args.json:
        print(json.dumps(info))
        return 0
    print(args.dataset + (f" ({info['scheme']} split)" if "scheme" in info else ""))
    for split, row in info["splits"].items():
        print(f"  {split:9s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "list": cmd_list,
    "data": cmd_data,
    "bench": cmd_bench,
    "compare": cmd_compare,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # large tensors reused, not page-faulted in every step (allocator.py)
    keep_freed_memory_unless_opted_out()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="metalab: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except MetalabError as e:
        if args.debug:
            raise
        print(f"metalab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metalab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
