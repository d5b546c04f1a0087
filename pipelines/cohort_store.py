"""The on-disk store of a cohort: chunked zarr arrays, one row per case, and per-case done markers.

Layout under the cohort folder::

    stacks.zarr/            zarr group (format 2, readable by zarr-python 2 and 3)
        image               float32 (N, C, S, S), one chunk per case; rows never written read as NaN
        lung_mask           uint8   (N, C, S, S), one chunk per case (1 = lung)
        slice_indices       int32   (N, C): the source CT slice of each channel; -1 where unwritten
    done/<index>.json       written (atomically) after the case's arrays: the case counts as built
                            only once its marker exists, so a killed run never leaves a half-written
                            case that a rerun would skip

Only the parent process writes; rows are written one case at a time, so no stack of the cohort is held
in memory beyond the ones being built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from atomicfs import atomic_path

from .provenance import json_safe

__all__ = [
    "STORE_NAME",
    "DONE_DIR",
    "CohortStore",
    "read_done",
    "mark_done",
    "clear_done",
    "file_sha256",
    "write_json",
    "prepare_cohort_folder",
]

STORE_NAME = "stacks.zarr"
DONE_DIR = "done"
_CASE_ARRAYS = ("image", "lung_mask")


def _zarr_major() -> int:
    import zarr

    return int(str(zarr.__version__).split(".")[0])


class CohortStore:
    """The arrays of one cohort (see the module docstring for the layout).

    Use :meth:`open` to read (``mode="r"``) or to create/extend (``mode="a"``).
    """

    def __init__(self, group: Any, path: Path) -> None:
        self.group = group
        self.path = path

    @classmethod
    def open(cls, cohort: str | os.PathLike[str], mode: str = "r", *, channels: int = 4, size: int = 64) -> CohortStore:
        """Open ``cohort/stacks.zarr``; with ``mode="a"`` create it (0 rows, ``channels`` x ``size`` x ``size``)
        when absent. An existing store must have that channel count and size (else ``ValueError``)."""
        import zarr

        path = Path(cohort) / STORE_NAME
        if mode == "r" and not path.is_dir():
            raise FileNotFoundError(f"'{path}' does not exist; build the cohort first with medxai cohort build.")
        # format 2 is what zarr-python 2 (the one Python 3.10 gets) reads and writes
        kw = {"zarr_format": 2} if _zarr_major() >= 3 else {}
        group = zarr.open_group(str(path), mode=mode, **kw)
        store = cls(group, path)
        if mode != "r":
            store._require(channels, size)
        return store

    def _require(self, c: int, s: int) -> None:
        specs = {
            "image": ((0, c, s, s), (1, c, s, s), "float32", float("nan")),
            "lung_mask": ((0, c, s, s), (1, c, s, s), "uint8", 0),
            "slice_indices": ((0, c), (4096, c), "int32", -1),
        }
        for name, (shape, chunks, dtype, fill) in specs.items():
            if name in self.group:
                have = tuple(self.group[name].shape[1:])
                if have != shape[1:]:
                    raise ValueError(
                        f"'{self.path}' holds {name} rows of shape {have}, but the config makes {shape[1:]}; "
                        "build into a new folder or pass --overwrite."
                    )
                continue
            create = getattr(self.group, "create_array", None) or self.group.create_dataset
            create(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)

    @property
    def n_rows(self) -> int:
        """Rows allocated (some may be unused: cases.csv names the rows in use)."""
        return int(self.group["image"].shape[0])

    def shapes(self) -> dict[str, dict[str, Any]]:
        """Shape, dtype and chunks of each array (for cohort.json)."""
        out = {}
        for name in (*_CASE_ARRAYS, "slice_indices"):
            a = self.group[name]
            out[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks)}
        return out

    def ensure_rows(self, n: int) -> None:
        """Grow every array to at least ``n`` rows (never shrinks: rows of earlier runs stay)."""
        for name in (*_CASE_ARRAYS, "slice_indices"):
            a = self.group[name]
            if a.shape[0] < n:
                a.resize((n, *a.shape[1:]))

    def write(self, index: int, image: np.ndarray, lung_mask: np.ndarray | None, slice_indices: np.ndarray) -> None:
        """Write one case's row: ``image`` (C, S, S) float32, ``lung_mask`` (C, S, S) or None (stored as
        zeros), ``slice_indices`` (C,). The arrays grow to hold the row."""
        self.ensure_rows(index + 1)  # grown as cases arrive, so rows of failed cases at the end are not allocated
        self.group["image"][index] = np.asarray(image, dtype=np.float32)
        mask = np.zeros(image.shape, np.uint8) if lung_mask is None else (np.asarray(lung_mask) > 0.5).astype(np.uint8)
        self.group["lung_mask"][index] = mask
        self.group["slice_indices"][index] = np.asarray(slice_indices, dtype=np.int32)

    def read(self, index: int) -> dict[str, np.ndarray]:
        """One case's row: ``image``, ``lung_mask``, ``slice_indices``."""
        return {name: np.asarray(self.group[name][index]) for name in (*_CASE_ARRAYS, "slice_indices")}

    def array(self, name: str) -> Any:
        """The zarr array ``name`` (``image``, ``lung_mask``, ``slice_indices``); index it to read rows."""
        return self.group[name]


