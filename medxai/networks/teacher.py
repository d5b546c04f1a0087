"""Teachers: load the black-box classifier and read its penultimate features.

Three sources (:func:`load_teacher`):

* ``torchscript``: a TorchScript file (``torch.jit.load``; no pickle, and no arbitrary Python runs on
  load: TorchScript code calls torch operators only, so it needs no ``trust_code``);
* ``monai_bundle``: a MONAI bundle folder (``configs/inference.json|yaml`` with ``network_def``, and
  ``models/model.pt`` state dict loaded with ``weights_only=True``, or ``models/model.ts``). Without
  ``trust_code`` the bundle config may hold no ``$`` expressions, no ``%`` macros and no ``_target_``
  outside the allow-list of :mod:`medxai.trust`; its ``network_def`` is then built by medxai from the
  literal arguments (``@`` references resolved, nothing evaluated). With ``trust_code`` MONAI's
  ``ConfigParser`` builds it and evaluates the expressions. A ``configs/metadata.json`` whose
  ``network_data_format`` states other input channels / spatial shape / classes than the job's is refused;
* ``class_path``: ``package.module:Class`` + ``init_kwargs`` + a state dict (``.safetensors`` or
  ``torch.load(weights_only=True)``); without ``trust_code`` only allow-listed classes load.

Input contract (:func:`check_teacher_output`, run by :func:`load_teacher` on a dummy batch): the
teacher takes float32 batches ``(B, in_channels, image_size, image_size)`` with values in [0, 1] and
returns one tensor of logits ``(B, num_classes)`` (not probabilities). A model that rejects that
batch or returns anything else is refused at load with one paragraph naming the config file, the
section, the expected shape and what the model did.

How the DiffExplainer agent learns the teacher (:func:`teacher_mode`, never a silent fallback):

* **features** (the paper's): ``classifier_layer`` names the teacher's final ``nn.Linear``;
  :class:`TeacherFeatures` reads that layer's input (a forward pre-hook), the agent distils those
  penultimate features and copies the layer as its frozen layer 2. Needs a Python module
  (``class_path`` or a ``monai_bundle`` with ``network_def``);
* **logits**: no ``classifier_layer``; the agent is distilled on the logits and its layer 2 is
  trained. The only mode for TorchScript teachers: their layers take no hooks.

A ``classifier_layer`` that cannot be used (a TorchScript teacher, a missing or non-``nn.Linear``
layer) is a ``ValueError`` at load, not a quiet switch to logits mode.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medxai.networks.classifiers import load_class
from medxai.training.checkpoint import load_state_checked, load_weights

__all__ = [
    "FEATURES_MODE",
    "LOGITS_MODE",
    "TeacherSpec",
    "TeacherFeatures",
    "load_teacher",
    "check_teacher_output",
    "teacher_mode",
    "teacher_spec_from_dict",
]

logger = logging.getLogger(__name__)

_KINDS = ("torchscript", "monai_bundle", "class_path")

#: the agent distils the penultimate features and copies the teacher's classification layer
FEATURES_MODE = "features"
#: the agent is distilled on the logits only and trains its own layer 2
LOGITS_MODE = "logits"


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
        weights become the agent's frozen layer 2 (features mode). ``None``: logits-only
        distillation (logits mode, the only one for TorchScript); see :func:`teacher_mode`.
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (metadata entries of another shape are not checked)."""
    return value if isinstance(value, Mapping) else {}


def _check_bundle_metadata(folder: Path, spec: TeacherSpec, where: str, key: str) -> None:
    """Compare a bundle's ``configs/metadata.json`` ``network_data_format`` with the job's input and classes.

    MONAI bundles state their input there (``inputs.image``: ``num_channels``, ``spatial_shape``,
    ``value_range``) and their output (``outputs.pred.num_channels``). A spatial size that differs from
    the job's is refused even when the network would run (adaptive pooling runs at any size, on
    inputs it was never trained for); a value range other than [0, 1] is a warning. Absent or
    symbolic entries (``"16*n"``) are not checked.
    """
    meta_file = folder / "configs" / "metadata.json"
    if not meta_file.is_file():
        return
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: {str(meta_file)!r} is not readable JSON ({err}); fix or remove it.") from err
    fmt = _mapping(_mapping(meta).get("network_data_format"))
    image, pred = _mapping(_mapping(fmt.get("inputs")).get("image")), _mapping(_mapping(fmt.get("outputs")).get("pred"))
    channels, shape, classes = image.get("num_channels"), image.get("spatial_shape"), pred.get("num_channels")
    job = (spec.in_channels, spec.image_size, spec.image_size)
    said = None
    if _is_int(channels) and channels != spec.in_channels:
        said = f"inputs.image.num_channels is {channels}"
    elif isinstance(shape, list) and all(_is_int(v) for v in shape) and tuple(shape) != job[1:]:
        said = f"inputs.image.spatial_shape is {shape}"
    if said is not None:
        raise ValueError(
            f"{where}: the bundle's {str(meta_file)!r} says the network takes other inputs (network_data_format."
            f"{said}) than medxai gives it: (C, S, S) = {job}. Use a bundle made for this input, or set the config's "
            "input settings (stack.fractions and stack.size, or image_size) to what the bundle was trained on."
        )
    if _is_int(classes) and classes != spec.num_classes:
        raise ValueError(
            f"{where}: the bundle's {str(meta_file)!r} says the network outputs {classes} classes (network_data_format."
            f"outputs.pred.num_channels) but {key}.num_classes is {spec.num_classes}; set {key}.num_classes to {classes}."
        )
    value_range = image.get("value_range")
    if not isinstance(value_range, list) or not all(isinstance(v, (int, float)) for v in value_range):
        return
    if [float(v) for v in value_range] != [0.0, 1.0]:
        logger.warning(
            "%s: the bundle's metadata gives the input value_range %s, but medxai's inputs are scaled to [0, 1]; "
            "the network may need its own intensity scaling (README, 'Bring your own classifier').",
            where,
            value_range,
        )


