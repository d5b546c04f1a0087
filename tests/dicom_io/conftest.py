"""Fixtures for dicom_io tests: generated CT series with known geometry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import ct_like

from dicom_io import StudyInfo, Volume, write_ct_series


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., tuple[Path, Volume]]:
    """Write a CT series and return (folder, the volume written)."""
    counter = {"n": 0}

    def _make(
        shape: tuple[int, int, int] = (12, 64, 64),
        spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
        origin: tuple[float, float, float] = (-20.0, -30.0, 100.0),
        direction: np.ndarray | None = None,
        folder: Path | None = None,
        seed: int = 0,
        **kw: object,
    ) -> tuple[Path, Volume]:
        counter["n"] += 1
        out = folder or tmp_path / f"series{counter['n']}"
        vol = Volume(ct_like(shape, seed), spacing, origin, np.eye(3) if direction is None else direction)
        info = kw.pop("info", None) or StudyInfo(uid_seed=f"test-{seed}-{counter['n']}")
        write_ct_series(vol, out, info, **kw)  # type: ignore[arg-type]
        return out, vol

    return _make
