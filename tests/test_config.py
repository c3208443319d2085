"""Config schema: unknown keys, wrong types and out-of-range values are rejected with the key (and
flag) named; files that are not a config are refused in one line; overrides apply."""

import dataclasses
from pathlib import Path

import pytest

import metalab.algorithms  # noqa: F401
from metalab.config import (
    EvalConfig,
    Range,
    from_dict,
    load_config,
    option,
    parse_config,
    validate,
)
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


# --- ranges: declared on the fields, checked once at load time ----------------------------------

OUT_OF_RANGE = [
    (
        "train.lr=-1",
        r"train.lr = -1.0 \(--lr\) is invalid: it must be greater than 0 and at most 10",
    ),
    ("train.lr=.nan", r"train.lr = nan \(--lr\)"),
    ("train.lr=.inf", r"train.lr = inf \(--lr\)"),
    ("train.lr_step=0", r"train.lr_step = 0 is invalid: it must be at least 1"),
    ("eval.batch=0", r"eval.batch = 0 is invalid"),
    (
        f"train.seed={2**64}",
        r"train.seed = 18446744073709551616 \(--seed\) .*at most 9223372036854775807",
    ),
    ("train.seed=-1", r"train.seed = -1"),
    ("data.image_size=1", r"data.image_size = 1 is invalid: it must be at least 16"),
    ("eval.episodes=1e9", r"eval.episodes = 1000000000 \(--episodes\) .*at most 1000000"),
    ("train.grad_clip=-1", r"train.grad_clip = -1.0 is invalid: it must be greater than 0"),
    ("train.lr_gamma=-0.5", r"train.lr_gamma = -0.5"),
    ("train.queries=0", r"train.queries = 0 \(--queries\)"),
    ("eval.queries=0", r"eval.queries = 0 \(--queries\)"),
    ("train.steps=0", r"train.steps = 0 \(--steps\)"),
    ("train.ways=-1", r"train.ways = -1 \(--ways\)"),
    ("train.meta_batch=0", r"train.meta_batch = 0 \(--meta-batch\)"),
    ("train.checkpoint_every=0", r"train.checkpoint_every = 0"),
    ("train.log_every=0", r"train.log_every = 0"),
    ("train.val_episodes=0", r"train.val_episodes = 0"),
    ("train.val_every=-1", r"train.val_every = -1"),
    ("train.momentum=1", r"train.momentum = 1.0 is invalid: it must be at least 0 and less than 1"),
    ("train.weight_decay=-0.1", r"train.weight_decay = -0.1"),
    ("train.max_minutes=-1", r"train.max_minutes = -1.0 \(--max-minutes\)"),
    ("train.optimizer=adamw", r"train.optimizer = 'adamw' is invalid: it must be one of adam, sgd"),
    ("train.lr_schedule=exp", r"train.lr_schedule = 'exp' is invalid: .*step, cosine, linear"),
    ("data.channels=2", r"data.channels = 2 is invalid: it must be one of 1, 3"),
    ("data.rotations=[0, 45]", r"data.rotations = 45 is invalid: it must be one of 0, 90, 180"),
]


@pytest.fixture
def preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm: protonet\ntrain: {steps: 5}\n")
    return p


