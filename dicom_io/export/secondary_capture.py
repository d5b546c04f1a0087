"""Secondary Capture export (highdicom): rendered RGB overlays in the source study, referencing the source.

Single-frame objects are built with `highdicom.sc.SCImage`. highdicom has no Multi-frame True Color SC
class, so `MultiFrameTrueColorSCImage` derives from `highdicom.SOPClass` (which supplies the Patient, Study,
Series, Equipment and SOP Common modules) and adds the Multi-frame, SC Multi-frame Image and SC
Multi-frame Vector modules.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.frame import encode_frame
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, DS, TM

from ..types import FrameRef
from ._common import (
    SOFTWARE_VERSION,
    complete_source_header,
    complete_source_headers,
    derived_series_number,
    patient_orientation,
    save_dataset,
    source_image_item,
)

__all__ = ["MultiFrameTrueColorSCImage", "UNLINKED_PATIENT", "write_secondary_capture", "write_photo_secondary_capture"]

logger = logging.getLogger(__name__)

MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


def _referenced_series(sources: Sequence[Dataset], frames: Sequence[FrameRef | None]) -> list[Dataset]:
    by_series: dict[str, dict[str, Dataset]] = {}
    for src, fr in zip(sources, frames):
        uid = fr.sop_instance_uid if fr else str(src.SOPInstanceUID)
        cls = fr.sop_class_uid if fr else str(src.SOPClassUID)
        inst = Dataset()
        inst.ReferencedSOPClassUID = cls
        inst.ReferencedSOPInstanceUID = uid
        by_series.setdefault(str(src.SeriesInstanceUID), {})[uid] = inst
    out = []
    for series_uid, insts in by_series.items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        s.ReferencedInstanceSequence = list(insts.values())
        out.append(s)
    return out


def _add_derivation(ds: Dataset, sources: Sequence[Dataset], frames: Sequence[FrameRef | None], description: str) -> None:
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.DerivationDescription = description[:1024]
    ds.SourceImageSequence = [source_image_item(s, f) for s, f in zip(sources, frames)]
    ds.ReferencedSeriesSequence = _referenced_series(sources, frames)
    ds.SoftwareVersions = SOFTWARE_VERSION
    _copy_laterality(ds, sources[0])


def _copy_laterality(ds: Dataset, src: Dataset) -> None:
    """Body part and laterality from the source, so validators can decide whether Laterality is needed."""
    for kw in ("BodyPartExamined", "Laterality", "ImageLaterality"):
        if kw not in ds and src.get(kw) not in (None, ""):
            setattr(ds, kw, src.get(kw))
    if "BodyPartExamined" not in ds and "Laterality" not in ds and "ImageLaterality" not in ds:
        ds.ImageLaterality = "U"  # unknown / unpaired


class MultiFrameTrueColorSCImage(hd.SOPClass):
    """Multi-frame True Color Secondary Capture Image (one object, many RGB frames).

    Parameters
    ----------
    pixel_array : np.ndarray
        uint8 (N, H, W, 3) RGB frames.
    ref_dataset : Dataset
        Any dataset of the target study; Patient and General Study modules are copied from it.
    series_instance_uid, series_number, sop_instance_uid, instance_number, manufacturer
        As in `highdicom.sc.SCImage`.
    patient_orientation : (str, str)
        PatientOrientation of rows and columns.
    slice_locations : sequence of float, optional
        One per frame (mm); becomes SliceLocationVector, the FrameIncrementPointer's target.
    frame_labels : sequence of str, optional
        One per frame (FrameLabelVector).
    **kwargs
        Passed to `highdicom.SOPClass` (e.g. ``series_description``).
    """

    def __init__(
        self,
        pixel_array: np.ndarray,
        ref_dataset: Dataset,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        instance_number: int,
        manufacturer: str,
        patient_orientation: tuple[str, str] = ("L", "P"),
        slice_locations: Sequence[float] | None = None,
        frame_labels: Sequence[str] | None = None,
        transfer_syntax_uid: str = ExplicitVRLittleEndian,
        **kwargs: Any,
    ) -> None:
        if pixel_array.ndim != 4 or pixel_array.shape[-1] != 3 or pixel_array.dtype != np.uint8:
            raise ValueError(f"pixel_array must be uint8 (N, H, W, 3) RGB frames; got {pixel_array.dtype} {pixel_array.shape}.")
        if transfer_syntax_uid != ExplicitVRLittleEndian:
            raise ValueError(f"transfer_syntax_uid must be Explicit VR Little Endian; got {transfer_syntax_uid!r}.")
        n = pixel_array.shape[0]
        ref_dataset = complete_source_header(ref_dataset)  # absent Type 2 patient/study -> empty
        kwargs.setdefault("specific_character_set", ref_dataset.get("SpecificCharacterSet"))
        super().__init__(
            study_instance_uid=ref_dataset.StudyInstanceUID,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=MULTIFRAME_TRUE_COLOR_SC,
            instance_number=instance_number,
            modality="OT",
            manufacturer=manufacturer,
            transfer_syntax_uid=transfer_syntax_uid,
            **kwargs,
        )
        self.copy_patient_and_study_information(ref_dataset)
        self.PatientOrientation = list(patient_orientation)
        # SC Equipment
        self.ConversionType = "WSD"
        # SC Image
        now = datetime.datetime.now()
        self.DateOfSecondaryCapture = DA(now.date())
        self.TimeOfSecondaryCapture = TM(now.time())
        self.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        # Image Pixel
        self.SamplesPerPixel = 3
        self.PhotometricInterpretation = "RGB"
        self.PlanarConfiguration = 0
        self.Rows, self.Columns = int(pixel_array.shape[1]), int(pixel_array.shape[2])
        self.BitsAllocated = 8
        self.BitsStored = 8
        self.HighBit = 7
        self.PixelRepresentation = 0
        # Multi-frame + SC Multi-frame Vector
        self.NumberOfFrames = n
        locs = list(slice_locations) if slice_locations is not None else [float(i) for i in range(n)]
        if len(locs) != n:
            raise ValueError(f"slice_locations has {len(locs)} values for {n} frames.")
        self.SliceLocationVector = [DS(v, auto_format=True) for v in locs]
        pointers = [Tag("SliceLocationVector")]
        if frame_labels is not None:
            if len(frame_labels) != n:
                raise ValueError(f"frame_labels has {len(frame_labels)} values for {n} frames.")
            self.FrameLabelVector = [str(s)[:64] for s in frame_labels]
            pointers.append(Tag("FrameLabelVector"))
        # one tag, or the list of tags frames step through (a multi-valued AT element)
        self.FrameIncrementPointer = pointers[0] if len(pointers) == 1 else pointers
        self.LossyImageCompression = "00"
        self.PixelData = b"".join(
            encode_frame(
                np.ascontiguousarray(f),
                transfer_syntax_uid=transfer_syntax_uid,
                bits_allocated=8,
                bits_stored=8,
                photometric_interpretation="RGB",
                pixel_representation=0,
                planar_configuration=0,
            )
            for f in pixel_array
        )
        if len(self.PixelData) % 2:
            self.PixelData += b"\x00"


def _check_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) RGB; got {arr.dtype} {arr.shape}.")
    return arr


def write_secondary_capture(
    frames: np.ndarray | Sequence[np.ndarray],
    sources: Sequence[Dataset],
    out_dir: str | os.PathLike[str],
    *,
    source_frames: Sequence[FrameRef | None] | None = None,
    series_description: str = "medxai explanation overlay",
    series_number: int | None = None,
    derivation_description: str = "medxai explanation overlay (heatmap blended on the source image)",
    multiframe: bool = False,
    slice_locations: Sequence[float] | None = None,
    frame_labels: Sequence[str] | None = None,
    series_instance_uid: str | None = None,
    manufacturer: str = "medxai",
    file_prefix: str = "SC",
) -> list[Path]:
    """Write rendered RGB frames as a new Secondary Capture series in the sources' study.

    Parameters
    ----------
    frames : np.ndarray or sequence of np.ndarray
        uint8 (N, H, W, 3) RGB, e.g. from `render_overlay`.
    sources : sequence of Dataset
        N source headers (one per frame: the instance the frame was derived from) from one study;
        a single header may be repeated (a multi-frame source, with ``source_frames`` giving the frames).
        Patient and study modules are copied from ``sources[0]``.
    out_dir : path
        Folder for the new files (created); each file is written under a temporary name and renamed.
    source_frames : sequence of FrameRef or None, optional
        Per-frame references (SOP instance/class UID, frame number) overriding the sources' own UIDs.
    series_description, series_number : optional
        Of the new series (number default: 1000 + the source's).
    derivation_description : str
        DerivationDescription of every object (method, target, scores).
    multiframe : bool
        One Multi-frame True Color SC object instead of N single-frame SC objects.
    slice_locations, frame_labels : sequence, optional
        Multi-frame only: per-frame slice location (mm) and label.
    series_instance_uid : str, optional
        Default: a new UID.
    manufacturer : str
    file_prefix : str
        File names are ``{prefix}{i:06d}.dcm`` (``{prefix}_MF.dcm`` for multi-frame).

    Returns
    -------
    list of Path
        The written files.
    """
    arr = _check_frames(frames)
    n = arr.shape[0]
    if len(sources) != n:
        raise ValueError(f"sources has {len(sources)} headers for {n} frames; give one per frame.")
    refs: list[FrameRef | None] = list(source_frames) if source_frames is not None else [None] * n
    if len(refs) != n:
        raise ValueError(f"source_frames has {len(refs)} entries for {n} frames.")
    # de-identified sources may lack Type 2 patient/study attributes; the SC carries them empty
    sources = complete_source_headers(sources)
    studies = {str(s.StudyInstanceUID) for s in sources}
    if len(studies) != 1:
        raise ValueError(f"sources come from {len(studies)} studies ({sorted(studies)}); an export series has one.")
    ref = sources[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series_uid = series_instance_uid or generate_uid()
    number = series_number if series_number is not None else derived_series_number(ref, 1000)
    orient = patient_orientation(ref)
    written: list[Path] = []
    if multiframe:
        ds: MultiFrameTrueColorSCImage | hd.sc.SCImage = MultiFrameTrueColorSCImage(
            arr,
            ref,
            series_instance_uid=series_uid,
            series_number=number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=manufacturer,
            patient_orientation=orient,
            slice_locations=slice_locations,
            frame_labels=frame_labels,
            series_description=series_description[:64],
        )
        _add_derivation(ds, sources, refs, derivation_description)
        written.append(save_dataset(ds, out / f"{file_prefix}_MF.dcm"))
        logger.info("wrote multi-frame SC (%d frames) to %s", n, written[-1])
        return written
    for i in range(n):
        ds = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=arr[i],
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=number,
            sop_instance_uid=generate_uid(),
            instance_number=i + 1,
            manufacturer=manufacturer,
            patient_orientation=orient,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=series_description[:64],
        )
        ds.copy_patient_and_study_information(ref)
        _add_derivation(ds, [sources[i]], [refs[i]], derivation_description)
        ds.LossyImageCompression = "00"
        written.append(save_dataset(ds, out / f"{file_prefix}{i + 1:06d}.dcm"))
    logger.info("wrote %d SC objects to %s", n, out)
    return written


#: Patient attributes of an SC made from a plain image file (no DICOM source): clearly not a real patient.
UNLINKED_PATIENT = {
    "PatientName": "MEDXAI^UNLINKED IMAGE FILE",
    "PatientID": "MEDXAI-UNLINKED",
    "PatientBirthDate": "",
    "PatientSex": "O",
}


def write_photo_secondary_capture(
    frame: np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    source: Dataset | None = None,
    source_file_name: str | None = None,
    series_description: str = "medxai fundus explanation",
    derivation_description: str = "medxai explanation overlay (heatmap blended on the photograph)",
    manufacturer: str = "medxai",
    file_prefix: str = "SC",
) -> list[Path]:
    """Write one rendered photo overlay (fundus) as a Secondary Capture.

    With a DICOM ``source`` the SC joins its study and references it; without one (photo read from a
    JPEG/PNG) a new study is created whose patient is marked ``MEDXAI^UNLINKED IMAGE FILE`` and whose
    StudyDescription names the file, so it can never be mistaken for a real patient's study.

    Parameters
    ----------
    frame : np.ndarray
        uint8 (H, W, 3) RGB.
    out_dir : path
    source : Dataset, optional
        Header of the DICOM photograph.
    source_file_name : str, optional
        Name of the image file (only its base name is recorded) when there is no DICOM source.
    """
    arr = _check_frames([frame])
    if source is not None:
        return write_secondary_capture(
            arr,
            [source],
            out_dir,
            series_description=series_description,
            derivation_description=derivation_description,
            manufacturer=manufacturer,
            file_prefix=file_prefix,
        )
    ref = Dataset()
    for kw, v in UNLINKED_PATIENT.items():
        setattr(ref, kw, v)
    now = datetime.datetime.now()
    ref.StudyInstanceUID = generate_uid()
    ref.StudyDate = now.strftime("%Y%m%d")
    ref.StudyTime = now.strftime("%H%M%S")
    ref.StudyID = "MEDXAI"
    ref.AccessionNumber = ""
    ref.ReferringPhysicianName = ""
    base = os.path.basename(source_file_name or "unknown image file")
    ref.StudyDescription = f"medxai export of image file {base}"[:64]
    ref.SpecificCharacterSet = "ISO_IR 192"
    out = Path(out_dir)
    ds = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=arr[0],
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description[:64],
    )
    ds.StudyDescription = ref.StudyDescription
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "YES"
    ds.ImageLaterality = "U"
    ds.DerivationDescription = f"{derivation_description}; source image file: {base}"[:1024]
    ds.ImageComments = f"Derived from the non-DICOM file {base}; patient unknown."[:10240]
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.LossyImageCompression = "00"
    return [save_dataset(ds, out / f"{file_prefix}{1:06d}.dcm")]
