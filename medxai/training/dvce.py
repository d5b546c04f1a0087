"""Trainers of the DVCE parts: the unconditional image DDPM, the plain and the robust classifier, and
the in-domain feature network of the realism metrics.

Every trainer runs :func:`medxai.training.trainers.train_loop` (the one loop, :func:`~medxai.training.trainers.fit`):
its own ``torch.Generator`` (batches, noise, flips, attack starts), Adam with gradient clipping, a stop
at ``steps`` or ``max_seconds``, whichever comes first, and, given a ``checkpoint`` path, resume
checkpoints every ``save_every`` steps (``resume=True`` continues from one). The DDPM keeps an EMA of
its weights (:func:`~medxai.training.trainers.ema_model`) and ends with them loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medxai.config import dataclass_from_mapping
from medxai.networks.classifiers import recalibrate_batchnorm
from medxai.progress import ProgressFn
from medxai.training.trainers import CheckpointPath, TrainConfig, train_loop, train_with_ema

__all__ = [
    "RobustConfig",
    "train_ddpm",
    "train_classifier",
    "train_feature_net",
    "evaluate_classifier",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """Adversarial training settings.

    Parameters
    ----------
    method : {"trades", "pgd"}
        TRADES (clean CE + ``beta`` KL to the adversarial prediction) or PGD adversarial training.
    eps : float
        L2 radius in image units ([0, 1] images); 0.25 in the retinal follow-up (at 224-512 px).
    steps : int
        Attack steps per training step.
    beta : float
        TRADES weight.
    """

    method: str = "trades"
    eps: float = 0.25
    steps: int = 5
    beta: float = 6.0

    def __post_init__(self) -> None:
        from medxai.training.robust import ROBUST_METHODS

        if self.method not in ROBUST_METHODS:
            raise ValueError(f"robust.method must be one of {ROBUST_METHODS}, got {self.method!r}.")
        if not self.eps > 0 or self.steps < 1 or self.beta < 0:
            raise ValueError(
                f"robust needs eps > 0, steps >= 1, beta >= 0; got eps={self.eps}, steps={self.steps}, beta={self.beta}."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RobustConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "robust")


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random left-right flips per image (a right eye becomes a left eye)."""
    mask = torch.rand((x.shape[0],), generator=gen) < 0.5
    return torch.where(mask.reshape(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def train_ddpm(
    ddpm: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    save: Callable[[int], None] | None = None,
    flip: bool = True,
    *,
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train an :class:`~medxai.diffusion.ddpm.ImageDDPM` on ``images`` ``(N, C, S, S)`` in its data range.

    Ends with the EMA weights in ``ddpm.unet``; ``save(step)`` is called with the EMA weights loaded.
    ``checkpoint`` and ``resume``: :func:`~medxai.training.trainers.train_loop`.
    """
    ddpm.check_images(images, "images")
    dev = next(ddpm.parameters()).device

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = images[idx].to(dev)
        return ddpm.training_loss(_flip(x, gen) if flip else x, gen)

    return train_with_ema(
        ddpm,
        ddpm.unet,
        images.shape[0],
        cfg,
        loss_fn,
        save=save,
        progress=progress,
        what="DDPM",
        checkpoint=checkpoint,
        resume=resume,
    )


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    robust: RobustConfig | None = None,
    progress: ProgressFn | None = None,
    flip: bool = True,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    *,
    checkpoint: CheckpointPath | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Class-balanced cross-entropy training of ``model`` on ``images`` ``(N, C, S, S)``, ``labels`` ``(N,)``.

    With ``robust`` the loss is TRADES or PGD adversarial training (:func:`medxai.training.robust.robust_loss`).
    ``checkpoint`` and ``resume``: :func:`~medxai.training.trainers.train_loop`.
    """
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images must be (N, C, S, S) with one label each, got images {tuple(images.shape)} and labels {tuple(labels.shape)}."
        )
    from medxai.training.robust import robust_loss

    dev = next(model.parameters()).device
    labels = labels.long()
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1).float().clamp_min(1)
    weight = (counts.sum() / (counts * len(counts))).to(dev)

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = images[idx].to(dev)
        x = _flip(x, gen) if flip else x
        y = labels[idx].to(dev)
        if robust is None:
            return F.cross_entropy(model(x), y, weight=weight)
        return robust_loss(
            model, x, y, robust.method, robust.eps, robust.steps, robust.beta, weight=weight, clamp=clamp, generator=gen
        )

    hist = train_loop(
        model,
        images.shape[0],
        cfg,
        loss_fn,
        progress=progress,
        what="robust classifier" if robust else "classifier",
        checkpoint=checkpoint,
        resume=resume,
    )
    recalibrate_batchnorm(model, images)
    hist["train_accuracy"] = evaluate_classifier(model, images, labels)["accuracy"]
    return hist


@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and (binary) AUROC of class 1 on ``images`` ``(N, C, S, S)``."""
    from medxai.metrics.localisation import pixel_auroc

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        logits = torch.cat([model(c.to(dev)).cpu() for c in images.split(batch_size)])
    finally:
        model.train(was)
    labels = labels.long()
    out = {"accuracy": float((logits.argmax(1) == labels).float().mean())}
    if logits.shape[1] == 2 and 0 < int(labels.sum()) < len(labels):
        out["auroc"] = pixel_auroc(logits.softmax(1)[:, 1].numpy(), labels.numpy())
    return out


def train_feature_net(
    net: nn.Module,
    images: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train :class:`~medxai.metrics.realism.FeatureNet` with its multi-task loss.

    ``targets``: ``label`` (N,), optionally ``extent`` (N,), ``marker`` (N,), ``lesions`` (N, 1, S, S).
    """
    from medxai.metrics.realism import feature_net_loss

    dev = next(net.parameters()).device

    def loss_fn(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flip = torch.rand((), generator=gen) < 0.5
        x = images[idx].to(dev)
        t = {k: v[idx].to(dev) for k, v in targets.items()}
        if flip:
            x = x.flip(-1)
            if "lesions" in t:
                t["lesions"] = t["lesions"].flip(-1)
        return feature_net_loss(net, x, t)

    return train_loop(net, images.shape[0], cfg, loss_fn, progress=progress, what="feature network")
