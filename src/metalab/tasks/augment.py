"""Image augmentations as batched tensor operations with an explicit generator.

Every image of a batch gets its own random transform, but the whole batch is transformed by a
handful of tensor operations on the images' own device (no per-image Python work):

1. **Stroke thickness** (Omniglot): ``x' = x + a·(dilate(x) − x)`` for ``a > 0`` and
   ``x' = x + |a|·(erode(x) − x)`` for ``a < 0``, ``a ~ U(−t, t)``; ``dilate`` is a 3×3 max-pool,
   ``erode`` a 3×3 min-pool (−maxpool(−x)). Bright strokes on a dark background get thicker or
   thinner.
2. **Random affine** (one ``F.affine_grid`` + ``F.grid_sample`` for the batch): the sampling map
   ``θ = R(r)·Sh(h)·diag(s, s)`` plus a translation, with ``r ~ U(±rotation)°``,
   ``h ~ U(±shear)°`` (x-shear), ``log s ~ U(±log(1+scale))`` and each shift ``~ U(±shift)`` of
   the image side. θ maps output to input coordinates (it is the inverse of the content's
   transform); every range is symmetric, so the content's transform has the same distribution.
3. **Random erasing** (Zhong et al., AAAI 2020): with probability ``erase``, one rectangle of
   area ``U(0.02, erase_area)`` of the image and aspect ratio ``exp U(±log 3)`` is set to
   ``fill``.

Randomness: each call draws exactly one ``(M, 11)`` uniform matrix from the given
``torch.Generator`` (on the generator's device, CPU or the images' device), whatever the options;
so a seed gives the same transforms on every device, and changing a strength does not shift the
random stream of later batches. ``strength`` multiplies every magnitude (shift, rotation, scale,
shear, erased area, thickness); probabilities stay as set; ``strength: 0`` is the identity.

    aug = Augment(AugmentConfig(strength=1.0))
    views = aug(images, generator)        # (M, C, H, W) float → (M, C, H, W), same device

Config (``data.augment`` in a run, a mapping checked against :class:`AugmentConfig`) also says
how unsupervised tasks take their support view (:mod:`metalab.tasks.unsupervised`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.errors import ConfigError

PADDINGS = ("zeros", "border")
SUPPORT_VIEWS = ("original", "augmented")


@dataclass
class AugmentConfig:
    strength: float = 1.0  # multiplies every magnitude below (0: identity)
    shift: float = 0.1  # max translation per axis, fraction of the image side
    rotation: float = 15.0  # max rotation, degrees
    scale: float = 0.15  # zoom factor in [1/(1+scale), 1+scale], log-uniform
    shear: float = 10.0  # max x-shear, degrees
    erase: float = 0.5  # probability of erasing one rectangle (random erasing)
    erase_area: float = 0.15  # largest erased area, fraction of the image (smallest: 0.02)
    thickness: float = 0.5  # max blend toward a 3×3 dilation (thicker) or erosion (thinner)
    fill: float = 0.0  # erased value (Omniglot's background is 0)
    padding: str = "zeros"  # outside the image after the affine map: zeros | border
    # unsupervised tasks (data.labels: none): the K support views of an image are the image itself
    # (UMTRA, Khodadadeh et al. 2019) or augmentations like the queries (Ni et al. 2022)
    support: str = "augmented"

    def __post_init__(self) -> None:
        for key in ("strength", "shift", "rotation", "scale", "shear", "erase_area", "thickness"):
            if getattr(self, key) < 0:
                raise ConfigError(
                    f"data.augment.{key} = {getattr(self, key)} is invalid: it must be ≥ 0"
                )
        if not 0.0 <= self.erase <= 1.0:
            raise ConfigError(
                f"data.augment.erase = {self.erase} is invalid: a probability in [0, 1]"
            )
        for key, value, choices in (
            ("padding", self.padding, PADDINGS),
            ("support", self.support, SUPPORT_VIEWS),
        ):
            if value not in choices:
                raise ConfigError(
                    f"data.augment.{key} '{value}' is unknown; choices: {', '.join(choices)}"
                )


def augment_config(values: dict[str, Any] | AugmentConfig | None) -> AugmentConfig:
    """The typed options of a ``data.augment`` mapping (None: the defaults); an unknown key is
    rejected with its name."""
    from metalab.config import from_dict

    if isinstance(values, AugmentConfig):
        return values
    return from_dict(AugmentConfig, values or {}, "data.augment")


def _uniform(u: Tensor, low: float | Tensor, high: float | Tensor) -> Tensor:
    return low + (high - low) * u


class Augment:
    """A random augmentation of batches of images ``(M, C, H, W)`` float (see the module
    docstring).

    Args:
        options: an :class:`AugmentConfig` (or a ``data.augment`` mapping).
    """

    DRAWS = 11  # uniforms per image and call

    def __init__(self, options: AugmentConfig | dict[str, Any] | None = None) -> None:
        self.options = augment_config(options)

    def parameters(self, m: int, generator: torch.Generator) -> Tensor:
        """The call's random draws: (M, 11) uniforms on the generator's device."""
        return torch.rand(m, self.DRAWS, generator=generator, device=generator.device)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """(M, C, H, W) float → (M, C, H, W) on the same device; M may be 0."""
        if images.dim() != 4:
            raise ConfigError(
                f"augment expects a batch of images (M, C, H, W), got shape {tuple(images.shape)}"
            )
        u = self.parameters(images.shape[0], generator).to(images.device, images.dtype)
        o, k = self.options, self.options.strength
        if images.shape[0] == 0 or k == 0:
            return images.clone()
        x = self.thickness(images, _uniform(u[:, 0], -1.0, 1.0) * o.thickness * k)
        x = self.affine(x, u[:, 1:6])
        return self.erase(x, u[:, 6:11])

    # --- the three operations, each on the whole batch ------------------------------------------
    @staticmethod
    def thickness(x: Tensor, amount: Tensor) -> Tensor:
        """Blend toward a 3×3 dilation (amount > 0) or erosion (amount < 0): (M, C, H, W), (M,)."""
        a = amount.clamp(-1.0, 1.0).view(-1, 1, 1, 1)
        dilated = F.max_pool2d(x, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
        target = torch.where(a > 0, dilated, eroded)
        return x + a.abs() * (target - x)

    def affine_matrices(self, u: Tensor) -> Tensor:
        """(M, 5) uniforms → (M, 2, 3) sampling maps θ in normalised coordinates."""
        o, k = self.options, self.options.strength
        rotation = torch.deg2rad(_uniform(u[:, 0], -1.0, 1.0) * o.rotation * k)
        shear = torch.deg2rad(_uniform(u[:, 1], -1.0, 1.0) * o.shear * k)
        log_s = math.log1p(o.scale * k)
        scale = torch.exp(_uniform(u[:, 2], -log_s, log_s))
        shift = _uniform(u[:, 3:5], -1.0, 1.0) * (2.0 * o.shift * k)  # side = 2 normalised units
        cos, sin, tan = torch.cos(rotation), torch.sin(rotation), torch.tan(shear)
        # R(r) @ [[1, tan h], [0, 1]] @ diag(s, s)
        a = torch.stack(
            [
                torch.stack([cos, cos * tan - sin], -1),
                torch.stack([sin, sin * tan + cos], -1),
            ],
            -2,
        ) * scale.view(-1, 1, 1)  # (M, 2, 2)
        return torch.cat([a, shift[:, :, None]], dim=2)  # (M, 2, 3)

    def affine(self, x: Tensor, u: Tensor) -> Tensor:
        theta = self.affine_matrices(u)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode=self.options.padding, align_corners=False
        )

    def erase(self, x: Tensor, u: Tensor) -> Tensor:
        """Random erasing of one rectangle per chosen image: (M, C, H, W), (M, 5) uniforms."""
        o = self.options
        largest = min(o.erase_area * o.strength, 1.0)
        if o.erase == 0 or largest <= 0:
            return x
        h, w = x.shape[-2:]
        area = _uniform(u[:, 0], min(0.02, largest), largest) * (h * w)
        log_r = math.log(3.0)
        ratio = torch.exp(_uniform(u[:, 1], -log_r, log_r))
        eh = (area * ratio).sqrt().clamp(1.0, h)  # (M,) heights in pixels
        ew = (area / ratio).sqrt().clamp(1.0, w)
        top = u[:, 2] * (h - eh)
        left = u[:, 3] * (w - ew)
        chosen = u[:, 4] < o.erase  # (M,) which images lose a rectangle
        rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
        cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + eh).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + ew).view(-1, 1, 1))
            & chosen.view(-1, 1, 1)
        )  # (M, H, W)
        return x.masked_fill(inside[:, None], o.fill)
