"""What a result was made with: package versions for the JSON files medxai writes."""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

__all__ = ["json_safe", "package_versions"]

_PACKAGES = ("medxai", "torch", "monai", "diffusers", "captum", "numpy", "pydicom", "highdicom", "SimpleITK")


def package_versions() -> dict[str, str]:
    """Python and the installed versions of the packages a result depends on ("not installed" if absent)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def json_safe(v: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN); numpy scalars -> Python numbers."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    return v
