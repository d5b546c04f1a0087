"""The DiG-IN methods through the shared explainer suite (on the blob task with a tiny DDPM as the
generator), plus what each method adds: the second model's scores, the neuron's diagnostics, the
unit choice, neuron visualisation and the settings."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from suite import ExplainerSuite
from torch import nn

from medxai.diffusion.digin import DDPMChain, DiGInConfig, DiGInEngine
from medxai.explainers.digin import (
    DiGInDisagreement,
    DiGInNeuron,
    DiGInUVCE,
    DisagreementSettings,
    NeuronSettings,
    UVCESettings,
    chain_generator,
    head_weights,
    top_units,
    visualise_units,
)
from medxai.explanation import Explanation
from medxai.targets import ClassTarget

#: a short chain and a few large Adam steps: about a second per explanation of the 32x32 blob images
ENGINE = DiGInConfig(steps=10, iterations=6, lr_latent=0.01, loss_weights=(1.0, 2.0), n_crops=2)


class Undecided(nn.Module):
    """A second model with no opinion (p = 0.5 everywhere): the disagreement objective is then the
    black box's own counterfactual, whose answer on the blob task is known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2, device=x.device)


class _DiGInSuite(ExplainerSuite):
    stochastic = True

    @pytest.fixture(autouse=True)
    def _ddpm(self, digin_ddpm: Any) -> None:
        self.ddpm = digin_ddpm

    def inject_failure(self, explainer: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected failure")

        monkeypatch.setattr(DiGInEngine, "run", fail)
        return ClassTarget(0)

    def _maps(self, explainer: Any, x: torch.Tensor) -> Any:
        """A counterfactual explains by moving AWAY from the decision: towards class 1 the blob of class 0
        must go (towards the class already seen, evidence can be added anywhere)."""
        return torch.as_tensor(explainer.explain(x, ClassTarget(1)).heatmaps)[:, 0].numpy()


class TestDiGInDisagreement(_DiGInSuite):
    method = "digin-disagreement"

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> DiGInDisagreement:
        settings = DisagreementSettings(engine=ENGINE, kind="log_probability", distance=10.0)
        return DiGInDisagreement(model, task.random_model, DDPMChain(self.ddpm), settings=settings, **kwargs)

    def _maps(self, explainer: Any, x: torch.Tensor) -> Any:
        """Against an undecided second model, towards class 1: the class-0 blob must go."""
        explainer.second_model = Undecided()
        return super()._maps(explainer, x)

    def test_second_model_scores_and_strip(self, blob_task: Any, tmp_path: Any) -> None:
        x = blob_task.x[:2]
        exp = self.make_explainer(blob_task.model, blob_task).explain(x, ClassTarget(1))
        sw = exp.sweep
        assert sw is not None and sw.second_logits is not None and sw.second_logits.shape == (2, 1, 2)
        assert sw.second_query_logits.shape == (2, 2) and sw.second_origin_logits.shape == (2, 2)
        with torch.no_grad():
            torch.testing.assert_close(torch.as_tensor(sw.second_query_logits), blob_task.random_model(x))
            torch.testing.assert_close(torch.as_tensor(sw.logits)[:, 0], blob_task.model(torch.as_tensor(sw.at(1.0))))
        assert exp.diagnostics["disagreement_reached"].shape == (2,)
        assert exp.diagnostics["losses"].shape == (2, ENGINE.iterations + 1)
        # the result is the best iterate: its un-augmented loss is the lowest of all
        best = exp.diagnostics["losses"].min(1)
        chosen = exp.diagnostics["losses"][np.arange(2), exp.diagnostics["best_iteration"]]
        np.testing.assert_allclose(chosen, best)
        files = exp.select(0).save(tmp_path / "e", query=x[:1])
        meta = json.loads((tmp_path / "e" / files["explanation"]).read_text())
        assert len(meta["sweep"]["second_probabilities"][0]) == 2 and "second_query_probabilities" in meta["sweep"]
        back = Explanation.load(tmp_path / "e")
        assert back.sweep is not None
        np.testing.assert_allclose(back.sweep.second_logits, np.asarray(sw.second_logits)[:1], rtol=1e-6)
        strip = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "e" / "strip.png"))
        assert strip.shape[0] == 26 + 2 * 32  # a second header line for the second model

    def test_disagreement_is_reached_on_the_blob(self, blob_task: Any) -> None:
        """g = the black box with its classes swapped: "f says 1 and g does not" is reachable (remove
        the class-0 blob), and the optimisation reaches it from every start."""

        class Swapped(nn.Module):
            def __init__(self, m: nn.Module) -> None:
                super().__init__()
                self.m = m

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.m(x).flip(1)

        ex = DiGInDisagreement(
            blob_task.model,
            Swapped(blob_task.model),
            DDPMChain(self.ddpm),
            settings=DisagreementSettings(engine=ENGINE, kind="logit_margin"),
        )
        exp = ex.explain(blob_task.x[:2], ClassTarget(1))
        assert (exp.sweep.origin_probabilities[:, 1] < 0.5).all()  # the reconstruction still shows the blob
        assert exp.diagnostics["disagreement_reached"].all(), exp.sweep.probabilities

    def test_needs_a_generator_and_a_module(self, blob_task: Any) -> None:
        with pytest.raises(ValueError, match="needs a generator"):
            chain_generator({})
        with pytest.raises(TypeError, match="second_model"):
            DiGInDisagreement(blob_task.model, "model", DDPMChain(self.ddpm))  # type: ignore[arg-type]


