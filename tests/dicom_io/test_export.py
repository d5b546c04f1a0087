"""DICOM/Slicer export: validity (dciodvfy, dcentvfy, dcmqi), references, geometry, safety of outputs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pydicom
import pytest

from dicom_io import StudyInfo, Volume, read_nrrd, read_series, write_ct_series, write_nifti
from dicom_io.export import (
    Legend,
    read_source_headers,
    render_overlay,
    threshold_heatmap,
    write_parametric_map,
    write_photo_secondary_capture,
    write_secondary_capture,
    write_segmentation,
    write_slicer_bundle,
)

HOSTILE_ID = "../../etc"
HOSTILE_DESC = "CT/chest ../x"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")


def _blob(shape: tuple[int, int, int], centre: tuple[float, float, float] = (4, 30, 40)) -> np.ndarray:
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    h = np.exp(-(((x - centre[2]) ** 2 + (y - centre[1]) ** 2) / 80.0 + ((z - centre[0]) ** 2) / 2.0))
    h[h < 1e-3] = 0.0
    return h.astype(np.float32)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """8 slices of 64x64, oblique-free, with a hostile PatientID and SeriesDescription."""
    root = tmp_path_factory.mktemp("export")
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    hu = np.where((x - 32) ** 2 + (y - 32) ** 2 < 500, 40.0, -850.0).astype(np.float32)
    vol = Volume(hu, (0.7, 0.7, 2.5), (-22.0, -30.0, 100.0))
    info = StudyInfo(
        patient_id=HOSTILE_ID,
        patient_name="Test^Patient",
        series_description=HOSTILE_DESC,
        study_description="export test",
        accession_number="ACC1",
        series_number=3,
    )
    files = write_ct_series(vol, root / "src", info)
    ct = read_series(root / "src")
    heat = _blob(ct.shape)
    return {"root": root, "files": files, "ct": ct, "heat": heat, "headers": read_source_headers(ct.source.files)}


def _hashes(files: list[Path]) -> dict[str, str]:
    return {str(f): hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}


def _dciodvfy_errors(path: Path) -> tuple[list[str], list[str]]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def _frames(study: dict, idx: list[int]) -> np.ndarray:
    leg = Legend("TestMethod", "score up", 0.1, 0.9)
    return np.stack([render_overlay(study["ct"].array[k], study["heat"][k], leg, vmin=0, vmax=1, min_width=128) for k in idx])


def test_render_overlay_shapes_and_window() -> None:
    img = np.full((16, 20), -600.0)
    heat = np.zeros((16, 20))
    heat[8, 10] = 1.0
    out = render_overlay(img, heat, Legend("m", "t", 0.2, 0.8), min_width=64)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] > 16 * 4 and out.shape[1] > 20 * 4  # enlarged, plus colour bar and legend
    assert "RESEARCH USE ONLY" in Legend().lines()[-1]
    with pytest.raises(ValueError, match="same|one shape"):
        render_overlay(img, heat[:-1], Legend())
    with pytest.raises(ValueError, match="window"):
        render_overlay(img, heat, Legend(), window="nope")


@needs_dciodvfy
@pytest.mark.parametrize("multiframe", [False, True])
def test_secondary_capture_valid_in_source_study(study: dict, tmp_path: Path, multiframe: bool) -> None:
    idx = [3, 4, 5]
    src = [study["headers"][k] for k in idx]
    files = write_secondary_capture(
        _frames(study, idx),
        src,
        tmp_path,
        source_frames=[study["ct"].source.frames[k] for k in idx],
        derivation_description="test",
        multiframe=multiframe,
        slice_locations=[1.0, 2.0, 3.0],
    )
    assert len(files) == (1 if multiframe else 3)
    for f in files:
        errors, _ = _dciodvfy_errors(f)
        assert errors == [], errors
        ds = pydicom.dcmread(f)
        ref = study["headers"][0]
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert ds.SOPClassUID == ("1.2.840.10008.5.1.4.1.1.7.4" if multiframe else "1.2.840.10008.5.1.4.1.1.7")
        assert ds.StudyInstanceUID == ref.StudyInstanceUID
        assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
        for kw in ("PatientName", "PatientID", "StudyDate", "StudyID", "AccessionNumber", "StudyDescription"):
            assert ds.get(kw) == ref.get(kw), kw
        assert ds.BurnedInAnnotation == "YES" and ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
        refs = {it.ReferencedSOPInstanceUID for it in ds.SourceImageSequence}
        assert refs <= {h.SOPInstanceUID for h in src} and refs
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.SeriesInstanceUID
        assert ds.DerivationDescription == "test"
    if multiframe:
        assert int(pydicom.dcmread(files[0]).NumberOfFrames) == 3
        assert pydicom.dcmread(files[0]).pixel_array.shape[0] == 3


@needs_dciodvfy
def test_parametric_map_valid_and_dcmqi_geometry(study: dict, tmp_path: Path) -> None:
    pm = write_parametric_map(study["heat"], study["headers"], tmp_path / "pm.dcm", description="m: t")
    errors, warnings = _dciodvfy_errors(pm)
    assert errors == [], errors
    ds = pydicom.dcmread(pm)
    assert ds.FrameOfReferenceUID == study["headers"][0].FrameOfReferenceUID
    assert "FrameAnatomySequence" in ds.SharedFunctionalGroupsSequence[0]
    tool = shutil.which("paramap2itkimage") or str(Path(sys.executable).parent / "paramap2itkimage")
    if not Path(tool).exists():
        pytest.skip("dcmqi (paramap2itkimage) not installed: pip install dcmqi")
    out = tmp_path / "dcmqi"
    out.mkdir()
    r = subprocess.run(
        [tool, "--inputDICOM", str(pm), "--outputDirectory", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in study["files"]])
    ct = reader.Execute()
    img = sitk.ReadImage(str(next(out.glob("*.nrrd"))))
    assert img.GetSize() == ct.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), ct.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(img.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(img.GetDirection(), ct.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), study["heat"], atol=1e-6)


@needs_dciodvfy
def test_segmentation_valid(study: dict, tmp_path: Path) -> None:
    mask = threshold_heatmap(study["heat"], 0.5)
    assert mask.any()
    seg = write_segmentation(mask, study["headers"], tmp_path / "seg.dcm")
    errors, _ = _dciodvfy_errors(seg)
    assert errors == [], errors
    ds = pydicom.dcmread(seg)
    assert ds.SegmentationType == "BINARY" and ds.StudyInstanceUID == study["headers"][0].StudyInstanceUID


def test_photo_sc_from_jpeg_is_marked_unlinked(tmp_path: Path) -> None:
    frame = np.zeros((40, 60, 3), np.uint8)
    files = write_photo_secondary_capture(frame, tmp_path, source_file_name="/data/eye 1.jpg")
    ds = pydicom.dcmread(files[0])
    assert ds.PatientID == "MEDXAI-UNLINKED" and "UNLINKED" in str(ds.PatientName)
    assert "eye 1.jpg" in ds.StudyDescription and "/data" not in ds.DerivationDescription
    if shutil.which("dciodvfy"):
        errors, _ = _dciodvfy_errors(files[0])
        assert errors == [], errors


def test_slicer_bundle(study: dict, tmp_path: Path) -> None:
    ct = study["ct"]
    bundle = write_slicer_bundle(
        ct, tmp_path / "b", heatmaps={"grad/cam": study["heat"]}, counterfactuals={"cf": ct.array + 5.0}, info={"method": "m"}
    )
    names = sorted(p.name for p in bundle.iterdir())
    assert names == [
        "counterfactual_cf.nrrd",
        "ct.nrrd",
        "heatmap_grad_cam.nrrd",
        "load_in_slicer.py",
        "manifest.json",
        "medxai_colors.ctbl",
    ]
    for f in ("ct.nrrd", "heatmap_grad_cam.nrrd", "counterfactual_cf.nrrd"):
        v = read_nrrd(bundle / f)
        assert v.shape == ct.shape
        np.testing.assert_allclose(v.affine_lps, ct.affine_lps, atol=1e-5)
    np.testing.assert_allclose(read_nrrd(bundle / "heatmap_grad_cam.nrrd").array, study["heat"])
    table = [ln for ln in (bundle / "medxai_colors.ctbl").read_text().splitlines() if not ln.startswith("#")]
    assert len(table) == 256 and len(table[5].split()) == 6
    # run the loader against a stand-in for Slicer's API
    fake = mock.MagicMock()
    with mock.patch.dict(sys.modules, {"slicer": fake}):
        script = bundle / "load_in_slicer.py"
        exec(compile(script.read_text(), str(script), "exec"), {"__file__": str(script), "__name__": "__main__"})
    assert fake.util.loadVolume.call_count == 3
    fake.util.setSliceViewerLayers.assert_called_once()
    with pytest.raises(ValueError, match="shape"):
        write_slicer_bundle(ct, tmp_path / "bad", heatmaps={"h": study["heat"][:-1]})
    assert not (tmp_path / "bad").exists()


def test_interrupted_write_leaves_no_finished_file(study: dict, tmp_path: Path) -> None:
    real_save = pydicom.dataset.Dataset.save_as

    def broken(self, filename, *a, **k):  # write half a file, then die
        Path(filename).write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 100)
        raise KeyboardInterrupt

    with mock.patch.object(pydicom.dataset.Dataset, "save_as", broken):
        with pytest.raises(KeyboardInterrupt):
            write_parametric_map(study["heat"], study["headers"], tmp_path / "pm.dcm")
        with pytest.raises(KeyboardInterrupt):
            write_secondary_capture(_frames(study, [4]), [study["headers"][4]], tmp_path / "sc")
    assert pydicom.dataset.Dataset.save_as is real_save
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_export_job_cli(study: dict, tmp_path: Path) -> None:
    """CLI end to end: hostile names sanitised, sources untouched, every object valid and consistent."""
    from pipelines.cli import main

    ct = study["ct"]
    before = _hashes(study["files"])
    heat_path = write_nifti(ct.replace(array=study["heat"], source=None), tmp_path / "heat.nii.gz")
    cf_path = write_nifti(ct.replace(array=ct.array + 200.0 * study["heat"], source=None), tmp_path / "cf.nii.gz")
    out = tmp_path / "out"
    code = main(
        [
            "export",
            "--source",
            str(study["root"] / "src"),
            "--heatmap",
            str(heat_path),
            "-o",
            str(out),
            "--counterfactual",
            str(cf_path),
            "--method",
            "Grad/CAM",
            "--target",
            "malignancy up",
            "--score-before",
            "0.12",
            "--score-after",
            "0.87",
            "--multiframe",
        ]
    )
    assert code == 0
    assert _hashes(study["files"]) == before
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    assert not any(".partial" in p.name for p in files)
    # OUT/<patient>_<hash>/<study>_<hash>/<series>_<method>_<hash>/: one folder each, names sanitised
    (patient_dir,) = out.iterdir()
    assert patient_dir.name.startswith("etc_")
    (study_dir,) = patient_dir.iterdir()
    (sub,) = study_dir.iterdir()
    assert sub.name.startswith("CT_chest_") and "_Grad_CAM_" in sub.name, sub.name
    names = sorted(p.name for p in sub.iterdir())
    assert names == ["PM.dcm", "SC_counterfactual", "SC_overlay", "SEG.dcm", "export.json", "slicer"], names
    dicoms = sorted(p for p in sub.rglob("*.dcm"))
    assert len(dicoms) == 4  # overlay MF, counterfactual MF, PM, SEG
    if shutil.which("dciodvfy"):
        for f in dicoms:
            errors, _ = _dciodvfy_errors(f)
            assert errors == [], (f, errors)
    if shutil.which("dcentvfy"):
        r = subprocess.run(
            ["dcentvfy", *map(str, study["files"]), *map(str, dicoms)], capture_output=True, text=True, timeout=120
        )
        text = r.stdout + r.stderr
        assert "Error" not in text, text
    ds = [pydicom.dcmread(f) for f in dicoms]
    assert {d.StudyInstanceUID for d in ds} == {study["headers"][0].StudyInstanceUID}
    assert len({d.SeriesInstanceUID for d in ds}) == 4
    # single-frame variant, only non-zero slices, no SEG/slicer
    code = main(
        [
            "export",
            "--source",
            str(study["root"] / "src"),
            "--heatmap",
            str(heat_path),
            "-o",
            str(tmp_path / "out2"),
            "--no-seg",
            "--no-slicer",
        ]
    )
    assert code == 0
    sc = sorted((tmp_path / "out2").rglob("SC_overlay*/*.dcm"))
    assert len(sc) == int((study["heat"].reshape(8, -1).max(axis=1) > 1e-3).sum())


def test_export_refuses_off_grid_heatmap(study: dict, tmp_path: Path) -> None:
    from pipelines.cli import main

    ct = study["ct"]
    moved = ct.replace(array=study["heat"], source=None, origin=(0.0, 0.0, 0.0))
    p = write_nifti(moved, tmp_path / "moved.nii.gz")
    code = main(["export", "--source", str(study["root"] / "src"), "--heatmap", str(p), "-o", str(tmp_path / "o")])
    assert code == 2
    assert not (tmp_path / "o").exists()


def test_fundus_export_jpeg_then_dicom_source(tmp_path: Path) -> None:
    """A photo from a JPEG gets a new, clearly unlinked study; a DICOM photo's SC joins its study."""
    from PIL import Image

    from dicom_io import read_photo
    from pipelines.export import export_photo_explanation

    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 120
    Image.fromarray(rgb).save(tmp_path / "eye.jpg")
    photo = read_photo(tmp_path / "eye.jpg")
    heat = np.zeros((48, 64), np.float32)
    heat[20:30, 30:40] = 1.0
    first = export_photo_explanation(photo, heat, tmp_path / "o1", method="RISE", target="DR grade 2")
    ds1 = pydicom.dcmread(first[0])
    assert ds1.PatientID == "MEDXAI-UNLINKED" and first[0].relative_to(tmp_path / "o1").parts[0].startswith("MEDXAI-UNLINKED_")
    # use that DICOM as a DICOM-sourced photo: the next SC joins its study and references it
    dphoto = read_photo(first[0])
    second = export_photo_explanation(
        dphoto, np.zeros(dphoto.shape, np.float32) + 0.5, tmp_path / "o2", method="RISE", target="DR grade 2"
    )
    ds2 = pydicom.dcmread(second[0])
    assert ds2.StudyInstanceUID == ds1.StudyInstanceUID and ds2.SeriesInstanceUID != ds1.SeriesInstanceUID
    assert ds2.SourceImageSequence[0].ReferencedSOPInstanceUID == ds1.SOPInstanceUID
    if shutil.which("dciodvfy"):
        for f in (first[0], second[0]):
            errors, _ = _dciodvfy_errors(f)
            assert errors == [], errors
    with pytest.raises(ValueError, match="heatmap shape"):
        export_photo_explanation(photo, heat[:-1], tmp_path / "o3")
