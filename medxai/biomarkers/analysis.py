"""The cohort analysis behind ``medxai cohort report``: population maps, regions and features.

Per case (:class:`CaseImages`) the report compares the *base* image -- what the method's steps start
from: DiffExplainer's reconstruction, or the query for methods without one (DVCE) -- with the
counterfactual *toward* the target class (the largest positive step) and, where the method has one,
*away* from it (the most negative step). Changes are ``counterfactual - base``, so the reconstruction
error does not count as a change.

The cases are streamed: each case's features and region means are computed as it arrives and the
pixel maps are accumulated as sums, so memory does not grow with the cohort beyond one row of
numbers per case.

Two kinds of cohort (``ReportSettings.kind``): ``ct`` (four-slice stacks in a HU window: lung zones
and the body outside the lungs, HU features, pixel-wise population maps on the stack grid) and
``fundus`` (RGB photographs: lesion types found by :mod:`medxai.biomarkers.fundus` in the field of
view; photographs are not aligned across patients, so no population map).

Ranking (the report's own, and the one the bench scores): within each table, the rows of one
direction are ordered by q-value, then by the absolute standardised effect ``|d_z|``; rank 1 is the
surest, then strongest change. q-values are Benjamini-Hochberg over the whole table (both directions,
every region, every feature).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from medxai.biomarkers.features import CT_FEATURES, FEATURE_UNITS, ct_features, to_hu
from medxai.biomarkers.fundus import FUNDUS_FEATURES, FUNDUS_REGIONS, FUNDUS_UNITS, LesionDetector
from medxai.biomarkers.regions import LUNG_ZONES, OUTSIDE, ct_regions
from medxai.biomarkers.stats import PairedTest, auroc_with_ci, bh_q, paired_test

__all__ = [
    "DIRECTIONS",
    "CaseImages",
    "CohortCases",
    "ReportSettings",
    "PopulationMap",
    "RegionRow",
    "FeatureRow",
    "CohortAnalysis",
    "analyse_cohort",
    "choose_steps",
    "primary_direction",
    "CONTRASTS",
    "STEP_RULES",
]

#: how the counterfactual of each direction is picked from a case's sweep (:func:`choose_steps`)
STEP_RULES: tuple[str, ...] = ("flip", "largest")

#: the contrasts of a case: ``toward`` (the counterfactual toward the target class minus the base),
#: ``away`` (the one away from it minus the base) and ``span`` (toward minus away: the whole move from
#: one decision to the other along the model's direction, as DiffExplainer's own difference map; what
#: the generator does to every decoded latent alike cancels in it). ``span`` needs both sides.
DIRECTIONS: tuple[str, ...] = ("toward", "away", "span")
#: the two images each contrast compares: (counterfactual, reference)
CONTRASTS: dict[str, tuple[str, str]] = {"toward": ("toward", "base"), "away": ("away", "base"), "span": ("toward", "away")}
#: the regions whose features are tested (CT); zones get their mean change in the region table
CT_FEATURE_REGIONS: tuple[str, ...] = ("lungs", *OUTSIDE)
CT_TABLE_REGIONS: tuple[str, ...] = (*LUNG_ZONES, *OUTSIDE)


@dataclass(frozen=True)
class CaseImages:
    """One explained case, on the model's grid.

    Attributes
    ----------
    id : str
    label : int or None
        The case's outcome (None: unknown; it then counts in no AUROC).
    query, base : np.ndarray
        ``(C, S, S)`` in [0, 1]: the input, and what the steps start from.
    toward : np.ndarray
        ``(C, S, S)``: the counterfactual toward the target class.
    away : np.ndarray or None
        ``(C, S, S)``: away from it (None for methods with one direction).
    mask : np.ndarray
        CT: ``(C, S, S)`` lung mask; fundus: ``(S, S)`` or ``(1, S, S)`` field of view.
    """

    id: str
    label: int | None
    query: np.ndarray
    base: np.ndarray
    toward: np.ndarray
    away: np.ndarray | None
    mask: np.ndarray
    toward_step: float = float("nan")
    away_step: float = float("nan")


def primary_direction(directions: Sequence[str]) -> str:
    """``span`` if among ``directions``, else ``toward``."""
    return "span" if "span" in directions else "toward"


def choose_steps(steps: Sequence[float], p_target: Sequence[float] | None, rule: str = "flip") -> tuple[int | None, int | None]:
    """Indices of the counterfactual toward and away from the target in a sweep of signed ``steps``.

    ``flip`` (the minimal counterfactual): toward, the smallest positive step at which the black box's
    probability of the target is >= 0.5; away, the smallest negative step (in magnitude) at which it is
    < 0.5; a side where no step gets there takes its largest step. ``largest``: the largest step of each
    side (what the method draws farthest). Without probabilities ``flip`` falls back to ``largest``.
    A side without steps gives None.
    """
    if rule not in STEP_RULES:
        raise ValueError(f"rule must be one of {STEP_RULES}, got {rule!r}.")
    st = np.asarray(steps, np.float64)
    pos = [int(i) for i in np.argsort(st) if st[i] > 0]  # ascending: smallest first
    neg = [int(i) for i in np.argsort(-st) if st[i] < 0]  # -0.4 before -1.6
    toward = pos[-1] if pos else None
    away = neg[-1] if neg else None
    if rule == "flip" and p_target is not None:
        p = np.asarray(p_target, np.float64)
        toward = next((i for i in pos if p[i] >= 0.5), toward)
        away = next((i for i in neg if p[i] < 0.5), away)
    return toward, away


#: what :func:`analyse_cohort` takes: any iterable of cases (a generator keeps memory flat)
CohortCases = Iterable[CaseImages]


@dataclass(frozen=True)
class ReportSettings:
    """Settings of the analysis (all recorded in the report).

    Attributes
    ----------
    kind : {"ct", "fundus"}
        What the images are (module docstring).
    step_rule : {"flip", "largest"}
        How each case's counterfactuals were picked from its sweep (:func:`choose_steps`; applied by
        whoever makes the :class:`CaseImages`, recorded here).
    window : tuple of float
        ``(lo, hi)`` HU of the stack's [0, 1] range (CT).
    fractions : tuple of float
        Position of each stack channel along the lung extent (0 = apex).
    body_hu : float
        Body threshold for the regions outside the lungs.
    alpha : float
        FDR level: a row with ``q < alpha`` is significant.
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Bootstrap seed.
    top_k : int
        How many top-ranked significant features are checked against the outcome for a shortcut.
    shortcut_margin : float
        A top feature (of the primary direction: ``span``, else ``toward``) is a shortcut candidate
        when its outcome AUROC's 95 % interval holds 0.5 and ``|AUROC - 0.5| < shortcut_margin``: the
        model changes it, yet it does not tell the outcome.
    """

    kind: str = "ct"
    step_rule: str = "flip"
    window: tuple[float, float] = (-1350.0, 150.0)
    fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    body_hu: float = -500.0
    alpha: float = 0.05
    n_resamples: int = 2000
    seed: int = 0
    top_k: int = 5
    shortcut_margin: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("ct", "fundus"):
            raise ValueError(f"kind must be 'ct' or 'fundus', got {self.kind!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def change_unit(self) -> str:
        """The unit of a change in the region table and the maps."""
        return "HU" if self.kind == "ct" else "green 0-255"

    @property
    def feature_regions(self) -> tuple[str, ...]:
        return CT_FEATURE_REGIONS if self.kind == "ct" else ("fov",)

    @property
    def table_regions(self) -> tuple[str, ...]:
        return CT_TABLE_REGIONS if self.kind == "ct" else FUNDUS_REGIONS

    @property
    def features(self) -> tuple[str, ...]:
        return CT_FEATURES if self.kind == "ct" else FUNDUS_FEATURES

    @property
    def units(self) -> dict[str, str]:
        return FEATURE_UNITS if self.kind == "ct" else FUNDUS_UNITS


@dataclass(frozen=True)
class PopulationMap:
    """The pixel-wise change of one direction across the cohort, ``(C, S, S)`` each.

    Attributes
    ----------
    direction : str
    n : int
    mean_change : np.ndarray
        Mean of ``counterfactual - base`` (HU).
    share_same_sign : np.ndarray
        Share of cases whose change has the sign of the mean.
    t, q : np.ndarray
        One-sample t statistic and its BH q-value over all pixels (NaN where every case is equal).
    mean_image : np.ndarray
        Mean query (HU): the backdrop of the figures.
    """

    direction: str
    n: int
    mean_change: np.ndarray
    share_same_sign: np.ndarray
    t: np.ndarray
    q: np.ndarray
    mean_image: np.ndarray


@dataclass(frozen=True)
class RegionRow:
    """The mean change (HU; fundus: green grey levels) inside one region, across cases (a row of
    ``regions.csv``). ``inside_lungs``: CT, the region lies in the lungs; fundus, always True."""

    region: str
    inside_lungs: bool
    direction: str
    n: int
    mean_change: float
    median_change: float
    ci_low: float
    ci_high: float
    dz: float
    dz_low: float
    dz_high: float
    share_same_sign: float
    mean_abs_change: float
    p: float
    q: float = float("nan")
    rank: int = 0


@dataclass(frozen=True)
class FeatureRow:
    """The paired change of one feature in one region (a row of ``features.csv``).

    ``reference_mean`` / ``counterfactual_mean``: the feature's mean over cases on the two images the
    direction compares (:data:`CONTRASTS`: base and counterfactual; for ``span`` the counterfactual
    away from and toward the target).

    ``wants``: ``more`` / ``less`` when ``q < alpha`` (the sign of the median change), else
    ``unchanged``. ``auroc`` (+ interval): the feature measured on the query against the outcome.
    """

    region: str
    feature: str
    unit: str
    direction: str
    n: int
    reference_mean: float
    counterfactual_mean: float
    mean_change: float
    median_change: float
    ci_low: float
    ci_high: float
    dz: float
    dz_low: float
    dz_high: float
    share_same_sign: float
    p: float
    q: float = float("nan")
    rank: int = 0
    wants: str = "unchanged"
    auroc: float = float("nan")
    auroc_low: float = float("nan")
    auroc_high: float = float("nan")
    shortcut_candidate: bool = False


@dataclass(frozen=True)
class CohortAnalysis:
    """Everything the report shows.

    Attributes
    ----------
    n_cases : int
    ids : tuple of str
    maps : dict of str to PopulationMap
        Per direction.
    regions, features : tuple of rows
        In rank order per direction (``toward`` first).
    case_values : dict of str to np.ndarray
        ``(N,)`` per-case numbers behind every row: ``<region>/<feature>/<image>`` for image in
        ``query``, ``base``, ``toward``, ``away`` and ``region_change/<region>/<direction>``.
    shortcut_candidates : tuple of str
        ``<region>/<feature>`` of the top features (primary direction) flagged as shortcut candidates.
    top_region_outside_lungs : bool
        The top-ranked region of the primary direction lies outside the lungs (the model changes the
        body, not the lungs, first).
    settings : ReportSettings
    """

    n_cases: int
    ids: tuple[str, ...]
    labels: np.ndarray
    maps: dict[str, PopulationMap]
    regions: tuple[RegionRow, ...]
    features: tuple[FeatureRow, ...]
    case_values: dict[str, np.ndarray]
    shortcut_candidates: tuple[str, ...]
    top_region_outside_lungs: bool
    settings: ReportSettings
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def primary(self) -> str:
        """The direction the summary, the shortcut check and the bench read: ``span`` where the method has
        both sides, else ``toward``."""
        return primary_direction([r.direction for r in self.features])

    def rank_of(self, table: str, key: str, direction: str | None = None) -> tuple[int, float]:
        """``(rank, q)`` of a row in ``direction`` (default :attr:`primary`): ``table`` is ``regions`` (key:
        region) or ``features`` (key: ``region/feature``); ``(0, nan)`` when absent."""
        direction = direction or self.primary
        rows: Sequence[RegionRow | FeatureRow] = self.regions if table == "regions" else self.features
        for r in rows:
            name = r.region if isinstance(r, RegionRow) else f"{r.region}/{r.feature}"
            if name == key and r.direction == direction:
                return r.rank, r.q
        return 0, float("nan")


class _MapSums:
    """Running sums of one direction's change maps (mean, sd and sign shares without holding the cases)."""

    def __init__(self) -> None:
        self.n = 0
        self.s: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.pos: np.ndarray | None = None
        self.neg: np.ndarray | None = None

    def add(self, d: np.ndarray) -> None:
        d = d.astype(np.float64)
        if self.s is None:
            self.s, self.s2 = np.zeros_like(d), np.zeros_like(d)
            self.pos, self.neg = np.zeros(d.shape, np.int64), np.zeros(d.shape, np.int64)
        assert self.s is not None and self.s2 is not None and self.pos is not None and self.neg is not None
        self.n += 1
        self.s += d
        self.s2 += d * d
        self.pos += d > 0
        self.neg += d < 0

    def result(self, direction: str, mean_image: np.ndarray) -> PopulationMap:
        from scipy import stats

        assert self.s is not None and self.s2 is not None and self.pos is not None and self.neg is not None
        n = self.n
        mean = self.s / n
        var = np.maximum(self.s2 - n * mean * mean, 0.0) / max(n - 1, 1)
        sd = np.sqrt(var)
        # the same statistic as scipy.stats.ttest_1samp, from the sums
        ok = (sd > 1e-9 * (np.abs(mean) + 1.0)) & (n > 1)
        t = np.full(mean.shape, np.nan)
        t[ok] = mean[ok] / (sd[ok] / math.sqrt(n))
        p = np.full(mean.shape, np.nan)
        p[ok] = 2.0 * stats.t.sf(np.abs(t[ok]), df=n - 1)
        share = np.where(mean > 0, self.pos, np.where(mean < 0, self.neg, 0)) / n
        return PopulationMap(direction, n, mean.astype(np.float32), share.astype(np.float32), t, bh_q(p), mean_image)


