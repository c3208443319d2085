"""Episode sampling throughput (episodes/s) on Omniglot, so sampling is never the bottleneck.

    python benchmarks/sampling.py --data-dir ../shared/data [--device cpu] [--seconds 3]

Measures the training sampler (fresh random episodes, meta-batch 1 and 32) for 5w1s15q and 20w5s15q,
images gathered on the device; writes benchmarks/results/sampling-<device>.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from metalab.data.omniglot import load_omniglot
from metalab.engine.build import resolve_device
from metalab.tasks.episodes import EpisodeSampler
from metalab.tools.allocator import keep_freed_memory_unless_opted_out
from metalab.tools.provenance import write_result


def throughput(sampler: EpisodeSampler, seconds: float, device: torch.device) -> float:
    g = torch.Generator().manual_seed(0)
    sampler.sample(g)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ep = sampler.sample(g)
        n += ep.tasks
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    keep_freed_memory_unless_opted_out()  # as the metalab command line does
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    train = load_omniglot(Path(args.data_dir), "vinyals", "train").to(device)
    results = {}
    for ways, shots, queries in ((5, 1, 15), (20, 5, 15)):
        for batch in (1, 32):
            key = f"{ways}w{shots}s{queries}q-batch{batch}"
            rate = throughput(
                EpisodeSampler(train, ways, shots, queries, batch), args.seconds, device
            )
            results[key] = {"episodes_per_s": round(rate, 1)}
            print(f"{key}: {rate:,.0f} episodes/s", file=sys.stderr)
    out = args.out or f"benchmarks/results/sampling-{device.type}.json"
    write_result(out, "python " + " ".join(shlex.quote(a) for a in sys.argv), results, device)
    print(out)


if __name__ == "__main__":
    main()
