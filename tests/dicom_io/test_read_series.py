"""DICOM series reading: real files shipped by pydicom / pydicom-data, and generated edge cases,
compared with SimpleITK where SimpleITK reads the case correctly."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_fixtures import file_hashes, pydicom_file, pydicom_series_dir, rotation

from dicom_io import (
    GeometryError,
    MissingSliceError,
    SeriesSelectionError,
    StudyInfo,
    UnreadableFileError,
    Volume,
    find_series,
    read_image,
    read_series,
)


def sitk_series(folder: Path | str) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


def world_of_slices(v: Volume) -> np.ndarray:
    """(z, 3) LPS positions of each slice's first voxel."""
    return np.array([(v.affine_lps @ [0, 0, k, 1])[:3] for k in range(v.shape[0])])


def assert_same_as_sitk(v: Volume, img: sitk.Image, atol: float = 1e-3) -> None:
    """Same voxels at the same world positions (slice order may legitimately differ)."""
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    assert a.shape == v.shape
    assert np.allclose(np.asarray(img.GetSpacing()), v.spacing, atol=1e-4)
    d_sitk = np.asarray(img.GetDirection()).reshape(3, 3)
    assert np.allclose(d_sitk[:, :2], v.direction[:, :2], atol=1e-5)
    for k in range(v.shape[0]):
        p = (v.affine_lps @ [0, 0, k, 1])[:3]
        idx = img.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in p))
        kk = int(round(idx[2]))
        assert np.allclose(idx, (0, 0, kk), atol=atol), f"slice {k} at {p} is not on SimpleITK's grid ({idx})"
        np.testing.assert_array_equal(v.array[k], a[kk])


# ---------------------------------------------------------------------------------------------- real files


def test_ct_small_matches_sitk() -> None:
    p = pydicom_file("CT_small.dcm")
    v = read_image(p)
    assert isinstance(v, Volume) and v.shape == (1, 128, 128)
    assert_same_as_sitk(v, sitk.ReadImage(p))
    ds = pydicom.dcmread(p)
    assert v.source is not None
    assert v.source.frames[0].sop_instance_uid == ds.SOPInstanceUID
    assert v.source.patient_study["PatientID"] == ds.PatientID
    assert v.source.frame_of_reference_uid == ds.FrameOfReferenceUID


def test_ct5n_series_matches_sitk() -> None:
    d = pydicom_series_dir("dicomdirtests", "98892001", "CT5N")
    v = read_series(d)
    assert v.shape == (5, 16, 16)
    assert_same_as_sitk(v, sitk_series(d))
    # slices ordered along the normal (+z here): positions increase
    z = world_of_slices(v)[:, 2]
    assert np.all(np.diff(z) > 0)
    assert len(v.source.frames) == 5 and len(set(f.sop_instance_uid for f in v.source.frames)) == 5


def test_folder_with_scout_and_series_needs_a_choice() -> None:
    d = pydicom_series_dir("dicomdirtests", "98892001")
    with pytest.raises(SeriesSelectionError) as e:
        read_series(d)
    msg = str(e.value)
    assert "Scout" in msg and "SmartScore" in msg and "--series" in msg
    series = {s.description: s for s in find_series(d)}
    v = read_series(d, series["SmartScore - Gated 0.5 sec"].series_instance_uid)
    assert v.shape == (5, 16, 16)


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "693_UNCI.dcm", "693_J2KR.dcm", "693_UNCR.dcm"])
def test_693_files_match_sitk(name: str) -> None:
    p = pydicom_file(name)
    v = read_image(p)
    assert v.shape == (1, 512, 512)
    # These files have PixelPaddingValue -2000, which SimpleITK ignores (-3024 HU) and medxai reads as air.
    img = sitk.ReadImage(p)
    a = sitk.GetArrayFromImage(img)
    a[pydicom.dcmread(p).pixel_array[None] == -2000] = -1000
    air = sitk.GetImageFromArray(a)
    air.CopyInformation(img)
    assert_same_as_sitk(v, air)


def test_jpeg2000_decodes_to_the_uncompressed_reference() -> None:
    # pydicom-data's *_UNC* files are the decoded reference of the matching *_J2K* files.
    for j2k, unc in [("693_J2KR.dcm", "693_UNCR.dcm"), ("693_J2KI.dcm", "693_UNCI.dcm")]:
        np.testing.assert_array_equal(read_image(pydicom_file(j2k)).array, read_image(pydicom_file(unc)).array)


