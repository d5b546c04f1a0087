"""A toy world with a known answer, shared by the DiffExplainer tests (the session fixture is in conftest).

Images: 32x32 single slices, background 0.1 plus a bright disc of random radius (3..10 px) at the
centre, plus a little noise. Stacks have 2 slices. The teacher is linear: its features are the 4x4
average-pooled image (per slice), its class-1 logit is the mean intensity of the central 2x2 cells of
every slice (class 0 is the negative), so "more class 1" means "a larger disc, a brighter centre". A tiny DiffAE is
trained for a few seconds once per session.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from medxai.diffusion import DiffusionAutoencoder
from medxai.networks.agent import Agent
from medxai.networks.diffae import DiffAENetConfig
from medxai.networks.teacher import TeacherFeatures
from medxai.training import TrainConfig, compute_latents, train_agent

SIZE = 32
SLICES = 2

TINY = DiffAENetConfig(image_size=SIZE, base_channels=8, channel_mults=(1, 2, 4), num_res_blocks=1, z_dim=16, dropout=0.0)


def toy_stacks(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, SLICES, 32, 32)`` in [0, 1]: a bright disc of random radius (3..10 px) per slice."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    r = 3.0 + 7.0 * torch.rand((n, SLICES, 1, 1), generator=generator)
    c = 15.5 + (torch.rand((n, SLICES, 2, 1, 1), generator=generator) - 0.5)
    d = ((yy - c[:, :, 0]) ** 2 + (xx - c[:, :, 1]) ** 2).sqrt()
    disc = torch.sigmoid((r - d) / 0.7)
    img = 0.1 + 0.7 * disc + 0.02 * torch.randn((n, SLICES, SIZE, SIZE), generator=generator)
    return img.clamp(0, 1)


class RegionTeacher(nn.Module):
    """Linear teacher: features = 4x4 average pool per slice; logit 1 = mean of the central cells."""

    def __init__(self, slices: int = SLICES) -> None:
        super().__init__()
        self.head = nn.Linear(slices * 16, 2)
        w = torch.zeros(slices, 4, 4)
        w[:, 1:3, 1:3] = 1.0 / (4 * slices)
        with torch.no_grad():
            self.head.weight.copy_(torch.stack([-w.flatten(), w.flatten()]) * 10.0)
            self.head.bias.copy_(torch.tensor([4.0, -4.0]))
        self.conv = nn.Conv2d(slices, slices, 1)  # identity; lets explainers infer the channel count
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(slices)[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.conv(x), 4).flatten(1))


def central_score(x: torch.Tensor) -> torch.Tensor:
    """The quantity the teacher's class-1 logit follows: mean intensity of the centre ``(B,)``."""
    return F.adaptive_avg_pool2d(x, 4)[:, :, 1:3, 1:3].mean((1, 2, 3))


@dataclasses.dataclass
class ToyWorld:
    ae: DiffusionAutoencoder
    teacher: RegionTeacher
    agent: Agent
    train: torch.Tensor
    test: torch.Tensor
    train_seconds: float
    ae_history: dict


def distil_agent(
    ae: DiffusionAutoencoder, teacher: nn.Module, stacks: torch.Tensor, layer: str = "head", steps: int = 400
) -> Agent:
    tf = TeacherFeatures(teacher, layer)
    logits, feats = tf.run_batched(stacks)
    latents = compute_latents(ae, stacks)
    agent = Agent(latents.shape[1], tf.feature_dim or 32, logits.shape[1], tf.classifier, torch.Generator().manual_seed(0))
    train_agent(agent, latents, logits, feats, TrainConfig(steps=steps, batch_size=128, lr=3e-3, seed=0))
    return agent
