"""Reading CT (and other cross-sectional) DICOM series into a `Volume`.

What this adds over SimpleITK's ImageSeriesReader or MONAI's loaders, and why it is written here:
every slice is checked (a truncated file is an error naming it, never a silently shorter volume),
slices are ordered by their position along the slice normal, gaps are found and reported with their
position, per-slice rescale is applied, Enhanced multi-frame objects are read with their per-frame
geometry, and the source references needed by derived objects are kept.

Uncompressed pixel data is copied straight from the file buffer into a preallocated float32 volume
(no intermediate arrays); compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg:
RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .fastheader import FastHeader, scan_header
from .errors import (
    DicomIOError,
    GeometryError,
    MissingSliceError,
    SeriesSelectionError,
    UnreadableFileError,
    UnsupportedInputError,
)
from .types import FrameRef, SourceRef, Volume

__all__ = [
    "SeriesInfo",
    "find_series",
    "read_series",
    "read_dicom_volume",
    "PATIENT_STUDY_KEYWORDS",
    "patient_study_attributes",
]

logger = logging.getLogger(__name__)

#: Patient, study and equipment attributes a derived object in the same study must copy.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "Manufacturer",
    "InstitutionName",
    "SpecificCharacterSet",
)

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
# Relative tolerance on slice steps before a step counts as a gap or an irregularity.
_STEP_RTOL = 0.02
# Cosine tolerance for "same orientation" between slices.
_ORIENT_ATOL = 1e-3


class _Obj:
    """One DICOM object found on disk: either scanned by the fast header path (``fast`` + file bytes)
    or parsed by pydicom (``ds``)."""

    def __init__(self, path: str, ds: Dataset | None = None, fast: FastHeader | None = None,
                 data: bytes | None = None) -> None:
        self.path = path
        self._ds = ds
        self.fast = fast
        self.data = data

    def get(self, keyword: str, default: Any = None) -> Any:
        if self.fast is not None:
            v = self.fast.values.get(keyword)
            return default if v is None else v
        return self._ds.get(keyword, default)  # type: ignore[union-attr]

    @property
    def ds(self) -> Dataset:
        """The pydicom dataset (read lazily, header only, for objects scanned by the fast path)."""
        if self._ds is None:
            self._ds = _read_dataset(self.path, stop_before_pixels=True)
        return self._ds

    @property
    def series_uid(self) -> str:
        return str(self.get("SeriesInstanceUID", "") or f"(no SeriesInstanceUID: {self.path})")

    @property
    def n_frames(self) -> int:
        return int(self.get("NumberOfFrames", 1) or 1)


@dataclass
class _Frame:
    """One 2D frame found on disk (a single-frame file, or one frame of a multi-frame file)."""

    path: str
    obj: _Obj
    frame_index: int | None  # 0-based frame within a multi-frame object; None for single frame
    position: np.ndarray  # (3,) LPS of the first transmitted pixel
    row_dir: np.ndarray  # (3,) direction of increasing column index (along a row)
    col_dir: np.ndarray  # (3,) direction of increasing row index (down a column)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slope: float
    intercept: float

    @property
    def rows(self) -> int:
        return int(self.obj.get("Rows"))

    @property
    def cols(self) -> int:
        return int(self.obj.get("Columns"))


@dataclass
class SeriesInfo:
    """A series found in a folder, before its pixels are decoded."""

    series_instance_uid: str
    description: str
    modality: str
    files: list[str] = field(default_factory=list)
    n_frames: int = 0

    def describe(self) -> str:
        return (
            f"{self.series_instance_uid} ({self.modality or '?'}, "
            f"'{self.description or 'no description'}', {self.n_frames} slice(s) in {len(self.files)} file(s))"
        )


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


def _iter_files(source: Path) -> list[str]:
    if source.is_file():
        return [str(source)]
    out: list[str] = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            out.append(os.path.join(root, name))
    return out


def _looks_like_dicom(path: str) -> bool:
    """True for files with the 'DICM' preamble marker, or raw datasets starting with a group-0008 tag."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # Files without the preamble (older, or written without file meta): start with (0008,xxxx) LE.
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00")


