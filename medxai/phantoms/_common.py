"""Shared helpers for the phantom generators: seeds, smooth random fields, tube rasterisation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from scipy import ndimage

__all__ = [
    "SeedLike",
    "as_seed",
    "case_seed",
    "lowfreq_field",
    "rasterise_tube",
    "sigmoid",
]

SeedLike = int | np.integer | np.random.SeedSequence


def as_seed(seed: SeedLike, name: str = "seed") -> int:
    """Return ``seed`` as a non-negative Python ``int``.

    A ``SeedSequence`` is reduced to one 63-bit integer drawn from it, so a case made from a
    ``SeedSequence`` can be made again from the integer stored in ``case.seed``.
    """
    if isinstance(seed, np.random.SeedSequence):
        state = seed.generate_state(2, np.uint32)
        return int((int(state[0]) << 31) ^ int(state[1]))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"{name} must be an int or numpy.random.SeedSequence, got {type(seed).__name__} ({seed!r}); pass e.g. {name}=0"
        )
    if int(seed) < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}; pass a non-negative integer")
    return int(seed)


def case_seed(cohort_seed: int, index: int) -> int:
    """Seed of case ``index`` in the cohort with seed ``cohort_seed``.

    Defined as ``as_seed(np.random.SeedSequence([cohort_seed, index]))``: cohorts with different
    seeds never share a case, and case ``i`` is the same whatever the cohort size.
    """
    return as_seed(np.random.SeedSequence([as_seed(cohort_seed, "cohort seed"), int(index)]))


def sigmoid(x: float | np.ndarray) -> float | np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def lowfreq_field(rng: np.random.Generator, shape: Sequence[int], scale_vox: Sequence[float] | float) -> np.ndarray:
    """Smooth zero-mean, unit-variance random field.

    Parameters
    ----------
    rng
        Generator that supplies the white noise.
    shape
        Output shape, e.g. ``(Z, Y, X)`` or ``(H, W)``.
    scale_vox
        Correlation length in voxels per axis (or one number for all axes). The field is drawn on
        a coarse grid of about ``shape / scale`` points and interpolated, so large scales are cheap.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    if np.isscalar(scale_vox):
        scale = [float(scale_vox)] * len(shape)
    else:
        scale = [float(s) for s in scale_vox]  # type: ignore[union-attr]
    coarse = tuple(max(2, int(math.ceil(s / max(c, 1e-6))) + 2) for s, c in zip(shape, scale))
    noise = rng.standard_normal(coarse).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 0.7, mode="wrap")
    factors = [s / c for s, c in zip(shape, coarse)]
    field = ndimage.zoom(noise, factors, order=1, mode="nearest", grid_mode=True)
    field = field[tuple(slice(0, s) for s in shape)]
    if field.shape != shape:  # zoom rounding: pad by edge values
        pad = [(0, s - f) for s, f in zip(shape, field.shape)]
        field = np.pad(field, pad, mode="edge")
    field = field - field.mean()
    std = float(field.std())
    return (field / (std if std > 0 else 1.0)).astype(np.float32)


def rasterise_tube(
    out: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    radius: float,
    spacing: Sequence[float],
    soft: float | None = None,
) -> None:
    """Draw the partial-volume fraction of a capsule (tube with round ends) into ``out`` (in place).

    Parameters
    ----------
    out
        float32 array ``(Z, Y, X)`` or ``(H, W)``; updated with ``max(out, fraction)``.
    p0, p1
        End points in physical units, in the axis order of ``out`` (e.g. ``(z, y, x)`` mm), with
        voxel ``i`` at coordinate ``i * spacing``.
    radius
        Tube radius in the same units.
    spacing
        Voxel size per axis of ``out``.
    soft
        Width of the partial-volume ramp; defaults to the mean spacing (one voxel).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    soft_w = float(np.mean(sp)) if soft is None else float(soft)
    reach = radius + soft_w
    lo = np.floor((np.minimum(p0, p1) - reach) / sp).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + reach) / sp).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(out.shape))
    if np.any(hi <= lo):
        return
    d = p1 - p0
    dd = float(d @ d)
    ndim = out.ndim
    coords = []
    for ax in range(ndim):
        c = (np.arange(lo[ax], hi[ax]) * sp[ax] - p0[ax]).astype(np.float32)
        shp = [1] * ndim
        shp[ax] = -1
        coords.append(c.reshape(shp))
    if dd > 0:
        t = sum(coords[ax] * np.float32(d[ax] / dd) for ax in range(ndim))
        t = np.clip(t, 0.0, 1.0)
        dist2 = sum((coords[ax] - t * np.float32(d[ax])) ** 2 for ax in range(ndim))
    else:
        dist2 = sum(coords[ax] ** 2 for ax in range(ndim))
    frac = np.clip((radius - np.sqrt(dist2)) / soft_w + 0.5, 0.0, 1.0).astype(np.float32)
    region = tuple(slice(lo[ax], hi[ax]) for ax in range(ndim))
    np.maximum(out[region], frac, out=out[region])


T = TypeVar("T")


def preset(presets: dict[str, T], name: str, overrides: dict[str, object]) -> T:
    """The named preset config with field overrides (shared by the CT and fundus phantoms)."""
    if name not in presets:
        raise ValueError(f"name must be one of {sorted(presets)}, got {name!r}; pass name='test'")
    return dataclasses.replace(presets[name], **overrides)  # type: ignore[type-var]
