"""Where a measured number came from: commit, date, hardware and software, recorded beside every
result."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import metalab
from metalab.tools.allocator import allocator_setting


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Commit (and whether the tree had uncommitted changes), UTC date, CPU/GPU, core count,
    versions."""
    commit = _git("rev-parse", "HEAD")
    # uncommitted changes to anything but the results themselves (a run that follows another sees
    # its JSON); without git (a copied working tree, e.g. on a borrowed GPU machine) the commit
    # comes from $METALAB_COMMIT if set, and whether the tree had changes is unknown (None)
    status = _git(
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":/",
        ":(top,exclude)benchmarks/results",
    )
    env = {
        "commit": commit or os.environ.get("METALAB_COMMIT"),
        "dirty": bool(status) if commit else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine while measuring
        "cpu_allocator": allocator_setting(),
        "gpu": torch.cuda.get_device_name(device) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "metalab": metalab.__version__,
    }
    if device is not None:
        env["device"] = str(device)
    return env


def write_result(
    path: str | Path, command: str, results: dict[str, Any], device: torch.device | None = None
) -> Path:
    """Write ``{"command", "environment", "results"}`` as JSON (the command reruns the
    measurement)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"command": command, "environment": environment(device), "results": results}, indent=2
        )
        + "\n"
    )
    return path
