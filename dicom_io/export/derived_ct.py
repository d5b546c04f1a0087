"""A derived CT Image series in the source study: e.g. a counterfactual, in HU, on the source slices.

An explainer's counterfactual of a few CT slices goes back where a radiologist can scroll through it:
a new series (new SeriesInstanceUID and SOPInstanceUIDs) in the SAME study and frame of reference, one
CT Image per source slice it replaces, at that slice's position, with the Patient and General Study
modules copied from the source header and each slice referencing its source slice
(SourceImageSequence, purpose DCM 121322). ImageType is ``DERIVED\\SECONDARY\\AXIAL`` and the
SeriesDescription / DerivationDescription say what made it, so the synthetic image is never taken for
an acquisition. The pixel writing is `dicom_io.write_ct_series` (checked with dciodvfy in the tests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from ..dicom_series import PATIENT_STUDY_KEYWORDS
from ..types import FrameRef, Volume
from ..write_series import StudyInfo, write_ct_series
from ._common import SOFTWARE_VERSION, complete_source_header, derived_series_number, source_image_item

__all__ = ["write_derived_ct_series"]

# copied verbatim from the source header besides the patient / study keywords
_ALSO_COPIED = ("PatientPosition", "BodyPartExamined", "FrameOfReferenceUID", "PositionReferenceIndicator")


def write_derived_ct_series(
    volume: Volume,
    slices: Sequence[int],
    sources: Sequence[Dataset],
    out_dir: str | os.PathLike[str],
    *,
    series_description: str,
    derivation_description: str,
    series_number_offset: int = 1200,
    source_frames: Sequence[FrameRef | None] | None = None,
) -> list[Path]:
    """Write slices ``slices`` of ``volume`` (HU, on the source grid) as a new CT series in the source study.

    Parameters
    ----------
    volume : Volume
        ``array`` (z, y, x) in HU on the SOURCE grid (same geometry as the series it derives from).
    slices : sequence of int
        Distinct slice indices to write (e.g. the slices an explainer changed).
    sources : sequence of Dataset
        Source headers, one per entry of ``slices`` (or one for a multi-frame source); read only.
    out_dir : path
        Folder for the new series (one ``CT<index>.dcm`` per slice, each written atomically).
    series_description : str
        E.g. ``"medxai counterfactual diffexplainer step +1.6 (synthetic)"`` (cut to 64 characters).
    derivation_description : str
        What made the images (method, step, probabilities; cut to 1024 characters).
    series_number_offset : int
        SeriesNumber = offset + the source's SeriesNumber.
    source_frames : sequence of FrameRef or None, optional
        The source instance (and frame) of each written slice, ``SourceRef.frames[k]``; default: the
        SOP instance of each header.

    Returns
    -------
    list of Path
        The written files in the order of ``slices``.

    Raises
    ------
    ValueError
        Empty or mismatched ``slices`` / ``sources`` / ``source_frames``.
    DicomIOError
        A source header lacks the UIDs a derived object must reference.
    """
    idx = [int(k) for k in slices]
    if not idx:
        raise ValueError("slices is empty; pass the indices of the slices to write.")
    heads = [complete_source_header(ds) for ds in sources]
    if len(heads) == 1 and len(idx) > 1:
        heads = heads * len(idx)  # a multi-frame source: one header for every frame
    if len(heads) != len(idx):
        raise ValueError(f"{len(sources)} source headers for {len(idx)} slices; pass one header per written slice.")
    frames = list(source_frames) if source_frames is not None else [None] * len(idx)
    if len(frames) != len(idx):
        raise ValueError(f"source_frames has {len(frames)} entries for {len(idx)} slices.")
    first = heads[0]
    copied: dict[str, object] = {}
    for kw in (*PATIENT_STUDY_KEYWORDS, *_ALSO_COPIED):
        if kw in first and kw not in ("SpecificCharacterSet", "Manufacturer", "InstitutionName"):
            copied[kw] = first.data_element(kw).value  # type: ignore[union-attr]
    info = StudyInfo(
        study_instance_uid=str(first.StudyInstanceUID),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or "") or None,
        series_number=derived_series_number(first, series_number_offset),
        series_description=series_description[:64],
        patient_position=str(first.get("PatientPosition", "") or "HFS"),
        body_part=str(first.get("BodyPartExamined", "") or ""),
        extra={
            **copied,
            "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
            "DerivationDescription": derivation_description[:1024],
            "SoftwareVersions": SOFTWARE_VERSION,
            "KVP": first.get("KVP", None),  # Type 2: the source's, or empty; never an invented value
        },
    )
    per_slice = [{"SourceImageSequence": [source_image_item(h, f)]} for h, f in zip(heads, frames)]
    return write_ct_series(volume, out_dir, info, slices=idx, per_slice=per_slice)
