"""``metalab tune CONFIG --trials N``: hyper-parameter search on Optuna
(:mod:`metalab.experiments.tuning`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metalab.cli.flags import add_set_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    from metalab.experiments.record import add_registry_flag

    p = sub.add_parser(
        "tune",
        help="tune hyper-parameters on Optuna (TPE, pruning from the validation curve)",
    )
    p.add_argument("config", help="YAML config the trials start from")
    p.add_argument("--trials", type=int, required=True, help="completed + pruned trials wanted")
    p.add_argument("--space", help="search space YAML (default: the algorithm's own)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/optuna.db)")
    p.add_argument("--study", help="study name (default: the config's file name)")
    p.add_argument("--timeout", type=float, metavar="MIN", help="stop this worker after MIN min")
    p.add_argument("--out", help="folder for trials and best.yaml (default: runs/tune-STUDY)")
    p.add_argument("--data-dir", help="folder holding the dataset")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--trial-minutes", type=float, help="wall-clock budget of each trial (train.max_minutes)"
    )
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"])
    p.add_argument("--seed", type=int, help="sampler seed (default: random; one per worker)")
    p.add_argument(
        "--warm-start",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="K",
        help="first try the best configs of the K (default 3) past studies nearest in "
        "meta-features",
    )
    p.add_argument(
        "--show-space", action="store_true", help="print the search space as YAML and stop"
    )
    add_set_flag(
        p,
        "override a config key for every trial",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_registry_flag(p)
    p.set_defaults(command_run=run)


def spec_from_args(args: argparse.Namespace):
    from metalab.experiments.tuning import TuneSpec

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.insert(0, f"data.data_dir={json.dumps(str(Path(args.data_dir).resolve()))}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.trial_minutes is not None:
        overrides.append(f"train.max_minutes={args.trial_minutes}")
    study = args.study or Path(args.config).stem
    return TuneSpec(
        config=Path(args.config),
        trials=args.trials,
        out=Path(args.out) if args.out else Path("runs") / f"tune-{study}",
        space_path=Path(args.space) if args.space else None,
        storage=args.storage,
        study=study,
        timeout_min=args.timeout,
        overrides=overrides,
        pruner=args.pruner,
        seed=args.seed,
        warm_start=args.warm_start,
        registry=args.registry,
        command="metalab " + " ".join(sys.argv[1:]),
    )


def run(args: argparse.Namespace) -> int:
    from metalab.experiments.spaces import load_space, space_yaml
    from metalab.experiments.tuning import config_with, tune

    spec = spec_from_args(args)
    if args.show_space:
        base = spec.base()
        cfg, _ = config_with(base, {})
        print(space_yaml(load_space(spec.space_path, base, cfg.algorithm_name)), end="")
        return 0
    result = tune(spec)
    if args.json:
        out = dict(vars(result))
        out["preset"] = None if result.preset is None else str(result.preset)
        print(json.dumps(out))
        return 0
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items()))
    print(f"study {result.study} ({result.storage}): {counts}", file=sys.stderr)
    for s in result.enqueued:
        print(
            f"  warm start from study {s['study']} (distance {s['distance']}): {s['params']}",
            file=sys.stderr,
        )
    if result.best_trial is None:
        print("no trial completed; see `metalab runs list --study " + result.study + "`")
        return 1
    print(
        f"best: trial {result.best_trial}, validation {result.metric} {result.best_value:.4g} "
        f"with {json.dumps(result.best_params)}"
    )
    print(f"preset: {result.preset}")
    return 0
