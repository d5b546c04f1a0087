"""Fixtures of the DVCE tests: the shared explainer suite's blob task (a tiny classifier that
reads a bright blob in channel k as class k) plus a tiny DDPM trained on the same blob images."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

_EXPLAINER_TESTS = Path(__file__).resolve().parents[1] / "explainers"
if str(_EXPLAINER_TESTS) not in sys.path:
    sys.path.insert(0, str(_EXPLAINER_TESTS))

_spec = importlib.util.spec_from_file_location("_explainer_suite_conftest", _EXPLAINER_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_suite_conftest = sys.modules.get("_explainer_suite_conftest") or importlib.util.module_from_spec(_spec)
if "_explainer_suite_conftest" not in sys.modules:
    sys.modules["_explainer_suite_conftest"] = _suite_conftest
    _spec.loader.exec_module(_suite_conftest)

# re-export the suite's fixtures so that ExplainerSuite subclasses here can use them
blob_task = _suite_conftest.blob_task
fresh_model = _suite_conftest.fresh_model
make_blob_data = _suite_conftest.make_blob_data

#: blob images are 0.3 * N(0, 1) noise plus blobs of height 2: this range maps them into [-1, 1]
BLOB_RANGE = (-1.5, 3.0)


def tiny_ddpm(channels: int = 2, size: int = 32, seed: int = 0):
    from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM

    cfg = DDPMNetConfig(
        image_size=size,
        in_channels=channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        data_range=BLOB_RANGE if channels == 2 else (0.0, 1.0),
    )
    return ImageDDPM(cfg, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def blob_ddpm(blob_task):
    """A ~0.1M-parameter DDPM trained for 40 steps (a few seconds) on the blob task's training images.

    A fixed step count (no wall-clock cap) keeps the model, and so the tests, independent of machine load.
    """
    from medxai.training.dvce import train_ddpm
    from medxai.training.trainers import TrainConfig

    ddpm = tiny_ddpm()
    images = blob_task.train["images"][:512].clamp(*BLOB_RANGE)
    start = time.perf_counter()
    hist = train_ddpm(ddpm, images, TrainConfig(steps=40, batch_size=32, lr=2e-3, ema_decay=0.9, seed=0))
    ddpm.train_info = {**hist, "wall": time.perf_counter() - start}  # type: ignore[attr-defined]
    return ddpm.eval()
