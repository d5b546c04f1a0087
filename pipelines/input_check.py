"""Is the input what the models were trained for? Checks run by the explain jobs before explaining.

A head CT explained by a chest-CT model still gets a confident answer; these checks refuse such inputs
(``InputCheckError``, a ``ValueError``: exit code 2 at the CLI) naming each failed check with its
measured value and the expected range. ``medxai explain --force`` (``force=True`` in Python) explains
anyway and keeps the failed checks in the output (``explanation.json`` ``provenance.input_check``) and in
the printed summary. The checks run for every method of the explain job (:mod:`pipelines.explain`).

Every threshold lives in :class:`CTInputLimits` / :class:`FundusInputLimits` (defaults below); a job
config overrides them in its ``input_check:`` section, e.g. ``input_check: {min_lung_volume_ml: 800}``.

CT checks (every method on ``input: ct_stack``), per series:

* ``modality``: the DICOM Modality must be one of ``modalities`` (``CT``); not recorded (NIfTI) passes;
* ``slices``: at least ``min_slices`` axial slices (the four-slice stack samples the lung extent);
* ``field_of_view``: in-plane extent ``max(columns * dx, rows * dy)`` in ``fov_mm`` (a head CT is
  about 220-250 mm, a chest CT 300-500 mm);
* ``scan_length``: craniocaudal extent ``slices * dz`` in ``scan_length_mm``;
* ``lung_volume``: volume of the lungs the stack transform segments (air inside the body), at least
  ``min_lung_volume_ml`` (adult lungs are 3-7 L, the phantoms 1.6-2.8 L; the air of a head CT's
  sinuses a few tens of mL);
* ``reconstruction_error`` (methods whose explanation has a sweep origin, i.e. DiffExplainer): the
  autoencoder's per-case reconstruction MSE of the query (the reconstruction DiffExplainer computes
  anyway) at most ``mean + recon_sd_k * sd`` of the reference recorded in the autoencoder's side-car
  at the same encode/decode steps
  (:mod:`medxai.metrics.reconstruction`); without such a reference the check is not run
  (``pass: null``) and says why. Measured on the shipped model, this error does NOT separate
  out-of-distribution queries (DDIM inversion reproduces almost any image); it is reported because
  it is the autoencoder's own account of the query; the latent check below separates better;
* ``latent_distance`` (methods whose explanation has a latent, i.e. DiffExplainer): the query's mean
  squared standardised semantic code (the combined latent DiffExplainer computes anyway,
  ``mean_j ((z_j - mu_j) / sd_j)^2`` with ``mu``/``sd`` from the reference codes recorded in the
  autoencoder's side-car, :mod:`medxai.metrics.latent`) at most
  ``mean + latent_sd_k * sd`` of the reference cases' own distances (scored leave-one-out); about 1
  for a training-distribution query. Without a recorded reference the check is not run
  (``pass: null``) and says why.

Fundus checks (every method on ``input: fundus``), per photograph (the fundus transform's field-of-view
detection is reused):

* ``photo_size``: the shorter side in pixels in ``photo_side_px``;
* ``fov_fraction``: the share of the photo inside the detected circular field of view in
  ``fov_fraction`` (a fundus photo: about 0.5-0.85; a photo without a dark surround: the whole frame);
* ``fov_surround_dark``: the share of the pixels outside the field of view darker than the
  transform's threshold, at least ``min_surround_dark`` (a fundus camera's black surround).

Besides the checks, a query the model already puts in the target class (probability at least
``already_target_p``) gets a note: the counterfactual towards that class has little room.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Check",
    "InputCheck",
    "InputCheckError",
    "CTInputLimits",
    "FundusInputLimits",
    "ct_volume_checks",
    "lung_volume_check",
    "reconstruction_check",
    "exact_inversion_check",
    "latent_check",
    "fundus_checks",
    "target_note",
    "enforce",
]

logger = logging.getLogger(__name__)


class InputCheckError(ValueError):
    """The input is not what the models were trained for; the message names each failed check."""

    def __init__(self, message: str, results: Sequence[InputCheck] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


@dataclasses.dataclass(frozen=True)
class CTInputLimits:
    """Limits of the CT job's input checks (see the module docstring for what each one measures).

    Parameters
    ----------
    modalities : tuple of str
        Accepted DICOM Modality values.
    min_slices : int
        Fewest axial slices.
    fov_mm : (float, float)
        In-plane field of view range, mm.
    scan_length_mm : (float, float)
        Craniocaudal coverage range, mm.
    min_lung_volume_ml : float
        Smallest segmented lung volume, mL.
    recon_sd_k : float
        Reconstruction MSE above ``reference mean + recon_sd_k * reference sd`` fails.
    latent_sd_k : float
        Latent distance above ``reference mean + latent_sd_k * reference sd`` fails. Default 3: on the
        shipped CT model that is 3.38 (reference: 40 phantom cases, mean 1.07, sd 0.77); 200 fresh
        phantom chests scored 0.15-2.95, the tests' head-like CT 3.51, but a second head-like CT 3.07 and an
        abdomen-like slab 2.6-3.1: a second line behind ``min_lung_volume_ml`` (docs/diffexplainer.md,
        "Input checks").
    already_target_p : float
        Teacher probability of the target class from which the query is noted as already there.
    """

    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = 8
    fov_mm: tuple[float, float] = (250.0, 600.0)
    scan_length_mm: tuple[float, float] = (150.0, 2000.0)
    min_lung_volume_ml: float = 1000.0
    recon_sd_k: float = 4.0
    latent_sd_k: float = 3.0
    already_target_p: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(str(m).upper() for m in self.modalities))
        object.__setattr__(self, "fov_mm", _pair(self.fov_mm, "fov_mm"))
        object.__setattr__(self, "scan_length_mm", _pair(self.scan_length_mm, "scan_length_mm"))
        if int(self.min_slices) < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}.")
        if self.min_lung_volume_ml < 0 or self.recon_sd_k <= 0 or self.latent_sd_k <= 0:
            raise ValueError(
                f"min_lung_volume_ml must be >= 0 and recon_sd_k, latent_sd_k > 0, got {self.min_lung_volume_ml}, "
                f"{self.recon_sd_k} and {self.latent_sd_k}."
            )
        if not 0.5 <= self.already_target_p <= 1.0:
            raise ValueError(f"already_target_p must be in [0.5, 1], got {self.already_target_p}.")

    @classmethod
    def from_config(cls, config: Any) -> CTInputLimits:
        """From the config's optional ``input_check`` section (unknown fields raise, naming the valid ones)."""
        return _limits_from_config(cls, config, ("modalities", "fov_mm", "scan_length_mm"))


