"""`medxai ingest` end to end: summaries, written files, and bad input as one paragraph + exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from dicom_io import StudyInfo, Volume, read_image, write_ct_series
from pipelines.cli import EXIT_BAD_INPUT, main

CT5N = os.path.join(os.path.dirname(get_testdata_file("CT_small.dcm")), "dicomdirtests", "98892001", "CT5N")


def small_series(folder: Path, **info: object) -> Volume:
    rng = np.random.default_rng(0)
    vol = Volume(np.rint(rng.normal(-500, 200, (6, 32, 32))).astype(np.float32), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0))
    write_ct_series(vol, folder, StudyInfo(uid_seed="cli", **info))  # type: ignore[arg-type]
    return vol


def test_ingest_ct5n_prints_summary_and_writes_nifti(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ct.nii.gz"
    assert main(["ingest", CT5N, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in ["98890234", "SmartScore", "[5, 16, 16]", "LPS", "-888.0", "wrote"]:
        assert expected in text
    img = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(sorted(str(p) for p in Path(CT5N).iterdir())[-1])  # most inferior slice = origin
    assert img.GetSize() == (16, 16, 5)
    assert np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)


def test_ingest_fundus_photo_to_png(tmp_path: Path, capsys) -> None:
    import skimage

    src = os.path.join(os.path.dirname(skimage.__file__), "data", "retina.jpg")
    assert main(["ingest", src, "-o", str(tmp_path / "r.png")]) == 0
    assert "photo" in capsys.readouterr().out
    assert read_image(tmp_path / "r.png").shape == (1411, 1411)


def test_ingest_enhanced_ct_to_nrrd(tmp_path: Path, capsys) -> None:
    assert main(["ingest", get_testdata_file("eCT_Supplemental.dcm"), "-o", str(tmp_path / "e.nrrd")]) == 0
    assert "[2, 512, 512]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "/no/such/folder", "-o", "x.nii.gz"], "does not exist"),
        (["ingest", CT5N, "-o", "out.mha"], "must end in .nii.gz or .nrrd"),
        (["ingest", os.path.dirname(CT5N), "-o", "x.nii.gz"], "holds 2 image series"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_code(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    args = [a if not a.endswith((".gz", ".mha")) else str(tmp_path / a) for a in args]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_truncated_and_gap_errors_name_files(tmp_path: Path, capsys) -> None:
    d = tmp_path / "s"
    small_series(d)
    files = sorted(d.iterdir())
    files[2].unlink()
    assert main(["ingest", str(d), "-o", str(tmp_path / "a.nii.gz")]) == EXIT_BAD_INPUT
    assert "CT000002.dcm" in capsys.readouterr().err
    assert main(["ingest", str(d), "-o", str(tmp_path / "a.nii.gz"), "--allow-gaps"]) == 0
    assert "GAP ACCEPTED" in capsys.readouterr().err
    files[4].write_bytes(files[4].read_bytes()[:-100])
    assert main(["ingest", str(d), "-o", str(tmp_path / "b.nii.gz")]) == EXIT_BAD_INPUT
    assert "CT000005.dcm" in capsys.readouterr().err
    assert not (tmp_path / "b.nii.gz").exists()


def test_hostile_values_are_printed_literally(tmp_path: Path, capsys) -> None:
    d = tmp_path / "evil"
    small_series(d, patient_id="../../etc", patient_name="[bold red]Boom[/]")
    assert main(["ingest", str(d), "-o", str(tmp_path / "e.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "../../etc" in out and "[bold red]Boom[/]" in out  # rich markup not interpreted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.nii.gz", "evil"]


def test_output_equal_to_input_is_refused(tmp_path: Path, capsys) -> None:
    p = tmp_path / "v.nii.gz"
    from dicom_io import write_nifti

    write_nifti(Volume(np.zeros((2, 2, 2), np.float32), (1, 1, 1), (0, 0, 0)), p)
    before = p.read_bytes()
    assert main(["ingest", str(p), "-o", str(p)]) == EXIT_BAD_INPUT
    assert p.read_bytes() == before


def test_installed_script_exit_code_and_debug(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "medxai"
    r = subprocess.run([str(exe), "ingest", str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == EXIT_BAD_INPUT and "Traceback" not in r.stderr and "does not exist" in r.stderr
    r = subprocess.run([str(exe), "--debug", "ingest", str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == EXIT_BAD_INPUT and "Traceback" in r.stderr
    r = subprocess.run([str(exe), "ingest", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--series" in r.stdout and "--allow-gaps" in r.stdout
