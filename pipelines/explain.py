"""The explain job: ONE pipeline for every registered method and both inputs (CT series, fundus photo).

``run_explain(config, source, out, method=...)``::

    config -> input kind (``input: ct_stack | fundus``) -> read the input (every CT series of a DICOM
    folder, a volume file, one DICOM file; or a photo JPEG/PNG/DICOM) -> transforms (four-slice lung
    stack / field-of-view crop) -> input checks (refuse, or --force) -> registry.get_method(name, kind)
    -> models (pipelines.models) -> spec.build -> explainer.explain(x, target, mask=...)
    -> reconstruction / latent checks (methods with a sweep origin / latent: DiffExplainer)
    -> per case, in ONE folder written whole or not at all: Explanation.save (maps on the SOURCE grid
       through the transforms' inverse) and, when the input is DICOM, the DICOM objects in the same run.

Every case gets the same layout (see docs/explain.md)::

    OUT/<PatientID>_<h>/<StudyDate_StudyID>_<h>/<SeriesDescription>_<method>_<h>/
        explanation.json  heatmap.nii.gz  strip.png
        difference_minus.nii.gz  difference_plus.nii.gz  counterfactuals.npz     (counterfactual methods)
        counterfactual_minus.nii.gz  counterfactual_plus.nii.gz                  (… on CT: HU, CT grid)
        dicom/SC_overlay/  dicom/PM.dcm  dicom/SEG.dcm                           (DICOM CT input)
        dicom/SC_counterfactual/  dicom/CT_counterfactual_minus/  dicom/CT_counterfactual_plus/
        slicer/                                                                  (DICOM CT input)
        dicom/SC_overlay/*.dcm                                                   (DICOM photo input)

Fundus folders are named ``fundus_<photo>_<method>_<h>`` (like ``medxai export``'s); inputs that are not
DICOM get ``unknown-patient_<h>`` / ``MEDXAI-UNLINKED_<h>`` and a study hashed on the file's path. An
existing case folder is refused before any work unless ``overwrite=True`` (``--overwrite``).

The scores burned into the overlays and written into the derived series are the black box's
probabilities of the target class taken from the :class:`~medxai.explanation.Explanation` (query, and
the counterfactual towards the target), never typed by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from atomicfs import atomic_dir
from dicom_io import Photo, Volume, find_series, read_image, read_series, write_nifti
from medxai.progress import ProgressFn as Progress
from medxai.registry import CT_STACK, FUNDUS
from pipelines.errors import StepError
from pipelines.input_check import (
    CTInputLimits,
    FundusInputLimits,
    InputCheck,
    InputCheckError,
    ct_volume_checks,
    enforce,
    exact_inversion_check,
    fundus_checks,
    latent_check,
    lung_volume_check,
    reconstruction_check,
    target_note,
)
from pipelines.paths import check_output_outside_input
from pipelines.provenance import package_versions

__all__ = ["CaseResult", "CTSourceGrid", "ExplainResult", "PhotoSourceGrid", "list_methods", "run_explain"]

logger = logging.getLogger(__name__)


_TRAINED_FOR = {CT_STACK: "chest CT series", FUNDUS: "colour fundus photograph"}
_BLACK_BOX = {CT_STACK: "teacher", FUNDUS: "classifier"}  # who "already gives P(target)" in the notes


# ------------------------------------------------------------------------------------------ results
@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One explained case: where it came from, what the black box said, what was written.

    ``explanation`` (the case's :class:`~medxai.explanation.Explanation`, batch size 1), ``query``
    (``(C, *spatial)`` on the explainer's grid) and ``grid`` (its :class:`CTSourceGrid` /
    :class:`PhotoSourceGrid`) are the in-memory results, for callers that go on computing (the demo).
    """

    case: str
    case_dir: Path
    source: str
    patient_id: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    method: str
    target_class: int
    #: black-box probabilities of every class on the query ``(K,)``
    probabilities: tuple[float, ...]
    #: probability of the target class on the query and at each counterfactual step (``{"query": p,
    #: "steps": {step: p}}``; ``"origin"`` for a sweep measured from a reconstruction)
    target_probability: dict[str, Any]
    files: dict[str, Path]
    input_check: dict[str, Any]
    notes: tuple[str, ...] = ()
    #: the failed checks in one line (``""`` when every check passed)
    reasons: str = ""
    explanation: Any = dataclasses.field(default=None, repr=False, compare=False)
    query: Any = dataclasses.field(default=None, repr=False, compare=False)
    grid: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.probabilities))


