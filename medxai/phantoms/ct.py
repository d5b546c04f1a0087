"""Chest CT phantom with a known prognostic biomarker (fibrosis), a distractor and a shortcut.

Coordinates
-----------
Arrays are ``(z, y, x)`` in LPS patient coordinates, as DICOM: ``+x`` points to the patient's
left (so the right lung has the smaller column indices, as in radiological display), ``+y``
points posterior (row 0 is anterior), ``+z`` points superior. Slice index 0 is the most
**inferior** slice; increasing ``z`` goes towards the head. Voxel ``(k, j, i)`` lies at
``origin + (i * sx, j * sy, k * sz)`` mm with ``spacing = (sx, sy, sz)``.

What is in a case
-----------------
Body outline (muscle ~+45 HU under a subcutaneous fat layer ~-100 HU), thoracic spine (vertebral
bodies with cortical shell, discs, posterior elements, spinal canal), ribs that descend from
back to front (so axial slices cut them as arcs), sternum, mediastinal fat, heart, aorta,
trachea and main bronchi, liver/abdomen below the diaphragm domes, two lungs (~-850 HU with a
dependent density gradient) with a branching vessel tree per lung whose radius follows Murray's
law, CT-like correlated noise and a slight blur.

Biomarker: fibrosis-like ground glass, reticulation and honeycomb cysts in a patchy region that
is mostly subpleural and basal; its volume fraction of the lungs is ``extent``. The label (one
year mortality) is drawn from ``risk = sigmoid(label_intercept + label_slope * extent)``.
Distractor: emphysema-like low-density holes anywhere in the lungs, independent of the label.
Shortcut marker: a pacemaker (subcutaneous generator plus a dense lead through the superior vena
cava into the heart), outside the lungs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from ._common import SeedLike, as_seed, case_seed, lowfreq_field, preset, rasterise_tube, sigmoid

__all__ = [
    "CTPhantomConfig",
    "CTCase",
    "CT_TEST",
    "CT_BENCHMARK",
    "ct_config",
    "make_ct_case",
    "make_ct_cohort",
    "iter_ct_cohort",
    "CT_MASK_NAMES",
]

logger = logging.getLogger(__name__)

CT_MASK_NAMES: tuple[str, ...] = ("biomarker", "distractor", "marker", "lungs")

MarkerArg = bool | Literal["label"] | None

# Tissue values (HU) before noise.
_AIR = -1000.0
_FAT = -100.0
_MED_FAT = -85.0
_MUSCLE = 45.0
_BLOOD = 40.0
_LIVER = 55.0
_CORTEX = 750.0
_CANCELLOUS = 230.0
_DISC = 85.0
_CARTILAGE = 120.0
_LUNG = -860.0
_METAL = 2500.0


def _check_range(name: str, value: tuple[float, float], lo: float, hi: float) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ValueError(
            f"{name} must be a (low, high) pair with {lo} <= low <= high <= {hi}, got {value!r}; pass e.g. {name}=({lo}, {hi})"
        )


@dataclass(frozen=True)
class CTPhantomConfig:
    """Size and distribution parameters of the CT phantom.

    Attributes
    ----------
    n_slices, matrix
        Volume shape ``(n_slices, matrix, matrix)``.
    fov_mm
        Range of the in-plane reconstruction field of view; in-plane spacing is ``fov / matrix``
        (0.66-0.82 mm at a 512 matrix, 1.3-1.6 mm at 256, 3.5-4.4 mm at 96).
    lung_height_mm
        Range of the craniocaudal lung height (base of the lowest recess to the apex).
    coverage
        Range of scan length / lung height; slice spacing is ``lung_height * coverage / n_slices``.
    noise_hu
        Range of the noise standard deviation (HU) after the correlation filter.
    p_no_fibrosis
        Probability that a case has no fibrosis at all (``extent == 0``).
    extent_max
        Target extents of the other cases are uniform in ``[0.02, extent_max]``.
    label_intercept, label_slope
        Logistic label model ``risk = sigmoid(label_intercept + label_slope * extent)``.
    marker_rate
        Probability of the pacemaker when its presence is independent of the label.
    emphysema_rate
        Probability that a case has emphysema holes (the distractor).
    emphysema_holes
        Range ``[low, high)`` of the number of holes in a case with emphysema.
    emphysema_radius_mm
        Range of the hole radii (mm).
    marker_lead_radius_mm
        Radius of the pacemaker lead (mm; at least 0.3 voxel). A real lead is ~1.3 mm, sub-pixel on a
        64-pixel stack; the bench's shortcut scenario uses a thicker one so the marker is learnable.
    vessel_points
        Attractor points per lung that shape the vessel tree (more = finer tree, slower).
    """

    n_slices: int = 40
    matrix: int = 96
    fov_mm: tuple[float, float] = (340.0, 420.0)
    lung_height_mm: tuple[float, float] = (210.0, 265.0)
    coverage: tuple[float, float] = (1.08, 1.2)
    noise_hu: tuple[float, float] = (15.0, 30.0)
    p_no_fibrosis: float = 0.3
    extent_max: float = 0.35
    label_intercept: float = -4.0
    label_slope: float = 25.0
    marker_rate: float = 0.1
    emphysema_rate: float = 0.5
    emphysema_holes: tuple[int, int] = (8, 60)
    emphysema_radius_mm: tuple[float, float] = (2.5, 8.0)
    marker_lead_radius_mm: float = 1.3
    vessel_points: int = 250

    def __post_init__(self) -> None:
        if not (8 <= int(self.n_slices) <= 2048):
            raise ValueError(f"n_slices must be in [8, 2048], got {self.n_slices}; pass e.g. n_slices=40")
        if not (32 <= int(self.matrix) <= 2048):
            raise ValueError(f"matrix must be in [32, 2048], got {self.matrix}; pass e.g. matrix=96")
        _check_range("fov_mm", self.fov_mm, 250.0, 600.0)
        _check_range("lung_height_mm", self.lung_height_mm, 120.0, 350.0)
        _check_range("coverage", self.coverage, 1.0, 2.0)
        _check_range("noise_hu", self.noise_hu, 0.0, 200.0)
        _check_range("emphysema_holes", self.emphysema_holes, 1, 1000)
        if self.emphysema_holes[1] <= self.emphysema_holes[0]:
            raise ValueError(f"emphysema_holes must be [low, high) with low < high, got {self.emphysema_holes!r}")
        _check_range("emphysema_radius_mm", self.emphysema_radius_mm, 0.5, 40.0)
        if not (0.3 <= self.marker_lead_radius_mm <= 20.0):
            raise ValueError(
                f"marker_lead_radius_mm must be in [0.3, 20], got {self.marker_lead_radius_mm}; "
                "pass e.g. marker_lead_radius_mm=1.3"
            )
        for name in ("p_no_fibrosis", "marker_rate", "emphysema_rate"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}; pass e.g. {name}=0.1")
        if not (0.02 < self.extent_max <= 0.8):
            raise ValueError(f"extent_max must be in (0.02, 0.8], got {self.extent_max}; pass e.g. extent_max=0.35")
        if self.label_slope < 0:
            raise ValueError(
                f"label_slope must be >= 0 (more fibrosis, higher risk), got {self.label_slope}; pass e.g. label_slope=25"
            )
        if not (10 <= self.vessel_points <= 20000):
            raise ValueError(f"vessel_points must be in [10, 20000], got {self.vessel_points}; pass e.g. vessel_points=250")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape ``(Z, Y, X)``."""
        return (int(self.n_slices), int(self.matrix), int(self.matrix))


