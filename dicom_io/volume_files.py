"""NIfTI (nibabel) and NRRD (pynrrd reads; written here) volumes, with DICOM LPS geometry carried across correctly.

NIfTI stores RAS world coordinates, so LPS affines are flipped in x and y on the way out and back in.
NRRD is written in LPS ("left-posterior-superior"), the space 3D Slicer and DICOM use.

``Volume.warnings`` (an accepted gap, files left out with ``skip_unreadable``) and ``Volume.notes``
(padding replaced) travel with the file: NRRD key/value fields ``medxai_warnings:=<JSON list>`` and
``medxai_notes:=<JSON list>``, and a NIfTI comment extension ``{"medxai_warnings": [...],
"medxai_notes": [...]}``; the readers restore them.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

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
        # nib.load picks the class by content; a .nii(.gz) name on an Analyze or MGH file lands here too
        if not isinstance(img, nib.Nifti1Pair):  # the base of Nifti1Image, Nifti2Image, Nifti2Pair
            raise TypeError(f"nibabel reads it as {type(img).__name__}, not as NIfTI-1/2")
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:
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
    """Write a Volume as NIfTI (RAS affine in both sform and qform), atomically.

    ``.nii.gz`` is gzip-compressed by `_gzip_stream` (threaded zlib-ng), ``.nii`` is raw. A gantry-tilted
    volume (sheared slice axis) keeps its exact affine in the sform, but the qform can only hold a
    rotation and ITK-based readers (3D Slicer, SimpleITK) refuse a sheared sform and place the volume
    by the qform: a warning says to write ``.nrrd`` for those viewers.
    """
    d = np.asarray(volume.direction, dtype=float)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        warnings.warn(
            f"'{path}': the volume's slice axis is sheared (gantry tilt); NIfTI's sform keeps it exactly but "
            "3D Slicer / SimpleITK read only the qform, a rotation, and will misplace slices. Write .nrrd for them.",
            stacklevel=2,
        )
    # the (x, y, z) view only describes the image to nibabel; the voxels are written from volume.array
    img = nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine_ras)
    img.set_sform(volume.affine_ras, code=1)  # scanner anatomical
    img.set_qform(volume.affine_ras, code=1)
    img.header.set_xyzt_units("mm")
    if volume.warnings or volume.notes:
        content = json.dumps(_kept(volume)).encode()
        img.header.extensions.append(nib.nifti1.Nifti1Extension(_NIFTI_COMMENT, content))
    # nibabel's own writer seeks, which a gzip stream cannot: nibabel writes the header (vox_offset,
    # extensions), we stream the voxels after it. Same bytes as nib.save (scaling 1, 0 as it sets).
    img.update_header()
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    head = io.BytesIO()
    hdr.write_to(head)
    voxels = np.ascontiguousarray(volume.array, dtype=np.dtype(dtype).newbyteorder("<"))  # (z, y, x) C = (x, y, z) F
    gz = str(path).lower().endswith(".gz")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh, _gzip_stream(fh, gz) as out:
        out.write(head.getvalue().ljust(int(hdr.get_data_offset()), b"\0"))
        out.write(voxels.data.cast("B"))
    return Path(path)


def read_nrrd(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D scalar NRRD into a Volume in LPS (RAS and LAS spaces are converted)."""
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as e:
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
        data,
        to_lps @ affine,
        warnings=_strings_from_json(header.get(_WARNINGS_KEY), _WARNINGS_KEY),
        notes=_strings_from_json(header.get(_NOTES_KEY), _NOTES_KEY),
    )


def _nrrd_vector(v: np.ndarray) -> str:
    return "(" + ",".join(repr(float(x)) for x in v) + ")"


