"""Training logs: JSON lines (one object per logged step) and TensorBoard when it is installed.

On resume, ``metrics.jsonl`` is cut back to the checkpoint's step (the resumed run redoes the later
steps); a line that cannot be read — the torn last line of a process killed mid-write — is dropped.
A failed write is a one-line TrainingError naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from metalab.engine.rundir import atomic_write_text
from metalab.errors import TrainingError

log = logging.getLogger("metalab")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The readable lines of a metrics file: JSON objects with an integer ``step``."""
    rows = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if i < len(lines) - 1:  # a torn last line is expected after a crash; others are not
                log.warning("%s line %d is damaged and is dropped", path, i + 1)
            continue
        rows.append(row)
    return rows


class MetricsLog:
    """Appends ``{"step": s, ...}`` lines to ``metrics.jsonl``; on resume, drops lines past the
    checkpoint (and unreadable ones)."""

    def __init__(
        self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        try:
            if resume_step is None:
                self.path.write_text("")
            # a killed run may have logged steps that the resumed run will redo
            elif self.path.exists():
                kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        except OSError as e:
            raise TrainingError(f"could not write {self.path} ({e.strerror})") from None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:
                log.debug("tensorboard is not installed; writing metrics.jsonl only")

    def write(self, step: int, values: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        except OSError as e:
            raise TrainingError(
                f"could not append to {self.path} ({e.strerror}) at step {step}"
            ) from None
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
