"""SetFit (Tunstall et al. 2022) beside the frozen-embedding classifiers, on the same K-shot draws.

    python benchmarks/text_setfit.py --data-dir ../shared/data/text [--datasets banking77]
        [--k 5] [--samples 1] [--num-iterations 20] [--max-steps N] [--threads 2]
        [--out benchmarks/results/text-setfit-cpu.json]

The `setfit` package fine-tunes the same all-MiniLM-L6-v2 body (the packaged model's folder)
contrastively on pairs of the K-shot sentences, then fits its logistic-regression head; it is
scored on the whole published test part. The K sentences per class are those of
benchmarks/text_fewshot.py's allclasses part for the same seed (same generator, same order), so the
rows of the two result files compare draw by draw. Training time and accuracy per draw.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from metalab.data.base import ClassIndexedDataset
from metalab.data.text import read_dataset, scheme_of, split_rows
from metalab.engine.evaluate import mean_ci95
from metalab.models.text import resolve_encoder
from metalab.tools.provenance import write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_fewshot import draw_shots  # noqa: E402  (the same K-shot draws)


def row_split(corpus, split: str) -> ClassIndexedDataset:
    """The split with each sentence's corpus row id as its one feature (same layout as the
    embeddings, so draw_shots picks the same sentences)."""
    classes, rows = split_rows(corpus, scheme_of(corpus.name, "full"), split)
    per_class = [torch.tensor(r)[:, None] for r in rows]
    return ClassIndexedDataset.from_class_tensors(split, per_class, classes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--datasets", nargs="+", default=["banking77"])
    p.add_argument("--k", type=int, nargs="+", default=[5])
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--num-iterations", type=int, default=20, help="SetFit's pairs per example")
    p.add_argument("--max-steps", type=int, default=-1, help="cap on contrastive steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/text-setfit", help="SetFit's output folder")
    p.add_argument("--test-limit", type=int, default=None, help="score the first N test rows only")
    p.add_argument("--out", default="benchmarks/results/text-setfit-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    body = str(resolve_encoder("all-MiniLM-L6-v2").sources[0])
    results: dict = {
        "body": "all-MiniLM-L6-v2",
        "num_iterations": args.num_iterations,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "num_epochs": 1,
        "test_limit": args.test_limit,
        "datasets": {},
    }
    for name in args.datasets:
        corpus = read_dataset(name, Path(args.data_dir))
        train, test = row_split(corpus, "train"), row_split(corpus, "test")
        test_texts = [corpus.texts[int(r)] for r in test.images[:, 0]]
        test_labels = torch.repeat_interleave(torch.arange(test.num_classes), test.counts)
        if args.test_limit:  # a smoke check only: keeps an evenly spaced subset
            keep = torch.linspace(0, len(test_texts) - 1, args.test_limit).long()
            test_texts = [test_texts[i] for i in keep]
            test_labels = test_labels[keep]
        out = {"classes": test.num_classes, "test_sentences": len(test_texts)}
        for k in args.k:
            rows = []
            for seed in range(args.samples):
                picked, labels = draw_shots(train, k, seed)
                texts = [corpus.texts[int(r)] for r in picked[:, 0]]
                data = Dataset.from_dict({"text": texts, "label": labels.tolist()})
                model = SetFitModel.from_pretrained(body)
                targs = TrainingArguments(
                    batch_size=args.batch_size,
                    num_epochs=1,
                    num_iterations=args.num_iterations,
                    max_steps=args.max_steps,
                    seed=seed,
                    output_dir=str(Path(args.runs) / f"{name}-K{k}-seed{seed}"),
                    save_strategy="no",
                    report_to="none",
                    show_progress_bar=False,
                )
                trainer = Trainer(model=model, args=targs, train_dataset=data)
                start = time.perf_counter()
                trainer.train()
                train_seconds = time.perf_counter() - start
                start = time.perf_counter()
                pred = torch.as_tensor(model.predict(test_texts, batch_size=64))
                predict_seconds = time.perf_counter() - start
                acc = float((pred.long() == test_labels).float().mean())
                rows.append(
                    {
                        "seed": seed,
                        "accuracy": round(100 * acc, 2),
                        "train_seconds": round(train_seconds, 1),
                        "predict_seconds": round(predict_seconds, 1),
                    }
                )
                print(name, k, rows[-1], file=sys.stderr, flush=True)
            mean, ci = mean_ci95(torch.tensor([r["accuracy"] for r in rows]))
            out[f"K={k}"] = {"accuracy": round(mean, 2), "ci95": round(ci, 2), "draws": rows}
        results["datasets"][name] = out
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(write_result(args.out, command, results))


if __name__ == "__main__":
    main()
