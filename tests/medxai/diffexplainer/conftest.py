"""Session fixture of the DiffExplainer tests: a tiny DiffAE, a linear teacher and its agent (diffae_toy)."""

from __future__ import annotations

import time

import pytest
import torch
from diffae_toy import TINY, RegionTeacher, ToyWorld, distil_agent, toy_stacks

from medxai.diffusion import DiffusionAutoencoder
from medxai.networks.diffae import DiffAENet
from medxai.training import TrainConfig, train_autoencoder


@pytest.fixture(scope="session")
def toy_world() -> ToyWorld:
    gen = torch.Generator().manual_seed(0)
    train = toy_stacks(512, gen)
    test = toy_stacks(8, gen)
    ae = DiffusionAutoencoder(DiffAENet(TINY, torch.Generator().manual_seed(0)))
    start = time.perf_counter()
    hist = train_autoencoder(ae, train, TrainConfig(steps=200, batch_size=16, lr=2e-3, ema_decay=0.99, seed=0))
    seconds = time.perf_counter() - start
    teacher = RegionTeacher().eval()
    agent = distil_agent(ae, teacher, train)
    return ToyWorld(ae.eval(), teacher, agent, train, test, seconds, hist)
