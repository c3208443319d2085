"""Few-shot text classification on frozen sentence embeddings: held-out classes and all classes.

    python benchmarks/text_fewshot.py --data-dir ../shared/data/text [--encoder all-MiniLM-L6-v2]
        [--parts heldout allclasses] [--datasets ...] [--episodes 1000] [--samples 5]
        [--out benchmarks/results/text-fewshot-cpu.json]

heldout: 5-way 1-shot and 5-shot on the held-out classes of each dataset's test split (the class
splits of metalab.data.text, scheme default), 15 queries per class, the same fixed episodes (seed 0)
for every method: nearest prototype on the frozen embeddings (ProtoNet's rule, squared Euclidean,
nothing trained) and ProtoNet meta-trained on the train split with the preset
configs/text/protonet-<dataset>.yaml (a 2-layer MLP on the embeddings; run in runs/text-bench/, the
best checkpoint by validation accuracy, or the last without a validation split). Mean accuracy and
the 95% interval 1.96·s/√n over episodes.

allclasses: every class at once (Banking77: 77, CLINC150: 150 in-scope) with K = 5 and 10 examples
per class drawn from the published train part (--samples draws, seeds 0, 1, ...), scored on the
whole published test part: logistic regression on the embeddings (scikit-learn's defaults, as
SetFit's head) and nearest prototype (squared Euclidean to the class means; and by cosine, the
rule benchmarks/text_finetune.py applies to the fine-tuned encoder's embeddings). Mean accuracy and
1.96·s/√n over the draws.

oos (CLINC150 only, not run by default): the same K-shot draws, with out-of-scope rejection by a
threshold on the best class score (cosine to the nearest prototype, or the largest logistic
regression probability) chosen on the published val part; 151-way accuracy, in-scope accuracy,
out-of-scope recall and precision on the test part (4500 + 1000 sentences).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from metalab.algorithms.metric.protonet import prototypes, squared_euclidean
from metalab.config import load_config
from metalab.data.base import ClassIndexedDataset
from metalab.data.text import read_dataset, text_split
from metalab.engine.evaluate import mean_ci95
from metalab.tasks.episodes import FixedEpisodes
from metalab.tools.provenance import write_result

HELDOUT = ("clinc150", "banking77", "hwu64", "fewrel")
ALLCLASSES = ("banking77", "clinc150")


def nearest_prototype_episodes(episodes: FixedEpisodes) -> torch.Tensor:
    """Per-episode accuracy of the nearest class mean (squared Euclidean) on raw embeddings."""
    scores = []
    for ep in episodes.batches(100):
        protos = prototypes(ep.support_x, ep.support_y, ep.ways)
        logits = -squared_euclidean(ep.query_x, protos)
        scores.append((logits.argmax(-1) == ep.query_y).float().mean(-1))
    return torch.cat(scores)


def summary(per: torch.Tensor) -> dict:
    mean, ci = mean_ci95(per)
    return {"accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2), "n": per.numel()}


def heldout(args, name: str) -> dict:
    from metalab.engine.build import load_learner, resolve_device
    from metalab.engine.evaluate import evaluate
    from metalab.engine.trainer import train

    corpus = read_dataset(name, Path(args.data_dir))
    test = text_split(corpus, "default", "test", args.encoder)
    out = {"test_classes": test.num_classes, "test_sentences": int(test.counts.sum())}
    sets = {k: FixedEpisodes(test, 5, k, args.queries, args.episodes, seed=0) for k in args.shots}
    for k, episodes in sets.items():
        out[f"nearest_prototype_5w{k}s"] = summary(nearest_prototype_episodes(episodes))
        print(name, k, "nearest prototype", out[f"nearest_prototype_5w{k}s"], file=sys.stderr)
    if args.no_train:
        return out
    import metalab.algorithms  # noqa: F401  (fills the registry for the config)

    preset = Path("configs/text") / f"protonet-{name}.yaml"
    cfg = load_config(preset, [f"data.data_dir={args.data_dir}", f"data.encoder={args.encoder}"])
    if args.steps:
        cfg.train.steps = args.steps
    cfg.train.tensorboard = False
    run = Path(args.runs) / f"protonet-{name}"
    start = time.perf_counter()
    if run.exists():
        raise SystemExit(f"{run} exists: remove it or pass another --runs folder")
    train(cfg, run)
    seconds = time.perf_counter() - start
    which = "best" if (run / "best.pt").exists() else "last"
    learner, _, state = load_learner(run, resolve_device("cpu"), which)
    out["protonet_training"] = {
        "preset": str(preset),
        "steps": cfg.train.steps,
        "train": f"{cfg.train.ways}-way {cfg.train.shots}-shot {cfg.train.queries} queries",
        "checkpoint": which,
        "checkpoint_step": state.get("step"),
        "seconds": round(seconds, 1),
        "run_dir": str(run),
    }
    for k, episodes in sets.items():
        result = evaluate(learner, episodes, batch_size=50)
        out[f"protonet_5w{k}s"] = summary(result.per_episode)
        print(name, k, "protonet", out[f"protonet_5w{k}s"], file=sys.stderr)
    return out


def draw_shots(split: ClassIndexedDataset, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K rows of every class (without replacement) and their labels, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for c in range(split.num_classes):
        pick = torch.randperm(int(split.counts[c]), generator=g)[:k] + split.offsets[c]
        rows.append(pick)
        labels.append(torch.full((k,), c))
    return split.images[torch.cat(rows)], torch.cat(labels)


def labels_of(split: ClassIndexedDataset) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(split.num_classes), split.counts)


def allclasses(args, name: str) -> dict:
    from sklearn.linear_model import LogisticRegression

    corpus = read_dataset(name, Path(args.data_dir))
    train = text_split(corpus, "full", "train", args.encoder)
    test = text_split(corpus, "full", "test", args.encoder)
    assert train.class_names == test.class_names
    x_test, y_test = test.images, labels_of(test)
    out = {"classes": test.num_classes, "test_sentences": len(y_test)}
    for k in args.k:
        acc = {"logistic_regression": [], "nearest_prototype": [], "nearest_prototype_cosine": []}
        fit_seconds = []
        for seed in range(args.samples):
            x, y = draw_shots(train, k, seed)
            start = time.perf_counter()
            clf = LogisticRegression(max_iter=1000).fit(x.numpy(), y.numpy())
            fit_seconds.append(time.perf_counter() - start)
            pred = torch.from_numpy(clf.predict(x_test.numpy()))
            acc["logistic_regression"].append(float((pred == y_test).float().mean()))
            protos = prototypes(x[None], y[None], train.num_classes)
            near = (-squared_euclidean(x_test[None], protos))[0].argmax(-1)
            acc["nearest_prototype"].append(float((near == y_test).float().mean()))
            cos = (F.normalize(x_test, dim=-1) @ F.normalize(protos[0], dim=-1).T).argmax(-1)
            acc["nearest_prototype_cosine"].append(float((cos == y_test).float().mean()))
        row = {}
        for method, values in acc.items():
            row[method] = summary(torch.tensor(values)) | {
                "per_sample": [round(100 * v, 2) for v in values]
            }
        row["logistic_regression"]["fit_seconds_mean"] = round(
            sum(fit_seconds) / len(fit_seconds), 2
        )
        out[f"K={k}"] = row
        print(name, k, row, file=sys.stderr)
    return out


def out_of_scope(args, name: str) -> dict:
    """CLINC150's out-of-scope sentences: 150 in-scope classes from K shots each, plus a rejection
    threshold on the best score chosen on the published val part (20 per intent + 100 out-of-scope)
    to maximise the 151-way accuracy there; scored on the test part (4500 in-scope + 1000 oos)."""
    from sklearn.linear_model import LogisticRegression

    from metalab.data.text import embed_corpus

    corpus = read_dataset(name, Path(args.data_dir))
    vectors = embed_corpus(corpus, args.encoder)
    train = text_split(corpus, "full", "train", args.encoder)
    index = {c: i for i, c in enumerate(train.class_names)}
    parts = {}
    for part in ("val", "test"):
        rows = [r for r, p in enumerate(corpus.parts) if p in (part, f"oos_{part}")]
        y = torch.tensor([index.get(corpus.labels[r], -1) for r in rows])  # -1: out of scope
        parts[part] = (vectors[torch.tensor(rows)], y)
    out = {
        "test_in_scope": int((parts["test"][1] >= 0).sum()),
        "test_oos": int((parts["test"][1] < 0).sum()),
    }
    for k in args.k:
        rows = {"nearest_prototype_cosine": [], "logistic_regression": []}
        for seed in range(args.samples):
            x, y = draw_shots(train, k, seed)
            protos = torch.nn.functional.normalize(
                prototypes(x[None], y[None], train.num_classes)[0], dim=-1
            )
            clf = LogisticRegression(max_iter=1000).fit(x.numpy(), y.numpy())
            scorers = {
                "nearest_prototype_cosine": lambda v: (v @ protos.T).max(-1),
                "logistic_regression": lambda v: torch.from_numpy(clf.predict_proba(v.numpy())).max(
                    -1
                ),
            }
            for method, score in scorers.items():
                best, pred = score(parts["val"][0])
                yv = parts["val"][1]
                candidates = torch.unique(best)
                accs = torch.stack(
                    [torch.where(best >= t, pred, -1).eq(yv).float().mean() for t in candidates]
                )
                threshold = candidates[int(accs.argmax())]
                best, pred = score(parts["test"][0])
                yt = parts["test"][1]
                final = torch.where(best >= threshold, pred, -1)
                inscope = yt >= 0
                rows[method].append(
                    {
                        "threshold": round(float(threshold), 4),
                        "accuracy_151": round(100 * float(final.eq(yt).float().mean()), 2),
                        "in_scope_accuracy": round(
                            100 * float(final[inscope].eq(yt[inscope]).float().mean()), 2
                        ),
                        "oos_recall": round(100 * float((final[~inscope] < 0).float().mean()), 2),
                        "oos_precision": round(100 * float((yt[final < 0] < 0).float().mean()), 2),
                    }
                )
        row = {}
        for method, draws in rows.items():
            row[method] = {
                key: summary(torch.tensor([d[key] for d in draws]) / 100)
                for key in ("accuracy_151", "in_scope_accuracy", "oos_recall", "oos_precision")
            } | {"draws": draws}
        out[f"K={k}"] = row
        print(
            name,
            k,
            "oos",
            {m: {q: v["accuracy"] for q, v in r.items() if q != "draws"} for m, r in row.items()},
            file=sys.stderr,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--parts", nargs="+", default=["heldout", "allclasses"])
    p.add_argument("--datasets", nargs="+", default=None, help="default: all of each part")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--k", type=int, nargs="+", default=[5, 10])
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="override the presets' train.steps")
    p.add_argument("--no-train", action="store_true", help="heldout: nearest prototype only")
    p.add_argument("--runs", default="runs/text-bench")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/text-fewshot-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"encoder": args.encoder}
    for part, names, fn in (
        ("heldout", HELDOUT, heldout),
        ("allclasses", ALLCLASSES, allclasses),
        ("oos", ("clinc150",), out_of_scope),
    ):
        if part in args.parts:
            chosen = [n for n in names if args.datasets is None or n in args.datasets]
            results[part] = {n: fn(args, n) for n in chosen}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(write_result(args.out, command, results))


if __name__ == "__main__":
    main()
