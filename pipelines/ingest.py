"""The ingest job: read a DICOM folder/file, NIfTI, NRRD or photograph, summarise it, write it out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dicom_io import Photo, Volume, read_image, write_volume
from dicom_io.photo import write_photo
from dicom_io.text import printable

from .paths import check_output_outside_input

__all__ = ["ingest", "summarize", "orientation_codes"]

_AXES = (("L", "R"), ("P", "A"), ("S", "I"))


def orientation_codes(direction: np.ndarray) -> tuple[str, float]:
    """LPS codes of the index axes (x, y, z), e.g. ``"LPS"``, and the largest angle (degrees) by which
    an axis leaves its nearest patient axis (0 for a non-oblique volume)."""
    codes = []
    worst = 0.0
    for c in range(3):
        v = direction[:, c] / np.linalg.norm(direction[:, c])
        a = int(np.argmax(np.abs(v)))
        codes.append(_AXES[a][0] if v[a] > 0 else _AXES[a][1])
        worst = max(worst, float(np.degrees(np.arccos(min(1.0, abs(v[a]))))))
    return "".join(codes), worst


def summarize(obj: Volume | Photo) -> dict[str, Any]:
    """Key facts about a loaded image, for printing (values are plain Python types).

    Text from DICOM attributes (names, descriptions) goes through `dicom_io.text.printable`, so a
    control character in a file never reaches the user's terminal raw.
    """
    src = obj.source
    ps = src.patient_study if src is not None else {}
    out: dict[str, Any] = {
        "patient": f"{ps.get('PatientName', '')} (ID {ps.get('PatientID', '')})" if ps else None,
        "study": (
            f"{src.study_instance_uid} {ps.get('StudyDate', '')} {ps.get('StudyDescription', '')}".strip()
            if src is not None and src.study_instance_uid
            else None
        ),
        "series": (
            f"{src.series_instance_uid} #{src.series_number} {src.modality or ''} '{src.series_description or ''}'"
            if src is not None and src.series_instance_uid
            else None
        ),
    }
    if isinstance(obj, Volume):
        codes, oblique = orientation_codes(obj.direction)
        a = obj.array
        out.update(
            kind="volume",
            shape_zyx=list(obj.shape),
            spacing_xyz_mm=[round(s, 4) for s in obj.spacing],
            origin_lps_mm=[round(o, 3) for o in obj.origin],
            orientation=codes + (f" (oblique, up to {oblique:.1f} deg)" if oblique > 0.5 else ""),
            value_range=[float(a.min()), float(a.max())],
            mean=float(a.mean()),
        )
        if obj.notes:
            out["notes"] = [printable(n) for n in obj.notes]
        if obj.warnings:
            out["warnings"] = [printable(w) for w in obj.warnings]
    else:
        a = obj.array
        out.update(
            kind="photo",
            shape_hw=list(obj.shape),
            pixel_spacing_mm=list(obj.pixel_spacing) if obj.pixel_spacing else None,
            value_range=[int(a.min()), int(a.max())],
            mean_rgb=[round(float(m), 1) for m in a.reshape(-1, 3).mean(axis=0)],
        )
    return {k: printable(v) if isinstance(v, str) else v for k, v in out.items() if v is not None}


def ingest(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    *,
    series_uid: str | None = None,
    allow_gaps: bool = False,
    skip_unreadable: bool = False,
    padding_value: float | None = None,
    compress: bool = True,
) -> tuple[Volume | Photo, Path | None]:
    """Read ``source`` and write it to ``out`` (``.nii.gz``/``.nrrd`` for volumes, ``.png`` for photos).

    The output's extension is checked before anything is read, so a wrong name fails fast. The
    volume's warnings (accepted gaps, skipped unreadable files, padding replaced) are written into the
    output's header (see `dicom_io.write_volume`) as well as returned.

    Parameters
    ----------
    source : path
        What `dicom_io.read_image` reads.
    out : path, optional
        Output file; None only reads.
    series_uid, allow_gaps, skip_unreadable, padding_value
        Passed to `dicom_io.read_image`.
    compress : bool
        gzip-compressed volume (default); False writes NRRD raw (NIfTI: name the output ``.nii``).
    """
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        name = out_path.name.lower()
        if not name.endswith((".nii", ".nii.gz", ".nrrd", ".png")):
            raise ValueError(f"Output '{out_path}' must end in .nii.gz or .nrrd (volumes) or .png (photographs).")
        if not compress and name.endswith(".nii.gz"):
            raise ValueError(f"--no-compression with '{out_path}': .nii.gz is gzip by name; name the output .nii instead.")
        check_output_outside_input(out_path, source, option="-o/--out")
    obj = read_image(
        source,
        series_uid=series_uid,
        allow_gaps=allow_gaps,
        skip_unreadable=skip_unreadable,
        padding_value=padding_value,
    )
    if out_path is None:
        return obj, None
    if isinstance(obj, Volume):
        if out_path.name.lower().endswith(".png"):
            raise ValueError(f"'{source}' is a volume; write it to .nii.gz or .nrrd, not '{out_path.name}'.")
        write_volume(obj, out_path, compress=compress)
    else:
        if not out_path.name.lower().endswith(".png"):
            raise ValueError(f"'{source}' is a photograph; write it to .png, not '{out_path.name}'.")
        write_photo(obj, out_path)
    return obj, out_path
