"""Backbones, registered by name in ``metalab.registry.BACKBONES``."""

from torch import nn

from metalab.models.conv4 import Conv4, conv_block  # noqa: F401
from metalab.models.mlp import MLP  # noqa: F401
from metalab.models.text import EmbeddingAdapter  # noqa: F401  (backbone 'adapter')
from metalab.models.transformer import build_transformer
from metalab.registry import BACKBONES


def build_backbone(name: str, **kwargs) -> nn.Module:
    """A registered backbone by name (an unknown name raises ConfigError listing the choices);
    ``transformer-topL`` is the ``transformer`` backbone training its last L layers."""
    transformer = build_transformer(name, **kwargs)
    return transformer if transformer is not None else BACKBONES.get(name)(**kwargs)
