"""torchrun: 2 CPU processes (gloo) train and evaluate exactly as one process does.

The global task stream is drawn from the run seed, the same on every rank; rank r takes groups r,
r+W, … of each batch (tasks/batching.py) and one all-reduce sums the groups' gradients; BatchNorm
statistics are averaged over the groups (engine/step.py). So 2 ranks with a meta-batch B equal one
process with the same B split into 2 chunks (``train.task_chunk = B/2``) bit for bit (float32,
tolerance 0: the same arithmetic, and a sum of two terms does not depend on their order). For
second-order MAML, whose tasks share no statistics, 2 ranks also equal one process without chunks,
up to the order of the float32 sum over tasks (SGD, rtol 1e-5 / atol 1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures.glyphs import glyph_dataset
from metalab.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ALGORITHMS = {
    # name: (algorithm options, train options) — tiny, 3 steps
    "protonet": ({"hidden": 8}, {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 4}),
    "maml": (
        {"inner_steps": 1, "inner_lr": 0.4, "parallel": "loop", "hidden": 8},
        {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 4},
    ),
    "reptile": (
        {"inner_steps": 2, "inner_batch": 3, "hidden": 8, "parallel": "loop"},
        {"ways": 3, "shots": 2, "queries": 1, "meta_batch": 4, "optimizer": "sgd", "lr": 1.0},
    ),
    "siamese": ({"batch_size": 8, "hidden": 8, "features": 32}, {"ways": 3}),
    "mann": (
        {"instances": 2, "controller": 16, "slots": 8, "slot_width": 8, "read_heads": 1},
        {"ways": 3, "meta_batch": 4},
    ),
    "baseline": ({"batch_size": 8, "hidden": 8, "finetune_epochs": 3}, {"ways": 3}),
}


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    return glyph_dataset(tmp_path_factory.mktemp("glyphs"))


def _config(tmp: Path, name: str, data_dir: Path) -> Path:
    algo, train = ALGORITHMS[name]
    cfg = {
        "algorithm": {"name": name, **algo},
        "data": {"dataset": "folder", "data_dir": str(data_dir), "image_size": 28},
        "train": {
            "steps": 3,
            "val_every": 3,
            "val_episodes": 6,
            "checkpoint_every": 1,
            "log_every": 1,
            "tensorboard": False,
            "device": "cpu",
            **train,
        },
        "eval": {"ways": 3, "shots": 1, "queries": 2, "episodes": 6, "batch": 2},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "METALAB_CACHE": str(tmp / "cache")}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = _start(args, env, text=True)
    out, err = _communicate(proc, 300)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _start(args: list[str], env: dict[str, str], text: bool = False) -> subprocess.Popen:
    """torchrun (or metalab) in a session of its own, so a hung run's workers can be stopped."""
    return subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
        start_new_session=True,
    )


def _communicate(proc: subprocess.Popen, timeout: float):
    """Its output; on a timeout the whole process group is killed (no worker is left behind to
    hold ports and CPU) and the test fails with what it printed."""
    import signal

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s; stderr:\n{str(err)[-3000:]}")


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_two_ranks_equal_one_process(tmp_path: Path, glyphs: Path, name: str) -> None:
    cfg = _config(tmp_path, name, glyphs)
    env = _env(tmp_path)
    units = {"siamese": 8, "baseline": 8}.get(name, 4)
    one = tmp_path / "one"
    _run(
        [sys.executable, "-m", "metalab", "train", str(cfg), "--out", str(one), "--quiet"]
        + ["--set", f"train.task_chunk={units // 2}"],
        env,
    )
    two = tmp_path / "two"
    _run(_torchrun(2) + ["-m", "metalab", "train", str(cfg), "--out", str(two), "--quiet"], env)
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{name}: {k}")
    assert load_checkpoint(two / "last.pt")["world_size"] == 2
    # only rank 0 wrote: one metrics line per step and validation, no duplicates
    steps = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [
        json.loads(x)["step"] for x in (one / "metrics.jsonl").read_text().splitlines()
    ]


