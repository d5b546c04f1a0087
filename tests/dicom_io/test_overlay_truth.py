"""Overlays tell the truth: a higher value is never drawn less visibly than a lower one, untinted means
below the threshold, the colour bar is what is drawn, the legend states method, step and probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_io.export import (
    DEFAULT_COLORMAP,
    DEFAULT_NEGATIVE_COLORMAP,
    DEFAULT_PHOTO_COLORMAP,
    Legend,
    colormap_lut,
    colour_scale_lines,
    render_overlay,
    render_photo_overlay,
)

LUMA = np.array([0.299, 0.587, 0.114])
# window (centre 0, width 255): HU value v is drawn as grey rint(v + 127.5), so HU = grey - 127.5
GREY_WINDOW = (0.0, 255.0)
H, W = 8, 64  # W == min_width, so the image is not enlarged and pixels map 1:1


def _render_ramp(grey: int, values: np.ndarray, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    """Render ``values`` (one per column) over a uniform grey; return (image part, base grey)."""
    image = np.full((H, values.size), grey - 127.5)
    heat = np.tile(values, (H, 1))
    out = render_overlay(image, heat, Legend("m", "t"), window=GREY_WINDOW, min_width=values.size, **kw)
    return out[:H, : values.size].astype(np.float64), np.full(3, float(grey))


def _visibility(img: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Colour distance of each pixel of row 0 from the untinted base pixel."""
    return np.linalg.norm(img[0] - base, axis=-1)


@pytest.mark.parametrize("grey", [0, 20, 60, 128, 200, 255])
@pytest.mark.parametrize("alpha", [0.3, 0.6, 1.0])
def test_higher_value_never_less_visible(grey: int, alpha: float) -> None:
    values = np.linspace(0.0, 1.0, W)
    img, base = _render_ramp(grey, values, alpha=alpha, threshold=0.1)
    vis = _visibility(img, base)
    assert np.all(np.diff(vis) >= 0), (grey, alpha, np.round(vis, 1))
    below = values <= 0.1
    assert np.array_equal(img[0][below], np.broadcast_to(base, (below.sum(), 3))), "below threshold must be untinted"
    assert vis[-1] > 50 * alpha, "the maximum must be clearly visible"


@pytest.mark.parametrize("grey", [0, 30, 128, 255])
def test_signed_map_visibility_follows_magnitude(grey: int) -> None:
    values = np.linspace(-1.0, 1.0, 2 * W + 1)
    img, base = _render_ramp(grey, values, alpha=0.6, threshold=0.05)
    vis = _visibility(img, base)
    neg, pos = vis[: W + 1][::-1], vis[W:]  # both from 0 outwards
    assert np.all(np.diff(pos) >= 0) and np.all(np.diff(neg) >= 0)
    assert np.array_equal(img[0][W], base)  # zero: untinted
    # the two signs are drawn with different colours
    assert np.linalg.norm(img[0][0] - img[0][-1]) > 100


