"""RISE: randomized input sampling for explanation (Petsiuk et al., BMVC 2018).

No maintained library ships RISE, so it is written here: random low-resolution binary grids,
upsampled (bi/tri-linearly) with a random sub-cell shift, multiply the input; the saliency of a
score is the score-weighted average of the masks, ``sum_i s_i * M_i / (N * p)``. All masks come
from the explainer's own ``torch.Generator``; the same masks are used for every input in a batch,
and every class is explained from the same forward passes when the target is ``AllClasses``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medxai.explainers.base import Explainer
from medxai.registry import ANY_IMAGE, register_method
from medxai.targets import Target

__all__ = ["RISE", "rise_masks"]

logger = logging.getLogger(__name__)


def rise_masks(
    n: int,
    spatial: tuple[int, ...],
    grid_size: int,
    p: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``n`` RISE masks of shape ``(n, 1, *spatial)`` with values in [0, 1].

    Parameters
    ----------
    n : int
        Number of masks.
    spatial : tuple of int
        ``(H, W)`` or ``(D, H, W)``.
    grid_size : int
        Cells of the binary grid per axis (``s`` in the paper).
    p : float
        Probability that a cell is kept.
    generator : torch.Generator
        CPU generator that owns the randomness.
    """
    nd = len(spatial)
    cells = [math.ceil(s / grid_size) for s in spatial]
    grid = (torch.rand((n, 1, *([grid_size] * nd)), generator=generator) < p).float()
    up_size = [(grid_size + 1) * c for c in cells]
    mode = "bilinear" if nd == 2 else "trilinear"
    up = F.interpolate(grid.to(device), size=up_size, mode=mode, align_corners=False)
    shifts = torch.stack([torch.randint(0, c, (n,), generator=generator) for c in cells], dim=1)
    out = torch.empty((n, 1, *spatial), device=device)
    for i in range(n):
        sl = tuple(slice(int(o), int(o) + s) for o, s in zip(shifts[i], spatial))
        out[i, 0] = up[(i, 0, *sl)]
    return out


@dataclasses.dataclass(frozen=True)
class RISESettings:
    """Settings of :class:`RISE` (see its parameters)."""

    n_masks: int = 1000
    grid_size: int = 8
    p: float = 0.5
    batch_size: int = 16
    center_scores: bool = True


@register_method("rise", settings=RISESettings, inputs=ANY_IMAGE, summary="RISE: score-weighted random masks")
class RISE(Explainer):
    """RISE saliency for one score, or for all classes at once with ``AllClasses``.

    Parameters
    ----------
    model : nn.Module
        Classifier ``(B, C, *spatial)`` -> ``(B, K)``.
    n_masks : int
        Number of random masks (the paper uses 4000-8000 at 224 px).
    grid_size : int
        Cells per axis of the low-resolution grid (``s``; 7-8 in the paper).
    p : float
        Keep probability of a cell.
    batch_size : int
        Masked images per forward pass (8-16 run fastest on a CPU).
    center_scores : bool
        Subtract the mean score over the masks before weighting (default). This removes the constant
        offset that logits (or saturated probabilities) add to the map and the noise that offset carries
        through the uneven mask coverage; ``False`` is the paper's plain estimator.
    seed : int or None
        Seed of the mask generator (same seed -> same masks -> same maps).

    Notes
    -----
    Use a target with ``activation="softmax"``/``"sigmoid"`` to weight masks by probabilities as in
    the paper; the default logit weighting works too but the maps then carry a constant offset.
    """

    stochastic = True

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 1000,
        grid_size: int = 8,
        p: float = 0.5,
        batch_size: int = 16,
        center_scores: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.center_scores = bool(center_scores)
        if not isinstance(n_masks, int) or n_masks < 1:
            raise ValueError(f"n_masks must be a positive int, got {n_masks!r}.")
        if not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}.")
        if not 0.0 < p < 1.0:
            raise ValueError(f"p must be in (0, 1), got {p!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        self.n_masks = n_masks
        self.grid_size = grid_size
        self.p = float(p)
        self.batch_size = batch_size

    def get_parameters(self) -> dict[str, Any]:
        return {
            **super().get_parameters(),
            "n_masks": self.n_masks,
            "grid_size": self.grid_size,
            "p": self.p,
            "batch_size": self.batch_size,
            "center_scores": self.center_scores,
        }

    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None) -> torch.Tensor:
        assert generator is not None
        spatial = tuple(int(s) for s in x.shape[2:])
        if any(s < self.grid_size for s in spatial):
            raise ValueError(f"grid_size={self.grid_size} exceeds the spatial shape {spatial}; use a smaller grid_size.")
        sal: torch.Tensor | None = None
        score_sum: torch.Tensor | None = None
        mask_sum = torch.zeros((int(torch.tensor(spatial).prod()),), device=x.device)
        done = 0
        with torch.no_grad():
            while done < self.n_masks:
                n = min(self.batch_size, self.n_masks - done)
                masks = rise_masks(n, spatial, self.grid_size, self.p, generator, device=x.device)  # (n, 1, *sp)
                flat = masks.reshape(n, -1)
                for b in range(x.shape[0]):
                    scores = target(self.model(x[b : b + 1] * masks))
                    scores = scores.reshape(n, -1).float()  # (n, T)
                    if sal is None or score_sum is None:
                        sal = torch.zeros((x.shape[0], scores.shape[1], flat.shape[1]), device=x.device)
                        score_sum = torch.zeros((x.shape[0], scores.shape[1]), device=x.device)
                    sal[b] += scores.T @ flat
                    score_sum[b] += scores.sum(dim=0)
                mask_sum += flat.sum(dim=0)
                done += n
        assert sal is not None and score_sum is not None
        if self.center_scores:
            # sum_i (s_i - mean s) M_i = sum_i s_i M_i - mean(s) * sum_i M_i
            sal = sal - (score_sum / self.n_masks)[:, :, None] * mask_sum[None, None, :]
        sal = sal / (self.n_masks * self.p)
        return sal.reshape(x.shape[0], -1, *spatial)
