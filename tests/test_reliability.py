"""Nothing lost, nothing corrupted (issue 13): each way a run can be stopped, refused or damaged.

- SIGINT and SIGTERM end a run (in a subprocess) at a step boundary with last.pt saved, and the
  resumed run is bit-identical to one never stopped — weights, BatchNorm statistics, optimizer,
  sampler generator and metrics; a second signal stops at once, keeping the last checkpoint.
- A run folder is locked while a training holds it; a crashed holder leaves no stuck lock.
- Nothing is written over a folder that holds any file of a run, or anything else.
- --resume refuses changed settings that would make the run's record untrue, accepts the harmless
  ones and records them.
- A non-finite loss, gradient, buffer (BatchNorm variance) or weight stops the run rolled back to a
  state checked finite.
- A failed checkpoint write (a full disk) leaves the previous last.pt and no temporary file.
- A torn last line of metrics.jsonl and orphan temporary files do not stop --resume.
- A checkpoint with the right header but missing keys is refused in one line.

Tiny models on sinusoid tasks or on a synthetic image folder (Conv-4 with BatchNorm statistics).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalab.config import parse_config
from metalab.engine.build import load_learner
from metalab.engine.checkpoint import load_checkpoint, save_checkpoint
from metalab.engine.rundir import LOCK
from metalab.engine.trainer import RESUMABLE, Trainer, train
from metalab.errors import CheckpointError, ConfigError, RunDirError, TrainingError

SRC = Path(__file__).resolve().parents[1] / "src"


# --- small runs ---------------------------------------------------------------------------------


def sinusoid(**train) -> dict:
    return {
        "algorithm": {"name": "maml", "backbone": "mlp", "hidden": 8, "parallel": "loop"},
        "data": {"dataset": "sinusoid"},
        "train": {
            "steps": 6,
            "ways": 0,
            "shots": 3,
            "queries": 3,
            "meta_batch": 2,
            "lr": 0.01,
            "val_every": 3,
            "val_episodes": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "tensorboard": False,
            "device": "cpu",
            **train,
        },
        "eval": {"ways": 0, "shots": 3, "queries": 3, "episodes": 4, "batch": 4},
    }


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    """An image folder: train (6 classes) and val (3 classes) of 3 noisy 16×16 glyphs each."""
    root = tmp_path_factory.mktemp("glyphs")
    rng = np.random.default_rng(0)
    for split, classes in (("train", 6), ("val", 3)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            base = rng.random((16, 16)) > 0.6
            for i in range(3):
                pixels = ((base ^ (rng.random((16, 16)) > 0.9)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def images(data_dir: Path, **train) -> dict:
    """ProtoNet on Conv-4, whose BatchNorm layers keep running statistics (buffers)."""
    return {
        "algorithm": {"name": "protonet", "hidden": 4},
        "data": {"dataset": "folder", "data_dir": str(data_dir), "image_size": 16},
        "train": {
            "steps": 8,
            "ways": 3,
            "shots": 1,
            "queries": 2,
            "val_every": 3,
            "val_episodes": 3,
            "checkpoint_every": 5,
            "log_every": 1,
            "lr_step": 3,
            "tensorboard": False,
            "device": "cpu",
            **train,
        },
        "eval": {"ways": 3, "shots": 1, "queries": 2, "episodes": 3, "batch": 3},
    }


def run(values: dict, out: Path, **kwargs):
    return train(parse_config(values), out, progress=False, **kwargs)


def assert_same_state(a: Path, b: Path) -> None:
    """Two checkpoints hold the same step, weights, buffers, optimizer, schedule and generator."""
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert x["step"] == y["step"]
    assert x["model"].keys() == y["model"].keys()
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), k
    assert torch.equal(x["rng"]["sampler"], y["rng"]["sampler"])
    assert x["scheduler"] == y["scheduler"] and x["log_window"] == y["log_window"]
    sx, sy = x["optimizer"]["state"], y["optimizer"]["state"]
    assert sx.keys() == sy.keys()
    for p in sx:
        for k in sx[p]:
            assert torch.equal(torch.as_tensor(sx[p][k]), torch.as_tensor(sy[p][k])), (p, k)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def temporary_files(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# --- signals ------------------------------------------------------------------------------------

# Trains in a child process; during step `at` (after the forward pass has moved the BatchNorm
# statistics and the sampler's generator) it writes a marker file and waits for the parent's
# "sent" file, so the parent's signals land in the middle of that step, however loaded the machine.
CHILD = textwrap.dedent(
    """
    import json, signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    from metalab.config import parse_config
    from metalab.engine.trainer import Trainer
    from metalab.errors import MetalabError
    values, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    at = int(sys.argv[3])
    trainer = Trainer(parse_config(values), out, progress=False)
    forward = trainer.learner.meta_loss
    def slow(batch):
        result = forward(batch)
        if trainer.step == at:
            (out / "mid-step").write_text(str(at))
            deadline = time.monotonic() + 120
            while not (out / "sent").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return result
    trainer.learner.meta_loss = slow
    try:
        r = trainer.fit()
    except MetalabError as e:
        print(f"error: {e}")
        sys.exit(2)
    print(json.dumps({"step": r.step, "stopped": r.stopped, "signal": r.signal}))
    """
)


def start_child(values: dict, out: Path, at: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(values), str(out), str(at)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never reached the step"
        time.sleep(0.02)


def signal_child(child: subprocess.Popen, sig: signal.Signals) -> str:
    """Send `sig` and wait until the child's handler says it took it; return its stderr so far."""
    child.send_signal(sig)
    seen = []
    while not seen or f"{sig.name}: finishing this step" not in seen[-1]:
        line = child.stderr.readline()
        assert line, "".join(seen)  # the child ended without acknowledging the signal
        seen.append(line)
    return "".join(seen)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_ends_the_run_at_a_step_boundary_and_resume_is_exact(glyphs, tmp_path, sig):
    values = images(glyphs)
    run(values, tmp_path / "straight")
    child = start_child(values, tmp_path / "stopped", at=3)
    wait_for(tmp_path / "stopped" / "mid-step", child)
    signal_child(child, sig)
    (tmp_path / "stopped" / "sent").touch()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    # step 4 was finished, then the run stopped (not a checkpoint step: checkpoint_every is 5)
    assert result == {"step": 4, "stopped": "interrupted", "signal": sig.name}
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["step"] == 4
    resumed = run(values, tmp_path / "stopped", resume=True)
    assert resumed.step == 8 and resumed.stopped == "steps"
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "stopped" / "last.pt")
    assert_same_state(tmp_path / "straight" / "best.pt", tmp_path / "stopped" / "best.pt")
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "stopped")


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(tmp_path):
    values = sinusoid(steps=50, checkpoint_every=2, val_every=0)
    child = start_child(values, tmp_path / "run", at=3)
    wait_for(tmp_path / "run" / "mid-step", child)
    signal_child(child, signal.SIGTERM)
    child.send_signal(signal.SIGTERM)  # the child is still in step 4
    out, err = child.communicate(timeout=120)
    assert child.returncode == 2, err
    assert "stopped at once by a second SIGTERM during step 4" in out and "holds step 2" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert temporary_files(tmp_path / "run") == []
    run(values | {"train": values["train"] | {"steps": 6}}, tmp_path / "run", resume=True)
    run(sinusoid(val_every=0), tmp_path / "straight")
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "run" / "last.pt")


