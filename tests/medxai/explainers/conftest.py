"""Fixtures of the shared explainer suite: a tiny classifier trained once per session on a task
whose answer is known (a bright blob in channel k means class k is present)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medxai.networks.classifiers import TinyCNN, init_with_generator

SIZE = 32
CHANNELS = 2
CLASSES = 2


def make_blob_data(n: int, generator: torch.Generator, size: int = SIZE, p_present: float = 0.5) -> dict[str, torch.Tensor]:
    """Images (n, 2, size, size): noise, plus a Gaussian blob in channel k when class k is present.

    Returns images, multi-hot labels (n, 2) and blob masks (n, 2, size, size).
    """
    images = 0.3 * torch.randn((n, CHANNELS, size, size), generator=generator)
    labels = (torch.rand((n, CLASSES), generator=generator) < p_present).float()
    masks = torch.zeros((n, CLASSES, size, size), dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    sigma = 2.5
    for i in range(n):
        for k in range(CLASSES):
            if labels[i, k] > 0:
                cy, cx = (5 + torch.rand(2, generator=generator) * (size - 10)).tolist()
                d2 = (yy - cy) ** 2 + (xx - cx) ** 2
                images[i, k] += 2.0 * torch.exp(-d2 / (2 * sigma**2))
                masks[i, k] = d2 <= (2 * sigma) ** 2
    return {"images": images, "labels": labels, "masks": masks}


@dataclasses.dataclass
class BlobTask:
    """Everything the suite needs: a trained and a randomised classifier, data with known answers."""

    model: torch.nn.Module
    random_model: torch.nn.Module
    train: dict[str, torch.Tensor]
    x: torch.Tensor  # (4, 2, 32, 32): a blob in channel 0 only -> class 0 present
    masks: torch.Tensor  # (4, 32, 32) blob masks of class 0
    accuracy: float
    cache: dict[str, Any]


def _train_classifier(data: dict[str, torch.Tensor], steps: int = 150) -> TinyCNN:
    """A fixed number of steps (never a time budget: the result must not depend on machine load)."""
    gen = torch.Generator().manual_seed(1)
    model = TinyCNN(CHANNELS, CLASSES, width=16, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    n = data["images"].shape[0]
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (32,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(model(data["images"][idx]), data["labels"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def blob_task() -> BlobTask:
    gen = torch.Generator().manual_seed(0)
    train = make_blob_data(1024, gen)
    test = make_blob_data(256, gen)
    model = _train_classifier(train)
    with torch.no_grad():
        pred = (model(test["images"]) > 0).float()
    accuracy = float((pred == test["labels"]).float().mean())
    # evaluation images: blob in channel 0 only
    eval_gen = torch.Generator().manual_seed(7)
    ev = make_blob_data(64, eval_gen)
    keep = torch.nonzero((ev["labels"][:, 0] == 1) & (ev["labels"][:, 1] == 0)).flatten()[:4]
    x = ev["images"][keep].contiguous()
    masks = ev["masks"][keep, 0]
    random_model = init_with_generator(copy.deepcopy(model), torch.Generator().manual_seed(123)).eval()
    return BlobTask(model, random_model, train, x, masks, accuracy, cache={})


@pytest.fixture()
def fresh_model(blob_task: BlobTask) -> torch.nn.Module:
    """A copy of the trained classifier that a test may put into any state."""
    return copy.deepcopy(blob_task.model)


def as_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
