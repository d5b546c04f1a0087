"""YAML configs that only wire classes, validated on load.

:func:`load_config` reads a YAML mapping and checks it against a schema of required dotted fields;
a missing or mistyped field raises :class:`ConfigError` (a ``ValueError``) naming the file and the
field.

Every relative path in a config file is relative to that file's folder (:meth:`Config.path`), so a
config works from any working directory; paths given as overrides (:meth:`Config.with_overrides`,
e.g. from the command line) are relative to the working directory. A model section names its weights
in ``path`` and may name ``pretrained: <path under medxai/pretrained>``, the shipped weights used when
``path`` does not exist yet (:meth:`Config.weights`, which records what it chose in
:attr:`Config.resolved_weights` for the output's provenance).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "dataclass_from_mapping",
    "Config",
    "ConfigError",
    "load_config",
    "pretrained_dir",
    "validate",
    "CT_STACK_SCHEMA",
    "CT_PROGNOSIS_SCHEMA",
    "DIFFAE_SCHEMA",
    "DR_FUNDUS_SCHEMA",
    "FUNDUS_SCHEMA",
    "TRAIN_HINTS",
]

logger = logging.getLogger(__name__)

_MISSING = object()

#: required fields of every CT explain job (``input: ct_stack``): the stack and the black box
CT_STACK_SCHEMA: dict[str, Any] = {
    "input": str,
    "seed": int,
    "target_class": int,
    "stack": dict,
    "stack.size": int,
    "teacher": dict,
    "teacher.kind": str,
    "teacher.path": str,
    "teacher.num_classes": int,
}

#: required field -> expected type(s) (``None``: any) for configs/ct_prognosis.yaml: the CT job plus
#: what ``medxai train`` writes (run_dir, autoencoder, agent) and the DiffExplainer steps it measures at
CT_PROGNOSIS_SCHEMA: dict[str, Any] = {
    **CT_STACK_SCHEMA,
    "run_dir": str,
    "autoencoder": dict,
    "autoencoder.config": str,
    "autoencoder.path": str,
    "agent": dict,
    "agent.path": str,
    "diffexplainer": dict,
    "diffexplainer.step_sizes": list,
    "diffexplainer.encode_steps": int,
    "diffexplainer.decode_steps": int,
}

#: required fields of every fundus explain job (``input: fundus``): the crop size and the black box
FUNDUS_SCHEMA: dict[str, Any] = {
    "input": str,
    "seed": int,
    "target_class": int,
    "image_size": int,
    "classifier": dict,
    "classifier.kind": str,
    "classifier.path": str,
    "classifier.num_classes": int,
}

#: required fields of configs/dr_fundus.yaml: the fundus job plus DVCE's diffusion model and settings
DR_FUNDUS_SCHEMA: dict[str, Any] = {
    **FUNDUS_SCHEMA,
    "diffusion": dict,
    "diffusion.path": str,
    "dvce": dict,
}

#: model section -> how to make its weights (the fix a missing ``path`` error names)
TRAIN_HINTS: dict[str, str] = {
    "teacher": "medxai train teacher -c {config}",
    "autoencoder": "medxai train autoencoder -c {config}",
    "agent": "medxai train agent -c {config}",
    "classifier": "medxai train classifier -c {config}",
    "robust_classifier": "medxai train classifier -c {config} --robust",
    "diffusion": "medxai train diffusion -c configs/ddpm_fundus_cpu64.yaml -o {path}",
    "nn_explainer_network": "medxai train explainer ... -o {path}",
}

#: old job types (``type:``) -> the ``input:`` and ``method:`` that replace them
_OLD_TYPES = {"diffexplainer_ct": ("ct_stack", "diffexplainer"), "dvce_fundus": ("fundus", "dvce")}

#: required fields of configs/diffae_*.yaml
DIFFAE_SCHEMA: dict[str, Any] = {
    "network": dict,
    "network.image_size": int,
    "network.base_channels": int,
    "network.channel_mults": list,
    "network.z_dim": int,
    "schedule": dict,
    "training": dict,
    "training.steps": int,
    "training.batch_size": int,
    "training.lr": (int, float),
}


class ConfigError(ValueError):
    """A config file is missing a field or has a wrong value; the message names the file and field."""


def pretrained_dir() -> Path:
    """Folder of the models shipped with medxai (``medxai/pretrained``; see scripts/make_pretrained.py)."""
    from importlib.resources import files

    return Path(str(files("medxai"))) / "pretrained"


def _exists(path: Path) -> bool:
    """A weights file, or a non-empty folder (MONAI bundle, NN-Explainer folder)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


