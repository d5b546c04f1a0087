"""CT preprocessing: HU window, orientation, lung mask, four-slice stack, and its inversion.

The stack chain (:func:`ct_stack_transforms`) is a MONAI ``Compose`` of dictionary transforms::

    RecordSourceGeometryd   remember the input affine/shape (to report original slice indices)
    Orientationd("LPS")     pure flip/permutation; rows(y) -> posterior, columns(x) -> patient left, z -> superior
    LungMaskd               lung + body masks from HU (MONAI has no lung segmentation)
    ScaleIntensityRanged    HU window -> [0, 1] (clipped)
    SelectLungSlicesd       four ORIGINAL axial slices at fractions of the lung extent -> (4, y, x)
    SquareCropd             square (in mm) box around the body/lungs, zero-padded where needed
    Resized                 (4, S, S); bilinear for the image, nearest for labels/lung mask
    DeleteItemsd            drop helper keys

Every spatial step is an ``InvertibleTransform``, so a heatmap on the stack goes back to the original
grid with MONAI's ``Invertd`` (:func:`invert_ct_stack`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    DeleteItemsd,
    InvertibleTransform,
    MapTransform,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    Transform,
)
from scipy import ndimage

from .common import SquareCropd, invert_with_transform, run_transform, square_box
from .geometry import volume_to_metatensor

__all__ = [
    "CTStackConfig",
    "CTVolumeConfig",
    "RecordSourceGeometryd",
    "LungMaskd",
    "SelectSlices",
    "SelectLungSlicesd",
    "segment_lungs",
    "ct_input_dict",
    "ct_stack_transforms",
    "ct_volume_transforms",
    "invert_ct_stack",
    "CTStackTransform",
]

logger = logging.getLogger(__name__)

SOURCE_AFFINE = "medxai_source_affine"
SOURCE_SHAPE = "medxai_source_shape"
SLICE_INDICES = "slice_indices"
LUNG_VOLUME_ML = "medxai_lung_volume_ml"  # meta of the lung mask: segmented lung volume (mL), for input checks


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class CTStackConfig:
    """Settings of the four-slice CT stack chain.

    Parameters
    ----------
    window_level, window_width : float
        HU window; values are clipped to ``[level - width/2, level + width/2]`` and scaled to [0, 1].
        Default: lung window (-600, 1500).
    fractions : tuple of float
        Positions of the stack slices along the lung's craniocaudal extent, each in [0, 1]:
        0 = most superior lung slice (apex), 1 = most inferior (base).  One channel per fraction.
    size : int
        Output in-plane size S (stack is ``(len(fractions), S, S)``); 64 for CPU work, 256 for the paper.
    lung_threshold : float
        Voxels below this HU (and inside the body) are lung candidates.
    body_threshold : float
        Voxels above this HU are body (tissue) candidates.
    mask_max_inplane : int or None
        The lung/body masks are computed on an in-plane subsampled grid (integer stride, z untouched) of
        at most this many pixels per side and repeated back, for speed on 512x512 scans; ``None``: full
        resolution.
    max_lung_components : int
        Keep at most this many of the largest air components inside the body (2 = left and right lung).
    min_component_fraction : float
        A further component is kept only if its size is at least this fraction of the largest.
    crop_to : {"body", "lungs"}
        What the in-plane square crop is centred on and sized to.
    crop_margin : float
        Border around the crop target as a fraction of its extent, each side.
    axcodes : str
        Target orientation; "LPS" gives the radiological view.
    """

    window_level: float = -600.0
    window_width: float = 1500.0
    fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    size: int = 64
    lung_threshold: float = -400.0
    body_threshold: float = -500.0
    mask_max_inplane: int | None = 256
    max_lung_components: int = 2
    min_component_fraction: float = 0.1
    crop_to: str = "body"
    crop_margin: float = 0.05
    axcodes: str = "LPS"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        _check_fractions(self.fractions)
        if self.window_width <= 0:
            raise ValueError(f"window_width must be > 0, got {self.window_width}; e.g. 1500 for a lung window.")
        if int(self.size) != self.size or self.size < 4:
            raise ValueError(f"size must be an integer >= 4, got {self.size!r}; use 64 (CPU) or 256 (paper).")
        if self.crop_to not in ("body", "lungs"):
            raise ValueError(f"crop_to must be 'body' or 'lungs', got {self.crop_to!r}.")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}; e.g. 0.05.")
        if self.mask_max_inplane is not None and self.mask_max_inplane < 16:
            raise ValueError(f"mask_max_inplane must be >= 16 or None, got {self.mask_max_inplane}; e.g. 256.")
        if self.max_lung_components < 1:
            raise ValueError(f"max_lung_components must be >= 1, got {self.max_lung_components}.")
        if self.lung_threshold >= self.body_threshold + 500 or self.lung_threshold > 0:
            raise ValueError(
                f"lung_threshold={self.lung_threshold} HU is implausible (body_threshold={self.body_threshold}); "
                "use about -400 HU for lungs."
            )
        if len(self.axcodes) != 3:
            raise ValueError(f"axcodes must be 3 letters like 'LPS', got {self.axcodes!r}.")

    @property
    def window_range(self) -> tuple[float, float]:
        """``(a_min, a_max)`` HU of the window."""
        return (self.window_level - self.window_width / 2.0, self.window_level + self.window_width / 2.0)


@dataclass(frozen=True)
class CTVolumeConfig:
    """Settings of the plain 3D chain (:func:`ct_volume_transforms`).

    Parameters
    ----------
    pixdim : tuple of 3 floats or None
        Target voxel size (x, y, z) in mm for ``Spacingd``; a component <= 0 keeps the input's spacing
        along that axis.  ``None`` skips resampling.
    window_level, window_width : float or None
        HU window to [0, 1]; ``window_width=None`` keeps raw HU.
    axcodes : str
        Target orientation (pure flip/permutation).
    """

    pixdim: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    window_level: float = -600.0
    window_width: float | None = 1500.0
    axcodes: str = "LPS"

    def __post_init__(self) -> None:
        if self.pixdim is not None and len(tuple(self.pixdim)) != 3:
            raise ValueError(f"pixdim must be 3 numbers (x, y, z) in mm or None, got {self.pixdim!r}.")
        if self.window_width is not None and self.window_width <= 0:
            raise ValueError(f"window_width must be > 0 or None, got {self.window_width}.")


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) == 0:
        raise ValueError("fractions is empty; pass e.g. (0.2, 0.4, 0.6, 0.8).")
    bad = [f for f in fractions if not (0.0 <= f <= 1.0) or not np.isfinite(f)]
    if bad:
        raise ValueError(
            f"fractions must lie in [0, 1] (0 = lung apex, 1 = lung base), got {tuple(fractions)} "
            f"(offending {bad}); pass e.g. (0.2, 0.4, 0.6, 0.8)."
        )


# ------------------------------------------------------------------------------------- lung masking
def _largest_components(mask: np.ndarray, n: int, min_fraction: float, structure: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:n]
    lut = np.zeros(count + 1, dtype=bool)
    lut[[i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]] = True
    return lut[labels]


def _inplane_structure() -> np.ndarray:
    st = np.zeros((3, 3, 3), dtype=bool)
    st[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return st


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """2D hole filling of every axial slice (axis 2) in one labelling pass.

    Background components are labelled with in-plane connectivity only, so each lives in one slice;
    those touching the x/y border are outside, all others are holes.  Much faster than calling
    ``binary_fill_holes`` slice by slice.
    """
    labels, count = ndimage.label(~mask, structure=_inplane_structure())
    if count == 0:
        return mask.astype(bool, copy=True)
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()]))
    touches = np.zeros(count + 1, dtype=bool)
    touches[border] = True
    touches[0] = False
    return ~touches[labels]


def segment_lungs(
    hu_xyz: np.ndarray,
    lung_threshold: float = -400.0,
    body_threshold: float = -500.0,
    max_components: int = 2,
    min_component_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold-based lung and body masks of a CT volume in HU.

    Written by hand because MONAI ships no lung segmentation transform.  Steps: body = largest 3D
    component above ``body_threshold``, holes filled slice by slice; lung candidates = below
    ``lung_threshold`` inside the body, minus air components that touch the in-plane border of the
    volume; a small in-plane opening; the largest ``max_components`` components; a small in-plane
    closing; holes (vessels) filled slice by slice.  The z borders are not treated as "outside" because scans
    often cut through lungs.

    Parameters
    ----------
    hu_xyz : numpy.ndarray, shape (X, Y, Z)
        HU values; axis 2 must be the axial slice axis.
    lung_threshold, body_threshold, max_components, min_component_fraction
        See :class:`CTStackConfig`.

    Returns
    -------
    lung : numpy.ndarray of bool, shape (X, Y, Z)
    body : numpy.ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    ValueError
        If the input is not 3D, or no lungs are found.
    """
    hu = np.asarray(hu_xyz)
    if hu.ndim != 3:
        raise ValueError(f"hu_xyz must be 3D (X, Y, Z), got shape {hu.shape}; pass one CT volume in HU.")
    conn3 = ndimage.generate_binary_structure(3, 1)
    inplane = _inplane_structure()

    body = _largest_components(hu > body_threshold, 1, 0.0, conn3)
    body = _fill_holes_per_slice(body)

    air = hu < lung_threshold
    labels, count = ndimage.label(air, structure=conn3)
    if count:
        border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()]))
        outside = np.zeros(count + 1, dtype=bool)
        outside[border[border > 0]] = True
        air &= ~outside[labels]
    candidates = ndimage.binary_opening(air & body, structure=inplane)
    lung = _largest_components(candidates, max_components, min_component_fraction, conn3)
    min_voxels = max(27, int(1e-4 * hu.size))
    if lung.sum() < min_voxels:
        raise ValueError(
            f"no lungs found: {int(lung.sum())} voxels below lung_threshold={lung_threshold} HU inside the body "
            f"(need >= {min_voxels}); input HU range is [{float(hu.min()):.0f}, {float(hu.max()):.0f}]. "
            "Pass a chest CT in Hounsfield units (apply RescaleSlope/Intercept) or adjust lung_threshold."
        )
    lung = _fill_holes_per_slice(ndimage.binary_closing(lung, structure=inplane))
    return lung, body


