"""Occlusion sensitivity through ``monai.visualize.OcclusionSensitivity``."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.visualize import OcclusionSensitivity as _MonaiOcclusion
from torch import nn

from medxai.explainers.base import Explainer
from medxai.registry import ANY_IMAGE, register_method
from medxai.targets import Target

__all__ = ["Occlusion"]

logger = logging.getLogger(__name__)


class _TargetScore(nn.Module):
    """Wraps ``model`` so that its output is the target score ``(B, T)``."""

    def __init__(self, model: nn.Module, target: Target) -> None:
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.target(self.model(x))
        return score if score.ndim == 2 else score[:, None]


@dataclasses.dataclass(frozen=True)
class OcclusionSettings:
    """Settings of :class:`Occlusion` (see its parameters)."""

    mask_size: int | tuple[int, ...] | None = None
    overlap: float = 0.6
    mode: str | float = "gaussian"
    batch_size: int = 16


@register_method(
    "occlusion",
    settings=OcclusionSettings,
    inputs=ANY_IMAGE,
    summary="occlusion sensitivity (MONAI): score drop when a patch is hidden",
)
class Occlusion(Explainer):
    """Occlusion sensitivity (Zeiler & Fergus 2014) via MONAI.

    The heatmap is the drop of the target score when a patch centred on each pixel/voxel is
    occluded: ``score(x) - score(occluded x)`` (positive = evidence for the target).

    Parameters
    ----------
    model : nn.Module
        Classifier ``(B, C, *spatial)`` -> ``(B, K)``.
    mask_size : int or sequence of int, optional
        Occluded patch size per spatial axis; default a quarter of the smallest spatial size (>= 3).
    overlap : float
        Overlap of neighbouring patches in [0, 1) (MONAI's sliding window).
    mode : {"gaussian", "mean_patch", "mean_img"} or float
        What replaces the occluded patch (MONAI's modes; a float is a constant value).
    batch_size : int
        Occluded images per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        mask_size: int | Sequence[int] | None = None,
        overlap: float = 0.6,
        mode: str | float = "gaussian",
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
        if isinstance(mode, str) and mode not in ("gaussian", "mean_patch", "mean_img"):
            raise ValueError(f"mode must be 'gaussian', 'mean_patch', 'mean_img' or a float, got {mode!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if mask_size is not None:
            sizes = [mask_size] if isinstance(mask_size, int) else list(mask_size)
            if any((not isinstance(m, int)) or m < 1 for m in sizes):
                raise ValueError(f"mask_size must be positive ints, got {mask_size!r}.")
        self.mask_size = mask_size
        self.overlap = float(overlap)
        self.mode = mode
        self.batch_size = batch_size

    def get_parameters(self) -> dict[str, Any]:
        return {
            **super().get_parameters(),
            "mask_size": self.mask_size,
            "overlap": self.overlap,
            "mode": self.mode,
            "batch_size": self.batch_size,
        }

    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None) -> torch.Tensor:
        spatial = x.shape[2:]
        mask_size = self.mask_size if self.mask_size is not None else max(3, min(spatial) // 4)
        sizes = [mask_size] * len(spatial) if isinstance(mask_size, int) else list(mask_size)
        if len(sizes) != len(spatial) or any(m > s for m, s in zip(sizes, spatial)):
            raise ValueError(
                f"mask_size={self.mask_size!r} does not fit the spatial shape {tuple(spatial)}; "
                "pass one size per spatial axis, each no larger than the image."
            )
        wrapper = _TargetScore(self.model, target).eval()
        occ = _MonaiOcclusion(
            wrapper,
            mask_size=sizes,
            n_batch=self.batch_size,
            verbose=False,
            mode=self.mode,
            overlap=self.overlap,
            activate=False,
        )
        maps = []
        with torch.no_grad(), warnings.catch_warnings():
            # MONAI 1.6 indexes with lists inside OcclusionSensitivity; torch warns about it on every patch
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            for b in range(x.shape[0]):
                xb = x[b : b + 1]
                base = wrapper(xb)  # (1, T)
                occluded, _ = occ(xb)  # (1, T, *spatial)
                occluded = torch.as_tensor(occluded).reshape(1, base.shape[1], *spatial)
                maps.append(base.view(1, -1, *([1] * len(spatial))) - occluded)
        return torch.cat(maps).float()