@dataclasses.dataclass(frozen=True)
class FundusInputLimits:
    """Limits of the fundus job's input checks (see the module docstring).

    Parameters
    ----------
    photo_side_px : (int, int)
        Range of the photo's shorter side, pixels.
    fov_fraction : (float, float)
        Range of the share of the photo inside the detected field of view.
    min_surround_dark : float
        Smallest share of dark pixels outside the field of view.
    already_target_p : float
        Classifier probability of the target class from which the query is noted as already there.
    """

    photo_side_px: tuple[float, float] = (64, 10000)
    fov_fraction: tuple[float, float] = (0.3, 0.95)
    min_surround_dark: float = 0.8
    already_target_p: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "photo_side_px", _pair(self.photo_side_px, "photo_side_px"))
        object.__setattr__(self, "fov_fraction", _pair(self.fov_fraction, "fov_fraction"))
        if not 0.0 <= self.min_surround_dark <= 1.0:
            raise ValueError(f"min_surround_dark must be in [0, 1], got {self.min_surround_dark}.")
        if not 0.5 <= self.already_target_p <= 1.0:
            raise ValueError(f"already_target_p must be in [0.5, 1], got {self.already_target_p}.")

    @classmethod
    def from_config(cls, config: Any) -> FundusInputLimits:
        """From the config's optional ``input_check`` section."""
        return _limits_from_config(cls, config, ("photo_side_px", "fov_fraction"))


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be two numbers [low, high], got {value!r}.") from err
    if not lo <= hi:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {value!r}.")
    return (lo, hi)


def _limits_from_config(cls: Any, config: Any, tuple_fields: tuple[str, ...]) -> Any:
    from medxai.config import ConfigError, dataclass_from_mapping

    try:
        return dataclass_from_mapping(cls, config.section("input_check", {}), "input_check", tuple_fields)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{config.source}: section 'input_check' is invalid: {err}") from err


# ------------------------------------------------------------------------------------------ results
@dataclasses.dataclass(frozen=True)
class Check:
    """One measured property of the input against its expected range.

    ``passed`` is None when the check could not be run (``note`` says why); it then refuses nothing.
    """

    name: str
    value: Any
    unit: str
    expected: str
    passed: bool | None
    note: str = ""

    def describe(self) -> str:
        """``"lung volume 35 mL (expected >= 1000 mL)"``."""
        shown = "not measured" if self.value is None else _fmt(self.value)
        unit = f" {self.unit}" if self.unit and self.value is not None else ""
        text = f"{self.name.replace('_', ' ')} {shown}{unit} (expected {self.expected})"
        return f"{text}: {self.note}" if self.note and self.passed is False else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "expected": self.expected,
            "pass": self.passed,
            "note": self.note,
        }


