"""Teachers: load the black-box classifier and read its penultimate features.

Three sources (:func:`load_teacher`):

* ``torchscript``: a TorchScript file (``torch.jit.load``; no pickle);
* ``monai_bundle``: a MONAI bundle folder (``configs/inference.json|yaml`` with ``network_def``, and
  ``models/model.pt`` state dict loaded with ``weights_only=True``, or ``models/model.ts``);
* ``class_path``: ``package.module:Class`` + ``init_kwargs`` + a state dict (``.safetensors`` or
  ``torch.load(weights_only=True)``).

:class:`TeacherFeatures` returns logits and the features that enter the classification layer (a
forward pre-hook on the named ``nn.Linear``), so the agent can distil features and copy the layer.
When the layer cannot be hooked (TorchScript, a missing/non-linear layer) it falls back to
logits-only distillation and logs a notice.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medxai.networks.classifiers import load_class
from medxai.training.checkpoint import load_state_checked, load_weights

__all__ = ["TeacherSpec", "TeacherFeatures", "load_teacher", "check_teacher_output", "teacher_spec_from_dict"]

logger = logging.getLogger(__name__)

_KINDS = ("torchscript", "monai_bundle", "class_path")


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """Where the teacher comes from and what it must output.

    Parameters
    ----------
    kind : {"torchscript", "monai_bundle", "class_path"}
    path : str
        TorchScript file, bundle folder, or weights file (``class_path``).
    num_classes : int
        Expected logits K of the output ``(B, K)``.
    in_channels : int
        Channels of the input stack (4 for the CT four-slice stack).
    image_size : int
        Side of the input stack.
    class_path : str, optional
        ``package.module:Class`` (kind ``class_path``).
    init_kwargs : dict
        Constructor arguments (kind ``class_path``).
    classifier_layer : str, optional
        Name of the final ``nn.Linear``; its input is the feature space the agent distils, its
        weights become the agent's frozen layer 2. ``None``: logits-only distillation.
    """

    kind: str
    path: str
    num_classes: int
    in_channels: int = 4
    image_size: int = 64
    class_path: str | None = None
    init_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classifier_layer: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"teacher kind must be one of {_KINDS}, got {self.kind!r}.")
        if self.kind == "class_path" and not self.class_path:
            raise ValueError("teacher kind 'class_path' needs class_path: 'package.module:Class'.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")


def _load_bundle(folder: Path) -> nn.Module:
    models = folder / "models"
    if (models / "model.ts").is_file() and not (models / "model.pt").is_file():
        return torch.jit.load(str(models / "model.ts"), map_location="cpu")
    configs = folder / "configs"
    cfg_file = next(
        (configs / n for n in ("inference.json", "inference.yaml", "train.json", "train.yaml") if (configs / n).is_file()),
        None,
    )
    if cfg_file is None:
        raise ValueError(
            f"MONAI bundle {str(folder)!r} has no configs/inference.json|yaml or train.json|yaml; "
            "pass the bundle's root folder."
        )
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(cfg_file))
    if "network_def" not in parser.config:  # type: ignore[operator]
        raise ValueError(f"{str(cfg_file)!r} defines no 'network_def'; the teacher network cannot be built.")
    net = parser.get_parsed_content("network_def")
    weights = models / "model.pt"
    if not weights.is_file():
        weights = models / "model.safetensors"
    load_state_checked(net, load_weights(weights), str(weights), "bundle network")
    return net


def load_teacher(spec: TeacherSpec) -> nn.Module:
    """Build the teacher described by ``spec`` (in eval mode) and check its output shape."""
    path = Path(spec.path)
    if not path.exists():
        raise ValueError(f"teacher path {str(path)!r} does not exist; train the teacher (medxai train teacher) or fix teacher.path.")
    if spec.kind == "torchscript":
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"teacher file {str(path)!r} is not a TorchScript archive ({err}).") from err
    elif spec.kind == "monai_bundle":
        model = _load_bundle(path)
    else:
        cls = load_class(str(spec.class_path))
        model = cls(**dict(spec.init_kwargs))
        if not isinstance(model, nn.Module):
            raise TypeError(f"class_path {spec.class_path!r} built a {type(model).__name__}, not an nn.Module.")
        load_state_checked(model, load_weights(path), str(path), f"teacher {spec.class_path}")
    model.eval()
    check_teacher_output(model, spec.num_classes, spec.in_channels, spec.image_size, source=str(path))
    return model


@torch.no_grad()
def check_teacher_output(model: nn.Module, num_classes: int, in_channels: int, image_size: int, source: str = "teacher") -> None:
    """Raise ``ValueError`` unless ``model`` maps ``(1, in_channels, S, S)`` to logits ``(1, num_classes)``."""
    x = torch.zeros(1, in_channels, image_size, image_size, device=_device_of(model))
    try:
        out = model(x)
    except RuntimeError as err:
        raise ValueError(
            f"teacher {source!r} rejected an input of shape {tuple(x.shape)} ({err}); check teacher.in_channels "
            "and the stack size in the config."
        ) from err
    if not isinstance(out, torch.Tensor) or out.shape != (1, num_classes):
        raise ValueError(
            f"teacher {source!r} returned {getattr(out, 'shape', type(out).__name__)} for one input but the config "
            f"says num_classes={num_classes} (expected (1, {num_classes})); fix teacher.num_classes or wrap the model."
        )


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, RuntimeError):
        return torch.device("cpu")


class TeacherFeatures:
    """Logits and penultimate features of a teacher.

    Parameters
    ----------
    model : nn.Module
        The teacher ``(B, C, S, S)`` -> ``(B, K)``.
    classifier_layer : str, optional
        Name of its final ``nn.Linear``. Features are that layer's input ``(B, F)``.

    Attributes
    ----------
    has_features : bool
        False when only logits are available (logits-only distillation).
    classifier : nn.Linear or None
        The classification layer (to copy into the agent).
    """

    def __init__(self, model: nn.Module, classifier_layer: str | None = None) -> None:
        self.model = model
        self.classifier: nn.Linear | None = None
        if classifier_layer and not isinstance(model, torch.jit.ScriptModule):
            layer = dict(model.named_modules()).get(classifier_layer)
            if layer is None:
                from medxai.explainers.base import find_layer

                find_layer(model, classifier_layer)  # raises with close matches
            if isinstance(layer, nn.Linear):
                self.classifier = layer
            else:
                logger.warning(
                    "teacher layer %r is a %s, not nn.Linear: using logits-only distillation",
                    classifier_layer, type(layer).__name__,
                )
        if self.classifier is None:
            logger.warning(
                "teacher features unavailable (%s): the agent is distilled on logits only and its layer 2 is trained",
                "TorchScript" if isinstance(model, torch.jit.ScriptModule) else "no classifier_layer",
            )

    @property
    def has_features(self) -> bool:
        return self.classifier is not None

    @property
    def feature_dim(self) -> int | None:
        return None if self.classifier is None else int(self.classifier.in_features)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits (B, K), features (B, F) or None)`` for inputs ``(B, C, S, S)``."""
        if self.classifier is None:
            return self.model(x), None
        captured: dict[str, torch.Tensor] = {}

        def _hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured["f"] = args[0].detach()

        handle = self.classifier.register_forward_pre_hook(_hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        feats = captured.get("f")
        if feats is not None and feats.ndim > 2:
            feats = feats.flatten(1)
        return logits, feats

    @torch.no_grad()
    def run_batched(self, x: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`__call__` over ``x`` in chunks; returns CPU tensors."""
        logits, feats = [], []
        for chunk in x.split(batch_size):
            lo, fe = self(chunk.to(_device_of(self.model)))
            logits.append(lo.cpu())
            if fe is not None:
                feats.append(fe.cpu())
        return torch.cat(logits), (torch.cat(feats) if feats else None)


def teacher_spec_from_dict(data: Mapping[str, Any], **defaults: Any) -> TeacherSpec:
    """Build a :class:`TeacherSpec` from a config section (unknown keys raise ``ValueError``)."""
    known = {f.name for f in dataclasses.fields(TeacherSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown teacher field(s) {unknown}; valid fields: {sorted(known)}.")
    merged = {**defaults, **dict(data)}
    return TeacherSpec(**merged)

