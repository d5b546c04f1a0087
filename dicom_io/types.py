"""Core image types of dicom_io: a 3D `Volume`, a 2D colour `Photo`, and the `SourceRef` that ties
either back to the DICOM objects it came from.

Geometry follows DICOM (LPS patient coordinates, millimetres). Arrays are indexed (z, y, x), i.e.
(slice, row, column); ``direction`` and ``spacing`` are given in index order (x, y, z), exactly as
SimpleITK and ITK use them, so ``affine_lps`` maps a homogeneous index (i=column, j=row, k=slice, 1)
to a point in LPS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FrameRef", "SourceRef", "Volume", "Photo", "LPS_TO_RAS"]

#: Multiplying an LPS point (or affine) on the left by this gives RAS, and vice versa.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class FrameRef:
    """One source frame behind one slice of a volume.

    Attributes
    ----------
    sop_instance_uid : str
        SOP Instance UID of the source object.
    sop_class_uid : str
        SOP Class UID of the source object.
    frame_number : int or None
        1-based frame number inside a multi-frame object; None for single-frame objects.
    """

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class SourceRef:
    """Where an image came from, with what a derived DICOM object must copy and reference.

    Attributes
    ----------
    study_instance_uid, series_instance_uid, frame_of_reference_uid : str or None
        UIDs of the source study, series and frame of reference.
    modality : str or None
        Source modality (``CT``, ``OP``, ...).
    series_description : str or None
    series_number : int or None
    frames : tuple of FrameRef or None
        One entry per slice of the volume, in the volume's slice order; None where a slice has no source
        (interpolated over a gap the user accepted).
    patient_study : dict
        Patient, study and equipment attributes of the source (pydicom keyword -> value), for derived
        objects to copy. Values are plain Python types or pydicom element values.
    files : tuple of str
        Source file paths in slice order (one file for a multi-frame object).
    """

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    frames: tuple[FrameRef | None, ...] = ()
    patient_study: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image in physical units on a (possibly oblique) regular grid.

    Attributes
    ----------
    array : np.ndarray
        float32, shape (z, y, x): slice, row, column. Hounsfield units for CT.
    spacing : tuple of float
        Voxel size in mm in index order (x, y, z): column spacing, row spacing, slice step.
    origin : tuple of float
        LPS position (mm) of the centre of voxel (x=0, y=0, z=0).
    direction : np.ndarray
        (3, 3); column c is the unit LPS direction of index axis c (x, y, z). Orthonormal except for
        gantry-tilted series, where the slice axis is sheared.
    source : SourceRef or None
        Provenance; None for volumes not read from DICOM.
    warnings : tuple of str
        Loud warnings raised while reading (accepted gaps, tilt, files left out), kept with the data.
    notes : tuple of str
        Routine facts about how values were derived (PixelPaddingValue voxels set to air), kept with
        the data like the warnings but not shouted: they are correct handling, not a problem.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: SourceRef | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (z, y, x); got shape {self.array.shape}.")
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"Volume.spacing must be three positive numbers (x, y, z); got {self.spacing}.")
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (3, 3) or abs(np.linalg.det(d)) < 1e-6:
            raise ValueError(f"Volume.direction must be an invertible 3x3 matrix; got {d!r}.")
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        z, y, x = self.array.shape
        return z, y, x

    @property
    def affine_lps(self) -> np.ndarray:
        """(4, 4) matrix mapping (i=x, j=y, k=z, 1) voxel indices to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """(4, 4) matrix mapping (i=x, j=y, k=z, 1) voxel indices to RAS millimetres (NIfTI convention)."""
        return LPS_TO_RAS @ self.affine_lps

    def replace(self, **changes: Any) -> Volume:
        """A copy with some fields replaced (the array is not copied)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Photo:
    """A 2D colour photograph (e.g. a fundus image).

    Attributes
    ----------
    array : np.ndarray
        uint8, shape (H, W, 3), RGB.
    pixel_spacing : tuple of float or None
        (row, column) spacing in mm when the source states it.
    source : SourceRef or None
        Provenance for DICOM photographs; for plain image files only ``files`` is set.
    """

    array: np.ndarray
    pixel_spacing: tuple[float, float] | None = None
    source: SourceRef | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.shape[2] != 3 or self.array.dtype != np.uint8:
            raise ValueError(f"Photo.array must be uint8 RGB of shape (H, W, 3); got {self.array.dtype} {self.array.shape}.")

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        h, w = self.array.shape[:2]
        return h, w