@dataclasses.dataclass
class InputCheck:
    """The checks of one case (a CT series or a photograph)."""

    case: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    forced: bool = False
    _logged: str = dataclasses.field(default="", repr=False)  # reasons already logged as forced

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    @property
    def passed(self) -> bool:
        return not self.failed

    def reasons(self) -> str:
        """The failed checks in one line, ``""`` when none failed."""
        return "; ".join(c.describe() for c in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "forced": self.forced and not self.passed,
            "failed": [c.name for c in self.failed],
            "checks": [c.to_dict() for c in self.checks],
        }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def _range(lo: float, hi: float, unit: str) -> str:
    return f"{_fmt(lo)}-{_fmt(hi)} {unit}".rstrip()


def _within(name: str, value: float, unit: str, bounds: tuple[float, float], digits: int) -> Check:
    """``value`` (shown rounded to ``digits``) against the closed range ``bounds``."""
    lo, hi = bounds
    return Check(name, round(value, digits), unit, _range(lo, hi, unit), lo <= value <= hi)


# ------------------------------------------------------------------------------------------- CT
def ct_volume_checks(volume: Any, limits: CTInputLimits) -> list[Check]:
    """Header and geometry checks of a ``dicom_io.Volume``: modality, slices, field of view, scan length."""
    nz, ny, nx = (int(s) for s in volume.array.shape)
    dx, dy, dz = (abs(float(s)) for s in volume.spacing)
    modality = getattr(volume.source, "modality", None) if volume.source is not None else None
    checks = [
        Check(
            "modality",
            modality,
            "",
            " or ".join(limits.modalities),
            None if modality is None else modality.upper() in limits.modalities,
            "" if modality is not None else "not recorded in the input (not DICOM)",
        ),
        Check("slices", nz, "", f">= {limits.min_slices}", nz >= limits.min_slices),
    ]
    fov = max(nx * dx, ny * dy)
    checks.append(_within("field_of_view", fov, "mm", limits.fov_mm, 1))
    checks.append(_within("scan_length", nz * dz, "mm", limits.scan_length_mm, 1))
    return checks


def lung_volume_check(stack_data: Mapping[Any, Any] | None, limits: CTInputLimits, error: str = "") -> Check:
    """The lung volume the CT stack transform segmented (``stack_data`` is its output dict).

    ``stack_data=None`` with ``error`` (the transform's message) when no stack could be built.
    """
    from medxai.transforms.ct import LUNG_VOLUME_ML

    expected = f">= {_fmt(float(limits.min_lung_volume_ml))} mL"
    if stack_data is None:
        return Check("lung_volume", None, "mL", expected, False, f"the lung stack could not be built ({error})")
    meta = getattr(stack_data.get("lung_mask"), "meta", {}) or {}
    ml = meta.get(LUNG_VOLUME_ML)
    if ml is None:
        return Check("lung_volume", None, "mL", expected, None, "the stack transform recorded no lung volume")
    ml = float(ml)
    return Check("lung_volume", round(ml, 1), "mL", expected, ml >= limits.min_lung_volume_ml)


def reconstruction_check(mse: float, reference: Any | None, limits: CTInputLimits, *, where: str = "") -> Check:
    """The query's reconstruction MSE against a :class:`medxai.metrics.reconstruction.ReconstructionReference`."""
    if reference is None:
        return Check(
            "reconstruction_error",
            float(mse),
            "MSE",
            "a recorded reference",
            None,
            f"no reference statistics at these encode/decode steps{where}; `medxai train autoencoder` "
            "records them at the config's steps",
        )
    limit = reference.upper_limit(limits.recon_sd_k)
    expected = (
        f"<= {limit:.3g} (mean {reference.mean:.3g} + {limits.recon_sd_k:g} sd over {reference.n} "
        f"{reference.cases or 'reference cases'})"
    )
    return Check("reconstruction_error", float(mse), "MSE", expected, bool(mse <= limit))


def exact_inversion_check() -> Check:
    """The reconstruction check, not run: an exact sampler (EDICT) reconstructs any input up to round-off,
    so the error cannot tell a chest CT from anything else; the latent distance check stands."""
    return Check(
        "reconstruction_error",
        None,
        "MSE",
        "not applicable",
        None,
        "exact inversion (sampler: edict) reconstructs any input; the latent distance check covers this",
    )


