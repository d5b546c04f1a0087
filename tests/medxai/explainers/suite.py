"""The shared explainer test suite: every explainer's test module subclasses ``ExplainerSuite``.

A subclass provides ``make_explainer(model, task, **kwargs)`` and may adjust the class attributes.
Uses the session fixture ``blob_task`` (conftest.py): a tiny CNN trained so that a bright blob in
channel k means class k; the evaluation images hold one blob in channel 0.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch

from medxai.explainers.base import Explainer, hook_count
from medxai.explanation import Explanation
from medxai.metrics import mass_on_mask, spearman
from medxai.targets import ClassTarget, Target


class FailingTarget(Target):
    """Validates like ClassTarget(0) but raises when an explainer evaluates it."""

    class_index = 0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected failure")

    def __repr__(self) -> str:
        return "FailingTarget()"


class ExplainerSuite:
    """Checks every explainer must pass. Subclasses implement :meth:`make_explainer`."""

    #: the explainer's maps must differ from those of a randomised model: median Spearman below this
    randomisation_max_spearman: float = 0.5
    #: the trained model's maps must put this many times the chance share of mass on the blob
    mass_over_chance: float = 1.5
    #: whether the method takes a layer name
    has_layer: bool = False
    #: whether the output depends on a seed
    stochastic: bool = False
    #: expected number of maps per input for ``ClassTarget``
    maps_per_target: int = 1
    #: the registered name of the method under test (tests/medxai/explainers/test_registry.py checks
    #: that every registered method has a suite)
    method: str = ""

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> Explainer:
        raise NotImplementedError

    def make_explainer_with_layer(self, model: torch.nn.Module, task: Any, layer: str) -> Explainer:
        raise NotImplementedError

    def inject_failure(self, explainer: Explainer, monkeypatch: pytest.MonkeyPatch) -> Target:
        """Arrange for ``explain`` to fail midway; return the target to pass."""
        return FailingTarget()

    # ------------------------------------------------------------------ tests
    def test_output_on_input_grid_and_finite(self, blob_task: Any) -> None:
        exp = self.make_explainer(blob_task.model, blob_task).explain(blob_task.x, ClassTarget(0))
        assert isinstance(exp, Explanation)
        heat = exp.heatmaps
        assert tuple(heat.shape) == (blob_task.x.shape[0], self.maps_per_target, *blob_task.x.shape[2:])
        assert torch.isfinite(torch.as_tensor(heat)).all()
        assert tuple(exp.logits.shape) == (blob_task.x.shape[0], 2)
        probs = exp.probabilities
        assert probs.shape == (blob_task.x.shape[0], 2) and np.allclose(probs.sum(1), 1.0)

    def test_same_seed_same_output(self, blob_task: Any) -> None:
        a = self.make_explainer(blob_task.model, blob_task, seed=3).explain(blob_task.x[:2], ClassTarget(0))
        b = self.make_explainer(blob_task.model, blob_task, seed=3).explain(blob_task.x[:2], ClassTarget(0))
        assert torch.equal(torch.as_tensor(a.heatmaps), torch.as_tensor(b.heatmaps))
        if self.stochastic:
            c = self.make_explainer(blob_task.model, blob_task, seed=4).explain(blob_task.x[:2], ClassTarget(0))
            assert not torch.equal(torch.as_tensor(a.heatmaps), torch.as_tensor(c.heatmaps))
            assert a.seed == 3

    def test_input_not_modified(self, blob_task: Any) -> None:
        x = blob_task.x[:1].clone()
        before = x.clone()
        self.make_explainer(blob_task.model, blob_task).explain(x, ClassTarget(0))
        assert torch.equal(x, before) and not x.requires_grad

    def test_hooks_released(self, blob_task: Any, fresh_model: torch.nn.Module) -> None:
        assert hook_count(fresh_model) == 0
        self.make_explainer(fresh_model, blob_task).explain(blob_task.x[:1], ClassTarget(0))
        assert hook_count(fresh_model) == 0

    def test_hooks_released_after_exception(
        self, blob_task: Any, fresh_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        explainer = self.make_explainer(fresh_model, blob_task)
        target = self.inject_failure(explainer, monkeypatch)
        with pytest.raises(RuntimeError, match="injected failure"):
            explainer.explain(blob_task.x[:1], target)
        assert hook_count(fresh_model) == 0
        assert all(p.requires_grad for p in fresh_model.parameters())
        assert not fresh_model.training

    def test_model_state_unchanged(self, blob_task: Any, fresh_model: torch.nn.Module) -> None:
        model = fresh_model
        model.train()
        model.head.eval()  # a mixed state must come back exactly
        frozen = next(iter(model.parameters()))
        frozen.requires_grad_(False)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        modes = {n: m.training for n, m in model.named_modules()}
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.make_explainer(model, blob_task).explain(blob_task.x[:1], ClassTarget(0))
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        for k, v in model.state_dict().items():
            assert torch.equal(v, weights[k]), k
        assert all(p.grad is None for p in model.parameters())

    def test_classifier_was_trained(self, blob_task: Any) -> None:
        assert blob_task.accuracy > 0.9

    def _maps(self, explainer: Explainer, x: torch.Tensor) -> np.ndarray:
        heat = torch.as_tensor(explainer.explain(x, ClassTarget(0)).heatmaps)
        return heat[:, 0].numpy()

    def _trained_maps(self, task: Any) -> np.ndarray:
        key = f"maps:{type(self).__qualname__}"
        if key not in task.cache:
            task.cache[key] = self._maps(self.make_explainer(task.model, task), task.x)
        return task.cache[key]

    def test_parameter_randomisation(self, blob_task: Any) -> None:
        """Adebayo et al.: a re-initialised model must not get the same explanation."""
        trained = self._trained_maps(blob_task)
        rand = self._maps(self.make_explainer(blob_task.random_model, blob_task), blob_task.x)
        rho = [spearman(a, b) for a, b in zip(trained, rand)]
        assert float(np.median(rho)) < self.randomisation_max_spearman, rho

    def test_trained_map_on_blob(self, blob_task: Any) -> None:
        maps = self._trained_maps(blob_task)
        masks = blob_task.masks.numpy()
        ratio = [mass_on_mask(m, k) / k.mean() for m, k in zip(maps, masks)]
        assert float(np.median(ratio)) > self.mass_over_chance, ratio

    def test_wrong_target_index(self, blob_task: Any) -> None:
        with pytest.raises(ValueError, match="out of range"):
            self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:1], ClassTarget(5))

    def test_unknown_layer(self, blob_task: Any) -> None:
        if not self.has_layer:
            pytest.skip("method takes no layer")
        with pytest.raises(ValueError, match="features.conv3"):
            self.make_explainer_with_layer(blob_task.model, blob_task, "features.conv9").explain(blob_task.x[:1], ClassTarget(0))

    def test_wrong_input_shape(self, blob_task: Any) -> None:
        explainer = self.make_explainer(blob_task.model, blob_task)
        with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
            explainer.explain(blob_task.x[0], ClassTarget(0))  # missing batch axis
        with pytest.raises(ValueError, match="channels"):
            explainer.explain(blob_task.x[:1, :1], ClassTarget(0))
        with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
            explainer.explain(blob_task.x[:1, :, None], ClassTarget(0))  # 3D input to a 2D model

    def test_save_load_roundtrip(self, blob_task: Any, tmp_path: Any) -> None:
        exp = self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:1], ClassTarget(0))
        files = exp.save(tmp_path / "e", query=blob_task.x[:1])
        back = Explanation.load(tmp_path / "e")
        assert back.method == exp.method and back.target_class == 0
        np.testing.assert_allclose(back.heatmaps, torch.as_tensor(exp.heatmaps).numpy(), rtol=1e-6)
        np.testing.assert_allclose(back.probabilities, exp.probabilities, rtol=1e-6)
        assert {"heatmap", "strip", "explanation"} <= set(files) or {"heatmap_t0", "strip", "explanation"} <= set(files)
        meta = json.loads((tmp_path / "e" / "explanation.json").read_text())
        assert meta["method"] == exp.method and len(meta["probabilities"]) == 2
        if exp.sweep is not None:
            assert back.sweep is not None and back.sweep.steps == exp.sweep.steps
            np.testing.assert_allclose(back.sweep.images, np.asarray(exp.sweep.images), rtol=1e-6)

    def test_registered_with_settings(self, blob_task: Any) -> None:
        """The method is in the registry under its own name, with a settings dataclass whose defaults build."""
        from medxai.registry import get_method

        explainer = self.make_explainer(blob_task.model, blob_task)
        assert explainer.method == self.method, "set the suite's `method` to the registered name"
        spec = get_method(explainer.method)
        assert isinstance(explainer, spec.cls)
        assert dataclasses.is_dataclass(spec.settings_from({}))