class Config:
    """A loaded config: the mapping plus the file it came from.

    Parameters
    ----------
    data : mapping
    source : path or str
        The file (for error messages and relative paths).
    overridden : iterable of str, optional
        Dotted fields set by :meth:`with_overrides` (their relative paths are relative to the working
        directory, not to ``source``).

    Attributes
    ----------
    resolved_weights : dict
        ``section -> {"path": str, "pretrained": bool}`` for every model :meth:`weights` resolved
        (``pretrained``: the shipped weights stood in for a missing ``path``); jobs write it into
        their provenance. The jobs' model loaders add what they find on load
        (a classifier's ``kind``, ``input_shape``, ``num_classes``; the CT teacher's and agent's ``mode``).
    """

    def __init__(self, data: Mapping[str, Any], source: str | os.PathLike[str] = "<config>", overridden: Any = ()) -> None:
        self.data = dict(data)
        self.source = str(source)
        self.overridden: frozenset[str] = frozenset(overridden)
        self.resolved_weights: dict[str, dict[str, Any]] = {}

    def get(self, field: str, default: Any = _MISSING) -> Any:
        """Value of the dotted ``field`` (``"teacher.path"``); raises :class:`ConfigError` if missing and no default."""
        cur: Any = self.data
        for part in field.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                if default is not _MISSING:
                    return default
                raise ConfigError(f"{self.source}: missing field '{field}'; add it to the config (see configs/ for examples).")
            cur = cur[part]
        return cur

    def has(self, field: str) -> bool:
        """Whether the dotted ``field`` is present (and not null)."""
        return self.get(field, None) is not None

    def section(self, field: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self.get(field, {} if default is _MISSING else default)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.source}: field '{field}' must be a mapping, got {type(value).__name__}.")
        return dict(value)

    @property
    def folder(self) -> Path:
        """The folder relative paths in the file are relative to (the working directory for ``"<config>"``)."""
        return Path(self.source).parent

    def _from_override(self, field: str) -> bool:
        parts = field.split(".")
        return any(".".join(parts[:i]) in self.overridden for i in range(1, len(parts) + 1))

    def path(self, field: str) -> Path:
        """The path in ``field``: absolute as given; relative to the config file's folder, or to the
        working directory when ``field`` (or a section above it) was set by :meth:`with_overrides`."""
        p = Path(str(self.get(field))).expanduser()
        if p.is_absolute() or self._from_override(field):
            return p
        return Path(os.path.normpath(self.folder / p))  # "configs/../runs/x" -> "runs/x" in messages

    def relative(self, field: str) -> Path:
        """Same as :meth:`path` (kept for callers of the time when only some fields were config-relative)."""
        return self.path(field)

    def weights(self, section: str) -> Path:
        """The weights (file or folder) of the model section ``section``.

        ``<section>.path`` when it exists; otherwise the shipped ``<section>.pretrained`` (a path under
        :func:`pretrained_dir`, e.g. ``ct/teacher.safetensors``), with a warning naming both. What was
        chosen is recorded in :attr:`resolved_weights`.

        Raises
        ------
        ConfigError
            If the section is missing, or neither its ``path`` nor its ``pretrained`` exists; the
            message names the file, the section, the paths looked at and how to make the weights.
        """
        sec = self.section(section, None)
        if not sec:
            raise ConfigError(
                f"{self.source}: missing section '{section}'; add it with the model's 'path' (see configs/ for examples)."
            )
        path = self.path(f"{section}.path") if sec.get("path") is not None else None
        if path is not None and _exists(path):
            self.resolved_weights[section] = {"path": str(path), "pretrained": False}
            return path
        shipped = self._pretrained(section, sec.get("pretrained"))
        if shipped is not None and _exists(shipped):
            if path is not None and self.resolved_weights.get(section, {}).get("path") != str(shipped):  # once per model
                logger.warning(
                    "%s: %s.path %s does not exist; using the shipped weights %s (%s.pretrained)",
                    self.source,
                    section,
                    path,
                    shipped,
                    section,
                )
            self.resolved_weights[section] = {"path": str(shipped), "pretrained": True}
            return shipped
        hint = TRAIN_HINTS.get(section, "train it").format(config=self.source, path=path or f"<{section}.path>")
        looked = " nor ".join(
            f"{what} {str(p)!r}" for what, p in ((f"{section}.path", path), (f"{section}.pretrained", shipped)) if p
        )
        raise ConfigError(
            f"{self.source}: the weights of section '{section}' are missing: "
            f"{('neither ' + looked + ' exists') if looked else 'it has no path'}. Make them (`{hint}`), "
            f"or point {section}.path at existing weights (relative paths are relative to the config file)."
        )

    def _pretrained(self, section: str, value: Any) -> Path | None:
        if value is None:
            return None
        rel = Path(str(value))
        if not isinstance(value, str) or rel.is_absolute() or ".." in rel.parts:
            raise ConfigError(
                f"{self.source}: field '{section}.pretrained' must be a relative path inside medxai/pretrained "
                f"(e.g. 'ct/teacher.safetensors'), got {value!r}."
            )
        return pretrained_dir() / rel

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """Copy with dotted fields replaced, e.g. ``{"diffexplainer.decode_steps": 10}``; relative paths
        among them stay relative to the working directory (see :meth:`path`).

        Keys of the old layout (``explainer.*``, ``type``, ``<method>.target_class``) raise
        :class:`ConfigError` naming their new place, so an override is never silently ignored.
        """
        for key in overrides:
            top, _, rest = key.partition(".")
            if rest == "target_class" and top in ("explainer", "diffexplainer", "dvce"):
                new = "target_class"
            elif top == "explainer":
                new = f"diffexplainer.{rest}"
            elif key == "type":
                new = "input / method"
            else:
                continue
            raise ConfigError(f"{self.source}: override {key!r} names the old config layout; use {new!r} instead.")
        data = copy.deepcopy(self.data)
        for key, value in overrides.items():
            cur = data
            parts = key.split(".")
            for part in parts[:-1]:
                cur = cur.setdefault(part, {})
            cur[parts[-1]] = value
        return Config(data, self.source, self.overridden | set(overrides))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def __repr__(self) -> str:
        return f"Config(source={self.source!r}, keys={sorted(self.data)})"


