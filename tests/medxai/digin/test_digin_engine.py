"""DiG-IN's engine and objectives on small networks: the chain, the best-iterate rule, the norm of
x_T, each objective's sign, and a real optimisation lowering its loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.diffusion.digin import Augment, ChainGenerator, DiGInConfig, DiGInEngine, views_mean
from medxai.diffusion.digin_objectives import (
    Disagreement,
    NeuronCounterfactual,
    NeuronObjective,
    UniversalVCE,
    last_linear_input,
)

SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    prediction_type="epsilon",
    timestep_spacing="trailing",
)


class ToyChain(ChainGenerator):
    """A small conditional denoiser on (B, 1, 8, 8) images in [0, 1]: it predicts a clean image
    ``D(x_t, c)`` in [-1, 1] and returns the noise that implies (so the chain stays in range)."""

    def __init__(self) -> None:
        from diffusers import DDIMScheduler

        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))
        self.scheduler_kwargs = dict(SCHEDULE)
        self.acp = DDIMScheduler(**SCHEDULE).alphas_cumprod

    def eps(self, x_t: torch.Tensor, t: int, cond: torch.Tensor | None) -> torch.Tensor:
        c = torch.zeros_like(x_t) if cond is None else cond.reshape(-1, 1, 1, 1).expand_as(x_t)
        clean = torch.tanh(self.net(torch.cat([x_t, c], 1)))
        a = self.acp[int(t)]
        return (x_t - a.sqrt() * clean) / (1 - a).sqrt()

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(-1, 1) + 1) / 2

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1


class Linear(nn.Module):
    def __init__(self, w: float) -> None:
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(64, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[1].fill_(w)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_chain_is_deterministic_and_checkpointing_changes_nothing() -> None:
    gen = ToyChain()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    cond = torch.tensor([0.3, -0.2])
    outs = []
    for ckpt in (True, False):
        eng = DiGInEngine(gen, DiGInConfig(steps=6, iterations=0, checkpoint=ckpt))
        x, preds = eng.chain(x_T, cond)
        (g,) = torch.autograd.grad(x.sum(), x_T)
        outs.append((x.detach(), g))
        assert len(preds) == 3  # the predicted x0 of the last three steps
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_optimisation_lowers_the_loss_and_keeps_the_best_iterate() -> None:
    gen = ToyChain()

    def objective(images: torch.Tensor, augment: Augment | None) -> torch.Tensor:  # brighter is better
        if augment is None:
            return -images.flatten(1).mean(1)
        return -views_mean(augment(images).flatten(1).mean(1), len(images))

    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = DiGInConfig(steps=6, iterations=8, lr_latent=0.05, lr_cond=0.05, n_crops=2)
    res = DiGInEngine(gen, cfg).run(objective, x_T, torch.zeros(3), generator=torch.Generator().manual_seed(0))
    assert res.losses.shape == (9, 3)
    torch.testing.assert_close(res.losses.min(0).values, objective(res.images, None))  # the kept image IS the best one
    assert (res.losses.min(0).values < res.losses[0] - 1e-3).all() and (res.best_iteration > 0).all()
    torch.testing.assert_close(res.start_images, DiGInEngine(gen, cfg).chain(x_T, torch.zeros(3))[0].add(1).div(2).clamp(0, 1))
    # x_T stays on the sphere of its initial norm
    torch.testing.assert_close(res.x_T.flatten(1).norm(dim=1), x_T.flatten(1).norm(dim=1))


def test_zero_iterations_return_the_start() -> None:
    gen = ToyChain()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    res = DiGInEngine(gen, DiGInConfig(steps=4, iterations=0)).run(lambda im, aug: im.flatten(1).mean(1), x_T, None)
    torch.testing.assert_close(res.images, res.start_images)
    assert res.losses.shape == (1, 2) and (res.best_iteration == 0).all()


def test_objective_signs() -> None:
    f, g = Linear(1.0), Linear(-1.0)  # f says class 1 for bright images, g for dark ones
    bright, dark = torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8) - 1
    for kind in ("probability", "log_probability", "logit_margin"):
        d = Disagreement(f, g, k=1, kind=kind)
        assert d(bright).item() < d(dark).item(), kind  # f(1) high and g(1) low on bright images
    with pytest.raises(ValueError, match="kind"):
        Disagreement(f, g, 1, kind="odds")
    up, down = NeuronObjective(f, 5), NeuronObjective(f, 5, sign=-1)
    assert up(bright).item() == -1.0 and down(bright).item() == 1.0 and last_linear_input(f) == "head"
    with pytest.raises(ValueError, match="no layer"):
        NeuronObjective(f, 0, layer="nope")
    start = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    vce = UniversalVCE(f, target=1, start=start, mask=mask, distance=1.0)
    moved_inside, moved_outside = start.clone(), start.clone()
    moved_inside[..., :4] += 0.5
    moved_outside[..., 4:] += 0.5
    ce = torch.nn.functional.cross_entropy(f(moved_inside), torch.ones(2, dtype=torch.long), reduction="none")
    torch.testing.assert_close(vce(moved_inside), ce)  # change inside the free region costs nothing
    assert (vce(moved_outside) > vce(start)).all() or (vce(moved_outside) - vce(start)).abs().max() > 0.1
    ncf = NeuronCounterfactual(up, start, mask, distance=1.0)
    torch.testing.assert_close(ncf(moved_outside), up(moved_outside))  # change outside the kept region is free
    assert (ncf(moved_inside) > up(moved_inside)).all()


def test_augment_views_are_differentiable_and_in_order() -> None:
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    aug = Augment(n=4, scale=(1.0, 1.0), noise_sd=0.0, generator=torch.Generator().manual_seed(0))
    v = aug(x)
    assert v.shape == (8, 3, 16, 16)
    torch.testing.assert_close(v[1::2], x[1:2].expand(4, -1, -1, -1).detach(), atol=1e-5, rtol=0)  # full crops: the image
    v.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("which", ["fundus", "ct"])
def test_shipped_generators_start_from_the_query_inversion(which: str) -> None:
    """From the query's DDIM inversion the unoptimised chain returns the query (what an explanation
    then changes comes from the objective), and one optimisation step runs through the real network."""
    from medxai.config import pretrained_dir
    from medxai.data import ct_stack_set, fundus_set
    from medxai.diffusion.digin import DDPMChain, DiffAEChain
    from medxai.metrics.counterfactual import psnr

    torch.manual_seed(0)
    if which == "fundus":
        from medxai.diffusion.ddpm import load_ddpm

        gen: ChainGenerator = DDPMChain(load_ddpm(pretrained_dir() / "fundus" / "ddpm.safetensors").eval())
        x = torch.from_numpy(fundus_set(1, seed=9, size=64).x)
    else:
        from medxai.diffusion import load_autoencoder

        gen = DiffAEChain(load_autoencoder(pretrained_dir() / "ct" / "autoencoder.safetensors").eval())
        x = torch.from_numpy(ct_stack_set(1, seed=9, size=64).x)
    cond = gen.conditioning(x)
    eng = DiGInEngine(gen, DiGInConfig(steps=10, iterations=1, n_crops=2))
    x_T = gen.invert(x, cond, steps=10)
    with torch.no_grad():
        start = gen.to_images(eng.chain(x_T, cond)[0])
    assert start.shape == x.shape
    if isinstance(gen, DiffAEChain):  # the engine's chain is the autoencoder's own DDIM path
        ae = gen.ae
        z = ae.encode_stack(x)
        own = ae.decode_stack(ae.stochastic_encode_stack(x, z, 10), z, 10)
        assert psnr(start, own).mean() > 50.0
    # DDIM-10 inversion error only (measured: CT 19.8 dB, fundus 26.9 dB on these phantoms)
    assert psnr(start, x).mean() > 18.0, psnr(start, x)
    res = eng.run(lambda im, aug: im.flatten(1).mean(1), x_T, cond)  # darker is better
    assert res.losses.shape == (2, 1) and res.images.shape == x.shape
