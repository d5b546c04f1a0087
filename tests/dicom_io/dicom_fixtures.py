"""Helpers for dicom_io tests: generated CT arrays, real files shipped by pydicom / pydicom-data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest


def rotation(axis: str, degrees: float) -> np.ndarray:
    """(3, 3) rotation matrix about a patient axis."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def ct_like(shape: tuple[int, int, int] = (12, 64, 64), seed: int = 0) -> np.ndarray:
    """Integer-valued HU array (z, y, x): air, a body ellipse with lungs, a slice-dependent blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    a = np.full(shape, -1000.0)
    a[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40
    a[((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1] = -850
    a[(x**2 + (y - 0.5) ** 2) < 0.02 + 0.01 * z] = 700  # changes with z, so slice order matters
    a += rng.normal(0, 10, shape)
    return np.rint(a).astype(np.float32)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def pydicom_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"{name} is not installed (pydicom / pydicom-data)")
    return str(p)


def pydicom_series_dir(*parts: str) -> str:
    return os.path.join(os.path.dirname(pydicom_file("CT_small.dcm")), *parts)
