"""Property: whatever mapping, file or override the loader is given, it returns a valid Config or
raises a one-line ConfigError — never another exception, never a Config out of its ranges."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metalab.algorithms  # noqa: F401  (fills the registry)
from metalab.config import (
    Config,
    DataConfig,
    EvalConfig,
    TrainConfig,
    algorithm_options,
    load_config,
    parse_config,
    validate,
)
from metalab.errors import ConfigError
from metalab.registry import ALGORITHMS

SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=70),  # small ones hit the ranges' edges
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e-3", "1e9", ".nan", "-1", "0", "true", "adam", "cosine", "cpu", "3.5"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def rarely(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`rare` one time in five, else `common`."""
    return st.integers(0, 4).flatmap(lambda i: rare if i == 0 else common)


def section(cls: type) -> st.SearchStrategy:
    """A mapping of mostly real keys of `cls` (sometimes an unknown one) to any values."""
    keys = rarely(st.sampled_from([f.name for f in dataclasses.fields(cls)]), st.text(max_size=6))
    return rarely(st.dictionaries(keys, values, max_size=4), values)


def algorithm_section() -> st.SearchStrategy:
    names = st.sampled_from(ALGORITHMS.names())
    option_names = ["hidden", "inner_lr", "inner_steps", "distance", "backbone", "x"]
    options = st.dictionaries(st.sampled_from(option_names), values, max_size=2)
    return rarely(names | st.builds(lambda n, o: {"name": n, **o}, names, options), values)


sections = st.fixed_dictionaries(
    {}, optional={"algorithm": algorithm_section()} | {n: section(c) for n, c in SECTIONS.items()}
)
configs = rarely(sections, st.builds(lambda m, v: m | {"extra": v}, sections, values))


def check_valid(cfg: Config) -> None:
    """A Config that came out is within every range, its floats finite, and loads back equal."""
    validate(cfg)
    for name in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, name)):
            v = getattr(getattr(cfg, name), f.name)
            if isinstance(v, float):
                assert math.isfinite(v), (name, f.name, v)
    algorithm_options(cfg, ALGORITHMS.get(cfg.algorithm_name).Config)
    assert parse_config(cfg.to_dict()) == cfg


def one_line(e: ConfigError) -> None:
    assert str(e) and "\n" not in str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_mapping_gives_a_valid_config_or_a_config_error(mapping):
    try:
        cfg = parse_config(mapping)
    except ConfigError as e:
        one_line(e)
    else:
        check_valid(cfg)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    configs,
    st.lists(
        st.text(max_size=20)
        | st.builds(
            "{}={}".format,
            st.sampled_from(
                [
                    "train.lr",
                    "train.steps",
                    "eval.episodes",
                    "data.image_size",
                    "algorithm",
                    "train",
                    "a.b.c",
                ]
            ),
            st.text(max_size=8),
        ),
        max_size=3,
    ),
)
def test_any_file_with_any_overrides_gives_a_valid_config_or_a_config_error(mapping, overrides):
    import yaml

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(yaml.safe_dump(mapping))
        try:
            cfg = load_config(path, overrides)
        except ConfigError as e:
            one_line(e)
        else:
            check_valid(cfg)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_any_bytes_give_a_valid_config_or_a_config_error(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(content)
        try:
            cfg = load_config(path)
        except ConfigError as e:
            one_line(e)
        else:
            check_valid(cfg)
