"""What medxai runs from a config without being told to trust it.

A config that names a model class makes medxai import that class's module, and importing a module
runs its code; a MONAI bundle config can hold Python expressions (``"$..."``) that MONAI evaluates.
So by default medxai imports only model classes from an allow-list and evaluates no bundle
expressions; anything else needs the user's explicit ``trust_code`` (``--trust-code`` on the command
line, or ``trust_code: true`` at the top level of the config).

Allowed without trust: classes that subclass ``torch.nn.Module`` and are both imported from and
defined in ``torch`` / ``torch.nn.*``, ``monai.networks.*`` or ``medxai.*`` (exact package prefixes
with a dot boundary, so ``torch_evil`` or ``medxai_x`` do not match). The module name is checked
before anything is imported.

TorchScript files (``torch.jit.load``) need no trust: their code is TorchScript, which calls torch
operators only and runs no arbitrary Python on load. Weight files are read with safetensors or
``torch.load(weights_only=True)`` in every case (trust does not change that).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medxai.config import Config

__all__ = [
    "ALLOWED_MODULES",
    "TRUST_HINT",
    "is_allowed_module",
    "split_class_path",
    "trusts_code",
    "untrusted_refusal",
]

#: package prefixes whose ``torch.nn.Module`` classes load without trust (``"torch"`` only itself)
ALLOWED_MODULES: tuple[str, ...] = ("torch.nn", "monai.networks", "medxai")
_ALLOWED_EXACT: tuple[str, ...] = ("torch",)

#: the fix every refusal ends with
TRUST_HINT = (
    "If you trust the source of this config and the code it names, pass --trust-code "
    "(or set trust_code: true at the top level of the config)."
)

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_allowed_module(module_name: str) -> bool:
    """True if ``module_name`` is ``torch``, or ``torch.nn`` / ``monai.networks`` / ``medxai`` or below them.

    Matching is on whole package names: ``torch_evil``, ``medxai2`` and ``monai.networksx`` are not
    allowed; names that are not dotted Python identifiers (``medxai..x``, ``medxai/../x``) never are.
    """
    if not _DOTTED.fullmatch(module_name):
        return False
    if module_name in _ALLOWED_EXACT:
        return True
    return any(module_name == p or module_name.startswith(p + ".") for p in ALLOWED_MODULES)


def split_class_path(class_path: str, where: str = "class_path") -> tuple[str, str]:
    """``"pkg.module:Class"`` or ``"pkg.module.Class"`` -> ``("pkg.module", "Class")``.

    Raises
    ------
    ValueError
        Unless the module part is a dotted Python name and the class part an identifier.
    """
    if ":" in class_path:
        module_name, _, attr = class_path.partition(":")
    else:
        module_name, _, attr = class_path.rpartition(".")
    if not _DOTTED.fullmatch(module_name) or not _IDENT.fullmatch(attr):
        raise ValueError(
            f"{where} {class_path!r} is not of the form 'package.module:ClassName'; "
            "e.g. 'medxai.networks.classifiers:TinyCNN' or 'monai.networks.nets:DenseNet121'."
        )
    return module_name, attr


def untrusted_refusal(where: str, class_path: str, reason: str) -> ValueError:
    """The ``ValueError`` for a class path refused without trust (one paragraph, ends with the fix)."""
    return ValueError(
        f"{where} {class_path!r} was not loaded: {reason}. Without --trust-code medxai loads only "
        "torch.nn.Module classes from torch / torch.nn, monai.networks and medxai, because importing "
        f"any other module runs that module's code. {TRUST_HINT}"
    )


def trusts_code(config: Config | Mapping[str, Any] | None, trust_code: bool = False) -> bool:
    """``trust_code`` or the config's top-level ``trust_code: true``.

    Parameters
    ----------
    config : Config or mapping, optional
        The loaded job config (its top-level ``trust_code`` field, default false).
    trust_code : bool
        The caller's explicit choice (``--trust-code``); true wins.

    Raises
    ------
    ValueError
        If the config's ``trust_code`` is not a boolean (e.g. the string ``"yes"``).
    """
    if config is None:
        return bool(trust_code)
    data = getattr(config, "data", config)
    value = data.get("trust_code", False) if isinstance(data, Mapping) else False
    if not isinstance(value, bool):
        source = getattr(config, "source", "config")
        raise ValueError(f"{source}: field 'trust_code' must be true or false, got {value!r}; fix the config.")
    return bool(trust_code) or value
