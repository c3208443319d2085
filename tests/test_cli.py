"""The command line end to end, and its one-line errors for bad input."""

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from metalab.cli import main

SMALL = {
    "algorithm": {"name": "protonet", "hidden": 16},
    "data": {"dataset": "omniglot"},
    "train": {
        "steps": 3,
        "ways": 5,
        "shots": 1,
        "queries": 2,
        "val_every": 3,
        "val_episodes": 5,
        "tensorboard": False,
    },
    "eval": {"episodes": 20, "queries": 3},
}


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "small.yaml").write_text(yaml.safe_dump(SMALL))
    assert (
        main(
            [
                "train",
                str(root / "small.yaml"),
                "--data-dir",
                str(data_dir),
                "--out",
                str(root / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    return root / "run"


def one_error_line(capsys, argv, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metalab: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_eval_json_is_complete_and_repeatable(run_dir, data_dir, capsys):
    argv = ["eval", str(run_dir), "--data-dir", str(data_dir), "--json", "--device", "cpu"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    for key in (
        "accuracy",
        "ci95",
        "episodes",
        "ways",
        "shots",
        "queries",
        "split",
        "algorithm",
        "dataset",
    ):
        assert key in first
    assert (
        first["episodes"] == 20
        and first["ways"] == 5
        and first["split"] == "test"
        and first["algorithm"] == "protonet"
    )
    assert main(argv) == 0
    assert (
        json.loads(capsys.readouterr().out) == first
    )  # evaluating one checkpoint twice: identical numbers
    assert (
        main(
            [
                "eval",
                str(run_dir),
                "--device",
                "cpu",
                "--ways",
                "20",
                "--shots",
                "5",
                "--episodes",
                "4",
            ]
        )
        == 0
    )
    assert "20-way 5-shot" in capsys.readouterr().out


def test_predict_on_own_folders(run_dir, data_dir, tmp_path, capsys):
    with zipfile.ZipFile(data_dir / "omniglot" / "images_evaluation.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png"))
        for char in ("character01", "character02"):
            files = [n for n in names if f"/Angelic/{char}/" in n]
            for i, n in enumerate(files[:3]):
                target = (
                    (tmp_path / "support" / char / f"{i}.png")
                    if i < 2
                    else (tmp_path / f"query-{char}.png")
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(n))
    queries = [str(tmp_path / "query-character01.png"), str(tmp_path / "query-character02.png")]
    assert (
        main(
            [
                "predict",
                str(run_dir),
                "--support",
                str(tmp_path / "support"),
                "--query",
                *queries,
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in rows] == queries
    assert all(set(r["probabilities"]) == {"character01", "character02"} for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)


def test_list_and_data_info(data_dir, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "protonet" in out and "configs/omniglot/protonet-5w1s.yaml" in out
    assert main(["data", "info", "omniglot", "--data-dir", str(data_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["splits"]["train"]["classes"] == 4112 and info["splits"]["test"]["characters"] == 423
    )


def test_bad_input_gives_one_line(run_dir, data_dir, tmp_path, capsys):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = str(tmp_path / "x")
    assert "images_background.zip" in one_error_line(
        capsys, ["train", str(cfg), "--data-dir", str(tmp_path / "nothing"), "--out", out]
    )
    assert "--ways 5000" in one_error_line(
        capsys, ["train", str(cfg), "--data-dir", str(data_dir), "--out", out, "--ways", "5000"]
    )
    assert "class '" in one_error_line(
        capsys,
        [
            "train",
            str(cfg),
            "--data-dir",
            str(data_dir),
            "--out",
            out,
            "--shots",
            "10",
            "--queries",
            "15",
        ],
    )
    assert "train.stpes" in one_error_line(
        capsys,
        ["train", str(cfg), "--data-dir", str(data_dir), "--out", out, "--set", "train.stpes=3"],
    )
    assert "choices" in one_error_line(
        capsys, ["train", str(cfg), "--out", out, "--set", "algorithm=nosuch"]
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "junk.pt" in one_error_line(capsys, ["eval", str(junk), "--data-dir", str(data_dir)])
    assert "no checkpoint" in one_error_line(
        capsys, ["eval", str(tmp_path), "--data-dir", str(data_dir)]
    )
    with pytest.raises(Exception):  # noqa: B017  (--debug re-raises whatever went wrong)
        main(["--debug", "eval", str(junk)])


def test_compare_and_challenge_commands(run_dir, data_dir, tmp_path, capsys):
    import shutil

    other = tmp_path / "protonet-copy"
    shutil.copytree(run_dir, other)
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(run_dir),
                str(other),
                "--out",
                str(out),
                "--data-dir",
                str(data_dir),
                "--ways",
                "5",
                "--shots",
                "1",
                "--episodes",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert {"compare.md", "compare.json", "compare.png"} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    # the run was trained on the Vinyals split, which holds evaluation alphabets: the challenge
    # refuses it
    assert "vinyals" in one_error_line(
        capsys, ["eval", str(run_dir), "--within-alphabet", "--data-dir", str(data_dir)]
    )


def test_module_entry_points_run_the_same_main():
    import subprocess
    import sys

    for module in ("metalab", "metalab.cli"):  # benchmarks/accuracy.py runs metalab.cli
        done = subprocess.run(
            [sys.executable, "-m", module, "list"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "algorithms:" in done.stdout and "datasets:" in done.stdout


def test_bench_times_any_config(capsys, tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs/sinusoid/maml-cpu.yaml"
    out = tmp_path / "bench.json"
    argv = ["bench", str(config), "--steps", "2", "--repeats", "1", "--device", "cpu"]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    row = json.loads(capsys.readouterr().out)["configs"][0]
    assert row["algorithm"] == "maml" and row["steps_per_s"] > 0
    assert json.loads(out.read_text())["results"]["configs"][0]["algorithm"] == "maml"


def test_sigterm_exits_143_with_last_pt_saved(tmp_path):
    """What timeout, Docker and SLURM send: the run stops at a step boundary, says so, exits 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = Path(__file__).resolve().parents[1] / "configs/sinusoid/maml-cpu.yaml"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "metalab", "train", str(config), "--out", str(out), "--quiet"]
    cmd += ["--steps", "1000000", "--set", "train.log_every=1", "--set", "train.tensorboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM at step" in err and "continue with --resume" in err
    assert (out / "last.pt").exists()


def test_train_with_the_registry_off(tmp_path, capsys):
    config = Path(__file__).resolve().parents[1] / "configs/sinusoid/maml-cpu.yaml"
    argv = ["train", str(config), "--out", str(tmp_path / "run"), "--steps", "2", "--quiet"]
    assert main([*argv, "--registry", "off"]) == 0
    assert "finished at step 2" in capsys.readouterr().err