def test_zero_and_below_threshold_are_exactly_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1000, 400, (H, W))  # textured, as a CT
    heat = rng.uniform(0, 1, (H, W))
    heat[:, : W // 2] *= 0.2  # left half at most 0.2 of the max
    heat[0, 0] = 0.0
    out = render_overlay(image, heat, Legend(), threshold=0.25, vmax=1.0, min_width=W)[:H, :W]
    from dicom_io.export import window_to_uint8

    base = np.repeat(window_to_uint8(image, "lung")[..., None], 3, axis=-1)
    untinted = heat <= 0.25
    assert np.array_equal(out[untinted], base[untinted])
    assert not np.array_equal(out[~untinted], base[~untinted])


def test_lowest_tinted_colour_is_not_near_black() -> None:
    for name in (DEFAULT_COLORMAP, DEFAULT_NEGATIVE_COLORMAP, DEFAULT_PHOTO_COLORMAP, "inferno", "viridis"):
        lut = colormap_lut(name).astype(np.float64) / 255
        assert lut[0] @ LUMA >= 0.25, name  # dark ends are cut
        assert lut[-1] @ LUMA >= 0.25, name
    # on a black CT, a value just above the threshold is tinted with a visible colour, not darkened
    img, base = _render_ramp(0, np.linspace(0.0, 1.0, W), alpha=1.0, threshold=0.05)
    tinted = _visibility(img, base) > 0
    first = img[0][np.argmax(tinted)]
    assert np.all(img[0][tinted] @ LUMA >= first @ LUMA)  # nothing above it is darker


@pytest.mark.parametrize("signed", [False, True])
def test_colour_bar_is_what_is_drawn(signed: bool) -> None:
    n = 96
    top = 2.5
    ramp = np.linspace(top, -top if signed else 0.0, n)  # row 0 = the largest value, as the bar
    image = np.full((n, n), 128 - 127.5)  # mid-grey, the bar's base
    heat = np.tile(ramp[:, None], (1, n))
    out = render_overlay(image, heat, Legend(), window=GREY_WINDOW, min_width=n, threshold=0.2, alpha=0.7)
    column = out[:n, n // 2]
    bar_columns = [c for c in range(n, out.shape[1]) if np.array_equal(out[:n, c], column)]
    assert bar_columns, "no column of the colour bar equals the rendered ramp"
    # and the bar shows the untinted band: rows at or below the threshold are the plain grey
    untinted = np.abs(ramp) <= 0.2 * top
    assert np.all(out[:n, bar_columns[0]][untinted] == 128)
    assert np.all(np.any(out[:n, bar_columns[0]][~untinted] != 128, axis=-1))


def test_photo_overlay_over_fundus_colours_is_monotone() -> None:
    values = np.linspace(0.0, 1.0, W)
    for rgb in ((200, 90, 40), (120, 40, 20), (0, 0, 0)):
        photo = np.empty((H, W, 3), dtype=np.uint8)
        photo[:] = rgb
        out = render_photo_overlay(photo, np.tile(values, (H, 1)), Legend(), min_width=W)
        vis = _visibility(out[:H, :W].astype(np.float64), np.asarray(rgb, dtype=np.float64))
        assert np.all(np.diff(vis) >= 0), rgb
        assert vis[-1] > 50


def test_legend_states_method_step_and_probabilities() -> None:
    leg = Legend("DiffExplainer", "mortality up", 0.955, 0.0, ("Slice 3/8",), step=1.6)
    lines = leg.lines()
    assert "Method: DiffExplainer" in lines and "Target: mortality up" in lines
    assert "Step: a = +1.6" in lines
    assert "P(target): 0.955 -> 0.000" in lines
    assert "Slice 3/8" in lines and "RESEARCH USE ONLY" in lines[-1]
    assert "Step: a = -0.8" in Legend(step=-0.8).lines()
    assert "Step: z- end" in Legend(step="z- end").lines()
    assert not any(line.startswith("Model score") for line in lines)
    assert "Step" in leg.describe() and "P(target)" in leg.describe()


@pytest.mark.parametrize(
    "kw", [{"score_before": 2.3}, {"score_after": -0.1}, {"score_before": float("nan")}, {"score_after": "high"}]
)
def test_legend_rejects_scores_that_are_not_probabilities(kw: dict) -> None:
    with pytest.raises(ValueError, match=r"probabilit(y|ies)|softmax"):
        Legend("m", "t", **kw)


def test_colour_scale_is_stated() -> None:
    leg = Legend("m", "t", quantity="counterfactual - query", units="HU")
    seq = " ".join(colour_scale_lines(leg, 200.0, 0.1))
    assert "counterfactual - query (HU)" in seq and "20" in seq and "200" in seq and "not tinted" in seq
    signed = " ".join(colour_scale_lines(leg, 200.0, 0.1, signed=True, colormap="autumn", negative_colormap="winter"))
    assert "> 0 autumn" in signed and "< 0 winter" in signed and "not tinted" in signed


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"colormap": "inferno"}, "colormap 'inferno'"),
        ({"colormap": "no-such-map"}, "colormap"),
    ],
)
def test_render_options_are_validated(kw: dict, name: str) -> None:
    img = np.zeros((4, 4))
    heat = np.ones((4, 4))
    with pytest.raises(ValueError, match=name):
        render_overlay(img, heat, Legend(), **kw)
    with pytest.raises(ValueError, match=name.split()[0]):
        render_photo_overlay(np.zeros((4, 4, 3), np.uint8), heat, Legend(), **kw)
