"""Ingest never loses a file silently, turns padding into air, and never shows raw control characters.

Issue 12, items 2 (nothing silently dropped), 7 (PixelPaddingValue) and 10 (charset, control characters).
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
from dicom_fixtures import pydicom_file, pydicom_series_dir
from pydicom.uid import ImplicitVRLittleEndian

import dicom_io.dicom_series as series_mod
from dicom_io import (
    SeriesSelectionError,
    StudyInfo,
    UnreadableFileError,
    Volume,
    find_series,
    read_image,
    read_nifti,
    read_nrrd,
    read_series,
    write_nrrd,
)
from dicom_io.text import printable
from pipelines.cli import EXIT_BAD_INPUT, main
from pipelines.export import export_explanation

ESC_DESCRIPTION = "Thorax\x1b[31mRED\x1b[0m"


def pydicom_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the fast header path off, so every file goes through pydicom."""
    monkeypatch.setattr(series_mod, "scan_header", lambda data: None)


@pytest.fixture(params=["fast", "pydicom"])
def path_kind(request, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pydicom":
        pydicom_only(monkeypatch)
    return request.param


def deny(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a file or folder unreadable: chmod 000, and for root (who ignores modes) fail its opening."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    target = str(path)
    if path.is_dir():
        real_scandir = os.scandir

        def scandir(p: object = ".") -> object:
            if os.fspath(p) == target:  # type: ignore[arg-type]
                raise PermissionError(13, "Permission denied", target)
            return real_scandir(p)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        real_open = builtins.open

        def opener(file: object, *a: object, **kw: object) -> object:
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) == target:
                raise PermissionError(13, "Permission denied", target)
            return real_open(file, *a, **kw)  # type: ignore[call-overload]

        monkeypatch.setattr(builtins, "open", opener)


# ---------------------------------------------------------------------------------------------------------------
# Item 2: anything that cannot be read and is not obviously something else is an error naming it
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 100])
@pytest.mark.parametrize("names", ["dcm", "no suffix"])
def test_empty_or_cut_file_at_either_end_is_an_error(make_series, cut: int, names: str) -> None:
    file_names = [f"IM{i:04d}" for i in range(12)] if names == "no suffix" else None
    d, _ = make_series(file_names=file_names)
    files = sorted(d.iterdir())
    first, last = files[0], files[-1]
    first.write_bytes(first.read_bytes()[:cut])
    last.write_bytes(last.read_bytes()[:cut])
    with pytest.raises(UnreadableFileError) as e:
        read_series(d)
    msg = str(e.value)
    # every such file is named, not only the first, and the way out is said
    assert str(first) in msg and str(last) in msg and "--skip-unreadable" in msg
    assert "2 file(s)" in msg


def test_skip_unreadable_keeps_a_warning_listing_every_file(make_series, caplog) -> None:
    d, vol = make_series()
    files = sorted(d.iterdir())
    files[-1].write_bytes(b"")
    files[0].write_bytes(files[0].read_bytes()[:64])
    with caplog.at_level(logging.WARNING):
        v = read_series(d, skip_unreadable=True)
    assert v.shape[0] == 10
    np.testing.assert_array_equal(v.array, vol.array[1:-1])
    (w,) = [w for w in v.warnings if w.startswith("SKIPPED UNREADABLE")]
    assert files[0].name in w and files[-1].name in w and "2 file(s)" in w
    assert "SKIPPED UNREADABLE" in caplog.text
    assert [s.n_frames for s in find_series(d, skip_unreadable=True)] == [10]
    with pytest.raises(UnreadableFileError):
        find_series(d)


def test_unreadable_file_and_folder_are_both_named(make_series, tmp_path: Path, monkeypatch) -> None:
    d, _ = make_series(folder=tmp_path / "study" / "a")
    make_series(folder=tmp_path / "study" / "b" / "more", seed=1)
    locked_file = sorted(d.iterdir())[3]
    locked_dir = tmp_path / "study" / "b"
    try:
        deny(locked_file, monkeypatch)
        deny(locked_dir, monkeypatch)
        with pytest.raises(UnreadableFileError) as e:
            read_series(tmp_path / "study")
    finally:
        locked_dir.chmod(0o755)
        locked_file.chmod(0o644)
    msg = str(e.value)
    assert str(locked_file) in msg and str(locked_dir) in msg and "cannot be listed" in msg


