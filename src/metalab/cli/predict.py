"""``metalab predict RUN``: adapt a trained learner to your own examples and classify queries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metalab.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="adapt a trained learner to your own examples and classify queries"
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument(
        "--support", required=True, help="folder of class folders: SUPPORT/<class>/<images>"
    )
    p.add_argument("--query", required=True, nargs="+", help="image files to classify")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from metalab.data.base import Preprocess
    from metalab.data.folder import load_image_folder
    from metalab.data.imaging import load_images
    from metalab.engine.build import load_learner, resolve_device
    from metalab.tasks.episodes import Episode, to_float

    device = resolve_device(args.device)
    learner, cfg, state = load_learner(args.run, device, args.checkpoint)
    if state.get("preprocess") is None:
        raise ConfigError(
            f"{state['path']} was trained on '{cfg.data.dataset}', which has no images; "
            f"predict classifies images with a run trained on an image dataset"
        )
    pre = Preprocess(**state["preprocess"])
    support = load_image_folder(Path(args.support), pre, name=f"support folder {args.support}")
    labels = torch.repeat_interleave(torch.arange(support.num_classes), support.counts)
    query = load_images([Path(q) for q in args.query], pre)
    episode = Episode(
        to_float(support.images)[None],
        labels[None],
        to_float(query)[None],
        torch.zeros(1, len(query), dtype=torch.long),
        support.num_classes,
    ).to(device)
    learner.eval()
    with torch.no_grad():
        probs = learner.predict(episode)[0].softmax(-1).cpu()
    rows = [
        {
            "query": q,
            "class": support.class_names[int(p.argmax())],
            "probability": round(float(p.max()), 4),
            "probabilities": {c: round(float(v), 4) for c, v in zip(support.class_names, p)},
        }
        for q, p in zip(args.query, probs)
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['query']}\t{r['class']}\t{r['probability']:.3f}")
    return 0
