"""The CT explain job: DICOM -> four-slice stacks -> DiffExplainer -> files on the CT grid.

For each series in the input (a case) it writes, into ``<out>/<case>/`` (written in a temporary folder
and renamed when complete):

* ``heatmap.nii.gz``: ``|x(z+) - x(z)| + |x(z-) - x(z)|`` per stack slice, put back on the ORIGINAL
  CT grid through the transforms' inverse (0 on the other slices), with the source Volume geometry;
* ``diff_plus.nii.gz`` / ``diff_minus.nii.gz``: the signed difference maps, likewise;
* ``slices.npz``: query, reconstruction and every counterfactual stack ``(4, S, S)`` in [0, 1];
* ``strip.png``: one row per slice: query | reconstruction | z- | z+ | z+ - z | z- - z (red = brighter);
* ``explanation.json``: teacher scores (query, reconstruction, every step of the sweep), agent scores,
  parameters, seed, slice indices, timings, config and package versions; ``input_check`` (each
  check's value, expected range and pass, see :mod:`pipelines.input_check`) and ``notes`` (e.g. the
  query is already in the target class).

Before explaining, each series is checked against what the models were trained for (modality, slices,
field of view, scan length, lung volume; after the explainer's reconstruction, the autoencoder's
reconstruction error and the distance of the query's semantic code from the autoencoder's reference
codes); a failed check refuses the whole job unless ``force=True`` (``--force``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from atomicfs import atomic_dir
from dicom_io import Volume, find_series, read_series, safe_filename, write_nifti
from pipelines.errors import StepError
from pipelines.input_check import (
    CTInputLimits,
    InputCheck,
    ct_volume_checks,
    enforce,
    latent_check,
    lung_volume_check,
    reconstruction_check,
    target_note,
)
from pipelines.paths import check_output_outside_input
from pipelines.provenance import package_versions

__all__ = ["explain_ct", "strip_image"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def _gray(a: np.ndarray) -> np.ndarray:
    v = np.clip(a, 0.0, 1.0)
    return np.repeat((v * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _signed(d: np.ndarray, scale: float) -> np.ndarray:
    """Red where the counterfactual is brighter, blue where darker, black = no change."""
    v = np.clip(d / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(d)
    rgb = np.zeros((*d.shape, 3), dtype=np.float32)
    rgb[..., 0] = np.clip(v, 0, 1)
    rgb[..., 2] = np.clip(-v, 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def strip_image(query: np.ndarray, recon: np.ndarray, minus: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(n*S, 6*S, 3)``: per slice query | recon | z- | z+ | z+ - z | z- - z."""
    dp, dm = plus - recon, minus - recon
    scale = float(max(np.abs(dp).max(), np.abs(dm).max(), 1e-6))
    rows = []
    for j in range(query.shape[0]):
        rows.append(np.concatenate([_gray(query[j]), _gray(recon[j]), _gray(minus[j]), _gray(plus[j]), _signed(dp[j], scale), _signed(dm[j], scale)], axis=1))
    return np.concatenate(rows, axis=0)


def _write_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    from atomicfs import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def _on_grid(volume: Volume, array: np.ndarray) -> Volume:
    return Volume(np.ascontiguousarray(array, dtype=np.float32), volume.spacing, volume.origin, volume.direction)


def _references(cfg: Any, encode_steps: int, decode_steps: int) -> tuple[Any, str, Any, str]:
    """From the autoencoder's side-car (read once): the reconstruction reference at these steps and
    the reference codes (each None when not recorded), each with where it looked."""
    from medxai.metrics.latent import latent_reference_from_sidecar
    from medxai.metrics.reconstruction import find_reference, references_from_sidecar
    from medxai.training.checkpoint import read_json

    sidecar = cfg.path("autoencoder.path").with_suffix(".json")
    meta = read_json(sidecar) if sidecar.is_file() else {}
    refs = references_from_sidecar(meta)
    recorded = ", ".join(f"{r.encode_steps}/{r.decode_steps}" for r in refs) or "none"
    return (find_reference(refs, encode_steps, decode_steps),
            f" ({encode_steps}/{decode_steps}) in {str(sidecar)!r} (recorded: {recorded})",
            latent_reference_from_sidecar(meta), f" in {str(sidecar)!r}")