@dataclasses.dataclass(frozen=True)
class ExplainResult:
    """What :func:`run_explain` did: the cases (in input order) and the totals."""

    out_dir: Path
    method: str
    input_kind: str
    config: str
    cases: tuple[CaseResult, ...]
    seconds: float

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def n_files(self) -> int:
        return sum(len(c.files) for c in self.cases)

    @property
    def n_forced(self) -> int:
        return sum(bool(c.input_check.get("forced")) for c in self.cases)


# ---------------------------------------------------------------------------------- source grids
class CTSourceGrid:
    """Puts maps on a four-slice stack back on the source CT grid (the stack transform's inverse).

    A map with one channel ``(1, S, S)`` (an attribution map of the whole stack) goes onto every stack
    slice; one with a channel per stack slice ``(n, S, S)`` goes slice by slice. Every other slice, and
    the area outside the in-plane crop, is 0.
    """

    def __init__(self, volume: Volume, transform: Any, data: Mapping[Any, Any]) -> None:
        self.volume, self.transform, self.data = volume, transform, data
        self.n = int(np.asarray(data["image"]).shape[0])

    @property
    def slice_indices(self) -> list[int]:
        """Source slice (z index of ``volume.array``) of each stack channel."""
        return [int(k) for k in np.asarray(self.data["slice_indices"]).ravel()]

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """``(1 or n, S, S)`` on the stack -> ``(z, y, x)`` float32 on the CT grid."""
        a = np.asarray(array, dtype=np.float32)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[0] not in (1, self.n):
            raise ValueError(f"a map on the CT stack must be (1, S, S) or ({self.n}, S, S), got shape {a.shape}.")
        if a.shape[0] == 1 and self.n > 1:
            a = np.repeat(a, self.n, axis=0)
        vol, _ = self.transform.invert(a, self.data)
        return np.asarray(vol, dtype=np.float32)

    def on_grid(self, array: np.ndarray) -> Volume:
        """``array`` (z, y, x) with the source's geometry (no DICOM provenance)."""
        v = self.volume
        return Volume(np.ascontiguousarray(array, dtype=np.float32), v.spacing, v.origin, v.direction)

    def write(self, array: np.ndarray, path: Path) -> str:
        return write_nifti(self.on_grid(array), path).name

    def counterfactual_hu(self, stack: np.ndarray) -> np.ndarray:
        """The source CT (z, y, x) in HU with the stack slices replaced, inside the crop, by ``stack``
        ``(n, S, S)`` in [0, 1] un-windowed to HU (``level +- width / 2``)."""
        lo, hi = self.transform.config.window_range
        inv, _ = self.transform.invert(np.asarray(stack, dtype=np.float32), self.data)
        covered, _ = self.transform.invert(np.ones_like(np.asarray(stack, dtype=np.float32)), self.data, nearest=True)
        out = np.array(self.volume.array, dtype=np.float32, copy=True)
        inside = np.asarray(covered) > 0.5
        out[inside] = (lo + np.asarray(inv, dtype=np.float32) * (hi - lo))[inside]
        return out


class PhotoSourceGrid:
    """Puts maps on the fundus crop back on the photograph's grid (the fundus transform's inverse);
    with ``fov_only`` (methods confined to the field of view) 0 outside the detected field of view."""

    def __init__(self, photo: Photo, transform: Any, data: Mapping[Any, Any], fov_only: bool = False) -> None:
        self.photo, self.transform, self.data = photo, transform, data
        self.fov = None
        if fov_only:
            fov = np.asarray(data["fov_mask"], dtype=np.float32).reshape(-1, *np.asarray(data["fov_mask"]).shape[-2:])[0]
            self.fov = np.asarray(transform.invert(fov, data, nearest=True)) > 0.5

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """``(S, S)`` or ``(C, S, S)`` on the crop -> ``(H, W)`` (one channel) or ``(C, H, W)``."""
        a = np.asarray(array, dtype=np.float32)
        a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
        out = np.asarray(self.transform.invert(a, self.data), dtype=np.float32)
        return np.where(self.fov, out, 0.0).astype(np.float32) if self.fov is not None else out

    def write(self, array: np.ndarray, path: Path) -> str:
        """A photo-grid map as NIfTI: x = columns, y = rows (pixel spacing when the photo has one)."""
        a = np.asarray(array, dtype=np.float32)
        a = a[None] if a.ndim == 2 else a
        row, col = self.photo.pixel_spacing or (1.0, 1.0)
        return write_nifti(Volume(np.ascontiguousarray(a), (float(col), float(row), 1.0), (0.0, 0.0, 0.0)), path).name


