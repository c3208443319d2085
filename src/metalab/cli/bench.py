"""``metalab bench``: MAML meta-training speed, tasks in parallel (vmap) vs the per-task loop."""

from __future__ import annotations

import argparse
import json

from metalab.cli.flags import command_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="MAML meta-training speed: tasks in parallel (vmap) vs the per-task loop"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per setting (best is kept)")
    p.add_argument(
        "--out", help="also write the results with command, commit and hardware to this JSON file"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.engine.build import resolve_device
    from metalab.tools.bench import run_bench
    from metalab.tools.provenance import write_result

    device = resolve_device(args.device)
    result = run_bench(device, args.repeats)
    if args.out:
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
