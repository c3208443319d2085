"""Batched augmentations (tasks/augment.py): reproducible from a generator, identity at strength 0,
the geometry and the pixel operations they claim."""

import pytest
import torch

from metalab.errors import ConfigError
from metalab.tasks.augment import Augment, AugmentConfig, augment_config


def images(m=6, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(m, 1, size, size, generator=g) > 0.8).float()


def test_same_seed_same_views_and_one_draw_per_call():
    x = images()
    a, b = Augment(), Augment({"strength": 0.3, "erase": 0.0})
    out1 = a(x, torch.Generator().manual_seed(5))
    out2 = a(x, torch.Generator().manual_seed(5))
    assert out1.shape == x.shape and out1.dtype == x.dtype
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, a(x, torch.Generator().manual_seed(6)))
    # the random stream advances by the same amount whatever the options
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a(x, ga), b(x, gb)
    assert torch.equal(ga.get_state(), gb.get_state())


def test_strength_zero_is_identity():
    x = images()
    assert torch.equal(Augment({"strength": 0.0})(x, torch.Generator().manual_seed(0)), x)


def test_middle_draws_give_the_identity_map():
    aug = Augment()
    u = torch.full((3, 5), 0.5)  # every symmetric range at its centre
    theta = aug.affine_matrices(u)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))
    x = images(3)
    assert torch.allclose(aug.affine(x, u), x, atol=1e-5)


def test_largest_rotation_of_90_degrees_is_rot90():
    aug = Augment({"rotation": 90.0})
    u = torch.full((4, 5), 0.5)
    u[:, 0] = 1.0  # +90°
    x = images(4)
    out = aug.affine(x, u)
    assert any(torch.allclose(out, torch.rot90(x, k, (-2, -1)), atol=1e-4) for k in (1, -1))


def test_shift_moves_the_content_by_the_stated_fraction():
    aug = Augment({"shift": 0.25})
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 14, 14] = 1.0
    u = torch.full((1, 5), 0.5)
    u[0, 3] = 1.0  # x-shift at its largest: a quarter of the side = 7 pixels
    out = aug.affine(x, u)
    col = int(out[0, 0].sum(0).argmax())
    assert abs(col - 14) == 7


def test_thickness_dilates_and_erodes():
    x = torch.zeros(2, 1, 28, 28)
    x[:, 0, 10:18, 12:15] = 1.0  # a 3-pixel-wide stroke
    out = Augment.thickness(x, torch.tensor([1.0, -1.0]))
    assert out[0].sum() > x[0].sum()  # thicker
    assert out[1].sum() < x[1].sum()  # thinner
    assert torch.equal(Augment.thickness(x, torch.zeros(2)), x)


def test_erasing_removes_one_rectangle_of_the_stated_area():
    aug = Augment({"erase": 1.0, "erase_area": 0.2, "fill": 0.0})
    x = torch.ones(200, 1, 28, 28)
    out = aug.erase(x, torch.rand(200, 5, generator=torch.Generator().manual_seed(0)))
    erased = (out == 0).flatten(1).float().mean(1)
    assert bool((erased > 0).all())
    assert float(erased.max()) <= 0.2 + 2 * 28 / 784  # area bound, up to pixel rounding
    none = Augment({"erase": 0.0}).erase(x, torch.rand(200, 5))
    assert torch.equal(none, x)


def test_runs_on_the_generators_device_and_handles_empty_batches():
    aug = Augment()
    out = aug(torch.zeros(0, 1, 28, 28), torch.Generator().manual_seed(0))
    assert out.shape == (0, 1, 28, 28)
    with pytest.raises(ConfigError, match="M, C, H, W"):
        aug(torch.zeros(28, 28), torch.Generator())


def test_options_are_checked():
    with pytest.raises(ConfigError, match="data.augment.rotaton"):
        augment_config({"rotaton": 10})
    with pytest.raises(ConfigError, match="data.augment.shift"):
        AugmentConfig(shift=-1)
    with pytest.raises(ConfigError, match="data.augment.support 'both'"):
        AugmentConfig(support="both")
    with pytest.raises(ConfigError, match="data.augment.erase"):
        AugmentConfig(erase=2.0)