#: Small volumes for unit tests: 40 x 96 x 96, well under a second per case.
CT_TEST = CTPhantomConfig()
#: Benchmark volumes: 80 x 256 x 256 (in-plane 1.3-1.6 mm, slices ~3 mm).
CT_BENCHMARK = CTPhantomConfig(n_slices=80, matrix=256, vessel_points=2500)


def ct_config(name: str = "test", **overrides: object) -> CTPhantomConfig:
    """Return a named preset (``"test"`` or ``"benchmark"``) with optional field overrides."""
    return preset({"test": CT_TEST, "benchmark": CT_BENCHMARK}, name, overrides)


@dataclass(frozen=True, eq=False)
class CTCase:
    """One CT phantom case. Arrays are read-only; copy before editing.

    Attributes
    ----------
    hu
        float32 ``(Z, Y, X)`` in HU, ``Z`` from inferior (index 0) to superior.
    spacing
        ``(sx, sy, sz)`` in mm.
    origin
        LPS position (mm) of voxel ``(0, 0, 0)``; the direction matrix is the identity.
    masks
        bool ``(Z, Y, X)`` arrays: ``biomarker`` (fibrosis), ``distractor`` (emphysema),
        ``marker`` (pacemaker; all False without one), ``lungs``.
    label
        One-year mortality, 0 or 1, drawn from ``risk``.
    extent
        Fraction of lung voxels in the biomarker mask.
    risk
        ``sigmoid(label_intercept + label_slope * extent)``.
    has_marker
        Whether the pacemaker is present.
    seed
        Integer seed; ``make_ct_case(seed, config, marker=has_marker)`` makes the case again.
    info
        Scalar geometry and draw parameters (lung z range in slices, noise level, ...).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    masks: Mapping[str, np.ndarray]
    label: int
    extent: float
    risk: float
    has_marker: bool
    seed: int
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        """Stable identifier derived from the seed."""
        return f"ct-{self.seed:019d}"


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------


@dataclass
class _Geom:
    sx: float
    sz: float
    nz: int
    ny: int
    nx: int
    cx: float
    cy: float
    a_body: float
    b_body: float
    b_post: float
    fat: float
    wall: float
    wall_post: float
    z_base: float
    h_lung: float
    base_shift: float  # right diaphragm higher by this much
    dome_h: float
    w_med: float
    r_v: float
    noise: float
    lung_scale: tuple[float, float]


def _draw_geometry(rng: np.random.Generator, cfg: CTPhantomConfig) -> _Geom:
    nz, ny, nx = cfg.shape
    fov = rng.uniform(*cfg.fov_mm)
    sx = fov / nx
    h_lung = rng.uniform(*cfg.lung_height_mm)
    cover = h_lung * rng.uniform(*cfg.coverage)
    sz = cover / nz
    z_base = (cover - h_lung) * rng.uniform(0.3, 0.6)
    a_body = min(rng.uniform(135.0, 178.0), 0.45 * fov)
    b_body = a_body * rng.uniform(0.62, 0.74)
    cx = rng.uniform(-0.04, 0.04) * fov
    cy = rng.uniform(-0.03, 0.05) * fov
    # keep the body inside the field of view
    cx = float(np.clip(cx, -(fov / 2 - a_body - 4), fov / 2 - a_body - 4))
    cy = float(np.clip(cy, -(fov / 2 - b_body - 4), fov / 2 - b_body - 4))
    return _Geom(
        sx=sx,
        sz=sz,
        nz=nz,
        ny=ny,
        nx=nx,
        cx=cx,
        cy=cy,
        a_body=a_body,
        b_body=b_body,
        b_post=b_body * rng.uniform(0.9, 0.97),
        fat=rng.uniform(7.0, 28.0),
        wall=rng.uniform(9.0, 14.0),
        wall_post=rng.uniform(28.0, 38.0),
        z_base=z_base,
        h_lung=h_lung,
        base_shift=rng.uniform(5.0, 20.0),
        dome_h=rng.uniform(0.12, 0.2) * h_lung,
        w_med=rng.uniform(8.0, 14.0),
        r_v=rng.uniform(14.0, 19.0),
        noise=rng.uniform(*cfg.noise_hu),
        lung_scale=(rng.uniform(0.92, 1.05), rng.uniform(0.92, 1.05)),
    )


def _superellipse(dx: np.ndarray, dy: np.ndarray, a: float, b_ant: float, b_post: float) -> np.ndarray:
    """Level of a superellipse (exponent 2.3) with separate anterior/posterior half-axes."""
    b = np.where(dy > 0, b_post, b_ant)
    return (np.abs(dx / a) ** 2.3 + np.abs(dy / b) ** 2.3) ** (1 / 2.3)


# ----------------------------------------------------------------------------------------------
# vessel tree
# ----------------------------------------------------------------------------------------------


def _vessel_segments(
    rng: np.random.Generator, root: np.ndarray, points: np.ndarray, r_root: float, leaf: int = 3
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Attractor-split tree: split the points at the median of their principal axis, recursively.

    Returns segments ``(p0, p1, radius)`` in mm ``(z, y, x)``; radius ~ (points served)^(1/3).
    """
    n_total = len(points)
    segs: list[tuple[np.ndarray, np.ndarray, float]] = []
    stack = [(root, points)]
    while stack:
        node, pts = stack.pop()
        r = r_root * (len(pts) / n_total) ** (1 / 3)
        if len(pts) <= leaf:
            segs.append((node, pts.mean(axis=0), r))
            continue
        centred = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        order = np.argsort(proj)
        half = len(pts) // 2
        for part in (pts[order[:half]], pts[order[half:]]):
            target = part.mean(axis=0)
            child = node + rng.uniform(0.4, 0.6) * (target - node)
            r_child = r_root * (len(part) / n_total) ** (1 / 3)
            segs.append((node, child, 0.5 * (r + r_child)))
            stack.append((child, part))
    return segs


