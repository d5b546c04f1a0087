"""Rendering of explanation overlays: a CT slice (or photo) in a window, the heatmap blended on top with a
colour map, a colour bar and a burned-in legend. Pure numpy + Pillow + matplotlib colour maps; no DICOM.

How a value is drawn (the overlay must never make a weak value look stronger than a strong one):

- the scale is the heatmap's largest magnitude ``M`` (``max(|vmin|, |vmax|)``); a pixel with ``|v| <=
  threshold * M`` is left exactly as the image (untinted);
- above it, the ramp ``s = (|v| / M - threshold) / (1 - threshold)`` (0..1) sets both the opacity
  (``alpha * s``, so opacity rises monotonically with the value) and the colour (``s`` indexes the map);
- the colour maps are chosen so that the colour distance from ANY grey pixel, times the opacity, never
  decreases with the value: a higher value is never less visible than a lower one, on a dark lung or on
  bright tissue. Dark ends of a map are cut (a black tint would be invisible on a dark CT), and maps that
  would still break this rule (e.g. ``inferno``, whose light top end blends into bright tissue) are
  refused with a ValueError;
- a signed map (``vmin < 0``, e.g. a counterfactual difference) is drawn by magnitude with two maps:
  ``colormap`` for positive values, ``negative_colormap`` for negative ones;
- the colour bar is rendered by the same code over a mid-grey pixel, so it shows exactly what is drawn,
  including the untinted band below the threshold.

Defaults: ``autumn`` (red -> yellow) for CT, whose low end is a saturated red that shows on black lung and
white bone alike, with ``winter`` (blue -> green) for negative values; photographs (red-orange fundus)
use the reverse pair so the tint contrasts with the retina.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "WINDOWS",
    "DEFAULT_COLORMAP",
    "DEFAULT_NEGATIVE_COLORMAP",
    "DEFAULT_PHOTO_COLORMAP",
    "DEFAULT_PHOTO_NEGATIVE_COLORMAP",
    "Legend",
    "check_render_options",
    "window_to_uint8",
    "colormap_lut",
    "colour_scale_lines",
    "render_overlay",
    "render_photo_overlay",
]

logger = logging.getLogger(__name__)

#: Named CT windows as (centre, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft-tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}

RESEARCH_NOTICE = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"

#: CT overlays: red (faint, just above the threshold) -> yellow (opaque, the maximum).
DEFAULT_COLORMAP = "autumn"
#: Negative values of a signed CT map: blue -> green.
DEFAULT_NEGATIVE_COLORMAP = "winter"
#: Photographs (fundus, red-orange): blue -> green, which stands out from the retina.
DEFAULT_PHOTO_COLORMAP = "winter"
#: Negative values of a signed photo map.
DEFAULT_PHOTO_NEGATIVE_COLORMAP = "autumn"

#: Colour-map entries darker than this luma (0..1, ITU-R BT.601) are cut from the map's ends.
MIN_LUMA = 0.25
#: Grey of the pixel the colour bar is drawn over.
_BAR_BASE = 128
_LUMA = np.array([0.299, 0.587, 0.114])


def _probability(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        p = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Legend {name} must be a number (a probability); got {value!r}.") from e
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(
            f"{name}={value!r} (--{name.replace('_', '-')} at the CLI) is not a probability: the overlay legend "
            "shows P(target) in [0, 1]. Pass the "
            "model's softmax/sigmoid output for the target class, not a logit or a raw score."
        )
    return p


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
        The black box's probability of the target for the query and for the counterfactual, in [0, 1]
        (softmax/sigmoid output; a ValueError otherwise). Shown as ``P(target): 0.955 -> 0.000``.
    extra : tuple of str
        Further lines (e.g. ``"counterfactual image"``).
    step : str or float, optional
        Counterfactual step (signed guidance strength) of the shown image; a number is shown as
        ``Step: a = +1.6``, a string as ``Step: <string>``.
    quantity : str
        What the heatmap values are (colour-scale line), e.g. ``"attribution"`` or
        ``"counterfactual - query"``.
    units : str, optional
        Units of the heatmap values (e.g. ``"HU"``); ``None`` when unitless.
    """

    method: str = "unknown"
    target: str = "unknown"
    score_before: float | None = None
    score_after: float | None = None
    extra: tuple[str, ...] = ()
    step: str | float | None = None
    quantity: str = "attribution"
    units: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_before", _probability("score_before", self.score_before))
        object.__setattr__(self, "score_after", _probability("score_after", self.score_after))
        if self.step is not None and not isinstance(self.step, str):
            try:
                step = float(self.step)
            except (TypeError, ValueError) as e:
                raise ValueError(f"Legend step must be a number or a string; got {self.step!r}.") from e
            if not math.isfinite(step):
                raise ValueError(f"Legend step must be finite; got {self.step!r}.")
            object.__setattr__(self, "step", step)
        object.__setattr__(self, "extra", tuple(str(e) for e in self.extra))

    def lines(self) -> list[str]:
        """The legend as text lines (ASCII only, so every viewer and font shows them)."""
        out = [f"Method: {self.method}", f"Target: {self.target}"]
        if self.step is not None:
            out.append(f"Step: a = {self.step:+.3g}" if isinstance(self.step, float) else f"Step: {self.step}")
        if self.score_before is not None or self.score_after is not None:
            b = "n/a" if self.score_before is None else f"{self.score_before:.3f}"
            a = "n/a" if self.score_after is None else f"{self.score_after:.3f}"
            out.append(f"P(target): {b} -> {a}")
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


