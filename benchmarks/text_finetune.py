"""Fine-tuned sentence encoder on K shots of every class, beside SetFit on the same draws.

    python benchmarks/text_finetune.py --data-dir ../shared/data/text [--datasets banking77]
        [--k 5 10] [--samples 5 [3]] [--steps 100] [--layers 2] [--setfit-steps 150]
        [--out benchmarks/results/text-finetune-cpu.json]
    python benchmarks/text_finetune.py --resummarize benchmarks/results/text-finetune-*.json

All classes, K shots (SetFit's setting, issue 15's second protocol): K sentences of every class are
drawn from the published train part — the draws of benchmarks/text_fewshot.py's allclasses part
for the same seed, so results pair draw by draw — and scored on the whole published test part.

metalab (``--methods``): the K-shot sentences are written as a ``label,text`` file and a learner is
trained on them with ``metalab.train`` (the public API), fine-tuning the top ``--layers``
transformer layers of all-MiniLM-L6-v2 (``data.text_input: tokens``, ``backbone:
transformer-topL``), Adam ``--lr``, ``--steps`` steps:

- ``protonet``: ``--ways``-way episodes of ⌊K/2⌋ support and K − ⌊K/2⌋ query sentences per class,
  cosine distance (the encoder's embeddings are L2-normalised); result keys without prefix.
- ``anil``: ANIL (Raghu et al. 2020) on the same episodes as ``protonet``, the head adapted in the
  inner loop from zero (Kao et al. 2022's zeroing trick: one step of α = ``--scale`` × ways, so
  the query logits are ``--scale``·q·(μ_c − μ̄), a ProtoNet-like rule meta-learned through the
  inner loop); the top layers are meta-learned in the outer loop. Besides the two heads below,
  ``anil_adapted_head`` is ANIL's own rule on all classes at once: its inner loop on the K-shot
  set from a zero head of one row per class, α scaled to the classes. Keys ``anil_*``.
- ``supcon``: SupCon on batches of ``--batch-size`` sentences, the two views of a sentence made
  different by dropout (SimCSE) — contrastive fine-tuning as SetFit does on pairs; keys
  ``supcon_*``.

The fine-tuned encoder then embeds the K-shot set and the test part, classified two ways: nearest
class mean (cosine, ProtoNet's rule) and a logistic-regression head (scikit-learn's defaults,
SetFit's head).

SetFit (``--setfit-steps`` > 0): the ``setfit`` package with the same MiniLM body on the same draw,
its contrastive phase capped at ``--setfit-steps`` steps of 16 pairs (SetFit's default would be
20 pairs per sentence), then its logistic-regression head. Training seconds are recorded for both.
With ``--setfit-match``, SetFit runs a second time on the draw with metalab's training time: its
steps are ``--setfit-steps`` scaled by metalab's training seconds over the capped run's (SetFit's
own schedule planned over them; keys ``setfit_matched_*``, with the steps it was given).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from metalab.data.text import read_dataset
from metalab.engine.evaluate import mean_ci95
from metalab.models.transformer import tokenize
from metalab.tools.provenance import write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_fewshot import draw_shots  # noqa: E402  (the same K-shot draws)
from text_setfit import row_split  # noqa: E402


def write_kshot(path: Path, texts: list[str], labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(zip(labels, texts))


@torch.no_grad()
def embed(encoder: torch.nn.Module, ids: torch.Tensor, batch: int = 128) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(ids[i : i + batch].float()) for i in range(0, len(ids), batch)])


def metalab_draw(args, method: str, run: Path, texts, labels, test_texts) -> dict:
    """Fine-tune with metalab's `method` on the draw; the heads on the fine-tuned embeddings."""
    import metalab
    from metalab.config import parse_config

    names = [f"c{int(y):03d}" for y in labels]  # class names sort as their indices
    write_kshot(run / "data" / "train.csv", texts, names)
    classes = int(labels.max()) + 1
    k = len(texts) // classes
    backbone = f"transformer-top{args.layers}"
    ways = min(args.ways, classes)
    if method in ("protonet", "anil"):  # episodes of the K-shot set
        episodes = {"ways": ways, "shots": k // 2, "queries": k - k // 2}
    if method == "protonet":
        algorithm = {"distance": "cosine", "cosine_scale": args.scale}
    elif method == "anil":  # the zeroing trick: one inner step from a zero head, α = scale · ways
        algorithm = {
            "adapt": "head",
            "zero_head": True,
            "inner_lr": args.scale * ways,
            "inner_steps": 1,
            "eval_inner_steps": 1,
            "parallel": "loop",
        }
    else:  # supcon: batches of sentences, two dropout views each
        algorithm = {"batch_size": args.batch_size, "classifier": "logistic"}
        episodes = {"ways": 5, "shots": 1, "queries": 1}
    cfg = parse_config(
        {
            "algorithm": {"name": method, "backbone": backbone} | algorithm,
            "data": {
                "dataset": "text",
                "data_dir": str(run / "data"),
                "encoder": args.encoder,
                "text_input": "tokens",
                "max_tokens": args.max_tokens,
                "val_split": None,
            },
            "train": episodes
            | {
                "steps": args.steps,
                "lr": args.lr,
                "lr_schedule": "constant",
                "checkpoint_every": args.steps,
                "tensorboard": False,
            },
            "eval": {"ways": episodes["ways"], "shots": 1, "queries": 1, "episodes": 1},
        },
        "text_finetune.py",
    )
    out = run / method
    shutil.rmtree(out, ignore_errors=True)  # this script's scratch run of the draw
    start = time.perf_counter()
    metalab.train(cfg, out, registry="off")
    train_seconds = time.perf_counter() - start
    learner, _, _ = metalab.load_learner(out, device="cpu", checkpoint="last")
    encoder = {"protonet": "encoder", "anil": "net.backbone"}.get(method, "backbone")
    encoder = learner.get_submodule(encoder)
    start = time.perf_counter()
    support = embed(encoder, tokenize(texts, args.encoder, args.max_tokens))
    test = embed(encoder, tokenize(test_texts, args.encoder, args.max_tokens))
    embed_seconds = time.perf_counter() - start
    got = {"train_seconds": train_seconds, "embed_seconds": embed_seconds}
    if method == "anil":
        got["adapted_head"] = adapted_head(learner, support, labels, test)
    return got | heads(support, labels, test)


def adapted_head(learner, support: torch.Tensor, labels: torch.Tensor, test: torch.Tensor):
    """ANIL's own rule on every class at once: its inner loop (``eval_inner_steps`` SGD steps on
    the cross-entropy of the K-shot set's features) from a zero head of one row per class, with
    α scaled from the training ways to the classes — after one step the logits are
    (α/N)·q·(μ_c − μ̄) (Kao et al. 2022, §3.3), the same scale as in training."""
    from metalab import functional as fn

    classes = int(labels.max()) + 1
    options = learner.options
    head = torch.nn.Linear(support.shape[1], classes)
    zero = {k: torch.zeros_like(v) for k, v in fn.parameters(head).items()}
    alpha = options.inner_lr * classes / learner.ways
    with torch.enable_grad():
        fast = fn.sgd(
            lambda p: F.cross_entropy(fn.call(head, p, support), labels),
            zero,
            alpha,
            options.eval_inner_steps,
            first_order=True,
        )
    return fn.call(head, fast, test).argmax(-1)


def heads(support: torch.Tensor, labels: torch.Tensor, test: torch.Tensor) -> dict:
    """Predicted test classes: nearest class mean by cosine, and logistic regression."""
    from sklearn.linear_model import LogisticRegression

    classes = int(labels.max()) + 1
    means = torch.zeros(classes, support.shape[1]).index_add_(0, labels, support)
    near = (F.normalize(test, dim=-1) @ F.normalize(means, dim=-1).T).argmax(-1)
    clf = LogisticRegression(max_iter=1000).fit(support.numpy(), labels.numpy())
    return {"nearest_prototype": near, "logistic_regression": torch.from_numpy(clf.predict(test))}


def setfit_draw(args, run: Path, texts, labels, test_texts, seed: int, steps: int) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from metalab.models.transformer import model_folder

    data = Dataset.from_dict({"text": texts, "label": labels.tolist()})
    model = SetFitModel.from_pretrained(str(model_folder(args.encoder)))
    targs = TrainingArguments(
        batch_size=16,
        num_epochs=1,
        num_iterations=20,
        max_steps=steps,
        seed=seed,
        output_dir=str(run / "setfit"),
        save_strategy="no",
        report_to="none",
        show_progress_bar=False,
    )
    start = time.perf_counter()
    Trainer(model=model, args=targs, train_dataset=data).train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = torch.as_tensor(model.predict(test_texts, batch_size=64)).long()
    return {
        "train_seconds": train_seconds,
        "predict_seconds": time.perf_counter() - start,
        "setfit": pred,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="the text data folder (../shared/data/text)")
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--datasets", nargs="+", default=["banking77", "clinc150"])
    p.add_argument("--k", type=int, nargs="+", default=[5, 10])
    p.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[5],
        help="draws (seeds 0..n-1): one, or one per K",
    )
    p.add_argument("--first-seed", type=int, default=0, help="draws are seeds first.. first+n-1")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["protonet"],
        choices=["protonet", "supcon", "anil"],
        help="metalab's fine-tuning methods on each draw",
    )
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64, help="supcon: sentences per step")
    p.add_argument("--layers", type=int, default=2, help="top transformer layers fine-tuned")
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--scale", type=float, default=20.0, help="cosine_scale")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--setfit-steps", type=int, default=0, help="0: no SetFit")
    p.add_argument(
        "--setfit-match",
        action="store_true",
        help="also SetFit with metalab's training time (needs protonet and --setfit-steps)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/text-finetune")
    p.add_argument("--out", default="benchmarks/results/text-finetune-cpu.json")
    p.add_argument(
        "--resummarize",
        nargs="+",
        type=Path,
        metavar="RESULT",
        help="only recompute the summaries of these finished results files from their draws",
    )
    args = p.parse_args()
    if args.resummarize:
        for path in args.resummarize:
            resummarize(path)
        return
    if not args.data_dir:
        p.error("--data-dir is required (the text data folder, e.g. ../shared/data/text)")
    if args.setfit_match and (args.setfit_steps <= 0 or "protonet" not in args.methods):
        p.error("--setfit-match scales the capped SetFit run: give --setfit-steps and protonet")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {
        "encoder": args.encoder,
        "metalab": {
            "methods": args.methods,
            "supcon_batch_size": args.batch_size,
            "backbone": f"transformer-top{args.layers}",
            "steps": args.steps,
            "ways": args.ways,
            "lr": args.lr,
            "cosine_scale": args.scale,
        },
        "setfit": {
            "max_steps": args.setfit_steps,
            "matched_time": args.setfit_match,
            "batch_size": 16,
            "num_iterations": 20,
        },
        "datasets": {},
    }
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    samples = dict(
        zip(args.k, args.samples * len(args.k) if len(args.samples) == 1 else args.samples)
    )
    for name in args.datasets:
        corpus = read_dataset(name, Path(args.data_dir))
        train, test = row_split(corpus, "train"), row_split(corpus, "test")
        test_texts = [corpus.texts[int(r)] for r in test.images[:, 0]]
        test_labels = torch.repeat_interleave(torch.arange(test.num_classes), test.counts)
        out: dict = {"classes": test.num_classes, "test_sentences": len(test_texts)}
        results["datasets"][name] = out
        for k in args.k:
            draws: list[dict] = []
            out[f"K={k}"] = {"summary": {}, "draws": draws}
            for seed in range(args.first_seed, args.first_seed + samples[k]):
                picked, labels = draw_shots(train, k, seed)
                texts = [corpus.texts[int(r)] for r in picked[:, 0]]
                run = Path(args.runs) / f"{name}-K{k}-seed{seed}"
                got = {}
                for method in args.methods:
                    done = metalab_draw(args, method, run, texts, labels, test_texts)
                    prefix = "" if method == "protonet" else f"{method}_"
                    got |= {prefix + key: value for key, value in done.items()}
                if args.setfit_steps > 0:
                    steps = args.setfit_steps
                    done = setfit_draw(args, run, texts, labels, test_texts, seed, steps)
                    got |= {f"setfit_{key}": value for key, value in done.items()}
                if args.setfit_match:  # SetFit given metalab's training time on this draw
                    ratio = got["train_seconds"] / got["setfit_train_seconds"]
                    steps = max(args.setfit_steps, round(args.setfit_steps * ratio))
                    done = setfit_draw(args, run, texts, labels, test_texts, seed, steps)
                    got |= {f"setfit_matched_{key}": value for key, value in done.items()}
                    got["setfit_matched_steps"] = steps
                row: dict = {"seed": seed}
                for key, value in got.items():
                    if isinstance(value, torch.Tensor):
                        row[key] = round(100 * float((value == test_labels).float().mean()), 2)
                    else:
                        row[key] = round(value, 1)
                draws.append(row)
                print(name, k, row, file=sys.stderr, flush=True)
                out[f"K={k}"]["summary"] = summarize(draws)
                # after every draw: a stopped run keeps the draws it finished
                results["complete"] = False
                write_result(args.out, command, results)
    results["complete"] = True
    print(write_result(args.out, command, results))


