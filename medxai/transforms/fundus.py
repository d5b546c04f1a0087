"""Fundus photograph preprocessing: field-of-view (FOV) detection, square crop, resize, and inversion.

The chain (:func:`fundus_transforms`) is a MONAI ``Compose`` of dictionary transforms::

    EnsureTyped + EnsureChannelFirstd   (H, W, 3) uint8 -> MetaTensor (3, H, W); labels (H, W) -> (1, H, W)
    FundusFOVd                          circle fit of the bright retina -> "fov_mask" (1, H, W), "fov_box"
    SquareCropd                         square box around the circle, zero-padded where the FOV is clipped
    Resized                             (S, S); bilinear (anti-aliased) image, nearest masks
    ScaleIntensityRanged                [0, 255] -> [0, 1] float32
    MaskIntensityd                      zero outside the FOV

Arrays are row-major: spatial axes are (rows, columns) like the photo, not MONAI's PIL (W, H) order.
"""

from __future__ import annotations

import logging
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
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    MaskIntensityd,
    Resized,
    ScaleIntensityRanged,
)
from scipy import ndimage

from .common import SquareCropd, invert_with_transform, run_transform

__all__ = [
    "FieldOfView",
    "FundusConfig",
    "FundusFOVd",
    "detect_fov",
    "fundus_input_dict",
    "fundus_transforms",
    "invert_fundus",
    "FundusTransform",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldOfView:
    """A detected circular field of view.

    Attributes
    ----------
    center_row, center_col : float
        Circle centre in pixels of the photo (may lie outside it only in degenerate cases).
    radius : float
        Circle radius in pixels.
    mask : numpy.ndarray of bool, shape (H, W)
        The fitted disc clipped to the photo.
    clipped : bool
        Whether the disc extends beyond the photo (e.g. cut at top and bottom).
    """

    center_row: float
    center_col: float
    radius: float
    mask: np.ndarray
    clipped: bool


@dataclass(frozen=True)
class FundusConfig:
    """Settings of the fundus chain.

    Parameters
    ----------
    size : int
        Output side S; the image is ``(3, S, S)``.  64 for CPU work, 256 for the paper.
    margin : float
        Border around the FOV circle as a fraction of its radius.
    threshold_abs : float
        Minimum brightness (0-255, channel maximum after smoothing) counted as retina.
    threshold_rel : float
        Brightness threshold relative to the 99th percentile; the larger of the two is used.
    """

    size: int = 64
    margin: float = 0.0
    threshold_abs: float = 15.0
    threshold_rel: float = 0.1

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 4:
            raise ValueError(f"size must be an integer >= 4, got {self.size!r}; use 64 (CPU) or 256 (paper).")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}; e.g. 0.02.")
        if not 0 <= self.threshold_rel < 1:
            raise ValueError(f"threshold_rel must be in [0, 1), got {self.threshold_rel}; e.g. 0.1.")


def _check_rgb(rgb: np.ndarray, name: str = "rgb") -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"{name} must be an RGB photo of shape (H, W, 3), got shape {arr.shape}; "
            "drop the alpha channel / convert grey images with np.repeat(x[..., None], 3, -1)."
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8 (0-255), got dtype {arr.dtype}; convert with "
            "np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for images in [0, 1]."
        )
    if min(arr.shape[:2]) < 16:
        raise ValueError(f"{name} is too small ({arr.shape[:2]}); pass a fundus photo of at least 16x16 pixels.")
    return arr


