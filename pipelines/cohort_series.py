"""Finding the series of a studies folder and picking one per case by a stated rule.

Each top-level folder under the studies folder is scanned on its own (recursively) with
`dicom_io.find_series`, so one unreadable folder is reported and the others go on, and memory holds
one folder at a time. The attributes the rule and the matching need (PatientID, StudyInstanceUID,
AccessionNumber, SliceThickness) come from the header of each series' first file.

The rule (`SelectionRule`): modality, slice-thickness range, minimum number of slices and a regular
expression searched in SeriesDescription; of the series that pass, the thinnest slices win, then the
most slices, then the smallest SeriesInstanceUID (only so that the choice never depends on order).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atomicfs import is_partial
from dicom_io import find_series, printable

__all__ = ["MATCH_KINDS", "SelectionRule", "FoundSeries", "FolderScan", "scan_folder", "top_folders", "choose_series"]

#: How a CSV row finds its images: the DICOM attribute (or folder) its ID is compared with.
MATCH_KINDS: dict[str, str] = {
    "patient-id": "PatientID",
    "study-uid": "StudyInstanceUID",
    "accession": "AccessionNumber",
    "folder": "top-level folder name",
}
_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "AccessionNumber", "SliceThickness", "SpacingBetweenSlices"]
_TIE_BREAK = ("thinnest SliceThickness", "most slices", "smallest SeriesInstanceUID")


@dataclass(frozen=True)
class SelectionRule:
    """Which series of a case is built.

    Parameters
    ----------
    modality : str or None
        Required Modality (case-insensitive); None accepts any.
    min_slices : int
        Fewest slices (frames) a series must have; localizers and dose reports have a few.
    thickness_range : (float, float) or None
        Inclusive SliceThickness range in mm; a series without SliceThickness (or
        SpacingBetweenSlices) fails it. None accepts any thickness.
    description : str or None
        Regular expression searched (case-insensitive) in SeriesDescription; None accepts any.
    """

    modality: str | None = "CT"
    min_slices: int = 8
    thickness_range: tuple[float, float] | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"--min-slices must be >= 1, got {self.min_slices}; e.g. 8.")
        if self.thickness_range is not None:
            lo, hi = (float(v) for v in self.thickness_range)
            if not (0 <= lo <= hi) or not math.isfinite(hi):
                raise ValueError(f"--thickness-range needs 0 <= MIN <= MAX (mm), got {lo} {hi}; e.g. --thickness-range 0.5 3.")
            object.__setattr__(self, "thickness_range", (lo, hi))
        if self.description is not None:
            try:
                re.compile(self.description)
            except re.error as e:
                raise ValueError(f"--description {self.description!r} is not a valid regular expression ({e}).") from e

    def failure(self, s: FoundSeries) -> str | None:
        """Why ``s`` fails the rule (None when it passes)."""
        if self.modality and s.modality.upper() != self.modality.upper():
            return f"modality {s.modality or 'missing'}, not {self.modality.upper()}"
        if s.n_slices < self.min_slices:
            return f"{s.n_slices} slice(s), fewer than {self.min_slices}"
        if self.thickness_range is not None:
            lo, hi = self.thickness_range
            if s.thickness is None:
                return "no SliceThickness to compare with --thickness-range"
            if not lo <= s.thickness <= hi:
                return f"slice thickness {s.thickness:g} mm outside {lo:g}-{hi:g} mm"
        if self.description is not None and not re.search(self.description, s.description, re.IGNORECASE):
            return f"SeriesDescription {s.description!r} does not match {self.description!r}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready settings, with the tie-break order."""
        d = asdict(self)
        d["thickness_range"] = list(self.thickness_range) if self.thickness_range else None
        d["tie_break"] = list(_TIE_BREAK)
        return d


@dataclass(frozen=True)
class FoundSeries:
    """One series found under the studies folder, before its pixels are decoded."""

    folder: str  # top-level folder under the studies folder
    source: str  # folder holding the series' files (what read_series reads)
    series_uid: str
    study_uid: str
    patient_id: str
    accession: str
    modality: str
    description: str
    n_slices: int
    thickness: float | None

    def key(self, match: str) -> str:
        """The value a CSV ID is compared with under ``match`` (see `MATCH_KINDS`)."""
        return {
            "patient-id": self.patient_id,
            "study-uid": self.study_uid,
            "accession": self.accession,
            "folder": self.folder,
        }[match]

    def describe(self) -> str:
        """One line for cases.csv reasons: UID, modality, description, slices, thickness."""
        th = "?" if self.thickness is None else f"{self.thickness:g}"
        return printable(f"{self.series_uid} ({self.modality or '?'}, '{self.description}', {self.n_slices} slices, {th} mm)")


