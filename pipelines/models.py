"""The one place that loads the models of an explain job from its config.

An explain job (``medxai explain``, the bench, the demo) needs a black box and, depending on the
method, extra models. This module reads them from the config the way every job does:

* :func:`input_kind` -- the top-level ``input:`` (``ct_stack`` or ``fundus``);
* :func:`load_black_box` -- the ``teacher:`` section (``ct_stack``) or ``classifier:`` (``fundus``);
* :func:`load_method_models` -- every model a registered method needs (``spec.needs``) or can use
  (``spec.optional``), each from the config section :data:`medxai.registry.MODEL_SECTIONS` names;
* :func:`target_class` -- the top-level ``target_class:``;
* :func:`method_settings` -- the method's settings from the section named after it.

Weights come from :meth:`medxai.config.Config.weights`: a section's ``path`` (relative to the config
file) or, while it does not exist, the shipped ``pretrained:`` weights (logged and recorded in
``cfg.resolved_weights`` for the output's provenance). Every classifier is run once at load on a
dummy batch of the job's input (:func:`medxai.networks.teacher.check_teacher_output`; the contract in
words is :func:`input_contract`) and ``cfg.resolved_weights[section]`` gains its ``kind`` and
``input_shape``; the CT teacher's and the agent's ``mode`` (``features`` or ``logits``,
:func:`medxai.networks.teacher.teacher_mode`) are recorded and logged too. Model classes outside the allow-list of
:mod:`medxai.trust` load only with ``trust_code`` (``--trust-code``, or ``trust_code: true`` in the config).

Example
-------
>>> from medxai.config import load_config
>>> from medxai.registry import get_method
>>> cfg = load_config("configs/ct_prognosis.yaml")
>>> spec = get_method(cfg.get("method"), input_kind(cfg))
>>> explainer = spec.build(load_black_box(cfg), method_settings(cfg, spec), load_method_models(cfg, spec),
...                        seed=int(cfg.get("seed")))
>>> exp = explainer.explain(x, target_class(cfg))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from medxai.config import Config, ConfigError
from medxai.progress import ProgressFn
from medxai.registry import CT_STACK, FUNDUS, MODEL_SECTIONS, MethodSpec

__all__ = [
    "BLACK_BOX_SECTIONS",
    "JOB_INPUTS",
    "input_contract",
    "input_kind",
    "load_black_box",
    "load_method_models",
    "method_settings",
    "target_class",
]

logger = logging.getLogger(__name__)


#: input kinds an explain job reads from a config (``tensor`` is the Python API's, no job's)
JOB_INPUTS: tuple[str, ...] = (CT_STACK, FUNDUS)
#: input kind -> the config section of its black box
BLACK_BOX_SECTIONS: dict[str, str] = {CT_STACK: "teacher", FUNDUS: "classifier"}
#: the old ``type:`` values -> the ``input:`` / ``method:`` that replace them
_OLD_TYPES = {"diffexplainer_ct": (CT_STACK, "diffexplainer"), "dvce_fundus": (FUNDUS, "dvce")}


def input_kind(cfg: Config) -> str:
    """The config's top-level ``input`` (``"ct_stack"`` or ``"fundus"``).

    Raises
    ------
    ConfigError
        If it is missing (the message gives the fix for an old ``type:``) or not a job input kind.
    """
    kind = cfg.get("input", None)
    if kind is None:
        old = cfg.get("type", None)
        if old in _OLD_TYPES:
            new, method = _OLD_TYPES[old]
            raise ConfigError(
                f"{cfg.source}: 'type: {old}' is no longer read; write 'input: {new}' and 'method: {method}' at the top level."
            )
        raise ConfigError(
            f"{cfg.source}: missing field 'input'; add 'input: ct_stack' (CT series) or 'input: fundus' "
            "(fundus photographs) at the top level."
        )
    if kind not in JOB_INPUTS:
        raise ConfigError(f"{cfg.source}: field 'input' is {kind!r}; valid values: {', '.join(JOB_INPUTS)}.")
    return str(kind)


def target_class(cfg: Config) -> int:
    """The config's top-level ``target_class`` (the class the explanation is about)."""
    value = cfg.get("target_class", None)
    if value is None:
        moved = next((s for s in ("diffexplainer", "explainer", "dvce") if cfg.get(f"{s}.target_class", None) is not None), None)
        where = f" (it moved out of '{moved}')" if moved else ""
        raise ConfigError(f"{cfg.source}: missing field 'target_class'{where}; add e.g. 'target_class: 1' at the top level.")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{cfg.source}: field 'target_class' must be a class index >= 0, got {value!r}.")
    return int(value)


