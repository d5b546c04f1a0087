"""Colour photographs (fundus) from JPEG/PNG/TIFF files and from DICOM (Ophthalmic Photography,
VL Photographic, Secondary Capture), as RGB `Photo` objects."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from atomicfs import atomic_path

from .dicom_series import patient_study_attributes
from .errors import UnreadableFileError, UnsupportedInputError
from .types import FrameRef, Photo, SourceRef

__all__ = ["read_photo", "read_photo_file", "photo_from_dataset", "write_photo", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def read_photo_file(path: str | os.PathLike[str]) -> Photo:
    """Read a JPEG/PNG/TIFF/BMP photograph as RGB, honouring the EXIF orientation tag."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I"):
                a = np.asarray(im, dtype=np.float64)
                a = (255 * (a - a.min()) / max(float(np.ptp(a)), 1.0)).astype(np.uint8)
                rgb = np.stack([a] * 3, axis=-1)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UnreadableFileError(f"Cannot read image '{path}': {e}. Is it a damaged or truncated JPEG/PNG?", str(path)) from e
    return Photo(np.ascontiguousarray(rgb), None, SourceRef(files=(str(path),)))


def _to_uint8(a: np.ndarray, ds: Dataset) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    bits = int(ds.get("BitsStored", 8 * a.dtype.itemsize))
    scale = 255.0 / float((1 << bits) - 1)
    return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def photo_from_dataset(ds: Dataset, path: str) -> Photo:
    """Convert a decoded single-frame DICOM photograph to RGB (YBR and palette colour converted)."""
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedInputError(
            f"'{path}' holds {ds.NumberOfFrames} frames; a fundus photograph must be a single frame.", path
        )
    try:
        a = ds.pixel_array  # pydicom converts YBR_FULL(_422) to RGB
    except Exception as e:
        raise UnreadableFileError(f"Cannot decode the pixel data of '{path}': {type(e).__name__}: {e}.", path) from e
    pi = str(ds.get("PhotometricInterpretation", ""))
    if pi == "PALETTE COLOR":
        a = apply_color_lut(a, ds)
    if a.ndim == 2:
        if pi == "MONOCHROME1":
            a = a.max() - a
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] != 3:
        raise UnsupportedInputError(f"'{path}': pixel array of shape {a.shape} is not a 2D photograph.", path)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    src = SourceRef(
        study_instance_uid=str(ds.get("StudyInstanceUID", "")) or None,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")) or None,
        modality=str(ds.get("Modality", "")) or None,
        series_description=str(ds.get("SeriesDescription", "")) or None,
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
        frames=(FrameRef(str(ds.SOPInstanceUID), str(ds.SOPClassUID)),) if "SOPInstanceUID" in ds else (),
        patient_study=patient_study_attributes(ds),
        files=(path,),
    )
    ps = (float(spacing[0]), float(spacing[1])) if spacing else None
    return Photo(np.ascontiguousarray(_to_uint8(a, ds)), ps, src)


def read_photo(path: str | os.PathLike[str]) -> Photo:
    """Read a photograph from an image file or a DICOM file (decided by content, not name)."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableFileError(f"'{p}' is not a file.", str(p))
    with open(p, "rb") as f:
        head = f.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        try:
            ds = pydicom.dcmread(str(p))
        except Exception as e:
            raise UnreadableFileError(f"Cannot read DICOM file '{p}': {type(e).__name__}: {e}.", str(p)) from e
        return photo_from_dataset(ds, str(p))
    return read_photo_file(p)


def write_photo(photo: Photo | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an RGB photo (or a uint8 (H, W) / (H, W, 3) array) as PNG or JPEG, atomically."""
    arr = photo.array if isinstance(photo, Photo) else np.asarray(photo)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_photo needs uint8 pixels; got {arr.dtype}. Scale to 0..255 first.")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG")
    return Path(path)