# --- the lock -----------------------------------------------------------------------------------


def test_a_second_training_into_a_held_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = Trainer(parse_config(sinusoid(steps=2)), out, progress=False)
    for resume in (False, True):
        with pytest.raises(RunDirError, match=rf"--out {out} is in use by another training \(pid"):
            Trainer(parse_config(sinusoid(steps=2)), out, resume=resume, progress=False)
    first.fit()
    result = run(sinusoid(steps=4), out, resume=True)  # released when fit returned
    assert result.step == 4


def test_a_crashed_holder_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "run"
    run(sinusoid(steps=2), out)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / LOCK)!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by another training \\(pid {holder.pid}\\)"):
            run(sinusoid(steps=4), out, resume=True)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
    assert (out / LOCK).exists()
    assert run(sinusoid(steps=4), out, resume=True).step == 4


# --- never overwrite ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "config.yaml", "metrics.jsonl"])
def test_a_folder_holding_any_file_of_a_run_is_not_overwritten(tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("precious")
    with pytest.raises(RunDirError, match=rf"{out} already holds a run \({name}\); pass --resume"):
        run(sinusoid(), out)
    assert [p.name for p in out.iterdir()] == [name]  # not even a lock file left
    assert (out / name).read_text() == "precious"


def test_other_folders_and_files_are_not_overwritten(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match=r"is not empty \(thesis.tex\) and holds no metalab run"):
        run(sinusoid(), tmp_path / "notes")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        run(sinusoid(), tmp_path / "file")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "file").read_text() == "precious"
    # an empty folder, or one holding only a dead lock and a killed save's temporary file, is new
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / LOCK).write_text("123")
    (tmp_path / "empty" / ".last.pt.x1y2.tmp").write_bytes(b"half")
    assert run(sinusoid(steps=1), tmp_path / "empty").step == 1
    assert temporary_files(tmp_path / "empty") == []


