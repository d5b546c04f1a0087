"""Explanation, targets and the Explainer base class."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch

from medxai.explainers import Explainer, ModelStateGuard, find_layer, hook_count, infer_input_spec
from medxai.explanation import CounterfactualSweep, Explanation
from medxai.networks.classifiers import TinyCNN, make_classifier
from medxai.targets import AllClasses, ClassTarget, NeuronTarget, ScoreDirection, as_target


def _sweep_explanation() -> Explanation:
    rng = np.random.default_rng(0)
    heat = rng.random((2, 3, 8, 8)).astype(np.float32)
    channel_maps = rng.random((2, 1, 8, 8)).astype(np.float32)
    images = rng.random((2, 4, 1, 8, 8)).astype(np.float32)  # (B, S, C, H, W)
    sweep = CounterfactualSweep(
        steps=(-1.0, -0.5, 0.5, 1.0),
        images=images,
        logits=rng.normal(size=(2, 4, 2)),
        origin=rng.random((2, 1, 8, 8)).astype(np.float32),
        origin_logits=np.zeros((2, 2)),
        agent_logits=rng.normal(size=(2, 4, 2)),
        agent_origin_logits=np.zeros((2, 2)),
    )
    return Explanation(
        method="x",
        target="ClassTarget(index=1)",
        heatmaps=heat,
        logits=torch.tensor([[0.0, 2.0]] * 2),
        target_class=1,
        sweep=sweep,
        channel_maps=channel_maps,
        latent=rng.normal(size=(2, 5)),
        parameters={"a": (1, 2)},
        seed=3,
        timings={"seconds": 1.0},
        diagnostics={"per_case": np.arange(2), "note": "ok"},
    )


def test_explanation_typed_fields_select_concat() -> None:
    exp = _sweep_explanation()
    np.testing.assert_allclose(exp.probabilities, torch.tensor([[0.0, 2.0]] * 2).softmax(1).numpy(), rtol=1e-6)
    assert exp.sweep is not None and exp.sweep.at(0.5).shape == (2, 1, 8, 8)
    np.testing.assert_allclose(exp.sweep.difference(-1.0), exp.sweep.images[:, 0] - exp.sweep.origin)
    assert exp.sweep.positive_steps == (0.5, 1.0) and exp.sweep.negative_steps == (-1.0, -0.5)
    assert exp.sweep.probabilities.shape == (2, 4, 2) and exp.sweep.agent_probabilities.shape == (2, 4, 2)
    with pytest.raises(ValueError, match="not in the sweep"):
        exp.sweep.at(0.7)
    one = exp.select(1)
    assert one.batch_size == 1 and one.sweep.images.shape == (1, 4, 1, 8, 8) and one.diagnostics["per_case"].tolist() == [1]
    both = Explanation.concat([exp.select(0), exp.select(1)])
    np.testing.assert_array_equal(both.heatmaps, exp.heatmaps)
    np.testing.assert_array_equal(both.sweep.images, exp.sweep.images)
    np.testing.assert_array_equal(both.latent, exp.latent)
    np.testing.assert_array_equal(both.channel_maps, exp.channel_maps)
    assert both.diagnostics["note"] == "ok" and both.timings["seconds"] == 2.0
    assert exp.target_probability()["sweep"][0] == pytest.approx(exp.sweep.probabilities[0, :, 1].tolist())
    with pytest.raises(ValueError, match="ascending"):
        CounterfactualSweep(steps=(1.0, -1.0), images=np.zeros((1, 2, 1, 4, 4)), logits=np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="logits"):
        CounterfactualSweep(steps=(1.0,), images=np.zeros((1, 1, 1, 4, 4)), logits=np.zeros((1, 2)))


def test_explanation_save_load(tmp_path: Any) -> None:
    exp = _sweep_explanation()
    with pytest.raises(ValueError, match="one case"):
        exp.save(tmp_path / "all")
    query = np.random.default_rng(1).random((1, 1, 8, 8)).astype(np.float32)
    files = exp.select(0).save(tmp_path / "n", query=query, provenance={"PatientID": "p1"})
    assert set(files) == {
        "heatmap_t0",
        "heatmap_t1",
        "heatmap_t2",
        "channel_maps",
        "difference_minus",
        "difference_plus",
        "counterfactuals",
        "strip",
        "explanation",
    }
    back = Explanation.load(tmp_path / "n")
    np.testing.assert_array_equal(back.heatmaps, exp.heatmaps[:1])
    assert back.seed == 3 and back.parameters == {"a": [1, 2]} and back.target_class == 1
    np.testing.assert_allclose(back.sweep.images, exp.sweep.images[:1])
    np.testing.assert_allclose(back.sweep.origin, exp.sweep.origin[:1])
    np.testing.assert_array_equal(back.channel_maps, exp.channel_maps[:1])
    meta = json.loads((tmp_path / "n" / "explanation.json").read_text())
    assert meta["provenance"] == {"PatientID": "p1"}
    np.testing.assert_allclose(meta["probabilities"], exp.probabilities[0], rtol=1e-6)
    np.testing.assert_allclose(meta["sweep"]["probabilities"], exp.sweep.probabilities[0], rtol=1e-6)
    assert meta["sweep"]["steps"] == [-1.0, -0.5, 0.5, 1.0] and "agent_probabilities" in meta["sweep"]
    import nibabel as nib

    minus = np.asarray(nib.load(str(tmp_path / "n" / files["difference_minus"])).dataobj)
    np.testing.assert_allclose(minus, exp.sweep.images[0, 0] - exp.sweep.origin[0], rtol=1e-6)  # (C, H, W)
    from PIL import Image

    strip = np.asarray(Image.open(tmp_path / "n" / "strip.png"))
    assert strip.ndim == 3 and strip.shape[1] >= 9 * 8  # query, recon, 4 steps, 2 changes, heatmap
    assert not [p for p in (tmp_path / "n").iterdir() if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(ValueError, match="heatmaps"):
        Explanation(method="x", target="t", heatmaps=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="explanation.json"):
        Explanation.load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.method = "y"  # type: ignore[misc]  # frozen


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
