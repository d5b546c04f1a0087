"""The counterfactual summaries read the typed Explanation: which sweep step each figure uses, and that
the figures are computed on logits exactly as the old string-keyed scores were."""

from __future__ import annotations

import numpy as np
import pytest

from medxai.explanation import CounterfactualSweep, Explanation
from medxai.metrics.counterfactual import flip_rate, monotonicity, summarise_diffexplainer
from medxai.metrics.counterfactual_dr import evaluate_dr_counterfactuals, summarise_dr_counterfactuals

STEPS = (-0.4, -0.2, 0.2, 0.4)


def _diffexplainer_like(heatmap_step: float = 0.2) -> tuple[np.ndarray, Explanation]:
    """Two cases, K = 2: case 0 starts in class 1, case 1 in class 0; images move with the step."""
    rng = np.random.default_rng(0)
    query = rng.uniform(0.2, 0.8, (2, 4, 8, 8)).astype(np.float32)
    origin = query + 0.01
    images = np.stack([origin + 0.1 * s for s in STEPS], axis=1)  # (B, S, C, H, W)
    images[:, 2, :, :2] += 0.5  # +0.2 changes the top rows only, +0.4 changes everything
    q_logits = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    # class-1 logit rises with the step; at -0.4 case 0 leaves class 1, at +0.4 case 1 reaches it
    sweep_logits = np.array(
        [
            [[2.0, -1.0], [0.0, 0.5], [0.0, 1.5], [0.0, 2.0]],
            [[1.0, -2.0], [1.0, -1.0], [1.0, 0.5], [1.0, 2.0]],
        ],
        np.float32,
    )
    sweep = CounterfactualSweep(
        steps=STEPS,
        images=images,
        logits=sweep_logits,
        origin=origin,
        origin_logits=np.array([[0.0, 1.0], [1.0, 0.0]], np.float32),
        agent_logits=sweep_logits,
        agent_origin_logits=np.array([[0.0, 1.0], [0.0, 1.0]], np.float32),
    )
    exp = Explanation(
        method="diffexplainer",
        target="class 1",
        heatmaps=np.zeros((2, 1, 8, 8), np.float32),
        logits=q_logits,
        target_class=1,
        sweep=sweep,
        parameters={"heatmap_step": heatmap_step},
    )
    return query, exp


def test_summary_reads_the_sweep_like_the_old_scores() -> None:
    query, exp = _diffexplainer_like()
    biomarker = np.zeros((2, 4, 8, 8), np.float32)
    biomarker[:, :, :2] = 1.0
    out = summarise_diffexplainer(query, exp, 1, biomarker, biomarker)
    lo = exp.sweep.logits
    # the old keys: sweep_plus = steps +a_1..+a_k, sweep_minus = -a_1..-a_k; the flip is decided at +-a_k
    assert out["flip_rate"] == flip_rate(exp.logits, lo[:, [2, 3]], lo[:, [1, 0]], 1) == 1.0
    assert out["monotonicity"] == monotonicity(lo[:, [1, 0], 1], exp.sweep.origin_logits[:, 1], lo[:, [2, 3], 1])
    assert out["monotonicity"]["fraction_monotone"] == 1.0
    # reconstruction vs query: a constant 0.01 offset, and |logit change| of the origin
    np.testing.assert_allclose(out["psnr"], [40.0, 40.0], atol=1e-3)
    assert out["score_change_reconstruction"] == [0.0, 0.0]
    assert out["agent_teacher_agreement"] == 0.5  # the agent says class 1 for both, the teacher for case 0 only
    # the per-slice change map is taken at the explainer's heatmap step (0.2: only the top rows moved)
    assert out["heatmap_auroc"] == [1.0, 1.0]
    assert out["change_outside_lungs"]["mean_inside"] > out["change_outside_lungs"]["mean_outside"]
    # at +-0.4 the change is uniform (up to rounding): no longer localised
    assert max(summarise_diffexplainer(query, exp, 1, biomarker, heatmap_step=0.4)["heatmap_auroc"]) < 1.0


def test_summary_refuses_a_sweep_without_reconstruction_or_both_sides() -> None:
    query, exp = _diffexplainer_like()
    no_origin = Explanation(
        method="x",
        target="t",
        heatmaps=exp.heatmaps,
        logits=exp.logits,
        sweep=CounterfactualSweep(steps=STEPS, images=exp.sweep.images, logits=exp.sweep.logits),
    )
    with pytest.raises(ValueError, match="origin"):
        summarise_diffexplainer(query, no_origin, 1)
    one_sided = Explanation(
        method="x",
        target="t",
        heatmaps=exp.heatmaps,
        logits=exp.logits,
        sweep=CounterfactualSweep(
            steps=(0.2, 0.4),
            images=exp.sweep.images[:, 2:],
            logits=exp.sweep.logits[:, 2:],
            origin=exp.sweep.origin,
            origin_logits=exp.sweep.origin_logits,
        ),
    )
    with pytest.raises(ValueError, match="both sides"):
        summarise_diffexplainer(query, one_sided, 1)


def test_dr_summary_uses_the_counterfactual_step_and_target_class() -> None:
    rng = np.random.default_rng(1)
    q = rng.uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    cf = np.clip(q + rng.normal(0, 0.05, q.shape), 0, 1).astype(np.float32)
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]], np.float32)
    heat = rng.uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    lesions = np.zeros((3, 8, 8), bool)
    lesions[:, 2:4, 2:4] = True
    exp = Explanation(
        method="dvce",
        target="class 0",
        heatmaps=heat,
        logits=-logits,
        target_class=0,
        sweep=CounterfactualSweep(steps=(1.0,), images=cf[:, None], logits=logits[:, None]),
    )
    out = summarise_dr_counterfactuals(q, exp, lesions)
    ref = evaluate_dr_counterfactuals(q, cf, logits, 0, lesions, heat[:, 0])
    assert out["step"] == 1.0 and out["target_rate"] == pytest.approx(2 / 3)
    assert {k: out[k] for k in ref if k != "per_image"} == {k: ref[k] for k in ref if k != "per_image"}
    assert summarise_dr_counterfactuals(q, exp, lesions, target=1)["target_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no counterfactual sweep"):
        summarise_dr_counterfactuals(q, Explanation(method="gradcam", target="t", heatmaps=heat), lesions)