def summarize(draws: list[dict]) -> dict:
    """Mean and 1.96·s/√n over the draws of every accuracy column; the mean of every seconds and
    steps column; and, paired draw by draw, each metalab column minus each SetFit column."""
    summary: dict = {}
    columns = [c for c in draws[0] if c != "seed"]
    accuracy = [c for c in columns if not c.endswith(("seconds", "steps"))]
    for method in accuracy:
        mean, ci = mean_ci95(torch.tensor([d[method] for d in draws]))
        summary[method] = {"accuracy": round(mean, 2), "ci95": round(ci, 2)}
    summary["mean"] = {
        c: round(sum(d[c] for d in draws) / len(draws), 1) for c in columns if c not in accuracy
    }
    setfit = [c for c in accuracy if c.startswith("setfit")]
    paired = {}
    for ours in (c for c in accuracy if c not in setfit):
        for theirs in setfit:
            gap = torch.tensor([d[ours] - d[theirs] for d in draws])
            mean, ci = mean_ci95(gap)
            paired[f"{ours} - {theirs}"] = {"points": round(mean, 2), "ci95": round(ci, 2)}
    if paired:
        summary["paired_difference"] = paired
    summary["draws"] = len(draws)
    return summary


def resummarize(path: Path) -> None:
    """Recompute the summaries of a finished results file from its draws, in place (the file's
    environment stays that of the run that measured the draws)."""
    result = json.loads(path.read_text())
    for dataset in result["results"]["datasets"].values():
        for key, part in dataset.items():
            if key.startswith("K=") and part["draws"]:
                part["summary"] = summarize(part["draws"])
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