def _read_dataset(path: str, stop_before_pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=False)
    except InvalidDicomError:
        # No preamble: retry as a raw dataset, which is still a real DICOM file if it parses.
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        except Exception as e:  # noqa: BLE001 - any parse failure means unreadable
            raise UnreadableFileError(
                f"Cannot read '{path}': it looks like DICOM but does not parse ({e}).", path
            ) from e
    except Exception as e:  # noqa: BLE001
        raise UnreadableFileError(
            f"Cannot read '{path}': the file is damaged or truncated ({type(e).__name__}: {e}). "
            "Re-export or re-transfer it, or remove it from the folder.",
            path,
        ) from e


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return str(getattr(uid, "name", uid) or "unknown SOP class")


def _is_image_class(ds: Dataset) -> bool:
    """True when the SOP class (or the header) says the object carries an image."""
    name = _sop_class_name(ds)
    return "Image Storage" in name or "Photograph" in name or "Rows" in ds


def _scan(source: Path) -> tuple[dict[str, list[_Obj]], list[str]]:
    """Read every DICOM file under ``source`` once (pixels included). Returns series -> objects, skipped."""
    by_series: dict[str, list[_Obj]] = defaultdict(list)
    skipped: list[str] = []
    for path in _iter_files(source):
        base = os.path.basename(path)
        if base == "DICOMDIR" or not _looks_like_dicom(path):
            skipped.append(path)
            continue
        obj = _open_object(path)
        if obj is None:
            skipped.append(path)
            continue
        by_series[obj.series_uid].append(obj)
    if skipped:
        logger.info("skipped %d non-image file(s) under %s", len(skipped), source)
    return by_series, skipped


