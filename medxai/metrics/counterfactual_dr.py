"""Counterfactual metrics for diabetic-retinopathy fundus images with known lesion masks (phantoms).

* target rate -- share of counterfactuals the black box assigns to the target class;
* L1 outside lesions -- mean ``|x_cf - x|`` over channels and the field-of-view pixels outside the
  lesion mask (images in [0, 1]); what changed that should not have;
* lesion AUROC -- pixel AUROC of the difference heatmap against the lesion mask, over the
  field-of-view pixels (:func:`medxai.metrics.localisation.pixel_auroc`); undefined (NaN, left out
  of the mean) for images without lesions.

:func:`summarise_dr_counterfactuals` reads all three from a typed
:class:`~medxai.explanation.Explanation` (the counterfactual is its sweep's largest step).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from medxai.metrics.localisation import pixel_auroc

__all__ = [
    "target_rate",
    "l1_outside_lesions",
    "lesion_auroc",
    "fov_from_images",
    "evaluate_dr_counterfactuals",
    "summarise_dr_counterfactuals",
]

logger = logging.getLogger(__name__)


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def fov_from_images(images: Any, threshold: float = 1e-6) -> np.ndarray:
    """Field of view ``(N, H, W)`` bool of fundus crops ``(N, 3, H, W)`` zeroed outside it."""
    x = _np(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}.")
    return x.max(axis=1) > threshold


def target_rate(cf_logits: Any, target: int) -> float:
    """Share of rows of ``cf_logits`` ``(N, K)`` whose argmax is ``target``."""
    lo = _np(cf_logits)
    if lo.ndim != 2:
        raise ValueError(f"cf_logits must be (N, K), got shape {lo.shape}.")
    k = lo.shape[1]
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not -k <= int(target) < k:
        raise ValueError(f"target must be a class index in 0..{k - 1}, got {target!r}.")
    return float((lo.argmax(1) == int(target) % k).mean())


def l1_outside_lesions(query: Any, counterfactual: Any, lesions: Any, fov: Any | None = None) -> np.ndarray:
    """Per-image mean absolute change ``(N,)`` outside the lesions (inside the FOV if given).

    Parameters
    ----------
    query, counterfactual : array ``(N, C, H, W)`` in [0, 1]
    lesions : array ``(N, H, W)`` or ``(N, 1, H, W)``
    fov : array ``(N, H, W)`` or ``(N, 1, H, W)``, optional
    """
    q, c = _np(query).astype(np.float64), _np(counterfactual).astype(np.float64)
    if q.shape != c.shape or q.ndim != 4:
        raise ValueError(f"query {q.shape} and counterfactual {c.shape} must both be (N, C, H, W).")
    les = _np(lesions).reshape(q.shape[0], *q.shape[2:]).astype(bool)
    keep = ~les
    if fov is not None:
        keep &= _np(fov).reshape(q.shape[0], *q.shape[2:]).astype(bool)
    diff = np.abs(c - q).mean(axis=1)
    out = np.array([diff[i][keep[i]].mean() if keep[i].any() else np.nan for i in range(q.shape[0])])
    return out


def lesion_auroc(heatmaps: Any, lesions: Any, fov: Any | None = None) -> np.ndarray:
    """Per-image pixel AUROC ``(N,)`` of heatmaps ``(N, H, W)`` / ``(N, 1, H, W)`` against lesion masks
    (over the FOV pixels if given); NaN where an image has no lesion pixel."""
    h = _np(heatmaps)
    n = h.shape[0]
    h = h.reshape(n, *h.shape[-2:]).astype(np.float64)
    les = _np(lesions).reshape(n, *h.shape[1:]).astype(bool)
    keep = np.ones_like(les) if fov is None else _np(fov).reshape(n, *h.shape[1:]).astype(bool)
    out = np.full(n, np.nan)
    for i in range(n):
        m = les[i][keep[i]]
        if m.any() and (~m).any():
            out[i] = pixel_auroc(h[i][keep[i]], m)
    return out


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan


def evaluate_dr_counterfactuals(
    query: Any,
    counterfactual: Any,
    cf_logits: Any,
    target: int,
    lesions: Any,
    heatmaps: Any,
    fov: Any | None = None,
) -> dict[str, Any]:
    """All three figures for one set of counterfactuals.

    Returns
    -------
    dict
        ``target_rate``, ``l1_outside_lesions`` (mean), ``lesion_auroc`` (mean over images with
        lesions), ``n``, ``n_with_lesions``, and the per-image arrays under ``per_image``.
    """
    l1 = l1_outside_lesions(query, counterfactual, lesions, fov)
    auc = lesion_auroc(heatmaps, lesions, fov)
    return {
        "target_rate": target_rate(cf_logits, target),
        "l1_outside_lesions": _nanmean(l1),
        "lesion_auroc": _nanmean(auc),
        "n": int(len(l1)),
        "n_with_lesions": int(np.isfinite(auc).sum()),
        "per_image": {"l1_outside_lesions": l1.tolist(), "lesion_auroc": auc.tolist()},
    }


def summarise_dr_counterfactuals(
    query: Any,
    explanation: Any,
    lesions: Any,
    fov: Any | None = None,
    *,
    target: int | None = None,
    step: float | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_dr_counterfactuals` of a counterfactual method's :class:`~medxai.explanation.Explanation`.

    Parameters
    ----------
    query : array ``(N, C, H, W)``
        The explained images.
    explanation : Explanation
        With a sweep (``DVCE.explain``: one step, ``+1``); its heatmaps ``(N, 1, H, W)`` are scored.
    lesions, fov :
        As in :func:`evaluate_dr_counterfactuals`.
    target : int, optional
        The class the counterfactuals should reach (default: ``explanation.target_class``).
    step : float, optional
        Which step of the sweep is the counterfactual (default: its largest).

    Returns
    -------
    dict
        As :func:`evaluate_dr_counterfactuals`, plus ``step``.
    """
    sweep = getattr(explanation, "sweep", None)
    if sweep is None:
        raise ValueError(
            f"explanation of {explanation.method!r} has no counterfactual sweep; pass a counterfactual method's Explanation."
        )
    k = explanation.target_class if target is None else target
    if k is None:
        raise ValueError("the explanation has no target_class; pass target= (the class the counterfactuals should reach).")
    s = sweep.steps[-1] if step is None else float(step)
    i = sweep.index(s)
    heat = explanation.heatmaps_numpy()
    out = evaluate_dr_counterfactuals(query, sweep.at(s), _np(sweep.logits)[:, i], int(k), lesions, heat.sum(axis=1), fov)
    out["step"] = s
    return out
