"""One entry point that reads whatever a user points at: a DICOM folder or file, NIfTI, NRRD, or a photo."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from .dicom_series import read_series
from .errors import DicomIOError, UnreadableFileError
from .photo import IMAGE_SUFFIXES, read_photo
from .text import printable
from .types import Photo, Volume
from .volume_files import read_nifti, read_nrrd

__all__ = ["read_image", "is_photo_dataset"]

# SOP classes whose images are photographs (colour, no patient-space geometry).
_PHOTO_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic Photography 16 Bit
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
}


def is_photo_dataset(ds: pydicom.Dataset) -> bool:
    """True for a colour photograph, or any image without a position in patient space."""
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return True
    return str(ds.get("SOPClassUID", "")) in _PHOTO_CLASSES and "ImagePositionPatient" not in ds


def read_image(
    source: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    allow_gaps: bool = False,
    skip_unreadable: bool = False,
    padding_value: float | None = None,
) -> Volume | Photo:
    """Read a volume or a photograph.

    Parameters
    ----------
    source : path
        A folder of DICOM files (searched recursively), a single DICOM file (multi-frame volume,
        single slice, or photograph), a ``.nii``/``.nii.gz``/``.nrrd`` volume, or a JPEG/PNG/TIFF photo.
    series_uid : str, optional
        Which series to read from a folder holding several.
    allow_gaps : bool
        Accept missing slices (interpolated, with a loud warning).
    skip_unreadable : bool
        DICOM folders: leave out files that cannot be read, with a warning kept in ``Volume.warnings``
        (default: they are an error naming every one).
    padding_value : float, optional
        DICOM: value of PixelPaddingValue voxels (default -1000 HU for CT); see `read_series`.

    Returns
    -------
    Volume or Photo
    """
    p = Path(source)
    if not p.exists():
        raise DicomIOError(f"'{p}' does not exist.", str(p))
    if p.is_dir():
        return read_series(p, series_uid, allow_gaps=allow_gaps, skip_unreadable=skip_unreadable, padding_value=padding_value)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(p)
    if name.endswith((".nrrd", ".nhdr")):
        return read_nrrd(p)
    if name.endswith(IMAGE_SUFFIXES):
        return read_photo(p)
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
    except Exception as e:
        raise UnreadableFileError(
            f"'{p}' is neither a DICOM file nor a .nii.gz/.nrrd/.png/.jpg file medxai can read ({type(e).__name__}: {e}).",
            str(p),
        ) from e
    try:
        photo = is_photo_dataset(ds)
    except Exception as e:
        raise UnreadableFileError(
            f"Cannot read '{p}': its SamplesPerPixel or SOPClassUID is damaged ({type(e).__name__}: "
            f"{printable(e)[:200]}). "
            "Re-export or re-transfer the file.",
            str(p),
        ) from e
    if photo:
        return read_photo(p)
    return read_series(p, series_uid, allow_gaps=allow_gaps, skip_unreadable=skip_unreadable, padding_value=padding_value)
