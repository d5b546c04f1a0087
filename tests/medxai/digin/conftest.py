"""Fixtures of the DiG-IN explainer tests: the shared suite's blob task and the tiny blob DDPM of the
DVCE tests (the generator the chain runs on)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_DVCE_CONFTEST = Path(__file__).resolve().parents[1] / "dvce" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_dvce_conftest", _DVCE_CONFTEST)
assert _spec is not None and _spec.loader is not None
_dvce = sys.modules.get("_dvce_conftest") or importlib.util.module_from_spec(_spec)
if "_dvce_conftest" not in sys.modules:
    sys.modules["_dvce_conftest"] = _dvce
    _spec.loader.exec_module(_dvce)

blob_task = _dvce.blob_task
fresh_model = _dvce.fresh_model


@pytest.fixture(scope="session")
def digin_ddpm(blob_task):
    """The tiny blob DDPM trained for 300 steps (about 20 s): DiG-IN optimises the start noise of a
    deterministic chain, and the 40-step model of the DVCE tests maps a small change of that noise to a
    new image everywhere (measured: the change's mass on the blob 1.0-1.4x chance), not to an edit."""
    from medxai.training.dvce import train_ddpm
    from medxai.training.trainers import TrainConfig

    ddpm = _dvce.tiny_ddpm()
    images = blob_task.train["images"][:512].clamp(*_dvce.BLOB_RANGE)
    train_ddpm(ddpm, images, TrainConfig(steps=300, batch_size=32, lr=2e-3, ema_decay=0.9, seed=0))
    return ddpm.eval()
