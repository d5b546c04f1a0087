"""Teachers: load the black-box classifier and read its penultimate features.

Three sources (:func:`load_teacher`):

* ``torchscript``: a TorchScript file (``torch.jit.load``; no pickle, and no arbitrary Python runs on
  load: TorchScript code calls torch operators only, so it needs no ``trust_code``);
* ``monai_bundle``: a MONAI bundle folder (``configs/inference.json|yaml`` with ``network_def``, and
  ``models/model.pt`` state dict loaded with ``weights_only=True``, or ``models/model.ts``). Without
  ``trust_code`` the bundle config may hold no ``$`` expressions, no ``%`` macros and no ``_target_``
  outside the allow-list of :mod:`medxai.trust`; its ``network_def`` is then built by medxai from the
  literal arguments (``@`` references resolved, nothing evaluated). With ``trust_code`` MONAI's
  ``ConfigParser`` builds it and evaluates the expressions;
* ``class_path``: ``package.module:Class`` + ``init_kwargs`` + a state dict (``.safetensors`` or
  ``torch.load(weights_only=True)``); without ``trust_code`` only allow-listed classes load.

:class:`TeacherFeatures` returns logits and the features that enter the classification layer (a
forward pre-hook on the named ``nn.Linear``), so the agent can distil features and copy the layer.
When the layer cannot be hooked (TorchScript, a missing/non-linear layer) it falls back to
logits-only distillation and logs a notice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "train.json", "train.yaml")
_SAFE_SPECIAL_KEYS = ("_target_", "_desc_")


def _bundle_refusal(cfg_file: Path, key: str, what: str, where: str) -> ValueError:
    from medxai.trust import TRUST_HINT

    return ValueError(
        f"{where} is a MONAI bundle whose config {str(cfg_file)!r} holds {what} under key {key or '<top level>'!r}; MONAI "
        f"runs such code when it builds the network, so medxai did not load the bundle. {TRUST_HINT}"
    )


def _scan_bundle(node: Any, cfg_file: Path, where: str, key: str = "") -> None:
    """Refuse (``ValueError``) any ``$`` expression, ``%`` macro or refused ``_target_`` anywhere in ``node``."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                if not isinstance(v, str):
                    raise _bundle_refusal(cfg_file, sub, f"a non-string _target_ ({v!r})", where)
                _bundle_class(v, f"{where} (bundle config {str(cfg_file)!r}): {sub}")
            else:
                _scan_bundle(v, cfg_file, where, sub)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _scan_bundle(v, cfg_file, where, f"{key}[{i}]")
    elif isinstance(node, str) and node[:1] in ("$", "%"):
        what = "a Python expression" if node[0] == "$" else "a macro that pulls in another file"
        shown = node if len(node) <= 80 else node[:77] + "..."
        raise _bundle_refusal(cfg_file, key, f"{what} ({shown!r})", where)


def _bundle_class(target: str, where: str) -> type:
    """The allow-listed class of a bundle ``_target_`` (MONAI's short names are looked up in ``monai.networks.nets``)."""
    from medxai.networks.classifiers import load_class
    from medxai.trust import untrusted_refusal

    if "." in target or ":" in target:
        return load_class(target, trust_code=False, where=where)
    import monai.networks.nets as nets

    if not isinstance(getattr(nets, target, None), type):  # MONAI would search all of monai for it
        raise untrusted_refusal(where, target, "it is not a class of monai.networks.nets")
    return load_class(f"monai.networks.nets:{target}", trust_code=False, where=where)