# ------------------------------------------------------------------------------------------ helpers
def list_methods(input_kind: str | None = None) -> list[dict[str, Any]]:
    """The registry as rows ``{name, inputs, needs, optional, summary}`` (for ``--list-methods``)."""
    from medxai.registry import methods

    return [
        {"name": s.name, "inputs": sorted(s.inputs), "needs": list(s.needs), "optional": list(s.optional), "summary": s.summary}
        for s in methods(input_kind)
    ]


def load_job_config(config: str | os.PathLike[str], overrides: Mapping[str, Any] | None) -> Any:
    from medxai.config import load_config

    cfg = load_config(config)
    return cfg.with_overrides(dict(overrides)) if overrides else cfg


def read_ct_volumes(src: Path, skip_unreadable: bool) -> list[Volume]:
    """Every CT series of a DICOM folder (every image series when none is CT: the modality check then
    names them), or the one volume of a file."""
    if src.is_dir():
        found = find_series(src, skip_unreadable=skip_unreadable)
        ct = [s for s in found if (s.modality or "").upper() == "CT"]
        if ct and len(ct) < len(found):
            left = "; ".join(s.describe() for s in found if s not in ct)
            logger.info("explaining the CT series of %s; left out: %s", src, left)
        return [read_series(src, s.series_instance_uid, skip_unreadable=skip_unreadable) for s in (ct or found)]
    img = read_image(src, skip_unreadable=skip_unreadable)
    if not isinstance(img, Volume):
        raise ValueError(
            f"input {str(src)!r} is a photograph; this config explains CT volumes (input: ct_stack). "
            "Pass a DICOM folder, a CT DICOM file or a .nii.gz/.nrrd volume, or a fundus config."
        )
    return [img]


def read_photo(src: Path) -> Photo:
    photo = read_image(src)
    if not isinstance(photo, Photo):
        raise ValueError(
            f"input {str(src)!r} is a {type(photo).__name__}, not a photograph; this config (input: fundus) takes an "
            "RGB fundus photo (JPEG/PNG or a DICOM photograph)."
        )
    rgb = np.asarray(photo.array)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"input {str(src)!r} is not an RGB image (array shape {rgb.shape}); pass a colour fundus photo.")
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        raise ValueError(
            f"input {str(src)!r} is not an RGB colour photograph (a greyscale image: all three channels are "
            "equal); the classifier and diffusion model need a colour fundus photo."
        )
    return photo


def _is_dicom(obj: Volume | Photo) -> bool:
    return obj.source is not None and bool(obj.source.files) and bool(obj.source.frames)


def _case_folder(out: Path, obj: Volume | Photo, src: Path, method: str) -> Path:
    from pipelines.export import ct_export_folder, export_folder, photo_export_folder

    if isinstance(obj, Photo):
        return photo_export_folder(out, obj, method)
    if _is_dicom(obj):
        return ct_export_folder(out, obj, method)
    key = str(src.resolve())  # a volume file: no patient or study; the path tells files apart
    return export_folder(out, {}, key, f"{src.name.split('.')[0] or 'volume'}_{method}", f"{key}\x00{method}")


def _sidecar_references(cfg: Any, encode_steps: int, decode_steps: int) -> tuple[Any, str, Any, str]:
    """From the autoencoder's side-car (read once): the reconstruction reference at these steps and the
    reference codes (each None when not recorded), each with where it looked."""
    from medxai.metrics.latent import latent_reference_from_sidecar
    from medxai.metrics.reconstruction import find_reference, references_from_sidecar
    from medxai.training.checkpoint import read_json

    sidecar = Path(cfg.weights("autoencoder")).with_suffix(".json")
    meta = read_json(sidecar) if sidecar.is_file() else {}
    refs = references_from_sidecar(meta)
    recorded = ", ".join(f"{r.encode_steps}/{r.decode_steps}" for r in refs) or "none"
    return (
        find_reference(refs, encode_steps, decode_steps),
        f" ({encode_steps}/{decode_steps}) in {str(sidecar)!r} (recorded: {recorded})",
        latent_reference_from_sidecar(meta),
        f" in {str(sidecar)!r}",
    )


