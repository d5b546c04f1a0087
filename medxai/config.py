"""YAML configs that only wire classes, validated on load.

:func:`load_config` reads a YAML mapping and checks it against a schema of required dotted fields;
a missing or mistyped field raises :class:`ConfigError` (a ``ValueError``) naming the file and the
field. Relative file paths inside a config are resolved by :meth:`Config.path` against the working
directory, except fields documented as relative to the config file (``autoencoder.config``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "dataclass_from_mapping",
    "Config",
    "ConfigError",
    "load_config",
    "CT_PROGNOSIS_SCHEMA",
    "DIFFAE_SCHEMA",
]

logger = logging.getLogger(__name__)

_MISSING = object()

#: required field -> expected type(s) (``None``: any) for configs/ct_prognosis.yaml
CT_PROGNOSIS_SCHEMA: dict[str, Any] = {
    "seed": int,
    "run_dir": str,
    "stack": dict,
    "stack.size": int,
    "teacher": dict,
    "teacher.kind": str,
    "teacher.path": str,
    "teacher.num_classes": int,
    "autoencoder": dict,
    "autoencoder.config": str,
    "autoencoder.path": str,
    "agent": dict,
    "agent.path": str,
    "explainer": dict,
    "explainer.target_class": int,
    "explainer.step_sizes": list,
    "explainer.encode_steps": int,
    "explainer.decode_steps": int,
}

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


class Config:
    """A loaded config: the mapping plus the file it came from.

    Parameters
    ----------
    data : mapping
    source : path or str
        The file (for error messages and relative paths).
    """

    def __init__(self, data: Mapping[str, Any], source: str | os.PathLike[str] = "<config>") -> None:
        self.data = dict(data)
        self.source = str(source)

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

    def section(self, field: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self.get(field, {} if default is _MISSING else default)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.source}: field '{field}' must be a mapping, got {type(value).__name__}.")
        return dict(value)

    def relative(self, field: str) -> Path:
        """The path in ``field`` resolved against the config file's folder (if relative)."""
        p = Path(str(self.get(field)))
        return p if p.is_absolute() else Path(self.source).parent / p

    def path(self, field: str) -> Path:
        """The path in ``field`` (relative paths are relative to the working directory)."""
        return Path(str(self.get(field)))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """Copy with dotted fields replaced, e.g. ``{"explainer.decode_steps": 10}``."""
        data = copy.deepcopy(self.data)
        for key, value in overrides.items():
            cur = data
            parts = key.split(".")
            for part in parts[:-1]:
                cur = cur.setdefault(part, {})
            cur[parts[-1]] = value
        return Config(data, self.source)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def __repr__(self) -> str:
        return f"Config(source={self.source!r}, keys={sorted(self.data)})"


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
            raise ConfigError(
                f"{config.source}: field '{field}' must be {names}, got {type(value).__name__} {value!r}."
            )
    return config


def load_config(path: str | os.PathLike[str], schema: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config and validate it against ``schema`` (dotted field -> type)."""
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
    if schema:
        validate(cfg, schema)
    return cfg


def dataclass_from_mapping(
    cls: Any, data: Mapping[str, Any], what: str, tuple_fields: tuple[str, ...] = ()
) -> Any:
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
