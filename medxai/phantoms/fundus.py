"""Colour fundus photograph phantom with diabetic-retinopathy lesions and a shortcut stamp.

Coordinates
-----------
``rgb`` is ``(H, W, 3)`` uint8 with row 0 at the top (superior) as a camera writes it. In a
right eye (``eye == "OD"``) the optic disc is on the image's right (nasal) and the macula on the
left; a left eye (``"OS"``) is mirrored, as in ``skimage.data.retina()``.

What is in a case
-----------------
Circular field of view (optionally cut flat at the top and bottom, as some cameras do) on a dark
surround; orange-red fundus with vignetting, uneven illumination and fine choroidal texture; optic
disc (yellow-white with a paler cup); macula (darker, ~2.5 disc diameters temporal to the disc,
slightly below it) with a foveal avascular zone; arteries (narrower, lighter) and veins (wider,
darker) that leave the disc as parabolic arcades around the macula and nasal trunks, with
random side branches.

Lesions: microaneurysms (tiny dark red dots), dot/blot and flame haemorrhages, clusters of hard
exudates (yellow, sharp, near the macula), cotton-wool spots (pale, fuzzy, near the arcades).
The grade (0-4) is a function of the lesion counts, monotone in each count:
``4`` if haemorrhages >= 20 and cotton-wool spots >= 3; else ``3`` if haemorrhages >= 10 or
cotton-wool spots >= 3; else ``2`` if any haemorrhage, exudate cluster or cotton-wool spot;
else ``1`` if any microaneurysm; else ``0``. ``label`` (referable DR) is ``grade >= 2``.
No neovascularisation is drawn: grade 4 here is a count-based stand-in for proliferative DR.

Shortcut marker: a small bright text-like stamp in an image corner outside the field of view (or
inside it, near its edge, with ``marker_in_fov=True``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from ._common import SeedLike, as_seed, case_seed, lowfreq_field, preset, rasterise_tube

__all__ = [
    "FundusPhantomConfig",
    "FundusCase",
    "FUNDUS_TEST",
    "FUNDUS_BENCHMARK",
    "FUNDUS_MASK_NAMES",
    "fundus_config",
    "dr_grade",
    "make_fundus_case",
    "make_fundus_cohort",
    "iter_fundus_cohort",
]

logger = logging.getLogger(__name__)

FUNDUS_MASK_NAMES: tuple[str, ...] = (
    "microaneurysms",
    "haemorrhages",
    "exudates",
    "cotton_wool",
    "lesions",
    "fov",
    "marker",
)

MarkerArg = bool | Literal["label"] | None


@dataclass(frozen=True)
class FundusPhantomConfig:
    """Size and distribution parameters of the fundus phantom.

    Attributes
    ----------
    size
        Image is ``(size, size, 3)``.
    grade_prior
        Probabilities of the target grades 0..4 (lesion counts are drawn to match the grade).
    marker_rate
        Probability of the stamp when its presence is independent of the label.
    marker_in_fov
        Put the stamp inside the field of view (near its edge) instead of in an image corner.
    p_clipped
        Probability that the field of view is cut flat at the top and bottom.
    lesion_mix
        ``"graded"``: lesion counts drawn to match a grade from ``grade_prior`` (lesion types come
        together, as in real DR); ``"independent"``: haemorrhages and exudates each present with
        probability 1/2 independently of each other (no cotton-wool spots), so a model can be trained
        on one lesion type without learning the other through their correlation (the bench's model swap).
        The grade is computed from the placed lesions either way.
    """

    size: int = 128
    grade_prior: tuple[float, float, float, float, float] = (0.35, 0.15, 0.2, 0.15, 0.15)
    marker_rate: float = 0.1
    marker_in_fov: bool = False
    p_clipped: float = 0.5
    lesion_mix: str = "graded"

    def __post_init__(self) -> None:
        if self.lesion_mix not in ("graded", "independent"):
            raise ValueError(f"lesion_mix must be 'graded' or 'independent', got {self.lesion_mix!r}; pass lesion_mix='graded'")
        if not (64 <= int(self.size) <= 4096):
            raise ValueError(f"size must be in [64, 4096], got {self.size}; pass e.g. size=128")
        prior = np.asarray(self.grade_prior, dtype=float)
        if prior.shape != (5,) or np.any(prior < 0) or not math.isclose(prior.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(
                f"grade_prior must be 5 non-negative probabilities summing to 1, got {self.grade_prior!r}; "
                "pass e.g. grade_prior=(0.35, 0.15, 0.2, 0.15, 0.15)"
            )
        for name in ("marker_rate", "p_clipped"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}; pass e.g. {name}=0.1")


#: Small images for unit tests (128 x 128).
FUNDUS_TEST = FundusPhantomConfig()
#: Benchmark images (512 x 512).
FUNDUS_BENCHMARK = FundusPhantomConfig(size=512)


def fundus_config(name: str = "test", **overrides: object) -> FundusPhantomConfig:
    """Return a named preset (``"test"`` or ``"benchmark"``) with optional field overrides."""
    return preset({"test": FUNDUS_TEST, "benchmark": FUNDUS_BENCHMARK}, name, overrides)


@dataclass(frozen=True, eq=False)
class FundusCase:
    """One fundus phantom case. Arrays are read-only; copy before editing.

    Attributes
    ----------
    rgb
        uint8 ``(H, W, 3)``.
    masks
        bool ``(H, W)``: ``microaneurysms``, ``haemorrhages``, ``exudates``, ``cotton_wool``,
        ``lesions`` (their union), ``fov``, ``marker`` (all False without a stamp).
    grade
        0-4, from the lesion counts (see :func:`dr_grade`).
    label
        Referable DR, ``int(grade >= 2)``.
    extent
        Lesion area as a fraction of the field of view.
    has_marker
        Whether the stamp is present.
    seed
        Integer seed; ``make_fundus_case(seed, config, marker=has_marker)`` makes the case again.
    counts
        Lesion counts: ``microaneurysms``, ``haemorrhages``, ``exudate_clusters``,
        ``exudate_dots``, ``cotton_wool``.
    eye
        ``"OD"`` (right) or ``"OS"`` (left).
    info
        Geometry (disc and fovea centres in pixels ``(row, col)``, disc diameter, FOV radius).
    """

    rgb: np.ndarray
    masks: Mapping[str, np.ndarray]
    grade: int
    label: int
    extent: float
    has_marker: bool
    seed: int
    counts: Mapping[str, int] = field(default_factory=dict)
    eye: str = "OD"
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def risk(self) -> float:
        """Grade / 4, for interfaces that expect a risk in [0, 1]."""
        return self.grade / 4.0

    @property
    def case_id(self) -> str:
        """Stable identifier derived from the seed."""
        return f"fundus-{self.seed:019d}"


def dr_grade(microaneurysms: int, haemorrhages: int, exudate_clusters: int, cotton_wool: int) -> int:
    """DR grade 0-4 from lesion counts (monotone non-decreasing in every count).

    See the module docstring for the rule.
    """
    counts = (microaneurysms, haemorrhages, exudate_clusters, cotton_wool)
    if any(int(c) < 0 for c in counts):
        raise ValueError(f"lesion counts must be >= 0, got {counts}; pass non-negative integers")
    if haemorrhages >= 20 and cotton_wool >= 3:
        return 4
    if haemorrhages >= 10 or cotton_wool >= 3:
        return 3
    if haemorrhages + exudate_clusters + cotton_wool > 0:
        return 2
    if microaneurysms > 0:
        return 1
    return 0


def _draw_counts(rng: np.random.Generator, grade: int) -> dict[str, int]:
    ri = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    if grade == 0:
        c = (0, 0, 0, 0)
    elif grade == 1:
        c = (ri(1, 6), 0, 0, 0)
    elif grade == 2:
        c = (ri(2, 12), ri(0, 9), ri(0, 2), ri(0, 2))
        if c[1] + c[2] + c[3] == 0:
            c = (c[0], 1, c[2], c[3])
    elif grade == 3:
        c = (ri(5, 20), ri(10, 19), ri(0, 3), ri(0, 2))
    else:
        c = (ri(8, 25), ri(20, 35), ri(1, 4), ri(3, 6))
    return dict(zip(("microaneurysms", "haemorrhages", "exudate_clusters", "cotton_wool"), c))


def _draw_independent_counts(rng: np.random.Generator) -> dict[str, int]:
    """Counts with haemorrhages and exudate clusters each present with probability 1/2, independently."""
    ri = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    ma = ri(0, 8)
    he = ri(8, 20) if rng.random() < 0.5 else 0
    ex = ri(2, 4) if rng.random() < 0.5 else 0
    return {"microaneurysms": ma, "haemorrhages": he, "exudate_clusters": ex, "cotton_wool": 0}


# ----------------------------------------------------------------------------------------------
# vessels
# ----------------------------------------------------------------------------------------------


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: float,
    length: float,
    step: float,
    curl: float,
) -> np.ndarray:
    """Random-walk polyline ``(n, 2)`` (row, col) with smoothly varying direction."""
    n = max(2, int(length / step))
    turn = np.cumsum(rng.normal(0.0, curl, n)) * 0.5 + rng.normal(0.0, curl)
    ang = direction + np.cumsum(np.r_[0.0, np.diff(turn)]) + np.linspace(0, 1, n) * rng.normal(0, 0.15)
    steps = np.stack([np.sin(ang), np.cos(ang)], axis=1) * step
    return start + np.cumsum(np.r_[np.zeros((1, 2)), steps[:-1]], axis=0)


def _draw_polyline(out: np.ndarray, pts: np.ndarray, w0: float, w1: float) -> None:
    """Draw a tapered polyline ``(n, 2)`` (row, col) as partial-coverage fraction into ``out`` ``(H, W)``."""
    pts = np.asarray(pts, dtype=np.float64)
    n = len(pts) - 1
    if n < 1:
        return
    radii = np.maximum(np.linspace(w0, w1, n), 0.35)
    reach = float(radii.max()) + 1.0
    lo = np.maximum(np.floor(pts.min(axis=0) - reach).astype(int), 0)
    hi = np.minimum(np.ceil(pts.max(axis=0) + reach).astype(int) + 1, out.shape)
    if np.any(hi <= lo):
        return
    rr = np.arange(lo[0], hi[0], dtype=np.float32).reshape(1, -1, 1)
    cc = np.arange(lo[1], hi[1], dtype=np.float32).reshape(1, 1, -1)
    region = out[lo[0] : hi[0], lo[1] : hi[1]]
    for start in range(0, n, 48):
        p0 = pts[start : start + 48][: min(48, n - start)]
        p1 = pts[start + 1 : start + 1 + len(p0)]
        r = radii[start : start + len(p0)].astype(np.float32).reshape(-1, 1, 1)
        d = (p1 - p0).astype(np.float32)
        dd = np.maximum((d**2).sum(axis=1), 1e-9).reshape(-1, 1, 1)
        a0 = rr - p0[:, 0].astype(np.float32).reshape(-1, 1, 1)
        a1 = cc - p0[:, 1].astype(np.float32).reshape(-1, 1, 1)
        t = np.clip((a0 * d[:, 0].reshape(-1, 1, 1) + a1 * d[:, 1].reshape(-1, 1, 1)) / dd, 0.0, 1.0)
        dist = np.sqrt((a0 - t * d[:, 0].reshape(-1, 1, 1)) ** 2 + (a1 - t * d[:, 1].reshape(-1, 1, 1)) ** 2)
        frac = np.clip(r - dist + 0.5, 0.0, 1.0).max(axis=0)
        np.maximum(region, frac, out=region)


# ----------------------------------------------------------------------------------------------
# main generator
# ----------------------------------------------------------------------------------------------


def make_fundus_case(
    seed: SeedLike,
    config: FundusPhantomConfig | None = None,
    *,
    marker: MarkerArg = None,
    grade: int | None = None,
) -> FundusCase:
    """Make one fundus photograph phantom.

    Parameters
    ----------
    seed
        Integer (or ``SeedSequence``) that determines everything.
    config
        Size and distribution parameters; defaults to :data:`FUNDUS_TEST`.
    marker
        ``None``: stamp with probability ``config.marker_rate`` independent of the label;
        ``True``/``False``: force it; ``"label"``: present exactly when ``label == 1``. The stamp
        uses its own random stream, so switching it changes no other pixel.
    grade
        Override the target grade (0-4); anatomy and image noise stay the same.

    Returns
    -------
    FundusCase
        ``rgb`` uint8 ``(S, S, 3)`` with ``S = config.size``; masks bool ``(S, S)``.
    """
    cfg = FUNDUS_TEST if config is None else config
    if not isinstance(cfg, FundusPhantomConfig):
        raise TypeError(f"config must be a FundusPhantomConfig, got {type(cfg).__name__}; use fundus_config('test')")
    if marker not in (None, True, False, "label"):
        raise ValueError(f"marker must be None, True, False or 'label', got {marker!r}; pass marker=None")
    if grade is not None and grade not in (0, 1, 2, 3, 4):
        raise ValueError(f"grade must be one of 0..4 or None, got {grade!r}; pass e.g. grade=2")
    seed_int = as_seed(seed)
    streams = np.random.SeedSequence(seed_int).spawn(7)
    r_geo, r_tex, r_vess, r_les, r_mdec, r_mgeo, r_noise = (np.random.default_rng(s) for s in streams)

    S = int(cfg.size)
    rows = np.arange(S, dtype=np.float32).reshape(S, 1)
    cols = np.arange(S, dtype=np.float32).reshape(1, S)

    # --- geometry --------------------------------------------------------------------------
    R = S * r_geo.uniform(0.44, 0.485)
    centre = np.array([S / 2, S / 2]) + r_geo.uniform(-0.015, 0.015, 2) * S
    clipped = r_geo.random() < cfg.p_clipped
    clip_h = R * r_geo.uniform(0.86, 0.94) if clipped else R * 2
    eye = "OD" if r_geo.random() < 0.5 else "OS"
    nasal = 1.0 if eye == "OD" else -1.0  # +1: nasal side (disc) on the image's right
    rot = math.radians(r_geo.uniform(-10.0, 10.0))
    dd = R * r_geo.uniform(0.25, 0.31)  # disc diameter in pixels
    fovea = centre + r_geo.uniform(-0.06, 0.06, 2) * R
    ax_u = np.array([math.sin(rot), -nasal * math.cos(rot)])  # (row, col) unit vector disc -> fovea
    ax_v = np.array([-math.cos(rot), -nasal * math.sin(rot)])  # unit vector "superior" (up)
    ax_v = ax_v if ax_v[0] < 0 else -ax_v
    disc_dist = dd * r_geo.uniform(2.3, 2.7)
    disc = fovea - ax_u * disc_dist + ax_v * dd * r_geo.uniform(0.1, 0.35)
    gain = r_geo.uniform(0.85, 1.1)
    base = np.array([r_geo.uniform(200, 240), r_geo.uniform(56, 92), r_geo.uniform(24, 62)])

    dr_ = rows - np.float32(centre[0])
    dc_ = cols - np.float32(centre[1])
    rr = np.sqrt(dr_**2 + dc_**2)
    fov_soft = np.clip((R - rr) / 1.2 + 0.5, 0.0, 1.0) * np.clip((clip_h - np.abs(dr_)) / 1.2 + 0.5, 0.0, 1.0)
    fov = fov_soft > 0.5

    # --- background ------------------------------------------------------------------------
    illum = 1.0 - 0.3 * (rr / R) ** 3 + 0.05 * lowfreq_field(r_tex, (S, S), S / 3)
    tex = 0.015 * lowfreq_field(r_tex, (S, S), max(S / 120, 1.0)) + 0.02 * lowfreq_field(r_tex, (S, S), max(S / 30, 1.0))
    img = np.empty((S, S, 3), np.float32)
    for ch in range(3):
        img[..., ch] = base[ch] * (illum + tex * (1.5 if ch == 1 else 1.0))
    # macula: darker, browner
    dfov2 = (rows - np.float32(fovea[0])) ** 2 + (cols - np.float32(fovea[1])) ** 2
    mac = np.exp(-dfov2 / (2 * (0.6 * dd) ** 2)) * r_geo.uniform(0.22, 0.34)
    fov_pit = np.exp(-dfov2 / (2 * (0.12 * dd) ** 2)) * 0.15
    img *= 1.0 - (mac + fov_pit)[..., None] * np.array([0.9, 1.25, 1.1], np.float32)
    # peripapillary paler glow and optic disc
    dd2 = ((rows - np.float32(disc[0])) / 1.08) ** 2 + (cols - np.float32(disc[1])) ** 2
    glow = np.exp(-dd2 / (2 * (0.8 * dd) ** 2)) * 0.2
    img = img * (1 - glow[..., None]) + glow[..., None] * np.array([235, 150, 90], np.float32)
    disc_a = np.clip((dd / 2 - np.sqrt(dd2)) / max(1.5, 0.12 * dd) + 0.5, 0, 1).astype(np.float32)
    disc_col = np.array([245, 178, 105], np.float32) * r_geo.uniform(0.93, 1.04)
    img = img * (1 - disc_a[..., None]) + disc_a[..., None] * disc_col
    cup_r = dd / 2 * r_geo.uniform(0.25, 0.5)
    cup_off = ax_u * dd * 0.08
    cup2 = (rows - np.float32(disc[0] + cup_off[0])) ** 2 + (cols - np.float32(disc[1] + cup_off[1])) ** 2
    cup_a = np.clip((cup_r - np.sqrt(cup2)) / max(1.5, 0.15 * dd) + 0.5, 0, 1).astype(np.float32) * 0.85
    img = img * (1 - cup_a[..., None]) + cup_a[..., None] * np.array([255, 228, 180], np.float32)

    # --- vessels ---------------------------------------------------------------------------
    art = np.zeros((S, S), np.float32)
    vein = np.zeros((S, S), np.float32)
    w_vein = max(0.95, 0.058 * dd)  # half-width at the disc, pixels
    step = max(2.0, 0.025 * R)
    faz = 0.22 * dd
    for out, wscale in ((vein, 1.0), (art, 0.7)):
        for sup in (1.0, -1.0):
            # temporal arcade: u = k v^2 passes |v| = vm at the fovea
            vm = R * r_vess.uniform(0.42, 0.6)
            k = disc_dist / vm**2
            v = np.linspace(0, R * 1.1, max(12, int(R * 1.1 / step)))
            wob = np.cumsum(r_vess.normal(0, 0.015 * R, v.size)) * 0.25
            u = k * v**2 + wob
            pts = disc + np.outer(u, ax_u) + np.outer(sup * v + r_vess.normal(0, 0.01 * R, 1), ax_v)
            pts = pts[np.linalg.norm(pts - centre, axis=1) < R * 1.02]
            if len(pts) < 2:
                continue
            _draw_polyline(out, pts, wscale * w_vein, wscale * w_vein * 0.45)
            trunks = [pts]
            # nasal trunk
            vn = np.linspace(0, R * 1.0, max(10, int(R / step)))
            kn = r_vess.uniform(0.6, 1.6) / R
            pn = disc - np.outer(kn * vn**2, ax_u) + np.outer(sup * vn, ax_v)
            pn = pn[np.linalg.norm(pn - centre, axis=1) < R * 1.02]
            if len(pn) >= 2:
                _draw_polyline(out, pn, wscale * w_vein * 0.8, wscale * w_vein * 0.35)
                trunks.append(pn)
            # side branches (two generations)
            for ti, trunk in enumerate(trunks):
                n_b = int(r_vess.integers(6, 12)) if ti == 0 else int(r_vess.integers(2, 5))
                j_lo = max(2, len(trunk) // 6)
                cand = np.arange(j_lo, len(trunk) - 1)
                if cand.size == 0:
                    continue
                for j in np.sort(r_vess.choice(cand, size=min(n_b, cand.size), replace=False)):
                    p = trunk[j]
                    tang = trunk[j + 1] - trunk[j - 1]
                    ang0 = math.atan2(tang[0], tang[1]) + r_vess.choice([-1, 1]) * r_vess.uniform(0.45, 0.9)
                    frac = 1.0 - j / len(trunk)
                    wb = wscale * w_vein * (0.45 + 0.35 * frac) * 0.7
                    br = _walk(r_vess, p, ang0, R * r_vess.uniform(0.3, 0.8), step, 0.12)
                    keep = (np.linalg.norm(br - centre, axis=1) < R * 1.02) & (np.linalg.norm(br - fovea, axis=1) > faz)
                    stop = int(np.argmin(keep)) if not keep.all() else len(br)
                    br = br[:stop]
                    if len(br) < 2:
                        continue
                    _draw_polyline(out, br, wb, max(0.35, wb * 0.4))
                    for _ in range(int(r_vess.integers(1, 4))):
                        jj = int(r_vess.integers(1, len(br))) if len(br) > 2 else 1
                        a2 = ang0 + r_vess.choice([-1, 1]) * r_vess.uniform(0.5, 1.0)
                        br2 = _walk(r_vess, br[jj - 1], a2, R * r_vess.uniform(0.15, 0.4), step, 0.15)
                        keep2 = (np.linalg.norm(br2 - centre, axis=1) < R * 1.02) & (np.linalg.norm(br2 - fovea, axis=1) > faz)
                        stop2 = int(np.argmin(keep2)) if not keep2.all() else len(br2)
                        if stop2 >= 2:
                            _draw_polyline(out, br2[:stop2], wb * 0.6, max(0.3, wb * 0.3))
    # small macular vessels pointing towards the fovea
    for _ in range(int(r_vess.integers(8, 14))):
        a = r_vess.uniform(0, 2 * math.pi)
        start = fovea + R * r_vess.uniform(0.35, 0.5) * np.array([math.sin(a), math.cos(a)])
        br = _walk(r_vess, start, a + math.pi + r_vess.normal(0, 0.3), R * r_vess.uniform(0.15, 0.3), step, 0.3)
        keep = np.linalg.norm(br - fovea, axis=1) > faz
        stop = int(np.argmin(keep)) if not keep.all() else len(br)
        if stop >= 2:
            tgt = art if r_vess.random() < 0.5 else vein
            _draw_polyline(tgt, br[:stop], max(0.4, 0.3 * w_vein), 0.3)
    vein_col = np.array([0.2, 0.5, 0.4], np.float32)
    art_col = np.array([0.06, 0.3, 0.22], np.float32)
    img *= 1.0 - vein[..., None] * vein_col
    img *= 1.0 - art[..., None] * (1.0 - vein[..., None]) * art_col

    # --- lesions ---------------------------------------------------------------------------
    target = int(r_les.choice(5, p=np.asarray(cfg.grade_prior))) if grade is None else int(grade)
    if grade is not None:
        r_les.random()
    want = _draw_counts(r_les, target) if cfg.lesion_mix == "graded" else _draw_independent_counts(r_les)
    placed = {"microaneurysms": 0, "haemorrhages": 0, "exudate_clusters": 0, "exudate_dots": 0, "cotton_wool": 0}
    f_ma = np.zeros((S, S), np.float32)
    f_he = np.zeros((S, S), np.float32)
    f_ex = np.zeros((S, S), np.float32)
    a_cw = np.zeros((S, S), np.float32)

    def ok(p: np.ndarray, r: float, margin: float = 0.92) -> bool:
        d = p - centre
        return (
            float(np.hypot(*d)) + r < margin * R
            and abs(d[0]) + r < clip_h * 0.97
            and float(np.hypot(*(p - disc))) > dd / 2 + r + 1
        )

    def sample_near(anchor: np.ndarray, spread: float, r: float) -> np.ndarray | None:
        for _ in range(30):
            p = anchor + r_les.normal(0, spread, 2)
            if ok(p, r):
                return p
        return None

    post_pole = fovea
    for _ in range(want["microaneurysms"]):
        r = max(0.007 * R, 0.75)
        p = sample_near(post_pole, 0.4 * R, r)
        if p is not None:
            rasterise_tube(f_ma, p, p, r, (1.0, 1.0), soft=0.8)
            placed["microaneurysms"] += 1
    for _ in range(want["haemorrhages"]):
        r = max(R * r_les.uniform(0.018, 0.045), 1.3)
        p = sample_near(0.5 * (post_pole + disc), 0.45 * R, r)
        if p is None:
            continue
        if r_les.random() < 0.2:  # flame: tapered streak along the nerve fibres (radial to disc)
            rad = (p - disc) / max(np.hypot(*(p - disc)), 1e-6)
            for kk, wk in enumerate((0.45, 0.35, 0.22)):
                rasterise_tube(f_he, p + rad * r * (kk - 0.5), p + rad * r * (kk + 0.6), wk * r, (1.0, 1.0), soft=1.2)
        else:  # dot / blot: a few overlapping discs
            for _k in range(int(r_les.integers(1, 4))):
                q = p + r_les.normal(0, 0.35 * r, 2)
                rasterise_tube(f_he, q, q, r * r_les.uniform(0.55, 0.9), (1.0, 1.0), soft=1.0)
        placed["haemorrhages"] += 1
    for _ in range(want["exudate_clusters"]):
        cpos = sample_near(fovea, 0.3 * R, 0.05 * R)
        if cpos is None or np.hypot(*(cpos - fovea)) < 0.12 * R:
            cpos = fovea + ax_v * 0.25 * R * r_les.choice([-1, 1])
            if not ok(cpos, 0.05 * R):
                continue
        n_dots = int(r_les.integers(4, 16))
        ring = r_les.random() < 0.4
        done = 0
        for _k in range(n_dots):
            if ring:  # circinate ring
                a = r_les.uniform(0, 2 * math.pi)
                q = cpos + 0.07 * R * np.array([math.sin(a), math.cos(a)]) + r_les.normal(0, 0.01 * R, 2)
            else:
                q = cpos + r_les.normal(0, 0.045 * R, 2)
            r = max(R * r_les.uniform(0.005, 0.014), 0.7)
            if ok(q, r):
                rasterise_tube(f_ex, q, q, r, (1.0, 1.0), soft=0.7)
                done += 1
        if done:
            placed["exudate_clusters"] += 1
            placed["exudate_dots"] += done
    for _ in range(want["cotton_wool"]):
        sup = r_les.choice([-1.0, 1.0])
        anchor = disc + ax_u * disc_dist * r_les.uniform(0.2, 1.0) + ax_v * sup * R * r_les.uniform(0.2, 0.45)
        r = max(R * r_les.uniform(0.03, 0.055), 2.0)
        p = sample_near(anchor, 0.06 * R, r)
        if p is None:
            continue
        ell = ((rows - np.float32(p[0])) ** 2 + ((cols - np.float32(p[1])) * r_les.uniform(0.7, 1.0)) ** 2) / r**2
        a_cw = np.maximum(a_cw, np.exp(-1.6 * ell**1.5).astype(np.float32) * r_les.uniform(0.65, 0.85))
        placed["cotton_wool"] += 1

    # composite lesions (haemorrhages under exudates under cotton wool)
    he_col = np.array([135, 24, 16], np.float32) * r_les.uniform(0.85, 1.1)
    ma_col = np.array([135, 22, 16], np.float32)
    ex_col = np.array([245, 215, 95], np.float32) * r_les.uniform(0.9, 1.03)
    cw_col = np.array([238, 205, 170], np.float32)
    f_he_s = np.clip(f_he, 0, 1) * 0.88
    img = img * (1 - f_he_s[..., None]) + f_he_s[..., None] * he_col
    img = img * (1 - 0.9 * f_ma[..., None]) + 0.9 * f_ma[..., None] * ma_col
    img = img * (1 - f_ex[..., None]) + f_ex[..., None] * ex_col * np.clip(illum, 0.6, 1.1)[..., None]
    img = img * (1 - a_cw[..., None]) + a_cw[..., None] * cw_col * np.clip(illum, 0.6, 1.1)[..., None]

    m_ma = (f_ma > 0.35) & fov
    m_he = (f_he > 0.4) & fov
    m_ex = (f_ex > 0.4) & fov
    m_cw = (a_cw > 0.35) & fov
    lesions = m_ma | m_he | m_ex | m_cw

    # --- camera: gain, blur, FOV, noise ------------------------------------------------------
    img *= gain
    blur = max(0.4, 0.7 * S / 512)
    img = ndimage.gaussian_filter(img, sigma=(blur, blur, 0), truncate=3.0)
    img *= fov_soft[..., None]
    img += r_noise.normal(0.0, 2.0, img.shape).astype(np.float32) * (0.3 + 0.7 * fov_soft[..., None])
    img += 3.0

    # --- shortcut marker: text-like stamp ------------------------------------------------------
    grade_val = dr_grade(placed["microaneurysms"], placed["haemorrhages"], placed["exudate_clusters"], placed["cotton_wool"])
    label = int(grade_val >= 2)
    drawn = bool(r_mdec.random() < cfg.marker_rate)
    has_marker = drawn if marker is None else (label == 1 if marker == "label" else bool(marker))
    cell = max(1, int(round(S / 160)))
    n_chars = int(r_mgeo.integers(3, 6))
    glyphs = r_mgeo.random((5, 4 * n_chars)) < 0.55
    glyphs[:, 3::4] = False  # gap between characters
    stamp = np.kron(glyphs, np.ones((cell, cell), bool))
    corner = int(r_mgeo.integers(0, 4))
    stamp_col = np.array([255, 255, 255], np.float32) if r_mgeo.random() < 0.6 else np.array([255, 230, 60], np.float32)
    a_in = r_mgeo.uniform(0, 2 * math.pi)
    marker_m = np.zeros((S, S), bool)
    if has_marker:
        h, w = stamp.shape
        if cfg.marker_in_fov:
            c0 = centre + 0.8 * min(R, clip_h) * np.array([math.sin(a_in), math.cos(a_in)])
            top, left = int(c0[0] - h / 2), int(c0[1] - w / 2)
        else:
            m = max(1, int(0.025 * S))
            top = m if corner in (0, 1) else S - m - h
            left = m if corner in (0, 2) else S - m - w
        top = int(np.clip(top, 0, S - h))
        left = int(np.clip(left, 0, S - w))
        marker_m[top : top + h, left : left + w] = stamp
        if not cfg.marker_in_fov:
            marker_m &= ~fov
        img[marker_m] = stamp_col

    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)
    lesion_px = int(lesions.sum())
    extent = float(lesion_px / max(int(fov.sum()), 1))
    masks = {
        "microaneurysms": m_ma,
        "haemorrhages": m_he,
        "exudates": m_ex,
        "cotton_wool": m_cw,
        "lesions": lesions,
        "fov": fov,
        "marker": marker_m,
    }
    for mk in masks.values():
        mk.setflags(write=False)
    rgb.setflags(write=False)
    info = {
        "disc_row": float(disc[0]),
        "disc_col": float(disc[1]),
        "fovea_row": float(fovea[0]),
        "fovea_col": float(fovea[1]),
        "disc_diameter_px": float(dd),
        "fov_radius_px": float(R),
        "fov_clipped": float(clipped),
        "target_grade": float(target),
    }
    logger.debug("fundus phantom seed=%d grade=%d counts=%s marker=%s", seed_int, grade_val, placed, has_marker)
    return FundusCase(
        rgb=rgb,
        masks=masks,
        grade=grade_val,
        label=label,
        extent=extent,
        has_marker=bool(has_marker),
        seed=seed_int,
        counts=placed,
        eye=eye,
        info=info,
    )


def iter_fundus_cohort(
    n: int, seed: int, config: FundusPhantomConfig | None = None, shortcut: float = 0.0
) -> Iterator[FundusCase]:
    """Yield ``n`` fundus cases one at a time (see :func:`make_fundus_cohort`)."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}; pass e.g. n=60")
    if not (0.0 <= float(shortcut) <= 1.0):
        raise ValueError(
            f"shortcut must be a probability in [0, 1], got {shortcut}; pass 0 for an unbiased "
            "cohort or e.g. 0.9 for a biased one"
        )
    for i in range(n):
        follow = np.random.default_rng([as_seed(seed), i, 1]).random() < shortcut
        yield make_fundus_case(case_seed(seed, i), config, marker="label" if follow else None)


def make_fundus_cohort(n: int, seed: int, config: FundusPhantomConfig | None = None, shortcut: float = 0.0) -> list[FundusCase]:
    """Make a cohort of ``n`` fundus cases.

    Case ``i`` uses the seed ``case_seed(seed, i)`` (from ``SeedSequence([seed, i])``). With
    probability ``shortcut`` (drawn from ``default_rng([seed, i, 1])``) the stamp follows the
    label (present iff ``label == 1``); otherwise it is present with probability
    ``config.marker_rate`` independently of the label.
    """
    return list(iter_fundus_cohort(n, seed, config, shortcut))
