"""Integrated Gradients through Captum (``captum.attr.IntegratedGradients``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from captum.attr import IntegratedGradients as _CaptumIG
from torch import nn

from medxai.explainers.base import Explainer, MethodResult
from medxai.registry import ANY_IMAGE, register_method
from medxai.targets import Target

__all__ = ["IntegratedGradients"]

logger = logging.getLogger(__name__)

_REDUCTIONS = ("sum", "abs", "none")


@dataclasses.dataclass(frozen=True)
class IntegratedGradientsSettings:
    """Settings of :class:`IntegratedGradients` (see its parameters)."""

    baseline: float = 0.0
    n_steps: int = 32
    internal_batch_size: int | None = 16
    channel_reduction: str = "sum"


@register_method(
    "integrated_gradients",
    settings=IntegratedGradientsSettings,
    inputs=ANY_IMAGE,
    summary="integrated gradients (Captum) from a constant baseline",
)
class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017) via Captum.

    Parameters
    ----------
    model : nn.Module
        Classifier ``(B, C, *spatial)`` -> ``(B, K)``.
    baseline : float
        Constant baseline image value (0 = black / the normalised mean).
    n_steps : int
        Riemann steps along the path.
    internal_batch_size : int, optional
        Path points per forward pass (Captum's ``internal_batch_size``).
    channel_reduction : {"sum", "abs", "none"}
        How the per-channel attributions ``(B, C, *spatial)`` become heatmaps: ``"sum"`` over channels
        (signed, ``T=1``), ``"abs"`` sum of absolute values (``T=1``), ``"none"`` one map per channel (``T=C``).
    """

    def __init__(
        self,
        model: nn.Module,
        baseline: float = 0.0,
        n_steps: int = 32,
        internal_batch_size: int | None = 16,
        channel_reduction: str = "sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if not isinstance(n_steps, int) or n_steps < 2:
            raise ValueError(f"n_steps must be an int >= 2, got {n_steps!r}.")
        if channel_reduction not in _REDUCTIONS:
            raise ValueError(f"channel_reduction must be one of {_REDUCTIONS}, got {channel_reduction!r}.")
        self.baseline = float(baseline)
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size
        self.channel_reduction = channel_reduction

    def get_parameters(self) -> dict[str, Any]:
        return {
            **super().get_parameters(),
            "baseline": self.baseline,
            "n_steps": self.n_steps,
            "internal_batch_size": self.internal_batch_size,
            "channel_reduction": self.channel_reduction,
        }

    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None) -> Any:
        if target.multi:
            raise TypeError(f"IntegratedGradients explains one score at a time; got {target!r}. Use ClassTarget(k).")

        def forward(inp: torch.Tensor) -> torch.Tensor:
            return target(self.model(inp))

        ig = _CaptumIG(forward)
        with torch.enable_grad():
            attr, delta = ig.attribute(
                x.clone(),
                baselines=self.baseline,
                n_steps=self.n_steps,
                internal_batch_size=self.internal_batch_size,
                return_convergence_delta=True,
            )
        attr = attr.detach()
        if self.channel_reduction == "sum":
            maps = attr.sum(dim=1, keepdim=True)
        elif self.channel_reduction == "abs":
            maps = attr.abs().sum(dim=1, keepdim=True)
        else:
            maps = attr
        # completeness gap per input (B,): sum of attributions minus (f(x) - f(baseline))
        return MethodResult(heatmaps=maps, diagnostics={"convergence_delta": delta.detach().cpu()})
