"""Metrics of counterfactual explanations (DiffExplainer's three criteria, made measurable).

(1) reconstruction: PSNR/SSIM of the unmanipulated decode vs the query, change of the teacher's
score; (2) observable yet local: change outside the lungs, pixel AUROC of the heatmap vs the
biomarker mask; (3) manipulation: flip rate and monotonicity of the TEACHER's score over the step
sweep; plus agent-teacher agreement. Inputs are tensors or arrays; images in [0, 1].
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from scipy import stats

from medxai.metrics.localisation import pixel_auroc

__all__ = [
    "psnr",
    "ssim",
    "score_change",
    "flip_rate",
    "monotonicity",
    "change_outside",
    "heatmap_auroc",
    "agent_teacher_agreement",
    "summarise_diffexplainer",
]

logger = logging.getLogger(__name__)


def _t(a: Any) -> torch.Tensor:
    return a.detach().float().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a), dtype=torch.float32)


def psnr(a: Any, b: Any, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) per image of ``(B, ...)`` arrays; ``inf`` for identical images."""
    x, y = _t(a), _t(b)
    if x.shape != y.shape:
        raise ValueError(f"a has shape {tuple(x.shape)} and b {tuple(y.shape)}; pass images of the same shape.")
    mse = ((x - y) ** 2).reshape(x.shape[0], -1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(a: Any, b: Any, data_range: float = 1.0, win_size: int = 7) -> torch.Tensor:
    """Mean SSIM per image of ``(B, C, H, W)`` arrays (MONAI's Gaussian-window SSIM, per channel)."""
    from monai.metrics.regression import compute_ssim_and_cs

    x, y = _t(a), _t(b)
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(f"ssim needs two (B, C, H, W) arrays of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    bsz, c = x.shape[:2]
    win = min(win_size, x.shape[-1], x.shape[-2])
    win -= 1 - win % 2
    s, _ = compute_ssim_and_cs(
        x.reshape(bsz * c, 1, *x.shape[2:]), y.reshape(bsz * c, 1, *x.shape[2:]), spatial_dims=2,
        kernel_size=(win, win), kernel_sigma=(1.5, 1.5), data_range=data_range, kernel_type="gaussian",
    )
    return s.reshape(bsz, c, -1).mean((1, 2))


def score_change(query_scores: Any, other_scores: Any) -> torch.Tensor:
    """Absolute change of each score, ``|other - query|``, same shape as the inputs."""
    return (_t(other_scores) - _t(query_scores)).abs()


def flip_rate(query_logits: Any, plus_logits: Any, minus_logits: Any, class_index: int) -> float:
    """Fraction of cases whose teacher decision flips at the largest step of the sweep.

    A case the teacher assigns to ``class_index`` must leave it in the ``z-`` counterfactual; any other
    case must move to ``class_index`` in the ``z+`` counterfactual.

    Parameters
    ----------
    query_logits : (B, K)
    plus_logits, minus_logits : (B, k, K) or (B, K)
        Teacher logits over the sweep (the last step is used) or at one step.
    """
    q = _t(query_logits)
    p, m = _t(plus_logits), _t(minus_logits)
    if p.ndim == 3:
        p, m = p[:, -1], m[:, -1]
    is_c = q.argmax(1) == class_index
    flipped = torch.where(is_c, m.argmax(1) != class_index, p.argmax(1) == class_index)
    return float(flipped.float().mean())


def monotonicity(minus_scores: Any, recon_scores: Any, plus_scores: Any) -> dict[str, float]:
    """How monotonically the teacher's target score follows the signed step ``-a_k..0..+a_k``.

    Parameters
    ----------
    minus_scores, plus_scores : (B, k)
        Target scores at steps ``a_1 < ... < a_k``.
    recon_scores : (B,)

    Returns
    -------
    dict
        ``spearman``: mean rank correlation of score vs signed step; ``fraction_monotone``: share of
        cases whose scores never decrease along the sweep; ``direction_correct``: share with
        ``score(z+ a_k) > score(z) > score(z- a_k)``.
    """
    mn, r, pl = _t(minus_scores), _t(recon_scores), _t(plus_scores)
    seq = torch.cat([mn.flip(1), r[:, None], pl], dim=1).numpy()  # (B, 2k+1), ascending step
    steps = np.arange(seq.shape[1])
    rho = []
    for row in seq:
        rho.append(0.0 if np.all(row == row[0]) else float(stats.spearmanr(steps, row)[0]))
    mono = np.all(np.diff(seq, axis=1) >= 0, axis=1)
    correct = (seq[:, -1] > seq[:, seq.shape[1] // 2]) & (seq[:, seq.shape[1] // 2] > seq[:, 0])
    return {"spearman": float(np.mean(rho)), "fraction_monotone": float(mono.mean()), "direction_correct": float(correct.mean())}


def change_outside(diff: Any, mask: Any) -> dict[str, float]:
    """Mean absolute change inside and outside ``mask`` (e.g. the lungs) and the outside share of all change.

    ``diff`` and ``mask`` have the same shape ``(B, n, S, S)``.
    """
    d, m = _t(diff).abs(), _t(mask) > 0.5
    if d.shape != m.shape:
        raise ValueError(f"diff shape {tuple(d.shape)} and mask shape {tuple(m.shape)} differ.")
    total = float(d.sum())
    inside = float(d[m].mean()) if m.any() else float("nan")
    outside = float(d[~m].mean()) if (~m).any() else float("nan")
    return {"mean_inside": inside, "mean_outside": outside, "outside_share": float(d[~m].sum()) / total if total > 0 else 0.0}


def heatmap_auroc(heatmaps: Any, masks: Any) -> list[float]:
    """Pixel AUROC per case of heatmaps vs ground-truth masks (cases whose mask is empty/full are NaN).

    ``heatmaps`` and ``masks`` ``(B, n, S, S)`` or ``(B, S, S)``; uses :func:`medxai.metrics.pixel_auroc`.
    """
    h, m = _t(heatmaps).numpy(), _t(masks).numpy() > 0.5
    if h.shape != m.shape:
        raise ValueError(f"heatmaps shape {h.shape} and masks shape {m.shape} differ; resample to the same grid.")
    out = []
    for hb, mb in zip(h, m):
        out.append(pixel_auroc(hb, mb) if 0 < mb.sum() < mb.size else float("nan"))
    return out


def agent_teacher_agreement(agent_logits: Any, teacher_logits: Any) -> float:
    """Fraction of cases where agent and teacher predict the same class (``(B, K)`` each)."""
    a, t = _t(agent_logits), _t(teacher_logits)
    if a.shape != t.shape:
        raise ValueError(f"agent logits {tuple(a.shape)} and teacher logits {tuple(t.shape)} differ in shape.")
    return float((a.argmax(1) == t.argmax(1)).float().mean())


def summarise_diffexplainer(
    query: Any,
    explanation: Any,
    class_index: int,
    biomarker: Any | None = None,
    lungs: Any | None = None,
) -> dict[str, Any]:
    """All counterfactual metrics of one DiffExplainer :class:`~medxai.explanation.Explanation`.

    Parameters
    ----------
    query : (B, n, S, S)
        The explained stacks.
    explanation : Explanation
        Output of ``DiffExplainer.explain``.
    class_index : int
        Class the target refers to (for the flip rate).
    biomarker, lungs : (B, n, S, S), optional
        Ground-truth masks for AUROC and the change outside the lungs.
    """
    s: Mapping[str, Any] = explanation.scores
    cf = explanation.counterfactuals or {}
    recon = _t(cf["reconstruction"])
    q = _t(query)
    out: dict[str, Any] = {
        "psnr": psnr(q, recon).tolist(),
        "ssim": ssim(q, recon).tolist(),
        "score_change_reconstruction": score_change(s["query"], s["reconstruction"]).max(1).values.tolist(),
        "flip_rate": flip_rate(s["query"], s["sweep_plus"], s["sweep_minus"], class_index),
        "monotonicity": monotonicity(s["sweep_minus_target"], s["reconstruction_target"], s["sweep_plus_target"]),
        "agent_teacher_agreement": agent_teacher_agreement(s["agent_query"], s["query"]),
    }
    slice_heat = (_t(cf["diff_plus"]).abs() + _t(cf["diff_minus"]).abs())
    if biomarker is not None:
        out["heatmap_auroc"] = heatmap_auroc(slice_heat, biomarker)
    if lungs is not None:
        out["change_outside_lungs"] = change_outside(slice_heat, lungs)
    return out