def _row_order(rows: list[Any]) -> list[Any]:
    def key(r: Any) -> tuple[int, float, float]:
        q = r.q if math.isfinite(r.q) else 2.0
        return (DIRECTIONS.index(r.direction), q, -abs(r.dz) if math.isfinite(r.dz) else 0.0)

    ordered = sorted(rows, key=key)
    out, rank = [], dict.fromkeys(DIRECTIONS, 0)
    for r in ordered:
        rank[r.direction] += 1
        out.append(replace(r, rank=rank[r.direction]))
    return out


def analyse_cohort(
    cases: CohortCases, settings: ReportSettings | None = None, progress: Callable[[int], None] | None = None
) -> CohortAnalysis:
    """Analyse a cohort's counterfactuals, CT or fundus by ``settings.kind`` (see the module docstring).

    Parameters
    ----------
    cases : iterable of CaseImages
        Every explained case; all with the same ``(C, S, S)``.
    settings : ReportSettings, optional
    progress : callable, optional
        Called with the number of cases done after each case.

    Returns
    -------
    CohortAnalysis

    Raises
    ------
    ValueError
        Fewer than 3 cases, or cases of different shapes.
    """
    st = settings or ReportSettings()
    ids: list[str] = []
    labels: list[int] = []
    values: dict[str, list[float]] = {}
    sums = {d: _MapSums() for d in DIRECTIONS}
    image_sum: np.ndarray | None = None
    shape: tuple[int, ...] | None = None
    measure = _ct_case if st.kind == "ct" else _fundus_case

    for case in cases:
        if shape is None:
            shape = tuple(case.query.shape)
        elif tuple(case.query.shape) != shape:
            raise ValueError(f"case {case.id!r} has shape {tuple(case.query.shape)}, the others {shape}.")
        ids.append(case.id)
        labels.append(-1 if case.label is None else int(case.label))
        numbers, changes, backdrop = measure(case, st)
        numbers["step/toward"], numbers["step/away"] = case.toward_step, case.away_step
        for key, v in numbers.items():
            values.setdefault(key, [float("nan")] * (len(ids) - 1)).append(v)
        for col in values.values():  # keys this case did not produce (no away step) stay aligned
            if len(col) < len(ids):
                col.append(float("nan"))
        if backdrop is not None:
            image_sum = backdrop.astype(np.float64) if image_sum is None else image_sum + backdrop
            for direction, d in changes.items():
                sums[direction].add(d)
        if progress is not None:
            progress(len(ids))
    if len(ids) < 3:
        raise ValueError(f"the report needs at least 3 explained cases, got {len(ids)}.")
    arr = {k: np.asarray(v, np.float64) for k, v in values.items()}
    y = np.asarray(labels)
    maps: dict[str, PopulationMap] = {}
    if image_sum is not None:
        mean_image = (image_sum / len(ids)).astype(np.float32)
        maps = {d: m.result(d, mean_image) for d, m in sums.items() if m.n > 0}
    directions = tuple(d for d in DIRECTIONS if np.isfinite(arr.get(f"region_change/{st.table_regions[0]}/{d}", [np.nan])).any())
    region_rows = _region_rows(arr, directions, st)
    feature_rows = _feature_rows(arr, directions, y, st)
    candidates = tuple(f"{r.region}/{r.feature}" for r in feature_rows if r.shortcut_candidate)
    primary = primary_direction(directions)
    top = next((r for r in region_rows if r.direction == primary and r.rank == 1), None)
    notes = []
    if "away" not in directions:
        notes.append("the method gives one direction only (toward the target); no 'away' rows")
    if st.kind == "fundus":
        notes.append("fundus photographs are not aligned across patients: no population map")
    return CohortAnalysis(
        n_cases=len(ids),
        ids=tuple(ids),
        labels=y,
        maps=maps,
        regions=tuple(region_rows),
        features=tuple(feature_rows),
        case_values=arr,
        shortcut_candidates=candidates,
        top_region_outside_lungs=bool(top is not None and not top.inside_lungs and top.q < st.alpha),
        settings=st,
        notes=tuple(notes),
    )