def method_settings(cfg: Config, spec: MethodSpec) -> Any:
    """The settings dataclass of ``spec`` from the config section named after the method (absent = defaults)."""
    try:
        return spec.settings_from(cfg.section(spec.name, {}))
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{cfg.source}: section '{spec.name}' is invalid: {err}") from err


def _image_geometry(cfg: Config, kind: str) -> tuple[int, int]:
    """``(in_channels, image_size)`` of the job's inputs."""
    if kind == CT_STACK:
        from medxai.training.ct import stack_config

        return len(stack_config(cfg).fractions), int(cfg.get("stack.size"))
    return 3, int(cfg.get("image_size"))


def input_contract(cfg: Config, kind: str) -> str:
    """What the classifier of a ``kind`` job receives, in words (quoted when a model rejects it).

    Parameters
    ----------
    cfg : Config
        The job config (its ``stack:`` section for CT, ``image_size`` for fundus).
    kind : {"ct_stack", "fundus"}
    """
    channels, size = _image_geometry(cfg, kind)
    if kind == CT_STACK:
        from medxai.training.ct import stack_config

        st = stack_config(cfg)
        lo, hi = st.window_level - st.window_width / 2, st.window_level + st.window_width / 2
        return (
            f"{channels} axial CT slices as channels, taken at fractions {list(st.fractions)} of the lungs' "
            f"craniocaudal extent (apex first), LPS view, {size}x{size} pixels, HU clipped to [{lo:g}, {hi:g}] "
            f"(window level {st.window_level:g}, width {st.window_width:g}) and scaled to [0, 1]; set by stack.fractions, "
            "stack.size, stack.window_level and stack.window_width"
        )
    return (
        f"an RGB fundus field-of-view crop, {size}x{size} pixels, scaled from 0-255 to [0, 1], zero outside the "
        "field of view; set by image_size"
    )


def _classifier(cfg: Config, section: str, kind: str, trust_code: bool) -> torch.nn.Module:
    """A classifier (black box or robust guide) from a TeacherSpec section, in eval mode, checked
    against the job's input (:func:`input_contract`); its kind, input shape and (CT teacher) mode are
    logged and recorded in ``cfg.resolved_weights[section]``."""
    from medxai.networks.teacher import load_teacher, teacher_mode, teacher_spec_from_dict
    from medxai.trust import trusts_code

    channels, size = _image_geometry(cfg, kind)
    data = cfg.section(section)
    data.pop("pretrained", None)
    trust = trusts_code(cfg, trust_code)  # before the weights: a bad trust_code field fails first
    try:
        spec = teacher_spec_from_dict({**data, "path": str(cfg.weights(section))}, in_channels=channels, image_size=size)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cfg.source}: section '{section}' is invalid: {err}") from err
    if spec.in_channels != channels:
        raise ConfigError(
            f"{cfg.source}: {section}.in_channels is {spec.in_channels} but the {kind.replace('_', ' ')} inputs have "
            f"{channels} channels; set it to {channels}."
        )
    if spec.image_size != size:  # the check below would otherwise run at a size the job never gives
        field = "stack.size" if kind == CT_STACK else "image_size"
        raise ConfigError(
            f"{cfg.source}: {section}.image_size is {spec.image_size} but the inputs are {size}x{size} ({field}); "
            f"remove {section}.image_size or set {field} to {spec.image_size}."
        )
    model = load_teacher(spec, trust_code=trust, source=cfg.source, key=section, contract=input_contract(cfg, kind)).eval()
    info = cfg.resolved_weights.setdefault(section, {"path": spec.path})
    info.update(kind=spec.kind, input_shape=[channels, size, size], num_classes=spec.num_classes)  # (C, S, S)
    if section == BLACK_BOX_SECTIONS[CT_STACK] and kind == CT_STACK:  # the model the DiffExplainer agent distils
        mode, _ = teacher_mode(model, spec.classifier_layer, where=f"{section}.classifier_layer", source=cfg.source)
        info["mode"] = mode
        if spec.classifier_layer:
            why = f"the agent distils the input of {spec.classifier_layer!r}"
        else:
            why = f"no {section}.classifier_layer: the agent is distilled on logits"
            if isinstance(model, torch.jit.ScriptModule):
                why += ", the only mode of a TorchScript teacher"
        logger.info(
            "%s: %s is %s %s, input (B, %d, %d, %d) -> logits (B, %d); teacher mode: %s (%s)",
            cfg.source,
            section,
            spec.kind,
            spec.path,
            channels,
            size,
            size,
            spec.num_classes,
            mode,
            why,
        )
    return model