def test_resume_needs_a_resumable_run(tmp_path):
    with pytest.raises(RunDirError, match="holds no run \\(no last.pt\\)"):
        run(sinusoid(), tmp_path / "nothing", resume=True)
    assert not (tmp_path / "nothing").exists()  # not left behind
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "best.pt").write_text("x")
    with pytest.raises(RunDirError, match="holds best.pt but no last.pt"):
        run(sinusoid(), tmp_path / "old", resume=True)


def test_a_refused_config_creates_no_folder(tmp_path):
    with pytest.raises(ConfigError, match="train.lr = -1.0 \\(--lr\\)"):
        run(sinusoid(lr=-1), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_is_resumable_from_step_0(tmp_path):
    result = run(sinusoid(steps=50, max_minutes=0.0), tmp_path / "run")
    assert result.step == 0 and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 0


def killed(*args, **kwargs):
    raise KeyboardInterrupt()  # what a kill does to the call it interrupts


def test_a_kill_while_a_run_starts_leaves_a_folder_to_start_again_or_resume(tmp_path, monkeypatch):
    import metalab.engine.trainer as trainer

    # killed while writing the first last.pt: nothing but the lock is left, a new run may start
    monkeypatch.setattr(trainer, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run(sinusoid(steps=2), tmp_path / "run")
    monkeypatch.undo()
    folder = tmp_path / "run"  # removed, or (after a real kill) holding only the lock
    assert not folder.exists() or [p.name for p in folder.iterdir()] == [LOCK]
    assert run(sinusoid(steps=2), tmp_path / "run").step == 2
    # killed after last.pt (step 0), before config.yaml and metrics.jsonl: --resume goes on
    monkeypatch.setattr(trainer, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        run(sinusoid(steps=2), tmp_path / "other")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "other" / "last.pt")["step"] == 0
    assert run(sinusoid(steps=2), tmp_path / "other", resume=True).step == 2


# --- resume with changed settings ---------------------------------------------------------------


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "run"
    run(sinusoid(steps=2), out)
    return out


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "lr", 0.1),
        ("train", "meta_batch", 3),
        ("train", "shots", 5),
        ("train", "seed", 1),
        ("train", "val_every", 1),
        ("eval", "queries", 5),
        ("algorithm", "hidden", 16),
        ("algorithm", "inner_lr", 0.5),
    ],
)
def test_resume_refuses_settings_that_would_make_the_record_untrue(two_steps, section, key, value):
    values = sinusoid(steps=2)
    values[section] = values[section] | {key: value}
    before = (two_steps / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=rf"--resume with changed settings \({section}.{key} "):
        run(values, two_steps, resume=True)
    assert (two_steps / "last.pt").read_bytes() == before