_Measured = tuple[dict[str, float], dict[str, np.ndarray], "np.ndarray | None"]


def _images(case: CaseImages) -> dict[str, np.ndarray]:
    out = {"query": case.query, "base": case.base, "toward": case.toward}
    if case.away is not None:
        out["away"] = case.away
    return out


def _ct_case(case: CaseImages, st: ReportSettings) -> _Measured:
    """One CT case's numbers (features per region and image, region changes), its change maps (HU) and
    the backdrop (query HU)."""
    hu = {k: to_hu(v, st.window) for k, v in _images(case).items()}
    regions = ct_regions(hu["query"], case.mask, st.fractions, body_hu=st.body_hu)
    numbers: dict[str, float] = {}
    for region in CT_FEATURE_REGIONS:
        for image, x in hu.items():
            for k, v in ct_features(x, regions[region], st.window).items():
                numbers[f"{region}/{k}/{image}"] = v
    changes = {d: hu[a] - hu[b] for d, (a, b) in CONTRASTS.items() if a in hu and b in hu}
    _region_numbers(numbers, changes, regions, CT_TABLE_REGIONS)
    return numbers, changes, hu["query"]


def _fundus_case(case: CaseImages, st: ReportSettings) -> _Measured:
    """One fundus case's numbers: lesion features in the field of view (thresholds from the base image)
    and the green channel's change (0-255) in each lesion type found on the query."""
    fov = np.asarray(case.mask).reshape(-1, *case.query.shape[-2:]).max(axis=0) > 0
    det = LesionDetector()
    images = _images(case)
    ref = det.reference(case.base, fov)
    numbers: dict[str, float] = {}
    for image, x in images.items():
        for k, v in det.features(x, ref).items():
            numbers[f"fov/{k}/{image}"] = v
    # regions are the lesions of the patient's own image (DVCE: the query is the base, its thresholds are ref)
    regions = det.masks(case.query, ref if case.base is case.query else det.reference(case.query, fov))
    changes = {d: 255.0 * (images[a][1] - images[b][1]) for d, (a, b) in CONTRASTS.items() if a in images and b in images}
    _region_numbers(numbers, changes, regions, FUNDUS_REGIONS)
    return numbers, changes, None


