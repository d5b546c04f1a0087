"""Export safety (issue 12): nothing lost, nothing mixed up.

One folder per patient / study / series+method that never collides; an existing export is replaced only
with --overwrite; the whole export appears at once or not at all; never into its own source; outputs
follow the umask.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest

from atomicfs import is_partial
from dicom_io import StudyInfo, Volume, read_series, write_ct_series, write_nifti
from pipelines.cli import EXIT_BAD_INPUT, main
from pipelines.errors import StepError
from pipelines.export import export_explanation, export_folder, export_photo_explanation

SHAPE = (4, 32, 32)


def _volume() -> Volume:
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    hu = np.where((x - 16) ** 2 + (y - 16) ** 2 < 120, 40.0, -850.0).astype(np.float32)
    return Volume(hu, (0.8, 0.8, 2.5), (-12.0, -12.0, 50.0))


def _heat() -> np.ndarray:
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    h = np.exp(-(((x - 18) ** 2 + (y - 14) ** 2) / 20.0 + ((z - 1.5) ** 2) / 2.0))
    return np.where(h < 1e-3, 0.0, h).astype(np.float32)


def _series(folder: Path, patient_id: str = "P1", **kw: object) -> Path:
    """A CT series; StudyDate/StudyID/SeriesDescription fixed so that only the UIDs and PatientID differ."""
    info = StudyInfo(patient_id=patient_id, study_date="20240101", study_id="1", series_description="CT chest", **kw)  # type: ignore[arg-type]
    write_ct_series(_volume(), folder, info)
    return folder


def _heat_file(src: Path, tmp: Path) -> Path:
    ct = read_series(src)
    return write_nifti(ct.replace(array=_heat(), source=None), tmp / f"heat_{src.name}.nii.gz")


def _export_cli(src: Path, heat: Path, out: Path, *extra: str) -> int:
    return main(
        ["export", "--source", str(src), "--heatmap", str(heat), "-o", str(out), "--method", "GradCAM", "--no-slicer", *extra]
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _exports(out: Path) -> list[Path]:
    """Every export folder (holding export.json) under ``out``."""
    return sorted(p.parent for p in out.rglob("export.json") if not is_partial(p.relative_to(out)))


def _squash(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines (and paths) in the error paragraph


# --------------------------------------------------------------------------------------------------
# 1. no collisions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second",
    [("12345/1", "12345 1"), ("Müller", "Möller")],
    ids=["slash-vs-space", "umlauts"],
)
def test_patients_whose_ids_sanitise_alike_get_separate_folders(tmp_path: Path, first: str, second: str) -> None:
    out = tmp_path / "out"
    written = {}
    for i, pid in enumerate((first, second)):
        src = _series(tmp_path / f"src{i}", patient_id=pid)
        assert _export_cli(src, _heat_file(src, tmp_path), out) == 0
        written[pid] = src
    folders = _exports(out)
    assert len(folders) == 2, folders
    patients = {f.relative_to(out).parts[0] for f in folders}
    assert len(patients) == 2, patients  # not merely different study folders: different patient folders
    for f in folders:
        # each export is complete and holds the objects of its own patient only
        dcm = [pydicom.dcmread(p, stop_before_pixels=True) for p in f.rglob("*.dcm")]
        assert {d.PatientID for d in dcm} in ({first}, {second})
        summary = json.loads((f / "export.json").read_text())
        pid = dcm[0].PatientID
        assert summary["source_series"] == read_series(written[pid]).source.series_instance_uid


def test_two_series_of_one_study_with_the_same_description_do_not_collide(tmp_path: Path) -> None:
    out = tmp_path / "out"
    study = "1.2.826.0.1.3680043.8.498.1"
    srcs = [_series(tmp_path / f"s{i}", study_instance_uid=study, series_number=i + 1) for i in range(2)]
    for s in srcs:
        assert _export_cli(s, _heat_file(s, tmp_path), out) == 0
    folders = _exports(out)
    assert len(folders) == 2 and folders[0].parent == folders[1].parent  # same study folder, two exports
    got = {json.loads((f / "export.json").read_text())["source_series"] for f in folders}
    assert got == {read_series(s).source.series_instance_uid for s in srcs}
    for f in folders:
        assert len(list((f / "SC_overlay").glob("*.dcm"))) >= 1 and (f / "PM.dcm").is_file()


def test_folder_names_are_readable_hashed_and_never_hidden_or_options() -> None:
    a = export_folder("/o", {"PatientID": "-rf"}, "1.2.3", ".hidden", "1.2.3.4\x00m")
    assert all(not part.startswith((".", "-")) for part in a.parts[2:])
    assert a.parts[2].startswith("rf_") and len(a.parts[2].rsplit("_", 1)[1]) == 8
    # the issuer of the PatientID is part of the patient's identity
    b = export_folder("/o", {"PatientID": "-rf", "IssuerOfPatientID": "HOSP-B"}, "1.2.3", ".hidden", "1.2.3.4\x00m")
    assert a.parts[2] != b.parts[2] and a.parts[3:] == b.parts[3:]


def test_photo_exports_of_two_image_files_do_not_collide(tmp_path: Path) -> None:
    from PIL import Image

    from dicom_io import read_photo

    heat = np.zeros((24, 32), np.float32)
    heat[8:16, 10:20] = 1.0
    written = []
    for name in ("left.jpg", "right.jpg"):
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[..., 0] = 120 if name == "left.jpg" else 90
        Image.fromarray(rgb).save(tmp_path / name)
        written += export_photo_explanation(read_photo(tmp_path / name), heat, tmp_path / "o", method="RISE")
    assert len(written) == 2 and written[0].parent != written[1].parent
    assert all(p.is_file() for p in written)
    with pytest.raises(ValueError, match="overwrite"):
        export_photo_explanation(read_photo(tmp_path / "left.jpg"), heat, tmp_path / "o", method="RISE")


# --------------------------------------------------------------------------------------------------
# 2. never replace without --overwrite
# --------------------------------------------------------------------------------------------------


def test_existing_export_is_refused_without_overwrite_and_replaced_with_it(tmp_path: Path, capsys) -> None:
    src = _series(tmp_path / "src")
    heat = _heat_file(src, tmp_path)
    out = tmp_path / "out"
    assert _export_cli(src, heat, out) == 0
    (folder,) = _exports(out)
    before = _files(out)
    capsys.readouterr()
    assert _export_cli(src, heat, out) == EXIT_BAD_INPUT
    err = _squash(capsys.readouterr().err)
    assert "--overwrite" in err and _squash(str(folder)) in err and "Traceback" not in err
    assert _files(out) == before  # untouched, and no partial left
    assert _export_cli(src, heat, out, "--overwrite") == 0
    after = _files(out)
    assert sorted(after) == sorted(before) and after != before  # new objects (new UIDs), same layout
    assert _exports(out) == [folder]
    assert not [p for p in out.rglob("*") if is_partial(p.relative_to(out))]


# --------------------------------------------------------------------------------------------------
# 3b. all or nothing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_failure_in_the_pm_step_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import pipelines.export as ex

    src = _series(tmp_path / "src")
    out = tmp_path / "out"

    def broken(*a: object, **k: object) -> Path:
        raise exc

    monkeypatch.setattr(ex, "write_parametric_map", broken)
    with pytest.raises(StepError if isinstance(exc, Exception) else KeyboardInterrupt):
        export_explanation(src, _heat(), out, method="GradCAM", counterfactual=_volume().array)
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no SC series that looks finished, no partial
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_result_paths_point_at_the_final_folder(tmp_path: Path) -> None:
    src = _series(tmp_path / "src")
    res = export_explanation(src, _heat(), tmp_path / "out", method="GradCAM", counterfactual=_volume().array)
    assert res.out_dir.is_dir() and not is_partial(res.out_dir.relative_to(tmp_path))
    paths = [*res.dicom_files(), res.slicer_bundle, res.summary]
    assert all(p is not None and p.exists() and p.is_relative_to(res.out_dir) for p in paths)
    summary = json.loads(res.summary.read_text())  # type: ignore[union-attr]
    assert summary["files"]["parametric_map"] == "PM.dcm" and summary["files"]["slicer_bundle"] == "slicer"


# --------------------------------------------------------------------------------------------------
# 5. never into the source
# --------------------------------------------------------------------------------------------------


def test_output_equal_to_or_inside_the_source_is_refused(tmp_path: Path, capsys) -> None:
    src = _series(tmp_path / "src")
    heat = _heat_file(src, tmp_path)
    (tmp_path / "link").symlink_to(src, target_is_directory=True)
    before = _files(src)
    for out in (src, src / "exports", tmp_path / "link", tmp_path / "link" / "x", src / ".." / "src"):
        capsys.readouterr()
        assert _export_cli(src, heat, out) == EXIT_BAD_INPUT, out
        assert "never writes into its input" in " ".join(capsys.readouterr().err.split())
    assert _files(src) == before
    # a Volume read from the folder is checked against the folder its files are in
    with pytest.raises(ValueError, match="inside the input folder"):
        export_explanation(read_series(src), _heat(), src / "exports")
    assert _files(src) == before


# --------------------------------------------------------------------------------------------------
# 13. permissions follow the umask
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_export_modes_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    src = _series(tmp_path / "src")
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        export_explanation(src, _heat(), out, method="GradCAM")
    finally:
        os.umask(old)
    entries = list(out.rglob("*"))
    assert any(p.is_file() for p in entries) and any(p.is_dir() for p in entries)
    for p in entries:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (dir_mode if p.is_dir() else file_mode), (p, oct(mode))


# --------------------------------------------------------------------------------------------------
# overlay options
# --------------------------------------------------------------------------------------------------


def test_alpha_and_threshold_reach_the_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import pipelines.export as ex

    src = _series(tmp_path / "src")
    heat = _heat_file(src, tmp_path)
    seen: list[tuple[float, float]] = []
    real = ex.render_overlay

    def spy(*a: object, **k: object) -> np.ndarray:
        seen.append((k["alpha"], k["threshold"]))  # type: ignore[arg-type]
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(ex, "render_overlay", spy)
    assert _export_cli(src, heat, tmp_path / "out", "--alpha", "0.3", "--threshold", "0.2") == 0
    assert seen and set(seen) == {(0.3, 0.2)}
    # the renderer's ranges: alpha in (0, 1], threshold in [0, 1); refused before any work
    for opt, value in (("--alpha", "1.5"), ("--alpha", "0"), ("--threshold", "1"), ("--threshold", "-0.1")):
        capsys.readouterr()
        assert _export_cli(src, heat, tmp_path / "bad", opt, value) == EXIT_BAD_INPUT
        assert opt in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_ingest_shares_the_check(tmp_path: Path, capsys) -> None:
    """One check for every job (pipelines.paths): ingest refuses a NIfTI written into the DICOM folder."""
    src = _series(tmp_path / "src")
    before = _files(src)
    assert main(["ingest", str(src), "-o", str(src / "ct.nii.gz")]) == EXIT_BAD_INPUT
    assert "inside the input folder" in " ".join(capsys.readouterr().err.split())
    assert _files(src) == before
    assert main(["ingest", str(src), "-o", str(tmp_path / "ct.nii.gz")]) == 0
