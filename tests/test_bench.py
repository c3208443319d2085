"""metalab bench: both implementations and the batching-alone measurement run and report sane numbers."""

import torch

from metalab.bench import Setting, run_bench


def test_run_bench_reports_each_setting_with_ratio_and_batching_gain():
    settings = (Setting("tiny", ways=2, queries=1, meta_batch=2, inner_steps=1, inner_lr=0.4),)
    result = run_bench(torch.device("cpu"), repeats=1, settings=settings)
    (row,) = result["settings"]
    assert row["name"] == "tiny" and row["meta_batch"] == 2
    for key in ("vmap_tasks_per_s", "loop_tasks_per_s", "ratio", "batching_gain"):
        assert row[key] > 0, key
    assert abs(row["ratio"] - row["vmap_tasks_per_s"] / row["loop_tasks_per_s"]) < 1e-12
    assert row["vmap_peak_bytes"] is None  # no allocator statistics on the CPU
    assert result["cpu_allocator"]
