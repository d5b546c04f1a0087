from __future__ import annotations

from typing import Any

import pytest
import torch
from suite import ExplainerSuite

from medxai.explainers import GradCAM, GradCAMpp
from medxai.targets import ClassTarget, NeuronTarget, ScoreDirection


class TestGradCAM(ExplainerSuite):
    method = "gradcam"
    has_layer = True
    cls = GradCAM

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> GradCAM:
        return self.cls(model, layer="features.act3", **kwargs)

    def make_explainer_with_layer(self, model: torch.nn.Module, task: Any, layer: str) -> GradCAM:
        return self.cls(model, layer=layer)

    def test_default_layer_and_targets(self, blob_task: Any) -> None:
        explainer = self.cls(blob_task.model)
        assert explainer.layer == "features.conv3"
        up = explainer.explain(blob_task.x[:1], ScoreDirection(0, +1)).heatmaps
        assert up.shape == (1, 1, 32, 32)
        neuron = explainer.explain(blob_task.x[:1], NeuronTarget("head", 0)).heatmaps
        torch.testing.assert_close(neuron, explainer.explain(blob_task.x[:1], ClassTarget(0)).heatmaps)

    def test_3d(self) -> None:
        from medxai.networks.classifiers import TinyCNN

        model = TinyCNN(1, 3, spatial_dims=3, width=4)
        exp = self.cls(model).explain(torch.randn(2, 1, 8, 16, 16), ClassTarget(2))
        assert exp.heatmaps.shape == (2, 1, 8, 16, 16)


class TestGradCAMpp(TestGradCAM):
    method = "gradcam++"
    cls = GradCAMpp

    # Grad-CAM++ keeps only positive gradient weights, so on a re-initialised network its map still
    # follows the activations the bright blob causes: measured median Spearman 0.65 (0.57-0.87) on
    # this task, against < 0.5 for Grad-CAM. A known weakness of the method, kept visible here with
    # the same threshold as every other explainer (strict: a pass would flag that something changed).
    @pytest.mark.xfail(strict=True, reason="Grad-CAM++ fails parameter randomisation: median Spearman ~0.65 >= 0.5")
    def test_parameter_randomisation(self, blob_task) -> None:  # type: ignore[override]
        super().test_parameter_randomisation(blob_task)


def test_monai_densenet_inplace_relu_restored() -> None:
    """MONAI's DenseNet uses in-place ReLUs; CAM needs them off during the call and back on after."""
    from monai.networks.nets import DenseNet

    from medxai.explainers import hook_count
    from medxai.networks.classifiers import init_with_generator

    model = init_with_generator(
        DenseNet(spatial_dims=2, in_channels=4, out_channels=2, init_features=8, growth_rate=4, block_config=(2, 2)),
        torch.Generator().manual_seed(0),
    ).eval()
    relu = model.class_layers.relu
    assert relu.inplace
    for cls in (GradCAM, GradCAMpp):
        exp = cls(model, layer="class_layers.relu").explain(torch.rand(2, 4, 32, 32), ClassTarget(1))
        assert exp.heatmaps.shape == (2, 1, 32, 32) and torch.isfinite(exp.heatmaps).all()
    assert relu.inplace and hook_count(model) == 0
