"""Pieces shared by the CT and fundus chains: a square crop around a box, and heatmap inversion."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, CropForeground, Invertd, InvertibleTransform, MapTransform
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import TraceKeys

__all__ = ["SquareCropd", "square_box", "invert_with_transform", "run_transform"]

logger = logging.getLogger(__name__)


def square_box(
    mask_2d: np.ndarray,
    spacing_rc: Sequence[float] = (1.0, 1.0),
    margin: float = 0.05,
) -> np.ndarray:
    """Square (in mm) box centred on the bounding box of a 2D mask.

    Parameters
    ----------
    mask_2d : numpy.ndarray, shape (H, W)
        Foreground where non-zero; must contain at least one foreground pixel.
    spacing_rc : (float, float)
        Pixel size along rows and columns (mm).  With unequal spacing the box is square in mm,
        so resizing it to ``(S, S)`` gives isotropic output pixels (physical aspect ratio kept).
    margin : float
        Extra border as a fraction of the box side on each side (``>= 0``).

    Returns
    -------
    numpy.ndarray, shape (2, 2), int64
        ``[[row_start, col_start], [row_end, col_end]]`` (end exclusive).  It may extend beyond the
        image; :class:`SquareCropd` pads there.
    """
    mask = np.asarray(mask_2d) != 0
    if mask.ndim != 2:
        raise ValueError(f"mask_2d must be 2D (H, W), got shape {mask.shape}; pass one plane.")
    if not mask.any():
        raise ValueError("mask_2d is empty, no box can be placed around it; check the mask source.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}; pass e.g. 0.05 for a 5 % border.")
    sr, sc = (float(s) for s in spacing_rc)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    centre = np.array([(rows[0] + rows[-1] + 1) / 2.0, (cols[0] + cols[-1] + 1) / 2.0])
    side_mm = max((rows[-1] - rows[0] + 1) * sr, (cols[-1] - cols[0] + 1) * sc) * (1.0 + 2.0 * margin)
    sides = np.maximum(np.round(np.array([side_mm / sr, side_mm / sc])), 1.0)
    start = np.floor(centre - sides / 2.0 + 0.5)
    return np.stack([start, start + sides]).astype(np.int64)


class SquareCropd(MapTransform, InvertibleTransform):
    """Crop ``keys`` to the box stored in ``data[box_key]``, zero-padding where it leaves the image.

    MONAI's ``CropForeground`` derives its box from a foreground mask and a symmetric margin; here the
    box comes from elsewhere (a circle fit for fundus FOVs clipped at the top/bottom, a square around
    the lungs for CT), so we compute it ourselves and reuse ``CropForeground.crop_pad`` and its
    ``inverse`` for the actual crop + pad, which keeps the op traceable and invertible.

    Parameters
    ----------
    keys : str or sequence of str
        Channel-first arrays ``(C, *spatial)`` sharing one grid.
    box_key : str
        Key holding ``[[start...], [end...]]`` (shape ``(2, n_spatial)``, end exclusive).
    """

    def __init__(self, keys: KeysCollection, box_key: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key
        self.cropper = CropForeground(allow_smaller=False, mode="constant")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.box_key not in d:
            raise ValueError(
                f"box_key {self.box_key!r} is not in the data (keys: {sorted(map(str, d))}); "
                "run the transform that computes the box first."
            )
        box = np.asarray(d[self.box_key], dtype=np.int64)
        for key in self.key_iterator(d):
            img = d[key]
            if box.shape != (2, img.ndim - 1):
                raise ValueError(
                    f"{self.box_key} must have shape (2, {img.ndim - 1}) for {key!r} of shape {tuple(img.shape)}, "
                    f"got {box.shape}."
                )
            d[key] = self.cropper.crop_pad(img, box[0], box[1], mode="constant")
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(d[key])
        return d


def invert_with_transform(
    heatmap: np.ndarray | torch.Tensor,
    data: Mapping[Hashable, Any],
    transform: Compose,
    image_key: str = "image",
    nearest: bool = False,
) -> MetaTensor:
    """Apply the inverse of ``transform`` (as recorded on ``data[image_key]``) to a heatmap.

    Uses MONAI's ``Invertd``: the heatmap borrows the image's ``applied_operations`` and every
    invertible transform of the chain is undone in reverse order (intensity transforms are not
    invertible and are skipped, so heatmap values are not rescaled).  Interpolation follows the
    image's modes (e.g. bilinear for resizing).

    Parameters
    ----------
    heatmap : array or tensor, shape (C, *spatial_of_output)
        Channel-first map on the transformed grid.
    data : mapping
        Output of ``transform`` for the image the heatmap belongs to.
    transform : monai.transforms.Compose
    image_key : str
    nearest : bool
        Force nearest-neighbour interpolation in the inverse (for label maps).

    Returns
    -------
    monai.data.MetaTensor, shape (C, *spatial_of_input)
    """
    if image_key not in data or not isinstance(data[image_key], MetaTensor):
        raise ValueError(
            f"data[{image_key!r}] must be the MetaTensor produced by the transform (it records the applied "
            f"operations), got {type(data.get(image_key)).__name__}; pass the dict the transform returned."
        )
    image = data[image_key]
    if isinstance(heatmap, MetaTensor):
        heatmap = heatmap.as_tensor()  # drop any meta of its own; it gets the image's below
    heat = torch.as_tensor(np.asarray(heatmap) if not isinstance(heatmap, torch.Tensor) else heatmap)
    heat = heat.detach().to(dtype=torch.float32, device="cpu").clone()
    if tuple(heat.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"heatmap spatial shape {tuple(heat.shape[1:])} does not match the transformed image "
            f"{tuple(image.shape[1:])}; pass a map on the transformed grid."
        )
    tmp_key = "__medxai_heatmap__"
    if nearest:
        # Invertd(nearest_interp=True) would use torch's "nearest", which indexes with floor() and shifts
        # content by up to a pixel per resize; "nearest-exact" keeps label maps in place.
        image = image.clone()
        ops = convert_applied_interp_mode(deepcopy(data[image_key].applied_operations), mode="nearest", align_corners=None)
        for op in ops:  # resampling (grid_sample) has no "nearest-exact"; only Resize needs it
            if op.get(TraceKeys.CLASS_NAME) == "Resize":
                op[TraceKeys.EXTRA_INFO]["mode"] = "nearest-exact"
        image.applied_operations = ops
    inverter = Invertd(keys=tmp_key, transform=transform, orig_keys=image_key, nearest_interp=False)
    out = inverter({image_key: image, tmp_key: MetaTensor(heat, affine=deepcopy(image.affine))})[tmp_key]
    if not isinstance(out, MetaTensor):  # pragma: no cover - Invertd returns MetaTensor for tensor input
        out = MetaTensor(out)
    return out


def run_transform(transform: Compose, data: Mapping[Hashable, Any]) -> Any:
    """Call a MONAI ``Compose`` and re-raise our ``ValueError`` instead of MONAI's wrapper.

    MONAI wraps any exception inside a transform in ``RuntimeError("applying transform ...")``; the
    ``ValueError`` that names the bad argument is its ``__cause__``.  This unwraps it so callers see the
    message (and can catch ``ValueError``).
    """
    try:
        return transform(data)
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, ValueError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
