"""``metalab bench [CONFIG ...]``: training speed of any configured algorithm (steps/s on its own
data), or — without a config — second-order MAML with tasks in parallel (vmap) vs the per-task
loop."""

from __future__ import annotations

import argparse
import json

from metalab.cli.flags import add_set_flag, command_line, writing
from metalab.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="training speed: of the configs given, else MAML's vmap vs the per-task loop",
    )
    p.add_argument(
        "configs", nargs="*", metavar="CONFIG", help="YAML configs to time (steps/s on their data)"
    )
    p.add_argument("--data-dir", help="folder holding the configs' dataset")
    p.add_argument("--steps", type=int, default=5, help="training steps per timed run (configs)")
    add_set_flag(
        p,
        "override a config key of every CONFIG, e.g. --set train.meta_batch=32",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per setting (best is kept)")
    p.add_argument(
        "--out", help="also write the results with command, commit and hardware to this JSON file"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.cli.flags import check_output_file
    from metalab.engine.build import resolve_device
    from metalab.tools.bench import run_bench
    from metalab.tools.provenance import write_result

    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            raise ConfigError(f"{flag} {value} is invalid: it must be at least 1")
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; name the JSON file")
    if args.out:  # refused before the measurement, not after it
        check_output_file(args.out, "--out")
    device = resolve_device(args.device)
    if args.configs:
        return _bench_configs(args, device)
    result = run_bench(device, args.repeats)
    if args.out:
        with writing(args.out, "--out"):
            write_result(args.out, command_line(), result, device)
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
        "batch vs one batch per task)"
    )
    return 0


def _bench_configs(args: argparse.Namespace, device) -> int:
    from pathlib import Path

    from metalab.config import load_config
    from metalab.tools.bench import bench_algorithm
    from metalab.tools.provenance import write_result

    data = (
        [f"data.data_dir={json.dumps(str(Path(args.data_dir).resolve()))}"] if args.data_dir else []
    )
    rows = []
    for path in args.configs:
        cfg = load_config(path, data + args.overrides)
        rows.append({"config": path} | bench_algorithm(cfg, device, args.repeats, args.steps))
    result = {"device": str(device), "configs": rows}
    if args.out:
        with writing(args.out, "--out"):
            write_result(args.out, command_line(), result, device)
    if args.json:
        print(json.dumps(result))
        return 0
    for r in rows:
        print(
            f"{r['config']}: {r['algorithm']} on {r['dataset']}, {r['steps_per_s']:.2f} steps/s "
            f"(best of {args.repeats} runs of {args.steps} steps, {device})"
        )
    return 0
