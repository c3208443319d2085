"""A multi-layer perceptron backbone: the sinusoid regression network of Finn et al. (2017, §5.1).

``depth`` hidden layers of ``hidden`` units, each Linear → ReLU, on inputs flattened to vectors of
``in_channels`` features. With the default ``hidden = 40, depth = 2`` and a 1-output linear head
(added by the algorithm, as for every backbone) it is the paper's 1-40-40-1 ReLU network. No
BatchNorm, so ``track_running_stats`` (accepted for interchangeability with Conv-4) changes nothing.
"""

from __future__ import annotations

from torch import Tensor, nn

from metalab.registry import BACKBONES


@BACKBONES.register("mlp")
class MLP(nn.Module):
    """Shapes: (batch, in_channels) → (batch, hidden)."""

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 40,
        depth: int = 2,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        del track_running_stats  # no normalisation layers
        sizes = [in_channels] + [hidden] * depth
        self.layers = nn.Sequential(
            *[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))
