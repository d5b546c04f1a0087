"""Explanation, targets and the Explainer base class."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from medxai.explainers import Explainer, ModelStateGuard, find_layer, hook_count, infer_input_spec
from medxai.explanation import Explanation
from medxai.networks.classifiers import TinyCNN, make_classifier
from medxai.targets import AllClasses, ClassTarget, NeuronTarget, ScoreDirection, as_target


def test_explanation_save_load_nifti_and_png(tmp_path: Any) -> None:
    heat = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    exp = Explanation(
        method="x", target="ClassTarget(index=1)", heatmaps=heat,
        counterfactuals={"plus": torch.ones(2, 1, 8, 8)}, scores={"query": torch.tensor([[0.1, 0.9]] * 2)},
        parameters={"a": (1, 2)}, seed=3, extra={"note": "ok"},
    )
    exp.save(tmp_path / "n", fmt="nifti")
    back = Explanation.load(tmp_path / "n")
    np.testing.assert_array_equal(back.heatmaps, heat)
    assert back.seed == 3 and back.parameters == {"a": [1, 2]} and back.counterfactuals["plus"].shape == (2, 1, 8, 8)
    np.testing.assert_allclose(back.scores["query"], [[0.1, 0.9]] * 2, rtol=1e-6)
    exp.save(tmp_path / "p")  # 2D -> PNG
    assert (tmp_path / "p" / "heatmap_b1_t2.png").is_file()
    assert json.loads((tmp_path / "p" / "explanation.json").read_text())["file_format"] == "png"
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]  # no temporary files left
    assert Explanation.load(tmp_path / "p").heatmaps.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="png"):
        Explanation(method="x", target="t", heatmaps=np.zeros((1, 1, 2, 2, 2))).save(tmp_path / "q", fmt="png")
    with pytest.raises(ValueError, match="heatmaps"):
        Explanation(method="x", target="t", heatmaps=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="explanation.json"):
        Explanation.load(tmp_path)
    with pytest.raises(Exception):
        exp.method = "y"  # frozen


def test_targets() -> None:
    out = torch.tensor([[1.0, 2.0, 3.0]])
    assert ClassTarget(2)(out).item() == 3.0
    assert ClassTarget(0, activation="softmax")(out).item() == pytest.approx(float(out.softmax(1)[0, 0]))
    assert ScoreDirection(1, -1)(out).item() == -2.0
    assert AllClasses()(out).shape == (1, 3)
    assert isinstance(as_target(1), ClassTarget)
    with pytest.raises(ValueError, match="0..2"):
        ClassTarget(3).validate(out)
    with pytest.raises(ValueError, match="sign"):
        ScoreDirection(0, 2)
    with pytest.raises(TypeError, match="target"):
        as_target(None)
    with pytest.raises(TypeError, match="index"):
        ClassTarget(1.5)  # type: ignore[arg-type]


def test_neuron_target_hook_released() -> None:
    model = TinyCNN(1, 2, width=4)
    target = NeuronTarget("features.conv2", 1)
    target.attach(model)
    model(torch.randn(2, 1, 16, 16))
    assert target(torch.zeros(2, 2)).shape == (2,)
    target.detach()
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match="features.conv2"):
        NeuronTarget("features.conv7", 0).attach(model)


def test_find_layer_and_input_spec() -> None:
    model = TinyCNN(3, 2, width=4)
    assert find_layer(model, "features.conv3") is model.features.conv3
    with pytest.raises(ValueError, match="valid layer names include"):
        find_layer(model, "nope")
    assert infer_input_spec(model) == (3, 2)
    assert infer_input_spec(torch.nn.Linear(2, 2)) == (None, None)


class _Broken(Explainer):
    method = "broken"

    def _explain(self, x: torch.Tensor, target: Any, generator: Any) -> torch.Tensor:
        self.model.train()
        self.model.features.conv1.register_forward_hook(lambda *a: None)  # leaked on purpose
        with torch.no_grad():
            self.model.head.weight.add_(1.0)
        raise RuntimeError("midway")


def test_guard_restores_after_failure() -> None:
    model = TinyCNN(1, 2, width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="midway"), pytest.warns(RuntimeWarning, match="restored"):
        _Broken(model).explain(torch.randn(1, 1, 8, 8), 0)
    assert hook_count(model) == 0 and not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_guard_freezes_inside() -> None:
    model = TinyCNN(1, 2, width=4).train()
    with ModelStateGuard(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_monai_classifier_factory() -> None:
    model = make_classifier("resnet18", in_channels=4, num_classes=2)
    assert model.conv1.stride == (2, 2)
    with pytest.raises(ValueError, match="name must be one of"):
        make_classifier("vgg", 1, 2)
