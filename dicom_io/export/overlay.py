"""Rendering of explanation overlays: a CT slice (or photo) in a window, the heatmap blended on top with a
colour map, a colour bar and a burned-in legend. Pure numpy + Pillow + matplotlib colour maps; no DICOM."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["WINDOWS", "Legend", "window_to_uint8", "colormap_lut", "render_overlay", "render_photo_overlay"]

logger = logging.getLogger(__name__)

#: Named CT windows as (centre, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft-tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}

RESEARCH_NOTICE = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"


@dataclass(frozen=True)
class Legend:
    """What the burned-in legend says.

    Attributes
    ----------
    method : str
        Explanation method (e.g. ``"DiffExplainer"``).
    target : str
        What was explained (e.g. ``"malignancy score up"``).
    score_before, score_after : float or None
        Black-box score of the query and of the counterfactual.
    extra : tuple of str
        Further lines (e.g. ``"counterfactual image"``).
    """

    method: str = "unknown"
    target: str = "unknown"
    score_before: float | None = None
    score_after: float | None = None
    extra: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The legend as text lines (ASCII only, so every viewer and font shows them)."""
        out = [f"Method: {self.method}", f"Target: {self.target}"]
        if self.score_before is not None or self.score_after is not None:
            b = "n/a" if self.score_before is None else f"{self.score_before:.3f}"
            a = "n/a" if self.score_after is None else f"{self.score_after:.3f}"
            out.append(f"Model score: {b} -> {a}")
        out.extend(self.extra)
        out.append(RESEARCH_NOTICE)
        return [line.encode("ascii", "replace").decode("ascii") for line in out]

    def describe(self) -> str:
        """One line for DICOM descriptions (DerivationDescription, ContentDescription)."""
        return "; ".join(self.lines()[:-1])


