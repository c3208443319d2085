"""Throughput of the augmentation pipeline beside the training step it feeds.

    python benchmarks/augment_speed.py --data-dir ../shared/data --name augment-unsupervised-cpu \
        [--device cpu] [--repeats 5]

On Omniglot's Vinyals training split without labels (``data.labels: none``), times
(best and median of --repeats):

- ``augment``: :class:`metalab.tasks.augment.Augment` alone on batches of 120 and 512 images
  (images/s);
- ``umtra_sample``: drawing one 20-way 1-shot 5-query UMTRA task (gather + augment 120 images);
- ``protonet_step``: ProtoNet's training step on that task (forward, backward, Adam update);
- ``simclr_sample`` / ``simclr_step``: two views of 128 images, and SimCLR's step on them.

Writes benchmarks/results/<name>.json with the command, commit and hardware.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import metalab.algorithms  # noqa: F401
from metalab.config import parse_config
from metalab.engine.build import build_learner
from metalab.tasks.augment import Augment
from metalab.tasks.episodes import to_float
from metalab.tasks.sources import load_split
from metalab.tools.provenance import write_result


def timed(fn, repeats: int, sync) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times), "all_s": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--results", default="benchmarks/results")
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results: dict = {}
    generator = torch.Generator().manual_seed(0)

    def learner_of(name: str, **options):
        cfg = parse_config(
            {
                "algorithm": {"name": name, **options},
                "data": {"data_dir": args.data_dir, "labels": "none", "val_split": None},
                "train": {"ways": 20, "shots": 1, "queries": 5},
            }
        )
        source = load_split(cfg.data, "train").to(device)
        learner = build_learner(cfg, source.input_shape, 0).to(device)
        return cfg, source, learner

    cfg, source, protonet = learner_of("protonet")
    augment = Augment(cfg.data.augment)
    for m in (120, 512):
        x = to_float(source.images[:m])
        t = timed(lambda x=x: augment(x, generator), args.repeats, sync)
        results[f"augment_{m}"] = t | {"images_per_s_best": m / t["best_s"]}

    sampler = protonet.train_sampler(source, cfg)
    results["umtra_sample_20w1s5q"] = timed(lambda: sampler.sample(generator), args.repeats, sync)
    episode = sampler.sample(generator)
    optimizer = torch.optim.Adam(protonet.parameters(), 1e-3)

    def step(learner, batch, optimizer=optimizer):
        optimizer.zero_grad()
        learner.meta_loss(batch).loss.backward()
        optimizer.step()

    results["protonet_step_20w1s5q"] = timed(lambda: step(protonet, episode), args.repeats, sync)

    cfg, source, simclr = learner_of("simclr", batch_size=128)
    views = simclr.train_sampler(source, cfg)
    results["simclr_sample_128"] = timed(lambda: views.sample(generator), args.repeats, sync)
    batch = views.sample(generator)
    adam = torch.optim.Adam(simclr.parameters(), 1e-3)
    results["simclr_step_128"] = timed(lambda: step(simclr, batch, adam), args.repeats, sync)
    for kind in ("umtra", "simclr"):
        sample, train = (
            ("umtra_sample_20w1s5q", "protonet_step_20w1s5q")
            if kind == "umtra"
            else ("simclr_sample_128", "simclr_step_128")
        )
        results[f"{kind}_sampling_share_of_step"] = results[sample]["best_s"] / (
            results[sample]["best_s"] + results[train]["best_s"]
        )
    path = write_result(
        Path(args.results) / f"{args.name}.json",
        shlex.join(["python", *sys.argv]),
        results,
        device,
    )
    for k, v in results.items():
        print(k, f"{v['best_s'] * 1e3:.2f} ms (best)" if isinstance(v, dict) else f"{v:.3f}")
    print(path)


if __name__ == "__main__":
    main()
