"""DiG-IN's engine: optimise the inputs of a differentiable DDIM chain so its output meets an objective.

DiG-IN (Augustin, Neuhaus, Hein, CVPR 2024; METHODS.md section 4) runs the FULL deterministic DDIM
chain with gradients on and optimises what goes into it with Adam: the starting noise ``x_T`` (after
every update rescaled to its initial norm, so it stays a plausible Gaussian sample) and per-step deltas
on the conditioning. The loss is an objective (:mod:`medxai.diffusion.digin_objectives`) on the
predicted clean image ``x0`` of the last few steps, each seen through random crops plus a little
noise (so the optimum is not an adversarial pixel pattern); every iterate's un-augmented image and
loss are kept and the result, per sample, is the iterate with the lowest un-augmented loss (iterate 0
is the unoptimised image, so the result is never worse than the start).

Here the generators are the project's own (the original uses Stable Diffusion): the CT diffusion
autoencoder, conditioned on per-slice semantic codes (:class:`DiffAEChain`), and the unconditional
fundus DDPM (:class:`DDPMChain`, nothing to condition on: only ``x_T`` is optimised). The scheduler
is diffusers' ``DDIMScheduler`` (eta 0); each step runs under ``torch.utils.checkpoint`` so memory
grows with one step's activations, not the chain's.

Start points: a sample of the generator (fresh ``x_T``, the semantic code of a real image or a
random one) or the query's deterministic DDIM inversion (:meth:`ChainGenerator.invert`), from which
the unoptimised chain reproduces the query up to the inversion error.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler
from torch.utils.checkpoint import checkpoint

from medxai.progress import ProgressFn

__all__ = [
    "Augment",
    "ChainGenerator",
    "DDPMChain",
    "DiffAEChain",
    "DiGInConfig",
    "DiGInEngine",
    "DiGInResult",
    "Objective",
    "views_mean",
]

logger = logging.getLogger(__name__)

#: an objective: images ``(B, ...)`` in the classifiers' range and an optional augmentation -> loss ``(B,)``
Objective = Callable[[torch.Tensor, "Augment | None"], torch.Tensor]


# ------------------------------------------------------------------------------------- generators
class ChainGenerator(abc.ABC):
    """The diffusion model as the engine sees it: noise prediction given a conditioning, its DDIM
    scheduler settings, and the map between the model's sample space and the classifiers' images."""

    #: keyword arguments of diffusers' ``DDIMScheduler`` for this model's noise schedule
    scheduler_kwargs: dict[str, Any]

    @abc.abstractmethod
    def eps(self, x_t: torch.Tensor, t: int, cond: torch.Tensor | None) -> torch.Tensor:
        """Predicted noise for samples ``x_t`` at timestep ``t`` (differentiable)."""

    @abc.abstractmethod
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (model space) -> images the classifiers take (e.g. ``(B, n, S, S)`` stacks in [0, 1])."""

    @abc.abstractmethod
    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images the classifiers take -> samples in model space (the inverse of :meth:`to_images`)."""

    def conditioning(self, images: torch.Tensor) -> torch.Tensor | None:
        """The conditioning of real ``images`` (None for an unconditional model)."""
        return None

    @torch.no_grad()
    def invert(self, images: torch.Tensor, cond: torch.Tensor | None, steps: int) -> torch.Tensor:
        """Deterministic DDIM inversion of ``images`` to ``x_T`` with ``steps`` steps (the start point
        from which the unoptimised chain returns the query, up to the inversion error)."""
        sched = DDIMInverseScheduler(**self.scheduler_kwargs)
        sched.set_timesteps(steps)
        ratio = sched.config.num_train_timesteps // steps
        sample = self.from_images(images)
        for t in sched.timesteps:
            t_model = max(int(t) - ratio, 0)  # the level the sample is at now
            sample = sched.step(self.eps(sample, t_model, cond), int(t), sample).prev_sample
        return sample

    def noise(self, images_like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh ``x_T`` shaped like the samples of ``images_like``."""
        shape = self.from_images(images_like).shape
        return torch.randn(shape, generator=generator).to(images_like.device)


