"""The Conv-4 embedding network of the few-shot literature (Vinyals et al. 2016; Snell et al. 2017).

Four blocks of 3×3 convolution (``hidden`` filters), BatchNorm, ReLU and 2×2 max-pooling; a 28×28
Omniglot image becomes a 64-dimensional embedding (an 84×84 image, 1600).
"""

from __future__ import annotations

from torch import Tensor, nn

from metalab.registry import BACKBONES


def conv_block(
    in_channels: int, out_channels: int, pool: bool = True, track_running_stats: bool = True
) -> nn.Sequential:
    """conv 3×3 (padding 1) → BatchNorm → ReLU → max-pool 2×2.

    ``track_running_stats=False`` makes BatchNorm always normalise with the batch's own statistics
    and hold no buffers, as MAML does (Finn et al. 2017, transductive batch statistics).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """Shapes: (batch, C, H, W) → (batch, hidden · ⌊H/16⌋ · ⌊W/16⌋)."""

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        blocks: int = 4,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                conv_block(in_channels if i == 0 else hidden, hidden, True, track_running_stats)
                for i in range(blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).flatten(1)
