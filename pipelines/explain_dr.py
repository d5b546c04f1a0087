"""The DR explain job: fundus photo -> FOV crop -> DVCE towards "healthy" -> PNG + JSON (+ DICOM SC).

``run_dr_explain(config_path, input_path, out_dir)`` reads the photograph (JPEG/PNG/DICOM via
``dicom_io.read_image``), crops and resizes its field of view (``medxai.transforms.FundusTransform``),
loads the black-box classifier, the robust classifier and the diffusion model named in the config
(``configs/dr_fundus.yaml``), runs :class:`medxai.explainers.dvce.DVCE`, and writes into ``out_dir``:

* ``query.png``, ``counterfactual.png`` -- the crop and its counterfactual (RGB, crop grid);
* ``difference_signed.png`` (grey = no change; brighter = brighter in the counterfactual, per
  channel, scaled by the largest change), ``difference_abs.png``, ``heatmap.png`` (crop grid);
* ``heatmap_photo.png`` / ``heatmap_photo.npy`` -- the heatmap mapped back onto the photo grid
  (the transforms' inverse), 0 outside the field of view;
* ``arrays.npz`` -- float32 query, counterfactual, signed difference, heatmap, FOV mask;
* ``dvce.json`` -- scores (plain and robust, query and counterfactual), target, parameters, seed,
  the resolved config and package versions; ``input_check`` (photo size and field-of-view checks,
  :mod:`pipelines.input_check`; a failed one refuses the photo unless ``force``) and ``notes``;
* optionally ``dicom/`` -- a Secondary Capture overlay on the photo (``pipelines.export``).

Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medxai.config import Config, ConfigError, load_config, validate

from atomicfs import atomic_path
from dicom_io.photo import write_photo

from .errors import StepError
from .input_check import FundusInputLimits, InputCheck, InputCheckError, enforce, fundus_checks, target_note
from .provenance import package_versions

__all__ = ["DR_SCHEMA", "DRExplainResult", "DRModels", "load_dr_models", "run_dr_explain", "explain_fundus_array"]

logger = logging.getLogger(__name__)

#: required fields of configs/dr_fundus.yaml
DR_SCHEMA: dict[str, Any] = {
    "seed": int,
    "image_size": int,
    "classifier": dict,
    "classifier.kind": str,
    "classifier.path": str,
    "classifier.num_classes": int,
    "diffusion": dict,
    "diffusion.path": str,
    "dvce": dict,
    "dvce.target_class": int,
}


@dataclasses.dataclass
class DRModels:
    """The three networks of a DR explanation (all in eval mode)."""

    classifier: Any
    robust: Any | None
    diffusion: Any


@dataclasses.dataclass(frozen=True)
class DRExplainResult:
    """What :func:`run_dr_explain` wrote and found."""

    out_dir: Path
    files: dict[str, Path]
    scores: dict[str, Any]
    target_class: int
    target_reached: bool
    #: ``{"passed", "forced", "failed", "checks", "reasons", "notes"}`` (see :mod:`pipelines.input_check`)
    input_check: dict[str, Any] = dataclasses.field(default_factory=dict)


def _atomic_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _rgb8(chw: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.moveaxis(chw, 0, -1) * 255.0), 0, 255).astype(np.uint8)


def _gray8(hw: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    lo = float(np.min(hw)) if lo is None else lo
    hi = float(np.max(hw)) if hi is None else hi
    scaled = np.zeros_like(hw, dtype=np.float64) if hi <= lo else (hw - lo) / (hi - lo)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def _teacher(section: Mapping[str, Any], size: int, what: str, trust_code: bool = False, source: str | None = None) -> Any:
    from medxai.networks.teacher import load_teacher, teacher_spec_from_dict

    spec = teacher_spec_from_dict(dict(section), in_channels=3, image_size=size)
    if spec.in_channels != 3:
        raise ValueError(f"{what}.in_channels must be 3 (RGB fundus crops), got {spec.in_channels}.")
    return load_teacher(spec, trust_code=trust_code, source=source, key=what)


def load_dr_models(config: Config, *, trust_code: bool = False) -> DRModels:
    """Load the classifier, the robust classifier (``robust_classifier`` section, optional) and the DDPM.

    ``trust_code`` (or ``trust_code: true`` in the config) allows classifier classes and MONAI bundle
    code outside the allow-list of :mod:`medxai.trust`.
    """
    from medxai.diffusion.ddpm import load_ddpm
    from medxai.trust import trusts_code

    size = int(config.get("image_size"))
    trust = trusts_code(config, trust_code)
    classifier = _teacher(config.section("classifier"), size, "classifier", trust, config.source)
    robust_section = config.get("robust_classifier", None)
    robust = _teacher(robust_section, size, "robust_classifier", trust, config.source) if robust_section else None
    ddpm = load_ddpm(config.path("diffusion.path"))
    if ddpm.config.image_size != size or ddpm.config.in_channels != 3:
        raise ValueError(
            f"{config.source}: the diffusion model takes ({ddpm.config.in_channels}, {ddpm.config.image_size}, "
            f"{ddpm.config.image_size}) images but image_size is {size}; set image_size to {ddpm.config.image_size} "
            "or use a diffusion model trained at that size."
        )
    return DRModels(classifier, robust, ddpm)


def _dvce_config(config: Config) -> Any:
    from medxai.explainers.dvce import DVCEConfig

    section = {k: v for k, v in config.section("dvce").items() if k != "target_class"}
    try:
        return DVCEConfig.from_dict(section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{config.source}: section 'dvce': {err}") from err


def explain_fundus_array(
    rgb: np.ndarray,
    config: Config,
    models: DRModels,
    *,
    target_class: int | None = None,
    seed: int | None = None,
    limits: FundusInputLimits | None = None,
    force: bool = False,
    source: str = "photo",
) -> dict[str, Any]:
    """Run the crop + DVCE part of the job on an RGB photo ``(H, W, 3)`` uint8; returns arrays and scores.

    With ``limits``, the photo size and the detected field of view are checked before DVCE runs
    (:func:`pipelines.input_check.fundus_checks`): a failed check raises
    :class:`~pipelines.input_check.InputCheckError` naming ``source`` unless ``force``; the result's
    ``input_check`` (an :class:`~pipelines.input_check.InputCheck`) holds every check, and ``notes``
    says when the classifier already gives the target class.
    """
    import torch

    from medxai.explainers.dvce import DVCE
    from medxai.transforms import FundusConfig, FundusTransform

    size = int(config.get("image_size"))
    fov_cfg = config.section("fov", {})
    try:
        tf = FundusTransform(FundusConfig(size=size, **fov_cfg))
    except TypeError as err:
        raise ConfigError(f"{config.source}: section 'fov' has unknown fields ({err}); valid: margin, threshold_abs, threshold_rel.") from err
    data = tf(rgb)
    check = InputCheck(Path(source).name or source)
    if limits is not None:  # the transform's own FOV detection, before paying for DVCE
        check.checks.extend(fundus_checks(rgb, data, limits, threshold_abs=tf.config.threshold_abs,
                                          threshold_rel=tf.config.threshold_rel))
        enforce([check], force=force, what="before explaining", source=source, trained_for="colour fundus photograph")
    x = torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)[None]
    fov = (torch.as_tensor(np.asarray(data["fov_mask"])).float()[None] > 0.5).float()
    target = int(config.get("dvce.target_class")) if target_class is None else int(target_class)
    seed = int(config.get("seed")) if seed is None else int(seed)
    dvce = DVCE(models.classifier, models.diffusion, models.robust, config=_dvce_config(config), seed=seed)
    exp = dvce.explain(x, target, fov_mask=fov)
    heat = exp.heatmaps_numpy()[0, 0]
    heat_photo = tf.invert(heat, data)
    fov_photo = tf.invert(fov[0, 0].numpy(), data, nearest=True) > 0.5
    heat_photo = np.where(fov_photo, np.clip(heat_photo, 0.0, None), 0.0).astype(np.float32)
    cf = exp.counterfactuals["dvce"].numpy()[0]  # type: ignore[index]
    diff = exp.counterfactuals["difference"].numpy()[0]  # type: ignore[index]

    def probs(key: str) -> list[float] | None:
        v = exp.scores.get(key)
        return None if v is None else torch.as_tensor(v).float().softmax(1)[0].tolist()

    scores = {
        "classifier_query": probs("query"),
        "classifier_counterfactual": probs("counterfactual"),
        "robust_query": probs("robust_query"),
        "robust_counterfactual": probs("robust_counterfactual"),
    }
    return {
        "query": x[0].numpy(),
        "counterfactual": cf,
        "difference": diff,
        "heatmap": heat,
        "heatmap_photo": heat_photo,
        "fov": fov[0, 0].numpy(),
        "scores": scores,
        "target_class": target,
        "target_reached": bool(exp.extra.get("target_reached", [False])[0]),
        "explanation": exp,
        "seed": seed,
        "input_check": check,
        "notes": [n for n in [target_note(scores["classifier_query"] or [0.0] * (target + 1), target,
                                          limits.already_target_p if limits is not None else 1.0, "classifier")] if n],
    }


def run_dr_explain(
    config_path: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    target_class: int | None = None,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    dicom: bool = False,
    models: DRModels | None = None,
    trust_code: bool = False,
    force: bool = False,
) -> DRExplainResult:
    """Explain one fundus photograph with DVCE and write the outputs into ``out_dir``.

    Parameters
    ----------
    config_path : path
        ``configs/dr_fundus.yaml``-style config (validated against :data:`DR_SCHEMA`).
    input_path : path
        JPEG/PNG/TIFF photo or a DICOM photograph.
    out_dir : path
        Created if missing.
    target_class : int, optional
        Class to move towards; default ``dvce.target_class`` (0 = non-referable, "healthy").
    seed : int, optional
        Default ``seed`` of the config.
    overrides : mapping, optional
        Dotted config fields to replace, e.g. ``{"dvce.num_steps": 20}``.
    dicom : bool
        Also export the heatmap overlay as a DICOM Secondary Capture under ``out_dir/dicom``.
    models : DRModels, optional
        Already loaded networks (skips loading from the config's paths).
    trust_code : bool
        Allow classifier classes / MONAI bundle code outside the allow-list (``--trust-code``).
    force : bool
        Explain even when the photo fails an input check (``--force``; limits: the config's
        ``input_check`` section, :class:`~pipelines.input_check.FundusInputLimits`); the failed checks
        are kept in ``dvce.json`` ``input_check``. Without it such a photo raises
        :class:`~pipelines.input_check.InputCheckError` (a ``ValueError``).

    Raises
    ------
    StepError
        Naming the failed step (``load config``, ``read photo``, ``load models``, ``explain``,
        ``write outputs``); the cause (e.g. a ``ValueError`` about the input) is chained.
    """
    try:
        config = load_config(config_path, DR_SCHEMA)
        if overrides:
            config = validate(config.with_overrides(overrides), DR_SCHEMA)
        limits = FundusInputLimits.from_config(config)
    except (ValueError, TypeError) as err:
        raise StepError("load config", str(err)) from err
    try:
        from dicom_io import Photo, read_image

        photo = read_image(input_path)
        if not isinstance(photo, Photo):
            raise ValueError(
                f"input {str(input_path)!r} is a {type(photo).__name__}, not a photograph; the DR job takes an RGB "
                "fundus photo (JPEG/PNG or a DICOM photograph)."
            )
        rgb = np.asarray(photo.array)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"input {str(input_path)!r} is not an RGB image (array shape {rgb.shape}); pass a colour fundus photo.")
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            raise ValueError(
                f"input {str(input_path)!r} is not an RGB colour photograph (a greyscale image: all three channels "
                "are equal); the DR classifier and diffusion model need a colour fundus photo."
            )
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        raise StepError("read photo", str(err)) from err
    except Exception as err:  # dicom_io errors
        raise StepError("read photo", f"{type(err).__name__}: {err}") from err
    try:
        if models is None:
            models = load_dr_models(config, trust_code=trust_code)
    except (ValueError, TypeError) as err:
        raise StepError("load models", str(err)) from err
    try:
        res = explain_fundus_array(rgb, config, models, target_class=target_class, seed=seed, limits=limits,
                                   force=force, source=str(input_path))
    except InputCheckError:
        raise  # its message already names the input, each failed check and the way out
    except (ValueError, TypeError) as err:
        raise StepError("explain", str(err)) from err
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        files["query"] = write_photo(_rgb8(res["query"]), out / "query.png")
        files["counterfactual"] = write_photo(_rgb8(res["counterfactual"]), out / "counterfactual.png")
        m = float(np.abs(res["difference"]).max()) or 1.0
        files["difference_signed"] = write_photo(_rgb8(0.5 + 0.5 * res["difference"] / m), out / "difference_signed.png")
        files["difference_abs"] = write_photo(_gray8(np.abs(res["difference"]).sum(0), 0.0), out / "difference_abs.png")
        files["heatmap"] = write_photo(_gray8(res["heatmap"], 0.0), out / "heatmap.png")
        files["heatmap_photo"] = write_photo(_gray8(res["heatmap_photo"], 0.0), out / "heatmap_photo.png")
        buf = io.BytesIO()
        np.save(buf, res["heatmap_photo"].astype(np.float32))
        _atomic_bytes(out / "heatmap_photo.npy", buf.getvalue())
        files["heatmap_photo_npy"] = out / "heatmap_photo.npy"
        buf = io.BytesIO()
        np.savez_compressed(
            buf, query=res["query"].astype(np.float32), counterfactual=res["counterfactual"].astype(np.float32),
            difference=res["difference"].astype(np.float32), heatmap=res["heatmap"].astype(np.float32),
            fov=res["fov"].astype(np.float32),
        )
        _atomic_bytes(out / "arrays.npz", buf.getvalue())
        files["arrays"] = out / "arrays.npz"
        if dicom:
            from .export import export_photo_explanation

            tgt = res["target_class"]
            sq, sc = res["scores"]["classifier_query"], res["scores"]["classifier_counterfactual"]
            dcm = export_photo_explanation(
                photo, res["heatmap_photo"], out / "dicom", method="dvce", target=f"class {tgt}",
                score_before=float(sq[tgt]), score_after=float(sc[tgt]),
                overwrite=True,  # part of this explanation's own output folder, rewritten on every run
            )
            if dcm:
                files["dicom"] = dcm[0]
        exp = res["explanation"]
        summary = {
            "method": "dvce",
            "input": str(input_path),
            "photo_shape": list(rgb.shape),
            "crop_shape": list(res["query"].shape),
            "target_class": res["target_class"],
            "target_reached": res["target_reached"],
            "input_check": res["input_check"].to_dict(),
            "notes": res["notes"],
            "scores": res["scores"],
            "seed": res["seed"],
            "parameters": json.loads(json.dumps(exp.parameters, default=str)),
            "timers": exp.extra.get("timers"),
            "start_timestep": exp.extra.get("start_timestep"),
            "seconds": exp.extra.get("seconds"),
            "config": config.to_dict(),
            "config_source": config.source,
            "versions": package_versions(),
            "files": {k: v.name if v.parent == out else str(v.relative_to(out)) for k, v in files.items()},
        }
        _atomic_bytes(out / "dvce.json", json.dumps(summary, indent=2, default=str).encode("utf-8"))
        files["summary"] = out / "dvce.json"
    except (OSError, ValueError) as err:
        raise StepError("write outputs", str(err)) from err
    logger.info("DVCE: target %d reached=%s; outputs in %s", res["target_class"], res["target_reached"], out)
    check = {**res["input_check"].to_dict(), "reasons": res["input_check"].reasons(), "notes": res["notes"]}
    return DRExplainResult(out, files, res["scores"], res["target_class"], res["target_reached"], check)
