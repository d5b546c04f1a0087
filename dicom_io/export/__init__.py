"""Exporters that put explanations where users look: DICOM in the source study (Secondary Capture
overlays, Parametric Map, Segmentation, all built with highdicom; a derived CT series such as a
counterfactual in HU) and a 3D Slicer bundle.

They take numpy arrays, DICOM headers and plain strings, never medxai objects.
"""

from ._common import (
    EXPLANATION_CATEGORY,
    HEATMAP_QUANTITY,
    HIGH_ATTRIBUTION_REGION,
    MEDXAI_SCHEME,
    TYPE2_PATIENT_STUDY,
    complete_source_header,
    read_source_headers,
)
from .derived_ct import write_derived_ct_series
from .overlay import (
    DEFAULT_COLORMAP,
    DEFAULT_NEGATIVE_COLORMAP,
    DEFAULT_PHOTO_COLORMAP,
    DEFAULT_PHOTO_NEGATIVE_COLORMAP,
    WINDOWS,
    Legend,
    check_render_options,
    colormap_lut,
    colour_scale_lines,
    render_overlay,
    render_photo_overlay,
    window_to_uint8,
)
from .parametric_map import write_parametric_map
from .secondary_capture import (
    UNLINKED_PATIENT,
    MultiFrameTrueColorSCImage,
    write_photo_secondary_capture,
    write_secondary_capture,
)
from .segmentation import threshold_heatmap, write_segmentation
from .slicer import check_same_grid, write_color_table, write_slicer_bundle

__all__ = [
    "MEDXAI_SCHEME",
    "HEATMAP_QUANTITY",
    "HIGH_ATTRIBUTION_REGION",
    "EXPLANATION_CATEGORY",
    "read_source_headers",
    "TYPE2_PATIENT_STUDY",
    "complete_source_header",
    "WINDOWS",
    "Legend",
    "check_render_options",
    "colormap_lut",
    "colour_scale_lines",
    "render_overlay",
    "render_photo_overlay",
    "window_to_uint8",
    "DEFAULT_COLORMAP",
    "DEFAULT_NEGATIVE_COLORMAP",
    "DEFAULT_PHOTO_COLORMAP",
    "DEFAULT_PHOTO_NEGATIVE_COLORMAP",
    "write_parametric_map",
    "write_derived_ct_series",
    "UNLINKED_PATIENT",
    "MultiFrameTrueColorSCImage",
    "write_secondary_capture",
    "write_photo_secondary_capture",
    "threshold_heatmap",
    "write_segmentation",
    "check_same_grid",
    "write_color_table",
    "write_slicer_bundle",
]