def _latent_checks(cfg: Any, exp: Any, x: Any, checks: list[InputCheck], limits: CTInputLimits) -> None:
    """The autoencoder's reconstruction error of each query and the distance of its semantic code from
    the reference codes, from what the explainer computed anyway (sweep origin, latent)."""
    from medxai.metrics.reconstruction import reconstruction_mse

    enc, dec = int(exp.parameters.get("encode_steps", 0)), int(exp.parameters.get("decode_steps", 0))
    reference, where, latent_ref, latent_where = _sidecar_references(cfg, enc, dec)
    recon = None
    # an exact sampler (EDICT) reproduces ANY input, so its reconstruction error says nothing about
    # whether the query is what the autoencoder was trained on: the check is shown as not run
    exact = exp.parameters.get("sampler") == "edict"
    # a DiG-IN chain started from fresh noise: its origin is a sample, not a reconstruction of the query
    sampled = exp.parameters.get("start") == "sample"
    if exp.sweep is not None and exp.sweep.origin is not None and not exact and not sampled:
        import torch

        recon = reconstruction_mse(x, torch.as_tensor(np.asarray(exp.sweep.origin)))
    latent_d, note = None, ""
    if exp.latent is not None and latent_ref is not None:
        z = np.asarray(exp.latent)
        if latent_ref.dim == z.shape[1]:
            latent_d = latent_ref.distance(z)
        else:
            note = (
                f"the reference{latent_where} was recorded at latent size {latent_ref.dim}, the query's is "
                f"{z.shape[1]}; re-record it for this autoencoder and stack"
            )
    for b, chk in enumerate(checks):
        if recon is not None:
            chk.checks.append(reconstruction_check(float(recon[b]), reference, limits, where=where))
        elif exact:
            chk.checks.append(exact_inversion_check())
        if exp.latent is not None:
            chk.checks.append(
                latent_check(None if latent_d is None else float(latent_d[b]), latent_ref, limits, where=latent_where, note=note)
            )


def _p(probs: np.ndarray, k: int) -> float:
    return float(np.asarray(probs)[k])


def _target_probability(exp: Any, k: int) -> dict[str, Any]:
    """P(target) of case 0 of ``exp``: on the query, at every sweep step, at the sweep's origin."""
    from medxai.explanation import probabilities

    out: dict[str, Any] = {"query": _p(exp.probabilities[0], k)}
    if exp.sweep is not None:
        out["steps"] = {float(s): _p(exp.sweep.probabilities[0, i], k) for i, s in enumerate(exp.sweep.steps)}
        if exp.sweep.origin_logits is not None:
            out["origin"] = _p(exp.sweep.origin_probabilities[0], k)
        sw = exp.sweep
        if sw.second_logits is not None:  # a comparing method: the second model on the same images
            second = {
                "steps": {float(s): _p(probabilities(sw.second_logits, sw.activation)[0, i], k) for i, s in enumerate(sw.steps)}
            }
            for name, logits in (("query", sw.second_query_logits), ("origin", sw.second_origin_logits)):
                if logits is not None:
                    second[name] = _p(probabilities(logits, sw.activation)[0], k)
            out["second_model"] = second
    return out


def _second_model(cfg: Any, second_config: str | os.PathLike[str], spec: Any, trust_code: bool) -> Any:
    """The black box of ``second_config`` (same input kind as ``cfg``), for a method that compares two models."""
    from pipelines import models as job_models

    if "second_model" not in (*spec.needs, *spec.optional):
        raise ValueError(f"--second-config is for methods that compare two models (digin-disagreement); {spec.name!r} uses one.")
    other = load_job_config(second_config, None)
    if job_models.input_kind(other) != job_models.input_kind(cfg):
        raise ValueError(
            f"{other.source} explains {job_models.input_kind(other)} inputs but {cfg.source} explains "
            f"{job_models.input_kind(cfg)}; the two models must take the same inputs."
        )
    return job_models.load_black_box(other, trust_code=trust_code)


def _note(kind: str, exp: Any, k: int, limits: Any) -> str | None:
    """ "already in the target class" note; names the counterfactual that has little room."""
    sweep = exp.sweep
    what: str | None
    if sweep is not None and sweep.origin is not None and sweep.negative_steps:
        what = "the 'more likely' counterfactual (z+)"
    elif sweep is not None:
        what = None  # the counterfactual towards the target
    else:
        what = ""  # no counterfactual: only the fact
    return target_note(np.asarray(exp.probabilities[0]), k, limits.already_target_p, _BLACK_BOX[kind], counterfactual=what)


