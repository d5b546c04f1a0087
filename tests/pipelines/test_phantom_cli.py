"""`medxai phantom`: cohorts written as real DICOM (dciodvfy-clean), read identically by medxai and
SimpleITK, with masks on the CT grid and a label table."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_io import read_image, read_nifti, read_series
from pipelines.cli import main

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")


def dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stderr + r.stdout).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def ct_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ph") / "ct"
    assert main(["phantom", "ct", "-o", str(out), "-n", "20", "--seed", "1"]) == 0
    return out


def test_ct_cohort_layout_and_labels(ct_cohort: Path) -> None:
    cases = sorted(p for p in ct_cohort.iterdir() if p.is_dir())
    assert len(cases) == 20
    rows = list(csv.DictReader(open(ct_cohort / "labels.csv")))
    assert sorted(r["case_id"] for r in rows) == [p.name for p in cases]
    labels = [int(r["label"]) for r in rows]
    assert 0 < sum(labels) < 20  # both classes present
    assert not list(ct_cohort.glob(".*partial*"))


@needs_dciodvfy
def test_ct_series_pass_dciodvfy(ct_cohort: Path) -> None:
    for case in sorted(p for p in ct_cohort.iterdir() if p.is_dir()):
        files = sorted((case / "dicom").iterdir())
        for f in (files[0], files[len(files) // 2]):
            assert dciodvfy_errors(f) == [], f


def test_ct_series_read_identically_by_medxai_and_sitk_with_masks_on_grid(ct_cohort: Path) -> None:
    for case in sorted(p for p in ct_cohort.iterdir() if p.is_dir()):
        v = read_series(case / "dicom")
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(case / "dicom")))
        img = r.Execute()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.float32), v.array)
        assert np.allclose(img.GetOrigin(), v.origin, atol=1e-4) and np.allclose(img.GetSpacing(), v.spacing, atol=1e-5)
        for name in ("biomarker", "distractor", "marker", "lungs"):
            m = read_nifti(case / "masks" / f"{name}.nii.gz")
            assert m.shape == v.shape and np.allclose(m.affine_lps, v.affine_lps, atol=1e-4)
            assert set(np.unique(m.array)) <= {0.0, 1.0}
        lungs = read_nifti(case / "masks" / "lungs.nii.gz").array > 0
        assert np.median(v.array[lungs]) < -600  # the lung mask sits on lung parenchyma in the DICOM


def test_same_seed_same_pixels_and_uids(tmp_path: Path, ct_cohort: Path) -> None:
    assert main(["phantom", "ct", "-o", str(tmp_path / "again"), "-n", "2", "--seed", "1"]) == 0
    first = sorted(p for p in ct_cohort.iterdir() if p.is_dir())
    for case in sorted(p for p in (tmp_path / "again").iterdir() if p.is_dir()):
        assert case.name in [p.name for p in first]
        a, b = read_series(case / "dicom"), read_series(ct_cohort / case.name / "dicom")
        np.testing.assert_array_equal(a.array, b.array)
        assert a.source.series_instance_uid == b.source.series_instance_uid


def test_fundus_cohort(tmp_path: Path) -> None:
    out = tmp_path / "fu"
    assert main(["phantom", "fundus", "-o", str(out), "-n", "3", "--seed", "2", "--shortcut", "1"]) == 0
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "labels.csv"))}
    assert len(rows) == 3
    for case in sorted(p for p in out.iterdir() if p.is_dir()):
        png, dcm = read_image(case / "image.png"), read_image(case / "image.dcm")
        np.testing.assert_array_equal(png.array, dcm.array)
        assert dcm.source.modality == "OP"
        lesions = read_image(case / "masks" / "lesions.png").array[..., 0] > 0
        assert lesions.shape == png.shape
        assert (lesions.sum() > 0) == (int(rows[case.name]["grade"]) > 0)
        marker = read_image(case / "masks" / "marker.png").array[..., 0] > 0
        assert bool(marker.any()) == bool(int(rows[case.name]["has_marker"]))
        assert int(rows[case.name]["has_marker"]) == int(rows[case.name]["label"])  # shortcut 1: marker = label
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(case / "image.dcm") == []


def test_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["phantom", "ct", "-o", str(tmp_path / "x"), "--size", "huge"]) == 2
    err = capsys.readouterr().err
    assert "huge" in err and "Traceback" not in err
    assert main(["phantom", "ct", "-o", str(tmp_path / "x"), "--shortcut", "2"]) == 2
