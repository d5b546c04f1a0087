from __future__ import annotations

from typing import Any

import pytest
import torch
from suite import ExplainerSuite

from medxai.explainers import RISE, rise_masks
from medxai.networks.classifiers import TinyCNN
from medxai.targets import AllClasses, ClassTarget


class TestRISE(ExplainerSuite):
    method = "rise"
    stochastic = True

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> RISE:
        return RISE(model, n_masks=256, grid_size=6, batch_size=32, **kwargs)

    def test_masks_properties(self) -> None:
        gen = torch.Generator().manual_seed(0)
        masks = rise_masks(200, (32, 32), 8, 0.5, gen)
        assert masks.shape == (200, 1, 32, 32)
        assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
        assert abs(float(masks.mean()) - 0.5) < 0.05
        masks3 = rise_masks(4, (8, 16, 16), 4, 0.5, torch.Generator().manual_seed(0))
        assert masks3.shape == (4, 1, 8, 16, 16)

    def test_all_classes_equal_single_class(self, blob_task: Any) -> None:
        x = blob_task.x[:2]
        both = self.make_explainer(blob_task.model, blob_task).explain(x, AllClasses()).heatmaps
        one = self.make_explainer(blob_task.model, blob_task).explain(x, ClassTarget(1)).heatmaps
        assert both.shape == (2, 2, 32, 32)
        torch.testing.assert_close(both[:, 1:], one, rtol=1e-4, atol=1e-4)

    def test_no_global_rng_use(self, blob_task: Any) -> None:
        state = torch.random.get_rng_state()
        self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:1], 0)
        assert torch.equal(state, torch.random.get_rng_state())

    def test_3d(self) -> None:
        model = TinyCNN(1, 2, spatial_dims=3, width=4)
        exp = RISE(model, n_masks=32, grid_size=4).explain(torch.randn(1, 1, 8, 16, 16), ClassTarget(0))
        assert exp.heatmaps.shape == (1, 1, 8, 16, 16)

    def test_bad_settings(self, blob_task: Any) -> None:
        with pytest.raises(ValueError, match="n_masks"):
            RISE(blob_task.model, n_masks=0)
        with pytest.raises(ValueError, match="p must"):
            RISE(blob_task.model, p=1.5)