def test_resume_accepts_and_records_harmless_changes(tmp_path):
    out = tmp_path / "run"
    run(sinusoid(steps=2), out)
    changes = {"steps": 4, "max_minutes": 30.0, "log_every": 2, "checkpoint_every": 1}
    assert {f"train.{k}" for k in changes} <= RESUMABLE
    result = run(sinusoid(**changes), out, resume=True)
    assert result.step == 4
    (line,) = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert line["step"] == 2
    assert line["changed"] == {
        "train.steps": [2, 4],
        "train.max_minutes": [None, 30.0],
        "train.log_every": [1, 2],
        "train.checkpoint_every": [2, 1],
    }
    assert load_checkpoint(out / "last.pt")["config"]["train"]["steps"] == 4
    with pytest.raises(ConfigError, match="--steps 3 is below the step .* has reached \\(4\\)"):
        run(sinusoid(steps=3), out, resume=True)


def test_resume_finds_the_data_where_the_run_found_it(glyphs, tmp_path):
    values = images(glyphs, steps=2, val_every=0)
    run(values, tmp_path / "run")
    values["data"] = {k: v for k, v in values["data"].items() if k != "data_dir"}  # no --data-dir
    values["train"]["steps"] = 3
    assert run(values, tmp_path / "run", resume=True).step == 3
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["config"]["data"]["data_dir"] == str(glyphs)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_resume_keeps_the_length_of_an_annealing_schedule(tmp_path, schedule):
    run(sinusoid(steps=2, lr_schedule=schedule), tmp_path / "run")
    message = f"cannot change on --resume with train.lr_schedule {schedule}"
    with pytest.raises(ConfigError, match=message):
        run(sinusoid(steps=4, lr_schedule=schedule), tmp_path / "run", resume=True)


def test_the_linear_schedule_anneals_to_zero_as_reptile_does():
    """Nichol et al. 2018 (supervised-reptile): ε_i = ε · (1 − i / steps)."""
    from metalab.config import parse_config
    from metalab.engine.trainer import make_optimizer, make_schedule

    t = parse_config({"train": {"lr": 1.0, "optimizer": "sgd", "steps": 4}}).train
    t.lr_schedule = "linear"
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], t)
    schedule, rates = make_schedule(opt, t), []
    for _ in range(5):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


# --- divergence: roll back to a state checked finite --------------------------------------------


def test_a_non_finite_batchnorm_statistic_rolls_back_although_the_loss_stays_finite(
    glyphs, tmp_path
):
    run(images(glyphs, steps=3), tmp_path / "straight")
    trainer = Trainer(parse_config(images(glyphs)), tmp_path / "run", progress=False)
    forward = trainer.learner.meta_loss
    bn = next(m for m in trainer.learner.modules() if isinstance(m, torch.nn.BatchNorm2d))

    def diverging(batch):
        out = forward(batch)
        if trainer.step == 3:
            # what a huge activation does to the variance (.data: the step's backward, which
            # follows, keeps the tensor it saved)
            bn.running_var.data.fill_(float("inf"))
        return out

    trainer.learner.meta_loss = diverging
    with pytest.raises(
        TrainingError,
        match=r"buffer .*running_var became non-finite \(the loss stayed finite\) at step 4; "
        r".*holds step 3, rolled back to the last weights checked finite; lower",
    ):
        trainer.fit()
    # exactly the state of a run stopped cleanly after step 3: generator and statistics undone
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "run" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "best.pt")["model"]
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())


def test_a_non_finite_gradient_rolls_back(tmp_path):
    run(sinusoid(steps=3), tmp_path / "straight")
    trainer = Trainer(parse_config(sinusoid()), tmp_path / "run", progress=False)
    forward, weight = trainer.learner.meta_loss, next(trainer.learner.parameters())

    def nan_gradient(batch):
        out = forward(batch)
        if trainer.step == 3:  # a finite loss (+ 0) whose gradient is 0 · ∞ = NaN
            out.loss = out.loss + (weight.sum() * 0).sqrt()
        return out

    trainer.learner.meta_loss = nan_gradient
    with pytest.raises(TrainingError, match="the gradient of .* became non-finite at step 4"):
        trainer.fit()
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "run" / "last.pt")


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_non_finite_weights_after_an_update_fall_back_to_the_last_checkpoint(tmp_path):
    trainer = Trainer(parse_config(sinusoid()), tmp_path / "run", progress=False)
    update = trainer.optimizer.step

    def exploding(*args, **kwargs):
        update(*args, **kwargs)
        if trainer.step == 2:  # the update of step 3
            next(trainer.learner.parameters()).data.fill_(float("inf"))

    trainer.optimizer.step = exploding
    with pytest.raises(
        TrainingError,
        match=r"became non-finite after the update at step 3; .*holds step 2, the last "
        r"checkpoint \(checked finite",
    ):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# --- a full disk, a killed save -----------------------------------------------------------------


