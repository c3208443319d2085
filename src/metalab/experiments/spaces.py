"""Search spaces for ``metalab tune``: the YAML format, its checks, and each algorithm's default.

A space maps config keys (dotted, as ``--set`` takes them) to a distribution::

    train.lr:             {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    algorithm.inner_lr:   {type: float, low: 0.001, high: 1.0, log: true}
    algorithm.inner_steps: {type: int, low: 1, high: 5}
    train.ways:           {type: categorical, choices: [5, 10, 20]}

Types: ``float`` and ``int`` (``low``, ``high``, optional ``log`` or ``step``) and ``categorical``
(``choices``). Every key is checked against the config schema (an unknown key names the nearest
valid one) and both ends of each range against the key's type and declared range, before any trial
runs; each problem is one line naming the file and the key.

Default spaces (used without ``--space``) cover each family's main hyper-parameters: the outer
learning rate and its schedule for all; inner rate and steps for the optimization family; ways at
training time for classification (the metric family's main lever, ProtoNet's "higher way").
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metalab.errors import ConfigError
from metalab.experiments.errors import SearchSpaceError

FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class Param:
    """One dimension of a search space."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def clip(self, value: Any) -> Any:
        """A past value brought into this space (warm starts): clipped to the range, or None when
        a categorical value is not among the choices."""
        if self.type == "categorical":
            return value if value in self.choices else None
        try:
            v = min(max(float(value), self.low), self.high)
        except (TypeError, ValueError):
            return None
        return int(round(v)) if self.type == "int" else v

    def to_yaml(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _number(where: str, name: str, value: Any, integer: bool) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, str) and not integer:  # YAML reads 1e-4 (no dot) as a string
        try:
            value, ok = float(value), True
        except ValueError:
            ok = False
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise SearchSpaceError(f"{where}: '{name}' must be {kind}, got {value!r}")
    return value


def parse_param(key: str, spec: Any, where: str) -> Param:
    """Check one entry of a space; ``where`` names the file and key in messages."""
    if not isinstance(spec, dict):
        raise SearchSpaceError(
            f"{where}: expected a mapping such as {{type: float, low: 0.001, high: 0.1}}, got "
            f"{spec!r}"
        )
    typ = spec.get("type")
    if typ not in FIELDS:
        raise SearchSpaceError(f"{where}: 'type' is {typ!r}; choices: {', '.join(FIELDS)}")
    unknown = sorted(set(spec) - FIELDS[typ])
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown field '{unknown[0]}' for type {typ}; valid fields: "
            f"{', '.join(sorted(FIELDS[typ]))}"
        )
    if typ == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
        if any(isinstance(c, (dict, list)) for c in choices):
            raise SearchSpaceError(f"{where}: choices must be single values, got {choices!r}")
        return Param(key, typ, choices=tuple(choices))
    integer = typ == "int"
    for name in ("low", "high"):
        if name not in spec:
            raise SearchSpaceError(f"{where}: '{name}' is missing (type {typ} needs low and high)")
    low = _number(where, "low", spec["low"], integer)
    high = _number(where, "high", spec["high"], integer)
    if not low < high:
        raise SearchSpaceError(f"{where}: low {low} must be below high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: a log range needs low > 0, got low {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, integer)
        if step <= 0 or step > high - low:
            raise SearchSpaceError(f"{where}: step {step} must be in (0, high - low]")
        if log:
            raise SearchSpaceError(f"{where}: 'step' and 'log: true' cannot be combined")
    return Param(
        key, typ, float(low) if not integer else low, high if integer else float(high), log, step
    )


def check_space(space: dict[str, Param], base: dict[str, Any], source: str) -> None:
    """Every key must be a config key and every end of a range a valid value for it."""
    import metalab.algorithms  # noqa: F401 - registers the algorithms whose options are checked
    from metalab.config import apply_override, parse_config

    for key, p in space.items():
        ends = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        for value in ends:
            values = copy.deepcopy(base)
            try:
                apply_override(values, f"{key}={json.dumps(value)}")
                parse_config(values, "config")
            except ConfigError as e:
                why = str(e).removeprefix("config: ")
                if "unknown config key" in why:
                    raise SearchSpaceError(f"{source}: key '{key}': {why}") from None
                raise SearchSpaceError(
                    f"{source}: key '{key}': the value {value!r} is not valid ({why}); change the "
                    f"range"
                ) from None


def load_space(path: str | Path | None, base: dict[str, Any], algorithm: str) -> dict[str, Param]:
    """The search space of ``path`` (YAML), or the algorithm's default; checked against ``base``
    (the config mapping the trials start from)."""
    if path is None:
        raw, source = default_space(algorithm, base), f"default space of {algorithm}"
    else:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise SearchSpaceError(f"search space {path} not found; pass --space FILE.yaml")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SearchSpaceError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(
            f"{source}: expected a mapping of config keys to distributions, e.g. "
            f"'train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}'"
        )
    space = {}
    for key, spec in raw.items():
        if not isinstance(key, str) or "." not in key:
            raise SearchSpaceError(
                f"{source}: key {key!r} must be a dotted config key such as train.lr"
            )
        space[key] = parse_param(key, spec, f"{source}: key '{key}'")
    check_space(space, base, source)
    return space


OPTIMIZATION = ("maml", "fomaml", "metasgd", "anil", "pretrain")


def default_space(algorithm: str, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The default space of an algorithm, fitted to the base config (no ways for regression)."""
    train, evaluation = base.get("train") or {}, base.get("eval") or {}
    space: dict[str, dict[str, Any]] = {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "train.lr_schedule": {"type": "categorical", "choices": ["constant", "step", "cosine"]},
    }
    if algorithm in OPTIMIZATION:
        space["algorithm.inner_lr"] = {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True}
        if algorithm != "pretrain":
            space["algorithm.inner_steps"] = {"type": "int", "low": 1, "high": 5}
    elif algorithm == "reptile":
        space["algorithm.inner_lr"] = {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}
        space["algorithm.inner_steps"] = {"type": "int", "low": 1, "high": 10}
        space["train.lr"] = {"type": "float", "low": 0.01, "high": 1.0, "log": True}
    elif algorithm in ("baseline", "baseline_pp"):
        space["algorithm.finetune_lr"] = {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True}
    ways = int(evaluation.get("ways", 5) or 0)
    if ways > 0 and algorithm not in ("baseline", "baseline_pp", "mann"):
        top = max(int(train.get("ways", ways) or ways), ways)
        space["train.ways"] = {
            "type": "categorical",
            "choices": sorted({ways, 2 * ways, 4 * ways, top}),
        }
    return space


def space_yaml(space: dict[str, Param]) -> str:
    return yaml.safe_dump({k: p.to_yaml() for k, p in space.items()}, sort_keys=False)
