"""``metalab predict RUN``: adapt a trained learner to your own examples and classify queries
(images, or sentences for a run trained on text)."""

from __future__ import annotations

import argparse

from metalab.cli.flags import finite_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="adapt a trained learner to your own examples and classify queries"
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument(
        "--support",
        required=True,
        help="image run: a folder of class folders, SUPPORT/<class>/<images>; text run: a CSV "
        "file with header label,text or a JSONL file of {label, text}",
    )
    p.add_argument(
        "--query",
        required=True,
        nargs="+",
        help="image files to classify; for a text run, sentences (quote each one)",
    )
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.api import predict

    rows = predict(
        args.run, args.support, args.query, device=args.device, checkpoint=args.checkpoint
    )
    line = finite_json(rows, f"the prediction of {args.run}")  # NaN probabilities: refused
    if args.json:
        print(line)
    else:
        for r in rows:
            print(f"{r['query']}\t{r['class']}\t{r['probability']:.3f}")
    return 0