def load_black_box(cfg: Config, *, trust_code: bool = False) -> torch.nn.Module:
    """The model being explained, in eval mode on the CPU.

    ``teacher:`` for ``input: ct_stack``, ``classifier:`` for ``input: fundus`` (a
    :class:`~medxai.networks.teacher.TeacherSpec`: torchscript, monai_bundle or class_path); its
    output is checked to be logits ``(B, num_classes)`` for inputs ``(B, C, S, S)``.

    Parameters
    ----------
    cfg : Config
        The job config.
    trust_code : bool
        Allow classes / MONAI bundle code outside :mod:`medxai.trust`'s allow-list (the config's
        ``trust_code: true`` counts too).
    """
    kind = input_kind(cfg)
    return _classifier(cfg, BLACK_BOX_SECTIONS[kind], kind, trust_code)


def _missing_section(cfg: Config, spec: MethodSpec, role: str, section: str) -> ConfigError:
    example = {
        "autoencoder": "autoencoder: {config: diffae_cpu64.yaml, path: ..., pretrained: ct/autoencoder.safetensors}",
        "agent": "agent: {path: ..., pretrained: ct/agent.safetensors}",
        "diffusion": "diffusion: {path: ..., pretrained: fundus/ddpm.safetensors}",
        "robust_classifier": "robust_classifier: {kind: class_path, class_path: ..., path: ..., num_classes: 2}",
        "nn_explainer_network": "nn_explainer_network: {path: FOLDER, pretrained: nn_explainer_ct}",
        "second_model": "second_model: {kind: class_path, class_path: ..., path: ..., num_classes: 2} (or --second-config FILE)",
    }.get(section, f"{section}: {{path: ...}}")
    return ConfigError(
        f"{cfg.source}: method {spec.name!r} needs the {role} model, but the config has no section '{section}'; "
        f"add it, e.g. '{example}' (see configs/ct_prognosis.yaml and configs/dr_fundus.yaml)."
    )


def _load_role(cfg: Config, role: str, kind: str, trust_code: bool) -> Any:
    if role == "autoencoder":
        from medxai.training.ct import load_autoencoder_from_config

        return load_autoencoder_from_config(cfg)
    if role == "agent":
        from medxai.networks.agent import load_agent
        from medxai.networks.teacher import FEATURES_MODE, LOGITS_MODE

        agent = load_agent(cfg.weights(MODEL_SECTIONS[role])).eval()
        # how it was distilled: features mode copies the teacher's layer and freezes it
        cfg.resolved_weights[MODEL_SECTIONS[role]]["mode"] = FEATURES_MODE if agent.frozen_head else LOGITS_MODE
        return agent
    if role == "diffusion":
        from medxai.diffusion.ddpm import load_ddpm

        ddpm = load_ddpm(cfg.weights(MODEL_SECTIONS[role]))
        channels, size = _image_geometry(cfg, kind)
        if ddpm.config.image_size != size or ddpm.config.in_channels != channels:
            field = "stack.size" if kind == CT_STACK else "image_size"
            raise ConfigError(
                f"{cfg.source}: the diffusion model takes ({ddpm.config.in_channels}, {ddpm.config.image_size}, "
                f"{ddpm.config.image_size}) images but the inputs are ({channels}, {size}, {size}); set {field} to "
                f"{ddpm.config.image_size} or use a diffusion model trained at that size."
            )
        return ddpm
    if role in ("robust_model", "second_model"):
        return _classifier(cfg, MODEL_SECTIONS[role], kind, trust_code)
    if role == "nn_explainer":
        from medxai.explainers.nn_explainer import load_nn_explainer

        net, config, _ = load_nn_explainer(cfg.weights(MODEL_SECTIONS[role]))
        return net.eval(), config
    raise ValueError(f"no loader for model role {role!r}; known roles: {sorted(MODEL_SECTIONS)}.")


