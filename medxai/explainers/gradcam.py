"""Grad-CAM and Grad-CAM++ through MONAI's ``monai.visualize`` implementations.

MONAI's ``ModelWithHooks`` registers hooks without keeping their handles; here a small subclass
keeps the handles and removes them after every call, and maps our :class:`~medxai.targets.Target`
onto MONAI's class score. The CAM maths (weights, ReLU, upsampling) is MONAI's.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from monai.visualize.class_activation_maps import GradCAM as _MonaiGradCAM
from monai.visualize.class_activation_maps import GradCAMpp as _MonaiGradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks
from torch import nn

from medxai.explainers.base import Explainer
from medxai.networks.layers import default_cam_layer, find_layer
from medxai.registry import ANY_IMAGE, register_method
from medxai.targets import Target

__all__ = ["GradCAM", "GradCAMpp", "default_cam_layer"]

logger = logging.getLogger(__name__)


class _TargetHooks(ModelWithHooks):
    """MONAI ``ModelWithHooks`` with removable hooks and a target callable as the class score."""

    def __init__(self, model: nn.Module, layer: str, target: Target, spatial_ndim: int) -> None:
        # Not calling super().__init__: it registers hooks without keeping the handles.
        self.model = model
        self.target_layers = (layer,)
        self.gradients: dict[str, torch.Tensor] = {}
        self.activations: dict[str, torch.Tensor] = {}
        self.score: torch.Tensor | None = None
        self.class_idx: int | None = None
        self.register_backward = True
        self.register_forward = True
        self._target = target
        self._spatial_ndim = spatial_ndim
        module = find_layer(model, layer)
        if module.__dict__.get("inplace"):
            module.__dict__["inplace"] = False  # full backward hooks fail on in-place outputs; restored by the guard
        self._handles = [
            module.register_forward_hook(self.forward_hook(layer)),
            module.register_full_backward_hook(self.backward_hook(layer)),
        ]

    def class_score(self, logits: torch.Tensor, class_idx: int) -> torch.Tensor:
        score = self._target(logits)
        # (B, 1, 1, ...) so that Grad-CAM++'s score.exp() * grad broadcasts per sample
        return score.reshape(score.shape[0], *([1] * (self._spatial_ndim + 1)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.gradients.clear()
        self.activations.clear()
        self.score = None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclasses.dataclass(frozen=True)
class GradCAMSettings:
    """Settings of :class:`GradCAM` / :class:`GradCAMpp` (``layer``: default the last convolution)."""

    layer: str | None = None
    normalize: bool = True


@register_method(
    "gradcam",
    settings=GradCAMSettings,
    inputs=ANY_IMAGE,
    summary="Grad-CAM (MONAI): gradient-weighted activations of a convolution layer",
)
class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) via ``monai.visualize.GradCAM``.

    Parameters
    ----------
    model : nn.Module
        Classifier ``(B, C, *spatial)`` -> ``(B, K)``.
    layer : str, optional
        Module whose activations are weighted (default: the last convolution).
    normalize : bool
        Divide each map by its maximum (maps are non-negative after the ReLU).
    **kwargs
        Passed to :class:`~medxai.explainers.base.Explainer`.

    Notes
    -----
    Heatmaps have shape ``(B, 1, *spatial)``, upsampled from the layer's grid by MONAI's default
    (bi/tri-linear) upsampler.
    """

    _monai_cls: Any = _MonaiGradCAM

    def __init__(self, model: nn.Module, layer: str | None = None, normalize: bool = True, **kwargs: Any) -> None:
        if isinstance(model, torch.jit.ScriptModule):  # its layers are not nn modules and take no hooks
            raise ValueError(
                f"{type(self).__name__} reads a layer's activations and gradients through hooks, which TorchScript models "
                "do not take; explain a TorchScript model with occlusion, rise, integrated_gradients or diffexplainer, or "
                "load it as kind class_path / monai_bundle (docs/byo_classifier.md)."
            )
        super().__init__(model, **kwargs)
        self.layer = default_cam_layer(model) if layer is None else layer
        find_layer(model, self.layer)  # fail early with the list of valid names
        self.normalize = bool(normalize)

    def get_parameters(self) -> dict[str, Any]:
        return {**super().get_parameters(), "layer": self.layer, "normalize": self.normalize}

    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None) -> torch.Tensor:
        if target.multi:
            raise TypeError(f"{type(self).__name__} explains one score at a time; got {target!r}. Use ClassTarget(k).")
        hooks = _TargetHooks(self.model, self.layer, target, x.ndim - 2)
        try:
            cam = self._monai_cls(hooks, target_layers=self.layer, postprocessing=_identity)
            xin = x.clone().requires_grad_(True)  # parameters are frozen: gradients flow from the input
            with torch.enable_grad():
                maps = cam(xin, class_idx=target.class_index if target.class_index is not None else 0)
            if self.layer not in hooks.gradients:
                raise ValueError(f"layer {self.layer!r} received no gradient for {target!r}; pick a layer the score depends on.")
        finally:
            hooks.remove()
        maps = maps.detach().float()
        if self.normalize:
            peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
            maps = maps / peak.view(-1, *([1] * (maps.ndim - 1)))
        return maps


@register_method(
    "gradcam++", settings=GradCAMSettings, inputs=ANY_IMAGE, summary="Grad-CAM++ (MONAI): Grad-CAM with higher-order weights"
)
class GradCAMpp(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018) via ``monai.visualize.GradCAMpp``; see :class:`GradCAM`."""

    _monai_cls = _MonaiGradCAMpp
