"""Localisation metrics for heatmaps against ground-truth masks, and rank correlation.

Plain numpy/scipy rank statistics (no scikit-learn). Heatmaps and masks are arrays (or tensors)
of the same spatial shape; a leading batch axis is not assumed -- call per image.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "pixel_auroc",
    "threshold_heatmap",
    "iou",
    "f1_score",
    "iou_at",
    "f1_at",
    "mass_on_mask",
    "spearman",
]

logger = logging.getLogger(__name__)


def _np(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass a non-empty array.")
    return arr


def _pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    h = _np(heatmap, "heatmap").astype(np.float64).ravel()
    m_arr = _np(mask, "mask")
    if m_arr.shape != np.shape(_np(heatmap, "heatmap")):
        raise ValueError(
            f"heatmap shape {np.shape(_np(heatmap, 'heatmap'))} and mask shape {m_arr.shape} differ; "
            "resample one onto the other's grid."
        )
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmap contains NaN or infinite values.")
    return h, m_arr.astype(bool).ravel()


def pixel_auroc(heatmap: Any, mask: Any) -> float:
    """Area under the ROC curve of the heatmap as a pixel classifier of ``mask``.

    Computed with the Mann-Whitney U statistic on average ranks (ties count one half).

    Raises
    ------
    ValueError
        If the mask is all foreground or all background (AUROC undefined).
    """
    h, m = _pair(heatmap, mask)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"mask has {n_pos} foreground and {n_neg} background pixels; AUROC needs both.")
    ranks = stats.rankdata(h)
    u = ranks[m].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def threshold_heatmap(heatmap: Any, *, top_fraction: float | None = None, value: float | None = None) -> np.ndarray:
    """Binary mask of the heatmap: the top ``top_fraction`` of pixels, or pixels ``>= value``.

    Exactly one of ``top_fraction`` (0 < f <= 1; ties at the cut are broken by position) and
    ``value`` must be given.
    """
    if (top_fraction is None) == (value is None):
        raise TypeError("give exactly one of top_fraction= (e.g. 0.1 for the top 10%) or value= (a heatmap value).")
    h = _np(heatmap, "heatmap").astype(np.float64)
    if value is not None:
        return h >= value
    assert top_fraction is not None
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}.")
    k = max(1, int(round(top_fraction * h.size)))
    order = np.argsort(-h.ravel(), kind="stable")
    out = np.zeros(h.size, dtype=bool)
    out[order[:k]] = True
    return out.reshape(h.shape)


def iou(pred: Any, mask: Any) -> float:
    """Intersection over union of two binary masks (1.0 if both are empty)."""
    p, m = _np(pred, "pred").astype(bool), _np(mask, "mask").astype(bool)
    if p.shape != m.shape:
        raise ValueError(f"pred shape {p.shape} and mask shape {m.shape} differ.")
    union = np.logical_or(p, m).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, m).sum() / union)


def f1_score(pred: Any, mask: Any) -> float:
    """Dice / F1 of two binary masks (1.0 if both are empty)."""
    p, m = _np(pred, "pred").astype(bool), _np(mask, "mask").astype(bool)
    if p.shape != m.shape:
        raise ValueError(f"pred shape {p.shape} and mask shape {m.shape} differ.")
    denom = p.sum() + m.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, m).sum() / denom)


def iou_at(heatmap: Any, mask: Any, *, top_fraction: float | None = None, value: float | None = None) -> float:
    """IoU of the thresholded heatmap (see :func:`threshold_heatmap`) with ``mask``."""
    return iou(threshold_heatmap(heatmap, top_fraction=top_fraction, value=value), mask)


def f1_at(heatmap: Any, mask: Any, *, top_fraction: float | None = None, value: float | None = None) -> float:
    """F1 of the thresholded heatmap (see :func:`threshold_heatmap`) with ``mask``."""
    return f1_score(threshold_heatmap(heatmap, top_fraction=top_fraction, value=value), mask)


def mass_on_mask(heatmap: Any, mask: Any) -> float:
    """Share of the heatmap's positive mass inside ``mask`` (negative values count as 0).

    Compare with ``mask.mean()``, the share a uniform heatmap would give. Returns NaN when the
    heatmap has no positive mass.
    """
    h, m = _pair(heatmap, mask)
    pos = np.clip(h, 0.0, None)
    total = pos.sum()
    if total <= 0:
        logger.debug("mass_on_mask: heatmap has no positive mass")
        return float("nan")
    return float(pos[m].sum() / total)


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two maps of the same shape (NaN-free; 0.0 if one is constant)."""
    x = _np(a, "a").astype(np.float64).ravel()
    y = _np(b, "b").astype(np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a has {x.size} values and b has {y.size}; pass maps of the same shape.")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])