def _region_numbers(
    numbers: dict[str, float], changes: dict[str, np.ndarray], regions: dict[str, np.ndarray], names: Sequence[str]
) -> None:
    """Each region's mean signed and mean absolute change, per direction, into ``numbers``."""
    for direction, d in changes.items():
        for region in names:
            m = regions[region]
            numbers[f"region_change/{region}/{direction}"] = float(d[m].mean()) if m.any() else float("nan")
            numbers[f"region_abs_change/{region}/{direction}"] = float(np.abs(d[m]).mean()) if m.any() else float("nan")


def _change_fields(t: PairedTest) -> dict[str, Any]:
    """The fields a :class:`RegionRow` and a :class:`FeatureRow` take from the paired test of their change."""
    return {
        "n": t.n, "mean_change": t.mean, "median_change": t.median, "ci_low": t.ci_low, "ci_high": t.ci_high,
        "dz": t.dz, "dz_low": t.dz_low, "dz_high": t.dz_high, "share_same_sign": t.share_same_sign, "p": t.p,
    }  # fmt: skip


def _region_rows(arr: dict[str, np.ndarray], directions: Sequence[str], st: ReportSettings) -> list[RegionRow]:
    rows = []
    for direction in directions:
        for region in st.table_regions:
            t = paired_test(arr[f"region_change/{region}/{direction}"], seed=st.seed, n_resamples=st.n_resamples)
            abs_change = float(np.nanmean(arr[f"region_abs_change/{region}/{direction}"]))
            rows.append(
                RegionRow(
                    region=region,
                    inside_lungs=region not in OUTSIDE,
                    direction=direction,
                    mean_abs_change=abs_change,
                    **_change_fields(t),
                )  # fmt: skip
            )
    q = bh_q(np.array([r.p for r in rows]))
    return _row_order([replace(r, q=float(qi)) for r, qi in zip(rows, q)])


