"""Classifiers: tiny CNNs for tests, a factory for MONAI classifiers, and their safe save/load.

Every network built here is initialised from a caller-owned ``torch.Generator`` (never the global
RNG), with the same distributions as PyTorch's default initialisation. Training lives with the one
training loop: :func:`medxai.training.trainers.fit_classifier`.

On disk a classifier is ``classifier.safetensors`` plus ``classifier.json`` with ``class_path`` and
``init_kwargs`` (:func:`save_classifier` / :func:`classifier_from_pretrained`; the format of every
medxai model, :mod:`medxai.training.checkpoint`).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "TinyCNN",
    "make_classifier",
    "init_with_generator",
    "recalibrate_batchnorm",
    "load_class",
    "load_classifier",
    "save_classifier",
    "classifier_from_pretrained",
    "state_fingerprint",
    "CLASSIFIER_NAMES",
]

logger = logging.getLogger(__name__)

CLASSIFIER_NAMES = ("tiny", "resnet18", "densenet121")


def init_with_generator(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``module`` in place from ``generator`` (PyTorch's default distributions).

    Convolutions and linear layers get ``kaiming_uniform_(a=sqrt(5))`` weights and uniform
    ``+-1/sqrt(fan_in)`` biases; normalisation layers get ones/zeros; PReLU 0.25.

    Returns
    -------
    nn.Module
        ``module`` itself.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                    m.reset_running_stats()
            elif isinstance(m, nn.PReLU):
                nn.init.constant_(m.weight, 0.25)
    return module


class TinyCNN(nn.Module):
    """A ~0.05-0.1M-parameter CNN for tests: three conv blocks, global average pool, linear head.

    Layer names: ``features.conv1`` ... ``features.conv3`` (convolutions), ``features.act3`` (last
    feature map, a good Grad-CAM layer), ``head``.

    Parameters
    ----------
    in_channels : int
        Input channels C of ``(B, C, H, W)`` / ``(B, C, D, H, W)``.
    num_classes : int
        Output logits K.
    spatial_dims : int
        2 or 3.
    width : int
        Channels of the first block (then 2x, 4x).
    generator : torch.Generator, optional
        Initialises the weights; a fresh generator seeded with 0 when omitted.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        width: int = 16,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if in_channels < 1 or num_classes < 1 or width < 1:
            raise ValueError(f"in_channels, num_classes and width must be positive, got {in_channels}, {num_classes}, {width}.")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        gap = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        w = width
        self.features = nn.Sequential(
            OrderedDict(
                conv1=conv(in_channels, w, 3, padding=1),
                act1=nn.ReLU(),
                pool1=pool(2),
                conv2=conv(w, 2 * w, 3, padding=1),
                act2=nn.ReLU(),
                pool2=pool(2),
                conv3=conv(2 * w, 4 * w, 3, padding=1),
                act3=nn.ReLU(),
            )
        )
        self.pool = gap(1)
        self.head = nn.Linear(4 * w, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        init_with_generator(self, generator if generator is not None else torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> logits ``(B, K)``."""
        return self.head(self.pool(self.features(x)).flatten(1))


def make_classifier(
    name: str,
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier by name.

    Parameters
    ----------
    name : {"tiny", "resnet18", "densenet121"}
        ``"tiny"`` = :class:`TinyCNN`; ``"resnet18"`` = MONAI ResNet-18 with a stride-2 stem
        (``conv1_t_stride=2``); ``"densenet121"`` = MONAI DenseNet121.
    in_channels, num_classes, spatial_dims : int
        Input channels, output logits, 2 or 3.
    generator : torch.Generator, optional
        Initialises the weights (MONAI's own init is replaced by the generator-owned default init).
    **kwargs
        Passed to the network constructor.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if name == "tiny":
        return TinyCNN(in_channels, num_classes, spatial_dims, generator=gen, **kwargs)
    if name == "resnet18":
        from monai.networks.nets import resnet18

        kwargs.setdefault("conv1_t_stride", 2)
        net = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
    elif name == "densenet121":
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)
    else:
        raise ValueError(f"name must be one of {CLASSIFIER_NAMES}, got {name!r}.")
    return init_with_generator(net, gen)


def load_class(class_path: str, *, trust_code: bool = False, where: str = "class_path") -> type:
    """Import ``"package.module:ClassName"`` or ``"package.module.ClassName"`` and return the class.

    Parameters
    ----------
    class_path : str
        Where the class lives.
    trust_code : bool
        False (default): only ``torch.nn.Module`` subclasses from ``torch`` / ``torch.nn``,
        ``monai.networks`` and ``medxai`` load (see :mod:`medxai.trust`); the module name is checked
        before anything is imported, because importing a module runs its code. True: any class
        (the user trusts the config's source).
    where : str
        Names the config file and key (or CLI option) in error messages, e.g.
        ``"configs/ct_prognosis.yaml: teacher.class_path"``.

    Raises
    ------
    ValueError
        A malformed or refused class path, a module that cannot be imported, or no such class.
    """
    from medxai.trust import is_allowed_module, split_class_path, untrusted_refusal

    module_name, attr = split_class_path(class_path, where)
    if not trust_code and not is_allowed_module(module_name):
        raise untrusted_refusal(where, class_path, f"module {module_name!r} is not on the allow-list")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{where} {class_path!r}: cannot import module {module_name!r} ({err}).") from err
    cls = getattr(module, attr, None)
    if trust_code:
        if not isinstance(cls, type):
            raise ValueError(f"{where} {class_path!r}: module {module_name!r} has no class {attr!r}.")
        return cls
    if cls is None:
        raise ValueError(f"{where} {class_path!r}: module {module_name!r} has no class {attr!r}.")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        kind = f"the class {cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise untrusted_refusal(where, class_path, f"it is {kind}, not a torch.nn.Module subclass")
    # a re-export (an allowed module importing a class from elsewhere) does not make the class allowed
    if not is_allowed_module(str(getattr(cls, "__module__", ""))):
        raise untrusted_refusal(where, class_path, f"the class is defined in {cls.__module__!r}, not on the allow-list")
    return cls


def load_classifier(
    class_path: str,
    weights: str,
    init_kwargs: dict[str, Any] | None = None,
    *,
    trust_code: bool = False,
    where: str = "class_path",
) -> nn.Module:
    """Build ``class_path(**init_kwargs)`` and load a state dict from ``weights`` safely (eval mode).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling, whatever ``trust_code`` says).
    ``trust_code`` and ``where`` are as in :func:`load_class`.
    """
    from medxai.training.checkpoint import load_state_checked, load_weights

    cls = load_class(class_path, trust_code=trust_code, where=where)
    model = cls(**(init_kwargs or {}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where} {class_path!r} built a {type(model).__name__}, not a torch.nn.Module.")
    load_state_checked(model, load_weights(weights), str(weights), f"{class_path}(**{init_kwargs or {}})")
    return model.eval()


def save_classifier(
    model: nn.Module,
    path: str | os.PathLike[str],
    class_path: str,
    init_kwargs: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights (safetensors) and a side-car with ``class_path`` and ``init_kwargs``.

    Parameters
    ----------
    model : nn.Module
        Built as ``class_path(**init_kwargs)``.
    path : str or path-like
        ``name.safetensors`` (``name.json`` beside it) or a folder (``classifier.safetensors`` and
        ``classifier.json`` inside).
    class_path : str
        ``"package.module:ClassName"``, what :func:`classifier_from_pretrained` rebuilds.
    init_kwargs : mapping, optional
        Constructor arguments (JSON values).
    meta : mapping, optional
        Further side-car fields (history, validation, source).

    Returns
    -------
    Path
        The weights file.
    """
    from medxai.training.checkpoint import save_pretrained

    info = {"kind": "classifier", "class_path": class_path, "init_kwargs": dict(init_kwargs or {}), **dict(meta or {})}
    return save_pretrained(path, model.state_dict(), info, name="classifier")


def classifier_from_pretrained(
    path: str | os.PathLike[str],
    *,
    init_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
    where: str = "classifier",
) -> nn.Module:
    """Load a classifier written by :func:`save_classifier` (or any weights file whose side-car names
    ``class_path``), in eval mode, without unpickling.

    Parameters
    ----------
    path : str or path-like
        Weights file or folder (``classifier.safetensors`` inside).
    init_kwargs : mapping, optional
        Constructor arguments; default: the side-car's ``init_kwargs`` (a teacher's side-car has
        none: its config supplies them).
    trust_code, where
        As in :func:`load_class`.
    """
    from medxai.training.checkpoint import load_pretrained, load_state_checked

    state, meta, weights = load_pretrained(path, name="classifier")
    class_path = meta.get("class_path")
    if not isinstance(class_path, str) or not class_path:
        raise ValueError(
            f"the side-car of {str(weights)!r} names no class_path; build the network yourself and use "
            "load_classifier(class_path, weights, init_kwargs)."
        )
    kwargs = dict(init_kwargs if init_kwargs is not None else meta.get("init_kwargs") or {})
    cls = load_class(class_path, trust_code=trust_code, where=where)
    model = cls(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where} {class_path!r} built a {type(model).__name__}, not a torch.nn.Module.")
    load_state_checked(model, state, str(weights), f"{class_path}(**{kwargs})")
    return model.eval()


def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex, first 16 characters) of the model's parameters and buffers, in state-dict order."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Recompute every BatchNorm layer's running statistics over ``x`` ``(N, C, *spatial)``; eval mode.

    After a short training run the running averages lag the weights, and a DenseNet then gives
    eval-mode scores far off its train-mode ones (all one class); the exact population statistics
    (torch's ``update_bn``, as for SWA) remove that gap. Models without BatchNorm are unchanged.
    """
    from torch.optim.swa_utils import update_bn

    dev = next(model.parameters()).device
    update_bn((c.to(dev) for c in x.split(batch_size)), model)
    return model.eval()