def latent_check(
    distance: float | None, reference: Any | None, limits: CTInputLimits, *, where: str = "", note: str = ""
) -> Check:
    """The query's latent distance against a :class:`medxai.metrics.latent.LatentReference`.

    ``distance=None`` (with ``note`` saying why) when it could not be measured, e.g. the reference was
    recorded at another latent size; the check is then not run.
    """
    if reference is None:
        return Check(
            "latent_distance",
            distance,
            "",
            "a recorded reference",
            None,
            f"no latent reference{where}; `medxai train autoencoder` records one "
            "(scripts/make_pretrained.py --latent-reference-only for the shipped model)",
        )
    limit = reference.upper_limit(limits.latent_sd_k)
    expected = (
        f"<= {limit:.3g} (mean {reference.mean:.3g} + {limits.latent_sd_k:g} sd over {reference.n} "
        f"{reference.cases or 'reference cases'})"
    )
    if distance is None:
        return Check("latent_distance", None, "", expected, None, note)
    passed = bool(distance <= limit)
    return Check(
        "latent_distance",
        float(distance),
        "",
        expected,
        passed,
        "" if passed else "the autoencoder's semantic code of the query is far from its reference cases' codes",
    )


def target_note(
    probabilities: Sequence[float] | np.ndarray,
    target: int,
    threshold: float,
    who: str = "teacher",
    counterfactual: str | None = None,
) -> str | None:
    """A note when the model already gives the target class a probability of at least ``threshold``.

    ``counterfactual`` names the counterfactual that has little room (default: the one towards the
    target); ``""`` for methods without a counterfactual (the note then states the probability only).
    """
    p = float(np.asarray(probabilities, dtype=np.float64)[target])
    if p < threshold:
        return None
    text = f"the {who} already gives P(class {target}) = {p:.2f} for this query"
    if counterfactual == "":
        return text
    what = counterfactual or f"the counterfactual towards class {target}"
    return f"{text}; {what} has little room"


# ------------------------------------------------------------------------------------------ fundus
def fundus_checks(
    rgb: np.ndarray,
    data: Mapping[Any, Any],
    limits: FundusInputLimits,
    *,
    threshold_abs: float = 15.0,
    threshold_rel: float = 0.1,
) -> list[Check]:
    """Photo size and field-of-view checks from the fundus transform's output dict ``data``.

    ``data["fov_circle"]`` = (centre row, centre col, radius) on the photo; the thresholds are the
    transform's (``fov`` section of the config), so "dark" means what the FOV detector counted as dark.
    """
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    side = min(h, w)
    lo, hi = limits.photo_side_px
    checks = [
        Check("photo_size", side, "px", f"shorter side {_range(lo, hi, 'px')}", lo <= side <= hi, f"the photo is {w} x {h} px")
    ]
    cr, cc, r = (float(v) for v in np.asarray(data["fov_circle"]).ravel()[:3])
    yy, xx = np.ogrid[:h, :w]
    inside = (yy + 0.5 - cr) ** 2 + (xx + 0.5 - cc) ** 2 <= r**2
    frac = float(inside.mean())
    checks.append(_within("fov_fraction", frac, "", limits.fov_fraction, 3))
    outside = ~inside
    if outside.sum() < 0.01 * inside.size:
        checks.append(
            Check(
                "fov_surround_dark",
                None,
                "",
                f">= {limits.min_surround_dark:g}",
                False,
                "the field of view covers the whole photo: no dark surround was found",
            )
        )
        return checks
    bright = rgb.max(axis=-1).astype(np.float32)
    thr = max(float(threshold_abs), float(threshold_rel) * float(np.percentile(bright, 99)))
    dark = float((bright[outside] <= thr).mean())
    checks.append(
        Check("fov_surround_dark", round(dark, 3), "", f">= {limits.min_surround_dark:g}", dark >= limits.min_surround_dark)
    )
    return checks


# ------------------------------------------------------------------------------------------ refusal
def enforce(results: Iterable[InputCheck], *, force: bool, what: str, source: str, trained_for: str) -> None:
    """Raise :class:`InputCheckError` when a case failed a check and ``force`` is off; log it when forced.

    Parameters
    ----------
    results : the cases' checks (their ``forced`` flag is set here when forced).
    what : the stage, e.g. ``"before explaining"``.
    source : the input path (named in the message).
    trained_for : e.g. ``"chest CT series"``.
    """
    results = list(results)
    bad = [r for r in results if not r.passed]
    if not bad:
        return
    detail = " ".join(f"Case {r.case}: {r.reasons()}." for r in bad)
    if force:
        fresh = [r for r in bad if r.reasons() != r._logged]  # a second stage logs only what is new
        for r in bad:
            r.forced, r._logged = True, r.reasons()
        if fresh:
            logger.warning(
                "input %s is outside what the models were trained for (forced): %s",
                source,
                " ".join(f"Case {r.case}: {r.reasons()}." for r in fresh),
            )
        return
    raise InputCheckError(
        f"input {source!r} does not look like what the models were trained for ({trained_for}); refused {what}. "
        f"{detail} Pass a {trained_for}, widen the limits in the config's 'input_check' section if they are too "
        "strict for your data, or rerun with --force (force=True in Python) to explain it anyway; the failed "
        "checks are then kept in the output's 'input_check'.",
        results,
    )
