"""DR counterfactual metrics and the realism metrics (FID/KID on the in-project feature network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medxai.metrics.counterfactual_dr import (
    evaluate_dr_counterfactuals,
    fov_from_images,
    l1_outside_lesions,
    lesion_auroc,
    target_rate,
)
from medxai.metrics.realism import (
    FeatureNet,
    extract_features,
    feature_net_loss,
    frechet_distance,
    kernel_inception_distance,
    load_feature_net,
    save_feature_net,
)


def test_target_rate() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert target_rate(logits, 0) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="target"):
        target_rate(logits, 2)


def test_l1_and_auroc_on_a_perfect_counterfactual() -> None:
    q = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
    les = np.zeros((2, 1, 8, 8), dtype=bool)
    les[:, :, 2:4, 2:4] = True
    cf = q.copy()
    cf[:, :, 2:4, 2:4] = 0.9  # only the lesions change
    assert np.allclose(l1_outside_lesions(q, cf, les), 0.0)
    heat = np.abs(cf - q).sum(1)
    assert np.allclose(lesion_auroc(heat, les), 1.0)
    les[1] = False  # no lesion -> AUROC undefined, left out
    out = evaluate_dr_counterfactuals(q, cf, np.array([[1.0, 0.0], [0.0, 1.0]]), 0, les, heat)
    assert out["target_rate"] == 0.5 and out["n_with_lesions"] == 1 and out["lesion_auroc"] == pytest.approx(1.0)
    assert out["l1_outside_lesions"] == pytest.approx(float(np.abs(cf - q)[1].mean()) / 2)


def test_fov_from_images() -> None:
    x = np.zeros((1, 3, 4, 4))
    x[0, 0, 1, 1] = 0.2
    assert fov_from_images(x).sum() == 1


def test_fid_kid_behave() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    b = rng.normal(size=(200, 8))
    c = rng.normal(loc=1.0, size=(200, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < frechet_distance(a, c)
    kid_ab, _ = kernel_inception_distance(a, b, subsets=5, subset_size=100)
    kid_ac, _ = kernel_inception_distance(a, c, subsets=5, subset_size=100)
    assert abs(kid_ab) < kid_ac
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :4])


def test_feature_net_train_step_and_roundtrip(tmp_path: Path) -> None:
    net = FeatureNet(width=8, feature_dim=16)
    x = torch.rand(4, 3, 32, 32)
    targets = {
        "label": torch.tensor([0, 1, 0, 1]),
        "extent": torch.rand(4),
        "marker": torch.zeros(4),
        "lesions": (torch.rand(4, 1, 32, 32) > 0.9).float(),
    }
    loss = feature_net_loss(net, x, targets)
    loss.backward()
    assert torch.isfinite(loss)
    feats = extract_features(net, x)
    assert feats.shape == (4, 16)
    back = load_feature_net(save_feature_net(net, tmp_path / "f.safetensors"))
    np.testing.assert_allclose(extract_features(back, x), feats, rtol=1e-5, atol=1e-6)
