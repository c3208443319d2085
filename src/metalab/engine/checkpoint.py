"""Checkpoints: one file with everything needed to evaluate a run or resume it exactly.

Contents (all loadable with ``torch.load(weights_only=True)``): ``format``, ``metalab_version``,
``algorithm``, ``config`` (the resolved run config as plain data), ``input_shape``,
``preprocess``, ``step``, ``model``, ``optimizer``, ``scheduler``, ``rng`` (sampler generator
state), ``best_val``, ``elapsed_s``, ``log_window`` (the metrics of the steps since the last
metrics line). Written atomically: a temporary file in the same folder, flushed to disk, then
``os.replace``, so a killed process or a full disk never leaves a half-written checkpoint behind —
the previous file stays in place. A failed write is a one-line CheckpointError.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metalab.errors import CheckpointError

FORMAT = 1
EVAL_KEYS = ("algorithm", "config", "input_shape", "model", "step")  # to evaluate or predict
RESUME_KEYS = (*EVAL_KEYS, "optimizer", "scheduler", "rng", "best_val", "elapsed_s")  # to resume
_TYPES = {
    "algorithm": str,
    "config": dict,
    "input_shape": (list, tuple),
    "model": dict,
    "step": int,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "elapsed_s": (int, float),
}


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{e.strerror or os.strerror(e.errno)} [{errno.errorcode.get(e.errno, e.errno)}]"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically; on failure the previous file at `path` is untouched, the
    temporary file removed, and a one-line CheckpointError says why."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    # torch's zip writer reports a failed write as RuntimeError
    except (OSError, RuntimeError) as e:
        kept = f"the previous {path.name} is left in place" if path.exists() else "none is written"
        raise CheckpointError(f"could not write {path} ({_reason(e)}); {kept}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = EVAL_KEYS
) -> dict[str, Any]:
    """A checkpoint's content, checked: a metalab checkpoint of this format holding the `required`
    keys with the right types (:data:`EVAL_KEYS` to evaluate, :data:`RESUME_KEYS` to resume)."""
    path = Path(path)
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
    missing = [k for k in required if k not in state]
    wrong = [
        k
        for k in required
        if k in state
        and k in _TYPES
        and (not isinstance(state[k], _TYPES[k]) or isinstance(state[k], bool))
    ]
    if missing or wrong:
        what = ", ".join([f"missing {k}" for k in missing] + [f"damaged {k}" for k in wrong])
        raise CheckpointError(
            f"{path} is an incomplete metalab checkpoint ({what}); use the run's other "
            f"checkpoint (best.pt or last.pt) or retrain"
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
