"""Config schema: unknown keys and wrong types are rejected with the key named; overrides apply."""

from pathlib import Path

import pytest

import metalab.algorithms  # noqa: F401
from metalab.config import load_config, parse_config
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_preset_is_valid(path):
    cfg = load_config(path)
    assert cfg.algorithm_name in ALGORITHMS


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'config.train.stpes' \(did you mean 'steps'\?\)"
    ):
        parse_config({"train": {"stpes": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'config.bogus'"):
        parse_config({"bogus": 1})


def test_unknown_algorithm_option_and_algorithm():
    with pytest.raises(ConfigError, match=r"unknown config key 'algorithm.distanse'"):
        parse_config({"algorithm": {"name": "protonet", "distanse": "cosine"}})
    with pytest.raises(ConfigError, match="unknown algorithm 'protonett' .*choices: .*protonet"):
        parse_config({"algorithm": "protonett"})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"config.train.steps: expected int, got 'many'"):
        parse_config({"train": {"steps": "many"}})


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm: protonet\ntrain: {steps: 5}\n")
    cfg = load_config(
        p,
        [
            "train.lr=1e-2",
            "algorithm.distance=cosine",
            "data.rotations=[0, 90]",
            "train.max_minutes=0.5",
        ],
    )
    assert cfg.train.lr == 0.01 and cfg.train.steps == 5 and cfg.algorithm["distance"] == "cosine"
    assert cfg.data.rotations == [0, 90] and cfg.train.max_minutes == 0.5
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(p, ["train.lr"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
