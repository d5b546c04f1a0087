"""A synthetic CT cohort with a planted answer, for the cohort report's tests (numbers and pipeline)."""

from __future__ import annotations

import numpy as np

from medxai.biomarkers.analysis import CaseImages
from medxai.biomarkers.regions import ct_regions

WINDOW = (-1350.0, 150.0)
FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def chest(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """HU ``(4, S, S)``: a body ellipse at 40 HU holding two lung ellipses at -850 HU; and the lung mask."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    body = (xx / 0.95) ** 2 + (yy / 0.75) ** 2 <= 1
    lungs = (((xx - 0.42) / 0.3) ** 2 + (yy / 0.55) ** 2 <= 1) | (((xx + 0.42) / 0.3) ** 2 + (yy / 0.55) ** 2 <= 1)
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(lungs, -850.0, hu)
    return np.repeat(hu[None], 4, 0).astype(np.float32), np.repeat(lungs[None], 4, 0)


def to_unit(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return np.clip((hu - lo) / (hi - lo), 0, 1).astype(np.float32)


def planted_cohort(n: int = 24, seed: int = 0) -> list[CaseImages]:
    """Label-1 patients have a quarter of the lower rind at high attenuation (-400 HU; the outcome's
    feature); toward the target every counterfactual makes the whole lower rind so. Half the cases,
    whatever the label, carry a device at the chest wall, which every counterfactual toward the
    target draws denser (the shortcut). Away from the target the lower rind darkens by 200 HU."""
    rng = np.random.default_rng(seed)
    hu0, lungs = chest()
    regions = ct_regions(hu0, lungs, FRACTIONS)
    out = []
    device = np.zeros_like(lungs)
    device[:, 14:18, 0:3] = True
    device &= regions["chest_wall"]
    for i in range(n):
        label = i % 2
        q = hu0 + rng.normal(0, 15, hu0.shape).astype(np.float32)
        patchy = regions["lower_rind"] & (rng.random(q.shape) < 0.25)
        q = np.where(patchy & bool(label), -400.0, q)
        has_device = (i // 2) % 2 == 1
        q = np.where(device & has_device, 120.0, q)
        base = q + rng.normal(0, 10, q.shape).astype(np.float32)
        toward = base + rng.normal(0, 10, q.shape).astype(np.float32)
        toward = np.where(regions["lower_rind"], -400.0 + rng.normal(0, 10, q.shape), toward)
        toward = np.where(device, 140.0, toward)
        away = base + rng.normal(0, 10, q.shape).astype(np.float32)
        away = np.where(regions["lower_rind"], away - 200.0, away)
        out.append(CaseImages(f"c{i:02d}", label, to_unit(q), to_unit(base), to_unit(toward), to_unit(away), lungs))
    return out