class TestDiGInUVCE(_DiGInSuite):
    method = "digin-uvce"

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> DiGInUVCE:
        return DiGInUVCE(model, DDPMChain(self.ddpm), settings=UVCESettings(engine=ENGINE), **kwargs)

    def test_mask_keeps_the_change_inside(self, blob_task: Any) -> None:
        """With the distance outside the mask, the change outside is smaller than without a mask's freedom."""
        x = blob_task.x[:2]
        free = torch.zeros(2, 1, 32, 32)
        free[..., 8:24, 8:24] = 1
        ex = DiGInUVCE(blob_task.model, DDPMChain(self.ddpm), settings=UVCESettings(engine=ENGINE, distance=50.0))
        exp = ex.explain(x, ClassTarget(1), mask=free)
        d = np.abs(exp.sweep.difference(1.0))
        inside, outside = d[..., 8:24, 8:24].mean(), (d.sum() - d[..., 8:24, 8:24].sum()) / (d.size - d[..., 8:24, 8:24].size)
        assert inside > outside, (inside, outside)


class TestDiGInNeuron(_DiGInSuite):
    method = "digin-neuron"

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> DiGInNeuron:
        return DiGInNeuron(model, DDPMChain(self.ddpm), settings=NeuronSettings(engine=ENGINE), **kwargs)

    def _maps(self, explainer: Any, x: torch.Tensor) -> Any:
        """The unit the head weighs most for class 0 (the blob's class), driven down: the blob goes."""
        return torch.as_tensor(explainer.explain(x, ClassTarget(0)).heatmaps)[:, 0].numpy()

    def test_unit_and_direction(self, blob_task: Any) -> None:
        exp = self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:2], ClassTarget(0))
        d = exp.diagnostics
        assert (d["unit"] == top_units(blob_task.model, 0, 1)[0]).all()
        assert d["moved_as_intended"].dtype == bool
        assert (d["moved_as_intended"] == (d["activation_result"] < d["activation_origin"])).all()
        assert d["moved_as_intended"].all(), d

    def test_settings(self) -> None:
        s = NeuronSettings.from_dict({"engine": {"steps": 4, "loss_weights": [1, 1]}, "direction": "increase"})
        assert s.engine.steps == 4 and s.engine.loss_weights == (1, 1) and s.direction == "increase"
        with pytest.raises(ValueError, match="unknown engine field"):
            NeuronSettings.from_dict({"engine": {"stepz": 4}})
        with pytest.raises(ValueError, match="keep"):
            NeuronSettings(keep="around")


def test_head_weights_pick_the_units_that_raise_the_class() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(head_weights(model, 1), torch.tensor([3.0, -1.0, 1.0, -2.0]))
    assert top_units(model, 1, 2) == [0, 2] and top_units(model, 0, 1) == [3]


def test_visualise_units_drives_each_unit_up(blob_task: Any, digin_ddpm: Any) -> None:
    cfg = DiGInConfig(steps=5, iterations=6, lr_latent=0.1, loss_weights=(1.0,), n_crops=2)
    vis = visualise_units(blob_task.model, DDPMChain(digin_ddpm), blob_task.x[:2], class_index=0, top_k=2, config=cfg)
    assert vis.units == top_units(blob_task.model, 0, 2) and vis.images.shape == (2, 2, 2, 32, 32)
    assert vis.activations.shape == (2, 2, 2)
    for u in range(2):  # each unit's own images raise it above the unoptimised samples
        assert vis.activations[u, :, u].mean() > vis.start_activations[u, :, u].mean()
