"""Diffusion-autoencoder networks (DiffAE, Preechakul et al. 2022): semantic encoder + conditional UNet.

The semantic encoder is the down-sampling half of a UNet without a time input, ending in
GroupNorm -> SiLU -> global average pool -> 1x1 conv -> flatten, giving ``z_sem`` ``(B, z_dim)``.
The decoder is a UNet whose residual blocks are modulated by the time embedding AND by ``z_sem``::

    h = GroupNorm(h);  h = h * (1 + t_s) + t_b   with (t_s, t_b) = Linear(emb_t)
                       h = h * (1 + z_s)         with z_s = Linear(SiLU(z_sem))

diffusers' ``UNet2DModel`` has no such multiplicative latent conditioning (its class/time
embeddings are additive), so this network is our own; it stays compact (channels, multipliers,
optional attention). Everything is initialised from a caller-owned ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medxai.config import dataclass_from_mapping
from medxai.networks.classifiers import init_with_generator

__all__ = [
    "DiffAENetConfig",
    "SemanticEncoder",
    "ConditionalUNet",
    "DiffAENet",
    "timestep_embedding",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DiffAENetConfig:
    """Architecture of the DiffAE networks.

    Parameters
    ----------
    image_size : int
        Side S of the square ``(B, C, S, S)`` inputs; must be divisible by ``2**(len(channel_mults)-1)``.
    in_channels : int
        Image channels of one DiffAE input (1: each CT slice is encoded separately).
    base_channels : int
        Channels of the first UNet level.
    channel_mults : tuple of int
        Channel multiplier per level; one level per entry, halving the resolution between levels.
    num_res_blocks : int
        Residual blocks per level (decoder levels get one more, as in DDPM).
    z_dim : int
        Semantic latent size (512 in the paper).
    encoder_base_channels : int or None
        Base channels of the semantic encoder (``None``: same as ``base_channels``).
    encoder_channel_mults : tuple of int or None
        Encoder multipliers (``None``: same as ``channel_mults``).
    attention_levels : tuple of int
        Indices of levels that get a self-attention block after each residual block (and the
        bottleneck gets one if any is given).
    dropout : float
        Dropout inside the decoder's residual blocks.
    groups : int
        GroupNorm groups (must divide every channel count).
    """

    image_size: int = 64
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    z_dim: int = 128
    encoder_base_channels: int | None = None
    encoder_channel_mults: tuple[int, ...] | None = None
    attention_levels: tuple[int, ...] = ()
    dropout: float = 0.1
    groups: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        if self.encoder_channel_mults is not None:
            object.__setattr__(self, "encoder_channel_mults", tuple(int(m) for m in self.encoder_channel_mults))
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "z_dim", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty list of positive ints, got {self.channel_mults!r}.")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by 2**(levels-1)={factor} for "
                f"channel_mults={list(self.channel_mults)}; use fewer levels or a size divisible by {factor}."
            )
        for ch in [self.base_channels * m for m in self.channel_mults] + [self.enc_base * m for m in self.enc_mults]:
            if ch % self.groups:
                raise ValueError(
                    f"groups={self.groups} does not divide the channel count {ch}; pick base_channels/"
                    "channel_mults whose products are multiples of groups."
                )
        if any(not 0 <= a < len(self.channel_mults) for a in self.attention_levels):
            raise ValueError(
                f"attention_levels={list(self.attention_levels)} must index levels 0..{len(self.channel_mults) - 1}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")

    @property
    def enc_base(self) -> int:
        return self.encoder_base_channels or self.base_channels

    @property
    def enc_mults(self) -> tuple[int, ...]:
        return self.encoder_channel_mults or self.channel_mults

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffAENetConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(
            cls, data, "DiffAE network", tuple_fields=("channel_mults", "attention_levels", "encoder_channel_mults")
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``t`` ``(B,)`` -> ``(B, dim)`` (as in DDPM/ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Residual block; with ``emb_dim`` it is time-modulated (scale-shift), with ``cond_dim`` latent-modulated.

    ``(B, in_ch, H, W)`` -> ``(B, out_ch, H, W)``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int = 0, cond_dim: int = 0, dropout: float = 0.0, groups: int = 8
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.cond = nn.Linear(cond_dim, out_ch) if cond_dim else None
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            t_s, t_b = self.emb(emb).chunk(2, dim=1)
            h = h * (1 + t_s[:, :, None, None]) + t_b[:, :, None, None]
        if self.cond is not None and cond is not None:
            z_s = self.cond(cond)  # cond is already SiLU(z_sem)
            h = h * (1 + z_s[:, :, None, None])
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, ``(B, C, H, W)`` -> same."""

    def __init__(self, ch: int, groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class SemanticEncoder(nn.Module):
    """Down-sampling half of a UNet without time input: ``(B, C, S, S)`` -> ``z_sem`` ``(B, z_dim)``."""

    def __init__(self, config: DiffAENetConfig) -> None:
        super().__init__()
        cfg = config
        ch = cfg.enc_base
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        for level, mult in enumerate(cfg.enc_mults):
            out = cfg.enc_base * mult
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, out, groups=cfg.groups))
                ch = out
                if level in cfg.attention_levels:
                    blocks.append(AttnBlock(ch, cfg.groups))
            if level != len(cfg.enc_mults) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.proj = nn.Conv2d(ch, cfg.z_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        h = F.adaptive_avg_pool2d(F.silu(self.norm_out(h)), 1)
        return self.proj(h).flatten(1)


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionalUNet(nn.Module):
    """Noise predictor ``eps(x_t, t, z_sem)``: ``(B, C, S, S)``, ``(B,)``, ``(B, z_dim)`` -> ``(B, C, S, S)``."""

    def __init__(self, config: DiffAENetConfig) -> None:
        super().__init__()
        cfg = config
        base = cfg.base_channels
        self.emb_dim = emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        kw = dict(emb_dim=emb_dim, cond_dim=cfg.z_dim, dropout=cfg.dropout, groups=cfg.groups)
        self.down = nn.ModuleList()
        skips = [base]
        ch = base
        n_levels = len(cfg.channel_mults)
        for level, mult in enumerate(cfg.channel_mults):
            out = base * mult
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out, **kw)]
                ch = out
                if level in cfg.attention_levels:
                    layers.append(AttnBlock(ch, cfg.groups))
                self.down.append(nn.ModuleList(layers))
                skips.append(ch)
            if level != n_levels - 1:
                self.down.append(nn.ModuleList([_Down(ch)]))
                skips.append(ch)
        mid: list[nn.Module] = [ResBlock(ch, ch, **kw)]
        if cfg.attention_levels:
            mid.append(AttnBlock(ch, cfg.groups))
        mid.append(ResBlock(ch, ch, **kw))
        self.mid = nn.ModuleList(mid)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            out = base * mult
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), out, **kw)]
                ch = out
                if level in cfg.attention_levels:
                    layers.append(AttnBlock(ch, cfg.groups))
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(_Up(ch))
                self.up.append(nn.ModuleList(layers))
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        self.base = base

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, emb, cond) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, z_sem: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t.to(x.device), self.base))
        cond = F.silu(z_sem)
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, cond)
            hs.append(h)
        h = self._run(self.mid, h, emb, cond)
        for layers in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layers, h, emb, cond)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiffAENet(nn.Module):
    """Semantic encoder + conditional UNet (the trainable part of a diffusion autoencoder).

    Parameters
    ----------
    config : DiffAENetConfig
    generator : torch.Generator, optional
        Initialises all weights (seed 0 when omitted); output convolutions start at zero.
    """

    def __init__(self, config: DiffAENetConfig | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config or DiffAENetConfig()
        self.encoder = SemanticEncoder(self.config)
        self.unet = ConditionalUNet(self.config)
        init_with_generator(self, generator if generator is not None else torch.Generator().manual_seed(0))
        with torch.no_grad():  # zero-init residual outputs and the final conv (stable start, as in ADM)
            for m in self.unet.modules():
                if isinstance(m, ResBlock):
                    m.conv2.weight.zero_()
                    m.conv2.bias.zero_()
            self.unet.conv_out.weight.zero_()
            self.unet.conv_out.bias.zero_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic code ``(B, z_dim)`` of images ``(B, C, S, S)`` in [-1, 1]."""
        return self.encoder(x)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_sem: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``(B, C, S, S)`` for noisy images ``x_t`` at timesteps ``t`` ``(B,)``."""
        return self.unet(x_t, t, z_sem)

    def num_parameters(self) -> dict[str, int]:
        return {
            "encoder": sum(p.numel() for p in self.encoder.parameters()),
            "unet": sum(p.numel() for p in self.unet.parameters()),
        }
