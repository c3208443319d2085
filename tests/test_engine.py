"""The engine on real Omniglot: resume equals an uninterrupted run, NaN stops cleanly, time budget,
evaluation."""

import json

import pytest
import torch

from metalab.config import parse_config
from metalab.engine.checkpoint import load_checkpoint, save_checkpoint
from metalab.engine.trainer import Trainer, train
from metalab.errors import CheckpointError, TrainingError


def small_config(data_dir, **train):
    return parse_config(
        {
            "algorithm": {"name": "protonet", "hidden": 16},
            "data": {"dataset": "omniglot", "data_dir": str(data_dir)},
            "train": {
                "steps": 6,
                "ways": 5,
                "shots": 1,
                "queries": 2,
                "checkpoint_every": 2,
                "log_every": 1,
                "val_every": 3,
                "val_episodes": 5,
                "lr_step": 2,
                "tensorboard": False,
                **train,
            },
            "eval": {"episodes": 10, "queries": 3},
        }
    )


class Kill(Exception):
    pass


def kill_at(step):
    def on_step(s):
        if s == step:
            raise Kill()

    return on_step


def weights(path):
    return load_checkpoint(path)["model"]


def test_resume_equals_uninterrupted_run(data_dir, tmp_path):
    cfg = small_config(data_dir)
    train(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(Kill):
        train(
            cfg, tmp_path / "killed", progress=False, on_step=kill_at(5)
        )  # last checkpoint: step 4
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 4
    result = train(cfg, tmp_path / "killed", resume=True, progress=False)
    assert result.step == 6
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "killed" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        load_checkpoint(tmp_path / "straight" / "best.pt")["best_val"]
        == load_checkpoint(tmp_path / "killed" / "best.pt")["best_val"]
    )
    # noqa: E731
    lines = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(tmp_path / "straight") == lines(
        tmp_path / "killed"
    )  # the log holds no duplicate steps


def test_checkpoint_is_complete_and_weights_only_loadable(data_dir, tmp_path):
    train(small_config(data_dir, steps=2), tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "rng",
        "step",
        "config",
        "metalab_version",
        "algorithm",
    ):
        assert key in state
    assert state["step"] == 2 and state["config"]["train"]["steps"] == 2


def test_existing_run_is_not_overwritten(data_dir, tmp_path):
    train(small_config(data_dir, steps=1), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="already holds a run .*--resume"):
        train(small_config(data_dir, steps=1), tmp_path / "run", progress=False)


def test_checkpoint_of_another_algorithm_is_refused(data_dir, tmp_path):
    train(small_config(data_dir, steps=1), tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["algorithm"] = "maml"
    save_checkpoint(tmp_path / "run" / "last.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(
        CheckpointError, match="written by algorithm 'maml' but the config asks for 'protonet'"
    ):
        train(small_config(data_dir, steps=2), tmp_path / "run", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    trainer = Trainer(small_config(data_dir, checkpoint_every=1), tmp_path / "run", progress=False)
    real = trainer.learner.meta_loss

    def poisoned(batch):
        out = real(batch)
        if trainer.step == 3:
            out.loss = out.loss * float("nan")
        return out

    trainer.learner.meta_loss = poisoned
    with pytest.raises(TrainingError, match="loss became nan at step 4.*step 3, rolled back"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 3 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_time_budget_ends_cleanly_with_checkpoints(data_dir, tmp_path):
    result = train(
        small_config(data_dir, steps=1000, max_minutes=0.0), tmp_path / "run", progress=False
    )
    assert result.stopped == "time" and result.step == 0
    assert (tmp_path / "run" / "last.pt").exists()