class DiffAEChain(ChainGenerator):
    """The CT diffusion autoencoder: one sample per slice ``(B*n, 1, S, S)``, conditioned on each
    slice's semantic code ``(B*n, z_dim)``; images are stacks ``(B, n, S, S)`` in [0, 1].

    Parameters
    ----------
    autoencoder : medxai.diffusion.autoencoder.DiffusionAutoencoder
    n_slices : int
        Slices per stack (4).
    """

    def __init__(self, autoencoder: Any, n_slices: int = 4) -> None:
        self.ae = autoencoder
        self.n = int(n_slices)
        self.scheduler_kwargs = autoencoder.schedule.scheduler_kwargs()

    def eps(self, x_t: torch.Tensor, t: int, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None:
            raise ValueError("the diffusion autoencoder needs the semantic codes (B*n, z_dim) as conditioning.")
        return self.ae.net(x_t, torch.full((x_t.shape[0],), int(t), device=x_t.device), cond)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).reshape(-1, self.n, s, s)

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        s = images.shape[-1]
        return images.reshape(-1, 1, s, s) * 2.0 - 1.0

    def conditioning(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.ae.encode_stack(images)
        return self.ae.split_latent(z, self.n)


class DDPMChain(ChainGenerator):
    """The unconditional fundus DDPM: samples ``(B, 3, S, S)`` in [-1, 1], images in its data range.

    Parameters
    ----------
    ddpm : medxai.diffusion.ddpm.ImageDDPM
    """

    def __init__(self, ddpm: Any) -> None:
        self.ddpm = ddpm
        self.scheduler_kwargs = {**dict(ddpm.make_scheduler("ddim").config), "clip_sample": False}

    def eps(self, x_t: torch.Tensor, t: int, cond: torch.Tensor | None) -> torch.Tensor:
        return self.ddpm.eps(x_t, int(t))

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.ddpm.from_model_range(x.clamp(-1.0, 1.0))

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.ddpm.to_model_range(images)


# ------------------------------------------------------------------------------------ augmentation
class Augment:
    """Random crops (resized back to the full size) plus Gaussian noise: ``n`` views per image.

    Differentiable in the image (a batched affine ``grid_sample``): hand-written because the
    augmentation libraries' random crops act on one array at a time and are not meant to carry gradients.

    Parameters
    ----------
    n : int
        Views per image.
    scale : (float, float)
        Range of the crop side as a fraction of the image side.
    noise_sd : float
        Standard deviation of the added noise (image units).
    generator : torch.Generator, optional
    """

    def __init__(
        self,
        n: int = 16,
        scale: tuple[float, float] = (0.7, 1.0),
        noise_sd: float = 0.005,
        generator: torch.Generator | None = None,
    ) -> None:
        if n < 1 or not (0.0 < scale[0] <= scale[1] <= 1.0) or noise_sd < 0:
            raise ValueError(f"Augment needs n >= 1, 0 < scale low <= high <= 1 and noise_sd >= 0; got {n}, {scale}, {noise_sd}.")
        self.n, self.scale, self.noise_sd, self.generator = int(n), scale, float(noise_sd), generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(n * B, C, H, W)``: view ``v`` of image ``b`` at row ``v * B + b``."""
        b = x.shape[0]
        m = self.n * b
        lo, hi = self.scale
        s = lo + (hi - lo) * torch.rand(m, generator=self.generator)
        off = (1.0 - s)[:, None] * (2.0 * torch.rand(m, 2, generator=self.generator) - 1.0)  # the crop stays inside
        theta = torch.zeros(m, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = s, s
        theta[:, :, 2] = off
        theta = theta.to(x.device, x.dtype)
        xs = x.repeat(self.n, *([1] * (x.ndim - 1)))
        grid = F.affine_grid(theta, list(xs.shape), align_corners=False)
        out = F.grid_sample(xs, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.noise_sd:
            out = out + self.noise_sd * torch.randn(out.shape, generator=self.generator).to(out.device, out.dtype)
        return out


# ----------------------------------------------------------------------------------------- engine
@dataclasses.dataclass(frozen=True)
class DiGInConfig:
    """Settings of :class:`DiGInEngine` (paper values where they exist; see METHODS.md section 4).

    Parameters
    ----------
    steps : int
        DDIM steps of the chain (paper 20).
    iterations : int
        Adam updates (paper about 20); ``iterations + 1`` images are made (iterate 0 = the start).
    lr_latent, lr_cond : float
        Adam learning rates of ``x_T`` (0.001) and of the per-step conditioning deltas (0.01).
    loss_weights : sequence of float
        Weights of the objective on the predicted x0 of the last ``len(loss_weights)`` steps (1:2:3).
    n_crops : int
        Augmented views per image and loss step (paper 16).
    crop_scale : (float, float)
        Crop side range as a fraction of the image side.
    noise_sd : float
        Noise on each view (paper 0.005).
    optimise_conditioning : bool
        Optimise the per-step conditioning deltas (a conditioned generator only).
    checkpoint : bool
        Recompute each step's activations in the backward pass (``torch.utils.checkpoint``).
    """

    steps: int = 20
    iterations: int = 20
    lr_latent: float = 1e-3
    lr_cond: float = 1e-2
    loss_weights: tuple[float, ...] = (1.0, 2.0, 3.0)
    n_crops: int = 16
    crop_scale: tuple[float, float] = (0.7, 1.0)
    noise_sd: float = 0.005
    optimise_conditioning: bool = True
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.iterations < 0:
            raise ValueError(f"steps must be >= 1 and iterations >= 0, got {self.steps}, {self.iterations}.")
        if not self.loss_weights or len(self.loss_weights) > self.steps or any(w < 0 for w in self.loss_weights):
            raise ValueError(f"loss_weights must be 1..steps non-negative weights, got {self.loss_weights!r}.")


@dataclasses.dataclass
class DiGInResult:
    """What one optimisation made.

    Attributes
    ----------
    images : torch.Tensor
        Per sample, the iterate with the lowest un-augmented loss (classifier input shape).
    start_images : torch.Tensor
        Iterate 0: the unoptimised chain's output.
    losses : torch.Tensor
        ``(iterations + 1, B)`` un-augmented loss of every iterate.
    best_iteration : torch.Tensor
        ``(B,)`` int: which iterate ``images`` is.
    x_T : torch.Tensor
        The optimised starting noise (last iterate).
    """

    images: torch.Tensor
    start_images: torch.Tensor
    losses: torch.Tensor
    best_iteration: torch.Tensor
    x_T: torch.Tensor


class DiGInEngine:
    """Optimise ``x_T`` and per-step conditioning deltas of a DDIM chain against an objective.

    Parameters
    ----------
    generator : ChainGenerator
        The diffusion model (:class:`DiffAEChain`, :class:`DDPMChain`).
    config : DiGInConfig
    progress : callable, optional
        ``progress("digin", iteration, iterations)``.
    """

    def __init__(self, generator: ChainGenerator, config: DiGInConfig | None = None, progress: ProgressFn | None = None) -> None:
        self.gen = generator
        self.config = config or DiGInConfig()
        self.progress = progress

    def _scheduler(self) -> DDIMScheduler:
        sched = DDIMScheduler(**self.gen.scheduler_kwargs)
        sched.set_timesteps(self.config.steps)
        return sched

    def chain(
        self, x_T: torch.Tensor, cond: torch.Tensor | None, deltas: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the DDIM chain (eta 0): the final sample and the predicted x0 of the last
        ``len(loss_weights)`` steps (model space), differentiable in ``x_T``, ``cond`` and ``deltas``
        (``(steps, *cond.shape)``, one conditioning offset per step)."""
        sched = self._scheduler()
        keep = len(self.config.loss_weights)
        x, preds = x_T, []
        n = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            c = cond if cond is None or deltas is None else cond + deltas[i]

            def step(x: torch.Tensor, c: torch.Tensor | None, t: int = int(t)) -> tuple[torch.Tensor, torch.Tensor]:
                out = sched.step(self.gen.eps(x, t, c), t, x, eta=0.0)
                return out.prev_sample, out.pred_original_sample

            if self.config.checkpoint and torch.is_grad_enabled():
                x, x0 = checkpoint(step, x, c, use_reentrant=False)
            else:
                x, x0 = step(x, c)
            if i >= n - keep:
                preds.append(x0)
        return x, preds

    def run(
        self,
        objective: Objective,
        x_T: torch.Tensor,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DiGInResult:
        """Optimise from ``x_T`` (and ``cond``, kept fixed; only its per-step deltas move) to lower
        ``objective``; returns every sample's best iterate (:class:`DiGInResult`)."""
        cfg = self.config
        x_T = x_T.detach().clone().requires_grad_(True)
        norm0 = x_T.detach().flatten(1).norm(dim=1)
        params: list[dict[str, Any]] = [{"params": [x_T], "lr": cfg.lr_latent}]
        deltas = None
        if cond is not None and cfg.optimise_conditioning:
            deltas = torch.zeros(cfg.steps, *cond.shape, device=cond.device, requires_grad=True)
            params.append({"params": [deltas], "lr": cfg.lr_cond})
        opt = torch.optim.Adam(params)
        augment = Augment(cfg.n_crops, cfg.crop_scale, cfg.noise_sd, generator)
        weights = torch.tensor(cfg.loss_weights) / sum(cfg.loss_weights)
        losses: list[torch.Tensor] = []
        best_img: torch.Tensor | None = None
        start: torch.Tensor | None = None
        best_loss: torch.Tensor | None = None
        best_it = None
        for it in range(cfg.iterations + 1):
            final = it == cfg.iterations
            with torch.set_grad_enabled(not final):
                x, preds = self.chain(x_T, cond.detach() if cond is not None else None, deltas)
                images = self.gen.to_images(x)
                with torch.no_grad():
                    plain = objective(images.detach(), None).detach()  # the un-augmented loss of this iterate
                losses.append(plain.cpu())
                img = images.detach().cpu()
                if start is None:
                    start, best_img, best_loss = img.clone(), img.clone(), plain.cpu().clone()
                    best_it = torch.zeros(len(plain), dtype=torch.long)
                else:
                    assert best_loss is not None and best_img is not None and best_it is not None
                    better = plain.cpu() < best_loss
                    best_img[better], best_loss[better], best_it[better] = img[better], plain.cpu()[better], it
                if final:
                    break
                opt.zero_grad()
                # each loss step's classifier graph is built and freed on its own (memory: one classifier
                # pass over the crops, not three); their gradients on x0 then go back through the chain once
                grads = []
                for w, p in zip(weights, preds):
                    leaf = p.detach().requires_grad_(True)
                    (w * objective(self.gen.to_images(leaf), augment)).sum().backward()
                    grads.append(leaf.grad)
                torch.autograd.backward(preds, grad_tensors=grads)
                opt.step()
            with torch.no_grad():  # back onto the sphere of the initial noise (DiG-IN keeps ||x_T|| fixed)
                scale = norm0 / x_T.flatten(1).norm(dim=1).clamp_min(1e-12)
                x_T.mul_(scale.reshape(-1, *([1] * (x_T.ndim - 1))))
            if self.progress is not None:
                self.progress("digin", it + 1, cfg.iterations)
        assert best_img is not None and start is not None and best_it is not None
        return DiGInResult(
            images=best_img, start_images=start, losses=torch.stack(losses), best_iteration=best_it, x_T=x_T.detach()
        )


def views_mean(values: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-image mean ``(B,)`` of per-view values ``(n * B,)`` laid out as :class:`Augment` makes them."""
    return values.reshape(-1, batch).mean(dim=0)
