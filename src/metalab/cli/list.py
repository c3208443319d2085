"""``metalab list``: the registered algorithms, datasets and backbones, and the preset configs."""

from __future__ import annotations

import argparse
from pathlib import Path

PRESETS = Path(__file__).resolve().parents[3] / "configs"  # in a source checkout


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="algorithms, datasets, backbones and presets")
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    import metalab.algorithms  # noqa: F401  (each fills its registry)
    import metalab.models  # noqa: F401
    import metalab.tasks.sources  # noqa: F401
    from metalab.registry import ALGORITHMS, BACKBONES, DATASETS

    print("algorithms: " + ", ".join(ALGORITHMS.names()))
    print("datasets:   " + ", ".join(DATASETS.names()))
    print("backbones:  " + ", ".join(BACKBONES.names()))
    presets = (
        sorted(str(p.relative_to(PRESETS.parent)) for p in PRESETS.glob("**/*.yaml"))
        if PRESETS.is_dir()
        else []
    )
    print(
        "presets:\n" + "\n".join(f"  {p}" for p in presets)
        if presets
        else "presets:    (none found)"
    )
    return 0
