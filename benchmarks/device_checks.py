"""Issue 3's GPU measurements as one prepared command for a borrowed GPU machine (a call of at most
10
minutes): ``metalab bench`` on the device, then MAML's Omniglot 5-way and 20-way 1-shot paper
presets (or others of the optimization family, ``--presets``), each trained for a fixed budget and
evaluated on its 1000 fixed test episodes (benchmarks/accuracy.py, learning curve included). Every
result is a JSON file with its command, commit and hardware.

Here, once (``data/`` is ignored by git; the call carries it):

    mkdir -p data && cp -r ../shared/data/omniglot data/

On the GPU machine (no network, torch preinstalled; the copied tree has no git, so pass the commit):

    pip install --no-deps --no-build-isolation -e . && \\
        METALAB_COMMIT=<git rev-parse HEAD here> python benchmarks/device_checks.py --data-dir data
        --results "$OUT"

then copy the JSON files from ``$OUT`` into benchmarks/results/ and run benchmarks/summarize.py.
``--dry-run`` prints the commands; ``--device cpu`` with small ``--minutes`` rehearses the whole
script.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time

import torch

OPTIMIZATION_PRESETS = (
    "maml-5w1s",
    "maml-20w1s",
    "fomaml-5w1s",
    "metasgd-5w1s",
    "anil-5w1s",
    "reptile-5w1s",
    "meta-lstm-5w1s",
    "meta-lstm-5w5s",
)  # configs/omniglot/<name>.yaml


def device_tag(device: str) -> str:
    """A short name for result files: ``h100`` for "NVIDIA H100 80GB HBM3", else ``gpu``; ``cpu`` on
    the CPU."""
    if not device.startswith("cuda"):
        return "cpu"
    match = re.search(r"\b([a-z]\d{2,4})\b", torch.cuda.get_device_name(device).lower())
    return match.group(1) if match else "gpu"


def commands(args: argparse.Namespace, tag: str) -> list[list[str]]:
    python = sys.executable
    cmds = (
        []
        if args.skip_bench
        else [
            [
                python,
                "-m",
                "metalab.cli",
                "bench",
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
                "--out",
                f"{args.results}/bench-maml-{tag}.json",
            ]
        ]
    )
    train = (
        f"--max-minutes {args.minutes} --set train.val_every={args.val_every} "
        f"--set train.val_episodes={args.val_episodes}"
    )
    for preset in args.presets:
        cmd = [
            python,
            "benchmarks/accuracy.py",
            f"configs/omniglot/{preset}.yaml",
            "--data-dir",
            args.data_dir,
            "--device",
            args.device,
            "--name",
            f"{preset}-omniglot-{tag}-{args.minutes:g}min",
            "--results",
            args.results,
            f"--train-args={train}",
        ]
        cmds.append(
            cmd + ([f"--eval-args=--episodes {args.eval_episodes}"] if args.eval_episodes else [])
        )
    return cmds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", required=True, help="folder holding omniglot/ (the official zips and splits)"
    )
    p.add_argument(
        "--results", required=True, help="where the JSON files go (on the GPU machine: $OUT)"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--presets",
        nargs="+",
        default=["maml-5w1s", "maml-20w1s"],
        choices=OPTIMIZATION_PRESETS,
        help="configs/omniglot/<preset>.yaml to train and evaluate (default: MAML 5-way and "
        "20-way)",
    )
    p.add_argument(
        "--minutes", type=float, default=3.0, help="training budget of each preset (default 3)"
    )
    p.add_argument(
        "--val-every",
        type=int,
        default=500,
        help="validation interval: the learning curve's resolution",
    )
    p.add_argument("--val-episodes", type=int, default=200)
    p.add_argument("--eval-episodes", type=int, help="test episodes (default: the preset's 1000)")
    p.add_argument("--repeats", type=int, default=5, help="metalab bench --repeats")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()
    tag = device_tag(args.device)
    for cmd in commands(args, tag):
        print("$ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            start = time.monotonic()
            if subprocess.run(cmd).returncode != 0:
                sys.exit(
                    "device_checks: this command failed (its message is above); later ones were "
                    "not run: "
                    f"{shlex.join(cmd)}"
                )
            print(f"  ({time.monotonic() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