def failing_save(monkeypatch, fail_on, exc):
    """torch.save that fails (after writing a few bytes) on the calls whose number is in
    `fail_on`."""
    real, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] in fail_on:
            f.write(b"half a checkpoint")
            raise exc
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


def test_a_full_disk_keeps_the_previous_last_checkpoint(tmp_path, monkeypatch):
    run(sinusoid(val_every=0), tmp_path / "straight")
    # saves: step 0, 2, then 4 fails
    failing_save(monkeypatch, {3}, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as caught:
        run(sinusoid(val_every=0), out)
    message = str(caught.value)
    assert "\n" not in message
    assert (
        f"could not write {out / 'last.pt'} (No space left on device [ENOSPC]); the previous "
        in (message)
    )
    assert "training stopped at step 4 and" in message and "holds step 2; free disk" in message
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert temporary_files(out) == []
    monkeypatch.undo()
    run(sinusoid(val_every=0), out, resume=True)
    assert_same_state(tmp_path / "straight" / "last.pt", out / "last.pt")


def test_a_failed_best_checkpoint_write_stops_with_last_pt_in_place(tmp_path, monkeypatch):
    # saves: step 0 (last), step 2 (last), step 3 (best) fails as torch's zip writer reports it
    failing_save(monkeypatch, {3}, RuntimeError("[enforce fail] file write failed"))
    with pytest.raises(TrainingError, match=r"could not write .*best.pt \(.*file write failed\); "):
        run(sinusoid(), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert temporary_files(tmp_path / "run") == []


def test_save_checkpoint_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"algorithm": "maml", "step": 1})
    failing_save(monkeypatch, {1}, KeyboardInterrupt())  # a kill while writing
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"algorithm": "maml", "step": 2})
    assert torch.load(path, weights_only=True)["step"] == 1 and temporary_files(tmp_path) == []


def test_orphan_temporary_files_are_removed_on_resume(tmp_path):
    out = tmp_path / "run"
    run(sinusoid(steps=2), out)
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half")
    run(sinusoid(steps=3), out, resume=True)
    assert temporary_files(out) == []


# --- a torn metrics line, an incomplete checkpoint ----------------------------------------------


def test_a_torn_last_metrics_line_does_not_stop_resume(tmp_path, caplog):
    run(sinusoid(steps=6, val_every=0), tmp_path / "straight")
    out = tmp_path / "run"
    run(sinusoid(steps=4, val_every=0), out)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.3')  # killed mid-write
    run(sinusoid(steps=6, val_every=0), out, resume=True)
    assert metrics(out) == metrics(tmp_path / "straight")
    # a damaged line elsewhere is dropped too, with a warning
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run(sinusoid(steps=7, val_every=0), out, resume=True)
    assert "metrics.jsonl line 2 is damaged" in caplog.text
    assert [r["step"] for r in metrics(out)][-2:] == [6, 7]


@pytest.mark.parametrize("key", ["optimizer", "rng", "step", "model"])
def test_a_checkpoint_missing_keys_is_refused_in_one_line(tmp_path, key):
    out = tmp_path / "run"
    run(sinusoid(steps=1, val_every=0), out)
    state = load_checkpoint(out / "last.pt")
    del state[key], state["format"]
    save_checkpoint(out / "last.pt", state)
    with pytest.raises(CheckpointError, match=rf"last.pt is an incomplete .*\(missing {key}\)"):
        run(sinusoid(steps=2, val_every=0), out, resume=True)
    if key in ("model", "step"):
        with pytest.raises(CheckpointError, match=f"missing {key}"):
            load_learner(out, torch.device("cpu"), "last")