def test_obviously_other_files_are_skipped_not_errors(make_series, caplog) -> None:
    d, vol = make_series()
    for name in ("notes.txt", "table.csv", "meta.json", "scan.nii.gz", "report.pdf", "viewer.exe"):
        (d / name).write_bytes(os.urandom(40))  # binary content: the suffix alone decides
    (d / ".DS_Store").write_bytes(os.urandom(64))
    (d / "Thumbs.db").write_bytes(os.urandom(64))
    (d / "README").write_text("Images of the study, exported by the PACS.\n")  # plain text, no suffix
    shutil.copy(pydicom_series_dir("dicomdirtests", "DICOMDIR"), d / "DICOMDIR")
    shutil.copy(pydicom_series_dir("dicomdirtests", "DICOMDIR"), d / "INDEX")  # a DICOMDIR under another name
    shutil.copy(pydicom_file("test-SR.dcm"), d / "SR000001.dcm")  # a structured report: not an image
    with caplog.at_level(logging.INFO, logger="dicom_io.dicom_series"):
        v = read_series(d)
    np.testing.assert_array_equal(v.array, vol.array)
    assert "SR000001.dcm" in caplog.text and "INDEX" in caplog.text
    assert not v.warnings


@pytest.mark.parametrize("content", [b"", os.urandom(200), b"\x00" * 100])
def test_dcm_or_suffixless_junk_is_an_error(make_series, content: bytes) -> None:
    d, _ = make_series()
    (d / "IM9999").write_bytes(content)
    (d / "extra.dcm").write_bytes(content)
    with pytest.raises(UnreadableFileError) as e:
        read_series(d)
    assert "IM9999" in str(e.value) and "extra.dcm" in str(e.value)


def test_preamble_less_dataset_is_still_read(make_series) -> None:
    d, vol = make_series()
    p = sorted(d.iterdir())[-1]
    ds = pydicom.dcmread(p)
    p.unlink()
    ds.preamble = None
    del ds.file_meta
    ds.save_as(d / "RAW0012", implicit_vr=True, little_endian=True)  # no preamble, no DICM, no file meta
    assert (d / "RAW0012").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_series(d).array, vol.array)


def test_partial_folders_are_never_entered(make_series, tmp_path: Path) -> None:
    d, vol = make_series(folder=tmp_path / "in")
    # an interrupted medxai run left a half-written series (another series UID, one file cut) here
    partial = d / ".derived.p123habcdefr00aa11.partial"
    make_series(folder=partial / "SC", seed=2)
    victim = sorted((partial / "SC").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:50])
    np.testing.assert_array_equal(read_series(d).array, vol.array)
    assert len(find_series(d)) == 1


