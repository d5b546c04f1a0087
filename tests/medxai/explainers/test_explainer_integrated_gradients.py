from __future__ import annotations

from typing import Any

import pytest
import torch
from suite import ExplainerSuite

from medxai.explainers import IntegratedGradients
from medxai.networks.classifiers import TinyCNN
from medxai.targets import AllClasses, ClassTarget


class TestIntegratedGradients(ExplainerSuite):
    method = "integrated_gradients"

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> IntegratedGradients:
        return IntegratedGradients(model, n_steps=16, **kwargs)

    def test_completeness(self, blob_task: Any) -> None:
        """IG attributions sum to score(x) - score(baseline) (up to the Riemann error)."""
        model = blob_task.model
        x = blob_task.x[:1]
        exp = IntegratedGradients(model, n_steps=64).explain(x, ClassTarget(0))
        with torch.no_grad():
            diff = model(x)[0, 0] - model(torch.zeros_like(x))[0, 0]
        assert float(exp.heatmaps.sum()) == pytest.approx(float(diff), rel=0.05, abs=0.05)

    def test_rejects_all_classes(self, blob_task: Any) -> None:
        with pytest.raises(TypeError, match="one score"):
            self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:1], AllClasses())

    def test_3d_and_per_channel(self) -> None:
        model = TinyCNN(2, 2, spatial_dims=3, width=4)
        exp = IntegratedGradients(model, n_steps=4, channel_reduction="none").explain(torch.randn(1, 2, 4, 8, 8), ClassTarget(1))
        assert exp.heatmaps.shape == (1, 2, 4, 8, 8)