def load_teacher(
    spec: TeacherSpec,
    *,
    trust_code: bool = False,
    source: str | None = None,
    key: str = "teacher",
    contract: str | None = None,
) -> nn.Module:
    """Build the teacher described by ``spec`` (in eval mode) and check it against the input contract.

    The model is run once on a dummy batch ``(2, in_channels, image_size, image_size)``
    (:func:`check_teacher_output`) and its ``classifier_layer``, if any, is checked to be usable
    (:func:`teacher_mode`).

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
    contract : str, optional
        The input in words (slices, window, scaling...), quoted when the model rejects it.

    Raises
    ------
    ValueError
        If the model cannot be loaded, rejects the input, returns anything but logits
        ``(B, num_classes)``, or names a ``classifier_layer`` that cannot be used.
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
        except Exception as err:  # whatever torch.jit.load raises means "not TorchScript"
            raise ValueError(
                f"{prefix}{key}.path {str(path)!r} is not a TorchScript archive ({_last_line(err)}); save the model "
                f"with torch.jit.script(model).save(path) (or torch.jit.trace), or set {key}.kind to class_path / "
                "monai_bundle for a state dict."
            ) from err
    elif spec.kind == "monai_bundle":
        model = _load_bundle(path, trust_code, f"{prefix}{key}.path {str(path)!r}")
        _check_bundle_metadata(path, spec, f"{prefix}{key}.path {str(path)!r}", key)
    else:
        cls = load_class(str(spec.class_path), trust_code=trust_code, where=f"{prefix}{key}.class_path")
        model = cls(**dict(spec.init_kwargs))
        if not isinstance(model, nn.Module):
            raise ValueError(f"{prefix}{key}.class_path {spec.class_path!r} built a {type(model).__name__}, not an nn.Module.")
        load_state_checked(model, load_weights(path), str(path), f"teacher {spec.class_path}")
    model.eval()
    check_teacher_output(
        model,
        spec.num_classes,
        spec.in_channels,
        spec.image_size,
        source=f"{prefix}{key} ({spec.kind} {str(path)!r})",
        key=key,
        contract=contract,
    )
    teacher_mode(model, spec.classifier_layer, where=f"{key}.classifier_layer", source=source)
    return model


def _last_line(err: BaseException, limit: int = 300) -> str:
    """The last non-empty line of an error (TorchScript prepends its serialized traceback), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_line(err: BaseException) -> str:
    """``"RuntimeError: <last line>"``, without repeating a type name TorchScript already wrote there."""
    line = _last_line(err)
    return line if re.match(r"[A-Za-z_.]*(Error|Exception): ", line) else f"{type(err).__name__}: {line}"


