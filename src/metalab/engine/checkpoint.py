"""Checkpoints: one file with everything needed to evaluate a run or resume it exactly.

Contents (all loadable with ``torch.load(weights_only=True)``): ``format``, ``metalab_version``,
``algorithm``, ``config`` (the resolved run config as plain data), ``input_shape``, ``step``,
``model``, ``optimizer``, ``scheduler``, ``rng`` (sampler generator state), ``best_val``,
``elapsed_s``. Written atomically: a temporary file in the same folder, then ``os.replace``, so a
killed process never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metalab.errors import CheckpointError

FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(
            f"{path} is not a readable metalab checkpoint ({type(e).__name__}); "
            f"use another checkpoint or retrain"
        ) from None
    if not isinstance(state, dict) or "algorithm" not in state or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a metalab checkpoint (format {FORMAT}); retrain with this version"
        )
    return state


def resolve_checkpoint(target: str | Path, which: str = "best") -> Path:
    """A run directory → its best.pt (or last.pt when there is no best, or `which` = last); a file →
    itself."""
    target = Path(target)
    if target.is_file():
        return target
    if not target.is_dir():
        raise CheckpointError(f"{target} is neither a run directory nor a checkpoint file")
    order = ["best.pt", "last.pt"] if which == "best" else ["last.pt"]
    for name in order:
        if (target / name).is_file():
            return target / name
    raise CheckpointError(
        f"no checkpoint ({' or '.join(order)}) in {target}; train with --out {target} first"
    )