def load_method_models(
    cfg: Config,
    spec: MethodSpec,
    *,
    trust_code: bool = False,
    progress: ProgressFn | None = None,
    provided: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The extra models of method ``spec``: ``role -> model`` (CPU, eval mode).

    Every role in ``spec.needs`` must have its config section (:data:`medxai.registry.MODEL_SECTIONS`);
    roles in ``spec.optional`` are loaded when their section exists. Roles and what they load:

    * ``autoencoder``: :class:`~medxai.diffusion.DiffusionAutoencoder` (``autoencoder.config`` = the
      DiffAE yaml, weights = ``autoencoder.path``);
    * ``agent``: :class:`~medxai.networks.agent.Agent` (``agent.path``);
    * ``diffusion``: :class:`~medxai.diffusion.ddpm.ImageDDPM` (``diffusion.path``; its image size must
      be the job's);
    * ``robust_model``: a classifier from the ``robust_classifier`` section (a TeacherSpec);
    * ``second_model``: the classifier compared with the black box (``second_model`` section, a TeacherSpec);
    * ``nn_explainer``: ``(network, NNExplainerConfig)`` from the ``nn_explainer_network.path`` folder.

    Parameters
    ----------
    cfg : Config
    spec : MethodSpec
        The registered method (:func:`medxai.registry.get_method`).
    trust_code : bool
        See :func:`load_black_box`.
    progress : callable, optional
        ``progress(f"load {role}", done, total)`` after each model.
    provided : mapping, optional
        ``role -> model`` made elsewhere (a second config's black box, the bench's own networks): used
        as given, their sections not needed.

    Raises
    ------
    ConfigError
        If a needed section is missing (naming the config file, the method and the section) or its
        weights are missing (see :meth:`medxai.config.Config.weights`).
    """
    kind = input_kind(cfg)
    given = {k: v for k, v in (provided or {}).items() if k in (*spec.needs, *spec.optional) and v is not None}
    roles = [r for r in spec.needs if r not in given]
    for role in roles:
        if not cfg.has(MODEL_SECTIONS[role]):
            raise _missing_section(cfg, spec, role, MODEL_SECTIONS[role])
    roles += [r for r in spec.optional if r not in roles and r not in given and cfg.has(MODEL_SECTIONS[r])]
    models: dict[str, Any] = dict(given)
    for i, role in enumerate(roles):
        models[role] = _load_role(cfg, role, kind, trust_code)
        if progress is not None:
            progress(f"load {role}", i + 1, len(roles))
    _warn_mixed(cfg, roles)
    return models


def _warn_mixed(cfg: Config, roles: list[str]) -> None:
    """Shipped models were made for the shipped black box: say so when they stand beside the user's own."""
    box = BLACK_BOX_SECTIONS.get(cfg.get("input", ""), "")
    resolved: Mapping[str, Mapping[str, Any]] = cfg.resolved_weights
    if box not in resolved or resolved[box]["pretrained"]:
        return
    shipped = [MODEL_SECTIONS[r] for r in roles if resolved.get(MODEL_SECTIONS[r], {}).get("pretrained")]
    if shipped:
        logger.warning(
            "%s: the black box (%s) is your own but %s are the shipped ones, made for the shipped black box; "
            "train them for your model (medxai train ...) or the explanation may not describe it.",
            cfg.source,
            box,
            ", ".join(shipped),
        )
