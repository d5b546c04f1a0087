"""Reading CT (and other cross-sectional) DICOM series into a `Volume`.

What this adds over SimpleITK's ImageSeriesReader or MONAI's loaders, and why it is written here:
every slice is checked (a truncated file is an error naming it, never a silently shorter volume),
every file in the folder is accounted for (an empty, cut or unreadable file is an error that lists
every such file, unless the user opts in to ``skip_unreadable``, which keeps a warning with the volume),
slices are ordered by their position along the slice normal, gaps are found and reported with their
position, per-slice rescale is applied, Enhanced multi-frame objects are read with their per-frame
geometry, PixelPaddingValue voxels become air instead of a fake -3024 HU, and the source references
needed by derived objects are kept.

What is skipped without a word (listed in the info log): files that are obviously something else
(`NON_DICOM_SUFFIXES`, hidden files such as ``.DS_Store``, ``Thumbs.db``, plain text such as a
``README``), DICOMDIRs, and DICOM objects that hold no image (structured reports, presentation
states). medxai's own unfinished outputs (hidden ``.partial`` folders, `atomicfs.is_partial`) are
never entered.

Uncompressed pixel data is copied straight from the file buffer into a preallocated float32 volume
(no intermediate arrays); compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg:
RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage

from atomicfs import is_partial

from .errors import (
    DicomIOError,
    GeometryError,
    MissingSliceError,
    SeriesSelectionError,
    UnreadableFileError,
    UnsupportedInputError,
)
from .fastheader import FastHeader, scan_header
from .text import printable
from .types import FrameRef, SourceRef, Volume

__all__ = [
    "SeriesInfo",
    "find_series",
    "read_series",
    "read_dicom_volume",
    "PATIENT_STUDY_KEYWORDS",
    "NON_DICOM_SUFFIXES",
    "NON_DICOM_NAMES",
    "AIR_HU",
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

#: File suffixes (lower case) that are obviously not DICOM: such a file is skipped (listed in the info
#: log) unless it carries the DICM marker. Anything else that cannot be read is an error naming it.
#: The tail after ``.zip`` covers what DICOM CDs/DVDs ship beside the images (a viewer, its web page).
NON_DICOM_SUFFIXES: tuple[str, ...] = (
    ".txt",
    ".csv",
    ".json",
    ".md",
    ".xml",
    ".html",
    ".pdf",
    ".png",
    ".jpg",
    ".jpeg",
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".py",
    ".yaml",
    ".yml",
    ".log",
    ".zip",
    ".htm",
    ".nhdr",
    ".gz",
    ".tif",
    ".tiff",
    ".gif",
    ".bmp",
    ".ico",
    ".css",
    ".js",
    ".exe",
    ".dll",
    ".inf",
    ".ini",
    ".rtf",
    ".doc",
    ".docx",
)
#: File names (lower case) that are obviously not DICOM; hidden files (``.DS_Store``, ``._IM0001``)
#: are skipped too, and so is a file named DICOMDIR (a directory, not an image).
NON_DICOM_NAMES: tuple[str, ...] = ("dicomdir", "thumbs.db", "desktop.ini", "autorun.inf")
# Suffixes that say "this is DICOM": such a file is never skipped as text.
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Bytes of plain text (no NUL or other C0 control except tab, LF, FF, CR; no DEL).
_TEXT_BYTES = frozenset(range(0x20, 0x100)) - {0x7F} | {0x09, 0x0A, 0x0C, 0x0D}
#: Value (HU) that CT padding voxels get by default: air.
AIR_HU = -1000.0

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
# Relative tolerance on slice steps before a step counts as a gap or an irregularity.
_STEP_RTOL = 0.02
# Cosine tolerance for "same orientation" between slices.
_ORIENT_ATOL = 1e-3


class _Obj:
    """One DICOM object found on disk: either scanned by the fast header path (``fast`` + file bytes)
    or parsed by pydicom (``ds``)."""

    def __init__(self, path: str, ds: Dataset | None = None, fast: FastHeader | None = None, data: bytes | None = None) -> None:
        self.path = path
        self._ds = ds
        self.fast = fast
        self.data = data

    def get(self, keyword: str, default: Any = None) -> Any:
        if self.fast is not None:
            v = self.fast.values.get(keyword)
            return default if v is None else v
        try:
            return self._ds.get(keyword, default)  # type: ignore[union-attr]
        except Exception as e:
            raise UnreadableFileError(
                f"Cannot read {keyword} of '{self.path}': the value is damaged ({type(e).__name__}: "
                f"{printable(e)[:200]}). Re-export or re-transfer the file, or remove it from the folder.",
                self.path,
            ) from e

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
        """One line for listings and error messages (DICOM text made safe with `printable`)."""
        return printable(
            f"{self.series_instance_uid} ({self.modality or '?'}, "
            f"'{self.description or 'no description'}', {self.n_frames} slice(s) in {len(self.files)} file(s)"
            # a series of one file is often a stray or damaged file: name it
            + (f": '{self.files[0]}')" if len(self.files) == 1 else ")")
        )


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


def _iter_files(source: Path, bad: list[tuple[str, str]]) -> list[str]:
    """Every file under ``source`` in a stable order; folders that cannot be listed go to ``bad``."""
    if source.is_file():
        return [str(source)]

    def unlistable(e: OSError) -> None:
        where = str(e.filename or source)
        bad.append((where, f"'{where}' is a folder that cannot be listed ({e.strerror or e})."))

    out: list[str] = []
    for root, dirs, files in os.walk(source, onerror=unlistable):
        # medxai's own unfinished outputs are not input, whatever they hold
        dirs[:] = sorted(d for d in dirs if not is_partial(d))
        for name in sorted(files):
            out.append(os.path.join(root, name))
    return out


def _suffix(name: str) -> str:
    low = name.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(low)[1]


def _obviously_not_image(name: str) -> bool:
    """Hidden files, DICOMDIR and other known names: skipped before they are opened."""
    return name.startswith(".") or name.lower() in NON_DICOM_NAMES


def _obviously_not_dicom(name: str, head: bytes) -> bool:
    """For a file without the DICM marker: a known non-DICOM suffix, or plain text (a README)."""
    suffix = _suffix(name)
    if suffix in NON_DICOM_SUFFIXES:
        return True
    # A raw (preamble-less) dataset starts with binary tag bytes, so text is never a damaged DICOM file.
    return suffix not in _DICOM_SUFFIXES and bool(head) and _TEXT_BYTES.issuperset(head)


def _read_dataset(path: str, stop_before_pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=False)
    except InvalidDicomError:
        # No preamble: retry as a raw dataset, which is still a real DICOM file if it parses.
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        except Exception as e:
            raise UnreadableFileError(f"Cannot read '{path}': it looks like DICOM but does not parse ({e}).", path) from e
    except Exception as e:
        raise UnreadableFileError(
            f"Cannot read '{path}': the file is damaged or truncated ({type(e).__name__}: {e}). "
            "Re-export or re-transfer it, or remove it from the folder.",
            path,
        ) from e


# What a damaged header raises once its values are used: pydicom's lazy conversion, int()/float() of
# odd values, numpy on impossible sizes. (DicomIOError is a ValueError and passes through unchanged.)
_DAMAGE_ERRORS = (
    ValueError,
    TypeError,
    AttributeError,
    LookupError,
    NotImplementedError,
    OverflowError,
    struct.error,
    BytesLengthException,
)
_F = TypeVar("_F", bound=Callable[..., Any])


def _names_file(fn: _F) -> _F:
    """Decorator for functions that interpret one file (first argument: its path or its `_Obj`): any
    error from a damaged value becomes an `UnreadableFileError` naming the file, never a bare
    TypeError/ValueError (or worse) that says neither which file nor what to do."""

    @functools.wraps(fn)
    def wrapper(target: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(target, *args, **kwargs)
        except DicomIOError:
            raise
        except _DAMAGE_ERRORS as e:
            path = target if isinstance(target, str) else target.path
            raise UnreadableFileError(
                f"Cannot read '{path}': a value in its header is damaged or impossible ({type(e).__name__}: "
                f"{printable(e)[:200]}). Re-export or re-transfer the file, or remove it from the folder.",
                path,
            ) from e

    return wrapper  # type: ignore[return-value]


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return str(getattr(uid, "name", uid) or "unknown SOP class")


def _is_image_class(ds: Dataset) -> bool:
    """True when the SOP class, the file meta's MediaStorageSOPClassUID or the header says the object
    carries an image (either UID is enough: a damaged header may have lost one of them)."""
    meta = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    names = (_sop_class_name(ds), str(getattr(meta, "name", meta) or ""))
    return any("Image Storage" in n or "Photograph" in n for n in names) or "Rows" in ds


def _damaged_sop_class(ds: Dataset) -> bool:
    """True when the data set lacks a well-formed SOPClassUID (Type 1 in every object): a header cut short
    or misparsed, never a non-image object to skip."""
    uid = ds.get("SOPClassUID")
    return not uid or not pydicom.uid.UID(str(uid)).is_valid


def _scan(source: Path, skip_unreadable: bool = False) -> tuple[dict[str, list[_Obj]], list[str], list[str]]:
    """Read every DICOM file under ``source`` once (pixels included).

    Returns series -> objects, the skipped non-image files, and warnings to keep with the volume.
    Files (and folders) that cannot be read and are not obviously something else are an error that
    lists them all, or, with ``skip_unreadable``, one warning that lists them all.
    """
    by_series: dict[str, list[_Obj]] = defaultdict(list)
    skipped: list[str] = []
    bad: list[tuple[str, str]] = []  # (path, a sentence naming it) per file that cannot be read
    for path in _iter_files(source, bad):
        base = os.path.basename(path)
        if _obviously_not_image(base):
            skipped.append(path)
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(132)
        except OSError as e:
            bad.append((path, f"'{path}' cannot be opened ({e.strerror or e})."))
            continue
        if not (len(head) >= 132 and head[128:132] == b"DICM") and _obviously_not_dicom(base, head):
            skipped.append(path)
            continue
        if not head:
            bad.append((path, f"'{path}' is empty (0 bytes)."))
            continue
        try:
            obj = _open_object(path)
        except UnreadableFileError as e:
            bad.append((path, str(e)))
            continue
        if obj is None:
            skipped.append(path)
            continue
        by_series[obj.series_uid].append(obj)
    if skipped:
        logger.info("skipped %d non-image file(s) under %s: %s", len(skipped), source, ", ".join(skipped))
    warns: list[str] = []
    if bad:
        what = f"{len(bad)} file(s) under '{source}' cannot be read" if len(bad) > 1 else "A file cannot be read"
        listing = " ".join(why for _, why in bad)
        if not skip_unreadable:
            raise UnreadableFileError(
                f"{what}: {listing} Reading the rest would give a volume that silently lacks them. "
                "Re-export or re-transfer them, remove them from the folder, or pass --skip-unreadable "
                "(skip_unreadable=True) to read the rest with a warning kept with the output.",
                bad[0][0],
            )
        warns.append(f"SKIPPED UNREADABLE: {len(bad)} file(s) under '{source}' were left out: {listing}")
        logger.warning(warns[-1])
    return by_series, skipped, warns


@_names_file
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
        if str(ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")) == (
            MediaStorageDirectoryStorage
        ):
            return None  # a DICOMDIR under another name
        if _sop_class_name(ds) == "unknown SOP class" or _damaged_sop_class(ds):
            raise UnreadableFileError(
                f"'{path}' starts like a DICOM file but holds no pixel data and no well-formed SOPClassUID: it is "
                "damaged or truncated. Re-export or re-transfer it, or remove it from the folder.",
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


def find_series(source: str | os.PathLike[str], *, skip_unreadable: bool = False) -> list[SeriesInfo]:
    """List the image series under a folder (searched recursively) or in one file.

    Parameters
    ----------
    source : path
        A folder of DICOM files (files that are obviously not DICOM are skipped) or a single DICOM file.
    skip_unreadable : bool
        Leave out files that cannot be read (logged as a warning) instead of raising.

    Returns
    -------
    list of SeriesInfo
        One entry per SeriesInstanceUID, sorted by description then UID.
    """
    src = Path(source)
    if not src.exists():
        raise DicomIOError(f"'{src}' does not exist.", str(src))
    by_series, _, _ = _scan(src, skip_unreadable)
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
        raise GeometryError(f"'{path}': ImageOrientationPatient {list(iop)} does not hold two orthogonal unit vectors.", path)
    return row / nr, col / nc


@_names_file
def _frames_of(obj: _Obj) -> list[_Frame]:
    """Split one object into frames with their geometry and rescale."""
    path = obj.path
    rows, cols = obj.get("Rows"), obj.get("Columns")
    if not (isinstance(rows, int) and isinstance(cols, int) and rows > 0 and cols > 0):
        raise UnreadableFileError(
            f"'{path}': Rows {printable(rows)[:20]!r} and Columns {printable(cols)[:20]!r} do not give an image "
            "size: the file is damaged. Re-export or re-transfer it.",
            path,
        )
    if obj.fast is not None:
        v = obj.fast.values
        row, col = _orientation(_floats(v["ImageOrientationPatient"], 6, "ImageOrientationPatient", path), path)
        ps = _floats(v["PixelSpacing"], 2, "PixelSpacing", path)
        slope, inter = _rescale(v, path)
        return [
            _Frame(
                path,
                obj,
                None,
                _floats(v["ImagePositionPatient"], 3, "ImagePositionPatient", path),
                row,
                col,
                (float(ps[0]), float(ps[1])),
                slope,
                inter,
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
            slope, inter = _rescale(pvt if pvt is not None else ds, path)
            frames.append(
                _Frame(
                    path,
                    obj,
                    i,
                    _floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", path),
                    row,
                    col,
                    (float(ps[0]), float(ps[1])),
                    slope,
                    inter,
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
            path,
            obj,
            None,
            _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),
            row,
            col,
            (float(ps[0]), float(ps[1])),
            *_rescale(ds, path),
        )
    ]


def _rescale(owner: Dataset | dict[str, Any], path: str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a data set, a functional group item, or fast-header values.

    (1, 0) when both are absent. One without the other, an empty, multi-valued or non-finite value is an
    error, as pydicom's ``apply_modality_lut`` would not apply it either: guessing the missing half would
    shift or scale every voxel (a CT slice without its intercept is off by 1024 HU).
    """
    keywords = ("RescaleSlope", "RescaleIntercept")
    if not any(kw in owner for kw in keywords):
        return 1.0, 0.0
    found: list[str] = []
    values: list[float] = []
    for kw in keywords:
        v = (owner[kw].value if isinstance(owner, Dataset) else owner[kw]) if kw in owner else None
        shown = "absent" if kw not in owner else repr(printable(v)[:40]) if v not in (None, "") else "empty"
        found.append(f"{kw} {shown}")
        if v is None or v == "":
            items: list[Any] = []
        elif isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
            items = [v]
        else:
            items = list(v)
        try:
            x = float(items[0]) if len(items) == 1 else float("nan")
        except (TypeError, ValueError):
            x = float("nan")
        if isinstance(owner, Dataset) and kw in owner and owner[kw].VR != "DS":
            x = float("nan")  # a tag moved onto another element (pydicom would not apply it either)
            found[-1] += f" with VR {owner[kw].VR}"
        values.append(x)
    if not all(np.isfinite(values)):
        raise UnreadableFileError(
            f"'{path}': RescaleSlope and RescaleIntercept must both be present with one number each; found "
            f"{found[0]} and {found[1]}. Without them the stored values "
            "cannot be converted to physical units (HU for CT): the file is damaged. Re-export or "
            "re-transfer it.",
            path,
        )
    return values[0], values[1]