@torch.no_grad()
def check_teacher_output(
    model: nn.Module,
    num_classes: int,
    in_channels: int,
    image_size: int,
    source: str = "teacher",
    *,
    key: str = "teacher",
    contract: str | None = None,
) -> None:
    """Raise ``ValueError`` unless ``model`` maps a batch ``(2, in_channels, S, S)`` to logits ``(2, num_classes)``.

    The dummy batch is one all-zero input and one mid-grey (0.5) input, float32 on the model's
    device: a model that rejects the shape or dtype, ignores the batch dimension, returns a tuple /
    dict, non-finite values or probabilities (rows in [0, 1] summing to 1) is refused.

    Parameters
    ----------
    model : nn.Module
        In eval mode.
    num_classes, in_channels, image_size : int
        The expected logits K and input ``(C, S, S)``.
    source : str
        What the model is, for messages (e.g. ``"ct.yaml: teacher (torchscript 'm.ts')"``).
    key : str
        Its config section, for the fix (``teacher.num_classes``).
    contract : str, optional
        The input in words (slices, window, scaling), quoted when the model rejects it.
    """
    x = torch.zeros(2, in_channels, image_size, image_size, device=_device_of(model))
    x[1] = 0.5
    expected_in = f"float32 batches of shape (B, {in_channels}, {image_size}, {image_size}) with values in [0, 1]"
    if contract:
        expected_in += f" ({contract})"
    expected_out = f"one tensor of logits (B, {num_classes}) ({key}.num_classes={num_classes})"
    try:
        out = model(x)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported the same way
        # raised in the handler but not `from err`: the CLI's paragraph follows causes only, so TorchScript's
        # long serialized traceback stays out of it and is still shown (as context) under --debug
        raise ValueError(  # noqa: B904
            f"{source} does not take the input medxai gives it: {expected_in}. Run on a dummy batch of shape "
            f"{tuple(x.shape)} it raised {_error_line(err)}. Make the model take this input, or set the config's "
            "input settings to what the model was trained on (README, 'Bring your own classifier')."
        )
    did = None
    if not isinstance(out, torch.Tensor):
        did = f"returned a {type(out).__name__}, not a tensor; wrap the model so that forward returns only the logits"
    elif tuple(out.shape) != (2, num_classes):
        if out.ndim == 2 and out.shape[0] == 2:
            fix = f"set {key}.num_classes to {out.shape[1]} if that is right"
        else:
            fix = "make forward return one row of logits per input (a model traced with batch 1 may have fixed it)"
        did = f"returned shape {tuple(out.shape)} for a batch of 2 (expected (2, {num_classes})); {fix}"
    elif not out.is_floating_point():
        did = f"returned {out.dtype} values (class indices?), not float logits"
    elif not bool(torch.isfinite(out).all()):
        did = "returned non-finite values (NaN or inf) for an all-zero and a mid-grey input"
    elif num_classes > 1 and bool(((out >= 0) & (out <= 1)).all()) and bool((out.sum(1) - 1).abs().max() < 1e-5):
        did = (
            "returned rows in [0, 1] that sum to 1: probabilities, not logits; medxai applies the softmax itself, so "
            "remove the softmax from forward (or return torch.log of the probabilities)"
        )
    if did is not None:
        raise ValueError(f"{source} must return {expected_out} for {expected_in}, but it {did}.")


def teacher_mode(
    model: nn.Module, classifier_layer: str | None, *, where: str = "teacher.classifier_layer", source: str | None = None
) -> tuple[str, nn.Linear | None]:
    """How the DiffExplainer agent learns ``model``: :data:`FEATURES_MODE` or :data:`LOGITS_MODE`.

    Parameters
    ----------
    model : nn.Module
        The teacher.
    classifier_layer : str, optional
        The name of its final ``nn.Linear`` (features mode), or ``None`` (logits mode).
    where : str
        The config field, named in messages.
    source : str, optional
        The config file, named in messages.

    Returns
    -------
    (mode, layer)
        ``("features", the nn.Linear)`` or ``("logits", None)``.

    Raises
    ------
    ValueError
        If ``classifier_layer`` is given but features mode cannot work: ``model`` is TorchScript
        (no hooks), or the layer is missing or not an ``nn.Linear``. There is no silent fallback:
        remove ``classifier_layer`` to choose logits mode.
    """
    if not classifier_layer:
        return LOGITS_MODE, None
    prefix = f"{source}: " if source else ""
    logits_fix = f"remove {where} to distil on logits (logits mode: the agent trains its own layer 2)"
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            f"{prefix}{where} is {classifier_layer!r}, which asks for features mode (the agent distils the input of that "
            "layer and copies its weights), but the teacher is a TorchScript module and TorchScript layers take no "
            f"hooks, so its features cannot be read. Either {logits_fix}, or load the model as a Python module (kind "
            "class_path, or a monai_bundle with network_def and models/model.pt) to keep features mode."
        )
    from medxai.networks.layers import find_layer

    try:
        layer = find_layer(model, classifier_layer)
    except ValueError as err:
        raise ValueError(f"{prefix}{where}: {err} Fix the name, or {logits_fix}.") from err
    if not isinstance(layer, nn.Linear):
        raise ValueError(
            f"{prefix}{where} is {classifier_layer!r}, a {type(layer).__name__}; features mode needs the teacher's final "
            f"nn.Linear (its input is the feature space, its weights the agent's layer 2). Name that layer, or {logits_fix}."
        )
    return FEATURES_MODE, layer


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

    Raises
    ------
    ValueError
        If ``classifier_layer`` is given but cannot be read (:func:`teacher_mode`).

    Attributes
    ----------
    mode : {"features", "logits"}
        :data:`FEATURES_MODE` with a ``classifier_layer``, else :data:`LOGITS_MODE` (logged either way).
    has_features : bool
        False in logits mode (logits-only distillation).
    classifier : nn.Linear or None
        The classification layer (to copy into the agent).
    """

    def __init__(self, model: nn.Module, classifier_layer: str | None = None) -> None:
        self.model = model
        self.mode, self.classifier = teacher_mode(model, classifier_layer)  # raises rather than fall back
        if self.classifier is not None:
            logger.info(
                "teacher mode: features (the %d inputs of %r; its weights become the agent's frozen layer 2)",
                self.classifier.in_features,
                classifier_layer,
            )
        else:
            logger.warning(
                "teacher mode: logits (%s): the agent is distilled on logits only and its layer 2 is trained",
                "TorchScript teacher" if isinstance(model, torch.jit.ScriptModule) else "no teacher.classifier_layer",
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
