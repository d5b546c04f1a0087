"""NIfTI / NRRD geometry (checked against SimpleITK's reading of the written files) and photographs."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_fixtures import ct_like, pydicom_file, rotation

from atomicfs import atomic_path
from dicom_io import Photo, Volume, read_image, read_photo, safe_filename, write_nifti, write_nrrd, write_volume
from dicom_io.errors import UnreadableFileError


def oblique_volume() -> Volume:
    return Volume(ct_like((5, 20, 24)), (0.7, 0.8, 2.5), (-10.0, 20.0, 30.0), rotation("y", 30) @ rotation("x", -15))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_volume_round_trip_and_sitk_world_positions(tmp_path: Path, suffix: str) -> None:
    v = oblique_volume()
    p = tmp_path / f"v{suffix}"
    write_volume(v, p)
    w = read_image(p)
    assert isinstance(w, Volume)
    np.testing.assert_array_equal(w.array, v.array)
    assert np.allclose(w.affine_lps, v.affine_lps, atol=1e-5)
    # SimpleITK works in LPS whatever the file format: the same voxel must land at the same point.
    img = sitk.ReadImage(str(p))
    assert img.GetSize() == (24, 20, 5)
    for ijk in [(0, 0, 0), (23, 0, 0), (3, 19, 4), (10, 7, 2)]:
        assert np.allclose(img.TransformIndexToPhysicalPoint(ijk), (v.affine_lps @ [*ijk, 1])[:3], atol=1e-4)


def test_nifti_is_ras(tmp_path: Path) -> None:
    v = Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0), (10.0, 20.0, 30.0))
    write_nifti(v, tmp_path / "a.nii.gz")
    img = nib.load(str(tmp_path / "a.nii.gz"))
    # LPS (10, 20, 30) is RAS (-10, -20, 30); LPS +x (left) is RAS -x.
    assert np.allclose(img.affine[:3, 3], [-10, -20, 30])
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")


def test_nrrd_header_is_lps(tmp_path: Path) -> None:
    import nrrd

    write_nrrd(oblique_volume(), tmp_path / "a.nrrd")
    hdr = nrrd.read_header(str(tmp_path / "a.nrrd"))
    assert hdr["space"] == "left-posterior-superior"


def test_ras_nrrd_is_converted(tmp_path: Path) -> None:
    import nrrd

    data = np.arange(24, dtype=np.float32).reshape(4, 3, 2)  # (x, y, z)
    nrrd.write(
        str(tmp_path / "r.nrrd"),
        data,
        {"space": "right-anterior-superior", "space directions": np.eye(3), "space origin": np.array([1.0, 2.0, 3.0])},
        index_order="F",
    )
    v = read_image(tmp_path / "r.nrrd")
    # RAS (1, 2, 3) is LPS (-1, -2, 3); +i points to RAS right = LPS -x
    assert np.allclose(v.origin, (-1, -2, 3)) and np.allclose(v.direction[:, 0], [-1, 0, 0])
    assert v.array[1, 2, 3] == data[3, 2, 1]


def test_unwritable_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.nii\.gz"):
        write_volume(oblique_volume(), tmp_path / "v.mha")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value, expected",
    [
        ("../../etc/passwd", "etc_passwd"),
        ("..", "unnamed"),
        ("a/b\\c", "a_b_c"),
        ("Doe^John", "Doe_John"),
        ("\x00\n", "unnamed"),
        (".hidden", "hidden"),
    ],
)
def test_safe_filename(value: str, expected: str) -> None:
    assert safe_filename(value) == expected


def test_retina_jpeg_is_a_real_fundus_photo() -> None:
    import skimage

    p = os.path.join(os.path.dirname(skimage.__file__), "data", "retina.jpg")
    ph = read_image(p)
    assert isinstance(ph, Photo) and ph.array.dtype == np.uint8 and ph.array.shape == (1411, 1411, 3)
    r, g, b = ph.array.reshape(-1, 3).mean(axis=0)
    assert r > g > b  # fundus photographs are red-dominant
    assert ph.array[0, 0].max() < 30  # dark surround outside the field of view


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_rle.dcm", "SC_rgb.dcm"])
def test_dicom_photographs_are_rgb(name: str) -> None:
    ph = read_image(pydicom_file(name))
    assert isinstance(ph, Photo) and ph.shape == (100, 100)
    # These test images are colour bars; the top band is pure red in RGB (YBR must have been converted).
    top = ph.array[5, 50].astype(int)
    assert top[0] > 200 and top[1] < 40 and top[2] < 40
    assert ph.source is not None and ph.source.study_instance_uid


def test_truncated_jpeg_is_an_error(tmp_path: Path) -> None:
    import skimage

    src = Path(skimage.__file__).parent / "data" / "retina.jpg"
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(src.read_bytes()[:2000])
    with pytest.raises(UnreadableFileError, match="cut.jpg"):
        read_photo(bad)


def test_ophthalmic_photography_jpeg_baseline(tmp_path: Path) -> None:
    """An OP 8-bit object carrying the real retina.jpg as JPEG baseline (as fundus cameras write them)."""
    import skimage
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, OphthalmicPhotography8BitImageStorage, generate_uid

    jpg = Path(skimage.__file__).parent / "data" / "retina.jpg"
    with Image.open(jpg) as im:
        w, h = im.size
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "OP", "EYE1", "Fundus^Test"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = h, w, 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.01, 0.01]
    ds.PixelData = encapsulate([jpg.read_bytes()])
    ds["PixelData"].VR = "OB"
    p = tmp_path / "op.dcm"
    ds.save_as(p, enforce_file_format=True)

    ph = read_image(p)
    ref = read_image(jpg)
    assert isinstance(ph, Photo) and ph.shape == ref.shape
    assert ph.pixel_spacing == (0.01, 0.01) and ph.source.modality == "OP"
    # Same JPEG decoded by two decoders: equal up to decoder rounding.
    assert np.abs(ph.array.astype(int) - ref.array.astype(int)).mean() < 2.0