def test_enhanced_ct_uses_per_frame_geometry() -> None:
    p = pydicom_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(p)
    v = read_image(p)
    assert v.shape == (2, 512, 512)
    positions = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence)
    assert sorted(world_of_slices(v)[:, 2].tolist()) == pytest.approx(positions)
    assert v.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    # Row direction is -x in this file: the slice normal (row x col) is -z, so slices run inferiorly.
    assert np.allclose(v.direction[:, 0], [-1, 0, 0]) and np.allclose(v.direction[:, 2], [0, 0, -1])
    assert_same_as_sitk(v, sitk.ReadImage(p))
    # Frame 2 (z = -149) comes first along the -z normal; each slice keeps its frame number.
    assert [f.frame_number for f in v.source.frames] == [2, 1]
    # rescale applied from the shared functional groups (intercept -1024)
    raw = ds.pixel_array.astype(np.float32) - 1024
    np.testing.assert_array_equal(v.array[0], raw[1])
    np.testing.assert_array_equal(v.array[1], raw[0])


def test_truncated_compressed_file_from_pydicom_data_is_an_error() -> None:
    p = pydicom_file("emri_small_jpeg_2k_lossless_too_short.dcm")
    with pytest.raises(UnreadableFileError) as e:
        read_image(p)
    assert os.path.basename(p) in str(e.value)


# ---------------------------------------------------------------------------------------------- edge cases


def test_generated_series_matches_written_volume_and_sitk(make_series) -> None:
    d, vol = make_series()
    v = read_series(d)
    np.testing.assert_array_equal(v.array, vol.array)
    assert np.allclose(v.affine_lps, vol.affine_lps, atol=1e-4)
    assert_same_as_sitk(v, sitk_series(d))


def test_shuffled_file_names_and_instance_numbers(make_series, tmp_path: Path) -> None:
    names = [f"img_{i:03d}" for i in range(12)]
    random.Random(3).shuffle(names)
    d, vol = make_series(file_names=names)
    # scramble InstanceNumber too: order must come from positions only
    for p in d.iterdir():
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = random.Random(p.name).randint(1, 99)
        ds.save_as(p)
    v = read_series(d)
    np.testing.assert_array_equal(v.array, vol.array)


def test_feet_first_series(make_series) -> None:
    # Feet-first supine: the scanner's row direction is patient-left flipped; slices advance inferiorly.
    direction = np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]])
    d, vol = make_series(direction=direction, info=StudyInfo(patient_position="FFS", uid_seed="ffs"))
    v = read_series(d)
    np.testing.assert_array_equal(v.array, vol.array)
    assert np.allclose(v.affine_lps, vol.affine_lps, atol=1e-4)
    assert_same_as_sitk(v, sitk_series(d))


def test_oblique_series(make_series) -> None:
    direction = rotation("x", 25) @ rotation("z", 10)
    d, vol = make_series(direction=direction)
    v = read_series(d)
    assert np.allclose(v.direction, direction, atol=1e-5)
    np.testing.assert_array_equal(v.array, vol.array)
    assert_same_as_sitk(v, sitk_series(d))


def test_per_slice_rescale(make_series) -> None:
    rescale = [(1.0, -1024.0), (0.5, -2048.0), (2.0, -3000.0), (1.0, 0.0)] * 3
    d, vol = make_series(rescale=rescale)
    v = read_series(d)
    # slope 2 stores half-resolution values: allow the rounding of that slice only
    err = np.abs(v.array - vol.array).max(axis=(1, 2))
    assert np.all(err[[i for i, r in enumerate(rescale) if r[0] <= 1]] == 0)
    assert np.all(err <= 1.0)
    assert_same_as_sitk(v, sitk_series(d))


@pytest.mark.parametrize("compression", ["rle", "jpeg-ls", "jpeg2000"])
def test_compressed_series(make_series, compression: str) -> None:
    d, vol = make_series(shape=(4, 64, 64), compression=compression)
    ts = pydicom.dcmread(next(d.iterdir())).file_meta.TransferSyntaxUID
    assert ts.is_compressed
    v = read_series(d)
    np.testing.assert_array_equal(v.array, vol.array)


