"""Looking up the layers of a model by name.

Targets (:class:`~medxai.targets.NeuronTarget`), explainers (Grad-CAM's layer, the base class's input
check) and networks (the teacher's classification layer) all name sub-modules of a user's model. The
lookup lives here, below all of them, so that none has to import another to find a layer; this module
imports only torch.
"""

from __future__ import annotations

import difflib

from torch import nn

__all__ = ["layer_names", "find_layer", "infer_input_spec", "default_cam_layer"]


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of all sub-modules of ``model`` (as in ``named_modules()``, without the root)."""
    return [name for name, _ in model.named_modules() if name]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module called ``name``.

    Parameters
    ----------
    model : nn.Module
    name : str
        Qualified module name as in ``model.named_modules()`` (e.g. ``"features.conv3"``).

    Raises
    ------
    ValueError
        If there is no such module; the message lists close matches and a few valid names.
    """
    modules = dict(model.named_modules())
    if isinstance(name, str) and name in modules and name:
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
    # prefer the last few modules: the usual choice for CAM methods
    sample = close or (names[:3] + (["..."] if len(names) > 6 else []) + names[-3:])
    raise ValueError(
        f"layer {name!r} does not exist in {type(model).__name__}; valid layer names include "
        f"{', '.join(repr(n) if n != '...' else n for n in sample)} (see medxai.explainers.layer_names(model))."
    )


def infer_input_spec(model: nn.Module) -> tuple[int | None, int | None]:
    """Guess ``(in_channels, spatial_dims)`` from the first convolution of ``model``.

    Returns ``(None, None)`` when the model has no convolution (nothing is checked then).
    """
    for module in model.modules():
        # every torch convolution (1/2/3-d, transposed, lazy once materialised) is a _ConvNd whose
        # kernel_size has one entry per spatial dimension
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels), len(module.kernel_size)
    return None, None


def default_cam_layer(model: nn.Module) -> str:
    """Name of the last convolution of ``model`` (a reasonable default layer for CAM methods).

    Raises
    ------
    ValueError
        If ``model`` has no convolution.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            last = name
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no convolution; pass layer='<module name>' explicitly "
            "(see medxai.explainers.layer_names(model))."
        )
    return last