def write_nrrd(
    volume: Volume, path: str | os.PathLike[str], dtype: np.dtype | type = np.float32, *, compress: bool = True
) -> Path:
    """Write a Volume as NRRD in LPS space, atomically.

    Parameters
    ----------
    volume : Volume
        (z, y, x) voxels; its warnings and notes go into ``medxai_warnings:=`` / ``medxai_notes:=`` fields.
    path : path
        The ``.nrrd`` file.
    dtype : numpy dtype
        Voxel type written.
    compress : bool
        gzip encoding (default) or raw.

    Notes
    -----
    The header is written here and the data through `_gzip_stream`, not through pynrrd's writer: that
    compresses with single-threaded zlib at level 9 and has no hook for another compressor (a
    200x512x512 float32 CT took 150 s there). The file is a plain NRRD0004 with one gzip member, read
    by pynrrd, ITK / SimpleITK and so 3D Slicer (tested).
    """
    data = np.ascontiguousarray(volume.array, dtype=np.dtype(dtype).newbyteorder("<"))
    a = volume.affine_lps
    fields = [
        ("type", _NRRD_TYPES[data.dtype.str[1:]]),
        ("dimension", "3"),
        ("space", "left-posterior-superior"),
        ("sizes", " ".join(str(n) for n in data.shape[::-1])),  # fastest axis first: x y z
        ("space directions", " ".join(_nrrd_vector(a[:3, c]) for c in range(3))),
        ("kinds", "domain domain domain"),
        ("endian", "little"),
        ("encoding", "gzip" if compress else "raw"),
        ("space origin", _nrrd_vector(a[:3, 3])),
    ]
    lines = ["NRRD0004", "# Complete NRRD file format specification at:", "# http://teem.sourceforge.net/nrrd/format.html"]
    lines += [f"{k}: {v}" for k, v in fields]
    # key/value pairs; json.dumps keeps each on one line (a NRRD field is one line) and ASCII
    lines += [f"{k}:={json.dumps(v)}" for k, v in _kept(volume).items()]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(("\n".join(lines) + "\n\n").encode("ascii"))
        with _gzip_stream(fh, compress) as out:
            out.write(data.data.cast("B"))
    return Path(path)


#: NRRD type names of the numpy dtypes medxai writes.
_NRRD_TYPES = {
    "f4": "float",
    "f8": "double",
    "u1": "uint8",
    "i1": "int8",
    "u2": "uint16",
    "i2": "int16",
    "u4": "uint32",
    "i4": "int32",
}

#: gzip level of written volumes: zlib-ng level 2 gives files within a few percent of ITK's default
#: level at about a third of its time (benchmarks/ingest.py); level 1 is a little faster but 1.5x larger
#: on noisy CT.
GZIP_LEVEL = 2


@contextmanager
def _gzip_stream(fh: BinaryIO, compress: bool) -> Iterator[BinaryIO]:
    """``fh`` itself, or a gzip stream into it compressed on all cores.

    zlib-ng's threaded writer (the ``zlib-ng`` package) produces one ordinary gzip member, so every
    reader opens it; Python's own zlib would take about 4x longer on one core.
    """
    if not compress:
        yield fh
        return
    from zlib_ng import gzip_ng_threaded

    threads = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    with gzip_ng_threaded.open(fh, "wb", compresslevel=GZIP_LEVEL, threads=threads) as out:
        yield out


def write_volume(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write by extension: ``.nii``/``.nii.gz`` (NIfTI, RAS) or ``.nrrd`` (NRRD, LPS).

    ``compress=False`` writes NRRD with raw encoding; for NIfTI the suffix decides (``.nii`` is raw),
    so ``compress=False`` with ``.nii.gz`` is refused rather than silently ignored.
    """
    name = str(path).lower()
    if name.endswith(".nii.gz"):
        if not compress:
            raise ValueError(f"Output '{path}' ends in .nii.gz (gzip); for uncompressed NIfTI name it .nii.")
        return write_nifti(volume, path)
    if name.endswith(".nii"):
        return write_nifti(volume, path)
    if name.endswith(".nrrd"):
        return write_nrrd(volume, path, compress=compress)
    raise ValueError(f"Output '{path}' must end in .nii.gz, .nii or .nrrd.")