def _marker(cohort: Path, index: int) -> Path:
    return cohort / DONE_DIR / f"{index:07d}.json"


def read_done(cohort: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The done markers: row index -> marker record (unreadable markers are ignored: the case is rebuilt)."""
    out: dict[int, dict[str, Any]] = {}
    folder = Path(cohort) / DONE_DIR
    if not folder.is_dir():
        return out
    for p in folder.glob("*.json"):
        if p.name.startswith("."):
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            out[int(rec["index"])] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def mark_done(cohort: str | os.PathLike[str], index: int, record: dict[str, Any]) -> None:
    """Write the marker of row ``index`` (atomically) once its arrays are written."""
    path = _marker(Path(cohort), index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**record, "index": index}, sort_keys=True), encoding="utf-8")


def clear_done(cohort: str | os.PathLike[str], index: int) -> None:
    """Remove the marker of row ``index`` before the row is rewritten."""
    _marker(Path(cohort), index).unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (hex), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON (NaN -> null) under a temporary name, renamed when complete."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def prepare_cohort_folder(out: Path, studies: Path, stack: dict[str, Any], overwrite: bool, *, check_only: bool = False) -> None:
    """Check the cohort folder before a build: new, empty, or a cohort built with the same ``stack`` settings
    (``ValueError`` otherwise); then create it (with ``overwrite``: its store, markers, cases.csv and
    cohort.json are removed first). ``check_only``: check, change nothing."""
    if out.resolve() == studies.resolve() or studies.resolve() in out.resolve().parents:
        raise ValueError(f"-o '{out}' is inside --studies '{studies}'; the next scan would read it. Write it elsewhere.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o '{out}' exists and is not a folder; pass a new or existing cohort folder.")
    meta = out / "cohort.json"
    if out.is_dir() and any(out.iterdir()) and not meta.is_file():
        raise ValueError(f"-o '{out}' is not empty and holds no cohort.json: it is not a cohort folder. Pass a new folder.")
    if meta.is_file() and not overwrite:
        try:
            old = json.loads(meta.read_text(encoding="utf-8")).get("stack")
        except (OSError, ValueError) as e:
            raise ValueError(f"'{meta}' cannot be read ({e}); pass --overwrite to build the cohort anew.") from e
        if old != json.loads(json.dumps(stack)):
            raise ValueError(
                f"'{out}' was built with other stack settings ({old}) than the config gives ({stack}); its stacks would "
                "mix both. Build into a new folder, or pass --overwrite to rebuild every case."
            )
    if check_only:
        return
    if meta.is_file() and overwrite:
        for name in (STORE_NAME, DONE_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("cases.csv", "cohort.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
