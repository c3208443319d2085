"""Every registered algorithm trains a few steps and evaluates through the one engine.

Parametrized over the registry, so a newly registered method is tested the moment it is registered.
"""

import math

import pytest
import torch

import metalab.algorithms  # noqa: F401
from metalab.config import parse_config
from metalab.engine.build import load_learner
from metalab.engine.evaluate import evaluate
from metalab.engine.trainer import train
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import FixedEpisodes
from metalab.tasks.sources import load_split


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_trains_and_evaluates(name, data_dir, tmp_path):
    cfg = parse_config(
        {
            "algorithm": {"name": name},
            "data": {"dataset": "omniglot", "data_dir": str(data_dir)},
            "train": {
                "steps": 2,
                "ways": 5,
                "shots": 1,
                "queries": 2,
                "meta_batch": 2,
                "val_every": 2,
                "val_episodes": 4,
                "tensorboard": False,
            },
            "eval": {"ways": 5, "shots": 1, "queries": 2, "episodes": 4},
        }
    )
    result = train(cfg, tmp_path / name, progress=False)
    assert result.step == 2 and result.best_val is not None
    learner, cfg, _ = load_learner(tmp_path / name, torch.device("cpu"))
    episodes = FixedEpisodes(load_split(cfg.data, "test"), 5, 1, 2, count=4, seed=0)
    out = evaluate(learner, episodes, batch_size=2)
    assert out.per_episode.shape == (4,) and math.isfinite(out.accuracy)
    again = evaluate(learner, episodes, batch_size=4)
    assert torch.allclose(
        out.per_episode, again.per_episode
    )  # evaluation does not depend on batching
    assert isinstance(learner.protocol_report(load_split(cfg.data, "test"), cfg.eval), dict)
