"""The README's demo command writes what it says, on bundled data only."""

from __future__ import annotations

from pathlib import Path


from dicom_io import read_image, read_series
from pipelines.cli import main


def test_demo_writes_ct_and_phantom_stack(tmp_path: Path, capsys) -> None:
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "phantom_stack_png" in out and "ct_nrrd" in out
    assert read_image(tmp_path / "demo" / "ct.nii.gz").shape == (5, 16, 16)
    strip = read_image(tmp_path / "demo" / "phantom_stack.png")
    assert strip.shape == (64, 256)
    # the phantom study is a readable CT series, and the basal slice shows the planted biomarker (red)
    dicom = next((tmp_path / "demo" / "phantom_ct").glob("*/dicom"))
    assert read_series(dicom).source.modality == "CT"
    red = (strip.array[..., 0].astype(int) - strip.array[..., 1]) > 60
    assert red[:, 192:].sum() > red[:, :64].sum()
