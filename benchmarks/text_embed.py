"""Sentence-encoder throughput on this machine, and the one-time embedding of each text dataset.

    python benchmarks/text_embed.py --data-dir ../shared/data/text [--encoder all-MiniLM-L6-v2]
        [--threads 2] [--batch-size 64] [--sample 512] [--out FILE.json]

For each dataset: sentences/s of the encoder on a fixed random sample of its sentences (after a
warm-up batch), then the full embedding into the cache ($METALAB_CACHE), timed when it is built
(``built: false`` when the cache already held it).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from metalab.data.cache import cache_root, fingerprint
from metalab.data.text import embed_corpus, embedding_cache_entry, read_dataset
from metalab.models.text import resolve_encoder
from metalab.tools.provenance import write_result

DATASETS = ("clinc150", "banking77", "hwu64", "fewrel")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sample", type=int, default=512)
    p.add_argument("--out", default="benchmarks/results/text-embed-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    start = time.perf_counter()
    model = resolve_encoder(args.encoder).load("cpu")
    results = {
        "encoder": args.encoder,
        "dim": model.dim,
        "load_seconds": round(time.perf_counter() - start, 2),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "datasets": {},
    }
    for name in args.datasets:
        corpus = read_dataset(
            name, Path(args.data_dir), "pubmed" if name == "fewrel" else "default"
        )
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(corpus.texts), generator=g)[: args.sample].tolist()
        sample = [corpus.texts[i] for i in pick]
        model.encode(sample[: args.batch_size], batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()
        model.encode(sample, batch_size=args.batch_size)
        rate = len(sample) / (time.perf_counter() - start)
        words = sum(len(t.split()) for t in sample) / len(sample)
        row = {
            "sentences": len(corpus.texts),
            "sample": len(sample),
            "mean_words": round(words, 1),
            "sentences_per_s": round(rate, 1),
        }
        cache_name, params, sources = embedding_cache_entry(corpus, args.encoder)
        key = fingerprint(params, sources)
        built = not (cache_root() / f"{cache_name}-{key[:16]}.pt").exists()
        start = time.perf_counter()
        vectors = embed_corpus(corpus, args.encoder, batch_size=args.batch_size)
        row |= {"built": built, "embed_seconds": round(time.perf_counter() - start, 1)}
        row["shape"] = list(vectors.shape)
        results["datasets"][name] = row
        print(name, row, file=sys.stderr, flush=True)
        write_result(args.out, command, results)  # after each dataset: a long run keeps its rows
    print(args.out)


if __name__ == "__main__":
    main()
