"""DVCE passes the shared explainer suite, guides a tiny classifier's decision, rejects bad input."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from suite import ExplainerSuite

from medxai.diffusion.guidance import GuidanceConfig
from medxai.explainers.dvce import DVCE, DVCEConfig, difference_heatmap, target_log_prob
from medxai.networks.classifiers import TinyCNN
from medxai.targets import ClassTarget, ScoreDirection

#: 6 guided steps from 30 % of the schedule: fast, and the resampled noise stays small
SUITE_CONFIG = DVCEConfig(
    num_steps=20,
    skip_steps=14,
    guidance=GuidanceConfig(mode="plain", classifier_scale=0.5, distance_scale=0.05, n_augmentations=2, grad_through_unet=False),
    heatmap_sigma=1.0,
)


class TestDVCE(ExplainerSuite):
    method = "dvce"
    stochastic = True

    @pytest.fixture(autouse=True)
    def _ddpm(self, blob_ddpm: Any) -> None:
        self.ddpm = blob_ddpm

    def make_explainer(self, model: torch.nn.Module, task: Any, **kwargs: Any) -> DVCE:
        return DVCE(model, self.ddpm, config=SUITE_CONFIG, **kwargs)

    def _maps(self, explainer: Any, x: torch.Tensor) -> Any:
        """A counterfactual explains by moving AWAY from the decision: the map of "what must change so
        that class 0 is no longer seen" is the blob. (Towards an already-predicted class, DVCE adds
        evidence anywhere in the image, which is not a localisation of the existing blob.)"""
        heat = torch.as_tensor(explainer.explain(x, ScoreDirection(0, -1)).heatmaps)
        return heat[:, 0].numpy()

    def test_counterfactual_outputs(self, blob_task: Any) -> None:
        exp = self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:2], ClassTarget(1))
        assert exp.sweep is not None and exp.sweep.steps == (1.0,) and exp.sweep.origin is None
        cf = torch.as_tensor(exp.sweep.at(1.0))
        assert cf.shape == blob_task.x[:2].shape and torch.isfinite(cf).all()
        torch.testing.assert_close(torch.as_tensor(exp.sweep.difference(1.0, blob_task.x[:2])), cf - blob_task.x[:2])
        assert exp.sweep.logits.shape == (2, 1, 2) and exp.target_class == 1
        assert len(exp.diagnostics["target_reached"]) == 2
        assert exp.timings["unet_forward"] > 0
        assert exp.parameters["guidance"]["mode"] == "plain"

    def test_no_global_rng_use(self, blob_task: Any) -> None:
        state = torch.random.get_rng_state()
        self.make_explainer(blob_task.model, blob_task).explain(blob_task.x[:1], 0)
        assert torch.equal(state, torch.random.get_rng_state())

    def test_fov_mask_respected(self, blob_task: Any) -> None:
        fov = torch.ones(2, 1, 32, 32)
        fov[:, :, :, :8] = 0
        explainer = self.make_explainer(blob_task.model, blob_task)
        exp = explainer.explain(blob_task.x[:2], 1, mask=fov)
        assert torch.equal(torch.as_tensor(exp.sweep.at(1.0))[..., :8], blob_task.x[:2, ..., :8])
        assert float(exp.heatmaps[..., :8].abs().max()) == 0.0
        assert not hasattr(explainer, "_fov")  # the mask is an argument, never instance state
        with pytest.raises(ValueError, match="mask"):
            explainer.explain(blob_task.x[:2], 1, mask=torch.ones(1, 1, 32, 32))


def test_guidance_raises_target_probability(blob_task: Any, blob_ddpm: Any) -> None:
    """Towards class 1 (a blob in channel 1) on images with a blob in channel 0 only: the guided
    counterfactual must score higher for class 1 than the unguided resampling with the same seed."""
    x = blob_task.x
    common = dict(num_steps=20, skip_steps=10)
    guided = DVCE(
        blob_task.model,
        blob_ddpm,
        blob_task.model,
        config=DVCEConfig(
            **common, guidance=GuidanceConfig(mode="cone", classifier_scale=1.0, distance_scale=0.05, n_augmentations=2)
        ),
        seed=0,
    )
    unguided = DVCE(
        blob_task.model,
        blob_ddpm,
        config=DVCEConfig(
            **common, guidance=GuidanceConfig(mode="plain", classifier_scale=0.0, distance_scale=0.0, n_augmentations=1)
        ),
        seed=0,
    )
    a = guided.explain(x, ClassTarget(1))
    b = unguided.explain(x, ClassTarget(1))
    p_guided = torch.sigmoid(torch.as_tensor(a.sweep.logits)[:, 0, 1])
    p_plain = torch.sigmoid(torch.as_tensor(b.sweep.logits)[:, 0, 1])
    p_query = torch.sigmoid(a.logits[:, 1])
    assert float(p_guided.mean()) > float(p_plain.mean()) + 0.2, (p_query, p_plain, p_guided)
    assert float(p_guided.mean()) > float(p_query.mean()) + 0.2
    # identical robust and plain classifier: every gradient lies inside the cone
    assert "unet_forward" in a.timings


def test_target_log_prob() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(target_log_prob(logits, ClassTarget(0)), torch.log_softmax(logits, 1)[:, 0])
    torch.testing.assert_close(target_log_prob(logits, ScoreDirection(1, -1)), -logits[:, 1])
    torch.testing.assert_close(target_log_prob(logits[:, :1], ClassTarget(0)), torch.nn.functional.logsigmoid(logits[:, 0]))


def test_difference_heatmap_cancels_incoherent_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = 0.2 * torch.randn((1, 3, 32, 32), generator=gen)
    blob = torch.zeros(1, 3, 32, 32)
    blob[..., 12:18, 12:18] = -0.2  # a coherent darkening of the same per-pixel size
    heat = difference_heatmap(noise + blob, sigma=1.0)
    assert heat.shape == (1, 1, 32, 32)
    assert float(heat[..., 13:17, 13:17].mean()) > 2 * float(heat[..., :8, :8].mean())


def test_bad_inputs(blob_task: Any, blob_ddpm: Any) -> None:
    with pytest.raises(TypeError, match="robust_model"):
        DVCE(blob_task.model, blob_ddpm)  # default mode "cone" needs a robust classifier
    with pytest.raises(TypeError, match="ImageDDPM"):
        DVCE(blob_task.model, torch.nn.Identity(), config=SUITE_CONFIG)
    with pytest.raises(ValueError, match="skip_steps"):
        DVCEConfig(num_steps=10, skip_steps=10)
    with pytest.raises(ValueError, match="mode"):
        GuidanceConfig(mode="sideways")
    with pytest.raises(ValueError, match="unknown dvce field"):
        DVCEConfig.from_dict({"num_step": 3})
    dvce = DVCE(blob_task.model, blob_ddpm, config=SUITE_CONFIG)
    with pytest.raises(ValueError, match="out of range"):
        dvce.explain(blob_task.x[:1], ClassTarget(7))
    with pytest.raises(ValueError, match=r"\(B, 2, 32, 32\)"):
        dvce.explain(torch.zeros(1, 2, 16, 16), 0)  # the diffusion model's size
    rgb_model = TinyCNN(3, 2, width=4)
    with pytest.raises(ValueError, match="channels"):
        DVCE(rgb_model, blob_ddpm, config=SUITE_CONFIG)


def test_inversion_start_without_guidance_returns_the_query(blob_task: Any, blob_ddpm: Any) -> None:
    """From the query's deterministic inversion, zero guidance gives back the query; the paper's
    noise start redraws the image (the change DVCE's maps would otherwise credit to the classifier)."""
    import dataclasses

    from medxai.explainers.dvce import dvce_variant
    from medxai.metrics.counterfactual import psnr

    x = blob_task.x[:4]
    # the shipped config's ladder: 30 steps from t = 290 (the toy DDPM is coarse; 6 steps invert too roughly)
    base = dataclasses.replace(SUITE_CONFIG, num_steps=100, skip_steps=70, scheduler="ddim", start="inversion")
    inv = DVCE(blob_task.model, blob_ddpm, config=dvce_variant(base, "unguided_inversion_start"), seed=0).explain(x, 1)
    noisy = DVCE(blob_task.model, blob_ddpm, config=dvce_variant(base, "unguided_noise_start"), seed=0).explain(x, 1)
    p_inv = psnr(torch.as_tensor(inv.sweep.at(1.0)), x)
    p_noise = psnr(torch.as_tensor(noisy.sweep.at(1.0)), x)
    # the toy DDPM is trained for seconds (31.5 dB measured); the bench holds the shipped model to the
    # issue's 40 dB (fundus.dvce_unguided_inversion_start.psnr_db)
    assert float(p_inv.min()) > 30.0, p_inv
    assert float(p_inv.mean()) > float(p_noise.mean()) + 10.0, (p_inv, p_noise)
    with pytest.raises(ValueError, match="inversion"):
        DVCEConfig(scheduler="ddpm", start="inversion")
    with pytest.raises(ValueError, match="start"):
        DVCEConfig(start="fresh")
