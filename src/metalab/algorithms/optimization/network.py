"""The optimization family's network (MAML and its settings, Reptile, the LSTM meta-learner's
learner): a backbone with BatchNorm on batch statistics only, then a linear head with one output
per way (Finn et al. 2017, §5.2 and their code).

``track_running_stats=False``: BatchNorm normalises with the statistics of the batch it sees — the
support set in the inner loop, the whole query set after it (transductive) — holds no running
statistics, writes nothing in place under ``vmap``, and behaves the same in train and eval mode.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from metalab.algorithms.base import output_shape
from metalab.errors import ConfigError
from metalab.models import build_backbone


def check_parallel(net: nn.Module, parallel: str, name: str) -> None:
    """Refuse ``parallel: vmap`` for a backbone that cannot run under vmap (``vmappable = False``:
    the ``transformer`` backbone cuts batches by sentence length); ``auto`` finds that out alone."""
    if parallel == "vmap" and not getattr(net.backbone, "vmappable", True):
        raise ConfigError(
            f"{name} with algorithm.parallel: vmap, but backbone "
            f"'{type(net.backbone).__name__}' cannot run under vmap (its shapes depend on the "
            "data); set algorithm.parallel: loop (or auto)"
        )


def build_network(
    backbone: str, hidden: int, input_shape: tuple[int, ...], ways: int
) -> nn.Sequential:
    """``net.backbone`` then ``net.head``, a linear layer with one output per way:
    (batch, C, H, W) → (batch, ways); for regression (``ways = 0``) one output:
    (batch, *input_shape) → (batch, 1)."""
    body = build_backbone(
        backbone, in_channels=input_shape[0], hidden=hidden, track_running_stats=False
    )
    (features,) = output_shape(body, input_shape, f"backbone '{backbone}'")
    return nn.Sequential(OrderedDict(backbone=body, head=nn.Linear(features, ways or 1)))
