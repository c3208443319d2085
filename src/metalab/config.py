"""Run configuration: YAML files checked against typed dataclasses.

An unknown key is rejected with a message naming it (and the nearest valid key); a value of the
wrong
type names the key and the expected type. The algorithm's own options are the ``Config`` dataclass
of
the registered algorithm, so every key of a preset is checked, none is read by ``getattr`` on a
string.

    algorithm: {name: protonet, distance: euclidean}
    data:      {dataset: omniglot, scheme: vinyals}
    train:     {steps: 1000, ways: 20, shots: 1, queries: 5, lr: 0.001}
    eval:      {ways: 5, shots: 1, queries: 15, episodes: 1000}
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metalab.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "omniglot"  # a registered dataset: omniglot | folder
    data_dir: str | None = (
        None  # where the data lives (--data-dir); for `folder`, holds train/ val/ test/
    )
    scheme: str = "vinyals"  # omniglot split: vinyals | lake | lake-small1 | lake-small2
    train_split: str = "train"  # the split meta-training draws from (vinyals: train or trainval)
    val_split: str | None = (
        "val"  # the split of the fixed validation set (None, or absent: no validation)
    )
    image_size: int = 28  # images are resized to image_size × image_size
    channels: int = 1  # folder datasets: 1 (grayscale) or 3 (RGB)
    invert: bool = (
        False  # folder datasets: dark strokes on light paper → bright on dark, like Omniglot
    )
    rotations: list[int] | None = (
        None  # omniglot: rotations as new classes; None = the scheme's default
    )
    within_group: bool = False  # all N classes of a task from one alphabet (Lake et al. 2015)
    download: bool = False  # omniglot: fetch missing official zips (sha256-checked) into data_dir


@dataclass
class TrainConfig:
    steps: int = 1000  # meta-training steps (one optimizer update each)
    ways: int = 5  # N classes per training task (may exceed the test ways: ProtoNet trains with 60)
    shots: int = 1  # K support examples per class
    queries: int = 15  # Q query examples per class
    meta_batch: int = 1  # tasks per step
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3  # outer (meta) learning rate
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "step"  # constant | step | cosine
    lr_step: int = 2000  # step schedule: multiply the rate by lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    grad_clip: float | None = None  # clip the meta-gradient norm
    val_every: int = (
        500  # validate on the fixed validation episodes every val_every steps (0: never)
    )
    val_episodes: int = 500  # size of the fixed validation set (eval ways/shots/queries, val split)
    checkpoint_every: int = 100  # write last.pt every checkpoint_every steps
    log_every: int = 10  # write a metrics line every log_every steps
    max_minutes: float | None = (
        None  # wall-clock budget: stop cleanly, with checkpoints, when spent
    )
    seed: int = 0  # seeds the model's initial weights and the task sampler
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tensorboard: bool = True  # write TensorBoard logs when tensorboard is installed


@dataclass
class EvalConfig:
    split: str = "test"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 1000  # the field's protocol: 1000 fixed test episodes
    seed: int = (
        0  # the fixed episode set is a function of (split, ways, shots, queries, episodes, seed)
    )
    batch: int = 25  # episodes evaluated together (memory, not results)


@dataclass
class Config:
    algorithm: dict[str, Any] = field(default_factory=lambda: {"name": "protonet"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def algorithm_name(self) -> str:
        return str(self.algorithm["name"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce: int → float, YAML strings like '1e-3' → float) a value against a
    type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(
            f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}"
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with the nearest valid key
    named."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{where}.{key}'{hint}; valid keys: {', '.join(fields)}"
            )
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def algorithm_options(cfg: Config, options_cls: type, where: str = "algorithm") -> Any:
    """The algorithm's typed options from the ``algorithm:`` mapping (all keys but ``name``)."""
    rest = {k: v for k, v in cfg.algorithm.items() if k != "name"}
    return from_dict(options_cls, rest, where)


def parse_config(values: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested mapping (from YAML plus overrides) into a Config, including algorithm
    options."""
    from metalab.registry import ALGORITHMS

    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    values = dict(values)
    algo = values.get("algorithm", {"name": "protonet"})
    if isinstance(algo, str):
        algo = {"name": algo}
    if not isinstance(algo, dict) or "name" not in algo:
        raise ConfigError(
            f"{source}: 'algorithm' needs a 'name', one of: {', '.join(ALGORITHMS.names())}"
        )
    values["algorithm"] = algo
    try:
        cfg = from_dict(Config, values, "config")
        algorithm_options(cfg, ALGORITHMS.get(cfg.algorithm_name).Config)  # check now, not mid-run
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset, apply ``key.sub=value`` overrides (values parsed as YAML), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; presets live in configs/ (see `metalab list`)"
        )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    for item in overrides or []:
        apply_override(values, item)
    return parse_config(values, str(path))


def apply_override(values: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping (the value is parsed as YAML: 3, 1e-3, true, [0,
    90])."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.001")
    key, raw = item.split("=", 1)
    if isinstance(values.get("algorithm"), str):
        values["algorithm"] = {"name": values["algorithm"]}
    parts = key.strip().split(".")
    node = values
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: '{p}' is not a section")
    if parts == ["algorithm"]:
        parts, node = ["name"], values.setdefault("algorithm", {})
    node[parts[-1]] = yaml.safe_load(raw)
