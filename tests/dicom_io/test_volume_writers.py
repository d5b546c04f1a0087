"""The NRRD / NIfTI writers: bit-exact voxels and exact geometry as SimpleITK (the reader 3D Slicer
uses), nibabel and pynrrd read them, compressed or not, with medxai's warnings and notes kept."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_fixtures import rotation

from dicom_io import Volume, read_image, write_nifti, write_volume
from pipelines.cli import EXIT_BAD_INPUT, main


def _volume(tilt: bool) -> Volume:
    rng = np.random.default_rng(3)
    # non-integer float32 values, incl. extremes: any rounding or dtype change would show
    arr = rng.normal(-300, 400, (6, 17, 23)).astype(np.float32)
    arr[0, 0, 0], arr[1, 2, 3] = np.finfo(np.float32).max, np.finfo(np.float32).tiny
    direction = rotation("z", 20) @ rotation("x", -10)
    if tilt:  # gantry tilt: the slice axis is sheared, not orthogonal to the rows and columns
        k = direction[:, 2] + 0.3 * direction[:, 1]
        direction = np.column_stack([direction[:, 0], direction[:, 1], k / np.linalg.norm(k)])
    return Volume(
        arr,
        (0.71, 0.83, 2.5),
        (-12.5, 40.25, 7.0),
        direction,
        warnings=("GAP ACCEPTED: test",),
        notes=("12 voxels of PixelPaddingValue -2000 set to -1000 HU",),
    )


def _sitk_world(img: sitk.Image, ijk: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(img.TransformIndexToPhysicalPoint(ijk))


@pytest.mark.parametrize("tilt", [False, True], ids=["oblique", "gantry-tilt"])
@pytest.mark.parametrize("name,compress", [("v.nrrd", True), ("v.nrrd", False), ("v.nii.gz", True), ("v.nii", True)])
def test_written_volume_is_bit_exact_in_simpleitk_nibabel_and_medxai(
    tmp_path: Path, name: str, compress: bool, tilt: bool
) -> None:
    v = _volume(tilt)
    nifti = name.endswith((".nii", ".nii.gz"))
    if nifti and tilt:
        with pytest.warns(UserWarning, match="Write .nrrd"):
            p = write_volume(v, tmp_path / name, compress=compress)
    else:
        p = write_volume(v, tmp_path / name, compress=compress)
    img = sitk.ReadImage(str(p))
    assert img.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayViewFromImage(img).tobytes() == v.array.tobytes()  # (z, y, x), bit for bit
    if not (nifti and tilt):  # ITK cannot read a sheared NIfTI affine (the warning above says so)
        for ijk in [(0, 0, 0), (22, 0, 0), (5, 16, 5), (11, 3, 2)]:
            assert np.allclose(_sitk_world(img, ijk), (v.affine_lps @ [*ijk, 1])[:3], atol=1e-4)
    back = read_image(p)
    assert isinstance(back, Volume)
    assert back.array.tobytes() == v.array.tobytes()
    assert np.allclose(back.affine_lps, v.affine_lps, atol=1e-5)
    assert back.warnings == v.warnings and back.notes == v.notes
    if nifti:
        data = np.asarray(nib.load(str(p)).dataobj)
        assert data.dtype == np.float32 and data.transpose(2, 1, 0).tobytes() == v.array.tobytes()
    else:
        data, header = nrrd.read(str(p), index_order="C")
        assert data.dtype == np.float32 and data.tobytes() == v.array.tobytes()
        assert header["space"] == "left-posterior-superior"
        assert header["encoding"] == ("gzip" if compress else "raw")
        assert header["medxai_warnings"] == '["GAP ACCEPTED: test"]'


def test_uncompressed_nrrd_is_larger_and_compressed_is_gzip(tmp_path: Path) -> None:
    v = Volume(np.zeros((20, 64, 64), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    small = write_volume(v, tmp_path / "a.nrrd")
    raw = write_volume(v, tmp_path / "b.nrrd", compress=False)
    assert raw.stat().st_size > v.array.nbytes > 20 * small.stat().st_size


def test_uncompressed_nifti_is_asked_for_by_name(tmp_path: Path) -> None:
    v = _volume(False)
    with pytest.raises(ValueError, match=r"name it \.nii"):
        write_volume(v, tmp_path / "v.nii.gz", compress=False)
    assert not list(tmp_path.iterdir())


def test_cli_no_compression(tmp_path: Path, capsys) -> None:
    from dicom_io import StudyInfo, write_ct_series

    rng = np.random.default_rng(0)
    src = tmp_path / "ct"
    write_ct_series(
        Volume(np.rint(rng.normal(-500, 200, (4, 16, 16))).astype(np.float32), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0)),
        src,
        StudyInfo(uid_seed="nc"),
    )
    assert main(["ingest", str(src), "-o", str(tmp_path / "raw.nrrd"), "--no-compression"]) == 0
    assert nrrd.read_header(str(tmp_path / "raw.nrrd"))["encoding"] == "raw"
    capsys.readouterr()
    assert main(["ingest", str(src), "-o", str(tmp_path / "x.nii.gz"), "--no-compression"]) == EXIT_BAD_INPUT
    assert ".nii instead" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_nifti_bytes_equal_nibabels_own_writer(tmp_path: Path, dtype: type) -> None:
    # the header comes from nibabel and the voxels are streamed after it: the file must be what
    # nib.save writes for the same image, once decompressed
    import gzip

    v = _volume(False)
    if dtype is np.uint8:
        v = v.replace(array=(v.array > 0).astype(np.float32))
    p = write_nifti(v, tmp_path / "v.nii.gz", dtype=dtype)
    img = nib.Nifti1Image(v.array.transpose(2, 1, 0).astype(dtype), v.affine_ras)
    img.set_sform(v.affine_ras, code=1)
    img.set_qform(v.affine_ras, code=1)
    img.header.set_xyzt_units("mm")
    img.header.extensions.append(
        nib.nifti1.Nifti1Extension(
            6,
            b'{"medxai_warnings": ["GAP ACCEPTED: test"], "medxai_notes": '
            b'["12 voxels of PixelPaddingValue -2000 set to -1000 HU"]}',
        )
    )
    nib.save(img, str(tmp_path / "ref.nii"))
    assert gzip.decompress(p.read_bytes()) == (tmp_path / "ref.nii").read_bytes()