def explain_ct(
    config: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    overrides: dict[str, Any] | None = None,
    trust_code: bool = False,
    force: bool = False,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """Run the explain job; returns a summary (cases, files written, scores).

    Parameters
    ----------
    config : path
        ``configs/ct_prognosis.yaml``-style config.
    source : path
        DICOM folder (every CT series in it is one case) or file.
    out : path
        Output folder (one sub-folder per case).
    progress : callable, optional
        ``progress(stage, done, total)``.
    overrides : dict, optional
        Dotted config fields to replace (e.g. ``{"explainer.decode_steps": 10}``).
    trust_code : bool
        Allow a teacher class / MONAI bundle code outside the allow-list of :mod:`medxai.trust`
        (``--trust-code``; ``trust_code: true`` in the config counts too).
    force : bool
        Explain even when an input check fails (``--force``); the failed checks are kept in
        ``explanation.json`` ``input_check``. Without it such an input raises
        :class:`~pipelines.input_check.InputCheckError` (a ``ValueError``) naming each failed check.
        The checks and their limits: :mod:`pipelines.input_check`.
    skip_unreadable : bool
        Leave out DICOM files that cannot be read (``--skip-unreadable``); the warning that lists them
        is kept in each case's ``explanation.json`` ``reader_warnings``. Default: they are an error.
    """
    import torch
    from scipy.special import softmax

    from medxai.metrics.reconstruction import reconstruction_mse
    from medxai.training.ct import build_explainer, load_ct_config, stack_config
    from medxai.transforms import CTStackTransform

    src, out_dir = Path(source), Path(out)
    if not src.exists():
        raise ValueError(f"input {str(src)!r} does not exist; pass a DICOM folder.")
    check_output_outside_input(out_dir, src, option="-o/--out")
    try:
        cfg = load_ct_config(config)
        if overrides:
            cfg = cfg.with_overrides(overrides)
    except ValueError as e:
        raise StepError("config", str(e)) from e

    t_start = time.perf_counter()
    try:
        series = (
            [s.series_instance_uid for s in find_series(src, skip_unreadable=skip_unreadable)]
            if src.is_dir() else [None]
        )
        volumes = [read_series(src, uid, skip_unreadable=skip_unreadable) for uid in series]
    except Exception as e:
        raise StepError("ingest", str(e)) from e
    try:
        limits = CTInputLimits.from_config(cfg)
        transform = CTStackTransform(stack_config(cfg))
    except Exception as e:
        raise StepError("transforms", str(e)) from e
    case_names = [safe_filename((v.source.series_instance_uid if v.source is not None else None) or src.stem, default=f"case{b}")
                  for b, v in enumerate(volumes)]
    checks = [InputCheck(name, ct_volume_checks(v, limits)) for name, v in zip(case_names, volumes)]
    stacks: list[Any] = []
    for vol, chk in zip(volumes, checks):
        try:
            stacks.append(transform(vol.array, vol.spacing, vol.origin, vol.direction))
            chk.checks.append(lung_volume_check(stacks[-1], limits))
        except Exception as e:
            if chk.passed:  # a chest CT whose stack fails: the transform's own message says why
                raise StepError("transforms", f"case {chk.case}: {e}") from e
            stacks.append(None)
            chk.checks.append(lung_volume_check(None, limits, error=str(e)))
    # cheap checks first: refuse before loading the models and explaining
    enforce(checks, force=force, what="before explaining", source=str(src), trained_for="chest CT series")
    if any(d is None for d in stacks):
        bad = [c for c, d in zip(checks, stacks) if d is None]
        raise StepError("transforms", f"case {bad[0].case}: {bad[0].reasons()}; --force cannot explain a series without a lung stack.")
    try:
        explainer = build_explainer(cfg, progress=progress, trust_code=trust_code)
    except Exception as e:
        raise StepError("load models", str(e)) from e
    target = int(cfg.get("explainer.target_class"))
    x = torch.stack([torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32) for d in stacks])
    try:
        exp = explainer.explain(x, target)
    except Exception as e:
        raise StepError("explain", str(e)) from e
    # the reconstruction the explainer computed anyway gives the autoencoder's own error on the query
    recon_mse = reconstruction_mse(x, exp.counterfactuals["reconstruction"])  # type: ignore[index]
    reference, where, latent_ref, latent_where = _references(cfg, explainer.encode_steps, explainer.decode_steps)
    # the semantic code the explainer computed anyway, against the reference codes (no second encode)
    z = exp.extra["latent"]
    latent_d, latent_note = None, ""
    if latent_ref is not None and latent_ref.dim == z.shape[1]:
        latent_d = latent_ref.distance(z)
    elif latent_ref is not None:
        latent_note = (f"the reference{latent_where} was recorded at latent size {latent_ref.dim}, the query's is "
                       f"{z.shape[1]}; re-record it for this autoencoder and stack")
    for b, chk in enumerate(checks):
        chk.checks.append(reconstruction_check(float(recon_mse[b]), reference, limits, where=where))
        chk.checks.append(latent_check(None if latent_d is None else float(latent_d[b]), latent_ref, limits,
                                       where=latent_where, note=latent_note))
    enforce(checks, force=force, what="after reconstructing it", source=str(src), trained_for="chest CT series")

    cf = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in (exp.counterfactuals or {}).items()}
    scores = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in exp.scores.items()}
    steps = list(explainer.step_sizes)
    hi = f"{explainer.heatmap_step:g}"
    written: dict[str, list[str]] = {}
    cases = []
    from medxai.training.checkpoint import write_json_atomic

    for b, (vol, data) in enumerate(zip(volumes, stacks)):
        uid = vol.source.series_instance_uid if vol.source is not None else None
        case = safe_filename(uid or src.stem, default=f"case{b}")
        heat_slices = np.abs(cf["diff_plus"][b]) + np.abs(cf["diff_minus"][b])
        try:
            with atomic_dir(out_dir / case) as tmp:
                names = []
                for name, arr in (("heatmap", heat_slices), ("diff_plus", cf["diff_plus"][b]), ("diff_minus", cf["diff_minus"][b])):
                    grid, idx = transform.invert(arr, data)
                    write_nifti(_on_grid(vol, grid), tmp / f"{name}.nii.gz")
                    names.append(f"{name}.nii.gz")
                slices = {"query": x[b].numpy(), "reconstruction": cf["reconstruction"][b]}
                for a in steps:
                    slices[f"plus_{a:g}"] = cf[f"plus_{a:g}"][b]
                    slices[f"minus_{a:g}"] = cf[f"minus_{a:g}"][b]
                np.savez_compressed(tmp / "slices.npz", **{k: v.astype(np.float32) for k, v in slices.items()})
                names.append("slices.npz")
                _write_png(strip_image(slices["query"], slices["reconstruction"], slices[f"minus_{hi}"], slices[f"plus_{hi}"]), tmp / "strip.png")
                names.append("strip.png")
                case_scores = {k: (v[b] if isinstance(v, list) and len(v) == len(volumes) else v) for k, v in scores.items()}
                note = target_note(softmax(np.asarray(case_scores["query"], dtype=np.float64)), target, limits.already_target_p,
                                   counterfactual="the 'more likely' counterfactual (z+)")
                meta = {
                    "case": case,
                    "series_instance_uid": uid,
                    "method": exp.method,
                    "target": exp.target,
                    "target_class": target,
                    "step_sizes": steps,
                    "heatmap_step": explainer.heatmap_step,
                    "slice_indices": np.asarray(idx).tolist(),
                    "ct_shape_zyx": list(vol.shape),
                    "input_check": checks[b].to_dict(),
                    "notes": [note] if note else [],
                    "reader_warnings": list(vol.warnings),  # gaps accepted, files skipped
                    "reader_notes": list(vol.notes),  # padding set to air
                    "teacher_scores": {
                        "query": case_scores["query"],
                        "reconstruction": case_scores["reconstruction"],
                        "sweep_plus": case_scores["sweep_plus"],
                        "sweep_minus": case_scores["sweep_minus"],
                    },
                    "agent_scores": {
                        "query": case_scores["agent_query"],
                        "sweep_plus": case_scores["agent_sweep_plus"],
                        "sweep_minus": case_scores["agent_sweep_minus"],
                    },
                    "parameters": exp.parameters,
                    "seed": int(cfg.get("seed")),
                    "timings": exp.extra.get("timings", {}),
                    "config_file": str(cfg.source),
                    "config": cfg.to_dict(),
                    "versions": package_versions(),
                    "files": names + ["explanation.json"],
                }
                write_json_atomic(tmp / "explanation.json", meta)
        except Exception as e:
            raise StepError("write outputs", f"case {case}: {e}") from e
        written[case] = [str(out_dir / case / n) for n in meta["files"]]
        q = np.asarray(case_scores["query"])
        cases.append({"case": case, "query": q.tolist(), "prediction": int(q.argmax()),
                      "input_check": checks[b].to_dict(), "forced_reasons": checks[b].reasons(), "notes": meta["notes"]})
    return {"cases": cases, "written": written, "seconds": time.perf_counter() - t_start, "n_cases": len(volumes)}
