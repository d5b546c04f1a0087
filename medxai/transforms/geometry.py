"""Conversion between the DICOM-side volume convention and MONAI ``MetaTensor``.

The DICOM side (``dicom_io``) describes a volume as

* ``array``: float32, shape ``(z, y, x)`` (slice, row, column),
* ``spacing``: ``(x, y, z)`` in mm,
* ``origin``: LPS position in mm of voxel ``(0, 0, 0)``,
* ``direction``: ``(3, 3)``; column ``c`` is the unit LPS direction of index axis ``c``
  in the order ``x, y, z``.

MONAI works channel-first with spatial axes in ``x, y, z`` index order (like NIfTI) and, by default,
an affine in RAS space.  The two LPS/RAS affines differ by ``diag(-1, -1, 1, 1)`` on the left.
MONAI has no reader for "arrays plus DICOM geometry", so these two small converters are written here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys, SpaceKeys

__all__ = [
    "LPS_TO_RAS",
    "lps_affine",
    "volume_to_metatensor",
    "metatensor_to_volume_arrays",
]

logger = logging.getLogger(__name__)

#: Left-multiply an LPS affine by this to get the RAS affine (and vice versa).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_vector(value: Sequence[float] | np.ndarray, name: str, length: int = 3) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (length,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be {length} finite numbers, got {value!r}; pass e.g. a tuple of {length} floats.")
    return arr


def lps_affine(
    spacing_xyz: Sequence[float] | np.ndarray,
    origin_lps: Sequence[float] | np.ndarray,
    direction_lps: Sequence[Sequence[float]] | np.ndarray,
) -> np.ndarray:
    """Return the ``(4, 4)`` affine mapping index ``(x, y, z, 1)`` to LPS mm.

    Parameters
    ----------
    spacing_xyz : sequence of 3 floats
        Voxel size along index axes ``x, y, z`` in mm (all > 0).
    origin_lps : sequence of 3 floats
        LPS position (mm) of voxel ``(0, 0, 0)``.
    direction_lps : array-like, shape (3, 3)
        Column ``c`` is the unit LPS direction of index axis ``c`` (x, y, z).

    Returns
    -------
    numpy.ndarray, shape (4, 4), float64
    """
    spacing = _as_vector(spacing_xyz, "spacing_xyz")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing_xyz must be positive, got {tuple(spacing)}; pass voxel sizes in mm > 0.")
    origin = _as_vector(origin_lps, "origin_lps")
    direction = np.asarray(direction_lps, dtype=np.float64)
    if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
        raise ValueError(
            f"direction_lps must be a finite 3x3 matrix, got shape {direction.shape}; "
            "pass the matrix whose columns are the LPS unit vectors of index axes x, y, z."
        )
    if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise ValueError(
            f"direction_lps must be orthonormal (|det| = 1), got det = {np.linalg.det(direction):.4f}; "
            "normalise its columns (they are unit direction vectors, spacing goes into spacing_xyz)."
        )
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = origin
    return affine


def volume_to_metatensor(
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float] | np.ndarray,
    origin_lps: Sequence[float] | np.ndarray,
    direction_lps: Sequence[Sequence[float]] | np.ndarray,
) -> MetaTensor:
    """Wrap a DICOM-convention volume as a channel-first MONAI ``MetaTensor`` in RAS space.

    Parameters
    ----------
    array_zyx : numpy.ndarray, shape (z, y, x)
        Volume values (e.g. HU).  Not modified; the result holds a copy (float32 unless integer labels,
        which keep their integer dtype).
    spacing_xyz : sequence of 3 floats
        Voxel size (x, y, z) in mm.
    origin_lps : sequence of 3 floats
        LPS position of voxel (0, 0, 0) in mm.
    direction_lps : array-like, shape (3, 3)
        Column c = LPS unit direction of index axis c (x, y, z).

    Returns
    -------
    monai.data.MetaTensor, shape (1, X, Y, Z)
        ``affine`` = ``diag(-1, -1, 1, 1) @ affine_lps`` (RAS), ``meta["space"] = "RAS"``.
    """
    arr = np.asarray(array_zyx)
    if arr.ndim != 3:
        raise ValueError(
            f"array_zyx must be 3D with shape (z, y, x), got ndim={arr.ndim} shape={arr.shape}; "
            "pass a single volume (stack 2D slices along axis 0)."
        )
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        arr = arr.astype(np.float32, copy=False)
    affine_ras = LPS_TO_RAS @ lps_affine(spacing_xyz, origin_lps, direction_lps)
    data = np.array(np.transpose(arr, (2, 1, 0))[None], order="C", copy=True)  # (1, X, Y, Z), never a view
    mt = MetaTensor(
        torch.from_numpy(data),
        affine=torch.as_tensor(affine_ras, dtype=torch.float64),
        meta={
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[1:]),
            MetaKeys.ORIGINAL_AFFINE: affine_ras.copy(),
        },
    )
    return mt


def metatensor_to_volume_arrays(
    mt: MetaTensor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`volume_to_metatensor`.

    Parameters
    ----------
    mt : monai.data.MetaTensor, shape (1, X, Y, Z) or (X, Y, Z)
        Its ``affine`` is read as RAS unless ``mt.meta["space"] == "LPS"``.

    Returns
    -------
    array_zyx : numpy.ndarray, shape (z, y, x)
        Same dtype as ``mt``.
    spacing_xyz : numpy.ndarray, shape (3,)
    origin_lps : numpy.ndarray, shape (3,)
    direction_lps : numpy.ndarray, shape (3, 3)
    """
    if not isinstance(mt, MetaTensor):
        raise ValueError(
            f"mt must be a monai.data.MetaTensor (it carries the affine), got {type(mt).__name__}; "
            "wrap the tensor with MetaTensor(x, affine=...)."
        )
    data = mt.detach().cpu().numpy()
    if data.ndim == 4:
        if data.shape[0] != 1:
            raise ValueError(f"mt must have one channel, got shape {tuple(data.shape)}; select a channel first (mt[c:c+1]).")
        data = data[0]
    if data.ndim != 3:
        raise ValueError(f"mt must have shape (1, X, Y, Z) or (X, Y, Z), got {tuple(mt.shape)}; pass a single 3D volume.")
    affine = np.asarray(mt.affine.detach().cpu().numpy(), dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"mt.affine must be 4x4 for a 3D volume, got shape {affine.shape}.")
    space = str(mt.meta.get(MetaKeys.SPACE, SpaceKeys.RAS))
    affine_lps = affine if space == "LPS" else LPS_TO_RAS @ affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing[None, :]
    origin = affine_lps[:3, 3].copy()
    array_zyx = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return array_zyx, spacing, origin, direction
