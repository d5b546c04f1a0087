"""DiffExplainer (Fang et al., MICCAI 2024): counterfactuals from a diffusion autoencoder and an agent.

For a stack ``x`` ``(B, n, S, S)`` (n slices, e.g. the CT four-slice stack):

1. each slice is encoded by the shared 1-channel DiffAE encoder; the n codes are concatenated into
   the combined latent ``z`` ``(B, n * z_dim)``; the stochastic code ``x_T`` comes from inverting the
   sampler: exact EDICT (``sampler="edict"``, the pair ``(x_T, y_T)``; :mod:`medxai.diffusion.edict`) or
   approximate DDIM inversion (``"ddim"``);
2. the agent (two linear layers distilled from the teacher) gives the direction
   ``g = d S_c / d z_n`` in the z-normalised latent space (``S_c`` = the target applied to the
   agent's logits);
3. for each step size ``a`` of the sweep, ``z_n +- a * u`` is decoded from the SAME ``x_T``, where
   ``u = g`` (``normalize_direction=False``, the paper's rule) or ``u = sqrt(D) * g / ||g||``
   (default: ``a`` is then in units of per-dimension standard deviations, as DiffAE's manipulation);
4. the teacher re-scores the reconstruction and every counterfactual; the heatmap is
   ``|x(z+) - x(z)| + |x(z-) - x(z)|`` at the heatmap step, summed over slices (each slice's own map
   is in ``channel_maps``).

The explanation's ``sweep`` holds every counterfactual at the signed steps ``-a_k .. -a_1, +a_1 .. +a_k``
with the teacher's and the agent's logits, and the reconstruction as its ``origin``; ``latent`` is the
query's combined code ``(B, n * z_dim)`` (the explain job scores it against the autoencoder's
reference codes, :mod:`medxai.metrics.latent`).

All decodes (reconstruction, every ``z+`` and ``z-``, all slices, all cases) run in batched DDIM calls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from medxai.diffusion.autoencoder import DiffusionAutoencoder
from medxai.explainers.base import Explainer, MethodResult
from medxai.explanation import CounterfactualSweep
from medxai.networks.agent import Agent
from medxai.progress import ProgressFn
from medxai.registry import CT_STACK, register_method
from medxai.targets import NeuronTarget, Target

__all__ = ["DiffExplainer"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DiffExplainerSettings:
    """Settings of :class:`DiffExplainer` (the config's ``explainer`` section; see its parameters)."""

    step_sizes: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    heatmap_step: float | None = None
    encode_steps: int = 20
    decode_steps: int = 20
    sampler: str = "ddim"
    mix: float = 0.93
    normalize_direction: bool = True
    batch_size: int = 64

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffExplainerSettings:
        from medxai.config import dataclass_from_mapping

        return dataclass_from_mapping(cls, data, "diffexplainer", tuple_fields=("step_sizes",))


@register_method(
    "diffexplainer",
    settings=DiffExplainerSettings,
    inputs=frozenset({CT_STACK}),
    needs=("autoencoder", "agent"),
    counterfactual=True,
    summary="DiffExplainer: latent moves of a diffusion autoencoder along a distilled agent's gradient",
)
class DiffExplainer(Explainer):
    """Counterfactual explainer built on a diffusion autoencoder and a distilled linear agent.

    Parameters
    ----------
    model : nn.Module
        The black-box teacher ``(B, n, S, S)`` -> ``(B, K)``.
    autoencoder : DiffusionAutoencoder
        1-channel DiffAE at size S (each slice encoded separately).
    agent : Agent
        Student of ``model`` on the combined latent (``latent_dim = n * z_dim``).
    step_sizes : sequence of float
        Positive manipulation step sizes ``a`` (the sweep), ascending.
    heatmap_step : float, optional
        Which ``a`` the heatmap uses (default: the largest).
    encode_steps, decode_steps : int
        Sampler steps of the stochastic encoding and of each decoding (EDICT: equal, two network calls
        per step, so 10 EDICT steps cost what 20 DDIM steps cost).
    sampler : {"ddim", "edict"}
        ``"edict"``: exactly invertible (the unmanipulated decode reproduces the query up to round-off);
        ``"ddim"``: DDIM inversion, approximate (part of every difference map is inversion error).
    mix : float
        EDICT's mixing weight ``p``.
        DDIM steps of the stochastic encoding and of each decoding.
    normalize_direction : bool
        Use ``sqrt(D) * g / ||g||`` instead of the raw gradient ``g``.
    batch_size : int
        Slices per network call.
    progress : callable, optional
        ``progress(stage, done, total)`` for progress bars.
    seed, check_weights :
        See :class:`~medxai.explainers.base.Explainer` (the method is deterministic: DDIM with eta=0).
    """

    stochastic: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        autoencoder: DiffusionAutoencoder,
        agent: Agent,
        *,
        step_sizes: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
        heatmap_step: float | None = None,
        encode_steps: int = 20,
        decode_steps: int = 20,
        sampler: str = "ddim",
        mix: float = 0.93,
        normalize_direction: bool = True,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
        in_channels: int | None = None,
        seed: int | None = 0,
        check_weights: bool = True,
    ) -> None:
        if not isinstance(autoencoder, DiffusionAutoencoder):
            raise TypeError(f"autoencoder must be a DiffusionAutoencoder, got {type(autoencoder).__name__}.")
        if not isinstance(agent, Agent):
            raise TypeError(f"agent must be an Agent, got {type(agent).__name__}.")
        steps = tuple(float(a) for a in step_sizes)
        if not steps or any(not math.isfinite(a) or a <= 0 for a in steps) or list(steps) != sorted(steps):
            raise ValueError(f"step_sizes must be positive, ascending numbers, got {list(step_sizes)!r}; e.g. [0.5, 1, 2].")
        if heatmap_step is not None and float(heatmap_step) not in steps:
            raise ValueError(f"heatmap_step={heatmap_step!r} is not one of step_sizes {list(steps)}.")
        for name, v in (("encode_steps", encode_steps), ("decode_steps", decode_steps), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        n_slices = agent.latent_dim // autoencoder.z_dim
        if n_slices * autoencoder.z_dim != agent.latent_dim:
            raise ValueError(
                f"the agent takes latents of size {agent.latent_dim}, not a multiple of the autoencoder's "
                f"z_dim={autoencoder.z_dim}; train the agent on this autoencoder's latents."
            )
        if in_channels is not None and in_channels != n_slices:
            raise ValueError(f"in_channels={in_channels} but the agent was trained on {n_slices}-slice latents.")
        super().__init__(model, in_channels=n_slices, spatial_dims=2, seed=seed, check_weights=check_weights)
        self.autoencoder = autoencoder
        self.agent = agent
        self.step_sizes = steps
        self.heatmap_step = float(heatmap_step) if heatmap_step is not None else steps[-1]
        if sampler not in ("ddim", "edict"):
            raise ValueError(f"sampler must be 'ddim' or 'edict', got {sampler!r}.")
        if sampler == "edict" and encode_steps != decode_steps:
            raise ValueError(
                f"EDICT decodes the state its encoding produced on the same ladder: encode_steps ({encode_steps}) "
                f"must equal decode_steps ({decode_steps})."
            )
        self.encode_steps = encode_steps
        self.decode_steps = decode_steps
        self.sampler = sampler
        self.mix = float(mix)
        if sampler == "edict":
            logger.warning(
                "sampler 'edict' reconstructs the query exactly, but on the shipped CPU autoencoder its decode of a "
                "MOVED latent diverges (bench: flip rate 0.35, mean change 0.78 vs DDIM's 1.00 / 0.11); check the "
                "counterfactuals before trusting them (docs/diffexplainer.md)"
            )
        self.normalize_direction = normalize_direction
        self.batch_size = batch_size
        self.progress = progress

    @classmethod
    def from_settings(cls, model: nn.Module, settings: Any, models: Mapping[str, Any], **kwargs: Any) -> DiffExplainer:
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        return cls(model, models["autoencoder"], models["agent"], **fields, **kwargs)

    def get_parameters(self) -> dict[str, Any]:
        params = super().get_parameters()
        params.update(
            step_sizes=list(self.step_sizes),
            heatmap_step=self.heatmap_step,
            encode_steps=self.encode_steps,
            decode_steps=self.decode_steps,
            sampler=self.sampler,
            mix=self.mix,
            normalize_direction=self.normalize_direction,
            z_dim=self.autoencoder.z_dim,
            latent_dim=self.agent.latent_dim,
            image_size=self.autoencoder.config.image_size,
        )
        return params

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        x = super()._check_input(x)
        size = self.autoencoder.config.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            raise ValueError(
                f"x has spatial size {tuple(x.shape[-2:])} but the autoencoder works at {size}x{size}; "
                f"resize the stack (CTStackConfig.size={size})."
            )
        return x

    def direction(self, z_n: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """Agent logits ``(B, K)`` and manipulation direction ``(B, D)`` at normalised latents ``z_n``."""
        with torch.enable_grad():
            z = z_n.detach().clone().requires_grad_(True)
            logits = self.agent(z)
            score = target(logits)
            if score.ndim != 1:
                raise ValueError(
                    f"DiffExplainer needs one score per input, the target {target!r} gave shape {tuple(score.shape)}; "
                    "use ClassTarget or ScoreDirection."
                )
            (grad,) = torch.autograd.grad(score.sum(), z)
        if self.normalize_direction:
            norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            grad = grad / norm * math.sqrt(grad.shape[1])
        return logits.detach(), grad.detach()

    # -------------------------------------------------------------------- core
    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None, **inputs: Any) -> MethodResult:
        if isinstance(target, NeuronTarget) or target.multi:
            raise TypeError(
                f"DiffExplainer explains one class score per input; got {target!r}. "
                "Use ClassTarget(k) or ScoreDirection(k, sign)."
            )
        timings: dict[str, float] = {}
        ae, agent = self.autoencoder, self.agent
        was_training = (ae.training, agent.training)
        ae.eval()
        agent.eval()
        try:
            b, n = x.shape[:2]
            dev = next(ae.parameters()).device
            xd = x.to(dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                z = ae.encode_stack(xd, self.batch_size)
            x_T = ae.stochastic_encode_stack(
                xd, z, self.encode_steps, self.batch_size, self.progress, sampler=self.sampler, mix=self.mix
            )
            timings["encode_s"] = time.perf_counter() - t0

            z_n = agent.normalise(z.to(next(agent.buffers()).device))
            agent_logits, grad = self.direction(z_n, target)
            grad = grad.to(z_n.device)
            # decode order: z, then the signed steps ascending (-a_k .. -a_1, +a_1 .. +a_k), each block (B, D)
            signed = [-a for a in reversed(self.step_sizes)] + list(self.step_sizes)
            blocks = [z_n] + [z_n + a * grad for a in signed]
            m = len(blocks)
            z_all = agent.denormalise(torch.cat(blocks)).to(dev)
            with torch.no_grad():
                agent_all = agent(torch.cat(blocks)).reshape(m, b, -1).cpu()
            t0 = time.perf_counter()
            codes = torch.cat([x_T] * m, dim=-4)  # the same stochastic code for every latent (batch axis)
            images = ae.decode_stack(
                codes, z_all, self.decode_steps, self.batch_size, self.progress, sampler=self.sampler, mix=self.mix
            )
            timings["decode_s"] = time.perf_counter() - t0
            images = images.reshape(m, b, n, *x.shape[2:]).to(x.device)

            with torch.no_grad():
                flat = images.reshape(m * b, n, *x.shape[2:])
                teacher = torch.cat([self._forward(c) for c in flat.split(max(1, self.batch_size // n))])
                teacher = teacher.reshape(m, b, -1).cpu()
        finally:
            ae.train(was_training[0])
            agent.train(was_training[1])

        recon = images[0]
        sweep = CounterfactualSweep(
            steps=tuple(signed),
            images=images[1:].transpose(0, 1).cpu(),  # (B, S, n, S, S)
            logits=teacher[1:].transpose(0, 1).contiguous(),  # (B, S, K)
            origin=recon.cpu(),
            origin_logits=teacher[0],
            agent_logits=agent_all[1:].transpose(0, 1).contiguous(),
            agent_origin_logits=agent_logits.cpu(),
            activation=self.activation,
        )
        k = len(self.step_sizes)
        hi = self.step_sizes.index(self.heatmap_step)
        plus, minus = images[1 + k + hi], images[k - hi]  # +a_hi and -a_hi
        per_slice = (plus - recon).abs() + (minus - recon).abs()  # (B, n, S, S): each slice's own map
        # the query's combined semantic code, for callers that score it (the explain job's latent check)
        return MethodResult(
            heatmaps=per_slice.sum(dim=1, keepdim=True),
            sweep=sweep,
            channel_maps=per_slice.cpu(),
            latent=z.detach().cpu(),
            timings=timings,
        )