# -------------------------------------------------------------------------------------- transforms
def _meta_like(array: np.ndarray | torch.Tensor, ref: MetaTensor) -> MetaTensor:
    """A MetaTensor with ``ref``'s affine, meta and applied operations (copied)."""
    # the affine travels inside meta; passing it separately would make MetaTensor warn
    return MetaTensor(torch.as_tensor(array), meta=deepcopy(dict(ref.meta)), applied_operations=deepcopy(ref.applied_operations))


def _require_metatensor(img: Any, key: Hashable, ndim: int) -> MetaTensor:
    if not isinstance(img, MetaTensor):
        raise ValueError(
            f"data[{key!r}] must be a monai.data.MetaTensor with an affine, got {type(img).__name__}; "
            "build the input with ct_input_dict(...) or load it with MONAI's LoadImaged."
        )
    if img.ndim != ndim:
        raise ValueError(
            f"data[{key!r}] must have {ndim} dims (C, X, Y, Z), got shape {tuple(img.shape)}; pass a channel-first 3D volume."
        )
    return img


class RecordSourceGeometryd(MapTransform):
    """Store each key's current affine and spatial shape in its meta (for original slice indices).

    Not invertible (it changes no voxel).  Keys: channel-first MetaTensors ``(C, X, Y, Z)``.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = _require_metatensor(d[key], key, 4)
            out = img.clone()
            out.meta[SOURCE_AFFINE] = img.affine.detach().cpu().numpy().astype(np.float64)
            out.meta[SOURCE_SHAPE] = np.asarray(img.shape[1:], dtype=np.int64)
            d[key] = out
        return d


class LungMaskd(MapTransform):
    """Add lung (and body) masks computed from an HU image, see :func:`segment_lungs`.

    Must run before any intensity window.  Not invertible: it only adds keys.

    Parameters
    ----------
    keys : str
        The HU image key, shape ``(1, X, Y, Z)`` with Z the axial slice axis.
    lung_key, body_key : str
        Output keys; masks are uint8 MetaTensors ``(1, X, Y, Z)`` on the image's grid.
    max_inplane : int or None
        Segment on an in-plane subsampled grid of at most this size (see ``CTStackConfig.mask_max_inplane``).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        lung_key: str = "lung_mask",
        body_key: str = "body_mask",
        lung_threshold: float = -400.0,
        body_threshold: float = -500.0,
        max_components: int = 2,
        min_component_fraction: float = 0.1,
        max_inplane: int | None = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LungMaskd takes one image key, got {self.keys}; pass keys='image'.")
        self.lung_key, self.body_key = lung_key, body_key
        self.max_inplane = max_inplane
        self.kwargs = dict(
            lung_threshold=lung_threshold,
            body_threshold=body_threshold,
            max_components=max_components,
            min_component_fraction=min_component_fraction,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = _require_metatensor(d[key], key, 4)
            if img.shape[0] != 1:
                raise ValueError(f"data[{key!r}] must have one channel, got shape {tuple(img.shape)}.")
            hu = img[0].detach().cpu().numpy()
            nx, ny = hu.shape[:2]
            step = 1 if self.max_inplane is None else max(1, int(np.ceil(max(nx, ny) / self.max_inplane)))
            lung, body = segment_lungs(hu[::step, ::step], **self.kwargs)
            if step > 1:  # back to full resolution (nearest), z was never subsampled
                lung = np.repeat(np.repeat(lung, step, 0), step, 1)[:nx, :ny]
                body = np.repeat(np.repeat(body, step, 0), step, 1)[:nx, :ny]
            d[self.lung_key] = _meta_like(torch.from_numpy(lung[None].astype(np.uint8)), img)
            d[self.body_key] = _meta_like(torch.from_numpy(body[None].astype(np.uint8)), img)
            # recorded here, where the whole mask exists, so an input check need not segment again
            voxel_ml = abs(float(np.linalg.det(img.affine.detach().cpu().numpy()[:3, :3]))) / 1000.0
            d[self.lung_key].meta[LUNG_VOLUME_ML] = float(lung.sum()) * voxel_ml
            logger.debug("lung mask: %d voxels, body %d voxels", int(lung.sum()), int(body.sum()))
        return d


class SelectSlices(InvertibleTransform, Transform):
    """Pick axial slices of a ``(C, X, Y, Z)`` volume as channels of a ``(C*n, Y, X)`` image.

    No interpolation: every output channel is one input slice.  The in-plane axes are transposed so
    rows follow Y and columns follow X (after LPS orientation: rows run posterior, columns to patient
    left).  Output channel ``c * n + j`` is input channel ``c`` at slice ``indices[j]``.  The output
    affine maps ``(row, col, 0)`` onto the plane of the first selected slice.  Written here because MONAI
    has no "slices as channels" transform.

    ``inverse`` takes ``(C'*n, Y, X)`` (any ``C'``) and returns ``(C', X, Y, Z)`` with the maps on the
    selected slices and 0 on every other slice (for repeated indices the last one wins).
    """

    def __call__(self, img: MetaTensor, indices: Sequence[int]) -> MetaTensor:  # type: ignore[override]
        idx = [int(i) for i in indices]
        if img.ndim != 4:
            raise ValueError(f"img must be (C, X, Y, Z), got shape {tuple(img.shape)}.")
        nz = img.shape[3]
        if not idx or min(idx) < 0 or max(idx) >= nz:
            raise ValueError(f"indices must be in [0, {nz - 1}], got {idx}.")
        picked = img.as_tensor()[..., idx]  # (C, X, Y, n)
        stack = picked.permute(0, 3, 2, 1).reshape(-1, img.shape[2], img.shape[1])  # (C*n, Y, X)
        affine3 = img.affine.detach().cpu().to(torch.float64)
        aff2 = torch.eye(4, dtype=torch.float64)
        aff2[:, 0], aff2[:, 1], aff2[:, 2] = affine3[:, 1], affine3[:, 0], affine3[:, 2]
        aff2[:3, 3] = affine3[:3, 3] + idx[0] * affine3[:3, 2]
        aff2[3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
        out = _meta_like(stack.contiguous().clone(), img)
        out.affine = aff2
        self.push_transform(
            out,
            orig_size=tuple(int(s) for s in img.shape[1:]),
            extra_info={"indices": idx, "affine": affine3.numpy().copy()},
        )
        return out

    def inverse(self, data: MetaTensor) -> MetaTensor:
        transform = self.pop_transform(data)
        idx = list(transform["extra_info"]["indices"])
        nx, ny, nz = (int(s) for s in transform["orig_size"])
        n = len(idx)
        if data.shape[0] % n != 0:
            raise ValueError(
                f"cannot invert the slice selection: {data.shape[0]} channels is not a multiple of the "
                f"{n} selected slices; pass a heatmap of shape ({n}, H, W) or (C, {n}, H, W)."
            )
        c = data.shape[0] // n
        x = data.as_tensor().reshape(c, n, ny, nx).permute(0, 1, 3, 2)  # (C', n, X, Y)
        vol = torch.zeros((c, nx, ny, nz), dtype=x.dtype)
        for j, k in enumerate(idx):
            vol[..., k] = x[:, j]
        out = MetaTensor(vol, meta=deepcopy(dict(data.meta)), applied_operations=data.applied_operations)
        out.affine = torch.as_tensor(transform["extra_info"]["affine"], dtype=torch.float64)
        return out


def _source_slice_map(affine_now: np.ndarray, affine_src: np.ndarray) -> tuple[float, float]:
    """Return (a, b) with source_z = a * z_now + b; ValueError if the slice axis is not kept."""
    m = np.linalg.inv(affine_src) @ affine_now
    row = m[2]
    if abs(row[0]) > 1e-3 or abs(row[1]) > 1e-3 or abs(abs(row[2]) - 1.0) > 1e-3 or abs(row[3] - round(row[3])) > 1e-3:
        raise ValueError(
            "the axial slices of the oriented volume are not original slices of the input "
            f"(index map z_src = {row[:3].round(3).tolist()} . ijk + {row[3]:.3f}); the input's slice axis (z) "
            "must be the craniocaudal axis and no resampling may precede slice selection. "
            "Resample non-axial series to axial first (e.g. ct_volume_transforms), then rebuild the input."
        )
    return float(round(row[2])), float(round(row[3]))


class SelectLungSlicesd(MapTransform, InvertibleTransform):
    """Select original axial slices at fixed fractions of the lung's craniocaudal extent.

    Reads the lung mask (``lung_key``, ``(1, X, Y, Z)``) to find the extent, turns every key
    ``(C, X, Y, Z)`` into ``(C*n, Y, X)`` with :class:`SelectSlices`, and writes

    * ``data[indices_key]``: int64 ``(n,)``, the index of each channel's slice in the INPUT array's
      z order (``array_zyx[k]`` on the DICOM side), also stored as ``meta["slice_indices"]`` of each key;
    * ``data[box_key]``: the square crop box ``(2, 2)`` around ``crop_source_key`` on those slices.

    Parameters
    ----------
    keys : keys to stack (image, labels, lung mask).
    lung_key : mask defining the lung extent.
    fractions : 0 = most superior lung slice, 1 = most inferior.
    crop_source_key : mask whose union over the selected slices defines the crop (body or lungs).
    crop_margin : border fraction for :func:`square_box`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lung_key: str = "lung_mask",
        fractions: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
        crop_source_key: str = "body_mask",
        crop_margin: float = 0.05,
        box_key: str = "crop_box",
        indices_key: str = SLICE_INDICES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fractions = tuple(float(f) for f in fractions)
        _check_fractions(self.fractions)
        self.lung_key, self.crop_source_key = lung_key, crop_source_key
        self.crop_margin, self.box_key, self.indices_key = crop_margin, box_key, indices_key
        self.selector = SelectSlices()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        lung = _require_metatensor(d.get(self.lung_key), self.lung_key, 4)
        occupied = np.flatnonzero(lung.as_tensor().detach().cpu().numpy().any(axis=(0, 1, 2)))
        if occupied.size == 0:
            raise ValueError(f"data[{self.lung_key!r}] is empty: no lungs found to place the slices on.")
        z_lo, z_hi = int(occupied[0]), int(occupied[-1])
        affine = lung.affine.detach().cpu().numpy().astype(np.float64)
        superior_increasing = affine[2, 2] >= 0  # RAS affine: row 2 is S
        apex, base = (z_hi, z_lo) if superior_increasing else (z_lo, z_hi)
        now_idx = [int(round(apex + f * (base - apex))) for f in self.fractions]
        if len(set(now_idx)) < len(now_idx):
            warnings.warn(
                f"lung extent spans only {z_hi - z_lo + 1} slices; fractions {self.fractions} give repeated slices {now_idx}.",
                stacklevel=2,
            )
        src_affine = np.asarray(lung.meta.get(SOURCE_AFFINE, affine), dtype=np.float64)
        a, b = _source_slice_map(affine, src_affine)
        src_idx = np.asarray([int(round(a * k + b)) for k in now_idx], dtype=np.int64)

        crop_src = _require_metatensor(d.get(self.crop_source_key), self.crop_source_key, 4)
        plane = crop_src.as_tensor().detach().cpu().numpy()[..., now_idx].any(axis=(0, 3)).T  # (Y, X)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (x, y, z) mm
        d[self.box_key] = square_box(plane, spacing_rc=(spacing[1], spacing[0]), margin=self.crop_margin)
        for key in self.key_iterator(d):
            img = _require_metatensor(d[key], key, 4)
            if tuple(img.shape[1:]) != tuple(lung.shape[1:]):
                raise ValueError(
                    f"data[{key!r}] shape {tuple(img.shape)} differs from the lung mask {tuple(lung.shape)}; "
                    "labels must share the image's grid."
                )
            out = self.selector(img, now_idx)
            out.meta[SLICE_INDICES] = src_idx.copy()
            d[key] = out
        d[self.indices_key] = src_idx
        logger.debug("lung extent z=[%d, %d] (oriented); slices %s (source %s)", z_lo, z_hi, now_idx, src_idx)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.selector.inverse(d[key])
        return d


# ------------------------------------------------------------------------------------------ chains
def ct_input_dict(
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin_lps: Sequence[float],
    direction_lps: Sequence[Sequence[float]] | np.ndarray,
    labels: Mapping[str, np.ndarray] | None = None,
) -> dict[str, MetaTensor]:
    """Build the input dict of the CT chains from DICOM-convention arrays.

    Parameters
    ----------
    array_zyx : numpy.ndarray, shape (z, y, x)
        CT in HU.
    spacing_xyz, origin_lps, direction_lps
        Geometry as in :func:`medxai.transforms.volume_to_metatensor`.
    labels : mapping of key -> numpy.ndarray, shape (z, y, x), optional
        Label volumes on the same grid (e.g. lesion masks).

    Returns
    -------
    dict
        ``{"image": MetaTensor (1, X, Y, Z), <label key>: MetaTensor (1, X, Y, Z), ...}``
    """
    arr = np.asarray(array_zyx)
    if arr.ndim != 3:
        raise ValueError(
            f"array_zyx must be 3D with shape (z, y, x), got ndim={arr.ndim} shape={arr.shape}; pass a single CT volume."
        )
    d: dict[str, MetaTensor] = {"image": volume_to_metatensor(arr, spacing_xyz, origin_lps, direction_lps)}
    for key, lab in (labels or {}).items():
        lab = np.asarray(lab)
        if key == "image" or lab.shape != arr.shape:
            raise ValueError(
                f"label {key!r} must have the image's shape {arr.shape} and a key other than 'image', "
                f"got shape {lab.shape}; resample the label onto the CT grid first."
            )
        d[key] = volume_to_metatensor(lab, spacing_xyz, origin_lps, direction_lps)
    return d


def ct_stack_transforms(
    config: CTStackConfig | None = None,
    label_keys: Sequence[str] = (),
    image_key: str = "image",
) -> Compose:
    """MONAI ``Compose`` turning a CT dict into a ``(n, S, S)`` stack of original axial slices.

    Parameters
    ----------
    config : CTStackConfig, optional
    label_keys : sequence of str
        Label volumes ``(1, X, Y, Z)`` that follow the same geometry with nearest-neighbour resizing.
    image_key : str

    Returns
    -------
    monai.transforms.Compose
        Input: dict with MetaTensors ``(1, X, Y, Z)`` (see :func:`ct_input_dict`).  Output dict:
        ``image_key``: float32 ``(n, S, S)`` in [0, 1]; each label key and ``"lung_mask"``: float32
        ``(n, S, S)`` holding the label values (``Resized`` returns float32; nearest keeps the values);
        ``"slice_indices"`` int64 ``(n,)`` (source z index per channel);
        ``"crop_box"`` (in-plane box on the oriented grid).  ``n = len(config.fractions)``.
        MONAI wraps errors raised inside a ``Compose`` in ``RuntimeError``; call it through
        :func:`~medxai.transforms.run_transform` (as :class:`CTStackTransform` does) to get the
        ``ValueError`` that names the bad input.
    """
    cfg = config or CTStackConfig()
    labels = tuple(label_keys)
    if image_key in labels or "lung_mask" in labels or "body_mask" in labels:
        raise ValueError(f"label_keys {labels} must not reuse '{image_key}', 'lung_mask' or 'body_mask'.")
    volume_keys = (image_key, *labels)
    stack_keys = (image_key, *labels, "lung_mask")
    a_min, a_max = cfg.window_range
    return Compose(
        [
            RecordSourceGeometryd(keys=volume_keys),
            Orientationd(keys=volume_keys, axcodes=cfg.axcodes, labels=None),
            LungMaskd(
                keys=image_key,
                lung_threshold=cfg.lung_threshold,
                body_threshold=cfg.body_threshold,
                max_components=cfg.max_lung_components,
                min_component_fraction=cfg.min_component_fraction,
                max_inplane=cfg.mask_max_inplane,
            ),
            ScaleIntensityRanged(keys=image_key, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
            SelectLungSlicesd(
                keys=stack_keys,
                fractions=cfg.fractions,
                crop_source_key="body_mask" if cfg.crop_to == "body" else "lung_mask",
                crop_margin=cfg.crop_margin,
            ),
            SquareCropd(keys=stack_keys, box_key="crop_box"),
            Resized(
                keys=stack_keys,
                spatial_size=(cfg.size, cfg.size),
                mode=("bilinear",) + ("nearest-exact",) * (len(stack_keys) - 1),
                anti_aliasing=(True,) + (False,) * (len(stack_keys) - 1),
            ),
            DeleteItemsd(keys="body_mask"),
        ]
    )


def ct_volume_transforms(
    config: CTVolumeConfig | None = None,
    label_keys: Sequence[str] = (),
    image_key: str = "image",
) -> Compose:
    """Plain 3D chain: orientation, optional resampling to ``config.pixdim`` (MONAI ``Spacingd``), HU window.

    Parameters
    ----------
    config : CTVolumeConfig, optional
    label_keys : sequence of str
        Labels resampled with nearest neighbour.

    Returns
    -------
    monai.transforms.Compose
        Input and output: dict of MetaTensors ``(1, X, Y, Z)``; the output grid has voxel size
        ``pixdim`` (this DOES interpolate along z, unlike :func:`ct_stack_transforms`).  Invertible
        (``Compose.inverse`` / ``Invertd``) except for the window.
    """
    cfg = config or CTVolumeConfig()
    keys = (image_key, *label_keys)
    steps: list[Any] = [Orientationd(keys=keys, axcodes=cfg.axcodes, labels=None)]
    if cfg.pixdim is not None:
        steps.append(
            Spacingd(
                keys=keys,
                pixdim=tuple(float(p) for p in cfg.pixdim),
                mode=("bilinear",) + ("nearest",) * len(label_keys),
                padding_mode="border",
            )
        )
    if cfg.window_width is not None:
        lo, hi = cfg.window_level - cfg.window_width / 2.0, cfg.window_level + cfg.window_width / 2.0
        steps.append(ScaleIntensityRanged(keys=image_key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    return Compose(steps)


def invert_ct_stack(
    heatmap: np.ndarray | torch.Tensor,
    data: Mapping[Hashable, Any],
    transform: Compose,
    image_key: str = "image",
    nearest: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Put a heatmap on the stack back onto the ORIGINAL CT grid.

    MONAI's ``Invertd`` replays the image's recorded operations backwards: resize back to the crop
    size, undo the square crop/pad (zeros outside the crop), :class:`SelectSlices` scatters channel
    ``j`` onto oriented slice ``indices[j]`` (zeros on all other slices), and ``Orientation`` is undone.

    Parameters
    ----------
    heatmap : array or tensor, shape (n, S, S) or (C, n, S, S)
        Map on the stack, ``n`` = number of stack slices.
    data : mapping
        The dict ``transform`` returned for this CT.
    transform : monai.transforms.Compose
        The chain from :func:`ct_stack_transforms` that produced ``data``.
    image_key : str
    nearest : bool
        Undo the resize with nearest neighbour (for label maps) instead of the image's bilinear mode.

    Returns
    -------
    volume : numpy.ndarray float32, shape (z, y, x) or (C, z, y, x)
        On the input ``array_zyx`` grid: the heatmap on the selected slices, 0 on all others and
        outside the crop.
    slice_indices : numpy.ndarray int64, shape (n,)
        ``volume[slice_indices[j]]`` holds channel ``j``.
    """
    heat = heatmap.detach().cpu() if isinstance(heatmap, torch.Tensor) else torch.as_tensor(np.asarray(heatmap))
    if heat.ndim not in (3, 4):
        raise ValueError(
            f"heatmap must be (n, S, S) or (C, n, S, S), got shape {tuple(heat.shape)}; add/remove the channel axis."
        )
    squeeze = heat.ndim == 3
    if heat.ndim == 4:
        heat = heat.reshape(-1, *heat.shape[2:])
    inv = invert_with_transform(heat, data, transform, image_key=image_key, nearest=nearest)  # (C, X, Y, Z)
    vol = np.ascontiguousarray(inv.detach().cpu().numpy().transpose(0, 3, 2, 1)).astype(np.float32)
    indices = np.asarray(data.get(SLICE_INDICES, data[image_key].meta.get(SLICE_INDICES)), dtype=np.int64)
    return (vol[0] if squeeze else vol), indices


class CTStackTransform:
    """Convenience wrapper: DICOM-convention arrays in, stack out, heatmaps back.

    Parameters
    ----------
    config : CTStackConfig, optional
    label_keys : sequence of str
        Names of the label volumes passed to :meth:`__call__`.

    Examples
    --------
    >>> t = CTStackTransform(CTStackConfig(size=64), label_keys=("lesion",))   # doctest: +SKIP
    >>> out = t(hu_zyx, spacing, origin, direction, labels={"lesion": mask_zyx})  # doctest: +SKIP
    >>> out["image"].shape, out["slice_indices"]                                # (4, 64, 64), z per channel
    >>> vol, idx = t.invert(heatmap_4hw, out)                                   # (z, y, x) on the CT grid
    """

    def __init__(self, config: CTStackConfig | None = None, label_keys: Sequence[str] = ()) -> None:
        self.config = config or CTStackConfig()
        self.label_keys = tuple(label_keys)
        self.transform = ct_stack_transforms(self.config, self.label_keys)

    def __call__(
        self,
        array_zyx: np.ndarray,
        spacing_xyz: Sequence[float],
        origin_lps: Sequence[float],
        direction_lps: Sequence[Sequence[float]] | np.ndarray,
        labels: Mapping[str, np.ndarray] | None = None,
    ) -> dict[Hashable, Any]:
        """Run the chain; see :func:`ct_stack_transforms` for the output dict."""
        labels = dict(labels or {})
        if set(labels) != set(self.label_keys):
            raise ValueError(
                f"labels has keys {sorted(labels)}, but this transform was built for {sorted(self.label_keys)}; "
                "pass exactly those label volumes or rebuild with label_keys=..."
            )
        return run_transform(self.transform, ct_input_dict(array_zyx, spacing_xyz, origin_lps, direction_lps, labels))

    def invert(
        self, heatmap: np.ndarray | torch.Tensor, data: Mapping[Hashable, Any], nearest: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`invert_ct_stack`."""
        return invert_ct_stack(heatmap, data, self.transform, nearest=nearest)