def _check_renamed(config: Config) -> None:
    """Refuse the pre-registry layout (``type:``, ``explainer:``, ``dvce.target_class``), saying what replaces it."""
    old = config.data.get("type")
    if isinstance(old, str) and old in _OLD_TYPES and "input" not in config.data:
        kind, method = _OLD_TYPES[old]
        raise ConfigError(
            f"{config.source}: 'type: {old}' is no longer read; write 'input: {kind}' and 'method: {method}' "
            "at the top level instead (see configs/ct_prognosis.yaml and configs/dr_fundus.yaml)."
        )
    if isinstance(config.data.get("explainer"), Mapping) and "diffexplainer" not in config.data:
        raise ConfigError(
            f"{config.source}: section 'explainer' was renamed 'diffexplainer' (a method's settings live in the "
            "section named after the method), and its target_class moved to the top level ('target_class: 1')."
        )
    for section in ("diffexplainer", "dvce"):
        sec = config.data.get(section)
        if isinstance(sec, Mapping) and "target_class" in sec:
            raise ConfigError(
                f"{config.source}: field '{section}.target_class' moved to the top level; write "
                f"'target_class: {sec['target_class']}' there and remove it from '{section}'."
            )


def validate(config: Config, schema: Mapping[str, Any]) -> Config:
    """Check every required dotted field of ``schema`` exists with the expected type."""
    for field, typ in schema.items():
        value = config.get(field)
        if typ is None:
            continue
        types = typ if isinstance(typ, tuple) else (typ,)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{config.source}: field '{field}' must be {names}, got {type(value).__name__} {value!r}.")
    return config


def load_config(path: str | os.PathLike[str], schema: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config and validate it against ``schema`` (dotted field -> type).

    Configs in the old layout (``type: diffexplainer_ct``, an ``explainer:`` section, a
    ``target_class`` inside a method's section) raise :class:`ConfigError` saying what replaces it.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass e.g. configs/ct_prognosis.yaml.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err}).") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}.")
    cfg = Config(data, p)
    _check_renamed(cfg)
    if schema:
        validate(cfg, schema)
    return cfg


def dataclass_from_mapping(cls: Any, data: Mapping[str, Any], what: str, tuple_fields: tuple[str, ...] = ()) -> Any:
    """Build the settings dataclass ``cls`` from a mapping (e.g. a YAML section), strictly.

    Unknown keys raise ``ValueError`` naming the valid ones; ``tuple_fields`` given as YAML lists
    become tuples. ``what`` names the settings in messages.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{what} settings must be a mapping, got {type(data).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid fields: {sorted(known)}.")
    kwargs = dict(data)
    for key in tuple_fields:
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    return cls(**kwargs)