def _build_literal(node: Any, cfg_file: Path, where: str, key: str) -> Any:
    """Instantiate the ``_target_`` components of a resolved, expression-free ``network_def``."""
    from monai.bundle import ConfigItem

    if isinstance(node, ConfigItem):  # what ConfigParser returns for a component it did not instantiate
        node = node.get_config()
    if isinstance(node, list):
        return [_build_literal(v, cfg_file, where, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, Mapping):
        if isinstance(node, str) and node[:1] in ("$", "%", "@"):  # left over after resolution: never guess
            raise _bundle_refusal(cfg_file, key, f"an unresolved reference or expression ({node!r})", where)
        return node
    special = sorted(k for k in node if str(k).startswith("_") and str(k).endswith("_") and k not in _SAFE_SPECIAL_KEYS)
    if special:
        raise _bundle_refusal(cfg_file, key, f"MONAI control keys {special} that medxai does not evaluate itself", where)
    args = {str(k): _build_literal(v, cfg_file, where, f"{key}.{k}") for k, v in node.items() if k not in _SAFE_SPECIAL_KEYS}
    if "_target_" not in node:
        return args
    cls = _bundle_class(str(node["_target_"]), f"{where} (bundle config {str(cfg_file)!r}): {key}._target_")
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bundle config {str(cfg_file)!r}: {key} cannot build {cls.__name__}({args}) ({err}).") from err


def _load_bundle(folder: Path, trust_code: bool = False, where: str = "teacher.path") -> nn.Module:
    models = folder / "models"
    if (models / "model.ts").is_file() and not (models / "model.pt").is_file():
        return torch.jit.load(str(models / "model.ts"), map_location="cpu")  # TorchScript: no Python runs
    configs = folder / "configs"
    cfg_file = next((configs / n for n in _BUNDLE_CONFIGS if (configs / n).is_file()), None)
    if cfg_file is None:
        raise ValueError(
            f"MONAI bundle {str(folder)!r} has no configs/inference.json|yaml or train.json|yaml; pass the bundle's root folder."
        )
    from monai.bundle import ConfigParser

    # json.load / a yaml SafeLoader: reading the file runs nothing
    raw = ConfigParser.load_config_file(str(cfg_file))
    if not isinstance(raw, Mapping) or "network_def" not in raw:
        raise ValueError(f"{str(cfg_file)!r} defines no 'network_def'; the teacher network cannot be built.")
    if trust_code:
        parser = ConfigParser(raw)
        net = parser.get_parsed_content("network_def")
    else:
        _scan_bundle(raw, cfg_file, where)
        # no '$' and no '%' left: resolving the '@' references copies literals and evaluates nothing
        resolved = ConfigParser(raw).get_parsed_content("network_def", instantiate=False, eval_expr=False)
        net = _build_literal(resolved, cfg_file, where, "network_def")
    if not isinstance(net, nn.Module):
        raise ValueError(f"{str(cfg_file)!r}: network_def built a {type(net).__name__}, not a torch.nn.Module.")
    weights = models / "model.pt"
    if not weights.is_file():
        weights = models / "model.safetensors"
    load_state_checked(net, load_weights(weights), str(weights), "bundle network")
    return net


def load_teacher(spec: TeacherSpec, *, trust_code: bool = False, source: str | None = None, key: str = "teacher") -> nn.Module:
    """Build the teacher described by ``spec`` (in eval mode) and check its output shape.

    Parameters
    ----------
    spec : TeacherSpec
    trust_code : bool
        Allow any ``class_path`` and MONAI bundle expressions (the user trusts the config's source);
        default: only the allow-list of :mod:`medxai.trust`. Weights load safely either way.
    source : str, optional
        The config file, named in error messages.
    key : str
        The config section of the teacher (``"teacher"``, ``"classifier"``...), named in messages.
    """
    prefix = f"{source}: " if source else ""
    path = Path(spec.path)
    if not path.exists():
        raise ValueError(
            f"{prefix}{key}.path {str(path)!r} does not exist; train the teacher (medxai train teacher) or fix {key}.path."
        )
    if spec.kind == "torchscript":
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ValueError(f"teacher file {str(path)!r} is not a TorchScript archive ({err}).") from err
    elif spec.kind == "monai_bundle":
        model = _load_bundle(path, trust_code, f"{prefix}{key}.path {str(path)!r}")
    else:
        cls = load_class(str(spec.class_path), trust_code=trust_code, where=f"{prefix}{key}.class_path")
        model = cls(**dict(spec.init_kwargs))
        if not isinstance(model, nn.Module):
            raise ValueError(f"{prefix}{key}.class_path {spec.class_path!r} built a {type(model).__name__}, not an nn.Module.")
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
                from medxai.networks.layers import find_layer

                find_layer(model, classifier_layer)  # raises with close matches
            if isinstance(layer, nn.Linear):
                self.classifier = layer
            else:
                logger.warning(
                    "teacher layer %r is a %s, not nn.Linear: using logits-only distillation",
                    classifier_layer,
                    type(layer).__name__,
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