def test_missing_slice_is_an_error_naming_the_gap(make_series) -> None:
    d, vol = make_series()
    files = sorted(d.iterdir())
    files[5].unlink()
    with pytest.raises(MissingSliceError) as e:
        read_series(d)
    msg = str(e.value)
    assert "CT000005.dcm" in msg and "CT000007.dcm" in msg and "1 slice(s) missing" in msg and "--allow-gaps" in msg


def test_missing_slice_accepted_with_flag_warns_and_interpolates(make_series, caplog) -> None:
    d, vol = make_series()
    sorted(d.iterdir())[5].unlink()
    with caplog.at_level(logging.WARNING):
        v = read_series(d, allow_gaps=True)
    assert v.shape == vol.shape
    assert any("GAP ACCEPTED" in w for w in v.warnings) and "GAP ACCEPTED" in caplog.text
    assert v.source.frames[5] is None and v.source.frames[4] is not None
    np.testing.assert_allclose(v.array[5], 0.5 * (vol.array[4] + vol.array[6]), atol=1e-3)
    np.testing.assert_array_equal(v.array[6:], vol.array[6:])


def test_irregular_spacing_is_an_error(make_series) -> None:
    d, _ = make_series()
    p = sorted(d.iterdir())[3]
    ds = pydicom.dcmread(p)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.9
    ds.save_as(p)
    with pytest.raises(GeometryError, match="Irregular slice spacing"):
        read_series(d)


def test_duplicate_positions_are_an_error(make_series, tmp_path: Path) -> None:
    d, _ = make_series()
    src = sorted(d.iterdir())[2]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(d / "dup.dcm")
    with pytest.raises(GeometryError, match="same position"):
        read_series(d)


def test_two_series_in_one_folder(make_series, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    make_series(folder=folder / "a", info=StudyInfo(series_description="lung", uid_seed="a", series_number=2))
    _, vol_b = make_series(folder=folder / "b", seed=1, info=StudyInfo(series_description="soft", uid_seed="b", series_number=3))
    with pytest.raises(SeriesSelectionError) as e:
        read_series(folder)
    assert "'lung'" in str(e.value) and "'soft'" in str(e.value) and "12 slice(s)" in str(e.value)
    uid = {s.description: s.series_instance_uid for s in find_series(folder)}["soft"]
    np.testing.assert_array_equal(read_series(folder, uid).array, vol_b.array)
    with pytest.raises(SeriesSelectionError, match="not in"):
        read_series(folder, "1.2.3.4")


def test_truncated_file_is_named(make_series) -> None:
    d, _ = make_series()
    victim = sorted(d.iterdir())[7]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 500])
    with pytest.raises(UnreadableFileError) as e:
        read_series(d)
    assert victim.name in str(e.value) and "truncated" in str(e.value)
    victim.write_bytes(data[:400])  # cut inside the header
    with pytest.raises(UnreadableFileError) as e:
        read_series(d)
    assert victim.name in str(e.value)


def test_junk_files_are_skipped(make_series) -> None:
    d, vol = make_series()
    (d / "notes.txt").write_text("not dicom")
    (d / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (d / ".DS_Store").write_bytes(os.urandom(64))
    shutil.copy(pydicom_series_dir("dicomdirtests", "DICOMDIR"), d / "DICOMDIR")
    (d / "sub").mkdir()
    (d / "sub" / "README").write_text("hello")
    np.testing.assert_array_equal(read_series(d).array, vol.array)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SeriesSelectionError, match="No DICOM image series"):
        read_series(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SeriesSelectionError, match="1 non-DICOM"):
        read_series(tmp_path)


def test_nested_folders_are_searched(make_series, tmp_path: Path) -> None:
    d, vol = make_series(folder=tmp_path / "study" / "deep" / "er")
    np.testing.assert_array_equal(read_series(tmp_path / "study").array, vol.array)


def test_reading_never_modifies_the_input(make_series) -> None:
    d, _ = make_series()
    before = file_hashes(d)
    read_series(d)
    assert file_hashes(d) == before


def test_hostile_attribute_values_are_kept_as_data(make_series) -> None:
    info = StudyInfo(patient_id="../../etc/passwd", patient_name="[red]x[/red]^Evil", uid_seed="evil")
    d, _ = make_series(info=info)
    v = read_series(d)
    assert v.source.patient_study["PatientID"] == "../../etc/passwd"
