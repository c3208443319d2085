"""Tuning on Optuna (metalab.experiments.tuning) with a fake, fast, deterministic objective:
search-space errors, pruning, resume, two workers on one SQLite study, a killed worker, warm
starts; meta-features equal for the same data and different for different data."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

import optuna  # noqa: E402
import torch  # noqa: E402

from metalab.experiments.errors import SearchSpaceError  # noqa: E402
from metalab.experiments.registry import Registry  # noqa: E402
from metalab.experiments.spaces import load_space  # noqa: E402
from metalab.experiments.tuning import TuneSpec, tune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = """
algorithm: {name: maml, backbone: mlp, hidden: 8, inner_lr: 0.01, inner_steps: 1,
            eval_inner_steps: 1, parallel: vmap}
data: {dataset: sinusoid}
train: {steps: 5, ways: 0, shots: 5, queries: 5, meta_batch: 2, lr: 0.001,
        lr_schedule: constant, val_every: 1, val_episodes: 10, tensorboard: false, device: cpu}
eval: {ways: 0, shots: 5, queries: 5, episodes: 10, batch: 10}
"""
SPACE = """
train.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
algorithm.inner_steps: {type: int, low: 1, high: 5}
"""
# the fake objective: an MSE curve falling towards a floor set by lr (best at 1e-2) and inner steps
FAKE = """
import math, time
def fake(cfg, run_dir, report, delay=0.0):
    floor = (math.log10(cfg.train.lr) + 2.0) ** 2 + 0.1 * abs(cfg.algorithm["inner_steps"] - 3)
    value = None
    for step in range(1, 6):
        value = floor + 2.0 / step
        time.sleep(delay)
        report(step, value)
    return value
"""
ns: dict = {}
exec(FAKE, ns)
fake = ns["fake"]


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "space.yaml").write_text(SPACE)
    return tmp_path


def _spec(tmp: Path, **kw) -> TuneSpec:
    args = dict(
        config=tmp / "tiny.yaml",
        trials=8,
        out=tmp / "study",
        space_path=tmp / "space.yaml",
        study="s",
        seed=0,
        startup_trials=3,
        registry=f"sqlite:///{tmp}/reg.db",
    )
    return TuneSpec(**(args | kw))


BASE = {"algorithm": {"name": "maml", "backbone": "mlp"}, "data": {"dataset": "sinusoid"}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.lrr: {type: float, low: 0.1, high: 0.2}", "key 'train.lrr': unknown config key"),
        ("algorithm.inner_stepz: {type: int, low: 1, high: 3}", "key 'algorithm.inner_stepz'"),
        ("train.lr: {type: float, low: 0.1, high: 0.01}", "low 0.1 must be below high 0.01"),
        ("train.lr: {type: float, low: 0, high: 0.1, log: true}", "a log range needs low > 0"),
        ("train.lr: {type: float, lo: 0, high: 0.1}", "unknown field 'lo' for type float"),
        ("train.lr: {type: normal, low: 0, high: 0.1}", "'type' is 'normal'"),
        ("train.steps: {type: int, low: 1.5, high: 3}", "'low' must be an integer"),
        ("train.meta_batch: {type: categorical, choices: []}", "'choices' must be a non-empty"),
        ("train.ways: {type: categorical, choices: [0, 2.5]}", "the value 2.5 is not valid"),
        ("lr: {type: float, low: 0.1, high: 0.2}", "must be a dotted config key"),
    ],
)
def test_bad_search_space_is_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SearchSpaceError) as e:
        load_space(path, BASE, "maml")
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_default_spaces_are_valid_for_every_algorithm():
    import metalab.algorithms  # noqa: F401
    from metalab.registry import ALGORITHMS

    for name in ALGORITHMS.names():
        base = {"algorithm": {"name": name}, "train": {"ways": 20}, "eval": {"ways": 5}}
        space = load_space(None, base, name)
        assert "train.lr" in space


def test_tune_prunes_records_resumes_and_writes_the_best_preset(setup):
    spec = _spec(setup)
    result = tune(spec, trainer=fake)
    assert result.counts.get("pruned", 0) >= 1 and sum(result.counts.values()) == 8
    assert result.direction == "minimize" and result.metric == "mse"
    best_lr = result.best_params["train.lr"]
    assert result.best_value == pytest.approx(
        (math.log10(best_lr) + 2) ** 2
        + 0.1 * abs(result.best_params["algorithm.inner_steps"] - 3)
        + 0.4
    )
    preset = result.preset.read_text()
    assert preset.startswith("# Best configuration of study 's'") and f"lr: {best_lr}" in preset
    reg = Registry(spec.registry)
    trials = reg.query(kind="trial", study="s")
    assert sorted(r["trial"] for r in trials) == list(range(8))
    assert {r["status"] for r in trials} == {"finished", "pruned"}
    assert all(r["metafeatures"] and r["task_key"] for r in trials)
    pruned = next(r for r in trials if r["status"] == "pruned")
    assert 1 <= len(reg.get(pruned["uid"])["curve"]) < 5
    (study_rec,) = reg.query(kind="study", study="s")
    assert study_rec["value"] == result.best_value and study_rec["metafeatures"]

    # resume: the same command with a larger budget continues the study
    again = tune(_spec(setup, trials=11), trainer=fake)
    assert sum(again.counts.values()) == 11 and again.best_value <= result.best_value
    assert len(reg.query(kind="study", study="s")) == 1  # the study's record is updated
    assert sorted(r["trial"] for r in reg.query(kind="trial", study="s")) == list(range(11))


def test_warm_start_enqueues_the_nearest_past_best(setup, capsys):
    spec = _spec(setup, trials=4)
    first = tune(spec, trainer=fake)
    # a different task (other amplitudes) is nearer than nothing; the same algorithm and space
    warm = _spec(setup, trials=2, study="new", out=setup / "new", warm_start=2)
    result = tune(warm, trainer=fake)
    assert [s["study"] for s in result.enqueued] == ["s"]
    assert result.enqueued[0]["params"] == first.best_params
    storage = optuna.storages.RDBStorage(result.storage)
    t0 = optuna.load_study(study_name="new", storage=storage).trials[0]
    assert t0.params == first.best_params and t0.user_attrs["warm_start_from"]
    # `suggest` prints the same configuration without training
    from metalab.cli import main

    argv = ["suggest", str(setup / "tiny.yaml"), "--space", str(setup / "space.yaml")]
    assert main(argv + ["--registry", spec.registry]) == 0
    out = capsys.readouterr()
    assert "1. from study " in out.out and "(distance 0.0," in out.out
    assert f"--set train.lr={first.best_params['train.lr']}" in out.out


WORKER = (
    FAKE
    + """
