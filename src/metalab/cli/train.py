"""``metalab train CONFIG``: meta-train an algorithm from a YAML config into a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metalab.cli.flags import add_set_flag, add_task_flags, command_line
from metalab.experiments.record import add_registry_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train an algorithm from a YAML config")
    p.add_argument("config", help="YAML config, e.g. configs/omniglot/protonet-5w1s.yaml")
    p.add_argument(
        "--data-dir",
        help="folder holding the dataset (for Omniglot: the zips or an omniglot/ folder)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--steps", type=int)
    add_task_flags(p)
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
    add_set_flag(
        p,
        "override any config key, e.g. --set train.lr_step=500 --set algorithm.distance=cosine",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_registry_flag(p)
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.config import load_config
    from metalab.engine.trainer import Trainer
    from metalab.errors import ConfigError
    from metalab.experiments.record import fit_recorded

    # an absolute path, so that eval finds the data later from anywhere
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
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
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; name the run folder (default: runs/<config name>)")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    trainer = Trainer(cfg, out, args.resume, progress=not args.quiet)
    result = fit_recorded(trainer, out, command_line(), args.registry)
    if not trainer.world.is_main:  # under torchrun, rank 0 alone records and prints
        return _exit_code(result)
    unit = "%" if result.metric == "accuracy" else ""
    best = (
        ""
        if result.best_val is None
        else f", best validation {result.metric} {result.best_val:.4g}{unit}"
    )
    how = {
        "steps": "finished",
        "time": "stopped by --max-minutes",
        "interrupted": f"stopped by {result.signal or 'an interrupt'}",
    }[result.stopped]
    print(
        f"{how} at step {result.step}{best}; checkpoints in {out}"
        + ("; continue with --resume" if result.stopped != "steps" else ""),
        file=sys.stderr,
    )
    return _exit_code(result)


def _exit_code(result) -> int:
    """0 when training ended by itself; 128 + the signal's number when a signal stopped it (130
    for SIGINT, 143 for SIGTERM, as shells and job schedulers expect)."""
    if result.stopped != "interrupted":
        return 0
    return 143 if result.signal == "SIGTERM" else 130