def _fit_circle(rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points; returns (row, col, radius)."""
    a = np.stack([rows, cols, np.ones_like(rows)], axis=1)
    b = rows**2 + cols**2
    (p, q, s), *_ = np.linalg.lstsq(a, b, rcond=None)
    cr, cc = p / 2.0, q / 2.0
    return float(cr), float(cc), float(np.sqrt(max(s + cr**2 + cc**2, 0.0)))


def detect_fov(rgb: np.ndarray, threshold_abs: float = 15.0, threshold_rel: float = 0.1) -> FieldOfView:
    """Find the circular retina on the dark surround of a fundus photo.

    Written by hand because MONAI has no FOV detector.  The photo is downsampled to about 512 px,
    the per-pixel channel maximum is smoothed and thresholded (``max(threshold_abs, threshold_rel *
    p99)``), the largest component is kept and its holes filled, and a circle is fitted by least squares
    to the component's outline EXCLUDING the parts lying on the photo border; those straight edges are
    where the FOV is clipped (common at top and bottom), so the fit recovers the full circle there.

    Parameters
    ----------
    rgb : numpy.ndarray uint8, shape (H, W, 3)
    threshold_abs, threshold_rel : float
        See :class:`FundusConfig`.

    Returns
    -------
    FieldOfView
        ``mask`` has shape (H, W).

    Raises
    ------
    ValueError
        Wrong shape/dtype, or no bright region found.
    """
    arr = _check_rgb(rgb)
    h, w = arr.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / 512)))
    small = arr[::step, ::step].max(axis=-1).astype(np.float32)
    small = ndimage.gaussian_filter(small, sigma=2.0)
    thr = max(float(threshold_abs), float(threshold_rel) * float(np.percentile(small, 99)))
    bright = small > thr
    labels, count = ndimage.label(bright)
    if count == 0:
        raise ValueError(
            f"no field of view found: no pixel brighter than {thr:.1f} in rgb (max {int(arr.max())}); "
            "pass a fundus photo with the retina on a dark surround, or lower threshold_abs."
        )
    sizes = np.bincount(labels.ravel())[1:]
    comp = ndimage.binary_fill_holes(labels == (np.argmax(sizes) + 1))
    if comp.sum() < 0.01 * comp.size:
        raise ValueError(
            f"no field of view found: the largest bright region covers {comp.mean():.1%} of the photo (< 1 %); "
            "pass a fundus photo with the retina on a dark surround."
        )
    edge = comp & ~ndimage.binary_erosion(comp, iterations=1)
    er, ec = np.nonzero(edge)
    sh, sw = comp.shape
    inner = (er > 1) & (er < sh - 2) & (ec > 1) & (ec < sw - 2)
    rows_idx, cols_idx = np.nonzero(comp)
    bbox_r = (rows_idx.min(), rows_idx.max() + 1)
    bbox_c = (cols_idx.min(), cols_idx.max() + 1)
    fit_ok = False
    if inner.sum() >= 20:
        cr, cc, r = _fit_circle(er[inner].astype(np.float64) + 0.5, ec[inner].astype(np.float64) + 0.5)
        # sanity: the circle must roughly cover the component's bounding box
        fit_ok = r > 0 and r < 2 * max(sh, sw) and (bbox_c[1] - bbox_c[0]) <= 2.2 * r
    if not fit_ok:
        cr, cc = (bbox_r[0] + bbox_r[1]) / 2.0, (bbox_c[0] + bbox_c[1]) / 2.0
        r = max(bbox_r[1] - bbox_r[0], bbox_c[1] - bbox_c[0]) / 2.0
        logger.warning("FOV circle fit failed; using the bounding box of the bright region")
    cr, cc, r = cr * step, cc * step, r * step  # back to full resolution (pixel-centre convention)
    yy, xx = np.ogrid[:h, :w]
    mask = (yy + 0.5 - cr) ** 2 + (xx + 0.5 - cc) ** 2 <= r**2
    clipped = cr - r < -1 or cr + r > h + 1 or cc - r < -1 or cc + r > w + 1
    logger.debug("FOV centre (%.1f, %.1f) radius %.1f clipped=%s", cr, cc, r, clipped)
    return FieldOfView(center_row=cr, center_col=cc, radius=r, mask=mask, clipped=bool(clipped))


class FundusFOVd(MapTransform):
    """Detect the FOV on a channel-first RGB image and add its mask and square crop box.

    Not invertible (it only adds keys).  Writes ``data[fov_key]``: uint8 MetaTensor ``(1, H, W)``,
    ``data[box_key]``: int64 ``(2, 2)`` square box around the circle (may leave the photo),
    ``data[circle_key]``: float64 ``(3,)`` = (centre row, centre col, radius).

    Parameters
    ----------
    keys : str
        The image key, MetaTensor ``(3, H, W)`` with values 0-255.
    margin : float
        Border around the circle as a fraction of the radius.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        fov_key: str = "fov_mask",
        box_key: str = "fov_box",
        circle_key: str = "fov_circle",
        margin: float = 0.0,
        threshold_abs: float = 15.0,
        threshold_rel: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"FundusFOVd takes one image key, got {self.keys}; pass keys='image'.")
        self.fov_key, self.box_key, self.circle_key = fov_key, box_key, circle_key
        self.margin, self.threshold_abs, self.threshold_rel = margin, threshold_abs, threshold_rel

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"data[{key!r}] must be a channel-first RGB MetaTensor (3, H, W), got "
                    f"{type(img).__name__} of shape {tuple(getattr(img, 'shape', ()))}; use fundus_input_dict."
                )
            rgb = np.ascontiguousarray(img.detach().cpu().numpy().transpose(1, 2, 0))
            if rgb.dtype != np.uint8:
                rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
            fov = detect_fov(rgb, self.threshold_abs, self.threshold_rel)
            half = fov.radius * (1.0 + self.margin)
            side = max(1, int(round(2 * half)))
            start = np.floor(np.array([fov.center_row, fov.center_col]) - side / 2.0 + 0.5).astype(np.int64)
            d[self.box_key] = np.stack([start, start + side])
            d[self.circle_key] = np.array([fov.center_row, fov.center_col, fov.radius], dtype=np.float64)
            d[self.fov_key] = MetaTensor(
                torch.from_numpy(fov.mask[None].astype(np.uint8)),
                meta=deepcopy(dict(img.meta)),
                applied_operations=deepcopy(img.applied_operations),
            )
        return d


