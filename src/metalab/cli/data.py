"""``metalab data info DATASET``: what a registered dataset with a listing holds, per split."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = dsub.add_parser(
        "info", help="what a dataset holds per split (classes, images, and its own counts)"
    )
    q.add_argument("dataset", help="a registered dataset with a listing (metalab list)")
    q.add_argument("--data-dir", required=True)
    q.add_argument("--scheme", help="the dataset's split scheme, where it has several")
    q.add_argument(
        "--download", action="store_true", help="fetch the official files first when missing"
    )
    q.add_argument("--json", action="store_true")
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.config import DataConfig
    from metalab.tasks.sources import dataset_info

    scheme = {"scheme": args.scheme} if args.scheme else {}  # else the config's default
    data = DataConfig(
        dataset=args.dataset, data_dir=args.data_dir, download=args.download, **scheme
    )
    info = dataset_info(data)
    if args.json:
        print(json.dumps(info))
        return 0
    print(args.dataset + (f" ({info['scheme']} split)" if "scheme" in info else ""))
    for split, row in info["splits"].items():
        print(f"  {split:9s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    return 0
