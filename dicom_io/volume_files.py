"""NIfTI (nibabel) and NRRD (pynrrd) volumes, with DICOM LPS geometry carried across correctly.

NIfTI stores RAS world coordinates, so LPS affines are flipped in x and y on the way out and back in.
NRRD is written in LPS ("left-posterior-superior"), the space 3D Slicer and DICOM use.

``Volume.warnings`` (an accepted gap, files left out with ``skip_unreadable``) and ``Volume.notes``
(padding replaced) travel with the file: NRRD key/value fields ``medxai_warnings:=<JSON list>`` and
``medxai_notes:=<JSON list>``, and a NIfTI comment extension ``{"medxai_warnings": [...],
"medxai_notes": [...]}``; the readers restore them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

from atomicfs import atomic_path

from .errors import UnreadableFileError, UnsupportedInputError
from .types import LPS_TO_RAS, Volume

__all__ = ["read_nifti", "write_nifti", "read_nrrd", "write_nrrd", "write_volume", "volume_from_affine"]

# Keys of the warnings and notes in a NRRD header and in a NIfTI comment extension.
_WARNINGS_KEY = "medxai_warnings"
_NOTES_KEY = "medxai_notes"
_NIFTI_COMMENT = 6


def _strings_from_json(text: object, key: str) -> tuple[str, ...]:
    """A list stored by the writers under ``key``; anything else (another tool's comment) gives ()."""
    try:
        data = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError:
        return ()
    if isinstance(data, dict):
        data = data.get(key)
    return tuple(str(w) for w in data) if isinstance(data, list) else ()


def _kept(volume: Volume) -> dict[str, list[str]]:
    """The warnings and notes a written file carries (only the non-empty ones)."""
    return {k: list(v) for k, v in ((_WARNINGS_KEY, volume.warnings), (_NOTES_KEY, volume.notes)) if v}


_NRRD_SPACES = {
    "left-posterior-superior": np.diag([1.0, 1.0, 1.0]),
    "LPS": np.diag([1.0, 1.0, 1.0]),
    "right-anterior-superior": np.diag([-1.0, -1.0, 1.0]),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.diag([1.0, -1.0, 1.0]),
    "LAS": np.diag([1.0, -1.0, 1.0]),
}


def volume_from_affine(array_xyz: np.ndarray, affine_lps: np.ndarray, **kw: object) -> Volume:
    """Build a Volume from an (x, y, z)-indexed array and a (4, 4) index->LPS affine."""
    m = np.asarray(affine_lps, dtype=float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing[None, :]
    arr = np.ascontiguousarray(np.asarray(array_xyz, dtype=np.float32).transpose(2, 1, 0))
    return Volume(arr, tuple(spacing), tuple(np.asarray(affine_lps)[:3, 3]), direction, **kw)  # type: ignore[arg-type]


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D NIfTI file (sform preferred, then qform) into a Volume in LPS."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # noqa: BLE001
        raise UnreadableFileError(f"Cannot read NIfTI file '{path}': {type(e).__name__}: {e}.", str(path)) from e
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 else data
    if data.ndim != 3:
        raise UnsupportedInputError(
            f"'{path}' holds a {data.ndim}D image of shape {data.shape}; medxai reads 3D volumes.", str(path)
        )
    affine_ras = img.affine
    comments = [ext.get_content() for ext in img.header.extensions if ext.get_code() == _NIFTI_COMMENT]
    kept = {k: tuple(w for c in comments for w in _strings_from_json(c, k)) for k in (_WARNINGS_KEY, _NOTES_KEY)}
    return volume_from_affine(data, LPS_TO_RAS @ affine_ras, warnings=kept[_WARNINGS_KEY], notes=kept[_NOTES_KEY])


def write_nifti(volume: Volume, path: str | os.PathLike[str], dtype: np.dtype | type = np.float32) -> Path:
    """Write a Volume as NIfTI (RAS affine in both sform and qform), atomically."""
    data = volume.array.transpose(2, 1, 0).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, volume.affine_ras)
    img.set_sform(volume.affine_ras, code=1)  # scanner anatomical
    img.set_qform(volume.affine_ras, code=1)
    img.header.set_xyzt_units("mm")
    if volume.warnings or volume.notes:
        content = json.dumps(_kept(volume)).encode()
        img.header.extensions.append(nib.nifti1.Nifti1Extension(_NIFTI_COMMENT, content))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def read_nrrd(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D scalar NRRD into a Volume in LPS (RAS and LAS spaces are converted)."""
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as e:  # noqa: BLE001
        raise UnreadableFileError(f"Cannot read NRRD file '{path}': {type(e).__name__}: {e}.", str(path)) from e
    if data.ndim != 3:
        raise UnsupportedInputError(
            f"'{path}' holds a {data.ndim}D array of shape {data.shape}; medxai reads 3D scalar volumes.", str(path)
        )
    space = header.get("space", "left-posterior-superior")
    if space not in _NRRD_SPACES:
        raise UnsupportedInputError(f"'{path}': NRRD space '{space}' is not supported.", str(path))
    dirs = header.get("space directions")
    origin = header.get("space origin")
    if dirs is None:
        dirs = np.eye(3)
    if origin is None:
        origin = np.zeros(3)
    affine = np.eye(4)
    # pynrrd gives one row per axis; the affine wants one column per axis.
    affine[:3, :3] = np.asarray(dirs, dtype=float).T
    affine[:3, 3] = np.asarray(origin, dtype=float)
    to_lps = np.eye(4)
    to_lps[:3, :3] = _NRRD_SPACES[space]
    return volume_from_affine(
        data, to_lps @ affine,
        warnings=_strings_from_json(header.get(_WARNINGS_KEY), _WARNINGS_KEY),
        notes=_strings_from_json(header.get(_NOTES_KEY), _NOTES_KEY),
    )


def write_nrrd(volume: Volume, path: str | os.PathLike[str], dtype: np.dtype | type = np.float32) -> Path:
    """Write a Volume as NRRD in LPS space (gzip encoded), atomically."""
    a = volume.affine_lps
    header = {
        "space": "left-posterior-superior",
        "space directions": a[:3, :3].T,
        "space origin": a[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    for key, values in _kept(volume).items():
        header[key] = json.dumps(values)  # one line: a NRRD field is one line
    data = volume.array.transpose(2, 1, 0).astype(dtype, copy=False)
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), data, header, index_order="F")
    return Path(path)


def write_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write by extension: ``.nii``/``.nii.gz`` (NIfTI, RAS) or ``.nrrd``/``.nhdr`` (NRRD, LPS)."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        return write_nifti(volume, path)
    if name.endswith(".nrrd"):
        return write_nrrd(volume, path)
    raise ValueError(f"Output '{path}' must end in .nii.gz, .nii or .nrrd.")