# --------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------


def _transfer_syntax(ds: Dataset) -> Any:
    """The transfer syntax of a dataset; for a raw dataset without file meta, the one it was read with
    (such a file cannot hold encapsulated pixel data: nothing would say how it is compressed)."""
    ts = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if getattr(ds, "preamble", None) is not None:
        return ts  # a Part 10 file (DICM marker) must say its transfer syntax; without it, it is damaged
    if ts is None and "PixelData" in ds and getattr(ds, "original_encoding", None) == (True, True):
        return ImplicitVRLittleEndian
    if ts is None and "PixelData" in ds and getattr(ds, "original_encoding", None) == (False, True):
        return ExplicitVRLittleEndian
    return ts


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
        ts = _transfer_syntax(ds)
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


# Photometric interpretations that are well-formed but not grayscale intensities.
_NOT_GRAYSCALE = {"PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "XYB"}


def _check_pixel_format(obj: _Obj) -> None:
    """The pixel attributes a grayscale volume relies on (all Type 1): SamplesPerPixel 1,
    PhotometricInterpretation MONOCHROME1/2, BitsAllocated 8/16/32, 1 <= BitsStored <= BitsAllocated,
    PixelRepresentation 0/1. Anything else would decode into made-up values (palette indices, signed
    data read as unsigned), which pydicom refuses too."""
    path = obj.path
    pi = str(obj.get("PhotometricInterpretation", "") or "").strip()
    if pi in _NOT_GRAYSCALE or pi.startswith("YBR"):
        raise UnsupportedInputError(
            f"'{path}': PhotometricInterpretation is {pi}; a volume needs grayscale slices (MONOCHROME1 or MONOCHROME2).",
            path,
        )
    fmt = {kw: obj.get(kw) for kw in ("SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")}
    ok = pi in ("MONOCHROME1", "MONOCHROME2") and all(isinstance(v, int) for v in fmt.values())
    if ok:
        ok = fmt["BitsAllocated"] in (8, 16, 32) and 1 <= fmt["BitsStored"] <= fmt["BitsAllocated"]
        ok = ok and fmt["PixelRepresentation"] in (0, 1)
    if not ok:
        found = ", ".join(f"{k} {printable(v)[:20]!r}" for k, v in [("PhotometricInterpretation", pi), *fmt.items()])
        raise UnreadableFileError(
            f"'{path}': its pixel description is missing or impossible ({found}); a grayscale slice needs "
            "SamplesPerPixel 1, PhotometricInterpretation MONOCHROME1/2, BitsAllocated 8, 16 or 32, BitsStored "
            "between 1 and BitsAllocated, and PixelRepresentation 0 or 1. The file is damaged: re-export or "
            "re-transfer it.",
            path,
        )


@_names_file
def _raw_frames(obj: _Obj) -> np.ndarray:
    """Stored values of all frames, shape (frames, rows, cols), with every byte accounted for."""
    path = obj.path
    if int(obj.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedInputError(
            f"'{path}': {obj.get('SamplesPerPixel')} samples per pixel; a volume needs grayscale slices.", path
        )
    _check_pixel_format(obj)
    if obj.fast is not None:
        return _native_values(obj, obj.data, obj.fast.pixel_offset)  # type: ignore[arg-type]
    ds = obj.ds
    ts = _transfer_syntax(ds)
    if ts in _UNCOMPRESSED and int(ds.BitsAllocated) in (8, 16, 32) and "PixelData" in ds:
        _check_pixel_length(obj)
        return _native_values(obj, ds.PixelData, 0)
    try:
        try:
            arr = ds.pixel_array
        except BaseException as e:
            # A decoder written in Rust (pylibjpeg-rle) panics on some damaged data; pyo3 raises that
            # as PanicException, a BaseException, which would get past every handler up to the CLI.
            if type(e).__name__ == "PanicException":
                raise RuntimeError(f"the decoder failed ({e})") from e
            raise
    except Exception as e:
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
            out[kw] = ds[kw].value
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
        raise GeometryError(f"'{f.path}' has PixelSpacing {f.pixel_spacing} but '{f0.path}' has {f0.pixel_spacing}.", f.path)


@_names_file
def _slice_thickness(obj: _Obj) -> float:
    """The slice step of a single-slice volume: SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    ds = obj.ds
    thick = abs(float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0))
    if not np.isfinite(thick):
        raise ValueError(f"slice thickness {thick}")
    return thick


def _regular_steps(frames: list[_Frame], dist: np.ndarray, allow_gaps: bool) -> tuple[float, np.ndarray, list[str]]:
    """Check slice steps. Returns (step, target positions along the normal, warnings).

    With no gap the target positions are the slices' own; with accepted gaps they are a regular grid
    through the first and last slice at the typical step.
    """
    warns: list[str] = []
    if len(frames) == 1:
        return _slice_thickness(frames[0].obj), dist.copy(), warns
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
    gaps = [(int(i), int(round(r)) - 1) for i, r in zip(off, ratios) if r > 1.5 and abs(r - round(r)) < 0.1]
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
    skip_unreadable: bool = False,
    padding_value: float | None = None,
) -> Volume:
    """Read one DICOM image series (or one multi-frame object) into a `Volume`.

    Parameters
    ----------
    source : path
        A folder searched recursively, or a single DICOM file (an Enhanced multi-frame object, or a
        single slice). Files that are obviously not DICOM (`NON_DICOM_SUFFIXES`, hidden files, plain
        text, DICOMDIR) and DICOM objects without an image (SR, PR) are skipped; anything else that
        cannot be read is an error listing every such file.
    series_uid : str, optional
        SeriesInstanceUID to read when the folder holds several series.
    allow_gaps : bool
        Accept missing slices: the gap is filled by linear interpolation and a loud warning is
        logged and stored in ``Volume.warnings``. Default: a gap is an error.
    skip_unreadable : bool
        Leave out files that cannot be read (empty, cut short, damaged, no permission) and keep a
        warning listing them in ``Volume.warnings``. Default: they are an error.
    padding_value : float, optional
        Value given to padding voxels (stored value equal to PixelPaddingValue, or within
        [PixelPaddingValue, PixelPaddingRangeLimit]). Default: `AIR_HU` (-1000) for CT, else the
        minimum of the other voxels. A note with the count is kept in ``Volume.notes``.

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
        Files that cannot be read (all of them named), unless ``skip_unreadable``.
    GeometryError, MissingSliceError
        Slices that do not form one regular volume.
    """
    src = Path(source)
    if not src.exists():
        raise DicomIOError(f"'{src}' does not exist.", str(src))
    by_series, skipped, warns = _scan(src, skip_unreadable)
    if not by_series:
        what = "folder" if src.is_dir() else "file"
        extra = f" ({len(skipped)} non-DICOM or non-image file(s) skipped)" if skipped else ""
        raise SeriesSelectionError(f"No DICOM image series found in {what} '{src}'{extra}.", str(src))
    if series_uid is not None:
        if series_uid not in by_series:
            listing = "; ".join(_series_info(u, it).describe() for u, it in sorted(by_series.items()))
            raise SeriesSelectionError(f"Series '{series_uid}' is not in '{src}'. Series found: {listing}.", str(src))
        items = by_series[series_uid]
    elif len(by_series) > 1:
        listing = "; ".join(_series_info(u, it).describe() for u, it in sorted(by_series.items()))
        raise SeriesSelectionError(
            f"'{src}' holds {len(by_series)} image series; choose one with --series UID. Series found: {listing}.",
            str(src),
        )
    else:
        items = next(iter(by_series.values()))
    return _assemble([f for obj in items for f in _frames_of(obj)], allow_gaps, padding_value, warns)


def _rescale_into(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """out = stored * slope + intercept in float32, in one pass when slope is 1."""
    if slope == 1.0:
        np.add(stored, np.float32(intercept), out=out, casting="unsafe")
    else:
        np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
        out += np.float32(intercept)


def _padding_range(obj: _Obj) -> tuple[int, int] | None:
    """Stored values (inclusive range) that mark padding in ``obj``, or None without PixelPaddingValue.

    PixelPaddingValue and PixelPaddingRangeLimit are 16 bit (US or SS); their bit pattern takes the
    sign of the pixel data (PixelRepresentation), whichever of US/SS the file declares.
    """
    pad = obj.get("PixelPaddingValue")
    if pad is None or pad == "":
        return None
    lim = obj.get("PixelPaddingRangeLimit")
    try:
        values = [int(pad)] + ([] if lim is None or lim == "" else [int(lim)])
    except (TypeError, ValueError) as e:
        raise UnreadableFileError(
            f"'{obj.path}': PixelPaddingValue {pad!r} / PixelPaddingRangeLimit {lim!r} is not one integer each, "
            "so padding cannot be told from tissue. Fix or remove the attribute.",
            obj.path,
        ) from e
    if int(obj.get("PixelRepresentation", 0) or 0) == 1:
        values = [v - 0x10000 if v >= 0x8000 else v for v in values]
    else:
        values = [v + 0x10000 if v < 0 else v for v in values]
    return min(values), max(values)


def _padding_mask(stored: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """True where a frame's stored values are padding (compared before rescale)."""
    lo, hi = pad
    return stored == lo if lo == hi else (stored >= lo) & (stored <= hi)


def _assemble(
    frames: list[_Frame],
    allow_gaps: bool,
    padding_value: float | None = None,
    extra_warnings: Sequence[str] = (),
) -> Volume:
    if padding_value is not None and not np.isfinite(padding_value):
        raise ValueError(f"padding_value must be a finite number (HU for CT); got {padding_value!r}.")
    _check_consistent(frames)
    f0 = frames[0]
    normal = np.cross(f0.row_dir, f0.col_dir)
    dist = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    step, target, warns = _regular_steps(frames, dist, allow_gaps)
    warns = [*extra_warnings, *warns]
    notes: list[str] = []

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

    # Padding (the scanner's "outside the field of view" marker) is found on stored values, per frame.
    pad_ranges: dict[int, tuple[int, int] | None] = {}
    pad_mask: np.ndarray | None = None  # allocated when the first padding voxel is found
    pad_seen: set[tuple[int, int]] = set()

    def mark_padding(k: int, idx: int, stored: np.ndarray) -> None:
        nonlocal pad_mask
        obj = frames[idx].obj
        if id(obj) not in pad_ranges:
            pad_ranges[id(obj)] = _padding_range(obj)
        pad = pad_ranges[id(obj)]
        if pad is None:
            return
        m = _padding_mask(stored, pad)
        if m.any():
            if pad_mask is None:
                pad_mask = np.zeros(vol.shape, dtype=bool)
            pad_mask[k] |= m
            pad_seen.add(pad)

    refs: list[FrameRef | None] = []
    for k, t in enumerate(target):
        if exact[k]:
            i = int(slice_of_target[k])
            f = frames[i]
            stored = frame_values(i)
            _rescale_into(stored, f.slope, f.intercept, vol[k])
            mark_padding(k, i, stored)
            refs.append(
                FrameRef(
                    str(f.obj.get("SOPInstanceUID")),
                    str(f.obj.get("SOPClassUID")),
                    None if f.frame_index is None else f.frame_index + 1,
                )
            )
        else:
            # Interpolated slice inside an accepted gap.
            hi = int(np.searchsorted(dist, t))
            lo = hi - 1
            w = (t - dist[lo]) / (dist[hi] - dist[lo])
            stored = frame_values(lo)
            a = stored * frames[lo].slope + frames[lo].intercept
            mark_padding(k, lo, stored)  # padding on either side stays padding
            stored = frame_values(hi)
            b = stored * frames[hi].slope + frames[hi].intercept
            mark_padding(k, hi, stored)
            vol[k] = (1 - w) * a + w * b
            refs.append(None)

    if pad_mask is not None:
        ct = str(f0.obj.get("Modality", "") or "") == "CT"
        if padding_value is not None:
            fill = float(padding_value)
        elif ct:
            fill = AIR_HU
        else:
            fill = float(np.min(vol, where=~pad_mask, initial=np.inf))
            fill = fill if np.isfinite(fill) else 0.0
        np.copyto(vol, np.float32(fill), where=pad_mask)
        values = ", ".join(str(lo) if lo == hi else f"{lo} to {hi}" for lo, hi in sorted(pad_seen))
        unit = " HU" if ct else ""
        why = "" if padding_value is not None else " (air)" if ct else " (the minimum of the other voxels)"
        note = (
            f"{int(np.count_nonzero(pad_mask))} voxels of PixelPaddingValue {values} set to {fill:g}{unit}{why}; "
            "padding marks pixels outside the scanned field, not tissue."
        )
        logger.info(note)
        notes.append(note)

    origin = frames[0].position
    files: list[str] = []
    for f in frames:
        if not files or files[-1] != f.path:
            files.append(f.path)
    src = _source_ref(f0.obj, refs, files)
    return Volume(
        array=vol,
        spacing=(f0.pixel_spacing[1], f0.pixel_spacing[0], spacing_z),
        origin=tuple(origin),
        direction=direction,
        source=src,
        warnings=tuple(warns),
        notes=tuple(notes),
    )


@_names_file
def _source_ref(obj0: _Obj, refs: Sequence[FrameRef | None], files: Sequence[str]) -> SourceRef:
    """The volume's source references, with the study/series attributes of its first object."""
    ds0 = obj0.ds
    return SourceRef(
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


def read_dicom_volume(
    paths: Iterable[str | os.PathLike[str]], *, allow_gaps: bool = False, padding_value: float | None = None
) -> Volume:
    """Read an explicit list of DICOM files (one series) into a `Volume`; see `read_series`."""
    frames: list[_Frame] = []
    for p in paths:
        obj = _open_object(str(p))
        if obj is None:
            raise UnsupportedInputError(f"'{p}' holds no image.", str(p))
        frames.extend(_frames_of(obj))
    if not frames:
        raise SeriesSelectionError("No DICOM files given.")
    return _assemble(frames, allow_gaps, padding_value)
