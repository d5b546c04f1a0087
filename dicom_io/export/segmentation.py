"""Binary Segmentation export (highdicom `seg.Segmentation`) of a thresholded heatmap."""

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
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ._common import (
    EXPLANATION_CATEGORY,
    HIGH_ATTRIBUTION_REGION,
    MEDXAI_SCHEME,
    SOFTWARE_VERSION,
    complete_source_headers,
    derived_series_number,
    save_dataset,
)

__all__ = ["write_segmentation", "threshold_heatmap"]

logger = logging.getLogger(__name__)


def threshold_heatmap(heatmap: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Boolean mask (same shape) of voxels above ``fraction`` of the heatmap's maximum."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1); got {fraction}.")
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    top = float(h.max())
    if top <= 0:
        return np.zeros(h.shape, dtype=bool)
    return h >= fraction * top


def write_segmentation(
    mask: np.ndarray,
    sources: Sequence[Dataset],
    path: str | os.PathLike[str],
    *,
    segment_label: str = "high attribution",
    method: str = "medxai",
    description: str = "medxai thresholded explanation heatmap",
    series_description: str = "medxai heatmap region (SEG)",
    series_number: int | None = None,
    manufacturer: str = "medxai",
) -> Path:
    """Write a boolean mask (z, y, x) on the source grid as a binary DICOM Segmentation (one segment).

    Parameters
    ----------
    mask : np.ndarray
        bool (z, y, x), slice k on ``sources[k]``.
    sources : sequence of Dataset
        Source CT headers in volume slice order.
    path : path
        Output file (temporary name, then renamed).
    segment_label, method, description, series_description, series_number, manufacturer : optional
    """
    m = np.asarray(mask)
    if m.ndim != 3 or m.dtype != np.bool_:
        raise ValueError(f"mask must be a boolean (z, y, x) array; got {m.dtype} {m.shape}.")
    if not sources:
        raise ValueError("sources is empty: a Segmentation needs the source CT headers.")
    # de-identified sources may lack Type 2 patient/study attributes; the SEG carries them empty
    sources = complete_source_headers(sources)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    n_frames = len(sources) if len(sources) > 1 else int(sources[0].get("NumberOfFrames", 1) or 1)
    if m.shape != (n_frames, rows, cols):
        raise ValueError(f"mask shape {m.shape} does not match the source grid {(n_frames, rows, cols)}.")
    algo = hd.AlgorithmIdentificationSequence(
        name=method[:64], family=codes.cid7162.ArtificialIntelligence, version=SOFTWARE_VERSION
    )
    seg_desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label[:64],
        segmented_property_category=EXPLANATION_CATEGORY,
        segmented_property_type=HIGH_ATTRIBUTION_REGION,
        algorithm_type="AUTOMATIC",
        algorithm_identification=algo,
    )
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=m.astype(np.uint8),
        segmentation_type="BINARY",
        segment_descriptions=[seg_desc],
        series_instance_uid=generate_uid(),
        series_number=series_number if series_number is not None else derived_series_number(sources[0], 3000),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="medxai",
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        content_description=description[:64],
        content_label="HEATMAPREGION",
        series_description=series_description[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=MEDXAI_SCHEME, name="medxai local codes", responsible_organization="medxai project"
            )
        ],
    )
    out = save_dataset(seg, path)
    logger.info("wrote Segmentation %s", out)
    return out
