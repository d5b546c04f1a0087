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
