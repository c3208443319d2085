"""How far first-order MAML's meta-gradient is from MAML's, on the same tasks and weights.

    python benchmarks/first_order_gap.py --data-dir ../shared/data --name first-order-gap-cpu \
        [--config configs/omniglot/maml-5w1s.yaml] [--run RUN ...] [--inner-lr 0.4 0.1 0.01] \
        [--batches 4] [--device cpu]

First-order MAML (Finn et al. 2017, §5.2) replaces the meta-gradient of one inner step,
``(I − α H_support(θ)) ∇L_query(θ')``, with ``∇L_query(θ')``: the approximation is good when
``α H`` is small. For each inner rate α (``--inner-lr``), and for the weights at initialisation and
of each trained run given with ``--run``, this draws ``--batches`` meta-batches of the config's
training shape from Omniglot's training classes and records, per batch: the cosine similarity of
the two meta-gradients (all weights, and the network's body and head apart) and the ratio of their
norms, with the head meta-learned (MAML) and with Kao et al. 2022's zeroing trick
(``zero_head``). The same tasks are used for every α and every set of weights.

Writes benchmarks/results/<name>.json with the command, commit and hardware.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

import metalab.algorithms  # noqa: F401
from metalab.config import load_config
from metalab.engine.build import build_learner, load_learner
from metalab.tasks.sources import load_split
from metalab.tools.provenance import write_result


def meta_gradient(learner, episode) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    learner.meta_loss(episode).loss.backward()
    return {k: p.grad.detach().clone() for k, p in learner.named_parameters()}


def cosine(a: dict, b: dict, keys: list[str]) -> float | None:
    """None when either gradient is zero (the head under ``zero_head``: it is not learned)."""
    x = torch.cat([a[k].flatten() for k in keys]).double()
    y = torch.cat([b[k].flatten() for k in keys]).double()
    if not (x.any() and y.any()):
        return None
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def norm(g: dict, keys: list[str]) -> float:
    return float(torch.cat([g[k].flatten() for k in keys]).double().norm())


def gap(learner, episodes: list, inner_lr: float, zero_head: bool) -> dict:
    """Cosine and norm ratio of first- to second-order meta-gradients over ``episodes``."""
    options = {"inner_lr": inner_lr, "zero_head": zero_head, "parallel": "loop"}
    second = learner.replace(first_order=False, **options)
    first = learner.replace(first_order=True, **options)
    keys = [k for k, _ in learner.named_parameters()]
    groups = {
        "all": keys,
        "body": [k for k in keys if ".head." not in k],
        "head": [k for k in keys if ".head." in k],
    }
    rows = []
    for episode in episodes:
        g2, g1 = meta_gradient(second, episode), meta_gradient(first, episode)
        row = {f"cosine_{name}": cosine(g1, g2, ks) for name, ks in groups.items()}
        row["norm_ratio_first_to_second"] = norm(g1, keys) / norm(g2, keys)
        rows.append(row)
    summary = {
        k: None if rows[0][k] is None else statistics.mean(r[k] for r in rows) for k in rows[0]
    }
    return {"inner_lr": inner_lr, "zero_head": zero_head, "mean": summary, "batches": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--config", default="configs/omniglot/maml-5w1s.yaml")
    p.add_argument("--run", action="append", default=[], help="trained run (repeatable)")
    p.add_argument("--inner-lr", type=float, nargs="+", default=[0.4, 0.1, 0.01])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default="benchmarks/results")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_config(args.config, [f"data.data_dir={args.data_dir}"])
    source = load_split(cfg.data, "train").to(device)
    learners = {"initialisation": build_learner(cfg, source.image_shape, cfg.train.seed).to(device)}
    for run in args.run:
        learners[run] = load_learner(run, device)[0]
    generator = torch.Generator().manual_seed(0)
    sampler = learners["initialisation"].train_sampler(source, cfg)
    episodes = [sampler.sample(generator) for _ in range(args.batches)]
    shape = {k: getattr(cfg.train, k) for k in ("ways", "shots", "queries", "meta_batch")}
    results = {"config": args.config, "train_shape": shape, "weights": {}}
    for name, learner in learners.items():
        learner.train()
        results["weights"][name] = [
            gap(learner, episodes, lr, zero) for zero in (False, True) for lr in args.inner_lr
        ]
        for row in results["weights"][name]:
            m = row["mean"]
            head = "-" if m["cosine_head"] is None else f"{m['cosine_head']:.3f}"
            print(
                f"{name}: alpha {row['inner_lr']}, zero_head {row['zero_head']}: cosine "
                f"{m['cosine_all']:.3f} (body {m['cosine_body']:.3f}, head {head}), "
                f"|first|/|second| {m['norm_ratio_first_to_second']:.2f}"
            )
    path = write_result(
        Path(args.results) / f"{args.name}.json",
        shlex.join(["python", *sys.argv]),
        results,
        device,
    )
    print(path)


if __name__ == "__main__":
    main()