def _heat_for_dicom(exp: Any) -> np.ndarray:
    """The map the DICOM objects show on the explainer grid: each channel's own map ``(C, *spatial)``
    where the method gives them (DiffExplainer on the CT stack: one per slice), else ``(1, *spatial)``
    (several targets: summed)."""
    if exp.channel_maps is not None:
        return np.asarray(exp.channel_maps, dtype=np.float32)[0]
    h = exp.heatmaps_numpy()[0]
    return h[:1] if h.shape[0] == 1 else h.sum(0, keepdims=True)


def _step_label(step: float) -> str:
    return "minus" if step < 0 else "plus"


def make_transform(cfg: Any, kind: str) -> Any:
    """The input transform of the job: the four-slice CT stack or the fundus field-of-view crop."""
    from medxai.config import ConfigError

    try:
        if kind == CT_STACK:
            from medxai.training.ct import stack_config
            from medxai.transforms import CTStackTransform

            return CTStackTransform(stack_config(cfg))
        from medxai.transforms import FundusConfig, FundusTransform

        try:
            return FundusTransform(FundusConfig(size=int(cfg.get("image_size")), **cfg.section("fov", {})))
        except TypeError as err:
            raise ConfigError(
                f"{cfg.source}: section 'fov' has unknown fields ({err}); valid: margin, threshold_abs, threshold_rel."
            ) from err
    except (ValueError, TypeError) as e:
        raise StepError("transforms", str(e)) from e


def _transform_and_check(obj: Volume | Photo, transform: Any, limits: Any, src: Path) -> tuple[InputCheck, Any]:
    """The transform's output for one case (``None``: a CT whose lung stack could not be built, allowed
    only when a check failed anyway) and the case's cheap input checks."""
    if isinstance(obj, Volume):
        name = (obj.source.series_instance_uid if obj.source is not None else None) or src.name
        chk = InputCheck(name, ct_volume_checks(obj, limits))
        try:
            data = transform(obj.array, obj.spacing, obj.origin, obj.direction)
        except Exception as e:
            if chk.passed:  # a chest CT whose stack fails: the transform's own message says why
                raise StepError("transforms", f"case {chk.case}: {e}") from e
            chk.checks.append(lung_volume_check(None, limits, error=str(e)))
            return chk, None
        chk.checks.append(lung_volume_check(data, limits))
        return chk, data
    rgb = np.asarray(obj.array)
    try:
        data = transform(rgb)
    except Exception as e:
        raise StepError("transforms", f"{src}: {e}") from e
    checks = fundus_checks(
        rgb, data, limits, threshold_abs=transform.config.threshold_abs, threshold_rel=transform.config.threshold_rel
    )
    return InputCheck(src.name, checks), data


