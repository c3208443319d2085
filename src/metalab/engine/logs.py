"""Training logs: JSON lines (one object per logged step) and TensorBoard when it is installed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("metalab")


class MetricsLog:
    """Appends ``{"step": s, ...}`` lines to ``metrics.jsonl``; on resume, drops lines past the
    checkpoint."""

    def __init__(
        self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        # a killed run may have logged steps that the resumed run will redo
        elif self.path.exists():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:
                log.debug("tensorboard is not installed; writing metrics.jsonl only")

    def write(self, step: int, values: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
