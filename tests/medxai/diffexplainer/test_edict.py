"""EDICT: the exactly invertible sampler of the diffusion autoencoder, and DiffExplainer on top of it."""

from __future__ import annotations

import pytest
import torch
from diffae_toy import SIZE, toy_stacks

from medxai.diffusion.edict import EDICTScheduler
from medxai.metrics.counterfactual import psnr
from medxai.targets import ClassTarget


def _schedule() -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="linear", set_alpha_to_one=True, timestep_spacing="trailing")


def test_inverse_step_undoes_step_exactly() -> None:
    sched = EDICTScheduler(0.93, **_schedule())
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 4, 1, 1, generator=gen, dtype=torch.float64)

    def eps(sample: torch.Tensor, t: int) -> torch.Tensor:  # any deterministic function of (sample, t)
        return torch.tanh(sample * w + t / 1000.0)

    x = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    y = x.clone()
    for i in range(1, 11):
        fx, fy = sched.inverse_step(eps, x, y, i)
        bx, by = sched.step(eps, fx, fy, i)
        torch.testing.assert_close(bx, x, rtol=0, atol=1e-12)
        torch.testing.assert_close(by, y, rtol=0, atol=1e-12)
        x, y = fx, fy
    with pytest.raises(ValueError, match="mix"):
        EDICTScheduler(0.4, **_schedule())


def test_autoencoder_reconstructs_exactly_with_edict_not_with_ddim(toy_world) -> None:
    """At 5 steps EDICT's decode returns the query up to round-off; DDIM inversion does not."""
    ae = toy_world.ae
    x = toy_stacks(2, torch.Generator().manual_seed(1)).reshape(-1, 1, SIZE, SIZE)
    z = ae.encode_semantic(x)
    code = ae.encode_stochastic(x, z, 5, sampler="edict")
    assert code.shape == (2, *x.shape)
    rec = ae.decode(code, z, 5, sampler="edict")
    assert float(psnr(rec, x).min()) > 50.0
    ddim = ae.decode(ae.encode_stochastic(x, z, 5), z, 5)
    assert float(psnr(ddim, x).mean()) < float(psnr(rec, x).mean()) - 10.0
    with pytest.raises(ValueError, match="pair"):
        ae.decode(code[0], z, 5, sampler="edict")
    with pytest.raises(ValueError, match="sampler"):
        ae.decode(code, z, 5, sampler="bdia")


def test_diffexplainer_with_edict_reconstructs_the_query(toy_world) -> None:
    from medxai.explainers import DiffExplainer

    x = toy_world.test[:4]
    explainer = DiffExplainer(
        toy_world.teacher, toy_world.ae, toy_world.agent, step_sizes=(0.4,), encode_steps=5, decode_steps=5, sampler="edict"
    )
    exp = explainer.explain(x, ClassTarget(1))
    recon = torch.as_tensor(exp.sweep.origin)
    assert float(psnr(recon.reshape(-1, 1, SIZE, SIZE), x.reshape(-1, 1, SIZE, SIZE)).min()) > 50.0
    assert exp.parameters["sampler"] == "edict" and exp.sweep.images.shape == (4, 2, *x.shape[1:])
    with pytest.raises(ValueError, match="encode_steps"):
        DiffExplainer(toy_world.teacher, toy_world.ae, toy_world.agent, encode_steps=5, decode_steps=4, sampler="edict")
