"""Quantitative image features inside a region, for the cohort report.

CT features are measured in HU on the stack grid (a value in [0, 1] of the lung window maps back to
``lo + x (hi - lo)``; HU outside the window were clipped by the transform, so a percentile at the
window's end means "at least that"):

=====================  ==========================================================================
``mean_hu``            mean attenuation
``p10_hu`` ...         10th / 50th / 90th percentile
``laa950_pct``         low-attenuation area: % of the region below -950 HU (the emphysema index)
``haa_pct``            high-attenuation area: % between -600 and -250 HU (ground glass, reticulation)
``dense_pct``          % at or above 100 HU (bone, calcium, metal: a device shows up here)
``glcm_*``             grey-level co-occurrence texture (scikit-image ``graycomatrix`` /
                       ``graycoprops``): contrast, homogeneity, energy, correlation; 32 grey levels
                       over the window, pixel pairs at distance 1 along rows and columns, both
                       pixels inside the region, pooled over the stack's slices
=====================  ==========================================================================

pyradiomics would give these and more, but it does not build on the platforms medxai supports, so
the few features the report needs are computed here from scikit-image and numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CT_FEATURES", "FEATURE_UNITS", "ct_features", "to_hu"]

CT_FEATURES: tuple[str, ...] = (
    "mean_hu", "p10_hu", "p50_hu", "p90_hu", "laa950_pct", "haa_pct", "dense_pct",
    "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation",
)  # fmt: skip
#: the unit of each feature (for tables and axis labels)
FEATURE_UNITS: dict[str, str] = {
    "mean_hu": "HU", "p10_hu": "HU", "p50_hu": "HU", "p90_hu": "HU", "laa950_pct": "%", "haa_pct": "%",
    "dense_pct": "%", "glcm_contrast": "", "glcm_homogeneity": "", "glcm_energy": "", "glcm_correlation": "",
}  # fmt: skip
_LEVELS = 32


def to_hu(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Stack values in [0, 1] -> HU of the window ``(lo, hi)``."""
    lo, hi = window
    return lo + np.asarray(x, np.float32) * (hi - lo)


def _glcm(hu: np.ndarray, mask: np.ndarray, window: tuple[float, float]) -> dict[str, float]:
    """Co-occurrence features of the region, pooled over slices: level 0 marks pixels outside the
    region, so dropping its row and column keeps only pairs with both pixels inside."""
    from skimage.feature import graycomatrix, graycoprops

    lo, hi = window
    q = np.clip(((hu - lo) / (hi - lo) * _LEVELS).astype(np.int64), 0, _LEVELS - 1) + 1
    q = np.where(mask, q, 0).astype(np.uint8)
    pooled = np.zeros((_LEVELS, _LEVELS), np.float64)
    for c in range(len(q)):
        if mask[c].sum() < 2:
            continue
        m = graycomatrix(q[c], distances=[1], angles=[0.0, np.pi / 2], levels=_LEVELS + 1, symmetric=True)
        pooled += m[1:, 1:].sum(axis=(2, 3))
    total = pooled.sum()
    if total == 0:
        return {f"glcm_{k}": float("nan") for k in ("contrast", "homogeneity", "energy", "correlation")}
    p = (pooled / total)[:, :, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {f"glcm_{k}": float(graycoprops(p, k)[0, 0]) for k in ("contrast", "homogeneity", "energy", "correlation")}


def ct_features(hu: np.ndarray, mask: np.ndarray, window: tuple[float, float]) -> dict[str, float]:
    """Every :data:`CT_FEATURES` of the region ``mask`` of one stack.

    Parameters
    ----------
    hu : np.ndarray
        ``(C, S, S)`` HU.
    mask : np.ndarray
        bool ``(C, S, S)``.
    window : tuple of float
        ``(lo, hi)`` HU of the stack's window (the texture's grey-level range).

    Returns
    -------
    dict of str to float
        NaN for every feature when the region is empty.
    """
    hu, mask = np.asarray(hu, np.float32), np.asarray(mask, bool)
    v = hu[mask]
    if v.size == 0:
        return {k: float("nan") for k in CT_FEATURES}
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    out = {
        "mean_hu": float(v.mean()),
        "p10_hu": float(p10),
        "p50_hu": float(p50),
        "p90_hu": float(p90),
        "laa950_pct": float(100.0 * (v < -950.0).mean()),
        "haa_pct": float(100.0 * ((v >= -600.0) & (v <= -250.0)).mean()),
        "dense_pct": float(100.0 * (v >= 100.0).mean()),
    }
    out.update(_glcm(hu, mask, window))
    return out
