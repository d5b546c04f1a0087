"""Write-then-rename for medxai's outputs (weights, explanations, label tables).

dicom_io has the same helper for its own files; the two packages never import each other, so
medxai keeps this small copy rather than reach across the boundary.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, hidden, ``.partial``); it is renamed onto
    ``path`` only if the block succeeds, and removed otherwise."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".partial{''.join(final.suffixes)}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
