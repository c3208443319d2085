"""Flags that several commands share."""

from __future__ import annotations

import argparse
import sys


def add_task_flags(p: argparse.ArgumentParser) -> None:
    """--ways, --shots, --queries: the shape of a task."""
    p.add_argument("--ways", type=int, help="N classes per task")
    p.add_argument("--shots", type=int, help="K support examples per class")
    p.add_argument("--queries", type=int, help="Q query examples per class")


def add_dataset_flag(p: argparse.ArgumentParser) -> None:
    """--dataset: evaluate on another dataset than the run's own (cross-domain)."""
    p.add_argument(
        "--dataset",
        help="evaluate on another registered dataset (metalab list), e.g. folder with --data-dir "
        "DIR holding test/<class>/<images>; images are decoded as the run's were",
    )


def command_line() -> str:
    """This process's command line as a user would type it (recorded in result files)."""
    return "metalab " + " ".join(sys.argv[1:])