import os, signal, sys
from pathlib import Path
from metalab.experiments.tuning import TuneSpec, tune
tmp, trials, kill_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
started = []
def trainer(cfg, run_dir, report):
    started.append(run_dir)
    def report_or_die(step, value):
        report(step, value)
        if len(started) == kill_at and step == 2:  # dies in the middle of its kill_at-th trial
            os.kill(os.getpid(), signal.SIGKILL)
    return fake(cfg, run_dir, report_or_die, delay=0.1)
spec = TuneSpec(config=tmp / "tiny.yaml", trials=trials, out=tmp / "study",
                space_path=tmp / "space.yaml", study="shared", storage=f"sqlite:///{tmp}/optuna.db",
                startup_trials=2, registry=f"sqlite:///{tmp}/reg.db", heartbeat_s=1,
                pruner="none")
tune(spec, trainer=trainer)
"""
)


def test_two_workers_share_one_study_and_a_killed_workers_trial_fails(setup):
    """Two processes on one SQLite study; one is killed in its third trial: that trial is marked
    failed (by the survivor, three missed heartbeats later) and the study reaches its budget."""
    (setup / "worker.py").write_text(WORKER)
    run = lambda kill_at: subprocess.Popen(  # noqa: E731
        [sys.executable, str(setup / "worker.py"), str(setup), "16", str(kill_at)], env=_env()
    )
    storage = f"sqlite:///{setup}/optuna.db"
    doomed = run(3)
    # the survivor joins once the doomed worker has completed a trial, so that it still has trials
    # to start after the death plus the 3 s grace period (it fails stale trials when it starts
    # one); joining at once, a loaded machine let it reach the budget before the death was seen
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and doomed.poll() is None:
        try:
            done = optuna.load_study(study_name="shared", storage=storage).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,)
            )
        except Exception:  # noqa: BLE001 - the study is not created yet
            done = []
        if done:
            break
        time.sleep(0.1)
    survivor = run(0)
    assert doomed.wait(timeout=240) == -9 and survivor.wait(timeout=240) == 0
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(complete) == 16 and len(failed) == 1
    reg = Registry(f"sqlite:///{setup}/reg.db")
    trials = reg.query(kind="trial", study="shared")
    finished_by = {r["pid"] for r in trials if r["status"] == "finished"}
    assert finished_by == {doomed.pid, survivor.pid}  # both workers completed trials
    (record,) = [r for r in trials if r["trial"] == failed[0].number]
    assert record["status"] == "failed" and "worker died" in record["error"]
    assert record["pid"] == doomed.pid and record["state"] == "failed"


def _images(seed: int, classes: int = 12, per_class: int = 8, scale: float = 1.0):
    from metalab.data.base import ClassIndexedDataset

    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, 1, 8, 8, generator=g) * 255
    noise = torch.randn(classes, per_class, 1, 8, 8, generator=g) * 40 * scale
    images = (centers[:, None] + noise).clamp(0, 255).to(torch.uint8).flatten(0, 1)
    counts = torch.full((classes,), per_class)
    return ClassIndexedDataset(
        "synthetic",
        images,
        torch.arange(classes) * per_class,
        counts,
        [str(c) for c in range(classes)],
        torch.zeros(classes, dtype=torch.long),
        ["all"],
    )


def test_metafeatures_equal_for_same_data_and_differ_for_different_data():
    from metalab.experiments.metafeatures import metafeatures
    from metalab.tasks.sinusoid import SinusoidTasks

    a, b = metafeatures(_images(0)), metafeatures(_images(0))
    assert a == b and {"nc_raw_5w1s", "nc_rf_5w5s", "rf_separability", "log_classes"} <= set(a)
    assert 20 <= a["nc_raw_5w1s"] <= 100
    other = metafeatures(_images(1, scale=2.0))
    assert other != a and other["raw_separability"] > a["raw_separability"]
    s1, s2 = metafeatures(SinusoidTasks("train")), metafeatures(SinusoidTasks("train"))
    narrow = metafeatures(SinusoidTasks("train", amplitude=(0.1, 1.0)))
    assert s1 == s2 and narrow["log_y_std_within"] < s1["log_y_std_within"]