# ---------------------------------------------------------------------------------------- the job
def run_explain(
    config: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    method: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    trust_code: bool = False,
    force: bool = False,
    skip_unreadable: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    dicom: bool = True,
    second_config: str | os.PathLike[str] | None = None,
) -> ExplainResult:
    """Explain every case of ``source`` with one registered method and write the per-case layout.

    Parameters
    ----------
    config : path
        Job config (``configs/ct_prognosis.yaml``, ``configs/dr_fundus.yaml``): ``input``, ``method``,
        ``target_class``, the black box and the models the method needs, its settings section.
    source : path
        ``input: ct_stack``: a DICOM folder (each CT series is one case), a CT DICOM file or a
        ``.nii.gz``/``.nrrd`` volume. ``input: fundus``: a photo (JPEG/PNG or DICOM).
    out : path
        Output root (one folder per case, see the module docstring); not inside ``source``.
    method : str, optional
        Registered method name (default: the config's ``method``); must accept the config's input kind.
    overrides : mapping, optional
        Dotted config fields to replace, e.g. ``{"diffexplainer.decode_steps": 10, "rise.n_masks": 50}``.
    trust_code : bool
        Allow model classes / MONAI bundle code outside the allow-list (``--trust-code``).
    force : bool
        Explain even when an input check fails (``--force``); the failed checks are kept in
        ``explanation.json`` ``provenance.input_check``. Without it such an input raises
        :class:`~pipelines.input_check.InputCheckError` (a ``ValueError``) naming each failed check,
        before anything is written.
    skip_unreadable : bool
        Leave out DICOM files that cannot be read; the warning is kept in ``provenance.reader_warnings``.
    overwrite : bool
        Replace existing case folders (only once the new one is complete); default: refuse before any work.
    progress : callable, optional
        ``progress(stage, done, total)``.
    dicom : bool
        When the input is DICOM, also write the DICOM objects (SC overlays, Parametric Map, SEG, derived
        counterfactual CT series) into each case folder.
    second_config : path, optional
        Another job config whose black box is the second model of a comparing method
        (``digin-disagreement``: two configs, one per model); instead of a ``second_model`` section.

    Returns
    -------
    ExplainResult

    Raises
    ------
    StepError
        Naming the failed step (``config``, ``read input``, ``transforms``, ``load models``, ``explain``,
        ``write outputs``), the cause chained.
    InputCheckError
        An input outside what the models were trained for (without ``force``).
    ValueError
        An output inside the input, or a case folder that exists (without ``overwrite``).
    """
    import torch

    from medxai.registry import get_method
    from pipelines import models as job_models

    t_start = time.perf_counter()
    src, out_dir = Path(source), Path(out)
    if not src.exists():
        raise ValueError(f"input {str(src)!r} does not exist; pass a DICOM folder, a volume file or a photo.")
    check_output_outside_input(out_dir, src, option="-o/--out")
    try:
        cfg = load_job_config(config, overrides)
        kind = job_models.input_kind(cfg)
        name = method or cfg.get("method", None)
        if not name:
            from medxai.registry import method_names

            raise ValueError(
                f"{cfg.source}: no method given; set 'method:' in the config or pass --method "
                f"(methods for {kind.replace('_', ' ')} inputs: {', '.join(method_names(kind))})."
            )
        spec = get_method(str(name), kind)
        settings = job_models.method_settings(cfg, spec)
        target = int(job_models.target_class(cfg))
        seed = int(cfg.get("seed", 0))
        limits: Any = CTInputLimits.from_config(cfg) if kind == CT_STACK else FundusInputLimits.from_config(cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise StepError("config", str(e)) from e

    # ------------------------------------------------------------------ read + transform + cheap checks
    try:
        inputs: list[Volume | Photo] = list(read_ct_volumes(src, skip_unreadable)) if kind == CT_STACK else [read_photo(src)]
    except Exception as e:
        raise StepError("read input", f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)) from e
    folders = [_case_folder(out_dir, obj, src, spec.name) for obj in inputs]
    if len(set(folders)) != len(folders):
        raise ValueError(f"two inputs of {str(src)!r} map to the same output folder; explain them one at a time.")
    existing = [f for f in folders if f.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"an explanation of this input with method {spec.name!r} already exists in '{existing[0]}'; medxai does "
            "not replace it silently. Pass --overwrite (overwrite=True) to replace it, or choose another output folder."
        )
    transform = make_transform(cfg, kind)
    checks: list[InputCheck] = []
    datas: list[Any] = []
    for obj in inputs:
        chk, data = _transform_and_check(obj, transform, limits, src)
        checks.append(chk)
        datas.append(data)
    # cheap checks first: refuse before loading the models and explaining
    enforce(checks, force=force, what="before explaining", source=str(src), trained_for=_TRAINED_FOR[kind])
    if any(d is None for d in datas):
        bad = [c for c, d in zip(checks, datas) if d is None]
        raise StepError(
            "transforms", f"case {bad[0].case}: {bad[0].reasons()}; --force cannot explain a series without a lung stack."
        )
    grids = [
        CTSourceGrid(obj, transform, data)
        if isinstance(obj, Volume)
        else PhotoSourceGrid(obj, transform, data, fov_only=spec.uses_mask)
        for obj, data in zip(inputs, datas)
    ]

    # ------------------------------------------------------------------------------ models + explain
    try:
        black_box = job_models.load_black_box(cfg, trust_code=trust_code)
        provided: dict[str, Any] = {}
        if second_config is not None:
            provided["second_model"] = _second_model(cfg, second_config, spec, trust_code)
        extra = job_models.load_method_models(cfg, spec, trust_code=trust_code, progress=progress, provided=provided)
        kwargs: dict[str, Any] = {"seed": seed}
        if "progress" in inspect.signature(spec.cls).parameters:
            kwargs["progress"] = progress
        explainer = spec.build(black_box, settings, extra, **kwargs)
    except (ValueError, TypeError, KeyError, FileNotFoundError, OSError) as e:
        raise StepError("load models", str(e)) from e
    x = torch.stack([torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32) for d in datas])
    mask = None
    if spec.uses_mask:
        key = "lung_mask" if kind == CT_STACK else "fov_mask"
        m = np.stack([np.asarray(d[key], dtype=np.float32).max(axis=0, keepdims=True) for d in datas])
        mask = torch.as_tensor(m > 0.5, dtype=torch.float32)  # (B, 1, S, S): union over stack slices
    try:
        exp = explainer.explain(x, target, mask=mask)
    except InputCheckError:
        raise
    except (ValueError, TypeError, RuntimeError) as e:
        raise StepError("explain", str(e)) from e
    if (
        kind == CT_STACK
        and "autoencoder" in (*spec.needs, *spec.optional)
        and (exp.latent is not None or (exp.sweep is not None and exp.sweep.origin is not None))
    ):
        _latent_checks(cfg, exp, x, checks, limits)
        enforce(checks, force=force, what="after reconstructing it", source=str(src), trained_for=_TRAINED_FOR[kind])

    # --------------------------------------------------------------------------------------- write
    common = {
        "config_file": str(Path(cfg.source).resolve()) if Path(cfg.source).exists() else str(cfg.source),
        "config": cfg.to_dict(),
        "resolved_weights": {k: dict(v) for k, v in cfg.resolved_weights.items()},  # path, and whether shipped
        "input_kind": kind,
        "versions": package_versions(),
        "seed": seed,
    }
    cases: list[CaseResult] = []
    for b, (obj, folder, grid, chk) in enumerate(zip(inputs, folders, grids, checks)):
        one = exp.select(b)
        note = _note(kind, one, target, limits)
        notes = [note] if note else []
        ref = obj.source
        prov: dict[str, Any] = {
            "PatientID": None if ref is None else ref.patient_study.get("PatientID"),
            "StudyInstanceUID": None if ref is None else ref.study_instance_uid,
            "SeriesInstanceUID": None if ref is None else ref.series_instance_uid,
            "source": str(src.resolve()),
            "source_files": len(ref.files) if ref is not None else 0,
            **common,
            "input_check": chk.to_dict(),
            "notes": notes,
            "reader_warnings": list(getattr(obj, "warnings", ())),
            "reader_notes": list(getattr(obj, "notes", ())),
        }
        if isinstance(grid, CTSourceGrid):
            prov["slice_indices"] = grid.slice_indices
            prov["source_shape_zyx"] = list(obj.shape)
        else:
            prov["source_shape_hw"] = list(obj.shape)
        try:
            with atomic_dir(folder, replace=overwrite) as tmp:
                files = write_case(tmp, one, x[b : b + 1].numpy(), grid, obj, target, spec, dicom, prov)
        except FileExistsError as e:
            raise ValueError(
                f"an explanation appeared in '{folder}' while this one was being written (another "
                "run?); it was kept. Pass --overwrite to replace it."
            ) from e
        except (InputCheckError, StepError):
            raise
        except Exception as e:
            raise StepError("write outputs", f"case {folder.name}: {e}") from e
        cases.append(
            CaseResult(
                case=folder.name,
                case_dir=folder,
                source=str(src),
                patient_id=prov["PatientID"],
                study_instance_uid=prov["StudyInstanceUID"],
                series_instance_uid=prov["SeriesInstanceUID"],
                method=spec.name,
                target_class=target,
                probabilities=tuple(float(p) for p in np.asarray(one.probabilities[0])),
                target_probability=_target_probability(one, target),
                files={k: folder / v for k, v in files.items()},
                input_check=chk.to_dict(),
                notes=tuple(notes),
                reasons=chk.reasons(),
                explanation=one,
                query=x[b].numpy(),
                grid=grid,
            )
        )
        logger.info("%s: %s explained into %s", src, spec.name, folder)
    return ExplainResult(out_dir, spec.name, kind, str(cfg.source), tuple(cases), time.perf_counter() - t_start)


