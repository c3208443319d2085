"""Building the pieces of a run: the device, a learner from a config, a learner from a
checkpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

import metalab.algorithms  # noqa: F401  (fills the registry)
from metalab.algorithms.base import MetaLearner
from metalab.config import Config, parse_config
from metalab.engine.checkpoint import load_checkpoint, resolve_checkpoint
from metalab.errors import CheckpointError, ConfigError
from metalab.models.transformer import encoder_scope
from metalab.registry import ALGORITHMS


def resolve_device(name: str) -> torch.device:
    """auto → cuda when available, else cpu; an unavailable cuda is an error, not a silent
    fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"--device {name!r} is unknown; choices: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name} but no CUDA device is available; use --device cpu or auto"
        )
    return device


def build_learner(cfg: Config, input_shape: tuple[int, ...], seed: int) -> MetaLearner:
    """The configured algorithm with initial weights drawn from `seed` (the global RNG is left as it
    was)."""
    cls = ALGORITHMS.get(cfg.algorithm_name)
    scope = contextlib.nullcontext()
    if cfg.data.text_input == "tokens":  # a 'transformer' backbone fine-tunes data.encoder
        backbone = str(cfg.algorithm.get("backbone", ""))
        if not backbone.startswith("transformer"):
            raise ConfigError(
                f"data.text_input: tokens gives the learner token ids, which only a transformer "
                f"backbone reads, but algorithm.backbone is '{backbone or 'none'}'; set "
                "algorithm.backbone: transformer or transformer-topL (a learner without a "
                "backbone option reads data.text_input: embeddings)"
            )
        scope = encoder_scope(cfg.data.encoder)
    with torch.random.fork_rng(devices=[]), scope:
        torch.manual_seed(seed)
        return cls.from_config(cfg, tuple(input_shape))


def load_learner(
    target: str | Path, device: torch.device, which: str = "best"
) -> tuple[MetaLearner, Config, dict[str, Any]]:
    """A trained learner from a run directory or checkpoint file, with its config and checkpoint
    state."""
    path = resolve_checkpoint(target, which)
    state = load_checkpoint(path)
    if state["algorithm"] not in ALGORITHMS:
        raise CheckpointError(
            f"{path} was written by algorithm '{state['algorithm']}', which this metalab "
            f"does not have; choices: {', '.join(ALGORITHMS.names())}"
        )
    cfg = parse_config(state["config"], str(path))
    learner = build_learner(cfg, tuple(state["input_shape"]), seed=0)
    try:
        learner.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(
            f"{path}: the weights do not fit a '{cfg.algorithm_name}' model ({first})"
        ) from None
    return learner.to(device), cfg, state | {"path": path}