# ----------------------------------------------------------------------------------------------
# main generator
# ----------------------------------------------------------------------------------------------


def make_ct_case(
    seed: SeedLike,
    config: CTPhantomConfig | None = None,
    *,
    marker: MarkerArg = None,
    extent: float | None = None,
) -> CTCase:
    """Make one chest CT phantom.

    Parameters
    ----------
    seed
        Integer (or ``SeedSequence``) that determines everything; same seed and config give
        bit-identical arrays.
    config
        Size and distribution parameters; defaults to :data:`CT_TEST`.
    marker
        ``None``: pacemaker with probability ``config.marker_rate`` independent of the label;
        ``True``/``False``: force it; ``"label"``: present exactly when ``label == 1``.
        The marker draws use their own random stream, so switching it changes no other voxel.
    extent
        Override the target fibrosis extent (fraction of lung volume, in ``[0, 0.8]``). The
        anatomy, noise and texture stay the same, so varying it gives ground-truth
        counterfactuals of one patient (nested biomarker masks).

    Returns
    -------
    CTCase
        ``hu`` float32 ``(Z, Y, X)`` with ``Z, Y, X = config.shape`` and the masks on the same grid.
    """
    cfg = CT_TEST if config is None else config
    if not isinstance(cfg, CTPhantomConfig):
        raise TypeError(f"config must be a CTPhantomConfig, got {type(cfg).__name__}; use ct_config('test')")
    if marker not in (None, True, False, "label"):
        raise ValueError(f"marker must be None, True, False or 'label', got {marker!r}; pass marker=None")
    if extent is not None and not (0.0 <= float(extent) <= 0.8):
        raise ValueError(f"extent must be in [0, 0.8] or None, got {extent}; pass e.g. extent=0.1")
    seed_int = as_seed(seed)
    streams = np.random.SeedSequence(seed_int).spawn(9)
    r_geo, r_shape, r_vess, r_fib, r_emph, r_label, r_mdec, r_mgeo, r_noise = (np.random.default_rng(s) for s in streams)

    g = _draw_geometry(r_geo, cfg)
    nz, ny, nx = g.nz, g.ny, g.nx
    sx = sy = g.sx
    sz = g.sz
    x0 = -(nx - 1) / 2 * sx
    y0 = -(ny - 1) / 2 * sy
    X = (x0 + np.arange(nx, dtype=np.float32) * sx).reshape(1, 1, nx)
    Y = (y0 + np.arange(ny, dtype=np.float32) * sy).reshape(1, ny, 1)
    Z = (np.arange(nz, dtype=np.float32) * sz).reshape(nz, 1, 1)
    dX = X - np.float32(g.cx)
    dY = Y - np.float32(g.cy)
    t = (Z - g.z_base) / g.h_lung  # 0 at the lowest lung base, 1 at the apex

    shape = (nz, ny, nx)
    # slow per-case deformation of outlines (about 60 mm correlation)
    deform = lowfreq_field(r_shape, shape, (60.0 / sz, 60.0 / sy, 60.0 / sx))
    # body narrows slightly towards the apex
    taper = 1.0 - 0.07 * np.clip((t - 0.7) / 0.4, 0.0, 1.0)
    a_b = g.a_body * taper
    rho_body = _superellipse(dX, dY, a_b, g.b_body, g.b_post) + 0.015 * deform
    body = rho_body <= 1.0
    r_pt = np.sqrt(dX**2 + dY**2) + 1e-3
    depth = r_pt * (1.0 / rho_body - 1.0)  # radial distance inside the body outline (mm)
    fat_thick = g.fat * (1.0 + 0.35 * lowfreq_field(r_shape, (1, ny, nx), (1.0, 40 / sy, 40 / sx)))
    a_c = a_b - g.fat - g.wall
    a_cs = g.a_body - g.fat - g.wall  # scalar half-width of the cavity at mid level
    b_c = g.b_body - g.fat - g.wall
    b_cp = g.b_post - g.fat - g.wall_post
    rho_cav = _superellipse(dX, dY, a_c, b_c, b_cp) + 0.025 * deform
    cavity = rho_cav <= 1.0
    d_wall = r_pt * (1.0 - 1.0 / rho_cav)  # radial distance outside the cavity outline (mm)

    hu = np.full(shape, _AIR, dtype=np.float32)
    hu[body] = _MUSCLE
    hu[body & (depth < fat_thick)] = _FAT

    # --- spine ------------------------------------------------------------------------------
    y_v = g.cy + b_cp - 0.9 * g.r_v
    spine_d = np.sqrt((dX / 1.1) ** 2 + (Y - y_v) ** 2)
    period = r_geo.uniform(24.0, 28.0)
    phase = r_geo.uniform(0.0, period)
    disc = ((Z - phase) % period) < 5.0
    hu = np.where(spine_d <= g.r_v, np.where(disc, _DISC, _CANCELLOUS), hu)
    hu = np.where((spine_d <= g.r_v) & (spine_d > g.r_v - 2.0) & ~disc, _CORTEX, hu)
    y_canal = y_v + g.r_v + 8.0
    canal_d = np.sqrt(dX**2 + (Y - y_canal) ** 2)
    posterior_el = (
        ((canal_d <= 14.0) & (canal_d > 8.0))
        | ((np.abs(dX) <= 4.0) & (Y > y_canal) & (Y < y_canal + 30.0))
        | ((np.abs(Y - y_canal + 2.0) <= 4.5) & (np.abs(dX) <= 30.0) & (np.abs(dX) > 10.0))
    )
    hu = np.where(posterior_el & ~disc & body, _CORTEX * 0.7, hu)
    hu = np.where(canal_d <= 8.0, 20.0, hu)
    spine_zone = (spine_d <= g.r_v + 5.0) | ((Y > y_v) & (np.abs(dX) < g.r_v + 5.0))

    # --- ribs and sternum --------------------------------------------------------------------
    theta = np.arctan2(dX, dY)  # 0 posterior, +-pi anterior
    abs_th = np.abs(theta) / np.pi
    rib_sp = r_geo.uniform(23.0, 27.0)
    drop = r_geo.uniform(90.0, 125.0)
    z_r0 = g.z_base - 25.0
    hr, hz, gap = 4.5, 5.5, 2.0
    wall_band = (d_wall > gap - 1) & (d_wall < gap + 2 * hr + 1) & (abs_th < 0.94) & body
    zz = np.broadcast_to(Z, shape)[wall_band]
    u = (zz - z_r0 + drop * np.broadcast_to(abs_th, shape)[wall_band] ** 1.3) / rib_sp
    k = np.round(u)
    dz = (u - k) * rib_sp
    dr = np.broadcast_to(d_wall, shape)[wall_band] - (gap + hr)
    ell = (dr / hr) ** 2 + (dz / hz) ** 2
    valid = (k >= 0) & (k <= 12)
    rib_val = np.where(ell < 0.45, _CANCELLOUS + 30.0, _CORTEX)
    cart = np.broadcast_to(abs_th, shape)[wall_band] > 0.8
    rib_val = np.where(cart, _CARTILAGE, rib_val)
    sub = hu[wall_band]
    hu[wall_band] = np.where(valid & (ell < 1.0), rib_val, sub)
    sternum = (np.abs(dX) < 14.0) & (dY < 0) & (d_wall > gap) & (d_wall < gap + 11.0) & (t > 0.25) & (t < 0.95) & body
    st_val = np.where((d_wall < gap + 2.0) | (d_wall > gap + 9.0), _CORTEX, _CANCELLOUS)
    hu = np.where(sternum, st_val, hu)

    # --- lungs -------------------------------------------------------------------------------
    sx_l, sy_l = g.lung_scale
    lungs_by_side = []
    z_bases = {}
    for side in (-1, 1):  # -1: right lung (patient's right = -x), +1: left lung
        z_b = g.z_base + (g.base_shift if side == -1 else 0.0)
        z_bases[side] = z_b
        dcx = g.cx + side * 0.5 * a_c
        dcy = g.cy - 0.05 * b_c
        q2 = ((X - dcx) / (0.55 * a_c)) ** 2 + ((Y - dcy) / (0.8 * b_c)) ** 2
        z_d = z_b + g.dome_h * np.clip(1.0 - q2, 0.0, 1.0) - 14.0 * np.clip((Y - g.cy) / b_c, 0, 1)
        acx = g.cx + side * 0.45 * a_c
        acy = g.cy + 0.15 * b_c
        qa2 = ((X - acx) / (0.5 * a_c * sx_l)) ** 2 + ((Y - acy) / (0.7 * b_c * sy_l)) ** 2
        z_top = g.z_base + g.h_lung - 0.3 * g.h_lung * qa2
        lung = cavity & (side * dX > g.w_med + 4.0 * deform) & (Z > z_d) & (Z < z_top) & ~spine_zone
        lungs_by_side.append(lung)
    # heart: ellipsoid resting on the diaphragm, shifted to the patient's left (+x)
    h_c = np.array([g.z_base + 0.3 * g.h_lung, g.cy - 0.12 * b_c, g.cx + 0.12 * a_cs])
    h_ax = np.array([0.22 * g.h_lung, 0.45 * b_c, 0.36 * a_cs]) * r_geo.uniform(0.9, 1.1, 3)
    heart_q = ((Z - h_c[0]) / h_ax[0]) ** 2 + ((Y - h_c[1]) / h_ax[1]) ** 2 + ((X - h_c[2]) / h_ax[2]) ** 2
    heart = heart_q <= 1.0
    peri = heart_q <= 1.12
    # aorta: ascending, arch, descending (tube rasteriser, mm coordinates (z, y, x))
    aorta = np.zeros(shape, np.float32)
    r_ao = r_geo.uniform(11.0, 15.0)
    y_asc = g.cy - 0.28 * b_c
    x_desc = g.cx + g.r_v + 10.0
    y_desc = y_v - 0.4 * g.r_v
    z_arch = g.z_base + 0.78 * g.h_lung
    to_grid = np.array([0.0, -y0, -x0])
    pts = [
        np.array([h_c[0] + 0.4 * h_ax[0], y_asc, g.cx + 8.0]),
        np.array([z_arch, y_asc + 8.0, g.cx + 6.0]),
        np.array([z_arch + 12.0, 0.5 * (y_asc + y_desc), g.cx + 18.0]),
        np.array([z_arch, y_desc - 5.0, x_desc]),
        np.array([-40.0, y_desc, x_desc]),
    ]
    sp_zyx = (sz, sy, sx)
    for p, q in zip(pts[:-1], pts[1:]):
        rasterise_tube(aorta, p + to_grid, q + to_grid, r_ao, sp_zyx)
    aorta_m = aorta > 0.5
    aorta_zone = np.zeros(shape, np.float32)
    for p, q in zip(pts[:-1], pts[1:]):
        rasterise_tube(aorta_zone, p + to_grid, q + to_grid, r_ao + 4.0, sp_zyx)
    # trachea and main bronchi
    airway = np.zeros(shape, np.float32)
    airway_wall = np.zeros(shape, np.float32)
    y_tr = y_v - g.r_v - 14.0
    z_car = g.z_base + 0.62 * g.h_lung
    r_tr = r_geo.uniform(7.5, 10.0)
    tr_top = np.array([g.z_base + 2 * g.h_lung, y_tr, g.cx])
    car = np.array([z_car, y_tr + 4.0, g.cx])
    hila = {side: np.array([z_car - 22.0, y_tr + 8.0, g.cx + side * (g.w_med + 22.0)]) for side in (-1, 1)}
    tubes = [(tr_top, car, r_tr)] + [(car, hila[s], 0.7 * r_tr) for s in (-1, 1)]
    for p, q, r in tubes:
        rasterise_tube(airway, p + to_grid, q + to_grid, r, sp_zyx)
        rasterise_tube(airway_wall, p + to_grid, q + to_grid, r + 2.0, sp_zyx)

    excl = peri | (aorta_zone > 0.5) | (airway_wall > 0.5)
    lungs_by_side = [lg & ~excl for lg in lungs_by_side]
    lungs = lungs_by_side[0] | lungs_by_side[1]
    if not lungs.any():
        raise RuntimeError(f"internal error: empty lungs for seed {seed_int}; please report")

    # inside the cavity: mediastinal fat above the diaphragm, abdomen below, soft tissue above apex
    below_diaphragm = Z < g.z_base + g.dome_h * 0.9
    mediast = cavity & ~lungs & ~below_diaphragm & (t < 1.0) & ~spine_zone & (np.abs(dX) < a_c * 0.6)
    hu = np.where(mediast, _MED_FAT, hu)
    abdomen = cavity & ~lungs & below_diaphragm & ~spine_zone & ~heart
    hu = np.where(abdomen, np.where(dX + 0.4 * dY < 15.0 + 12.0 * deform, _LIVER, _MUSCLE - 5.0), hu)
    hu = np.where(heart, _BLOOD, hu)
    hu = np.where(aorta_m, _BLOOD + 5.0, hu)
    hu = np.where((airway_wall > 0.5) & ~lungs, _MUSCLE, hu)
    hu = hu * (1.0 - airway) + _AIR * airway

    # lung parenchyma with a dependent (posterior) density gradient and fine texture
    post = np.clip((Y - (g.cy - b_c)) / (b_c + b_cp), 0.0, 1.0)
    parenchyma = _LUNG + 45.0 * post
    hu = np.where(lungs, parenchyma, hu)

    # --- biomarker: fibrosis (subpleural, basal, patchy) ------------------------------------
    if extent is None:
        has_fib = r_fib.random() >= cfg.p_no_fibrosis
        target = float(r_fib.uniform(0.02, cfg.extent_max)) if has_fib else 0.0
    else:
        r_fib.random()
        r_fib.uniform()
        target = float(extent)
    d_pleura = ndimage.distance_transform_edt(np.pad(lungs, 1), sampling=(sz, sy, sx))[1:-1, 1:-1, 1:-1].astype(np.float32)
    z_b_vox = np.where(dX < 0, z_bases[-1], z_bases[1])
    t_lung = (Z - z_b_vox) / g.h_lung
    patch = lowfreq_field(r_fib, shape, (18.0 / sz, 18.0 / sy, 18.0 / sx))
    lam = r_fib.uniform(9.0, 14.0)
    score = -d_pleura / lam - np.clip(t_lung - 0.3, 0.0, None) / 0.12 + 0.9 * patch
    biomarker = np.zeros(shape, bool)
    lung_scores = score[lungs]
    if target > 0:
        thr = np.quantile(lung_scores, 1.0 - target)
        biomarker = lungs & (score > thr)
    # texture drawn always (so that the stream does not depend on the extent)
    ret_white = r_fib.standard_normal(shape, dtype=np.float32)
    hc_seed_u = r_fib.random(shape, dtype=np.float32)
    cyst_mm = r_fib.uniform(4.0, 7.0)
    if biomarker.any():
        sev = np.clip((score - thr) / 1.2, 0.0, 1.0)  # 0 at the border of the region, 1 in the core
        ggo = -720.0 + 180.0 * sev
        # reticulation: thin sheets where a band-limited noise field crosses zero (filtered only
        # in the bounding box of the biomarker, with a margin, to save time)
        bbox = ndimage.find_objects(biomarker.astype(np.int8))[0]
        bbox = tuple(slice(max(b.start - 4, 0), b.stop + 4) for b in bbox)
        ret = np.zeros(shape, np.float32)
        ret[bbox] = ndimage.gaussian_filter(ret_white[bbox], sigma=(max(0.6, 1.6 / sz), max(0.6, 1.6 / sy), max(0.6, 1.6 / sx)))
        ret /= max(float(ret[bbox].std()), 1e-6)
        reticular = np.abs(ret) < 0.45
        fib = np.where(reticular, -180.0 + 80.0 * sev, ggo)
        # honeycombing in the severe, subpleural core: Voronoi cells with dense walls
        core = biomarker & (sev > 0.55) & (d_pleura < 12.0)
        if core.any():
            cyst_vox = max(cyst_mm / sx, 2.6)
            dens = 1.0 / (cyst_vox**2 * max(cyst_mm / sz, 1.0))
            seeds_m = core & (hc_seed_u < dens)
            if seeds_m.any():
                bb = ndimage.find_objects(core.astype(np.int8))[0]
                sm = seeds_m[bb]
                lab = np.zeros(sm.shape, np.int32)
                lab[sm] = np.arange(1, int(sm.sum()) + 1)
                idx = ndimage.distance_transform_edt(lab == 0, sampling=(sz, sy, sx), return_distances=False, return_indices=True)
                near = lab[tuple(idx)]
                wall_bb = np.zeros(sm.shape, bool)
                for ax in (1, 2):
                    sl_a = [slice(None)] * 3
                    sl_b = [slice(None)] * 3
                    sl_a[ax] = slice(1, None)
                    sl_b[ax] = slice(None, -1)
                    diff = near[tuple(sl_a)] != near[tuple(sl_b)]
                    wall_bb[tuple(sl_a)] |= diff
                    wall_bb[tuple(sl_b)] |= diff
                wall = np.zeros(shape, bool)
                wall[bb] = wall_bb
                fib = np.where(core, np.where(wall, -120.0, -930.0), fib)
        hu = np.where(biomarker, fib.astype(np.float32), hu)
    extent_meas = float(biomarker.sum() / lungs.sum())

    # --- distractor: emphysema holes anywhere in the lungs -----------------------------------
    distractor = np.zeros(shape, bool)
    has_emph = r_emph.random() < cfg.emphysema_rate
    n_holes = int(r_emph.integers(*cfg.emphysema_holes))
    lung_idx = np.flatnonzero(lungs)
    centres = lung_idx[r_emph.integers(0, lung_idx.size, n_holes)]
    radii = r_emph.uniform(*cfg.emphysema_radius_mm, n_holes)
    hole_hu = r_emph.uniform(-995.0, -965.0)
    if has_emph:
        holes = np.zeros(shape, np.float32)
        cz, cyy, cxx = np.unravel_index(centres, shape)
        for i in range(n_holes):
            p = np.array([cz[i] * sz, cyy[i] * sy, cxx[i] * sx])
            rasterise_tube(holes, p, p, max(radii[i], 0.8 * sx), sp_zyx)
        # holes are drawn everywhere in the lungs (also inside fibrosis, so their visible number
        # does not depend on the label); the mask keeps only those outside the biomarker region
        holes *= lungs.astype(np.float32)
        hu = hu * (1.0 - holes) + np.float32(hole_hu) * holes
        distractor = (holes > 0.5) & ~biomarker

    # --- vessels --------------------------------------------------------------------------
    vessels = np.zeros(shape, np.float32)
    n_pts = int(cfg.vessel_points)
    for side, lung_s in zip((-1, 1), lungs_by_side):
        idx = np.flatnonzero(lung_s)
        pick = idx[r_vess.choice(idx.size, size=min(n_pts, idx.size), replace=False)]
        pz, py, px = np.unravel_index(pick, shape)
        ptsv = np.stack([pz * sz, py * sy, px * sx], axis=1).astype(np.float64)
        ptsv += r_vess.uniform(-0.5, 0.5, ptsv.shape) * np.array([sz, sy, sx])
        root = hila[side] + to_grid
        for p, q, r in _vessel_segments(r_vess, root, ptsv, r_vess.uniform(6.0, 8.0)):
            rasterise_tube(vessels, p, q, max(r, 0.6), sp_zyx)
    vessels *= (lungs | mediast).astype(np.float32)
    hu = hu * (1.0 - vessels) + _BLOOD * vessels

    # --- risk and label -------------------------------------------------------------------
    risk = float(sigmoid(cfg.label_intercept + cfg.label_slope * extent_meas))
    label = int(r_label.random() < risk)

    # --- shortcut marker: pacemaker -------------------------------------------------------
    drawn = bool(r_mdec.random() < cfg.marker_rate)
    has_marker = drawn if marker is None else (label == 1 if marker == "label" else bool(marker))
    side_m = 1 if r_mgeo.random() < 0.8 else -1
    z_can = g.z_base + g.h_lung * r_mgeo.uniform(0.9, 1.02)
    x_can = g.cx + side_m * g.a_body * r_mgeo.uniform(0.35, 0.6)
    frac_x = min(abs(x_can - g.cx) / g.a_body, 0.95)
    y_surf = g.cy - g.b_body * (1 - frac_x**2.3) ** (1 / 2.3)
    y_can = y_surf + 0.5 * g.fat + 3.0
    tip = h_c + np.array([-0.3, -0.45, -0.25]) * h_ax
    svc = np.array([h_c[0] + 0.8 * h_ax[0], g.cy - 0.2 * b_c, g.cx - g.w_med + 4.0])
    lead_pts = [
        np.array([z_can, y_can, x_can]),
        np.array([z_can, y_tr - 14.0, g.cx - g.w_med + 4.0]),
        svc,
        tip,
    ]
    marker_m = np.zeros(shape, bool)
    if has_marker:
        lead = np.zeros(shape, np.float32)
        r_lead = max(cfg.marker_lead_radius_mm, 0.3 * sx)
        for p, q in zip(lead_pts[:-1], lead_pts[1:]):
            rasterise_tube(lead, p + to_grid, q + to_grid, r_lead, sp_zyx)
        can = (np.abs(Z - z_can) < 22.0) & (np.abs(Y - y_can) < max(4.0, 0.6 * sy)) & (np.abs(X - x_can) < 20.0) & body
        lead = np.maximum(lead, can.astype(np.float32))
        lead *= (~lungs).astype(np.float32)
        hu = hu * (1.0 - lead) + _METAL * lead
        marker_m = lead > 0.1

    # --- image formation: slight blur, correlated noise ----------------------------------
    hu = ndimage.gaussian_filter(hu, sigma=(0.35, 0.55, 0.55), truncate=3.0)
    noise = ndimage.gaussian_filter(r_noise.standard_normal(shape, dtype=np.float32), (0.5, 0.8, 0.8), truncate=3.0)
    noise *= np.float32(g.noise / max(float(noise.std()), 1e-6))
    hu = np.clip(hu + noise, -1024.0, 3071.0).astype(np.float32)

    masks = {
        "biomarker": biomarker,
        "distractor": distractor,
        "marker": marker_m,
        "lungs": lungs,
    }
    for m in masks.values():
        m.setflags(write=False)
    hu.setflags(write=False)
    lung_z = np.flatnonzero(lungs.any(axis=(1, 2)))
    info = {
        "lung_z_first": int(lung_z[0]),
        "lung_z_last": int(lung_z[-1]),
        "noise_hu": float(g.noise),
        "target_extent": target,
        "emphysema": float(has_emph),
        "body_half_width_mm": float(g.a_body),
        "lung_height_mm": float(g.h_lung),
    }
    logger.debug("CT phantom seed=%d extent=%.3f label=%d marker=%s", seed_int, extent_meas, label, has_marker)
    return CTCase(
        hu=hu,
        spacing=(float(sx), float(sy), float(sz)),
        origin=(float(x0), float(y0), 0.0),
        masks=masks,
        label=label,
        extent=extent_meas,
        risk=risk,
        has_marker=bool(has_marker),
        seed=seed_int,
        info=info,
    )


