"""File and folder names built from untrusted values (DICOM attributes, user labels)."""

from __future__ import annotations

import re

__all__ = ["safe_filename"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(value: object, default: str = "unnamed", max_len: int = 64) -> str:
    """A file or folder name built from an untrusted value (e.g. a DICOM attribute).

    Keeps letters, digits, ``.``, ``_`` and ``-``; everything else (path separators, ``..``, control
    characters, spaces) becomes ``_``; leading dots and dashes are removed so the result is never
    ``.``/``..``, hidden, or taken for a command-line option.

    Different values can give the same name (``12345/1`` and ``12345 1``); callers that need one name
    per value add a hash of the value (see ``pipelines.export``).
    """
    s = _UNSAFE.sub("_", str(value)).lstrip(".-")
    s = s.replace("..", "_")[:max_len].strip("_")
    s = s.lstrip(".-")
    return s or default
