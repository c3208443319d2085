"""metalab bench: both implementations and the batching-alone measurement run and report sane
numbers."""

import subprocess
import sys
from pathlib import Path

import torch

from metalab.tools.bench import Setting, run_bench


def test_run_bench_reports_each_setting_with_ratio_and_batching_gain():
    settings = (Setting("tiny", ways=2, queries=1, meta_batch=2, inner_steps=1, inner_lr=0.4),)
    result = run_bench(torch.device("cpu"), repeats=2, settings=settings)
    (row,) = result["settings"]
    assert row["name"] == "tiny" and row["meta_batch"] == 2
    for key in ("vmap_tasks_per_s", "loop_tasks_per_s", "ratio", "batching_gain"):
        assert row[key] > 0, key
    assert abs(row["ratio"] - row["vmap_tasks_per_s"] / row["loop_tasks_per_s"]) < 1e-12
    assert len(row["vmap_seconds"]) == len(row["loop_seconds"]) == 2  # every timed repeat is kept
    assert (
        abs(row["vmap_tasks_per_s"] - 2 / min(row["vmap_seconds"])) < 1e-3 * row["vmap_tasks_per_s"]
    )
    assert set(row["plain_seconds"]) == {"per_task", "batched"}
    assert row["vmap_peak_bytes"] is None  # no allocator statistics on the CPU
    assert result["cpu_allocator"]


def test_device_checks_dry_run_lists_the_bench_and_both_maml_presets(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/device_checks.py",
            "--data-dir",
            "data",
            "--device",
            "cpu",
            "--results",
            str(tmp_path),
            "--dry-run",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("$ ")]
    assert len(lines) == 3
    assert "bench --device cpu" in lines[0] and f"{tmp_path}/bench-maml-cpu.json" in lines[0]
    assert "maml-5w1s.yaml" in lines[1] and "maml-20w1s.yaml" in lines[2]
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
