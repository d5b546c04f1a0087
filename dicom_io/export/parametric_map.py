"""Parametric Map export (highdicom `pm.ParametricMap`): the float heatmap on the source CT grid.

The map shares the CT's frame of reference and has one frame per source slice with its own plane
position (taken by highdicom from the source headers). Real-world values are the raw attribution
scores (slope 1, intercept 0), quantity ``(MX0001, 99MEDXAI, "Attribution score")``, unit UCUM ``1``.
A FrameAnatomySequence is added to the shared functional groups (dcmqi's paramap2itkimage needs it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ._common import (
    HEATMAP_QUANTITY,
    MEDXAI_SCHEME,
    SOFTWARE_VERSION,
    anatomic_region,
    complete_source_headers,
    derived_series_number,
    save_dataset,
)

__all__ = ["write_parametric_map", "frame_anatomy_item"]

logger = logging.getLogger(__name__)


def frame_anatomy_item(region: Code, laterality: str = "U") -> Dataset:
    """A FrameAnatomySequence item (Frame Anatomy functional group)."""
    code = Dataset()
    code.CodeValue = region.value
    code.CodingSchemeDesignator = region.scheme_designator
    code.CodeMeaning = region.meaning
    item = Dataset()
    item.AnatomicRegionSequence = [code]
    item.FrameLaterality = laterality
    return item


def _order_frames_ascending(pm: Dataset) -> None:
    """Reorder the frames of a single-plane-orientation map so positions ascend along the slice normal."""
    shared = pm.SharedFunctionalGroupsSequence[0]
    per_frame = list(pm.PerFrameFunctionalGroupsSequence)
    if "PlaneOrientationSequence" in shared:
        iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    elif "PlaneOrientationSequence" in per_frame[0]:
        iop = per_frame[0].PlaneOrientationSequence[0].ImageOrientationPatient
    else:
        return
    v = np.asarray([float(x) for x in iop])
    normal = np.cross(v[:3], v[3:])
    dist = np.array(
        [float(np.dot([float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient], normal)) for f in per_frame]
    )
    order = np.argsort(dist, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return
    keyword = next(k for k in ("FloatPixelData", "DoubleFloatPixelData", "PixelData") if k in pm)
    raw = pm[keyword].value
    size = len(raw) // len(per_frame)
    if size * len(per_frame) != len(raw):
        logger.warning("frame sizes of the parametric map are not uniform; frames left in highdicom's order")
        return
    pm.PerFrameFunctionalGroupsSequence = [per_frame[i] for i in order]
    setattr(pm, keyword, b"".join(raw[i * size : (i + 1) * size] for i in order))


def _coding_scheme() -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=MEDXAI_SCHEME,
        name="medxai local codes",
        responsible_organization="medxai project",
    )


def write_parametric_map(
    heatmap: np.ndarray,
    sources: Sequence[Dataset],
    path: str | os.PathLike[str],
    *,
    quantity: Code = HEATMAP_QUANTITY,
    unit: Code = codes.UCUM.NoUnits,
    label: str = "HEATMAP",
    description: str = "medxai explanation heatmap",
    series_description: str = "medxai heatmap (Parametric Map)",
    series_number: int | None = None,
    series_instance_uid: str | None = None,
    manufacturer: str = "medxai",
    anatomy: Code | None = None,
    ascending_frames: bool = True,
) -> Path:
    """Write a float heatmap on the source CT grid as a DICOM Parametric Map.

    Parameters
    ----------
    heatmap : np.ndarray
        float (z, y, x) on the grid of the source volume: slice k belongs to ``sources[k]``
        (``SourceRef.files`` order, as `read_series` returns it). For a multi-frame source give the one
        header; frames then follow its frame order.
    sources : sequence of Dataset
        Source CT headers (`read_source_headers`); Patient/Study are copied, geometry taken from them.
    path : path
        Output file, written under a temporary name and renamed.
    quantity, unit : Code
        Real-world value quantity and unit (default: medxai attribution score, unitless).
    label : str
        ContentLabel (upper case, <= 16 characters) and real-world value mapping label.
    description : str
        ContentDescription / mapping explanation (method, target, scores).
    series_description, series_number, series_instance_uid, manufacturer : optional
        Of the new series (number default: 2000 + the source's).
    anatomy : Code, optional
        Frame anatomy region (default from the source's BodyPartExamined).
    ascending_frames : bool
        Store frames in ascending order along the slice normal (row x column direction). highdicom sorts
        frames the other way for axial series; dcmqi's ``paramap2itkimage`` (used by 3D Slicer) ignores
        per-frame positions and stacks frames in stored order from the lowest position, so it would read
        the map upside down. Only the storage order changes; every frame keeps its position and indices.

    Returns
    -------
    Path
    """
    h = np.asarray(heatmap)
    if h.ndim != 3:
        raise ValueError(f"heatmap must be 3D (z, y, x); got shape {h.shape}.")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmap holds NaN or infinite values; replace them (e.g. np.nan_to_num) before export.")
    if not sources:
        raise ValueError("sources is empty: a Parametric Map needs the source CT headers.")
    # de-identified sources may lack Type 2 patient/study attributes; the map carries them empty
    sources = complete_source_headers(sources)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    n_frames = len(sources) if len(sources) > 1 else int(sources[0].get("NumberOfFrames", 1) or 1)
    if h.shape != (n_frames, rows, cols):
        raise ValueError(
            f"heatmap shape {h.shape} does not match the source grid {(n_frames, rows, cols)} (slices, rows, "
            "columns); resample the heatmap onto the source CT first."
        )
    data = np.ascontiguousarray(h.astype(np.float32))
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        hi = lo + 1.0
    lab = "".join(c for c in label.upper() if c.isalnum() or c in " _")[:16] or "HEATMAP"
    rwvm = hd.pm.RealWorldValueMapping(
        lut_label=lab,
        lut_explanation=description[:64],
        unit=unit,
        value_range=(lo, hi),
        slope=1.0,
        intercept=0.0,
        quantity_definition=quantity,
    )
    ref = sources[0]
    pm = hd.pm.ParametricMap(
        source_images=list(sources),
        pixel_array=data,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number if series_number is not None else derived_series_number(ref, 2000),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="medxai",
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[rwvm],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=(lo + hi) / 2.0,
                window_width=hi - lo,
                window_explanation="full range",
                voi_lut_function="LINEAR_EXACT",  # allows widths < 1 (attribution scores are often in 0..1)
            )
        ],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_description=description[:64],
        content_label=lab,
        content_creator_name="medxai^",
        series_description=series_description[:64],
        coding_schemes=[_coding_scheme()],
    )
    region = anatomy or anatomic_region(ref)
    shared = pm.SharedFunctionalGroupsSequence[0]
    if "FrameAnatomySequence" not in shared:
        shared.FrameAnatomySequence = [frame_anatomy_item(region)]
    if ascending_frames:
        _order_frames_ascending(pm)
    out = save_dataset(pm, path)
    logger.info("wrote Parametric Map %s (%d frames)", out, data.shape[0])
    return out
