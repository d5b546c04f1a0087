"""Cone projection maths, the random augmentations, and the guidance combination."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.diffusion.guidance import (
    AugmentConfig,
    DVCEGuidance,
    GuidanceConfig,
    RandomAugment,
    angle_degrees,
    cone_projection,
)


def _vec(deg: float, norm: float = 1.0) -> torch.Tensor:
    r = math.radians(deg)
    return torch.tensor([[math.cos(r) * norm, math.sin(r) * norm, 0.0]])


@pytest.mark.parametrize("inside", [0.0, 10.0, 29.9])
def test_cone_inside_unchanged(inside: float) -> None:
    g_n = _vec(0.0, 2.0)
    g_r = _vec(inside, 3.0)
    torch.testing.assert_close(cone_projection(g_r, g_n, 30.0), g_r)


@pytest.mark.parametrize("outside", [31.0, 60.0, 120.0, 179.0, -75.0])
def test_cone_outside_rotated_to_alpha_in_plane(outside: float) -> None:
    g_n = _vec(0.0, 2.0)
    g_r = _vec(outside, 3.0)
    out = cone_projection(g_r, g_n, 30.0)
    assert float(angle_degrees(out, g_n)) == pytest.approx(30.0, abs=1e-4)
    assert float(out.norm()) == pytest.approx(3.0, rel=1e-5)
    assert float(out[0, 2]) == pytest.approx(0.0, abs=1e-6)  # stays in the g_n-g_r plane
    assert math.copysign(1.0, float(out[0, 1])) == math.copysign(1.0, math.sin(math.radians(outside)))  # towards g_r


def test_cone_high_dimensional_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    g_r = torch.randn((5, 3, 8, 8), generator=gen)
    g_n = torch.randn((5, 3, 8, 8), generator=gen)
    g_n[0] = g_r[0] + 0.01 * g_n[0]  # nearly parallel: unchanged
    out = cone_projection(g_r, g_n, 30.0)
    assert out.shape == g_r.shape
    torch.testing.assert_close(out[0], g_r[0])
    ang = angle_degrees(out, g_n)
    assert torch.all(ang[1:] <= 30.0 + 1e-3) and torch.all(ang[1:] >= 30.0 - 1e-3)
    # in the plane: out is a combination of g_n and g_r
    for i in range(1, 5):
        basis = torch.stack([g_n[i].flatten(), g_r[i].flatten()], 1)
        coef = torch.linalg.lstsq(basis, out[i].flatten()[:, None]).solution
        torch.testing.assert_close(basis @ coef, out[i].flatten()[:, None], atol=1e-4, rtol=1e-4)
        assert float(coef[1]) > 0  # rotated towards g_r


def test_cone_bad_angle() -> None:
    with pytest.raises(ValueError, match="alpha_deg"):
        cone_projection(torch.ones(1, 2), torch.ones(1, 2), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        cone_projection(torch.ones(1, 2), torch.ones(1, 3), 30.0)


def test_augment_shapes_determinism_and_identity() -> None:
    x = torch.rand(2, 3, 16, 16)
    aug = RandomAugment(AugmentConfig(), n=3)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    ident = RandomAugment(AugmentConfig(rotate_deg=0, scale=0, translate=0, perspective=0), n=1)
    assert torch.equal(ident(x), x)
    # zero ranges but several copies: exact copies (the identity homography)
    copies = RandomAugment(AugmentConfig(rotate_deg=0, scale=0, translate=0, perspective=0), n=2)(x)
    torch.testing.assert_close(copies[:2], x, atol=1e-5, rtol=1e-5)
    state = torch.random.get_rng_state()
    aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_augment_is_differentiable() -> None:
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    RandomAugment(n=2)(x, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_guidance_combination_scales_to_eps_norm() -> None:
    guide = DVCEGuidance(
        lambda z: z.sum((1, 2, 3)), None, GuidanceConfig(mode="plain", classifier_scale=0.1, distance_scale=0.15)
    )
    g_c = torch.randn(2, 3, 4, 4)
    g_d = 100 * torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    g = guide.combine(g_c, None, eps)
    torch.testing.assert_close(g.flatten(1).norm(dim=1), 0.1 * eps.flatten(1).norm(dim=1))
    both = guide.combine(g_c, g_d, eps)
    torch.testing.assert_close(
        both - g, -0.15 * g_d / g_d.flatten(1).norm(dim=1).reshape(2, 1, 1, 1) * eps.flatten(1).norm(dim=1).reshape(2, 1, 1, 1)
    )


def test_distance_gradient_points_back_to_query() -> None:
    guide = DVCEGuidance(lambda z: 0.0 * z.sum((1, 2, 3)), None, GuidanceConfig(mode="plain", n_augmentations=1, distance_p=2.0))
    query = torch.zeros(1, 3, 4, 4)
    x0 = torch.ones(1, 3, 4, 4)
    _, g_d = guide.image_space_gradients(x0, query, None, torch.Generator().manual_seed(0))
    assert g_d is not None and torch.all(g_d > 0)  # descent (-g_d) moves x0 towards the query
    off = GuidanceConfig(mode="plain", distance_scale=0.0)
    _, none = DVCEGuidance(lambda z: z.sum((1, 2, 3)), None, off).image_space_gradients(x0, query, None, None)
    assert none is None


def test_guidance_needs_its_classifiers() -> None:
    with pytest.raises(TypeError, match="robust"):
        DVCEGuidance(lambda z: z, None, GuidanceConfig(mode="cone"))
    with pytest.raises(TypeError, match="plain"):
        DVCEGuidance(None, lambda z: z, GuidanceConfig(mode="plain"))
