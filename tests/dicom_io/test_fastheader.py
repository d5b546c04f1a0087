"""The fast header path must read exactly what pydicom reads, and hand anything unusual to pydicom."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import pydicom_file, pydicom_series_dir

import dicom_io.dicom_series as series_mod
from dicom_io import read_series
from dicom_io.fastheader import scan_header


def read_with_pydicom_only(source, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        m.setattr(series_mod, "scan_header", lambda data: None)
        return read_series(source)


@pytest.mark.parametrize(
    "source",
    [
        lambda: pydicom_series_dir("dicomdirtests", "98892001", "CT5N"),
        lambda: pydicom_file("CT_small.dcm"),
        lambda: pydicom_file("693_UNCI.dcm"),
        lambda: pydicom_file("MR_small_implicit.dcm"),
        lambda: pydicom_file("MR_small.dcm"),
    ],
)
def test_fast_path_equals_pydicom_path(source, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source()
    fast = read_series(src)
    slow = read_with_pydicom_only(src, monkeypatch)
    np.testing.assert_array_equal(fast.array, slow.array)
    assert np.allclose(fast.affine_lps, slow.affine_lps)
    assert fast.source == slow.source


def test_fast_path_is_taken_for_plain_files_and_values_match_pydicom() -> None:
    p = pydicom_file("CT_small.dcm")
    h = scan_header(Path(p).read_bytes())
    assert h is not None
    ds = pydicom.dcmread(p)
    assert h.values["SOPInstanceUID"] == ds.SOPInstanceUID
    assert h.values["ImagePositionPatient"] == [float(v) for v in ds.ImagePositionPatient]
    assert h.values["Rows"] == ds.Rows and h.values["BitsStored"] == ds.BitsStored
    assert h.pixel_length == len(ds.PixelData)


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "eCT_Supplemental.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"])
def test_unusual_files_go_to_pydicom(name: str) -> None:
    assert scan_header(Path(pydicom_file(name)).read_bytes()) is None


def test_garbage_and_truncation_do_not_crash_the_scanner() -> None:
    data = Path(pydicom_file("CT_small.dcm")).read_bytes()
    rng = np.random.default_rng(0)
    for cut in rng.integers(0, len(data), 50):
        h = scan_header(data[:cut])
        assert h is None or h.pixel_length < h.stated_length or cut == len(data)
    for _ in range(50):
        noisy = bytearray(data)
        for i in rng.integers(132, 1000, 5):
            noisy[i] = int(rng.integers(0, 256))
        scan_header(bytes(noisy))  # must return (a header or None), never raise


def test_ingest_benchmark_script_runs(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "ingest.py"
    out = tmp_path / "r.json"
    r = subprocess.run(
        [
            sys.executable,
            str(bench),
            "--slices",
            "6",
            "--size",
            "64",
            "--repeats",
            "1",
            "--no-monai",
            "--process-repeats",
            "1",
            "--phantom-size",
            "test",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "ratio_medxai_over_simpleitk" in result
    for vol in result["whole_process"]:  # the whole-process part ran both formats on both volumes
        for suffix in (".nrrd", ".nii.gz"):
            assert vol[suffix]["median_s"]["medxai"] > 0 and vol[suffix]["median_s"]["simpleitk"] > 0
    assert len(result["whole_process"]) == 2 and "whole-process ingest -> .nrrd" in r.stdout