def write_case(
    tmp: Path,
    exp: Any,
    query: np.ndarray,
    grid: Any,
    obj: Volume | Photo,
    target: int,
    spec: Any,
    dicom: bool,
    prov: dict[str, Any],
) -> dict[str, str]:
    """Write one case into its temporary folder ``tmp``; returns role -> path relative to the folder."""
    from pipelines.export import write_ct_objects, write_photo_objects

    files: dict[str, str] = {}
    k = target
    p_query = _p(exp.probabilities[0], k)
    sweep = exp.sweep
    towards = None if sweep is None or not sweep.positive_steps else sweep.positive_steps[-1]
    p_after = None if towards is None else _p(sweep.probabilities[0, sweep.index(towards)], k)
    label = f"class {k}"
    ends = [] if sweep is None else [s for s in (sweep.negative_steps[:1] + sweep.positive_steps[-1:])]
    cf_hu: dict[float, np.ndarray] = {}
    if isinstance(grid, CTSourceGrid) and sweep is not None:
        for s in ends:  # the counterfactual CT in HU on the source grid, for NIfTI viewers and the DICOM series
            cf_hu[s] = grid.counterfactual_hu(sweep.at(s)[0])
            name = f"counterfactual_{_step_label(s)}.nii.gz"
            grid.write(cf_hu[s], tmp / name)
            files[f"counterfactual_{_step_label(s)}"] = name
    if dicom and _is_dicom(obj):
        heat = grid.to_source(_heat_for_dicom(exp))
        if isinstance(obj, Volume):
            res = write_ct_objects(
                obj,
                heat,
                tmp / "dicom",
                method=spec.name,
                target=label,
                score_before=p_query,
                score_after=p_after,
                step=towards,
                counterfactual=cf_hu.get(towards) if towards is not None else None,
                slices=sorted(set(grid.slice_indices)),  # the explained slices, also where a map is all zero
                slicer_dir=tmp / "slicer",
            )
            for role, value in (("sc_overlay", res.overlay_files), ("sc_counterfactual", res.counterfactual_files)):
                if value:
                    files[role] = str(Path(value[0]).parent.relative_to(tmp))
            for role, path in (
                ("parametric_map", res.parametric_map),
                ("segmentation", res.segmentation),
                ("slicer", res.slicer_bundle),
            ):
                if path is not None:
                    files[role] = str(Path(path).relative_to(tmp))
            files.update(_derived_series(tmp, obj, grid, sweep, cf_hu, exp, k, spec.name))
        else:
            scs = write_photo_objects(
                obj, heat, tmp / "dicom" / "SC_overlay", method=spec.name, target=label, score_before=p_query, score_after=p_after
            )
            if scs:
                files["sc_overlay"] = str(scs[0].parent.relative_to(tmp))
        prov["dicom"] = {r: v for r, v in files.items() if v.startswith(("dicom", "slicer"))}
    channel_names = None
    if isinstance(grid, CTSourceGrid):
        channel_names = [f"z={k_}" for k_ in grid.slice_indices]
    saved = exp.save(tmp, query=query, grid=grid, provenance=prov, channel_names=channel_names)
    return {**saved, **files}


