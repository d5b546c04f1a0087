"""MONAI preprocessing for medxai: CT four-slice stacks, 3D resampling, fundus FOV crops, and inversion.

* :func:`volume_to_metatensor` / :func:`metatensor_to_volume_arrays` convert between the DICOM-side
  convention (array ``(z, y, x)``, spacing ``(x, y, z)``, LPS origin and direction) and MONAI's
  channel-first ``MetaTensor`` ``(1, X, Y, Z)`` with a RAS affine.
* :class:`CTStackTransform` / :func:`ct_stack_transforms`: HU window, LPS orientation, lung mask and
  four ORIGINAL axial slices at fractions of the lung extent -> ``(4, S, S)``; labels follow with
  nearest neighbour; :func:`invert_ct_stack` puts a stack heatmap back on the original CT grid.
* :func:`ct_volume_transforms`: orientation + ``Spacingd`` resampling + window for 3D work.
* :class:`FundusTransform` / :func:`fundus_transforms`: FOV detection, square crop, resize, [0, 1];
  :func:`invert_fundus` maps a heatmap back onto the photo.
"""

from __future__ import annotations

from .common import SquareCropd, invert_with_transform, run_transform, square_box
from .ct import (
    CTStackConfig,
    CTStackTransform,
    CTVolumeConfig,
    LungMaskd,
    RecordSourceGeometryd,
    SelectLungSlicesd,
    SelectSlices,
    ct_input_dict,
    ct_stack_transforms,
    ct_volume_transforms,
    invert_ct_stack,
    segment_lungs,
)
from .fundus import (
    FieldOfView,
    FundusConfig,
    FundusFOVd,
    FundusTransform,
    detect_fov,
    fundus_input_dict,
    fundus_transforms,
    invert_fundus,
)
from .geometry import LPS_TO_RAS, lps_affine, metatensor_to_volume_arrays, volume_to_metatensor

__all__ = [
    # geometry
    "LPS_TO_RAS",
    "lps_affine",
    "volume_to_metatensor",
    "metatensor_to_volume_arrays",
    # shared
    "SquareCropd",
    "square_box",
    "invert_with_transform",
    "run_transform",
    # CT
    "CTStackConfig",
    "CTVolumeConfig",
    "CTStackTransform",
    "RecordSourceGeometryd",
    "LungMaskd",
    "SelectSlices",
    "SelectLungSlicesd",
    "segment_lungs",
    "ct_input_dict",
    "ct_stack_transforms",
    "ct_volume_transforms",
    "invert_ct_stack",
    # fundus
    "FieldOfView",
    "FundusConfig",
    "FundusFOVd",
    "FundusTransform",
    "detect_fov",
    "fundus_input_dict",
    "fundus_transforms",
    "invert_fundus",
]