def _marker_policy(rng: np.random.Generator, shortcut: float) -> MarkerArg:
    """``"label"`` with probability ``shortcut``, else ``None`` (independent draw in the case)."""
    return "label" if rng.random() < shortcut else None


def iter_ct_cohort(n: int, seed: int, config: CTPhantomConfig | None = None, shortcut: float = 0.0) -> Iterator[CTCase]:
    """Yield ``n`` CT cases one at a time (see :func:`make_ct_cohort`)."""
    _check_cohort_args(n, shortcut)
    for i in range(n):
        policy = _marker_policy(np.random.default_rng([as_seed(seed), i, 1]), shortcut)
        yield make_ct_case(case_seed(seed, i), config, marker=policy)


def make_ct_cohort(n: int, seed: int, config: CTPhantomConfig | None = None, shortcut: float = 0.0) -> list[CTCase]:
    """Make a cohort of ``n`` CT cases.

    Case ``i`` uses the seed ``case_seed(seed, i)`` (from ``SeedSequence([seed, i])``), so
    cohorts with different seeds never share a case. With probability ``shortcut`` (drawn from
    ``default_rng([seed, i, 1])``) case ``i``'s pacemaker follows its label (present iff
    ``label == 1``); otherwise it is present with probability ``config.marker_rate``
    independently of the label. ``shortcut=0`` gives an unbiased cohort, ``shortcut=1`` one where
    the marker predicts the label perfectly.
    """
    return list(iter_ct_cohort(n, seed, config, shortcut))


def _check_cohort_args(n: int, shortcut: float) -> None:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}; pass e.g. n=60")
    if not (0.0 <= float(shortcut) <= 1.0):
        raise ValueError(
            f"shortcut must be a probability in [0, 1], got {shortcut}; pass 0 for an unbiased "
            "cohort or e.g. 0.9 for a biased one"
        )
