"""Writing a `Volume` as a CT Image series (one file per slice), and photographs as DICOM.

highdicom builds derived objects (Secondary Capture, Parametric Map, Segmentation) but has no
constructor for an original CT Image, which the phantoms and tests need; so the CT Image IOD's modules
are filled in here with pydicom, attribute by attribute, and checked with dciodvfy in the tests.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from atomicfs import atomic_path

from .types import Volume

__all__ = ["StudyInfo", "write_ct_series", "write_photo_dicom", "COMPRESSIONS"]

#: Transfer syntaxes the writer can encode (all lossless), by short name.
COMPRESSIONS: dict[str, UID] = {
    "none": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}


@dataclass
class StudyInfo:
    """Patient, study and series attributes of a written series. UIDs are generated when None.

    ``uid_seed`` makes generated UIDs deterministic (phantoms), otherwise they are random.
    """

    patient_name: str = "Anonymous^Phantom"
    patient_id: str = "PHANTOM"
    patient_birth_date: str = ""
    patient_sex: str = "O"
    study_instance_uid: str | None = None
    study_date: str = ""
    study_time: str = ""
    study_id: str = "1"
    study_description: str = ""
    accession_number: str = ""
    series_instance_uid: str | None = None
    series_number: int = 1
    series_description: str = ""
    frame_of_reference_uid: str | None = None
    patient_position: str = "HFS"
    manufacturer: str = "medxai"
    body_part: str = "CHEST"
    uid_seed: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def uid(self, *parts: object) -> str:
        if self.uid_seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[self.uid_seed, *map(str, parts)])


def _fmt(v: float) -> str:
    # DS values are limited to 16 characters.
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s if len(s) <= 16 else f"{v:.8g}"


def write_ct_series(
    volume: Volume,
    out_dir: str | os.PathLike[str],
    info: StudyInfo | None = None,
    *,
    rescale: Sequence[tuple[float, float]] | tuple[float, float] = (1.0, -1024.0),
    compression: str = "none",
    file_names: Sequence[str] | None = None,
    slices: Sequence[int] | None = None,
    per_slice: Sequence[Mapping[str, object]] | None = None,
) -> list[Path]:
    """Write a volume as a CT Image series, one file per slice, each written atomically.

    Parameters
    ----------
    volume : Volume
        ``array`` (z, y, x) in HU; its geometry (origin, spacing, direction) becomes the slices'
        ImagePositionPatient, PixelSpacing and ImageOrientationPatient.
    out_dir : path
        Created if needed; existing files of the same name are replaced.
    info : StudyInfo, optional
        Patient/study/series attributes.
    rescale : (slope, intercept) or a sequence of them, one per slice
        Stored value = round((HU - intercept) / slope); stored as unsigned 16 bit when every stored
        value is >= 0, else signed.
    compression : {'none', 'rle', 'jpeg-ls', 'jpeg2000'}
        Lossless transfer syntax.
    file_names : sequence of str, optional
        One name per written slice (default ``CT000001.dcm`` ..., numbered by the volume's slice index).
    slices : sequence of int, optional
        Write only these slices of the volume (each at its own position on the volume's grid, with
        InstanceNumber = index + 1): a derived series of a few source slices. Default: every slice.
    per_slice : sequence of mapping, optional
        One mapping of pydicom keyword -> value per written slice, set after ``info.extra`` (e.g. the
        SourceImageSequence of a derived slice).

    Returns
    -------
    list of Path
        The written files in slice order.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}; got {compression!r}.")
    info = info or StudyInfo()
    nz, ny, nx = volume.shape
    if rescale and isinstance(rescale[0], (tuple, list)):
        pairs = cast("Sequence[tuple[float, float]]", rescale)
    else:
        pairs = [cast("tuple[float, float]", rescale)] * nz
    scales = [(float(a), float(b)) for a, b in pairs]
    if len(scales) != nz:
        raise ValueError(f"rescale has {len(scales)} entries for {nz} slices; give one (slope, intercept) per slice.")
    written = list(range(nz)) if slices is None else [int(k) for k in slices]
    if not written or any(not 0 <= k < nz for k in written) or len(set(written)) != len(written):
        raise ValueError(f"slices must be distinct indices in 0..{nz - 1}, got {list(slices or [])}.")
    if file_names is not None and len(file_names) != len(written):
        raise ValueError(f"file_names has {len(file_names)} entries for {len(written)} slices.")
    if per_slice is not None and len(per_slice) != len(written):
        raise ValueError(f"per_slice has {len(per_slice)} entries for {len(written)} slices; give one mapping per written slice.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    study_uid = info.study_instance_uid or info.uid("study")
    series_uid = info.series_instance_uid or info.uid("series", info.series_number)
    for_uid = info.frame_of_reference_uid or info.uid("for")
    now = _dt.datetime.now()
    date = info.study_date or now.strftime("%Y%m%d")
    time = info.study_time or now.strftime("%H%M%S")
    d = volume.direction
    row_dir, col_dir, k_dir = d[:, 0], d[:, 1], d[:, 2]
    iop = [_fmt(float(v)) for v in np.r_[row_dir, col_dir]]
    affine = volume.affine_lps
    normal = np.cross(row_dir, col_dir)
    paths: list[Path] = []
    for j, k in enumerate(written):
        slope, inter = scales[k]
        stored = np.rint((volume.array[k].astype(np.float64) - inter) / slope)
        signed = bool(stored.min() < 0)
        lo, hi = (-32768, 32767) if signed else (0, 65535)
        if stored.min() < lo or stored.max() > hi:
            raise ValueError(
                f"slice {k}: values do not fit 16 bits with slope {slope} and intercept {inter}; choose another rescale."
            )
        pix = stored.astype(np.int16 if signed else np.uint16)
        pos = affine @ np.array([0.0, 0.0, float(k), 1.0])
        sop_uid = info.uid("sop", series_uid, k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1486.1")
        meta.ImplementationVersionName = "MEDXAI_0_1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        # SOP Common
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        # Patient
        ds.PatientName = info.patient_name
        ds.PatientID = info.patient_id
        ds.PatientBirthDate = info.patient_birth_date
        ds.PatientSex = info.patient_sex
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = date
        ds.StudyTime = time
        ds.ReferringPhysicianName = ""
        ds.StudyID = info.study_id
        ds.AccessionNumber = info.accession_number
        if info.study_description:
            ds.StudyDescription = info.study_description
        # General Series
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = info.series_number
        if info.series_description:
            ds.SeriesDescription = info.series_description
        ds.PatientPosition = info.patient_position
        ds.BodyPartExamined = info.body_part
        # Frame of Reference
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = info.manufacturer
        # General Image / Acquisition
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.ContentDate = date
        ds.ContentTime = time
        # Image Plane
        ds.PixelSpacing = [_fmt(volume.spacing[1]), _fmt(volume.spacing[0])]
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [_fmt(float(v)) for v in pos[:3]]
        ds.SliceThickness = _fmt(abs(volume.spacing[2] * float(np.dot(k_dir, normal))))
        ds.SliceLocation = _fmt(float(np.dot(pos[:3], normal)))
        # Image Pixel + CT Image
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = _fmt(inter)
        ds.RescaleSlope = _fmt(slope)
        ds.RescaleType = "HU"
        ds.KVP = "120"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        for kw, v in info.extra.items():
            setattr(ds, kw, v)
        for kw, v in (per_slice[j] if per_slice is not None else {}).items():
            setattr(ds, kw, v)
        ds.PixelData = pix.tobytes()
        if compression != "none":
            # keep the SOP Instance UID set above (pydicom would draw a new, random one)
            ds.compress(COMPRESSIONS[compression], pix, generate_instance_uid=False)
        name = file_names[j] if file_names is not None else f"CT{k + 1:06d}.dcm"
        path = out / name
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def write_photo_dicom(
    rgb: np.ndarray,
    path: str | os.PathLike[str],
    info: StudyInfo | None = None,
    *,
    modality: str = "OP",
    laterality: str | None = None,
    pixel_spacing: tuple[float, float] | None = None,
) -> Path:
    """Write an RGB photograph (e.g. a fundus image) as a Secondary Capture object, atomically.

    highdicom's ``SCImage`` builds the object; the Ophthalmic Photography IOD would need acquisition
    device and illumination codes a synthetic or converted photo cannot honestly state.

    Parameters
    ----------
    rgb : np.ndarray
        uint8 (H, W, 3).
    path : path
        Output ``.dcm`` file.
    info : StudyInfo, optional
        Patient/study/series attributes (UIDs generated when missing, deterministic with ``uid_seed``).
    modality : str
        Modality of the series (``OP`` for ophthalmic photography).
    laterality : {'L', 'R'}, optional
        Image laterality (which eye).
    pixel_spacing : (row, column) mm, optional
    """
    import highdicom as hd

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3); got {arr.dtype} {arr.shape}.")
    info = info or StudyInfo()
    now = _dt.datetime.now()
    kwargs: dict[str, Any] = {}
    if laterality:
        kwargs["laterality"] = laterality
    if pixel_spacing is not None:
        kwargs["pixel_spacing"] = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    series_uid = info.series_instance_uid or info.uid("series", info.series_number)
    ds = hd.sc.SCImage(
        pixel_array=arr,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=info.study_instance_uid or info.uid("study"),
        series_instance_uid=series_uid,
        sop_instance_uid=info.uid("sop", series_uid, 0),
        series_number=info.series_number,
        instance_number=1,
        manufacturer=info.manufacturer,
        patient_id=info.patient_id,
        patient_name=info.patient_name,
        patient_birth_date=info.patient_birth_date or None,
        patient_sex=info.patient_sex or None,
        accession_number=info.accession_number or None,
        study_id=info.study_id,
        study_date=info.study_date or now.strftime("%Y%m%d"),
        study_time=info.study_time or now.strftime("%H%M%S"),
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=info.series_description or None,
        **kwargs,
    )
    ds.Modality = modality
    if info.study_description:
        ds.StudyDescription = info.study_description
    out = Path(path)
    with atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out