def fundus_input_dict(rgb: np.ndarray, labels: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Validate a photo (and lesion masks) and build the chain's input dict.

    Parameters
    ----------
    rgb : numpy.ndarray uint8, shape (H, W, 3)
    labels : mapping of key -> numpy.ndarray, shape (H, W), optional

    Returns
    -------
    dict
        ``{"image": copy of rgb, <label key>: copy of the label, ...}``
    """
    arr = _check_rgb(rgb)
    d: dict[str, np.ndarray] = {"image": arr.copy()}
    for key, lab in (labels or {}).items():
        lab = np.asarray(lab)
        if key in ("image", "fov_mask") or lab.shape != arr.shape[:2]:
            raise ValueError(
                f"label {key!r} must be a 2D mask of shape {arr.shape[:2]} with a key other than "
                f"'image'/'fov_mask', got shape {lab.shape}; resize the mask to the photo first."
            )
        d[key] = lab.copy()
    return d


def fundus_transforms(
    config: FundusConfig | None = None,
    label_keys: Sequence[str] = (),
    image_key: str = "image",
) -> Compose:
    """MONAI ``Compose`` for fundus photos (see the module docstring for the steps).

    Parameters
    ----------
    config : FundusConfig, optional
    label_keys : sequence of str
        2D lesion masks ``(H, W)``, resized with nearest neighbour.

    Returns
    -------
    monai.transforms.Compose
        Input: :func:`fundus_input_dict` output.  Output dict: ``image_key`` float32 ``(3, S, S)`` in
        [0, 1], 0 outside the FOV; ``"fov_mask"`` ``(1, S, S)``; each label ``(1, S, S)`` (float32
        holding the label values); ``"fov_box"``, ``"fov_circle"`` on the original photo.
    """
    cfg = config or FundusConfig()
    labels = tuple(label_keys)
    spatial_keys = (image_key, "fov_mask", *labels)
    steps: list[Any] = [
        EnsureTyped(keys=(image_key, *labels), data_type="tensor", track_meta=True),
        EnsureChannelFirstd(keys=image_key, channel_dim=-1),
    ]
    if labels:
        steps.append(EnsureChannelFirstd(keys=labels, channel_dim="no_channel"))
    steps += [
        FundusFOVd(keys=image_key, margin=cfg.margin, threshold_abs=cfg.threshold_abs, threshold_rel=cfg.threshold_rel),
        SquareCropd(keys=spatial_keys, box_key="fov_box"),
        Resized(
            keys=spatial_keys,
            spatial_size=(cfg.size, cfg.size),
            mode=("bilinear",) + ("nearest-exact",) * (len(spatial_keys) - 1),
            anti_aliasing=(True,) + (False,) * (len(spatial_keys) - 1),
        ),
        ScaleIntensityRanged(keys=image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        MaskIntensityd(keys=image_key, mask_key="fov_mask"),
        EnsureTyped(keys=image_key, dtype=torch.float32),
    ]
    return Compose(steps)


def invert_fundus(
    heatmap: np.ndarray | torch.Tensor,
    data: Mapping[Hashable, Any],
    transform: Compose,
    image_key: str = "image",
    nearest: bool = False,
) -> np.ndarray:
    """Put a heatmap on the ``(S, S)`` crop back onto the original photo grid.

    MONAI's ``Invertd`` undoes the resize (bilinear) and the square crop/pad; pixels outside the crop
    get 0.

    Parameters
    ----------
    heatmap : array or tensor, shape (S, S) or (C, S, S)
    data : mapping
        The dict ``transform`` returned for this photo.
    transform : monai.transforms.Compose
        The chain from :func:`fundus_transforms`.
    image_key : str
    nearest : bool
        Undo the resize with nearest neighbour (for label maps) instead of bilinear.

    Returns
    -------
    numpy.ndarray float32, shape (H, W) or (C, H, W)
    """
    heat = heatmap.detach().cpu() if isinstance(heatmap, torch.Tensor) else torch.as_tensor(np.asarray(heatmap))
    if heat.ndim not in (2, 3):
        raise ValueError(f"heatmap must be (S, S) or (C, S, S), got shape {tuple(heat.shape)}.")
    squeeze = heat.ndim == 2
    inv = invert_with_transform(heat[None] if squeeze else heat, data, transform, image_key=image_key, nearest=nearest)
    out = inv.detach().cpu().numpy().astype(np.float32)
    return out[0] if squeeze else out


class FundusTransform:
    """Convenience wrapper: photo in, ``(3, S, S)`` crop out, heatmaps back onto the photo.

    Parameters
    ----------
    config : FundusConfig, optional
    label_keys : sequence of str
    """

    def __init__(self, config: FundusConfig | None = None, label_keys: Sequence[str] = ()) -> None:
        self.config = config or FundusConfig()
        self.label_keys = tuple(label_keys)
        self.transform = fundus_transforms(self.config, self.label_keys)

    def __call__(self, rgb: np.ndarray, labels: Mapping[str, np.ndarray] | None = None) -> dict[Hashable, Any]:
        """Run the chain; see :func:`fundus_transforms` for the output dict."""
        labels = dict(labels or {})
        if set(labels) != set(self.label_keys):
            raise ValueError(
                f"labels has keys {sorted(labels)}, but this transform was built for {sorted(self.label_keys)}; "
                "pass exactly those masks or rebuild with label_keys=..."
            )
        return run_transform(self.transform, fundus_input_dict(rgb, labels))

    def invert(self, heatmap: np.ndarray | torch.Tensor, data: Mapping[Hashable, Any], nearest: bool = False) -> np.ndarray:
        """See :func:`invert_fundus`."""
        return invert_fundus(heatmap, data, self.transform, nearest=nearest)