@functools.lru_cache(maxsize=32)
def _lut(name: str, min_luma: float) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as e:
        raise ValueError(f"colormap {name!r} is not a matplotlib colour map; try 'autumn', 'winter' or 'plasma'.") from e
    x = np.linspace(0.0, 1.0, 1024)
    rgb8 = np.clip(np.rint(cmap(x)[:, :3] * 255), 0, 255)  # judged as drawn (uint8)
    bright = np.nonzero(rgb8 @ _LUMA >= min_luma * 255)[0]
    if bright.size == 0:
        raise ValueError(f"colormap {name!r} is darker than luma {min_luma} everywhere; it would not show on a dark CT.")
    # cut the dark ends (a near-black tint is invisible on a dark lung and reads as "nothing there")
    lo, hi = x[bright[0]], x[bright[-1]]
    lut = np.clip(np.rint(cmap(np.linspace(lo, hi, 256))[:, :3] * 255), 0, 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def colormap_lut(name: str = DEFAULT_COLORMAP, *, min_luma: float = MIN_LUMA) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colour map, without its dark ends.

    Parameters
    ----------
    name : str
        matplotlib colour map name.
    min_luma : float
        Entries at either end darker than this luma (0..1) are cut and the rest resampled to 256; pass 0
        to keep the whole map.

    Returns
    -------
    np.ndarray
        (256, 3) uint8; entry 0 is drawn just above the threshold, entry 255 at the maximum.
    """
    return _lut(str(name), float(min_luma)).copy()


@functools.lru_cache(maxsize=32)
def _visibility_ok(name: str) -> bool:
    """Whether opacity ramp x colour distance rises with the value over every grey pixel 0..255."""
    lut = _lut(name, MIN_LUMA).astype(np.float64)
    s = np.arange(1, 257) / 256.0
    grey = np.arange(256.0)
    dist = np.linalg.norm(lut[None, :, :] - grey[:, None, None], axis=2)  # (grey, s)
    return bool(np.all(np.diff(s[None, :] * dist, axis=1) >= -1e-9))


def _checked_lut(name: str, option: str) -> np.ndarray:
    lut = _lut(str(name), MIN_LUMA)
    if not _visibility_ok(str(name)):
        raise ValueError(
            f"{option} {name!r} would draw some higher values less visibly than lower ones (its colours come "
            "close to the grey of the image, e.g. a light yellow end on bright tissue), so the overlay could "
            "show weak areas as strong. Use a map whose colours stay away from greys: 'autumn' (red -> "
            "yellow, the CT default), 'winter' (blue -> green), 'cool', 'spring', 'plasma' or 'Wistia'."
        )
    return lut


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class _Scale:
    """The colour scale of one rendering: magnitude ``top``, ``threshold`` fraction, signed or not."""

    top: float
    threshold: float
    signed: bool
    alpha: float
    pos: np.ndarray
    neg: np.ndarray


def check_render_options(alpha: float, threshold: float) -> None:
    """Refuse an ``alpha`` outside (0, 1] or a ``threshold`` outside [0, 1) (ValueError naming it).

    Callers that render later (the export job) call it first, so a bad option fails before any work.
    """
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and 0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha (the heatmap's maximum opacity) must lie in (0, 1]; got {alpha!r}.")
    if isinstance(threshold, bool) or not (isinstance(threshold, numbers.Real) and 0.0 <= float(threshold) < 1.0):
        raise ValueError(
            f"threshold (fraction of the heatmap's largest |value| below which nothing is tinted) must lie in "
            f"[0, 1); got {threshold!r}."
        )


def _scale(
    heat: np.ndarray,
    vmin: float | None,
    vmax: float | None,
    alpha: float,
    threshold: float,
    colormap: str,
    negative_colormap: str,
) -> _Scale:
    check_render_options(alpha, threshold)
    lo = float(heat.min()) if vmin is None else float(vmin)
    hi = float(heat.max()) if vmax is None else float(vmax)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"vmin and vmax must be finite; got {vmin!r}, {vmax!r}.")
    signed = lo < 0.0
    top = max(abs(lo), abs(hi))
    pos = _checked_lut(colormap, "colormap")
    neg = _checked_lut(negative_colormap, "negative_colormap") if signed else pos
    return _Scale(top if top > 0 else 1.0, float(threshold), signed, float(alpha), pos, neg)


def _tint(base_rgb: np.ndarray, heat: np.ndarray, sc: _Scale) -> np.ndarray:
    """Blend ``heat`` (same (H, W) as ``base_rgb``'s first two axes) over the base; see the module doc."""
    mag = np.clip(np.abs(heat) / sc.top, 0.0, 1.0)
    ramp = np.clip((mag - sc.threshold) / (1.0 - sc.threshold), 0.0, 1.0)
    ramp = np.where(mag > sc.threshold, ramp, 0.0)
    idx = np.clip(np.rint(ramp * 255), 0, 255).astype(np.intp)
    colour = np.where((heat < 0)[..., None], sc.neg[idx], sc.pos[idx]).astype(np.float64)
    a = (sc.alpha * ramp)[..., None]
    base = base_rgb.astype(np.float64)
    out = base + a * (colour - base)  # a == 0 leaves the base pixel exactly as it was
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def colour_scale_lines(
    legend: Legend,
    top: float,
    threshold: float,
    *,
    signed: bool = False,
    colormap: str = DEFAULT_COLORMAP,
    negative_colormap: str = DEFAULT_NEGATIVE_COLORMAP,
) -> list[str]:
    """Legend lines that state the colour scale: what the bar's ends mean, the untinted band, units.

    Parameters
    ----------
    legend : Legend
        Supplies ``quantity`` and ``units``.
    top : float
        Largest |value| (the bar's end, fully opaque).
    threshold : float
        Fraction of ``top`` at and below which nothing is tinted.
    signed : bool
        Whether negative values are drawn (with ``negative_colormap``).
    colormap, negative_colormap : str
        Names of the maps, as drawn.

    Returns
    -------
    list of str
    """
    q = legend.quantity + (f" ({legend.units})" if legend.units else "")
    t = threshold * top
    band = f"({threshold:.0%} of max): not tinted. Bar drawn over mid-grey."
    if signed:
        lines = [
            f"Colour: {q}: > 0 {colormap}, < 0 {negative_colormap}; |value| from {_fmt(t)} (faint) to {_fmt(top)} (opaque)",
            f"|value| <= {_fmt(t)} {band}",
        ]
    else:
        lines = [
            f"Colour ({colormap}): {q} from {_fmt(t)} (faint) to {_fmt(top)} (opaque)",
            f"{legend.quantity} <= {_fmt(t)} {band}",
        ]
    return [line.encode("ascii", "replace").decode("ascii") for line in lines]


def _wrap(lines: list[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    out: list[str] = []
    for line in lines:
        chars = len(line)
        while chars > 8 and font.getlength(line[:chars]) > width:
            chars -= 1
        out.extend(textwrap.wrap(line, chars) if chars < len(line) else [line])
    return out


def _compose(blended: np.ndarray, sc: _Scale, lines: list[str], min_width: int) -> np.ndarray:
    h, w = blended.shape[:2]
    scale = max(1, int(np.ceil(min_width / max(w, 1))))
    img = Image.fromarray(blended).resize(
        (w * scale, h * scale), Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    )
    W, H = img.size
    fsize = max(10, min(W // 40, 20))
    font = _font(fsize)
    bar_w, label_w, pad = max(12, W // 40), fsize * 5, max(4, fsize // 2)
    total_w = W + bar_w + label_w + 3 * pad
    notice = lines[-1]
    lines = _wrap(lines, font, total_w - 2 * pad)
    text_h = (fsize + 4) * len(lines) + 2 * pad
    canvas = Image.new("RGB", (total_w, H + text_h), (0, 0, 0))
    canvas.paste(img, (0, 0))
    # colour bar, top = +max: the same tint as the image, over a mid-grey pixel
    values = np.linspace(sc.top, -sc.top if sc.signed else 0.0, H)
    column = _tint(np.full((H, 1, 3), _BAR_BASE, dtype=np.uint8), values[:, None], sc)
    canvas.paste(Image.fromarray(np.repeat(column, bar_w, axis=1)), (W + pad, 0))
    draw = ImageDraw.Draw(canvas)
    x_lab = W + 2 * pad + bar_w
    t = sc.threshold * sc.top
    ticks = [sc.top, t, 0.0, -t, -sc.top] if sc.signed else [sc.top, t, 0.0]
    last_y = -fsize
    for value in ticks:
        row = int(round((values[0] - value) / (values[0] - values[-1]) * (H - 1)))
        y = min(max(row - fsize // 2, 0), H - fsize - 2)
        if y - last_y < fsize:  # labels would overlap (e.g. threshold 0)
            continue
        draw.line([(W + pad + bar_w, row), (x_lab - 1, row)], fill=(255, 255, 255))
        draw.text((x_lab, y), _fmt(value) if value <= 0 or not sc.signed else f"+{_fmt(value)}", fill=(255, 255, 255), font=font)
        last_y = y
    y = H + pad
    for line in lines:
        colour = (255, 210, 0) if line == notice else (255, 255, 255)
        draw.text((pad, y), line, fill=colour, font=font)
        y += fsize + 4
    return np.asarray(canvas, dtype=np.uint8).copy()


def _legend_lines(legend: Legend, sc: _Scale, colormap: str, negative_colormap: str) -> list[str]:
    lines = legend.lines()
    scale = colour_scale_lines(
        legend, sc.top, sc.threshold, signed=sc.signed, colormap=colormap, negative_colormap=negative_colormap
    )
    return [*lines[:-1], *scale, lines[-1]]


def _heat(heatmap: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    legend: Legend,
    *,
    window: str | tuple[float, float] = "lung",
    colormap: str = DEFAULT_COLORMAP,
    negative_colormap: str = DEFAULT_NEGATIVE_COLORMAP,
    alpha: float = 0.6,
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
        (H, W) values on the same grid (NaN/inf are drawn as 0, untinted).
    legend : Legend
    window : str or (centre, width)
    colormap : str
        matplotlib colour map of positive values (faint low end just above the threshold, opaque high end);
        maps that could show a higher value less visibly than a lower one are refused (see module doc).
    negative_colormap : str
        Map of negative values when the map is signed (``vmin < 0``).
    alpha : float
        Opacity at the largest |value|, in (0, 1]; opacity rises linearly from 0 at the threshold.
    threshold : float
        Fraction of the largest |value|, in [0, 1); pixels at or below it are left untinted.
    vmin, vmax : float, optional
        Heatmap range (default: min and max of ``heatmap``); the scale's end is ``max(|vmin|, |vmax|)`` and
        the map is signed when ``vmin < 0``. Pass the volume's range so that all slices share one scale.
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
        raise ValueError(f"image and heatmap must be 2D arrays of one shape; got {image.shape} and {heatmap.shape}.")
    heat = _heat(heatmap)
    sc = _scale(heat, vmin, vmax, alpha, threshold, colormap, negative_colormap)
    grey = window_to_uint8(image, window)
    base = np.repeat(grey[..., None], 3, axis=-1)
    lines = _legend_lines(legend, sc, colormap, negative_colormap)
    return _compose(_tint(base, heat, sc), sc, lines, min_width)


def render_photo_overlay(
    photo: np.ndarray,
    heatmap: np.ndarray,
    legend: Legend,
    *,
    colormap: str = DEFAULT_PHOTO_COLORMAP,
    negative_colormap: str = DEFAULT_PHOTO_NEGATIVE_COLORMAP,
    alpha: float = 0.6,
    threshold: float = 0.05,
    vmin: float | None = None,
    vmax: float | None = None,
    min_width: int = 512,
) -> np.ndarray:
    """Like `render_overlay` for a colour photograph (H, W, 3) uint8 and a (H, W) heatmap.

    The defaults tint blue -> green, which contrasts with a red-orange fundus.
    """
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be uint8 RGB (H, W, 3); got {photo.dtype} {photo.shape}.")
    if np.asarray(heatmap).shape != photo.shape[:2]:
        raise ValueError(f"heatmap shape {np.asarray(heatmap).shape} must equal the photo's (H, W) {photo.shape[:2]}.")
    heat = _heat(heatmap)
    sc = _scale(heat, vmin, vmax, alpha, threshold, colormap, negative_colormap)
    lines = _legend_lines(legend, sc, colormap, negative_colormap)
    return _compose(_tint(photo, heat, sc), sc, lines, min_width)


def stack_shapes(frames: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Common shape of rendered frames (raises if they differ)."""
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"rendered frames differ in shape: {sorted(shapes)}.")
    return next(iter(shapes))
