from __future__ import annotations

import numpy as np
import pytest

from medxai.metrics import f1_at, f1_score, iou, iou_at, mass_on_mask, pixel_auroc, spearman, threshold_heatmap


def test_pixel_auroc_known_values() -> None:
    mask = np.array([[1, 1], [0, 0]])
    assert pixel_auroc(np.array([[0.9, 0.8], [0.1, 0.2]]), mask) == 1.0
    assert pixel_auroc(np.array([[0.1, 0.2], [0.9, 0.8]]), mask) == 0.0
    assert pixel_auroc(np.ones((2, 2)), mask) == 0.5  # ties count one half
    # one positive (0.5) beats one of two negatives: 1/2 ... with two positives: (1 + 2) / 4
    assert pixel_auroc(np.array([0.5, 0.9, 0.4, 0.6]), np.array([1, 1, 0, 0])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="foreground"):
        pixel_auroc(np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.ones(4), np.zeros(5))


def test_threshold_iou_f1() -> None:
    heat = np.arange(10, dtype=float)
    top = threshold_heatmap(heat, top_fraction=0.3)
    assert top.tolist() == [False] * 7 + [True] * 3
    assert threshold_heatmap(heat, value=8).sum() == 2
    mask = np.zeros(10, bool)
    mask[6:] = True
    assert iou_at(heat, mask, top_fraction=0.3) == pytest.approx(3 / 4)
    assert f1_at(heat, mask, top_fraction=0.3) == pytest.approx(2 * 3 / 7)
    assert iou(np.zeros(3), np.zeros(3)) == 1.0 and f1_score(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(TypeError, match="exactly one"):
        threshold_heatmap(heat)
    with pytest.raises(ValueError, match="top_fraction"):
        threshold_heatmap(heat, top_fraction=1.5)


def test_mass_on_mask() -> None:
    heat = np.array([[3.0, 1.0], [-5.0, 0.0]])
    assert mass_on_mask(heat, np.array([[1, 0], [0, 0]])) == pytest.approx(0.75)
    assert np.isnan(mass_on_mask(-np.ones((2, 2)), np.eye(2)))


def test_spearman() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.ones(4)) == 0.0
    rng = np.random.default_rng(0)
    assert abs(spearman(rng.normal(size=5000), rng.normal(size=5000))) < 0.05
