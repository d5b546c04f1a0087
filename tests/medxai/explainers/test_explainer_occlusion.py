from __future__ import annotations

from typing import Any

import pytest
import torch
from suite import ExplainerSuite

from medxai.explainers import Occlusion
from medxai.networks.classifiers import TinyCNN
from medxai.targets import AllClasses, ClassTarget


class TestOcclusion(ExplainerSuite):
    method = "occlusion"

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> Occlusion:
        return Occlusion(model, mask_size=7, overlap=0.5, batch_size=32, **kwargs)

    def test_all_classes(self, blob_task: Any) -> None:
        exp = self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:1], AllClasses())
        assert exp.heatmaps.shape == (1, 2, 32, 32)

    def test_3d(self) -> None:
        model = TinyCNN(1, 2, spatial_dims=3, width=4)
        exp = Occlusion(model, mask_size=4, overlap=0.0).explain(torch.randn(1, 1, 8, 8, 8), ClassTarget(1))
        assert exp.heatmaps.shape == (1, 1, 8, 8, 8)

    def test_bad_settings(self, blob_task: Any) -> None:
        with pytest.raises(ValueError, match="overlap"):
            Occlusion(blob_task.model, overlap=1.0)
        with pytest.raises(ValueError, match="mask_size"):
            Occlusion(blob_task.model, mask_size=64).explain(blob_task.x[:1], 0)
