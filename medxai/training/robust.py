"""Adversarially robust classifiers: L2 PGD attacks, PGD adversarial training and TRADES losses.

DVCE guides with a robust classifier (its gradients look like image changes, not adversarial
noise); the retinal follow-up trained it with TRADES at L2 ``eps = 0.25``. All randomness
(the attack's random start) comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["l2_pgd", "adversarial_examples", "robust_loss", "robust_accuracy", "ROBUST_METHODS"]

logger = logging.getLogger(__name__)

ROBUST_METHODS = ("pgd", "trades")


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (x.ndim - 1)))


def _check(eps: float, steps: int) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (L2 radius in image units), got {eps!r}; e.g. 0.25.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}; e.g. 5.")


def l2_pgd(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    steps: int = 5,
    step_size: float | None = None,
    *,
    random_start: bool = True,
    init_std: float | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximise ``objective(model(x'))`` over the L2 ball ``||x' - x|| <= eps`` (per image).

    Parameters
    ----------
    model : nn.Module
        ``(B, C, H, W)`` -> logits ``(B, K)``; its parameters receive no gradients.
    x : torch.Tensor
        ``(B, C, H, W)`` clean images.
    objective : callable
        logits ``(B, K)`` -> per-image loss ``(B,)`` to maximise.
    eps : float
        L2 radius.
    steps : int
    step_size : float, optional
        L2 length of each normalised gradient step; ``2.5 * eps / steps`` by default.
    random_start : bool
        Start from a random point of the ball (uniform direction, radius ``U(0, eps)``).
    init_std : float, optional
        Start from ``x + init_std * N(0, 1)`` instead (TRADES uses 0.001).
    clamp : (float, float) or None
        Valid image range.
    generator : torch.Generator, optional

    Returns
    -------
    torch.Tensor
        Adversarial images ``(B, C, H, W)`` (detached).
    """
    _check(eps, steps)
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x = x.detach()
    if init_std is not None:
        delta = init_std * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    elif random_start:
        d = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        r = torch.rand((x.shape[0],), generator=generator).to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        delta = d / _row_norm(d) * r * eps
    else:
        delta = torch.zeros_like(x)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = objective(model(x + delta)).sum()
                (grad,) = torch.autograd.grad(loss, delta)
            delta = delta.detach() + alpha * grad / _row_norm(grad)
            delta = delta * (eps / _row_norm(delta)).clamp(max=1.0)
            if clamp is not None:
                delta = (x + delta).clamp(*clamp) - x
    finally:
        for p in params:
            p.requires_grad_(True)
    return (x + delta).detach()


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "trades",
    eps: float = 0.25,
    steps: int = 5,
    *,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial inputs for training: ``"pgd"`` maximises the cross-entropy to ``y``; ``"trades"``
    maximises ``KL(p(x) || p(x'))`` from a tiny Gaussian start. ``model`` is put in eval mode
    during the attack and restored afterwards."""
    if method not in ROBUST_METHODS:
        raise ValueError(f"method must be one of {ROBUST_METHODS}, got {method!r}.")
    was_training = model.training
    model.eval()
    try:
        if method == "pgd":
            return l2_pgd(
                model, x, lambda lo: F.cross_entropy(lo, y, reduction="none"), eps, steps, clamp=clamp, generator=generator
            )
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)

        def kl(lo: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(lo, dim=1), p_clean, reduction="none").sum(1)

        return l2_pgd(model, x, kl, eps, steps, init_std=0.001, clamp=clamp, generator=generator)
    finally:
        model.train(was_training)


def robust_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "trades",
    eps: float = 0.25,
    steps: int = 5,
    beta: float = 6.0,
    *,
    weight: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training loss of adversarial training.

    ``"pgd"`` (Madry et al.): ``CE(f(x_adv), y)``. ``"trades"`` (Zhang et al.):
    ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with ``beta`` 6 as in TRADES.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)``; y : ``(B,)`` int labels. ``weight``: optional class weights ``(K,)``.
    """
    x_adv = adversarial_examples(model, x, y, method, eps, steps, clamp=clamp, generator=generator)
    if method == "pgd":
        return F.cross_entropy(model(x_adv), y, weight=weight)
    logits = model(x)
    kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, y, weight=weight) + beta * kl


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.25,
    steps: int = 10,
    batch_size: int = 64,
    *,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """``(clean accuracy, accuracy under an L2 PGD attack of radius eps)`` of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    clean = adv = 0
    try:
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            with torch.no_grad():
                clean += int((model(xb).argmax(1) == yb).sum())
            xa = l2_pgd(
                model,
                xb,
                lambda lo, yb=yb: F.cross_entropy(lo, yb, reduction="none"),
                eps,
                steps,
                clamp=clamp,
                generator=generator,
            )
            with torch.no_grad():
                adv += int((model(xa).argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    n = max(1, int(y.shape[0]))
    return clean / n, adv / n