@pytest.mark.parametrize("override, match", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_values_are_refused_naming_key_flag_and_range(preset, override, match):
    with pytest.raises(ConfigError, match=match) as caught:
        load_config(preset, [override])
    assert str(caught.value).startswith(f"{preset}: ") and "\n" not in str(caught.value)


def test_integral_floats_are_ints_and_other_floats_are_not():
    assert parse_config({"train": {"steps": 1e4}}).train.steps == 10000
    assert parse_config({"train": {"steps": "2e3"}}).train.steps == 2000
    with pytest.raises(ConfigError, match=r"config.train.steps: expected int, got 1.5"):
        parse_config({"train": {"steps": 1.5}})
    with pytest.raises(ConfigError, match=r"config.train.lr: expected float, got 1000000000"):
        parse_config({"train": {"lr": 10**400}})


def test_ranges_hold_however_a_section_is_built():
    with pytest.raises(ConfigError, match=r"eval.episodes = 1000000000 \(--episodes\)"):
        dataclasses.replace(EvalConfig(), episodes=10**9)  # how `metalab eval` applies its flags
    cfg = parse_config({})
    cfg.train.lr = -1.0  # changed in place after loading
    with pytest.raises(ConfigError, match=r"train.lr = -1.0"):
        validate(cfg)


def test_option_works_for_any_dataclass_such_as_an_algorithms_config():
    @dataclasses.dataclass
    class Options:  # not a Checked section: from_dict checks the ranges
        inner_lr: float = option(0.4, gt=0, flag="--inner-lr")
        inner_steps: int = option(1, ge=0, le=100)
        mode: str = option("vmap", choices=("vmap", "loop"))

    assert from_dict(Options, {"inner_steps": 5}, "algorithm").inner_steps == 5
    with pytest.raises(ConfigError, match=r"algorithm.inner_lr = 0.0 \(--inner-lr\) .*greater th"):
        from_dict(Options, {"inner_lr": 0}, "algorithm")
    with pytest.raises(ConfigError, match=r"algorithm.inner_steps = 101 .*at most 100"):
        from_dict(Options, {"inner_steps": 101}, "algorithm")
    with pytest.raises(ConfigError, match=r"algorithm.mode = 'jit' .*one of vmap, loop"):
        from_dict(Options, {"mode": "jit"}, "algorithm")
    assert Range(ge=1, le=10**6).describe() == "at least 1 and at most 1000000"


# --- files that are not a config ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content, match",
    [
        (b"5\n", r"expected a mapping of keys to values at the top level .*got a int"),
        (b"- train\n- eval\n", r"expected a mapping .*got a list"),
        (b"", r"is empty; a config needs at least 'algorithm: NAME'"),
        (b"# only a comment\n", r"is empty"),
        (b"train: {steps: 5}\nnote: caf\xe9\n", r"is not UTF-8 text \(byte 0xe9 at offset 27\)"),
        (b"train:\n  lr: 0.1\n  lr: 0.2\n", r"key 'lr' is given twice \(lines 2 and 3\); keep one"),
        (b"algorithm: maml\nalgorithm: protonet\n", r"key 'algorithm' is given twice"),
        (b"train: {steps: 5, steps: 6}\n", r"key 'steps' is given twice"),
        (b"train: [unclosed\n", r"is not valid YAML: .*\(line 2\)"),
        (b"train: !!python/object:os.system {}\n", r"is not valid YAML"),
    ],
)
def test_files_that_are_not_a_config_are_refused_in_one_line(tmp_path, content, match):
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as caught:
        load_config(p)
    assert str(p) in str(caught.value) and "\n" not in str(caught.value)


def test_merge_keys_and_a_byte_order_mark_are_fine(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_bytes(
        b"\xef\xbb\xbfalgorithm: protonet\ntrain: &t {steps: 5, lr: 0.1}\neval: {ways: 5}\n"
    )
    assert load_config(p).train.lr == 0.1
    q = tmp_path / "merge.yaml"
    q.write_text("algorithm: protonet\nbase: &b {lr: 0.1}\n")  # merge sources are not config keys
    with pytest.raises(ConfigError, match="unknown config key 'config.base'"):
        load_config(q)


def test_broken_overrides_are_refused_in_one_line(preset, tmp_path):
    with pytest.raises(ConfigError, match=r"--set 'train.lr=\[': the value is not valid YAML"):
        load_config(preset, ["train.lr=["])
    with pytest.raises(ConfigError, match=r"--set 'train..lr=1': 'train..lr' is not a key"):
        load_config(preset, ["train..lr=1"])
    empty_section = tmp_path / "e.yaml"
    empty_section.write_text("algorithm: protonet\ntrain:\n")
    assert load_config(empty_section, ["train.lr=0.01"]).train.lr == 0.01


def test_algorithm_override_on_an_empty_or_scalar_algorithm_section(tmp_path):
    """Found by the fuzz test: `algorithm:` left empty (None) or a number in the file, then
    `--set algorithm=NAME`, raised a raw TypeError."""
    from metalab.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("algorithm:\ntrain: {}\n")
    assert load_config(path, ["algorithm=protonet"]).algorithm_name == "protonet"
    with pytest.raises(ConfigError, match="needs a 'name'"):
        load_config(path, ["algorithm="])
    path.write_text("algorithm: 3\n")
    with pytest.raises(ConfigError, match="not a section"):
        load_config(path, ["algorithm=protonet"])
