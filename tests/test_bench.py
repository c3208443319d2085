"""metalab bench: both implementations and the batching-alone measurement run and report sane
numbers."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from fixtures.synthetic import register_synthetic
from metalab.config import parse_config
from metalab.tools.bench import Setting, bench_algorithm, maml_learners, run_bench


def test_run_bench_reports_each_setting_with_ratio_and_batching_gain():
    settings = (Setting("tiny", ways=2, queries=1, meta_batch=2, inner_steps=1, inner_lr=0.4),)
    result = run_bench(torch.device("cpu"), repeats=2, settings=settings)
    (row,) = result["settings"]
    assert row["name"] == "tiny" and row["meta_batch"] == 2
    for key in ("vmap_tasks_per_s", "loop_tasks_per_s", "ratio", "batching_gain"):
        assert row[key] > 0, key
    assert abs(row["ratio"] - row["vmap_tasks_per_s"] / row["loop_tasks_per_s"]) < 1e-12
    assert len(row["vmap_seconds"]) == len(row["loop_seconds"]) == 2  # every timed repeat is kept
    # the best repeat's time, as recorded (seconds are rounded to 0.1 ms)
    assert round(2 / row["vmap_tasks_per_s"], 4) == min(row["vmap_seconds"])
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


def test_bench_algorithm_times_training_steps_of_any_registered_algorithm():
    cfg = parse_config(
        {
            "algorithm": {"name": "protonet", "hidden": 8},
            "data": {"dataset": register_synthetic()},
            "train": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
        }
    )
    result = bench_algorithm(cfg, torch.device("cpu"), repeats=2, steps=2)
    assert result["algorithm"] == "protonet" and result["steps"] == 2
    assert len(result["seconds"]) == 2 and result["peak_bytes"] is None
    assert round(2 / result["steps_per_s"], 4) == min(result["seconds"])  # rounded to 0.1 ms


def test_vmap_and_loop_learners_differ_only_in_their_option():
    learners = maml_learners(Setting("tiny", 2, 1, 2, 1, 0.4), torch.device("cpu"))
    assert {k: v.options.parallel for k, v in learners.items()} == {"vmap": "vmap", "loop": "loop"}
    vmap, loop = learners["vmap"].state_dict(), learners["loop"].state_dict()
    assert all(torch.equal(vmap[k], loop[k]) for k in vmap)


def test_text_finetune_resummarize_pairs_each_metalab_column_with_each_setfit_column(tmp_path):
    root = Path(__file__).resolve().parents[1]
    draws = [
        {"seed": s, "train_seconds": 10.0 + s, "nearest_prototype": 80.0 + s, "setfit_setfit": 78.0}
        for s in range(3)
    ]
    draws[2]["setfit_setfit"] = 79.0
    path = tmp_path / "r.json"
    result = {"command": "x", "environment": {"commit": "abc"}}
    result["results"] = {"datasets": {"d": {"classes": 2, "K=5": {"summary": {}, "draws": draws}}}}
    path.write_text(json.dumps(result))
    subprocess.run(
        [sys.executable, "benchmarks/text_finetune.py", "--resummarize", str(path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    again = json.loads(path.read_text())
    assert again["environment"] == {"commit": "abc"}  # the measuring run's record is kept
    summary = again["results"]["datasets"]["d"]["K=5"]["summary"]
    assert summary["nearest_prototype"]["accuracy"] == 81.0
    assert summary["mean"] == {"train_seconds": 11.0}
    gap = summary["paired_difference"]["nearest_prototype - setfit_setfit"]
    assert gap["points"] == round((2 + 3 + 3) / 3, 2) and gap["ci95"] > 0
    assert summary["draws"] == 3