def _feature_rows(arr: dict[str, np.ndarray], directions: Sequence[str], y: np.ndarray, st: ReportSettings) -> list[FeatureRow]:
    rows = []
    for direction in directions:
        for region in st.feature_regions:
            for feat in st.features:
                cf_image, ref_image = CONTRASTS[direction]
                base, cf = arr[f"{region}/{feat}/{ref_image}"], arr[f"{region}/{feat}/{cf_image}"]
                t = paired_test(cf - base, seed=st.seed, n_resamples=st.n_resamples)
                rows.append(
                    FeatureRow(
                        region=region,
                        feature=feat,
                        unit=st.units[feat],
                        direction=direction,
                        reference_mean=float(np.nanmean(base)),
                        counterfactual_mean=float(np.nanmean(cf)),
                        **_change_fields(t),
                    )  # fmt: skip
                )
    q = bh_q(np.array([r.p for r in rows]))
    out = []
    known = y >= 0
    for r, qi in zip(rows, q):
        wants = "unchanged" if not (qi < st.alpha) else ("more" if r.median_change > 0 else "less")
        out.append(replace(r, q=float(qi), wants=wants))
    out = _row_order(out)
    # the outcome association of the top features (and of every significant one, for the table)
    final = []
    for r in out:
        if r.q < st.alpha:
            a, lo, hi = auroc_with_ci(arr[f"{r.region}/{r.feature}/query"][known], y[known], seed=st.seed)
            cand = (
                r.direction == primary_direction(directions)
                and r.rank <= st.top_k
                and math.isfinite(a)
                and lo <= 0.5 <= hi
                and abs(a - 0.5) < st.shortcut_margin
            )
            r = replace(r, auroc=a, auroc_low=lo, auroc_high=hi, shortcut_candidate=bool(cand))
        final.append(r)
    return final
