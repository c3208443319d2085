"""Training-step time of the fine-tuned sentence encoder (``backbone: transformer[-topL]``).

    python benchmarks/text_finetune_speed.py --data-dir ../shared/data/text [--dataset banking77]
        [--sentences 100] [--steps 10] [--layers 2] [--threads 1] [--out FILE.json]

One step = the encoder's forward on a fixed batch of ``--sentences`` sentences (a 20-way episode
of 5 sentences per class at K = 5 in benchmarks/text_finetune.py), a backward of a loss on the
embeddings, and an Adam step on the trained weights — the backbone's share of a fine-tuning step.
The batch is the same every step, as a K-shot set is seen again and again. Three variants:
``transformer`` (every weight trained), ``transformer-topL`` without the frozen-prefix cache
(``CACHE = 0``) and with it (the default). Seconds per step are the median over ``--steps`` steps
after one warm-up step (the cache fills there).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from metalab.data.text import read_dataset
from metalab.models import build_backbone
from metalab.models.transformer import encoder_scope, tokenize
from metalab.tools.provenance import write_result


def step_seconds(name: str, ids: torch.Tensor, encoder: str, steps: int, cache: bool) -> float:
    with encoder_scope(encoder):
        net = build_backbone(name, in_channels=ids.shape[1], hidden=64)
    if not cache:
        net.CACHE = 0
    trained = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=5e-5)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = net(ids)
        (out @ out.T).logsumexp(-1).mean().backward()  # a loss over the batch's embeddings
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--dataset", default="banking77")
    p.add_argument("--sentences", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--layers", type=int, default=2, help="L of transformer-topL")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/text-finetune-speed-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    corpus = read_dataset(args.dataset, Path(args.data_dir))
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(corpus.texts), generator=g)[: args.sentences].tolist()
    ids = tokenize([corpus.texts[i] for i in pick], args.encoder, args.max_tokens).float()
    top = f"transformer-top{args.layers}"
    variants = {
        "transformer": ("transformer", False),
        f"{top} (no cache)": (top, False),
        top: (top, True),
    }
    results: dict = {
        "encoder": args.encoder,
        "dataset": args.dataset,
        "sentences": args.sentences,
        "mean_tokens": round(float((ids != 0).sum(1).float().mean()), 1),
        "steps": args.steps,
        "threads": args.threads,
        "variants": {},
    }
    for label, (name, cache) in variants.items():
        seconds = step_seconds(name, ids, args.encoder, args.steps, cache)
        results["variants"][label] = {
            "seconds_per_step": round(seconds, 3),
            "sentences_per_s": round(args.sentences / seconds, 1),
        }
        print(label, results["variants"][label], file=sys.stderr, flush=True)
    print(write_result(args.out, command, results))


if __name__ == "__main__":
    main()
