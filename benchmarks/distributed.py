"""Scaling out on torchrun, measured: training throughput with 1 and 2 processes, the share of a
step spent communicating, and the peak memory of second-order MAML by task chunk.

    python benchmarks/distributed.py --data-dir ../shared/data [--procs 1 2] [--chunks 16 4 1]

1. Throughput: ``metalab train`` (MAML 5-way 1-shot, meta-batch 32; ProtoNet 20-way 1-shot,
   meta-batch 2) with 1 process and under ``torchrun --nproc-per-node 2``, each for a short and a
   long number of steps: the difference of the two wall times over the difference of steps is the
   time of a step without start-up. Reported as tasks/s (MAML) and episodes/s (ProtoNet).
2. Communication: the all-reduce of one flat gradient of each model's size between the processes
   (gloo), timed alone under torchrun; its share is that time over the measured step time.
3. Memory: peak resident memory (``ru_maxrss``) of one process training second-order MAML 20-way
   1-shot (meta-batch 16, 5 inner steps) for a few steps at each ``train.task_chunk``.

Writes benchmarks/results/distributed-<device>.json with the command, commit and hardware. The
expected scaling on N GPUs is an estimate from the measured compute / communication split, and is
reported as one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metalab.tools.allocator import keep_freed_memory_unless_opted_out
from metalab.tools.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name: (preset, overrides, units per step, unit)
    "maml-5w1s": ("configs/omniglot/maml-5w1s.yaml", ["--meta-batch", "32"], 32, "tasks"),
    "protonet-20w1s": (
        "configs/omniglot/protonet-cpu.yaml",
        ["--meta-batch", "2", "--ways", "20"],
        2,
        "episodes",
    ),
}
QUIET = ["--quiet", "--set", "train.val_every=0", "--set", "train.tensorboard=false"]


def _metalab(procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "metalab"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={procs}",
        "-m",
        "metalab",
    ]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    print("$ " + shlex.join(cmd), file=sys.stderr)
    start = time.perf_counter()
    done = subprocess.run(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        sys.exit(f"distributed.py: this command failed: {shlex.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def throughput(data_dir: str, procs: int, short: int, long: int, env: dict) -> dict:
    rows = {}
    for name, (preset, overrides, units, unit) in SETTINGS.items():
        times = []
        for steps in (short, long):
            with tempfile.TemporaryDirectory() as out:
                cmd = _metalab(procs) + ["train", str(ROOT / preset), "--data-dir", data_dir]
                cmd += ["--out", f"{out}/run", "--steps", str(steps), "--device", "cpu"]
                times.append(_timed(cmd + overrides + QUIET, env))
        step_s = (times[1] - times[0]) / (long - short)
        rows[name] = {
            "processes": procs,
            "step_s": round(step_s, 4),
            f"{unit}_per_s": round(units / step_s, 3),
            "wall_s": [round(t, 2) for t in times],
            "steps": [short, long],
        }
    return rows


ALLREDUCE_PROBE = """
import time, torch, torch.distributed as dist
from metalab.config import parse_config
from metalab.engine.build import build_learner
dist.init_process_group("gloo")
out = {}
for name, algo, ways in (("maml-5w1s", "maml", 5), ("protonet-20w1s", "protonet", 20)):
    cfg = parse_config({"algorithm": {"name": algo}, "train": {"ways": ways},
                        "eval": {"ways": ways}}, "probe")
    n = sum(p.numel() for p in build_learner(cfg, (1, 28, 28), 0).parameters())
    flat = torch.randn(n)
    for _ in range(3):
        dist.all_reduce(flat)
    start = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(flat)
    out[name] = {"parameters": n, "allreduce_s": (time.perf_counter() - start) / 20}
if dist.get_rank() == 0:
    print(__import__("json").dumps(out))
dist.destroy_process_group()
"""


def allreduce(procs: int, env: dict) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={procs}", "--no-python", sys.executable, "-c", ALLREDUCE_PROBE]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"distributed.py: the all-reduce probe failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PEAK = (
    "import resource, sys; from metalab.cli import main; rc = main(sys.argv[1:]); "
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def memory(data_dir: str, chunks: list[int], steps: int, env: dict) -> list[dict]:
    rows = []
    for chunk in chunks:
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                "-c",
                PEAK,
                "train",
                str(ROOT / "configs/omniglot/maml-20w1s.yaml"),
            ]
            cmd += ["--data-dir", data_dir, "--out", f"{out}/run", "--steps", str(steps)]
            cmd += ["--device", "cpu", "--set", f"train.task_chunk={chunk}", "--set"]
            cmd += ["algorithm.parallel=vmap", *QUIET]
            print("$ " + shlex.join(cmd), file=sys.stderr)
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"distributed.py: this command failed:\n{done.stderr[-2000:]}")
            peak = [ln for ln in done.stderr.splitlines() if ln.startswith("PEAK_KB")][-1]
            rows.append(
                {
                    "task_chunk": chunk,
                    "peak_rss_gb": round(int(peak.split()[1]) / 1024**2, 2),
                    "wall_s": round(time.perf_counter() - start, 1),
                    "steps": steps,
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--short", type=int, default=3, help="steps of the short run")
    p.add_argument("--long", type=int, default=13, help="steps of the long run")
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 4, 1])
    p.add_argument("--memory-steps", type=int, default=1)
    p.add_argument(
        "--only", choices=("throughput", "memory"), help="measure one part (default: both)"
    )
    p.add_argument("--out", default="benchmarks/results/distributed-cpu.json")
    args = p.parse_args()
    keep_freed_memory_unless_opted_out()  # as the metalab subprocesses do: the record says so
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    data_dir = str(Path(args.data_dir).resolve())
    results: dict = {"threads_per_process": 1}
    if args.only in (None, "throughput"):
        scaling = {str(n): throughput(data_dir, n, args.short, args.long, env) for n in args.procs}
        comm = allreduce(max(args.procs), env) if max(args.procs) > 1 else {}
        for name, probe in comm.items():
            step = scaling[str(max(args.procs))][name]["step_s"]
            probe["share_of_step"] = round(probe["allreduce_s"] / step, 5)
        results |= {
            "scaling": scaling,
            "communication": comm,
            "note": "N-GPU scaling is an estimate from the compute / communication split",
        }
    if args.only in (None, "memory"):
        mem = memory(data_dir, args.chunks, args.memory_steps, env)
        results["maml_20w1s_memory_by_task_chunk"] = mem
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_result(args.out, shlex.join(["python", *sys.argv]), results, torch.device(device))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
