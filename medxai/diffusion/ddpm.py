"""Unconditional image DDPM (fundus photographs): a diffusers ``UNet2DModel`` plus diffusers schedulers.

Network, scheduler and guidance are separate objects (the diffusers split). :class:`ImageDDPM`
owns the UNet and the noise-schedule settings; it makes fresh diffusers schedulers on request
(:meth:`ImageDDPM.make_scheduler`: ``DDPMScheduler`` for ancestral sampling, ``DDIMScheduler`` for
DDIM) and never writes the schedule maths itself. The guided loop lives in :mod:`medxai.diffusion.guidance`.

Images at this object's API are in ``data_range`` (``(0, 1)`` for the fundus crops); the network
works in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from medxai.config import dataclass_from_mapping
from medxai.diffusion.autoencoder import ScheduleConfig
from medxai.networks.classifiers import init_with_generator
from medxai.progress import ProgressFn
from medxai.training.checkpoint import load_pretrained, load_state_checked, save_pretrained

__all__ = ["DDPMNetConfig", "ImageDDPM", "build_unet", "save_ddpm", "load_ddpm", "SCHEDULER_KINDS"]

logger = logging.getLogger(__name__)

SCHEDULER_KINDS = ("ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class DDPMNetConfig:
    """Architecture of the noise-prediction UNet (diffusers ``UNet2DModel``).

    Parameters
    ----------
    image_size : int
        Side S of the square images ``(B, C, S, S)``; must be divisible by ``2**(levels-1)``.
    in_channels : int
        3 for RGB fundus crops.
    block_out_channels : sequence of int
        Channels per resolution level (e.g. ``(32, 64, 64, 128)``).
    layers_per_block : int
        Residual blocks per level.
    attention_levels : sequence of int
        Levels (0 = full resolution) whose blocks have self-attention; ``()`` for none (fastest on a CPU).
    norm_num_groups : int
        GroupNorm groups; must divide every entry of ``block_out_channels``.
    dropout : float
    data_range : (float, float)
        Range of the images at the API, mapped linearly to [-1, 1] for the network.
    """

    image_size: int = 64
    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()
    norm_num_groups: int = 8
    dropout: float = 0.0
    data_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        object.__setattr__(self, "data_range", tuple(float(v) for v in self.data_range))
        levels = len(self.block_out_channels)
        if levels < 1:
            raise ValueError("block_out_channels must list at least one level, e.g. [32, 64, 64, 128].")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}.")
        if self.image_size < 4 or self.image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(levels-1)={2 ** (levels - 1)} "
                f"for block_out_channels={list(self.block_out_channels)}; use e.g. 32, 64 or 256."
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every entry of block_out_channels "
                f"{list(self.block_out_channels)}; e.g. norm_num_groups=8."
            )
        if any(not 0 <= a < levels for a in self.attention_levels):
            raise ValueError(f"attention_levels {list(self.attention_levels)} must lie in 0..{levels - 1}.")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}.")
        lo, hi = self.data_range
        if len(self.data_range) != 2 or not hi > lo:
            raise ValueError(f"data_range must be (low, high) with high > low, got {self.data_range}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DDPMNetConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "network")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def build_unet(config: DDPMNetConfig, generator: torch.Generator | None = None) -> UNet2DModel:
    """A diffusers ``UNet2DModel`` for ``config``, initialised from ``generator`` (seed 0 if omitted)."""
    levels = len(config.block_out_channels)
    att = set(config.attention_levels)
    down = tuple("AttnDownBlock2D" if i in att else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if (levels - 1 - i) in att else "UpBlock2D" for i in range(levels))
    unet = UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
        add_attention=bool(att),
        attention_head_dim=8 if att else None,
    )
    return init_with_generator(unet, generator if generator is not None else torch.Generator().manual_seed(0))


class ImageDDPM(nn.Module):
    """Unconditional epsilon-prediction DDPM: network + schedule settings.

    Parameters
    ----------
    config : DDPMNetConfig
    schedule : ScheduleConfig, optional
        T=1000 linear betas 1e-4..0.02 by default.
    generator : torch.Generator, optional
        Initialises the UNet.
    """

    def __init__(
        self,
        config: DDPMNetConfig,
        schedule: ScheduleConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, DDPMNetConfig):
            raise TypeError(f"config must be a DDPMNetConfig, got {type(config).__name__}.")
        self.config = config
        self.schedule = schedule or ScheduleConfig()
        self.unet = build_unet(config, generator)
        self._train_scheduler = self.make_scheduler("ddpm")

    # ------------------------------------------------------------------ ranges
    def to_model_range(self, x: torch.Tensor) -> torch.Tensor:
        """Images in ``data_range`` -> [-1, 1]."""
        lo, hi = self.config.data_range
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def from_model_range(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> images in ``data_range``."""
        lo, hi = self.config.data_range
        return (x + 1.0) * ((hi - lo) / 2.0) + lo

    # --------------------------------------------------------------- schedulers
    def make_scheduler(self, kind: str = "ddpm") -> DDPMScheduler | DDIMScheduler:
        """A fresh diffusers scheduler (``"ddpm"``: ancestral, fixed-small variance; ``"ddim"``)."""
        common = dict(
            num_train_timesteps=self.schedule.num_train_timesteps,
            beta_start=self.schedule.beta_start,
            beta_end=self.schedule.beta_end,
            beta_schedule=self.schedule.beta_schedule,
            clip_sample=False,
            prediction_type="epsilon",
            timestep_spacing="leading",
        )
        if kind == "ddpm":
            return DDPMScheduler(variance_type="fixed_small", **common)
        if kind == "ddim":
            return DDIMScheduler(set_alpha_to_one=True, **common)
        raise ValueError(f"scheduler kind must be one of {SCHEDULER_KINDS}, got {kind!r}.")

    # ------------------------------------------------------------------ network
    def check_images(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, C, S, S)`` with this model's C and S."""
        c, s = self.config.in_channels, self.config.image_size
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(
                f"{name} must be a tensor of shape (B, {c}, {s}, {s}) for this diffusion model, got "
                f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}; resize the images to {s}x{s} "
                f"(FundusConfig(size={s})) or use a model trained at that size."
            )

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Noise prediction ``(B, C, S, S)`` for noisy samples ``x_t`` in [-1, 1] at timestep(s) ``t``."""
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            t = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        return self.unet(x_t, t).sample

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        return self.eps(x_t, t)

    def training_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Epsilon MSE for clean images ``x0`` ``(B, C, S, S)`` in ``data_range``; ``t``, noise from ``generator``."""
        self.check_images(x0, "x0")
        x = self.to_model_range(x0)
        t = torch.randint(0, self.schedule.num_train_timesteps, (x.shape[0],), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        x_t = self._train_scheduler.add_noise(x, noise, t)
        return F.mse_loss(self.eps(x_t, t), noise)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int = 50,
        kind: str = "ddim",
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` unconditional samples ``(n, C, S, S)`` in ``data_range`` (for checking realism)."""
        if n < 1 or steps < 1:
            raise ValueError(f"n and steps must be >= 1, got n={n}, steps={steps}.")
        sched = self.make_scheduler(kind)
        sched.set_timesteps(steps)
        dev = next(self.unet.parameters()).device
        c, s = self.config.in_channels, self.config.image_size
        x = torch.randn((n, c, s, s), generator=generator).to(dev)
        for i, t in enumerate(sched.timesteps):
            eps = self.eps(x, int(t))
            x = sched.step(eps, t, x, generator=generator).prev_sample
            if progress is not None:
                progress("sample", i + 1, steps)
        return self.from_model_range(x).clamp(*self.config.data_range)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def save_pretrained(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Path:
        """:func:`save_ddpm`."""
        return save_ddpm(self, path, meta)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ImageDDPM:
        """:func:`load_ddpm`."""
        return load_ddpm(path, device)


def save_ddpm(model: ImageDDPM, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Path:
    """Save the UNet weights (safetensors) and a JSON side-car with the architecture and schedule.

    ``path``: ``name.safetensors`` (``name.json`` beside it) or a folder (``ddpm.safetensors`` and
    ``ddpm.json`` inside). Returns the weights file.
    """
    info = {
        "kind": "medxai.ImageDDPM",
        "network": model.config.to_dict(),
        "schedule": dataclasses.asdict(model.schedule),
        **dict(meta or {}),
    }
    return save_pretrained(path, model.unet.state_dict(), info, name="ddpm")


def load_ddpm(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ImageDDPM:
    """Load a model written by :func:`save_ddpm` (weights file or folder; the side-car gives the architecture)."""
    state, info, weights = load_pretrained(path, name="ddpm", kinds=("medxai.ImageDDPM",))
    model = ImageDDPM(DDPMNetConfig.from_dict(info["network"]), ScheduleConfig.from_dict(info["schedule"]))
    load_state_checked(model.unet, state, str(weights), "DDPM UNet")
    return model.to(device).eval()
