"""DiffAE networks, DDIM encoding/decoding, agent distillation, counterfactual direction, metrics."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from diffae_toy import SIZE, SLICES, TINY, RegionTeacher, central_score

from medxai.diffusion import load_autoencoder, save_autoencoder
from medxai.explainers.base import hook_count
from medxai.explainers.diffexplainer import DiffExplainer
from medxai.metrics.counterfactual import (
    agent_teacher_agreement,
    change_outside,
    flip_rate,
    heatmap_auroc,
    monotonicity,
    psnr,
    ssim,
    summarise_diffexplainer,
)
from medxai.networks.agent import Agent, load_agent, save_agent
from medxai.networks.diffae import DiffAENet, DiffAENetConfig
from medxai.networks.teacher import TeacherFeatures
from medxai.targets import ClassTarget, NeuronTarget
from medxai.training import TrainConfig, agreement, train_agent


def _randomised_net(cfg: DiffAENetConfig) -> DiffAENet:
    net = DiffAENet(cfg, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # undo the zero-init so every path matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


def test_network_shapes_and_latent_conditioning() -> None:
    net = _randomised_net(TINY)
    x = torch.rand(3, 1, SIZE, SIZE)
    z = net.encode(x)
    assert z.shape == (3, TINY.z_dim)
    t = torch.tensor([0, 500, 999])
    out = net(x, t, z)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out2 = net(x, t, z + 1.0)
    assert (out2 - out).abs().mean() > 1e-3, "changing z_sem must change the noise prediction"
    out3 = net(x, torch.tensor([10, 10, 10]), z)
    assert (out3 - out).abs().mean() > 1e-3, "changing t must change the noise prediction"
    assert sum(net.num_parameters().values()) < 1_000_000


def test_encoder_has_no_time_input_and_zero_init_start() -> None:
    net = DiffAENet(TINY)
    assert not any("time" in n for n, _ in net.encoder.named_modules())
    x = torch.rand(2, 1, SIZE, SIZE)
    assert torch.equal(net(x, torch.tensor([3, 4]), net.encode(x)), torch.zeros_like(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=30, channel_mults=(1, 2, 2)), "not divisible"),
        (dict(base_channels=12, groups=8), "groups=8"),
        (dict(attention_levels=(5,)), "attention_levels"),
        (dict(z_dim=0), "z_dim"),
    ],
)
def test_network_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiffAENetConfig(**kwargs)


def test_ddim_reconstruction_improves_with_steps(toy_world) -> None:
    ae = toy_world.ae
    x = toy_world.test[:3, :1]
    figures = {}
    for steps in (5, 20, 50):
        figures[steps] = float(psnr(x, ae.reconstruct(x, steps, steps)).mean())
    assert figures[5] < figures[20] < figures[50], figures
    assert figures[50] > 15.0, figures


def test_stack_helpers_match_per_slice(toy_world) -> None:
    ae = toy_world.ae
    x = toy_world.test[:2]
    z = ae.encode_stack(x)
    assert z.shape == (2, SLICES * TINY.z_dim)
    torch.testing.assert_close(z[:, TINY.z_dim :], ae.encode_semantic(x[:, 1:2]), rtol=1e-5, atol=1e-5)
    x_T = ae.stochastic_encode_stack(x, z, steps=5)
    rec = ae.decode_stack(x_T, z, steps=5, batch_size=3)
    ref = ae.decode(ae.encode_stochastic(x[:, :1], z[:, : TINY.z_dim], 5), z[:, : TINY.z_dim], 5)
    torch.testing.assert_close(rec[:, :1], ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="image_size=32"):
        ae.encode_semantic(torch.rand(1, 1, 16, 16))


def test_training_loss_decreased(toy_world) -> None:
    hist = toy_world.ae_history
    assert hist["loss_last"] < hist["loss_first"]


def test_agent_recovers_linear_teacher_features() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d, f = 2000, 24, 12
    z = torch.randn(n, d, generator=gen) * 3.0 + 1.0
    A = torch.randn(f, d, generator=gen) / math.sqrt(d)
    feats = z @ A.T + 0.5
    head = torch.nn.Linear(f, 2)
    with torch.no_grad():
        head.weight.copy_(torch.randn(2, f, generator=gen))
        head.bias.zero_()
    logits = head(feats).detach()
    agent = Agent(d, f, 2, head, torch.Generator().manual_seed(1))
    hist = train_agent(agent, z, logits, feats, TrainConfig(steps=1500, batch_size=256, lr=1e-2, seed=0))
    assert hist["mode"] == "features"
    with torch.no_grad():
        z_n = agent.normalise(z)
        err = (agent.features(z_n) - feats).abs().mean() / feats.abs().mean()
        assert torch.equal(agent.layer2.weight, head.weight)  # frozen copy of the teacher's head
    assert err < 0.05, float(err)
    assert hist["agreement_train"] >= 0.98
    assert agreement(agent(z_n), logits) >= 0.98


def test_agent_logits_only_when_no_features(caplog) -> None:
    teacher = torch.jit.script(RegionTeacher().eval())
    # features of a TorchScript teacher cannot be read: asking for them is an error, not a quiet fallback
    with pytest.raises(ValueError, match=r"teacher\.classifier_layer is 'head'.*TorchScript.*remove teacher\.classifier_layer"):
        TeacherFeatures(teacher, "head")
    with caplog.at_level(logging.WARNING):
        tf = TeacherFeatures(teacher, None)
    assert not tf.has_features and tf.mode == "logits" and "logits only" in caplog.text and "TorchScript" in caplog.text
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 8, generator=gen)
    logits = torch.stack([z[:, 0] - z[:, 1], z[:, 1] - z[:, 0]], 1)
    agent = Agent(8, 16, 2, None)
    hist = train_agent(agent, z, logits, None, TrainConfig(steps=600, batch_size=128, lr=1e-2))
    assert hist["mode"] == "logits" and hist["agreement_train"] > 0.95


def _explainer(world, **kw) -> DiffExplainer:
    kw.setdefault("step_sizes", (0.2, 0.4, 0.6))
    kw.setdefault("encode_steps", 10)
    kw.setdefault("decode_steps", 10)
    return DiffExplainer(world.teacher, world.ae, world.agent, **kw)


def test_counterfactual_direction_follows_teacher(toy_world) -> None:
    x = toy_world.test
    exp = _explainer(toy_world).explain(x, ClassTarget(1))
    sw = exp.sweep
    assert sw is not None and sw.steps == (-0.6, -0.4, -0.2, 0.2, 0.4, 0.6)
    recon, plus, minus = (torch.as_tensor(a) for a in (sw.origin, sw.at(0.6), sw.at(-0.6)))
    c_rec, c_plus, c_minus = central_score(recon), central_score(plus), central_score(minus)
    assert float((c_plus > c_rec).float().mean()) >= 0.75, (c_plus, c_rec)
    assert float((c_minus < c_rec).float().mean()) >= 0.75, (c_minus, c_rec)
    target = torch.as_tensor(sw.logits)[..., 1]  # (B, S): the teacher's target logit at every signed step
    mono = monotonicity(target[:, :3].flip(1), torch.as_tensor(sw.origin_logits)[:, 1], target[:, 3:])
    assert mono["direction_correct"] >= 0.75, mono
    assert mono["spearman"] > 0.5, mono
    # shapes of everything the pipeline writes
    assert exp.heatmaps.shape == (8, 1, SIZE, SIZE)
    assert sw.difference(0.4).shape == x.shape
    assert sw.logits.shape == (8, 6, 2) and sw.agent_logits.shape == (8, 6, 2)
    assert sw.agent_origin_logits.shape == (8, 2) and exp.latent.shape[0] == 8
    summary = summarise_diffexplainer(x, exp, 1)
    json.dumps(summary)
    assert summary["agent_teacher_agreement"] >= 0.75


def test_explainer_input_and_target_errors(toy_world) -> None:
    explainer = _explainer(toy_world)
    with pytest.raises(ValueError, match="channels"):
        explainer.explain(torch.rand(1, 4, SIZE, SIZE), 1)
    with pytest.raises(ValueError, match="32x32"):
        explainer.explain(torch.rand(1, SLICES, 16, 16), 1)
    with pytest.raises(TypeError, match="ClassTarget"):
        explainer.explain(toy_world.test[:1], NeuronTarget("head", 0))
    with pytest.raises(ValueError, match="step_sizes"):
        _explainer(toy_world, step_sizes=(2.0, 1.0))
    assert hook_count(toy_world.teacher) == 0


def test_save_load_roundtrip(toy_world, tmp_path) -> None:
    save_autoencoder(toy_world.ae, tmp_path / "ae.safetensors")
    ae2 = load_autoencoder(tmp_path / "ae.safetensors")
    x = toy_world.test[:1, :1]
    torch.testing.assert_close(ae2.encode_semantic(x), toy_world.ae.encode_semantic(x))
    save_agent(toy_world.agent, tmp_path / "agent.safetensors")
    ag2 = load_agent(tmp_path / "agent.safetensors")
    torch.testing.assert_close(ag2.latent_std, toy_world.agent.latent_std)
    assert ag2.frozen_head and not ag2.layer2.weight.requires_grad
    # weights that do not fit the network: one clear error naming the file
    other = DiffAENetConfig(image_size=SIZE, base_channels=8, channel_mults=(1, 2), z_dim=16)
    with pytest.raises(ValueError, match=r"ae\.safetensors.*do not fit"):
        load_autoencoder(tmp_path / "ae.safetensors", network=other)


def test_metrics_on_known_values() -> None:
    a = torch.zeros(2, 1, 8, 8)
    b = a + 0.1
    torch.testing.assert_close(psnr(a, b), torch.full((2,), 20.0))
    assert float(ssim(a + 0.5, a + 0.5).min()) > 0.999
    q = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # case 0 is class 0, case 1 class 1
    plus = torch.tensor([[[0.0, 1.0]], [[0.0, 3.0]]])
    minus = torch.tensor([[[3.0, 0.0]], [[1.0, 0.0]]])
    assert flip_rate(q, plus, minus, class_index=1) == 1.0
    assert flip_rate(q, minus, plus, class_index=1) == 0.0
    mono = monotonicity(torch.tensor([[-1.0, -2.0]]), torch.tensor([0.0]), torch.tensor([[1.0, 2.0]]))
    assert mono == pytest.approx({"spearman": 1.0, "fraction_monotone": 1.0, "direction_correct": 1.0})
    heat = torch.zeros(1, 1, 4, 4)
    heat[0, 0, :2] = 1.0
    mask = heat > 0
    assert heatmap_auroc(heat, mask) == [1.0]
    out = change_outside(heat, mask)
    assert out["outside_share"] == 0.0 and out["mean_inside"] == 1.0
    assert agent_teacher_agreement(q, q) == 1.0