def window_to_uint8(hu: np.ndarray, window: str | tuple[float, float] = "lung") -> np.ndarray:
    """Map values to 0..255 with a (centre, width) window.

    Parameters
    ----------
    hu : np.ndarray
        Any shape, physical values (HU).
    window : str or (centre, width)
        A name from `WINDOWS` or an explicit pair.

    Returns
    -------
    np.ndarray
        uint8, same shape.
    """
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {sorted(WINDOWS)} or (centre, width); got {window!r}.")
        c, w = WINDOWS[window]
    else:
        c, w = (float(v) for v in window)
        if w <= 0:
            raise ValueError(f"window width must be > 0; got {w}.")
    lo = c - w / 2.0
    x = (np.asarray(hu, dtype=np.float64) - lo) / w
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def colormap_lut(name: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colour map."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as e:
        raise ValueError(f"colormap {name!r} is not a matplotlib colour map; try 'inferno', 'jet' or 'hot'.") from e
    return np.clip(np.rint(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def _normalise(heat: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[np.ndarray, float, float]:
    h = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(h.min()) if vmin is None else float(vmin)
    hi = float(h.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((h - lo) / (hi - lo), 0.0, 1.0), lo, hi


def _blend(base_rgb: np.ndarray, heat01: np.ndarray, lut: np.ndarray, alpha: float, threshold: float) -> np.ndarray:
    idx = np.clip(np.rint(heat01 * 255), 0, 255).astype(np.intp)
    colour = lut[idx].astype(np.float64)
    a = np.where(heat01 > threshold, alpha, 0.0)[..., None]
    out = (1.0 - a) * base_rgb.astype(np.float64) + a * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _compose(
    blended: np.ndarray, lut: np.ndarray, lo: float, hi: float, legend: Legend, min_width: int
) -> np.ndarray:
    h, w = blended.shape[:2]
    scale = max(1, int(np.ceil(min_width / max(w, 1))))
    img = Image.fromarray(blended).resize((w * scale, h * scale), Image.NEAREST if scale > 1 else Image.BILINEAR)
    W, H = img.size
    fsize = max(10, min(W // 40, 20))
    font = _font(fsize)
    bar_w, label_w, pad = max(12, W // 40), fsize * 5, max(4, fsize // 2)
    lines = legend.lines()
    text_h = (fsize + 4) * len(lines) + 2 * pad
    canvas = Image.new("RGB", (W + bar_w + label_w + 3 * pad, H + text_h), (0, 0, 0))
    canvas.paste(img, (0, 0))
    # colour bar: top = high values
    bar = lut[::-1][np.linspace(0, 255, H).astype(np.intp)]
    bar_img = Image.fromarray(np.repeat(bar[:, None, :], bar_w, axis=1).astype(np.uint8))
    canvas.paste(bar_img, (W + pad, 0))
    draw = ImageDraw.Draw(canvas)
    x_lab = W + 2 * pad + bar_w
    for frac, value in ((0.0, hi), (0.5, (lo + hi) / 2), (1.0, lo)):
        y = int(frac * (H - fsize - 2))
        draw.text((x_lab, y), f"{value:.3g}", fill=(255, 255, 255), font=font)
    y = H + pad
    for i, line in enumerate(lines):
        colour = (255, 210, 0) if i == len(lines) - 1 else (255, 255, 255)
        draw.text((pad, y), line, fill=colour, font=font)
        y += fsize + 4
    return np.asarray(canvas, dtype=np.uint8).copy()


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    legend: Legend,
    *,
    window: str | tuple[float, float] = "lung",
    colormap: str = "inferno",
    alpha: float = 0.5,
    threshold: float = 0.05,
    vmin: float | None = None,
    vmax: float | None = None,
    min_width: int = 512,
) -> np.ndarray:
    """A CT slice in a window with a heatmap on top, a colour bar and a legend burned in.

    Parameters
    ----------
    image : np.ndarray
        (H, W) physical values (HU).
    heatmap : np.ndarray
        (H, W) attribution values on the same grid.
    legend : Legend
    window : str or (centre, width)
    colormap : str
        matplotlib colour map name.
    alpha : float
        Opacity of the heatmap where it is above ``threshold`` (after scaling to 0..1).
    vmin, vmax : float, optional
        Heatmap range mapped to the colour map ends (default: min and max of ``heatmap``); pass the
        volume's range so that all slices share one colour scale.
    min_width : int
        The image is enlarged by an integer factor to at least this width so the legend is legible.

    Returns
    -------
    np.ndarray
        uint8 (H', W', 3) RGB with H' >= H, W' >= W.
    """
    image = np.asarray(image)
    heatmap = np.asarray(heatmap)
    if image.ndim != 2 or heatmap.shape != image.shape:
        raise ValueError(
            f"image and heatmap must be 2D arrays of one shape; got {image.shape} and {heatmap.shape}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
    lut = colormap_lut(colormap)
    grey = window_to_uint8(image, window)
    base = np.repeat(grey[..., None], 3, axis=-1)
    heat01, lo, hi = _normalise(heatmap, vmin, vmax)
    return _compose(_blend(base, heat01, lut, alpha, threshold), lut, lo, hi, legend, min_width)


def render_photo_overlay(
    photo: np.ndarray,
    heatmap: np.ndarray,
    legend: Legend,
    *,
    colormap: str = "inferno",
    alpha: float = 0.5,
    threshold: float = 0.05,
    vmin: float | None = None,
    vmax: float | None = None,
    min_width: int = 512,
) -> np.ndarray:
    """Like `render_overlay` for a colour photograph (H, W, 3) uint8 and a (H, W) heatmap."""
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be uint8 RGB (H, W, 3); got {photo.dtype} {photo.shape}.")
    if np.asarray(heatmap).shape != photo.shape[:2]:
        raise ValueError(f"heatmap shape {np.asarray(heatmap).shape} must equal the photo's (H, W) {photo.shape[:2]}.")
    lut = colormap_lut(colormap)
    heat01, lo, hi = _normalise(heatmap, vmin, vmax)
    return _compose(_blend(photo, heat01, lut, alpha, threshold), lut, lo, hi, legend, min_width)


def stack_shapes(frames: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Common shape of rendered frames (raises if they differ)."""
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"rendered frames differ in shape: {sorted(shapes)}.")
    return next(iter(shapes))
