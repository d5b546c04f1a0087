"""Helpers shared by the DICOM exporters: source headers, codes, UIDs, patient orientation, atomic save."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from atomicfs import atomic_path

from ..errors import DicomIOError, UnreadableFileError
from ..types import FrameRef

__all__ = [
    "MEDXAI_SCHEME",
    "HEATMAP_QUANTITY",
    "HIGH_ATTRIBUTION_REGION",
    "EXPLANATION_CATEGORY",
    "SOFTWARE_VERSION",
    "read_source_headers",
    "TYPE2_PATIENT_STUDY",
    "complete_source_header",
    "complete_source_headers",
    "patient_orientation",
    "anatomic_region",
    "save_dataset",
    "code_item",
    "source_image_item",
    "derived_series_number",
]

logger = logging.getLogger(__name__)

SOFTWARE_VERSION = "medxai 0.1.0"

#: Private coding scheme of medxai (DICOM PS3.16 allows "99"-prefixed local schemes).
MEDXAI_SCHEME = "99MEDXAI"
#: Quantity of the Parametric Map: a per-voxel attribution (saliency) score, unitless ("1" in UCUM).
#: No DCM/SCT concept names "explanation attribution" (checked against PS3.16 2024), hence a private code.
HEATMAP_QUANTITY = Code("MX0001", MEDXAI_SCHEME, "Attribution score")
#: Segmented property type of the thresholded heatmap.
HIGH_ATTRIBUTION_REGION = Code("MX0002", MEDXAI_SCHEME, "High attribution region")
#: Segmented property category of the thresholded heatmap.
EXPLANATION_CATEGORY = Code("MX0003", MEDXAI_SCHEME, "Model explanation")

_BODY_PARTS: dict[str, Code] = {
    "CHEST": codes.SCT.Chest,
    "THORAX": codes.SCT.Chest,
    "LUNG": codes.SCT.Lung,
    "ABDOMEN": codes.SCT.Abdomen,
    "HEAD": codes.SCT.Head,
    "BRAIN": codes.SCT.Brain,
    "EYE": codes.SCT.Eye,
    "RETINA": codes.SCT.Retina,
}


def read_source_headers(files: Sequence[str | os.PathLike[str]]) -> list[Dataset]:
    """Read source DICOM headers (no pixel data) for derived objects to copy and reference.

    Parameters
    ----------
    files : sequence of path
        Source files, usually ``SourceRef.files`` (slice order).

    Returns
    -------
    list of Dataset
        One header per file, in the given order. Files are opened read-only and never modified.
    """
    if not files:
        raise ValueError("files is empty: derived DICOM objects need the source DICOM files (SourceRef.files).")
    out: list[Dataset] = []
    for f in files:
        try:
            out.append(pydicom.dcmread(os.fspath(f), stop_before_pixels=True))
        except Exception as e:
            raise UnreadableFileError(f"Cannot read source DICOM header '{f}': {type(e).__name__}: {e}.", str(f)) from e
    return out


#: Type 2 attributes (present, possibly empty) of the Patient and General Study modules, which every
#: derived object copies from its source (PS3.3 C.7.1.1, C.7.2.1). De-identifiers often delete them
#: (PS3.15 Annex E profiles "X" or "Z"); a derived object must still carry them, empty.
TYPE2_PATIENT_STUDY: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

#: Type 1 attributes a derived object cannot be made without (it joins the study and references the instance).
_TYPE1_REFERENCES: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def complete_source_header(ds: Dataset) -> Dataset:
    """A source header whose absent Type 2 patient/study attributes are present and empty.

    highdicom reads ``PatientID``, ``PatientBirthDate``, ``StudyID``, ... of the source as attributes
    (an AttributeError when a de-identifier deleted them), and DICOM requires a derived object to carry
    them, empty when unknown. The source is never modified: when something is missing a deep copy is
    completed and returned, otherwise ``ds`` itself.

    Parameters
    ----------
    ds : Dataset
        A source header (e.g. from `read_source_headers`).

    Returns
    -------
    Dataset

    Raises
    ------
    DicomIOError
        The header lacks a Type 1 UID (study, series, SOP instance or class) that a derived object must
        reference.
    """
    name = str(getattr(ds, "filename", "") or "the source header")
    lost = [kw for kw in _TYPE1_REFERENCES if not str(ds.get(kw, "") or "").strip()]
    if lost:
        raise DicomIOError(
            f"Source DICOM '{name}' has no {', '.join(lost)}; a derived object (SC, Parametric Map, SEG) must "
            "reference the source study, series and instance by UID. Export from the original series or from a "
            "de-identified copy that keeps (or consistently replaces) the UIDs.",
            name,
        )
    missing = [kw for kw in TYPE2_PATIENT_STUDY if kw not in ds]
    if not missing:
        return ds
    out = copy.deepcopy(ds)
    for kw in missing:
        setattr(out, kw, None)  # present, zero length (Type 2 "unknown")
    logger.debug("source %s lacks Type 2 attributes %s; exported empty", name, missing)
    return out


def complete_source_headers(sources: Sequence[Dataset]) -> list[Dataset]:
    """`complete_source_header` of each header (a list, same order)."""
    return [complete_source_header(ds) for ds in sources]


def _letter(v: np.ndarray) -> str:
    i = int(np.argmax(np.abs(v)))
    return ("L", "P", "H")[i] if v[i] > 0 else ("R", "A", "F")[i]


def patient_orientation(ds: Dataset | None) -> tuple[str, str]:
    """(row, column) PatientOrientation letters from ImageOrientationPatient (default ``("L", "P")``)."""
    iop = None
    if ds is not None:
        iop = ds.get("ImageOrientationPatient")
        if iop is None:
            for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
                grp = ds.get(seq)
                if grp and "PlaneOrientationSequence" in grp[0]:
                    iop = grp[0].PlaneOrientationSequence[0].ImageOrientationPatient
                    break
    if iop is None:
        return ("L", "P")
    v = np.asarray([float(x) for x in iop])
    return _letter(v[:3]), _letter(v[3:])


def anatomic_region(ds: Dataset | None) -> Code:
    """SNOMED CT code for BodyPartExamined (CHEST -> Chest), default 'Entire body'."""
    part = str(ds.get("BodyPartExamined", "")).upper() if ds is not None else ""
    return _BODY_PARTS.get(part, codes.SCT.EntireBody)


def derived_series_number(source: Dataset | None, offset: int) -> int:
    """Series number for a derived series: ``offset`` + the source's series number (IS fits 2**31)."""
    base = 0
    if source is not None and source.get("SeriesNumber") not in (None, ""):
        try:
            base = int(source.SeriesNumber)
        except (TypeError, ValueError):
            base = 0
    return int((offset + base) % 2_000_000_000) or offset


def code_item(code: Code) -> Dataset:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning) of ``code``."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def source_image_item(src: Dataset, frame: FrameRef | None) -> Dataset:
    """A SourceImageSequence item: the source instance (and frame) a derived image was made from."""
    item = Dataset()
    item.ReferencedSOPClassUID = frame.sop_class_uid if frame else src.SOPClassUID
    item.ReferencedSOPInstanceUID = frame.sop_instance_uid if frame else src.SOPInstanceUID
    if frame is not None and frame.frame_number is not None:
        item.ReferencedFrameNumber = int(frame.frame_number)
    item.PurposeOfReferenceCodeSequence = [code_item(codes.DCM.SourceImageForImageProcessingOperation)]
    return item


def save_dataset(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Save a dataset as a DICOM file (preamble + file meta) under a temporary name, then rename."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
