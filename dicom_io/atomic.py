"""Write-then-rename helpers, so an interrupted run leaves no half-written file that looks finished."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_dir", "safe_filename"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.nii.gz`` etc.) so that writers that look at the
    extension behave the same, but starts with ``.`` and contains ``.partial`` so it is never taken for
    a finished output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".partial{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced only after the new folder is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(value: object, default: str = "unnamed", max_len: int = 64) -> str:
    """A file or folder name built from an untrusted value (e.g. a DICOM attribute).

    Keeps letters, digits, ``.``, ``_`` and ``-``; everything else (path separators, ``..``, control
    characters, spaces) becomes ``_``; leading dots are removed so the result is never ``.``/``..`` or
    hidden.
    """
    s = _UNSAFE.sub("_", str(value)).lstrip(".")
    s = s.replace("..", "_")[:max_len].strip("_")
    return s or default
