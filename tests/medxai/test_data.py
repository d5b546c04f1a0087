"""Phantom-derived model inputs: shapes, masks on the input grid, and a save/load round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medxai.data import StackSet, ct_stack_set, fundus_set


def test_ct_stack_set(tmp_path: Path) -> None:
    s = ct_stack_set(3, seed=11, size=32)
    assert s.x.shape == (3, 4, 32, 32) and s.x.dtype == np.float32
    assert 0.0 <= s.x.min() and s.x.max() <= 1.0
    for name in ("biomarker", "distractor", "marker", "lungs"):
        assert s.masks[name].shape == (3, 4, 32, 32)
        assert set(np.unique(s.masks[name])) <= {0.0, 1.0}
    # lungs are dark in the lung window, the body around them is not
    lungs = s.masks["lungs"] > 0
    assert s.x[lungs].mean() < s.x[~lungs].mean()
    s.save(str(tmp_path / "s.npz"))
    t = StackSet.load(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(t.x, s.x)
    assert t.masks.keys() == s.masks.keys() and (t.y == s.y).all()


def test_fundus_set_masks_follow_lesion_counts() -> None:
    f = fundus_set(4, seed=3, size=32)
    assert f.x.shape == (4, 3, 32, 32) and f.masks["lesions"].shape == (4, 1, 32, 32)
    assert ((f.masks["lesions"].sum(axis=(1, 2, 3)) > 0) | (f.extent == 0)).all()


def test_ct_emphysema_label_is_the_distractor_visible_in_the_stack() -> None:
    # the model-swap teacher's label: emphysema holes on the model's grid, whatever the outcome
    over = {"emphysema_holes": [150, 400], "emphysema_radius_mm": [3.0, 8.0]}
    s = ct_stack_set(6, seed=100, size=32, phantom_overrides=over, label="emphysema")
    seen = s.masks["distractor"].reshape(6, -1).max(1) > 0
    np.testing.assert_array_equal(s.y, seen.astype(np.int64))
    assert 0 < s.y.sum() < 6
    outcome = ct_stack_set(6, seed=100, size=32, phantom_overrides=over)
    np.testing.assert_array_equal(outcome.x, s.x)  # same images, another label
    # more and larger holes than the default preset: more distractor pixels on the same cases
    default = ct_stack_set(6, seed=100, size=32)
    assert s.masks["distractor"].sum() > 2 * default.masks["distractor"].sum()


def test_fundus_lesion_type_labels_and_independent_mix() -> None:
    f = fundus_set(40, seed=5, size=64, label="exudates", phantom_overrides={"lesion_mix": "independent"})
    ex = f.masks["exudates"].reshape(40, -1).max(1) > 0
    he = f.masks["haemorrhages"].reshape(40, -1).max(1) > 0
    np.testing.assert_array_equal(f.y, ex.astype(np.int64))
    # each type appears with and without the other (in graded DR exudates nearly always come with haemorrhages)
    assert (ex & ~he).sum() >= 4 and (he & ~ex).sum() >= 4 and (ex & he).sum() >= 4


def test_unknown_labels_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="label must be one of"):
        ct_stack_set(1, seed=1, size=32, label="fibrosis")
    with pytest.raises(ValueError, match="label must be one of"):
        fundus_set(1, seed=1, size=64, label="drusen")
