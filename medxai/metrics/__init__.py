"""Metrics of explanations: localisation against masks, sanity checks, validity, proximity."""

from __future__ import annotations

from medxai.metrics.localisation import (
    f1_at,
    f1_score,
    iou,
    iou_at,
    mass_on_mask,
    pixel_auroc,
    spearman,
    threshold_heatmap,
)

__all__ = [
    "f1_at",
    "f1_score",
    "iou",
    "iou_at",
    "mass_on_mask",
    "pixel_auroc",
    "spearman",
    "threshold_heatmap",
]
