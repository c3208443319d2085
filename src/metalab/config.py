"""Run configuration: YAML files checked against typed dataclasses.

An unknown key is rejected with a message naming it (and the nearest valid key); a value of the
wrong type names the key and the expected type; a value out of its field's range names the key, the
flag and the range. Ranges are declared on the fields (:func:`option`) and checked whenever a
config section is built (``__post_init__`` of :class:`Checked`), so a value from a file, an
override, a flag or ``dataclasses.replace`` is checked the same way, once, before anything is
written. The algorithm's own options are the ``Config`` dataclass of the registered algorithm
(which may use :func:`option` and :class:`Checked` too), so every key of a preset is checked, none
is read by ``getattr`` on a string.

    algorithm: {name: protonet, distance: euclidean}
    data:      {dataset: omniglot, scheme: vinyals}
    train:     {steps: 1000, ways: 20, shots: 1, queries: 5, lr: 0.001}
    eval:      {ways: 5, shots: 1, queries: 15, episodes: 1000}
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from metalab.errors import ConfigError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; sums of seeds stay in range


@dataclass(frozen=True)
class Range:
    """The valid values of one config field: bounds (inclusive ``ge``/``le``, exclusive
    ``gt``/``lt``) and/or ``choices``; for a list, each item. ``flag`` names the CLI flag that
    sets the field, if any. Floats must also be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    flag: str | None = None

    def describe(self) -> str:
        def num(x: float) -> str:
            if isinstance(x, int) or (x.is_integer() and abs(x) < 1e16):
                return str(int(x))
            return f"{x:g}"

        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        parts = []
        if self.ge is not None:
            parts.append(f"at least {num(self.ge)}")
        if self.gt is not None:
            parts.append(f"greater than {num(self.gt)}")
        if self.le is not None:
            parts.append(f"at most {num(self.le)}")
        if self.lt is not None:
            parts.append(f"less than {num(self.lt)}")
        return " and ".join(parts) or "a finite number"

    def accepts(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its valid range, e.g. ``lr: float = option(1e-3, gt=0, le=10)``."""
    return field(
        default=default,
        default_factory=default_factory,
        metadata={"range": Range(ge, gt, le, lt, choices, flag)},
    )


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_float_field(tp: Any) -> bool:
    return tp is float or float in typing.get_args(tp)


def check_fields(obj: Any, where: str) -> None:
    """Check every field of dataclass `obj` against its declared :class:`Range` (and every float
    field for finiteness); raise a one-line ConfigError naming ``where.field`` and the flag."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value, rng = getattr(obj, f.name), f.metadata.get("range")
        if value is None or isinstance(value, bool):
            continue
        if rng is None:
            if _is_float_field(hints.get(f.name)) and isinstance(value, float):
                rng = Range()
            else:
                continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            if rng.choices is None and not numeric:
                raise ConfigError(f"{where}.{f.name}: expected a number, got {v!r}")
            if not rng.accepts(v):
                flag = f" ({rng.flag})" if rng.flag else ""
                raise ConfigError(
                    f"{where}.{f.name} = {v!r}{flag} is invalid: it must be {rng.describe()}"
                )


class Checked:
    """Mixin for config dataclasses: fields are range-checked whenever an instance is built.
    ``section`` is the prefix errors name (``train`` → ``train.lr``)."""

    section: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        check_fields(self, self.section)


@dataclass
class ClustersConfig(Checked):
    """``data.clusters``: CACTUs pseudo-labels for ``data.labels: clusters``
    (:mod:`metalab.tasks.clusters`)."""

    section: ClassVar[str] = "data.clusters"
    # a trained metalab run (directory or .pt file) whose learner embeds images (simclr, protonet,
    # matching, relation, baseline, ...); its frozen backbone embeds the training split (required)
    embedding: str | None = None
    checkpoint: str = option("best", choices=("best", "last"))  # best.pt (else last.pt) or last.pt
    k: int = option(500, ge=2, le=10**6)  # clusters per partition (CACTUs, Omniglot: 500)
    # partitions (k-means runs); each one after the first on randomly scaled embedding dimensions
    partitions: int = option(1, ge=1, le=1000)
    seed: int = option(0, ge=0, le=MAX_SEED)  # k-means++ seeding and the dimension scalings
    iterations: int = option(100, ge=1, le=100_000)  # at most so many Lloyd iterations
    # clusters with fewer images are dropped (None: none dropped from partitions: 1; partitions > 1
    # keep, per task, the clusters with at least --shots + --queries images)
    min_size: int | None = option(None, ge=1, le=10**6)


@dataclass
class DataConfig(Checked):
    section: ClassVar[str] = "data"
    dataset: str = "omniglot"  # a registered dataset: omniglot | folder | sinusoid
    # where the data lives (--data-dir); for `folder`, holds train/ val/ test/
    data_dir: str | None = None
    scheme: str = "vinyals"  # omniglot split: vinyals | lake | lake-small1 | lake-small2
    train_split: str = "train"  # the split meta-training draws from (vinyals: train or trainval)
    val_split: str | None = "val"  # the split of the fixed validation set (None: no validation)
    # images are resized to image_size × image_size (Conv-4 pools 4 times: at least 16)
    image_size: int = option(28, ge=16, le=1024)
    channels: int = option(1, choices=(1, 3))  # folder datasets: 1 (grayscale) or 3 (RGB)
    # folder datasets: dark strokes on light paper → bright on dark, like Omniglot
    invert: bool = False
    # omniglot: rotations as new classes; None = the scheme's default
    rotations: list[int] | None = option(None, choices=(0, 90, 180, 270))
    within_group: bool = False  # all N classes of a task from one alphabet (Lake et al. 2015)
    download: bool = False  # omniglot: fetch missing official zips (sha256-checked) into data_dir
    # text datasets: the sentence encoder (all-MiniLM-L6-v2, a local sentence-transformers folder,
    # or hash[-DIM]); sentences are embedded once by it and cached
    encoder: str = "all-MiniLM-L6-v2"
    # text datasets: embeddings (sentences embedded once by the frozen encoder) | tokens (token ids,
    # for algorithm.backbone transformer or transformer-topL, which fine-tune data.encoder)
    text_input: str = option("embeddings", choices=("embeddings", "tokens"))
    max_tokens: int = option(64, ge=2, le=4096)  # text_input tokens: sentences truncated to this
    # image datasets: given | none (the training split unlabeled: UMTRA tasks,
    # tasks/unsupervised.py) | clusters (k-means pseudo-labels: CACTUs, tasks/clusters.py)
    labels: str = option("given", choices=("given", "none", "clusters"))
    # augmentations of training images (tasks/augment.py AugmentConfig keys); None: not augmented
    augment: dict[str, Any] | None = None
    # data.labels: clusters: the embedding run and k-means options (ClustersConfig)
    clusters: ClustersConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels == "clusters" and (self.clusters is None or not self.clusters.embedding):
            raise ConfigError(
                "data.labels: clusters needs data.clusters.embedding: RUN_DIR (a trained metalab "
                "run whose learner embeds images, e.g. runs/simclr-unsupervised); set it"
            )
        if self.clusters is not None and self.labels != "clusters":
            raise ConfigError(
                f"data.clusters is set but data.labels is {self.labels}; set data.labels: "
                "clusters or remove data.clusters"
            )


@dataclass
class TrainConfig(Checked):
    section: ClassVar[str] = "train"
    steps: int = option(1000, ge=1, le=10**8, flag="--steps")  # meta-training steps (updates)
    # N classes per training task (0: regression; may exceed the test ways: ProtoNet trains with 60)
    ways: int = option(5, ge=0, le=10_000, flag="--ways")
    shots: int = option(1, ge=1, le=10_000, flag="--shots")  # K support examples per class
    queries: int = option(15, ge=1, le=10_000, flag="--queries")  # Q query examples per class
    meta_batch: int = option(1, ge=1, le=10_000, flag="--meta-batch")  # tasks per step
    # units (tasks, pairs, images) whose graph is held at once: the batch is processed in chunks
    # whose gradients accumulate (None: all of a process's share at once; engine/step.py)
    task_chunk: int | None = option(None, ge=1, le=10_000)
    optimizer: str = option("adam", choices=("adam", "sgd"))
    lr: float = option(1e-3, gt=0, le=10, flag="--lr")  # outer (meta) learning rate
    momentum: float = option(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = option(0.0, ge=0, le=1)
    # cosine and linear anneal to 0 at train.steps
    lr_schedule: str = option("step", choices=("constant", "step", "cosine", "linear"))
    # step schedule: multiply the rate by lr_gamma every lr_step steps
    lr_step: int = option(2000, ge=1, le=10**9)
    lr_gamma: float = option(0.5, gt=0, le=1)
    grad_clip: float | None = option(None, gt=0)  # clip the meta-gradient norm (None: never)
    # validate on the fixed validation episodes every val_every steps (0: never)
    val_every: int = option(500, ge=0, le=10**9)
    # size of the fixed validation set (eval ways/shots/queries, val split)
    val_episodes: int = option(500, ge=1, le=10**6)
    checkpoint_every: int = option(100, ge=1, le=10**9)  # write last.pt every so many steps
    log_every: int = option(10, ge=1, le=10**9)  # write a metrics line every so many steps
    # wall-clock budget of one session: stop cleanly, with checkpoints, when spent
    max_minutes: float | None = option(None, ge=0, le=10**7, flag="--max-minutes")
    # seeds the model's initial weights and the task sampler
    seed: int = option(0, ge=0, le=MAX_SEED, flag="--seed")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tensorboard: bool = True  # write TensorBoard logs when tensorboard is installed


@dataclass
class EvalConfig(Checked):
    section: ClassVar[str] = "eval"
    split: str = "test"
    ways: int = option(5, ge=0, le=10_000, flag="--ways")
    shots: int = option(1, ge=1, le=10_000, flag="--shots")
    queries: int = option(15, ge=1, le=10_000, flag="--queries")
    # the field's protocol: 1000 fixed test episodes
    episodes: int = option(1000, ge=1, le=10**6, flag="--episodes")
    # the fixed episode set is a function of (split, ways, shots, queries, episodes, seed)
    seed: int = option(0, ge=0, le=MAX_SEED, flag="--seed")
    batch: int = option(25, ge=1, le=10**5)  # episodes evaluated together (memory, not results)


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


def validate(cfg: Config) -> None:
    """Check the ranges of a Config again (its sections may have been changed in place)."""
    for section in (cfg.data, cfg.train, cfg.eval):
        check_fields(section, section.section)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _as_int(value: Any) -> int | None:
    """An int from an int, an integral float (1e4 written in YAML) or a string of either."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return None
    return None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce: int → float, YAML strings like '1e-3' → float, 1e4 → int) a value
    against a type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return _coerce(value, options[0], where)  # an optional section: its own message
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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    converted: Any = None
    if tp is bool:
        if isinstance(value, bool):
            converted = value
        elif isinstance(value, str) and value.lower() in ("true", "false"):
            converted = value.lower() == "true"
    elif tp is int:
        converted = _as_int(value)
    elif tp is float:
        converted = _as_float(value)
    elif tp is str:
        converted = value if isinstance(value, str) else None
    else:
        return value
    if converted is None:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_short(value)}")
    return converted


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value, cut to `limit` characters (one line, however long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(key: Any) -> str:
    """A mapping key as a message names it: its text, on one line, at most 40 characters."""
    text = str(key).replace("\n", "\\n")
    return text if len(text) <= 40 else text[:37] + "..."


def from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with the nearest valid key
    named; values are type-checked, then range-checked (fields declared with :func:`option`)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_short(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{where}.{_key(key)}'{hint}; valid keys: {', '.join(fields)}"
            )
    obj = cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})
    if not isinstance(obj, Checked):  # sections that are not Checked are range-checked here
        check_fields(obj, where)
    return obj


def algorithm_options(cfg: Config, options_cls: type, where: str = "algorithm") -> Any:
    """The algorithm's typed options from the ``algorithm:`` mapping (all keys but ``name``)."""
    rest = {k: v for k, v in cfg.algorithm.items() if k != "name"}
    return from_dict(options_cls, rest, where)


def parse_config(values: Any, source: str = "config") -> Config:
    """Validate a nested mapping (from YAML plus overrides) into a Config, including algorithm
    options; every type and range is checked here, before anything is built or written."""
    import metalab.algorithms  # noqa: F401  (fills the registry: a config names an algorithm)
    from metalab.registry import ALGORITHMS

    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys to values at the top level, "
            f"got {type(values).__name__}"
        )
    values = dict(values)
    algo = values.get("algorithm", {"name": "protonet"})
    if isinstance(algo, str):
        algo = {"name": algo}
    if not isinstance(algo, dict) or not isinstance(algo.get("name"), str):
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
            seen.setdefault(key, line)
        except TypeError:  # an unhashable key: the constructor below names it
            continue
        if first is not None:
            raise ConfigError(f"key '{_key(key)}' is given twice (lines {first} and {line})")
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem} (line {e.problem_mark.line + 1})"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_yaml(path: Path) -> Any:
    """A YAML file's content, or a one-line ConfigError naming the file: unreadable, not UTF-8,
    not YAML, a key given twice."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            f"save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}; keep one of them") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid YAML: nested too deeply") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset, apply ``key.sub=value`` overrides (values parsed as YAML), validate."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "not found"
        raise ConfigError(
            f"config file {path} {what}; presets live in configs/ (see `metalab list`)"
        )
    values = read_yaml(path)
    if values is None:
        raise ConfigError(
            f"{path} is empty; a config needs at least 'algorithm: NAME' "
            f"(start from a preset in configs/, see `metalab list`)"
        )
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values at the top level (like "
            f"'train: {{steps: 100}}'), got a {type(values).__name__}"
        )
    for item in overrides or []:
        apply_override(values, item)
    return parse_config(values, str(path))


def apply_override(values: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping (the value is parsed as YAML: 3, 1e-3, true,
    [0, 90])."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.001")
    key, raw = item.split("=", 1)
    if isinstance(values.get("algorithm"), str):
        values["algorithm"] = {"name": values["algorithm"]}
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: '{key}' is not a key such as train.lr")
    node = values
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: '{p}' is not a section")
    if parts == ["algorithm"]:
        if values.get("algorithm") is None:  # absent, or an empty `algorithm:` in the file
            values["algorithm"] = {}
        parts, node = ["name"], values["algorithm"]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: 'algorithm' in the file is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML: {_yaml_problem(e)}"
        ) from None
