"""Train a preset, evaluate it with the field's protocol, and record everything beside the numbers.

    python benchmarks/accuracy.py configs/omniglot/protonet-cpu.yaml --data-dir ../shared/data \
        --name protonet-omniglot-cpu [--train-args="--max-minutes 15"] [--eval-args="--ways 20"]...

Runs ``metalab train`` then ``metalab eval --json`` (once per --eval-args, default once with the
config's evaluation settings) as subprocesses, and writes benchmarks/results/<name>.json (or
--results DIR/<name>.json) with the exact commands, the training wall time, the validation learning
curve (from metrics.jsonl), the test results, and the commit, date and hardware.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from metalab.tools.allocator import keep_freed_memory_unless_opted_out
from metalab.tools.provenance import write_result


class Failed(Exception):
    """A metalab command exited non-zero (it printed why on stderr)."""


def run(cmd: list[str]) -> str:
    print("$ " + shlex.join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    # metalab has printed what went wrong on stderr; no traceback on top of it
    if done.returncode != 0:
        raise Failed(f"this command failed (exit {done.returncode}): {shlex.join(cmd)}")
    return done.stdout


def main() -> None:
    # as the metalab subprocesses do, so the record describes them
    keep_freed_memory_unless_opted_out()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument(
        "--data-dir", help="dataset folder (not needed for generated tasks such as sinusoid)"
    )
    p.add_argument(
        "--name", required=True, help="results file name (benchmarks/results/<name>.json)"
    )
    p.add_argument("--out", help="run directory (default runs/bench-<name>)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--results",
        default="benchmarks/results",
        help="folder for <name>.json (default benchmarks/results)",
    )
    p.add_argument(
        "--train-args",
        default="",
        help='extra flags for metalab train, one string: --train-args="--steps 100"',
    )
    p.add_argument(
        "--eval-args",
        action="append",
        default=None,
        help='extra flags for one metalab eval (repeatable): --eval-args="--ways 20"',
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="evaluate the run already in --out (trained by the commands given with "
        "--trained-by), without training it",
    )
    p.add_argument(
        "--trained-by",
        action="append",
        default=[],
        help="with --no-train: a command that trained the run (repeatable; recorded as given)",
    )
    args = p.parse_args()
    if args.no_train and not args.out:
        p.error("--no-train needs --out: the run folder to evaluate")
    out = args.out or f"runs/bench-{args.name}"
    metalab = [sys.executable, "-m", "metalab.cli"]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    train_cmd = metalab + [
        "train",
        args.config,
        *data,
        "--out",
        out,
        "--device",
        args.device,
        "--quiet",
        *shlex.split(args.train_args),
    ]
    start = time.monotonic()
    if not args.no_train:
        try:
            run(train_cmd)
        except Failed as e:
            sys.exit(f"accuracy.py: {e}; no result written")
    train_s = time.monotonic() - start
    evals, failed = [], []
    for extra in args.eval_args or [""]:
        cmd = metalab + ["eval", out, *data, "--device", args.device, "--json", *shlex.split(extra)]
        try:
            result = json.loads(run(cmd))
        except Failed as e:  # one evaluation refused: keep the others, say which failed
            print(f"accuracy.py: {e}", file=sys.stderr)
            failed.append(shlex.join(["metalab", *cmd[3:]]))
            continue
        result["command"] = shlex.join(["metalab", *cmd[3:]])
        evals.append(result)
        metric = next(m for m in ("accuracy", "mse", "error_rate") if m in result)
        print(
            f"{result.get('ways')}-way {result.get('shots')}-shot {metric}: {result[metric]:.4g} "
            f"± {result['ci95']:.2g}",
            file=sys.stderr,
        )
    lines = [
        json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]
    curve = [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
        for r in lines
        if any(k.startswith("val_") for k in r)
    ]
    last_train = [r for r in lines if "loss" in r][-1:]
    results = {
        "train_command": args.trained_by
        if args.no_train
        else shlex.join(["metalab", *train_cmd[3:]]),
        "train_wall_s": None if args.no_train else round(train_s, 1),
        "steps": last_train[0]["step"] if last_train else None,
        "eval": evals,
        "val_curve": curve,
    }
    if failed:
        results["eval_failed"] = failed  # metalab printed why on stderr
    if not evals:
        sys.exit("accuracy.py: every evaluation failed, no result written")
    path = write_result(
        Path(args.results) / f"{args.name}.json", shlex.join(["python", *sys.argv]), results
    )
    print(path)
    if failed:
        sys.exit(f"accuracy.py: {len(failed)} evaluation(s) failed (recorded under eval_failed)")


if __name__ == "__main__":
    main()
