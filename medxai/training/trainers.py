"""Trainers of the DiffExplainer parts: teacher classifier, diffusion autoencoder, agent.

Each trainer owns its ``torch.Generator`` (batches, noise), uses Adam with gradient clipping, stops at
``steps`` or ``max_seconds`` (whichever comes first), and may save checkpoints atomically through a
``save`` callback. The autoencoder keeps an exponential moving average (EMA) of its weights and ends
with the EMA weights loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from medxai.config import dataclass_from_mapping
from medxai.networks.classifiers import recalibrate_batchnorm

__all__ = [
    "TrainConfig",
    "EMA",
    "train_loop",
    "train_teacher",
    "train_autoencoder",
    "train_agent",
    "compute_latents",
    "agreement",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the trainers.

    Parameters
    ----------
    steps : int
        Maximum optimiser steps.
    batch_size : int
    lr : float
        Adam learning rate.
    max_seconds : float or None
        Wall-clock budget; training stops after the step that crosses it.
    grad_clip : float
        Gradient-norm clip (1.0 as DiffAE).
    ema_decay : float
        EMA decay (autoencoder only; warmed up as ``min(decay, (1+n)/(10+n))``).
    weight_decay : float
    seed : int
        Seed of the trainer's generator.
    save_every : int
        Call ``save`` every this many steps (0: only at the end).
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    max_seconds: float | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got steps={self.steps}, batch_size={self.batch_size}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "training")


class EMA:
    """Exponential moving average of a module's parameters and buffers (a detached copy)."""

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach(), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict(self.shadow.state_dict())


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def train_loop(
    model: nn.Module,
    n: int,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    *,
    params: list[nn.Parameter] | None = None,
    after_step: Callable[[], None] | None = None,
    save: Callable[[int], None] | None = None,
    progress: ProgressFn | None = None,
    what: str = "model",
) -> dict[str, Any]:
    """The optimisation loop every trainer shares: Adam, grad clip, finite-loss check, progress,
    periodic saves, optional wall-clock budget.

    ``loss_fn(idx, generator)`` computes the loss of the mini-batch ``idx`` (indices into ``n``
    samples); ``params`` defaults to the model's trainable parameters; ``after_step`` runs after
    each optimiser step (e.g. an EMA update). Returns the history (steps, seconds, mean loss of the
    first and last tenth, all losses).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        loss = loss_fn(idx, gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{what} training diverged at step {step} (loss {float(loss)}); lower lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, cfg.steps, losses[-1])
        if save is not None and cfg.save_every and step % cfg.save_every == 0:
            save(step)
        if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
            logger.info("%s training stopped by max_seconds after %d steps", what, step)
            break
    model.eval()
    k = max(1, len(losses) // 10)
    return {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "loss_first": sum(losses[:k]) / k if losses else math.nan,
        "loss_last": sum(losses[-k:]) / k if losses else math.nan,
        "losses": losses,
    }


def train_teacher(
    model: nn.Module,
    stacks: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    class_weights: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Cross-entropy training of a classifier on stacks ``(N, C, S, S)`` and labels ``(N,)`` (int)."""
    if stacks.shape[0] != labels.shape[0]:
        raise ValueError(f"stacks has {stacks.shape[0]} cases but labels has {labels.shape[0]}.")
    dev = _device(model)
    labels = labels.long()
    if class_weights is None:  # balance rare classes
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1).float().clamp_min(1)
        class_weights = counts.sum() / (counts * len(counts))

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = stacks[idx].to(dev)
        if torch.rand((), generator=gen) < 0.5:  # left-right flip augmentation
            x = x.flip(-1)
        return F.cross_entropy(model(x), labels[idx].to(dev), weight=class_weights.to(dev))

    hist = train_loop(model, stacks.shape[0], cfg, loss_fn, progress=progress, what="teacher")
    recalibrate_batchnorm(model, stacks)
    with torch.no_grad():
        pred = torch.cat([model(c.to(dev)).argmax(1).cpu() for c in stacks.split(64)])
    hist["train_accuracy"] = float((pred == labels).float().mean())
    return hist


def train_autoencoder(
    ae: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    save: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train a :class:`~medxai.diffusion.DiffusionAutoencoder` on ``images`` ``(N, n, S, S)`` in [0, 1].

    Every slice is one training image (a stack of n slices gives n images). Ends with the EMA
    weights in ``ae.net``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, n_slices, S, S), got {tuple(images.shape)}.")
    flat = images.reshape(-1, 1, *images.shape[2:])
    dev = _device(ae)
    ema = EMA(ae.net, cfg.ema_decay)

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return ae.training_loss(flat[idx].to(dev), gen)

    def _save(step: int) -> None:
        if save is None:
            return
        live = copy.deepcopy(ae.net.state_dict())
        ema.copy_to(ae.net)
        try:
            save(step)
        finally:
            ae.net.load_state_dict(live)

    hist = train_loop(ae, flat.shape[0], cfg, loss_fn, params=list(ae.net.parameters()), after_step=lambda: ema.update(ae),
                      save=_save, progress=progress, what="autoencoder")
    ema.copy_to(ae.net)
    ae.eval()
    if save is not None:
        save(hist["steps"])
    return hist


@torch.no_grad()
def compute_latents(ae: nn.Module, stacks: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Combined latents ``(N, n * z_dim)`` of stacks ``(N, n, S, S)`` (CPU tensor)."""
    dev = _device(ae)
    return torch.cat([ae.encode_stack(c.to(dev), batch_size).cpu() for c in stacks.split(max(1, batch_size // stacks.shape[1]))])


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of rows where the two ``(N, K)`` logit arrays predict the same class."""
    return float((a_logits.argmax(1) == b_logits.argmax(1)).float().mean())


def train_agent(
    agent: nn.Module,
    latents: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_features: torch.Tensor | None,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Distil the teacher into the agent.

    Parameters
    ----------
    agent : Agent
    latents : torch.Tensor
        Raw combined latents ``(N, D)``; their mean/std are stored in the agent.
    teacher_logits : torch.Tensor
        ``(N, K)``.
    teacher_features : torch.Tensor or None
        ``(N, F)`` penultimate features: L1 on features (layer 2 frozen). ``None``: L1 on logits.
    """
    if latents.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"latents has {latents.shape[0]} rows but teacher_logits has {teacher_logits.shape[0]}.")
    agent.set_latent_stats(latents)
    z_n = agent.normalise(latents)
    use_features = teacher_features is not None and agent.frozen_head
    if teacher_features is not None and teacher_features.shape[1] != agent.feature_dim:
        raise ValueError(
            f"teacher features are {teacher_features.shape[1]}-dimensional but the agent's layer 1 outputs "
            f"{agent.feature_dim}; build the agent with feature_dim={teacher_features.shape[1]}."
        )

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if use_features:
            return F.l1_loss(agent.features(z_n[idx]), teacher_features[idx])  # type: ignore[index]
        return F.l1_loss(agent(z_n[idx]), teacher_logits[idx])

    params = [p for p in agent.parameters() if p.requires_grad]
    hist = train_loop(agent, latents.shape[0], cfg, loss_fn, params=params, progress=progress, what="agent")
    with torch.no_grad():
        hist["agreement_train"] = agreement(agent(z_n), teacher_logits)
    hist["mode"] = "features" if use_features else "logits"
    return hist
