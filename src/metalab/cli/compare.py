"""``metalab compare RUN...``: evaluate runs side by side on the same fixed episodes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metalab.cli.flags import add_dataset_flag, command_line
from metalab.experiments.record import add_registry_flag, record_compare


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="evaluate runs side by side on the same fixed episodes (paired statistics)"
    )
    p.add_argument("runs", nargs="+", help="run directories or checkpoints")
    p.add_argument(
        "--out", required=True, help="folder for compare.md, compare.json and compare.png"
    )
    p.add_argument("--data-dir", help="dataset folder (default: the one each run was trained on)")
    add_dataset_flag(p)
    p.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")
    add_registry_flag(p)
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.cli.flags import check_output_dir
    from metalab.engine.distributed import current_world, init_world, world_from_env
    from metalab.errors import ConfigError
    from metalab.protocols.compare import check_settings, compare_runs

    # refused before any run is loaded or evaluated
    check_settings(args.ways, args.shots, args.queries, args.episodes, args.seed)
    if not args.out.strip():
        raise ConfigError("--out is empty; name the folder for compare.md, .json and .png")
    if world_from_env().is_main:  # rank 0 alone writes (torchrun ends the others with it)
        check_output_dir(args.out, "--out")
    report = compare_runs(
        [Path(r) for r in args.runs],
        Path(args.data_dir) if args.data_dir else None,
        Path(args.out),
        ways=tuple(args.ways),
        shots=tuple(args.shots),
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        device=init_world(args.device)[1],  # torchrun: this rank's device
        checkpoint=args.checkpoint,
        command=command_line(),
        log=lambda line: print(line, file=sys.stderr),
        dataset=args.dataset,
    )
    if not current_world().is_main:  # rank 0 alone records and prints
        return 0 if report else 1
    record_compare(report, args.registry, args.dataset)
    print(Path(args.out) / "compare.md")
    return 0 if report else 1
