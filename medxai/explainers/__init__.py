"""Explainers: one base class, one small subclass per method.

``Explainer.explain(x, target) -> Explanation``; see :mod:`medxai.explainers.base`. The method
modules are imported lazily (MONAI and Captum cost seconds to import).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Explainer",
    "ModelStateGuard",
    "find_layer",
    "hook_count",
    "infer_input_spec",
    "layer_names",
    "GradCAM",
    "GradCAMpp",
    "IntegratedGradients",
    "Occlusion",
    "RISE",
    "rise_masks",
    "NNExplainer",
    "NNExplainerConfig",
    "build_explainer_network",
    "load_nn_explainer",
    "nn_explainer_loss",
    "save_nn_explainer",
    "train_nn_explainer",
    "DiffExplainer",
    "DVCE",
]

_WHERE = {
    "Explainer": "base",
    "ModelStateGuard": "base",
    "find_layer": "base",
    "hook_count": "base",
    "infer_input_spec": "base",
    "layer_names": "base",
    "GradCAM": "gradcam",
    "GradCAMpp": "gradcam",
    "IntegratedGradients": "integrated_gradients",
    "Occlusion": "occlusion",
    "RISE": "rise",
    "rise_masks": "rise",
    "NNExplainer": "nn_explainer",
    "NNExplainerConfig": "nn_explainer",
    "build_explainer_network": "nn_explainer",
    "load_nn_explainer": "nn_explainer",
    "nn_explainer_loss": "nn_explainer",
    "save_nn_explainer": "nn_explainer",
    "train_nn_explainer": "nn_explainer",
    "DiffExplainer": "diffexplainer",
    "DVCE": "dvce",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(f"medxai.explainers.{_WHERE[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medxai.explainers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
