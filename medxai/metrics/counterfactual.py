"""Metrics of counterfactual explanations (DiffExplainer's three criteria, made measurable).

(1) reconstruction: PSNR/SSIM of the unmanipulated decode vs the query, change of the teacher's
score; (2) observable yet local: change outside the lungs, pixel AUROC of the heatmap vs the
biomarker mask; (3) manipulation: flip rate and monotonicity of the TEACHER's score over the step
sweep; plus agent-teacher agreement. The functions take tensors or arrays (images in [0, 1]);
:func:`summarise_diffexplainer` reads them all from a typed :class:`~medxai.explanation.Explanation`
(its :class:`~medxai.explanation.CounterfactualSweep`).
"""

from __future__ import annotations

import logging
from typing import Any

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
        x.reshape(bsz * c, 1, *x.shape[2:]),
        y.reshape(bsz * c, 1, *x.shape[2:]),
        spatial_dims=2,
        kernel_size=(win, win),
        kernel_sigma=(1.5, 1.5),
        data_range=data_range,
        kernel_type="gaussian",
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


def _sweep_sides(explanation: Any) -> tuple[Any, list[int], list[int]]:
    """The sweep of ``explanation`` and the positions of its steps ``a_1..a_k`` on each side
    (``plus[i]`` is ``+a_(i+1)``, ``minus[i]`` is ``-a_(i+1)``)."""
    sweep = getattr(explanation, "sweep", None)
    if sweep is None or sweep.origin is None or sweep.origin_logits is None:
        raise ValueError(
            "explanation has no counterfactual sweep measured from a reconstruction (sweep.origin / "
            "sweep.origin_logits); pass the Explanation of DiffExplainer.explain (or of a method whose sweep has an origin)."
        )
    if not sweep.negative_steps or not sweep.positive_steps:
        raise ValueError(
            f"the sweep needs steps on both sides of 0, got {list(sweep.steps)}; use a two-sided sweep (-a_k..+a_k)."
        )
    plus = [sweep.index(a) for a in sweep.positive_steps]
    minus = [sweep.index(a) for a in reversed(sweep.negative_steps)]
    if [sweep.steps[i] for i in plus] != [-sweep.steps[i] for i in minus]:
        raise ValueError(f"the sweep's steps are not symmetric about 0: {list(sweep.steps)}.")
    return sweep, plus, minus


def summarise_diffexplainer(
    query: Any,
    explanation: Any,
    class_index: int,
    biomarker: Any | None = None,
    lungs: Any | None = None,
    *,
    heatmap_step: float | None = None,
) -> dict[str, Any]:
    """All counterfactual metrics of one DiffExplainer :class:`~medxai.explanation.Explanation`.

    Everything is read from the typed fields: the query's logits (``explanation.logits``), the sweep's
    black-box logits at the signed steps ``-a_k..+a_k`` (``sweep.logits``), the reconstruction
    (``sweep.origin``, ``sweep.origin_logits``) and the agent's logits at the origin
    (``sweep.agent_origin_logits``). Flip rate, monotonicity and score changes are computed on the
    black box's LOGITS (the target score of ``ClassTarget(class_index)``), as they always were.

    Parameters
    ----------
    query : (B, n, S, S)
        The explained stacks.
    explanation : Explanation
        Output of ``DiffExplainer.explain`` (or :meth:`~medxai.explanation.Explanation.concat` of several).
    class_index : int
        Class the target refers to (for the flip rate and the monotonicity of its logit).
    biomarker, lungs : (B, n, S, S), optional
        Ground-truth masks for the per-slice AUROC and the change outside the lungs.
    heatmap_step : float, optional
        ``a`` of the per-slice change map ``|x(+a) - x(0)| + |x(-a) - x(0)|`` (default: the
        explainer's ``heatmap_step`` parameter, else the largest step).

    Returns
    -------
    dict
        ``psnr``, ``ssim``, ``score_change_reconstruction`` (per case), ``flip_rate``, ``monotonicity``,
        ``agent_teacher_agreement`` (when the sweep has agent logits), and with the masks
        ``heatmap_auroc`` (per case) and ``change_outside_lungs``.
    """
    sweep, plus, minus = _sweep_sides(explanation)
    if explanation.logits is None:
        raise ValueError("explanation.logits is missing; pass the Explanation returned by explain().")
    logits = _t(sweep.logits)  # (B, S, K)
    q_logits, recon_logits = _t(explanation.logits), _t(sweep.origin_logits)
    recon = _t(sweep.origin)
    q = _t(query)
    out: dict[str, Any] = {
        "psnr": psnr(q, recon).tolist(),
        "ssim": ssim(q, recon).tolist(),
        "score_change_reconstruction": score_change(q_logits, recon_logits).max(1).values.tolist(),
        # (B, k, K) at a_1..a_k on each side; the largest step decides the flip
        "flip_rate": flip_rate(q_logits, logits[:, plus], logits[:, minus], class_index),
        "monotonicity": monotonicity(logits[:, minus, class_index], recon_logits[:, class_index], logits[:, plus, class_index]),
    }
    if sweep.agent_origin_logits is not None:
        out["agent_teacher_agreement"] = agent_teacher_agreement(sweep.agent_origin_logits, q_logits)
    step = heatmap_step if heatmap_step is not None else explanation.parameters.get("heatmap_step")
    step = float(step) if step is not None else sweep.positive_steps[-1]
    slice_heat = _t(sweep.difference(step)).abs() + _t(sweep.difference(-step)).abs()
    if biomarker is not None:
        out["heatmap_auroc"] = heatmap_auroc(slice_heat, biomarker)
    if lungs is not None:
        out["change_outside_lungs"] = change_outside(slice_heat, lungs)
    return out