def test_cli_ingest_skip_unreadable(make_series, tmp_path: Path, capsys) -> None:
    d, vol = make_series(shape=(6, 32, 32))
    last = sorted(d.iterdir())[-1]
    last.write_bytes(b"")
    out = tmp_path / "x.nrrd"
    assert main(["ingest", str(d), "-o", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert last.name in err and "--skip-unreadable" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["ingest", str(d), "-o", str(out), "--skip-unreadable"]) == 0
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert "WARNING" in err and "SKIPPED UNREADABLE" in err and last.name in err
    data, header = nrrd.read(str(out))
    assert data.shape == (32, 32, 5)
    assert last.name in header["medxai_warnings"]  # the warning travels with the output
    assert any(last.name in w for w in read_image(out).warnings)


# ---------------------------------------------------------------------------------------------------------------
# Item 7: PixelPaddingValue voxels are air, not -3024 HU
# ---------------------------------------------------------------------------------------------------------------


def padded_series(
    make_series: Callable[..., tuple[Path, Volume]], *, pad_limit: int | None = None, **kw: object
) -> tuple[Path, Volume, np.ndarray]:
    """A CT series whose corners are padding: stored -2000 (intercept -1024, so -3024 HU if ignored).

    Returns (folder, the volume as written, the padding mask (z, y, x))."""
    shape = kw.pop("shape", (6, 32, 32))
    extra = {"PixelPaddingValue": -2000}
    if pad_limit is not None:
        extra["PixelPaddingRangeLimit"] = pad_limit
    info = StudyInfo(uid_seed=f"pad{pad_limit}", extra=extra, **kw.pop("info_kw", {}))  # type: ignore[arg-type]
    z, y, x = np.indices(shape)
    mask = (y < 4) & (x < 5) | (y >= shape[1] - 3)
    d, vol = make_series(shape=shape, info=info)
    stored = np.where(mask, -2000, np.rint(vol.array + 1024)).astype(np.int16)
    if pad_limit is not None:  # the range [-2000, pad_limit] is padding too
        stored[:, -1, :] = pad_limit
    for k, p in enumerate(sorted(d.iterdir())):
        ds = pydicom.dcmread(p)
        assert ds.PixelRepresentation == 1 and float(ds.RescaleIntercept) == -1024
        ds.PixelData = stored[k].tobytes()
        ds.save_as(p)
    return d, vol, mask


def test_padding_becomes_air_on_both_paths(make_series, path_kind: str) -> None:
    d, vol, mask = padded_series(make_series)
    v = read_series(d)
    assert np.all(v.array[mask] == -1000)
    np.testing.assert_array_equal(v.array[~mask], vol.array[~mask])
    assert f"{int(mask.sum())} voxels of PixelPaddingValue -2000 set to -1000 HU" in " ".join(v.notes)
    assert v.warnings == ()  # correct handling of padding is a note, not a warning


def test_padding_range_limit_and_chosen_value(make_series, path_kind: str) -> None:
    d, vol, mask = padded_series(make_series, pad_limit=-1990)
    mask[:, -1, :] = True
    v = read_series(d, padding_value=-1024)
    assert np.all(v.array[mask] == -1024)
    np.testing.assert_array_equal(v.array[~mask], vol.array[~mask])
    assert "PixelPaddingValue -2000 to -1990" in " ".join(v.notes)


def test_padding_in_implicit_vr_files(make_series, path_kind: str) -> None:
    # Implicit VR: PixelPaddingValue's VR (US or SS) must come from PixelRepresentation.
    d, vol, mask = padded_series(make_series)
    for p in d.iterdir():
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(p, implicit_vr=True, little_endian=True)
    v = read_series(d)
    assert np.all(v.array[mask] == -1000)
    np.testing.assert_array_equal(v.array[~mask], vol.array[~mask])


def test_padding_of_a_non_ct_series_is_the_lowest_other_value(make_series, path_kind: str) -> None:
    d, vol, mask = padded_series(make_series)
    for p in d.iterdir():
        ds = pydicom.dcmread(p)
        ds.Modality = "MR"
        ds.save_as(p)
    v = read_series(d)
    low = vol.array[~mask].min()
    assert np.all(v.array[mask] == low)
    np.testing.assert_array_equal(v.array[~mask], vol.array[~mask])


def test_series_without_padding_is_unchanged(make_series) -> None:
    d, vol = make_series(shape=(4, 32, 32))
    v = read_series(d)
    np.testing.assert_array_equal(v.array, vol.array)
    assert not v.warnings and not v.notes


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_cli_ingest_writes_padding_as_air(make_series, tmp_path: Path, capsys, suffix: str) -> None:
    d, vol, mask = padded_series(make_series)
    out = tmp_path / f"x{suffix}"
    assert main(["ingest", str(d), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "PixelPaddingValue -2000 set to -1000 HU" in captured.out  # a note in the summary
    assert "WARNING" not in captured.err
    v = read_image(out)
    # written volumes round-trip (z, y, x); compare on the written grid
    assert np.all(v.array[mask] == -1000) and v.array.min() > -1100  # no -3024 HU anywhere
    np.testing.assert_array_equal(v.array[~mask], vol.array[~mask])
    assert main(["ingest", str(d), "-o", str(tmp_path / f"y{suffix}"), "--padding-value", "-1024"]) == 0
    assert np.all(read_image(tmp_path / f"y{suffix}").array[mask] == -1024)


# ---------------------------------------------------------------------------------------------------------------
# Item 10: text decoded with SpecificCharacterSet; control characters never reach the terminal
# ---------------------------------------------------------------------------------------------------------------


def two_series(make_series: Callable[..., tuple[Path, Volume]], folder: Path, first: str, second: str) -> None:
    make_series(folder=folder / "a", shape=(3, 16, 16), info=StudyInfo(series_description=first, uid_seed="a"))
    make_series(
        folder=folder / "b",
        shape=(3, 16, 16),
        seed=1,
        info=StudyInfo(series_description=second, uid_seed="b", series_number=2),
    )


def test_utf8_description_on_both_paths(make_series, tmp_path: Path, path_kind: str) -> None:
    two_series(make_series, tmp_path / "s", "Müller Thorax", "Ærø Ŝpine")  # written as ISO_IR 192
    assert sorted(s.description for s in find_series(tmp_path / "s")) == ["Müller Thorax", "Ærø Ŝpine"]
    with pytest.raises(SeriesSelectionError) as e:
        read_series(tmp_path / "s")
    assert "'Müller Thorax'" in str(e.value) and "'Ærø Ŝpine'" in str(e.value)


def test_latin1_description_on_both_paths(make_series, tmp_path: Path, path_kind: str) -> None:
    d, _ = make_series(shape=(2, 16, 16), info=StudyInfo(series_description="Müller Thorax", uid_seed="l1"))
    for p in d.iterdir():
        ds = pydicom.dcmread(p)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.save_as(p)  # pydicom encodes the text in latin-1 now
    assert b"M\xfcller" in next(d.iterdir()).read_bytes()
    assert [s.description for s in find_series(d)] == ["Müller Thorax"]


def test_control_characters_are_escaped_in_listings(make_series, tmp_path: Path, path_kind: str) -> None:
    two_series(make_series, tmp_path / "s", ESC_DESCRIPTION, "plain")
    with pytest.raises(SeriesSelectionError) as e:
        read_series(tmp_path / "s")
    assert "\x1b" not in str(e.value) and "Thorax\\x1b[31mRED" in str(e.value)
    # the data itself keeps the original value
    assert ESC_DESCRIPTION in [s.description for s in find_series(tmp_path / "s")]


def test_control_characters_never_reach_the_cli(make_series, tmp_path: Path, capsys) -> None:
    two_series(make_series, tmp_path / "s", ESC_DESCRIPTION, "plain")
    assert main(["ingest", str(tmp_path / "s")]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out and "Thorax\\x1b[31mRED" in captured.err
    d, _ = make_series(
        shape=(2, 16, 16),
        info=StudyInfo(series_description=ESC_DESCRIPTION, patient_name="Evil\x1b[2J^\u202eX", uid_seed="e"),
    )
    assert main(["ingest", str(d), "-o", str(tmp_path / "e.nrrd")]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out and "\u202e" not in captured.out
    assert "Thorax\\x1b[31mRED" in captured.out and "Evil\\x1b[2J" in captured.out


def test_printable() -> None:
    assert printable("Müller\tThorax\r\n\x00\x7f\x9b[2J\u202e") == "Müller\\x09Thorax\\x0d\\x0a\\x00\\x7f\\x9b[2J\\u202e"
    assert printable(None) == "" and printable(12) == "12"


def test_nifti_and_nrrd_keep_the_padding_note(make_series, tmp_path: Path) -> None:
    d, _, _ = padded_series(make_series)
    assert main(["ingest", str(d), "-o", str(tmp_path / "p.nii.gz")]) == 0
    assert any("PixelPaddingValue" in n for n in read_nifti(tmp_path / "p.nii.gz").notes)
    assert main(["ingest", str(d), "-o", str(tmp_path / "p.nrrd")]) == 0
    assert any("PixelPaddingValue" in n for n in read_nrrd(tmp_path / "p.nrrd").notes)


def test_export_reads_its_source_strictly_or_with_skip_unreadable(make_series, tmp_path: Path, capsys) -> None:
    d, vol = make_series(folder=tmp_path / "ct", shape=(5, 24, 24))
    last = sorted(d.iterdir())[-1]
    last.write_bytes(b"")
    heat = tmp_path / "heat.nrrd"
    write_nrrd(Volume(np.ones((4, 24, 24), np.float32), vol.spacing, vol.origin, vol.direction), heat)
    args = ["export", "--source", str(d), "--heatmap", str(heat), "-o", str(tmp_path / "out"), "--no-seg", "--no-slicer"]
    assert main(args) == EXIT_BAD_INPUT
    assert last.name in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    res = export_explanation(d, heat, tmp_path / "out", segmentation=False, slicer=False, skip_unreadable=True)
    summary = json.loads(res.summary.read_text())
    assert any(last.name in w for w in summary["reader_warnings"])