def _open_object(path: str) -> _Obj | None:
    """Read one file: the fast header path where it applies, else pydicom. None for non-image objects."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableFileError(f"Cannot open '{path}': {e}.", path) from e
    fast = scan_header(data)
    if fast is not None:
        obj = _Obj(path, fast=fast, data=data)
        _check_pixel_length(obj)
        return obj
    ds = _read_dataset(path, stop_before_pixels=False)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        if _sop_class_name(ds) == "unknown SOP class":
            raise UnreadableFileError(
                f"'{path}' starts like a DICOM file but holds no SOP class or pixel data: it is damaged or "
                "truncated. Re-export or re-transfer it, or remove it from the folder.",
                path,
            )
        if _is_image_class(ds):
            # An image object without pixel data was cut short; skipping it would lose a slice silently.
            raise UnreadableFileError(
                f"'{path}' is truncated: it is an image object ({_sop_class_name(ds)}) but its pixel data is "
                "missing. Re-export or re-transfer the file, or remove it from the folder.",
                path,
            )
        # Structured reports, presentation states, DICOMDIRs: not images.
        return None
    obj = _Obj(path, ds=ds)
    _check_pixel_length(obj)
    return obj


def _series_info(uid: str, objs: list[_Obj]) -> SeriesInfo:
    o0 = objs[0]
    return SeriesInfo(
        series_instance_uid=uid,
        description=str(o0.get("SeriesDescription", "") or ""),
        modality=str(o0.get("Modality", "") or ""),
        files=[o.path for o in objs],
        n_frames=sum(o.n_frames for o in objs),
    )


def find_series(source: str | os.PathLike[str]) -> list[SeriesInfo]:
    """List the image series under a folder (searched recursively) or in one file.

    Parameters
    ----------
    source : path
        A folder of DICOM files (non-DICOM files are skipped) or a single DICOM file.

    Returns
    -------
    list of SeriesInfo
        One entry per SeriesInstanceUID, sorted by description then UID.
    """
    src = Path(source)
    if not src.exists():
        raise DicomIOError(f"'{src}' does not exist.", str(src))
    by_series, _ = _scan(src)
    infos = [_series_info(uid, items) for uid, items in by_series.items()]
    return sorted(infos, key=lambda s: (s.description, s.series_instance_uid))


# --------------------------------------------------------------------------------------------------
# Geometry of frames
# --------------------------------------------------------------------------------------------------


def _floats(value: Any, n: int, what: str, path: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as e:
        raise GeometryError(f"'{path}': {what} is not numeric ({value!r}).", path) from e
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"'{path}': {what} must hold {n} finite numbers; found {value!r}.", path)
    return arr


def _first(seq_owner: Dataset | None, seq: str) -> Dataset | None:
    if seq_owner is None:
        return None
    s = seq_owner.get(seq)
    return s[0] if s else None


def _functional(ds: Dataset, per_frame: Dataset | None, seq: str) -> Dataset | None:
    """A functional-group macro for one frame: per-frame first, then shared (Enhanced objects)."""
    item = _first(per_frame, seq)
    if item is None:
        item = _first(_first(ds, "SharedFunctionalGroupsSequence"), seq)
    return item


def _orientation(iop: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 1e-6 or nc < 1e-6 or abs(float(np.dot(row / nr, col / nc))) > 1e-3:
        raise GeometryError(
            f"'{path}': ImageOrientationPatient {list(iop)} does not hold two orthogonal unit vectors.", path
        )
    return row / nr, col / nc


def _frames_of(obj: _Obj) -> list[_Frame]:
    """Split one object into frames with their geometry and rescale."""
    path = obj.path
    if obj.fast is not None:
        v = obj.fast.values
        row, col = _orientation(_floats(v["ImageOrientationPatient"], 6, "ImageOrientationPatient", path), path)
        ps = _floats(v["PixelSpacing"], 2, "PixelSpacing", path)
        slope = v.get("RescaleSlope") or [1.0]
        inter = v.get("RescaleIntercept") or [0.0]
        return [
            _Frame(
                path, obj, None, _floats(v["ImagePositionPatient"], 3, "ImagePositionPatient", path), row, col,
                (float(ps[0]), float(ps[1])), float(slope[0]), float(inter[0]),  # type: ignore[index]
            )
        ]
    ds = obj.ds
    n_frames = obj.n_frames
    pfg = ds.get("PerFrameFunctionalGroupsSequence")
    frames: list[_Frame] = []
    if pfg is not None or "SharedFunctionalGroupsSequence" in ds:
        if pfg is not None and len(pfg) != n_frames:
            raise GeometryError(
                f"'{path}': NumberOfFrames is {n_frames} but the per-frame functional groups hold {len(pfg)} items.",
                path,
            )
        for i in range(n_frames):
            item = pfg[i] if pfg is not None else None
            pos = _functional(ds, item, "PlanePositionSequence")
            ori = _functional(ds, item, "PlaneOrientationSequence")
            meas = _functional(ds, item, "PixelMeasuresSequence")
            pvt = _functional(ds, item, "PixelValueTransformationSequence")
            if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
                raise GeometryError(
                    f"'{path}': frame {i + 1} lacks plane position, orientation or pixel spacing in its "
                    "functional groups, so its place in space is unknown.",
                    path,
                )
            row, col = _orientation(_floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", path), path)
            ps = _floats(meas.PixelSpacing, 2, "PixelSpacing", path)
            slope = float(pvt.get("RescaleSlope", 1.0)) if pvt is not None else float(ds.get("RescaleSlope", 1.0))
            inter = (
                float(pvt.get("RescaleIntercept", 0.0)) if pvt is not None else float(ds.get("RescaleIntercept", 0.0))
            )
            frames.append(
                _Frame(
                    path, obj, i, _floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", path), row, col,
                    (float(ps[0]), float(ps[1])), slope, inter,
                )
            )
        return frames
    # Classic single-frame image (or a legacy multi-frame without functional groups).
    if n_frames != 1:
        raise UnsupportedInputError(
            f"'{path}': a multi-frame object without per-frame functional groups ({n_frames} frames); "
            "its frame positions are not stated.",
            path,
        )
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
        raise GeometryError(
            f"'{path}': ImagePositionPatient, ImageOrientationPatient or PixelSpacing is missing, so the slice "
            "cannot be placed in a volume (is this a photograph or a scout image?).",
            path,
        )
    row, col = _orientation(_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path), path)
    ps = _floats(ds.PixelSpacing, 2, "PixelSpacing", path)
    return [
        _Frame(
            path, obj, None, _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path), row, col,
            (float(ps[0]), float(ps[1])), float(ds.get("RescaleSlope", 1.0) or 1.0),
            float(ds.get("RescaleIntercept", 0.0) or 0.0),
        )
    ]


# --------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------


def _expected_bytes(obj: _Obj) -> int:
    bits = int(obj.get("BitsAllocated"))
    return int(obj.get("Rows")) * int(obj.get("Columns")) * int(obj.get("SamplesPerPixel", 1)) * obj.n_frames * bits // 8


def _check_pixel_length(obj: _Obj) -> int:
    """For native (uncompressed) pixel data: raise if the file holds fewer bytes than its header
    promises. Returns the number of bytes needed (0 for compressed data, checked when decoded)."""
    if obj.fast is not None:
        have = obj.fast.pixel_length
    else:
        ds = obj.ds
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if ts not in _UNCOMPRESSED or "PixelData" not in ds:
            return 0
        have = len(ds.PixelData)
    need = _expected_bytes(obj)
    if have < need:
        raise UnreadableFileError(
            f"'{obj.path}' is truncated: its pixel data holds {have} bytes where {obj.get('Rows')}x"
            f"{obj.get('Columns')}x{obj.n_frames} frame(s) at {obj.get('BitsAllocated')} bits need {need}. "
            "Re-export or re-transfer the file.",
            obj.path,
        )
    return need


def _native_values(obj: _Obj, buf: bytes, offset: int) -> np.ndarray:
    """Stored values from native little-endian pixel bytes, shape (frames, rows, cols)."""
    bits_alloc = int(obj.get("BitsAllocated"))
    bits_stored = int(obj.get("BitsStored", bits_alloc) or bits_alloc)
    signed = int(obj.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_alloc // 8}").newbyteorder("<")
    need = _expected_bytes(obj)
    arr = np.frombuffer(buf, dtype=dtype, count=need // dtype.itemsize, offset=offset)
    arr = arr.reshape(obj.n_frames, int(obj.get("Rows")), int(obj.get("Columns")))
    if bits_stored < bits_alloc:
        if signed:
            # Sign-extend from BitsStored: shift the sign bit to the top, then back.
            shift = bits_alloc - bits_stored
            arr = (arr << shift) >> shift
        else:
            arr = arr & dtype.type((1 << bits_stored) - 1)
    return arr


def _raw_frames(obj: _Obj) -> np.ndarray:
    """Stored values of all frames, shape (frames, rows, cols), with every byte accounted for."""
    path = obj.path
    if int(obj.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedInputError(
            f"'{path}': {obj.get('SamplesPerPixel')} samples per pixel; a volume needs grayscale slices.", path
        )
    if obj.fast is not None:
        return _native_values(obj, obj.data, obj.fast.pixel_offset)  # type: ignore[arg-type]
    ds = obj.ds
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts in _UNCOMPRESSED and int(ds.BitsAllocated) in (8, 16, 32) and "PixelData" in ds:
        _check_pixel_length(obj)
        return _native_values(obj, ds.PixelData, 0)
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoder errors come in many types
        raise UnreadableFileError(
            f"Cannot decode the pixel data of '{path}' (transfer syntax "
            f"{getattr(ts, 'name', ts)}): {type(e).__name__}: {e}. The file may be truncated or use a "
            "compression no installed decoder handles.",
            path,
        ) from e
    return arr.reshape(obj.n_frames, int(ds.Rows), int(ds.Columns))


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def patient_study_attributes(ds: Dataset) -> dict[str, Any]:
    """The patient/study/equipment attributes of ``ds`` (keyword -> value) that derived objects copy."""
    out: dict[str, Any] = {}
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in ds:
            v = ds.data_element(kw).value
            out[kw] = v
    return out


def _check_consistent(frames: Sequence[_Frame]) -> None:
    """All frames must share size, orientation and pixel spacing (checked as arrays: series are long)."""
    f0 = frames[0]
    sizes = np.array([(f.rows, f.cols) for f in frames])
    orient = np.array([np.r_[f.row_dir, f.col_dir] for f in frames])
    spacing = np.array([f.pixel_spacing for f in frames])
    bad = np.flatnonzero(np.any(sizes != sizes[0], axis=1))
    if bad.size:
        f = frames[int(bad[0])]
        raise GeometryError(
            f"'{f.path}' has {f.rows}x{f.cols} pixels but '{f0.path}' has "
            f"{f0.rows}x{f0.cols}: the series mixes image sizes (a localizer?). "
            "Select the right series or remove the odd file.",
            f.path,
        )
    bad = np.flatnonzero(np.any(np.abs(orient - orient[0]) > _ORIENT_ATOL, axis=1))
    if bad.size:
        f = frames[int(bad[0])]
        raise GeometryError(
            f"'{f.path}' has orientation {np.round(orient[bad[0]], 4).tolist()} but "
            f"'{f0.path}' has {np.round(orient[0], 4).tolist()}: the slices do not "
            "form one volume (mixed localizers or reformats).",
            f.path,
        )
    bad = np.flatnonzero(np.any(np.abs(spacing - spacing[0]) > 1e-6 + 1e-4 * np.abs(spacing[0]), axis=1))
    if bad.size:
        f = frames[int(bad[0])]
        raise GeometryError(
            f"'{f.path}' has PixelSpacing {f.pixel_spacing} but '{f0.path}' has {f0.pixel_spacing}.", f.path
        )


def _regular_steps(
    frames: list[_Frame], dist: np.ndarray, allow_gaps: bool
) -> tuple[float, np.ndarray, list[str]]:
    """Check slice steps. Returns (step, target positions along the normal, warnings).

    With no gap the target positions are the slices' own; with accepted gaps they are a regular grid
    through the first and last slice at the typical step.
    """
    warns: list[str] = []
    if len(frames) == 1:
        ds = frames[0].obj.ds
        thick = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
        return abs(thick), dist.copy(), warns
    steps = np.diff(dist)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise GeometryError(
            f"'{frames[i].path}' and '{frames[i + 1].path}' lie at the same position ({dist[i]:.3f} mm along the "
            "slice normal): the series holds several acquisitions or echoes/phases. Split it (e.g. by "
            "AcquisitionNumber or TemporalPositionIdentifier) and read one.",
            frames[i].path,
        )
    step = float(np.median(steps))
    off = np.flatnonzero(np.abs(steps - step) > _STEP_RTOL * step + 1e-3)
    if off.size == 0:
        return step, dist.copy(), warns
    # Distinguish missing slices (a step that is a multiple of the typical one) from irregular spacing.
    ratios = steps[off] / step
    gaps = [
        (int(i), int(round(r)) - 1)
        for i, r in zip(off, ratios)
        if r > 1.5 and abs(r - round(r)) < 0.1
    ]
    if len(gaps) != off.size:
        i = int(off[0])
        raise GeometryError(
            f"Irregular slice spacing: the step between '{frames[i].path}' and '{frames[i + 1].path}' is "
            f"{steps[i]:.3f} mm where the series' typical step is {step:.3f} mm. A volume needs regular spacing; "
            "check the series (variable-thickness protocols must be resampled beforehand).",
            frames[i].path,
        )
    descr = "; ".join(
        f"{n} slice(s) missing between '{frames[i].path}' (at {dist[i]:.2f} mm) and '{frames[i + 1].path}' "
        f"(at {dist[i + 1]:.2f} mm) along the slice normal"
        for i, n in gaps
    )
    if not allow_gaps:
        raise MissingSliceError(
            f"The series has a gap: {descr}. The typical slice step is {step:.3f} mm. Find the missing "
            "file(s), or pass --allow-gaps to fill the gap by linear interpolation (a warning is kept with "
            "the output).",
            frames[gaps[0][0]].path,
        )
    n = int(round((dist[-1] - dist[0]) / step)) + 1
    target = dist[0] + step * np.arange(n)
    warns.append(f"GAP ACCEPTED: {descr}; filled by linear interpolation along the slice normal.")
    for w in warns:
        logger.warning(w)
    return step, target, warns


def read_series(
    source: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    allow_gaps: bool = False,
) -> Volume:
    """Read one DICOM image series (or one multi-frame object) into a `Volume`.

    Parameters
    ----------
    source : path
        A folder searched recursively (non-DICOM files skipped), or a single DICOM file
        (an Enhanced multi-frame object, or a single slice).
    series_uid : str, optional
        SeriesInstanceUID to read when the folder holds several series.
    allow_gaps : bool
        Accept missing slices: the gap is filled by linear interpolation and a loud warning is
        logged and stored in ``Volume.warnings``. Default: a gap is an error.

    Returns
    -------
    Volume
        ``array`` float32 (z, y, x) after per-slice rescale (HU for CT), slices ordered along the
        slice normal (cross product of the row and column directions), with the source references.

    Raises
    ------
    SeriesSelectionError
        No image series, or several and no ``series_uid`` (the message lists them).
    UnreadableFileError
        A damaged or truncated file (named).
    GeometryError, MissingSliceError
        Slices that do not form one regular volume.
    """
    src = Path(source)
    if not src.exists():
        raise DicomIOError(f"'{src}' does not exist.", str(src))
    by_series, skipped = _scan(src)
    if not by_series:
        what = "folder" if src.is_dir() else "file"
        extra = f" ({len(skipped)} non-DICOM or non-image file(s) skipped)" if skipped else ""
        raise SeriesSelectionError(f"No DICOM image series found in {what} '{src}'{extra}.", str(src))
    if series_uid is not None:
        if series_uid not in by_series:
            listing = "; ".join(_series_info(u, it).describe() for u, it in sorted(by_series.items()))
            raise SeriesSelectionError(
                f"Series '{series_uid}' is not in '{src}'. Series found: {listing}.", str(src)
            )
        items = by_series[series_uid]
    elif len(by_series) > 1:
        listing = "; ".join(_series_info(u, it).describe() for u, it in sorted(by_series.items()))
        raise SeriesSelectionError(
            f"'{src}' holds {len(by_series)} image series; choose one with --series UID. Series found: {listing}.",
            str(src),
        )
    else:
        items = next(iter(by_series.values()))
    return _assemble([f for obj in items for f in _frames_of(obj)], allow_gaps)


def _rescale_into(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """out = stored * slope + intercept in float32, in one pass when slope is 1."""
    if slope == 1.0:
        np.add(stored, np.float32(intercept), out=out, casting="unsafe")
    else:
        np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
        out += np.float32(intercept)


def _assemble(frames: list[_Frame], allow_gaps: bool) -> Volume:
    _check_consistent(frames)
    f0 = frames[0]
    normal = np.cross(f0.row_dir, f0.col_dir)
    dist = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    step, target, warns = _regular_steps(frames, dist, allow_gaps)

    # Slice axis: the actual step between first and last slice (equals the normal unless gantry tilt).
    if len(frames) > 1:
        k_vec = (frames[-1].position - frames[0].position) / (dist[-1] - dist[0])
        k_len = float(np.linalg.norm(k_vec))
        k_dir = k_vec / k_len
        spacing_z = step * k_len
        tilt = float(np.degrees(np.arccos(np.clip(np.dot(k_dir, normal), -1, 1))))
        if tilt > 0.01:
            msg = (
                f"Gantry tilt / sheared stack: slices advance {tilt:.2f} degrees off the slice normal; "
                "the volume keeps the exact (non-orthogonal) geometry."
            )
            logger.warning(msg)
            warns.append(msg)
    else:
        k_dir, spacing_z = normal, step
    direction = np.stack([f0.row_dir, f0.col_dir, k_dir], axis=1)

    rows, cols = f0.rows, f0.cols
    vol = np.empty((len(target), rows, cols), dtype=np.float32)
    raw_cache: dict[int, np.ndarray] = {}
    slice_of_target = np.searchsorted(dist, target - 1e-3 * step)
    exact = np.abs(dist[np.clip(slice_of_target, 0, len(dist) - 1)] - target) < 1e-3 * max(step, 1e-6)

    def frame_values(idx: int) -> np.ndarray:
        f = frames[idx]
        key = id(f.obj)
        if key not in raw_cache:
            raw_cache.clear()  # keep one object's frames at a time
            raw_cache[key] = _raw_frames(f.obj)
        return raw_cache[key][f.frame_index or 0]

    refs: list[FrameRef | None] = []
    for k, t in enumerate(target):
        if exact[k]:
            i = int(slice_of_target[k])
            f = frames[i]
            _rescale_into(frame_values(i), f.slope, f.intercept, vol[k])
            refs.append(
                FrameRef(
                    str(f.obj.get("SOPInstanceUID")), str(f.obj.get("SOPClassUID")),
                    None if f.frame_index is None else f.frame_index + 1,
                )
            )
        else:
            # Interpolated slice inside an accepted gap.
            hi = int(np.searchsorted(dist, t))
            lo = hi - 1
            w = (t - dist[lo]) / (dist[hi] - dist[lo])
            a = frame_values(lo) * frames[lo].slope + frames[lo].intercept
            b = frame_values(hi) * frames[hi].slope + frames[hi].intercept
            vol[k] = (1 - w) * a + w * b
            refs.append(None)

    ds0 = f0.obj.ds
    origin = frames[0].position
    files: list[str] = []
    for f in frames:
        if not files or files[-1] != f.path:
            files.append(f.path)
    src = SourceRef(
        study_instance_uid=str(ds0.get("StudyInstanceUID", "") or "") or None,
        series_instance_uid=str(ds0.get("SeriesInstanceUID", "") or "") or None,
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "") or "") or None,
        modality=str(ds0.get("Modality", "") or "") or None,
        series_description=str(ds0.get("SeriesDescription", "") or "") or None,
        series_number=int(ds0.SeriesNumber) if ds0.get("SeriesNumber") not in (None, "") else None,
        frames=tuple(refs),
        patient_study=patient_study_attributes(ds0),
        files=tuple(files),
    )
    return Volume(
        array=vol,
        spacing=(f0.pixel_spacing[1], f0.pixel_spacing[0], spacing_z),
        origin=tuple(origin),
        direction=direction,
        source=src,
        warnings=tuple(warns),
    )


def read_dicom_volume(paths: Iterable[str | os.PathLike[str]], *, allow_gaps: bool = False) -> Volume:
    """Read an explicit list of DICOM files (one series) into a `Volume`; see `read_series`."""
    frames: list[_Frame] = []
    for p in paths:
        obj = _open_object(str(p))
        if obj is None:
            raise UnsupportedInputError(f"'{p}' holds no image.", str(p))
        frames.extend(_frames_of(obj))
    if not frames:
        raise SeriesSelectionError("No DICOM files given.")
    return _assemble(frames, allow_gaps)
