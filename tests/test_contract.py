"""The algorithm contract, for every registered algorithm, on synthetic data (no files, never
skipped).

Parametrized over ``ALGORITHMS.names()``: a new algorithm is tested the moment it is registered.
Each trains a few steps through the engine's trainer, evaluates on fixed episodes, is reloaded from
its checkpoint with equal predictions (so everything that decides a prediction is in the saved
state), predicts, and — where it has one output unit per way — refuses other ways in one line.
Regression-capable algorithms (``regression = True``) run the same on the sinusoid source.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import metalab.algorithms  # noqa: F401  (fills the registry)
from fixtures.synthetic import register_synthetic
from metalab.config import parse_config
from metalab.engine.build import build_learner, load_learner
from metalab.engine.evaluate import evaluate
from metalab.engine.trainer import Trainer
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import fixed_episodes, input_shape
from metalab.tasks.sources import load_split

WAYS, SHOTS, QUERIES = 3, 1, 2
# Small versions of each algorithm, so the whole file runs in well under a minute on one thread. A
# new algorithm runs with its defaults (``hidden`` shrunk when it has one) until it gets a line.
TINY: dict[str, dict] = {
    "maml": {"eval_inner_steps": 1, "parallel": "loop"},
    "fomaml": {"eval_inner_steps": 1, "parallel": "loop"},
    "metasgd": {"eval_inner_steps": 1, "parallel": "loop"},
    "anil": {"eval_inner_steps": 1, "parallel": "loop"},
    "pretrain": {"eval_inner_steps": 1, "parallel": "loop"},
    "reptile": {"inner_steps": 2, "eval_inner_steps": 2, "parallel": "loop"},
    "meta_lstm": {"inner_steps": 2, "lstm_hidden": 4},
    "relation": {"fc_hidden": 4},
    "siamese": {"features": 16, "batch_size": 8},
    "baseline": {"batch_size": 8, "finetune_epochs": 2},
    "baseline_pp": {"batch_size": 8, "finetune_epochs": 2},
    "mann": {"instances": 2, "controller": 16, "slots": 8, "slot_width": 4, "read_heads": 1},
    "snail": {"features": 8, "tc_filters": 8, "attention": [[8, 4], [8, 4], [8, 4]]},
    "metanet": {"head_hidden": 6, "meta_hidden": 4},
    "simclr": {"projection": 8, "batch_size": 8},
    "supcon": {"projection": 8, "batch_size": 8},
}
REGRESSION = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).regression]


@pytest.fixture(scope="session")
def synthetic() -> str:
    return register_synthetic()


def tiny_options(name: str, regression: bool) -> dict:
    fields = {f.name for f in dataclasses.fields(ALGORITHMS.get(name).Config)}
    options = {"hidden": 8} if "hidden" in fields else {}
    if regression:
        options |= {"backbone": "mlp"}
    return {"name": name} | options | TINY.get(name, {})


def run_config(name: str, dataset: str, regression: bool = False) -> dict:
    ways, shots, queries = (0, 5, 5) if regression else (WAYS, SHOTS, QUERIES)
    shape = {"ways": ways, "shots": shots, "queries": queries}
    return {
        "algorithm": tiny_options(name, regression),
        "data": {"dataset": dataset},
        "train": shape
        | {
            "steps": 2,
            "meta_batch": 2,
            "val_every": 2,
            "val_episodes": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "seed": 3,  # not the reload's build seed (0): state left out of the checkpoint shows
            "device": "cpu",
            "tensorboard": False,
        },
        "eval": shape | {"episodes": 4, "batch": 2},
    }


def one_line_config_error(call) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    message = str(e.value)
    assert message and "\n" not in message, message
    return message


def check_contract(name: str, values: dict, tmp_path) -> None:
    cfg = parse_config(values)
    trainer = Trainer(cfg, tmp_path / name, progress=False)
    result = trainer.fit()
    assert result.step == 2 and result.best_val is not None and math.isfinite(result.best_val)
    trained = trainer.learner.cpu()

    test = load_split(cfg.data, cfg.eval.split)
    e = cfg.eval
    episodes = fixed_episodes(test, e.ways, e.shots, e.queries, e.episodes, e.seed)
    out = evaluate(trained, episodes, batch_size=2)
    assert out.per_episode.shape == (4,) and math.isfinite(out.value)
    again = evaluate(trained, episodes, batch_size=4)
    assert torch.allclose(out.per_episode, again.per_episode)  # batching changes nothing

    (episode,) = episodes.batches(4)
    with torch.no_grad(), trained.eval_mode():
        predictions = trained.predict(episode)
    width = 1 if e.ways == 0 else e.ways
    assert predictions.shape == (4, episode.query_y.shape[1], width)
    assert torch.isfinite(predictions).all()

    reloaded, reloaded_cfg, _ = load_learner(tmp_path / name, torch.device("cpu"), "last")
    # the run records the options as the learner resolved them (every default written out)
    assert type(reloaded) is type(trained) and reloaded_cfg.to_dict() == trainer.cfg.to_dict()
    assert {k: v for k, v in trainer.cfg.algorithm.items() if k in cfg.algorithm} == cfg.algorithm
    with torch.no_grad(), reloaded.eval_mode():
        assert torch.allclose(reloaded.predict(episode), predictions, rtol=1e-5, atol=1e-6)
    assert isinstance(reloaded.protocol_report(test, cfg.eval), dict)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_trains_evaluates_reloads_and_predicts(name, synthetic, tmp_path):
    check_contract(name, run_config(name, synthetic), tmp_path)


@pytest.mark.parametrize("name", REGRESSION)
def test_every_regression_algorithm_on_the_sinusoid_source(name, tmp_path):
    check_contract(name, run_config(name, "sinusoid", regression=True), tmp_path)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_ways_are_checked_once_by_the_base(name, synthetic):
    values = run_config(name, synthetic)
    cfg = parse_config(values)
    shape = input_shape(load_split(cfg.data, "train"))
    learner = build_learner(cfg, shape, seed=0).eval()
    assert learner.ways == WAYS
    other = WAYS + 1
    episode = next(fixed_episodes(load_split(cfg.data, "test"), other, 1, 1, 2, 0).batches(2))
    if not learner.fixed_ways:
        with torch.no_grad():
            assert learner.predict(episode).shape == (2, other, other)  # any number of ways
        return
    message = one_line_config_error(lambda: learner.predict(episode))
    assert f"have {other} ways" in message and f"--ways {WAYS}" in message
    values["eval"]["ways"] = other
    message = one_line_config_error(lambda: build_learner(parse_config(values), shape, seed=0))
    assert f"train.ways = {WAYS} but eval.ways = {other}" in message


@pytest.mark.parametrize("name", REGRESSION)
def test_a_regression_model_refuses_classification_episodes(name, synthetic):
    cfg = parse_config(run_config(name, "sinusoid", regression=True))
    learner = build_learner(cfg, (1,), seed=0)
    assert learner.ways == 0
    episode = next(
        fixed_episodes(
            load_split(parse_config(run_config(name, synthetic)).data, "test"), WAYS, 1, 1, 2, 0
        ).batches(2)
    )
    message = one_line_config_error(lambda: learner.predict(episode))
    assert "classification tasks" in message and "trained for regression" in message


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_replace_builds_the_same_learner_with_other_options(name, synthetic):
    cfg = parse_config(run_config(name, synthetic))
    learner = build_learner(cfg, input_shape(load_split(cfg.data, "train")), seed=0).double()
    twin = learner.replace()
    assert type(twin) is type(learner) and twin is not learner and twin.options == learner.options
    assert (twin.ways, twin.input_shape) == (learner.ways, learner.input_shape)
    for (k, a), (j, b) in zip(learner.state_dict().items(), twin.state_dict().items()):
        assert k == j and a.dtype == b.dtype and torch.equal(a, b)