def _derived_series(
    tmp: Path, ct: Volume, grid: CTSourceGrid, sweep: Any, cf_hu: Mapping[float, np.ndarray], exp: Any, k: int, method: str
) -> dict[str, str]:
    """The counterfactual at each end of the sweep as a derived CT series (HU) in the source study."""
    from dicom_io.export import read_source_headers, write_derived_ct_series

    if not cf_hu:
        return {}
    src = ct.source
    assert src is not None
    headers = read_source_headers(src.files)
    # a slice picked twice (short lung extent) is written once: the stack's last channel wins, as in the inverse
    idx = sorted(dict.fromkeys(grid.slice_indices))
    multi = len(headers) == 1 and ct.shape[0] > 1
    out: dict[str, str] = {}
    for n, (step, vol) in enumerate(sorted(cf_hu.items())):
        p_step = _p(sweep.probabilities[0, sweep.index(step)], k)
        p_q = _p(exp.probabilities[0], k)
        folder = tmp / "dicom" / f"CT_counterfactual_{_step_label(step)}"
        write_derived_ct_series(
            grid.on_grid(vol),
            idx,
            headers if multi else [headers[i] for i in idx],
            folder,
            series_description=f"medxai counterfactual {method} step {step:+g} (synthetic)",
            derivation_description=(
                f"medxai {method} counterfactual at step {step:+g} (synthetic image, research use only): the "
                f"explained slices re-synthesised towards {'more' if step > 0 else 'less'} class {k}; "
                f"P(class {k}) {p_q:.3f} -> {p_step:.3f}; HU = window level +- width/2 of the [0, 1] stack."
            ),
            series_number_offset=1200 + n,
            source_frames=[src.frames[i] for i in idx] if src.frames else None,
        )
        out[f"ct_counterfactual_{_step_label(step)}"] = str(folder.relative_to(tmp))
    return out