def test_maml_two_ranks_equal_one_unchunked_process(tmp_path: Path, glyphs: Path) -> None:
    """Second-order MAML has no cross-task statistics: 2 ranks = 1 process, no chunking. Only the
    order of the float32 sum over tasks differs, so the runs use SGD: Adam would blow that round-off
    up to a full step on the conv biases before BatchNorm, whose true gradient is zero (the float64
    proof of equality is tests/test_step.py)."""
    cfg = _config(tmp_path, "maml", glyphs)
    env = _env(tmp_path)
    sgd = ["--set", "train.optimizer=sgd", "--lr", "0.1", "--quiet"]
    _run(
        [sys.executable, "-m", "metalab", "train", str(cfg), "--out", str(tmp_path / "a"), *sgd],
        env,
    )
    _run(
        _torchrun(2) + ["-m", "metalab", "train", str(cfg), "--out", str(tmp_path / "b"), *sgd], env
    )
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_sharded_evaluation_reports_the_numbers_of_one_process(tmp_path: Path, glyphs: Path):
    cfg = _config(tmp_path, "protonet", glyphs)
    env = _env(tmp_path)
    run = tmp_path / "run"
    _run([sys.executable, "-m", "metalab", "train", str(cfg), "--out", str(run), "--quiet"], env)
    args = ["eval", str(run), "--json", "--episodes", "7", "--device", "cpu"]
    one = json.loads(_run([sys.executable, "-m", "metalab", *args], env).stdout)
    out = _run(_torchrun(2) + ["-m", "metalab", *args], env).stdout.strip().splitlines()
    assert len(out) == 1  # rank 0 alone prints
    two = json.loads(out[0])
    assert two["accuracy"] == one["accuracy"] and two["ci95"] == one["ci95"]


def test_world_size_must_divide_the_meta_batch(tmp_path: Path, glyphs: Path) -> None:
    cfg = _config(tmp_path, "protonet", glyphs)
    done = subprocess.run(
        _torchrun(2)
        + ["-m", "metalab", "train", str(cfg), "--out", str(tmp_path / "r")]
        + ["--meta-batch", "3", "--quiet"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("metalab: error")]
    assert errors and all("multiple of the world size 2" in ln for ln in errors)
    # one line per rank; torchrun itself then reports the failed group (its own traceback), but
    # no traceback runs through metalab's code
    assert "metalab/" not in "".join(ln for ln in done.stderr.splitlines() if 'File "' in ln)


def _workers(parent: int) -> dict[int, int]:
    """rank → pid of the metalab workers started by the torchrun process ``parent``."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for var in env:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = int(stat.parent.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_stopped(tmp_path, glyphs):
    """torchrun --max-restarts 3: rank 0 (the one that writes last.pt) is SIGKILLed mid-run; the
    restarted group resumes from last.pt without a flag and ends with the uninterrupted weights."""
    import signal
    import time

    cfg = _config(tmp_path, "protonet", glyphs)
    env = _env(tmp_path)
    steps = ["--steps", "150", "--set", "train.val_every=0", "--quiet"]
    _run(
        _torchrun(2) + ["-m", "metalab", "train", str(cfg), "--out", str(tmp_path / "a"), *steps],
        env,
    )
    run = tmp_path / "b"
    cmd = _torchrun(2) + ["--max-restarts=3", "-m", "metalab", "train", str(cfg), "--out", str(run)]
    proc = _start(cmd + steps, env)
    metrics, killed = run / "metrics.jsonl", False
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len(lines) >= 20:
            workers = _workers(proc.pid)
            if 0 in workers:
                os.kill(workers[0], signal.SIGKILL)
                killed = True
        time.sleep(0.02)
    _, err = _communicate(proc, 300)
    assert killed, "the run ended before a worker could be killed"
    assert proc.returncode == 0, err.decode()[-3000:]
    final = load_checkpoint(run / "last.pt")
    assert final["step"] == 150
    a = _weights(tmp_path / "a")
    for k in a:
        torch.testing.assert_close(final["model"][k], a[k], rtol=0, atol=0, msg=k)
    assert (run / "resumes.jsonl").exists()  # the restart resumed (and said so)


def test_cuda_with_fewer_gpus_than_processes_is_refused(monkeypatch) -> None:
    from metalab.engine import distributed
    from metalab.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda with 4 processes .* but 2 GPU"):
        distributed.init_world("cuda")


def test_an_unreachable_rendezvous_is_one_line(tmp_path: Path) -> None:
    """A rank whose peers never come (a wrong MASTER_ADDR:MASTER_PORT) stops with one line."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    code = (
        "import sys; from metalab.engine.distributed import init_world\n"
        "from metalab.errors import ConfigError\n"
        "try:\n    init_world('cpu', timeout_s=3)\n"
        "except ConfigError as e:\n    print(e); sys.exit(2)\n"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "could not join the 2 processes (rank 1, gloo)" in done.stdout
    assert len(done.stdout.strip().splitlines()) == 1
