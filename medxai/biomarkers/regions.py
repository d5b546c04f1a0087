"""Regions of a CT stack and of a fundus image on the model's grid, for the cohort report.

CT (a stack ``(C, S, S)`` whose channels sit at ``fractions`` of the lung's craniocaudal extent, 0 =
apex, 1 = base; :class:`medxai.transforms.CTStackConfig`):

* **zone by height**: a channel at fraction ``f`` is *upper* for ``f < 1/3``, *middle* for
  ``1/3 <= f < 2/3``, *lower* for ``f >= 2/3`` (the default fractions 0.2, 0.4, 0.6, 0.8 give one
  upper, two middle and one lower slice);
* **core / rind**: inside each slice's lung mask, the distance of every lung pixel to the nearest
  non-lung pixel (the pleura, mediastinal surface included); pixels at or below the slice's median
  distance form the *rind*, the rest the *core*. An equal-area split needs no millimetre threshold,
  which the stack grid (resized to the body) could not honour across patients;
* **outside the lungs**: the body (above ``body_hu``, holes filled, per slice) minus the lungs, split
  into the *mediastinum* (inside the convex hull of the two lungs) and the *chest wall* (the rest of
  the body: skin, muscle, ribs, anything worn on the chest).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["HEIGHTS", "DEPTHS", "LUNG_ZONES", "OUTSIDE", "ct_regions", "height_of"]

HEIGHTS: tuple[str, ...] = ("upper", "middle", "lower")
DEPTHS: tuple[str, ...] = ("core", "rind")
#: the six lung zones, named ``<height>_<depth>``
LUNG_ZONES: tuple[str, ...] = tuple(f"{h}_{d}" for h in HEIGHTS for d in DEPTHS)
#: the regions outside the lungs
OUTSIDE: tuple[str, ...] = ("mediastinum", "chest_wall")


def height_of(fraction: float) -> str:
    """``upper`` / ``middle`` / ``lower`` for a position along the lung extent (0 = apex, 1 = base)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a stack fraction must lie in [0, 1] (0 = apex, 1 = base), got {fraction}.")
    return HEIGHTS[min(2, int(fraction * 3.0))]


def _rind(lung: np.ndarray) -> np.ndarray:
    """Rind of one slice's lung mask ``(S, S)``: lung pixels at or below the median distance to non-lung."""
    from scipy import ndimage

    if not lung.any():
        return np.zeros_like(lung)
    dist = ndimage.distance_transform_edt(lung)
    return lung & (dist <= np.median(dist[lung]))


def _body(hu: np.ndarray, body_hu: float) -> np.ndarray:
    """Body mask of one slice ``(S, S)``: the largest component above ``body_hu``, holes filled."""
    from scipy import ndimage

    tissue = hu > body_hu
    labels, n = ndimage.label(tissue)
    if n == 0:
        return tissue
    sizes = ndimage.sum(tissue, labels, range(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    return np.asarray(ndimage.binary_fill_holes(body), dtype=bool)


def ct_regions(
    hu: np.ndarray, lungs: np.ndarray, fractions: Sequence[float], *, body_hu: float = -500.0
) -> dict[str, np.ndarray]:
    """All report regions of one CT stack.

    Parameters
    ----------
    hu : np.ndarray
        ``(C, S, S)`` HU of the image the regions are drawn on (the query).
    lungs : np.ndarray
        ``(C, S, S)`` lung mask (non-zero = lung).
    fractions : sequence of float
        ``(C,)`` position of each channel along the lung extent.
    body_hu : float
        Threshold of the body mask (the stack transform's ``body_threshold``).

    Returns
    -------
    dict of str to np.ndarray
        bool ``(C, S, S)`` masks: ``lungs``, the six :data:`LUNG_ZONES`, the three heights (``upper`` ...,
        both depths), ``core``, ``rind``, ``mediastinum``, ``chest_wall`` and ``outside_lungs`` (their union).
    """
    from skimage.morphology import convex_hull_image

    hu, lung = np.asarray(hu, np.float32), np.asarray(lungs) > 0
    if hu.shape != lung.shape or hu.ndim != 3 or len(fractions) != hu.shape[0]:
        raise ValueError(
            f"image {hu.shape}, lung mask {lung.shape} and {len(fractions)} fractions do not describe one (C, S, S) stack."
        )
    out: dict[str, np.ndarray] = {"lungs": lung}
    rind = np.stack([_rind(lung[c]) for c in range(len(lung))])
    out["rind"], out["core"] = rind, lung & ~rind
    heights = [height_of(float(f)) for f in fractions]
    for h in HEIGHTS:
        sel = np.array([x == h for x in heights])[:, None, None]
        out[h] = lung & sel
        for d in DEPTHS:
            out[f"{h}_{d}"] = out[d] & sel
    body = np.stack([_body(hu[c], body_hu) for c in range(len(hu))]) | lung
    hull = np.stack([convex_hull_image(lung[c]) if lung[c].any() else np.zeros_like(lung[c]) for c in range(len(lung))])
    outside = body & ~lung
    out["mediastinum"] = outside & hull
    out["chest_wall"] = outside & ~hull
    out["outside_lungs"] = outside
    return out
