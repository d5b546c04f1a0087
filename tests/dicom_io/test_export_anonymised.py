"""Exports from de-identified sources: Type 2 attributes deleted or emptied by a de-identifier must not stop
an export, and every derived object must still be valid DICOM (those attributes present, empty)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import StudyInfo, Volume, write_ct_series, write_photo_dicom
from dicom_io.errors import DicomIOError
from dicom_io.export import (
    TYPE2_PATIENT_STUDY,
    Legend,
    complete_source_header,
    read_source_headers,
    render_overlay,
    write_parametric_map,
    write_photo_secondary_capture,
    write_secondary_capture,
    write_segmentation,
)

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")

#: Type 2 (and 2C) attributes of the Patient, General Study, General Series and General Equipment modules.
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",  # Patient
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",  # General Study
    "SeriesNumber",
    "Laterality",
    "PatientPosition",  # General Series
    "Manufacturer",  # General Equipment
)


def _deidentify(files: list[Path], how: str) -> None:
    """Delete (``how='delete'``) or empty (``'empty'``) every Type 2 attribute of each file, in place."""
    for f in files:
        ds = pydicom.dcmread(f)
        for kw in TYPE2:
            if how == "delete":
                if kw in ds:
                    delattr(ds, kw)
            else:
                setattr(ds, kw, None)  # present, zero length
        ds.save_as(f)


def _dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def _check(path: Path, study_uid: str) -> None:
    errors = _dciodvfy_errors(path)
    assert errors == [], (path.name, errors)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == study_uid
    for kw in TYPE2_PATIENT_STUDY:  # Type 2: present, empty (nothing invented)
        assert kw in ds, (path.name, kw)
        assert ds[kw].value in (None, ""), (path.name, kw, ds[kw].value)


@pytest.fixture(params=["delete", "empty"])
def anonymised(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    z, y, x = np.mgrid[0:4, 0:32, 0:32]
    hu = np.where((x - 16) ** 2 + (y - 16) ** 2 < 100, 40.0, -850.0).astype(np.float32)
    info = StudyInfo(
        patient_id="REAL-ID",
        patient_name="Real^Name",
        patient_birth_date="19500101",
        study_date="20240101",
        study_time="101010",
        accession_number="ACC",
        series_number=7,
    )
    files = write_ct_series(Volume(hu, (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), tmp_path / "src", info)
    photo = write_photo_dicom(
        np.full((24, 32, 3), 90, np.uint8),
        tmp_path / "photo" / "eye.dcm",
        StudyInfo(patient_id="REAL-ID", study_date="20240101"),
        laterality="L",
    )
    _deidentify([*files, photo], request.param)
    heat = np.zeros(hu.shape, np.float32)
    heat[1:3, 10:20, 10:20] = 1.0
    return {"files": files, "photo": photo, "hu": hu, "heat": heat, "how": request.param, "out": tmp_path / "out"}


@needs_dciodvfy
def test_writers_export_anonymised_source(anonymised: dict) -> None:
    headers = read_source_headers(anonymised["files"])
    study = str(headers[0].StudyInstanceUID)
    out: Path = anonymised["out"]
    frames = np.stack(
        [
            render_overlay(anonymised["hu"][k], anonymised["heat"][k], Legend("m", "t", 0.9, 0.1), min_width=64)
            for k in range(len(headers))
        ]
    )
    written = [
        *write_secondary_capture(frames, headers, out / "sc"),
        *write_secondary_capture(frames, headers, out / "scmf", multiframe=True),
        write_parametric_map(anonymised["heat"], headers, out / "pm.dcm"),
        write_segmentation(anonymised["heat"] > 0.5, headers, out / "seg.dcm"),
    ]
    assert len(written) == len(headers) + 3
    for f in written:
        _check(f, study)
    photo_header = read_source_headers([anonymised["photo"]])[0]
    photo_sc = write_photo_secondary_capture(frames[0], out / "photo", source=photo_header)
    _check(photo_sc[0], str(photo_header.StudyInstanceUID))
    # the sources were read, never changed: a deleted attribute is still absent from the header and file
    if anonymised["how"] == "delete":
        assert "PatientBirthDate" not in headers[0] and "PatientID" not in photo_header
        assert "PatientBirthDate" not in pydicom.dcmread(anonymised["files"][0])


def test_complete_source_header_copies_and_names_missing_uids(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.SOPInstanceUID, ds.SOPClassUID = "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2"
    ds.PatientName = "Kept^Name"
    done = complete_source_header(ds)
    assert done is not ds and "PatientBirthDate" not in ds  # input untouched
    assert done.PatientName == "Kept^Name"
    assert all(kw in done and done[kw].value in (None, "") for kw in TYPE2_PATIENT_STUDY if kw != "PatientName")
    full = complete_source_header(done)
    assert full is done  # nothing missing: no copy
    del ds.StudyInstanceUID
    with pytest.raises(DicomIOError, match="StudyInstanceUID"):
        complete_source_header(ds)


@needs_dciodvfy
def test_export_job_on_anonymised_source(anonymised: dict) -> None:
    """The whole export job (SC, PM, SEG) completes on a de-identified series and writes valid objects."""
    from pipelines.export import export_explanation

    res = export_explanation(
        Path(anonymised["files"][0]).parent,
        anonymised["heat"],
        anonymised["out"],
        method="RISE",
        target="t",
        score_before=0.8,
        score_after=0.2,
        slicer=False,
    )
    files = res.dicom_files()
    assert res.overlay_files and res.parametric_map and res.segmentation
    study = str(pydicom.dcmread(anonymised["files"][0]).StudyInstanceUID)
    for f in files:
        _check(Path(f), study)