@dataclass(frozen=True)
class FolderScan:
    """What one top-level folder holds: its series, or the error that stopped the scan."""

    folder: str
    path: str
    series: tuple[FoundSeries, ...] = ()
    error: str | None = None


def top_folders(studies: Path) -> tuple[list[Path], list[str]]:
    """The top-level folders under ``studies`` (sorted; hidden and unfinished ones left out), and the
    loose files directly in it that look like DICOM (they belong in a folder and are not read)."""
    folders, loose = [], []
    for entry in sorted(os.scandir(studies), key=lambda e: e.name):
        if entry.name.startswith(".") or is_partial(entry.name):
            continue
        if entry.is_dir():
            folders.append(Path(entry.path))
        elif entry.is_file() and _has_dicm(entry.path):
            loose.append(entry.path)
    return folders, loose


def _has_dicm(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.lower().endswith(".dcm")


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _header(path: str) -> dict[str, Any]:
    """The matching and selection attributes of one file (Enhanced CT keeps the thickness in the
    shared functional groups)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[*_HEADER_TAGS, "SharedFunctionalGroupsSequence"])
    thickness = _number(ds.get("SliceThickness")) or _number(ds.get("SpacingBetweenSlices"))
    if thickness is None and "SharedFunctionalGroupsSequence" in ds:
        measures = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        thickness = _number(measures[0].get("SliceThickness")) if measures else None
    return {kw: str(ds.get(kw, "") or "").strip() for kw in _HEADER_TAGS[:3]} | {"thickness": thickness}


def _common_folder(files: Iterable[str]) -> str:
    paths = list(files)
    common = os.path.commonpath(paths)
    return os.path.dirname(common) if len(paths) == 1 or os.path.isfile(common) else common


def scan_folder(path: str, skip_unreadable: bool = False) -> FolderScan:
    """Every image series under one top-level folder (run in worker processes).

    Errors (an unreadable file, a folder without permission) are returned in ``FolderScan.error``
    instead of raised, so the build lists the folder and goes on.
    """
    name = os.path.basename(path)
    try:
        found = []
        for info in find_series(path, skip_unreadable=skip_unreadable):
            h = _header(info.files[0])
            found.append(
                FoundSeries(
                    folder=name,
                    source=_common_folder(info.files),
                    series_uid=info.series_instance_uid,
                    study_uid=h["StudyInstanceUID"],
                    patient_id=h["PatientID"],
                    accession=h["AccessionNumber"],
                    modality=info.modality,
                    description=info.description,
                    n_slices=info.n_frames,
                    thickness=h["thickness"],
                )
            )
    except Exception as e:  # noqa: BLE001 - any failure of one folder is reported with it, the rest go on
        return FolderScan(name, path, error=printable(str(e) or type(e).__name__))
    return FolderScan(name, path, tuple(sorted(found, key=lambda s: (s.source, s.series_uid))))


def choose_series(candidates: Iterable[FoundSeries], rule: SelectionRule) -> tuple[FoundSeries | None, list[str]]:
    """The series ``rule`` picks among ``candidates``, and one line per series it turned down.

    Returns
    -------
    (FoundSeries or None, list of str)
        The chosen series (None when none passes) and, for every other series, why it was not
        chosen (failed the rule, or lost the tie-break).
    """
    passing, notes = [], []
    for s in candidates:
        why = rule.failure(s)
        if why is None:
            passing.append(s)
        else:
            notes.append(f"{s.describe()}: {why}")
    if not passing:
        return None, notes
    passing.sort(key=lambda s: (math.inf if s.thickness is None else s.thickness, -s.n_slices, s.series_uid))
    best = passing[0]
    notes.extend(f"{s.describe()}: passes but loses the tie-break to {best.series_uid}" for s in passing[1:])
    return best, notes
