"""The bench's faithfulness figures on maps whose answer is known: model swap, fair randomisation,
the decision check and the marker's visibility in a reconstruction."""

from __future__ import annotations

import math

import numpy as np

from pipelines.bench import (
    _decision_changed_rate,
    _marker_contrast,
    _randomization,
    _swap_scores,
    run_targets,
)


def _blobs(n: int = 4, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two disjoint features inside a region, per case ``(n, size, size)``."""
    a = np.zeros((n, size, size))
    b = np.zeros((n, size, size))
    a[:, 2:6, 2:6] = 1
    b[:, 9:13, 9:13] = 1
    region = np.zeros((n, size, size))
    region[:, 1:15, 1:15] = 1
    return a, b, region


def test_a_faithful_method_scores_its_own_feature_and_not_the_other() -> None:
    a, b, region = _blobs()
    rng = np.random.default_rng(0)
    noise = rng.random(a.shape) * 0.1
    faithful = _swap_scores({"fibrosis": a + noise, "emphysema": b + noise}, {"fibrosis": a, "emphysema": b}, region)
    assert faithful["own_auroc_min"] > 0.99 and faithful["cross_auroc_max"] < 0.6
    # a method that paints the same thing for both models fails one of the two
    same = _swap_scores({"fibrosis": a + noise, "emphysema": a + noise}, {"fibrosis": a, "emphysema": b}, region)
    assert same["own_auroc_min"] < 0.6 and same["cross_auroc_max"] > 0.99
    assert same["spearman_in_mask"] > 0.99 > faithful["spearman_in_mask"]


def test_randomisation_in_mask_ignores_shared_structure_outside_it() -> None:
    a, _, region = _blobs()
    rng = np.random.default_rng(1)
    outside = 1 - region  # strong shared change outside the region (the generator redrawing the background)
    trained = 5 * outside + a + 0.05 * rng.random(a.shape)
    random = 5 * outside + rng.random(a.shape)
    r = _randomization(trained, random, a, region, np.tile([[0.4, 0.6]], (10, 1)))
    assert r["spearman_whole"] > 0.4  # the whole-image figure is carried by the outside
    assert abs(r["spearman_in_mask"]) < 0.3
    assert r["trained_model_auroc"] > 0.99 and r["random_model_auroc"] < 0.8
    assert r["decision_changed_rate"] == 0.0  # the same class for every image: nothing to explain


def test_decision_changed_rate() -> None:
    assert _decision_changed_rate(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])) == 0.25
    assert math.isnan(_decision_changed_rate(np.zeros((0, 2))))


def test_marker_contrast_sees_a_marker_the_reconstruction_lost() -> None:
    x = np.full((2, 4, 16, 16), 0.5, dtype=np.float32)
    marker = np.zeros_like(x)
    marker[:, 1, 7:9, 7:9] = 1
    x[marker > 0] = 1.0
    drawn = _marker_contrast(x, x.copy(), marker)
    assert math.isclose(drawn["query_contrast"], 0.5) and math.isclose(drawn["ratio"], 1.0)
    lost = _marker_contrast(x, np.full_like(x, 0.5), marker)
    assert lost["reconstruction_contrast"] == 0.0 and lost["ratio"] == 0.0


def test_faithfulness_targets_hold_every_method_that_ran() -> None:
    results = {
        "ct": {
            "gradcam": {"loc_auroc": 0.5, "randomization": {"spearman_in_mask": 0.1}},
            "model_swap": {"_n_cases": 3, "gradcam": {"own_auroc_min": 0.7}, "diffexplainer": {"own_auroc_min": 0.9}},
        }
    }
    t = run_targets(results)
    assert t["ct.model_swap.gradcam.own_auroc_min"] == (">=", 0.85)
    assert t["ct.model_swap.diffexplainer.cross_auroc_max"] == ("<=", 0.60)
    assert t["ct.gradcam.randomization.spearman_in_mask"] == ("<=", 0.30)
    assert "ct.model_swap._n_cases.own_auroc_min" not in t
