"""The demo job: the README's first command, on bundled data and the shipped phantom models.

1. A phantom chest CT study is written as a DICOM series (with its planted fibrosis mask), then read
   back like a user's data.
2. The explain job (:func:`pipelines.explain.run_explain`, the same as ``medxai explain``) runs
   DiffExplainer with the small pretrained phantom models shipped in ``medxai/pretrained`` (teacher,
   diffusion autoencoder, agent): counterfactual slices, the teacher's probabilities along the step
   sweep, a difference heatmap on the CT grid, and, in the same run, Secondary Capture overlays in the
   source study, a Parametric Map, a Segmentation, the counterfactuals as derived CT series in HU and a
   3D Slicer bundle.
3. The same job runs DVCE on a phantom fundus photograph with referable DR (shipped DDPM and
   classifiers): a healthy-looking counterfactual and a Secondary Capture overlay in the photo's study.
4. ``report.html`` shows the counterfactuals, the overlays and two checks against the planted truth,
   computed from the in-memory explanations: did the teacher's probability move, and does the change
   land on the biomarker (pixel AUROC).

It also reads a real CT series shipped with pydicom and writes it as NIfTI/NRRD (the ingest path).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medxai.progress import ProgressFn as Progress

__all__ = ["run_demo", "demo_ct_source", "DEMO_CT_SEED", "DEMO_FUNDUS_SEED"]

logger = logging.getLogger(__name__)


REPO = Path(__file__).resolve().parents[1]
# Cohort seeds of the demo cases; the shipped models were trained on other seeds (configs/*.yaml).
DEMO_CT_SEED = 9003  # its one case has planted fibrosis (label 1, extent 0.33)
DEMO_FUNDUS_SEED = 9006  # its one photograph has referable DR (grade 3)


def demo_ct_source() -> Path:
    """A real CT series installed with pydicom (5 slices of a cardiac CT, 'SmartScore')."""
    from pydicom.data import get_testdata_file

    small = get_testdata_file("CT_small.dcm")
    if small is None:
        raise FileNotFoundError("pydicom's test files are not installed; reinstall pydicom.")
    return Path(os.path.dirname(small)) / "dicomdirtests" / "98892001" / "CT5N"


def _first_case(root: Path, label: int) -> tuple[Path, dict[str, str]]:
    """The first case folder of a written cohort whose label is ``label``."""
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if int(row["label"]) == label:
            return root / row["case_id"], row
    raise ValueError(f"no case with label {label} in {root}; change the demo seed.")


def run_demo(out: str | os.PathLike[str], progress: Progress | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns what was written, the checks and the input summary."""
    from dicom_io import write_nifti, write_nrrd
    from pipelines.ingest import ingest, summarize
    from pipelines.report import write_report

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.html").unlink(missing_ok=True)  # never leave an old report beside new results
    src = demo_ct_source()
    volume, _ = ingest(src, None)
    written = {
        "ct_nifti": str(write_nifti(volume, out_dir / "real_ct" / "ct.nii.gz")),
        "ct_nrrd": str(write_nrrd(volume, out_dir / "real_ct" / "ct.nrrd")),
    }
    results: dict[str, Any] = {"demo": True}
    figures: list[dict[str, str]] = []
    ct_written, ct_results, ct_figs = _ct_part(out_dir, progress)
    written.update(ct_written)
    results["ct"] = ct_results
    figures += ct_figs
    fu_written, fu_results, fu_figs = _fundus_part(out_dir)
    written.update(fu_written)
    results["fundus"] = fu_results
    figures += fu_figs
    from pipelines.provenance import json_safe, package_versions

    results["versions"] = package_versions()
    from medxai.training.checkpoint import write_json_atomic

    written["results"] = str(write_json_atomic(out_dir / "demo_results.json", json_safe(results)))
    written["report"] = str(write_report(results, out_dir, figures, title="medxai demo: phantom CT and fundus explained"))
    return {"source": str(src), "summary": summarize(volume), "written": written, "results": results}


def _ct_part(out_dir: Path, progress: Progress | None) -> tuple[dict[str, str], dict[str, Any], list[dict[str, str]]]:
    """Phantom CT study -> DiffExplainer (the explain job, DICOM objects in the same run); the checks
    against the planted biomarker, computed from the in-memory explanation."""
    from dicom_io import read_nifti
    from medxai.metrics import pixel_auroc
    from pipelines.explain import run_explain
    from pipelines.phantom import write_ct_cohort
    from pipelines.pretrained import pretrained_overrides

    cohort = write_ct_cohort(out_dir / "phantom_ct", 1, seed=DEMO_CT_SEED)
    case_dir, row = _first_case(cohort, 1)
    dicom = case_dir / "dicom"
    res = run_explain(
        REPO / "configs" / "ct_prognosis.yaml",
        dicom,
        out_dir / "ct_explanation",
        method="diffexplainer",
        overrides=pretrained_overrides("ct"),
        progress=progress,
        overwrite=True,
    )  # the demo owns its output folder and regenerates everything in it
    (case,) = res.cases
    exp, grid, k = case.explanation, case.grid, case.target_class
    sweep = exp.sweep
    # the change each counterfactual makes, slice by slice, at the heatmap step (|x(z+) - x(z)| + |x(z-) - x(z)|)
    a = float(exp.parameters["heatmap_step"])
    change = np.abs(sweep.difference(a)[0]) + np.abs(sweep.difference(-a)[0])  # (n, S, S)
    heat = grid.to_source(change)
    bio = read_nifti(case_dir / "masks" / "biomarker.nii.gz").array > 0
    lungs = read_nifti(case_dir / "masks" / "lungs.nii.gz").array > 0
    idx = grid.slice_indices
    # AUROC on the explained slices, inside the lungs (where fibrosis can be), on the CT grid
    h, m = heat[idx][lungs[idx]], bio[idx][lungs[idx]]
    auroc = pixel_auroc(h, m) if 0 < m.sum() < m.size else float("nan")
    p = sweep.probabilities[0, :, k]  # P(target) at the signed steps, ascending
    p_recon = float(sweep.origin_probabilities[0, k])
    neg = len(sweep.negative_steps)
    signed = [*sweep.negative_steps, 0.0, *sweep.positive_steps]
    curve = [float(v) for v in p[:neg]] + [p_recon] + [float(v) for v in p[neg:]]
    ct = {
        "models": {
            "case": case.case,
            "planted_extent": float(row.get("extent", "nan")),
            "label": int(row["label"]),
            "teacher_p_query": case.target_probability["query"],
            "teacher_p_reconstruction": p_recon,
            "teacher_p_less_likely": float(p[0]),
            "teacher_p_more_likely": float(p[-1]),
        },
        "diffexplainer": {
            "loc_auroc": auroc,
            "seconds_per_case": res.seconds,
            "sweep": {"signed_steps": signed, "teacher_target_prob": [curve]},
            "score_moved": float(p[-1] - p[0]),
        },
    }
    f = case.files
    written = {
        "phantom_dicom": str(dicom),
        "ct_explanation": str(case.case_dir),
        "secondary_captures": str(f.get("sc_overlay", "")),
        "parametric_map": str(f.get("parametric_map", "")),
        "segmentation": str(f.get("segmentation", "")),
        "slicer_bundle": str(f.get("slicer", "")),
        "counterfactual_series": str(f.get("ct_counterfactual_plus", "")),
    }
    figures = [
        {
            "section": "ct",
            "title": "DiffExplainer on the demo CT study",
            "path": str(f["strip"].relative_to(out_dir)),
            "caption": "Rows: the four slices. Columns (P = the teacher's probability of death within a year): "
            "query | reconstruction | each counterfactual step, less to more likely | change at the "
            "outermost steps (red brighter, blue darker) | heatmap.",
        }
    ]
    figures += _sc_figure(
        f, out_dir, "ct", "Secondary Capture overlay (as a PACS shows it)", "The SC slice with the most heatmap mass."
    )
    if "ct_counterfactual_plus" in f:
        png = _ct_preview(sorted(f["ct_counterfactual_plus"].glob("*.dcm")), out_dir / "figures" / "ct_counterfactual.png")
        figures.append(
            {
                "section": "ct",
                "title": "The 'more likely' counterfactual as a derived CT series",
                "path": str(png.relative_to(out_dir)),
                "caption": "One slice of the derived CT series in HU (lung window), in the source study.",
            }
        )
    return written, ct, figures


def _ct_preview(files: list[Path], dest: Path) -> Path:
    """A PNG of the middle slice of a written CT series in the lung window (what a PACS viewer shows)."""
    import pydicom

    from dicom_io import write_photo
    from dicom_io.export import window_to_uint8

    ds = pydicom.dcmread(files[len(files) // 2])
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return write_photo(np.repeat(window_to_uint8(hu, "lung")[..., None], 3, axis=-1), dest)


def _sc_figure(files: dict[str, Path], out_dir: Path, section: str, title: str, caption: str) -> list[dict[str, str]]:
    """The report figure of a case's SC overlay (``files["sc_overlay"]``), or none when it has none."""
    if "sc_overlay" not in files:
        return []
    png = _sc_preview(sorted(files["sc_overlay"].glob("*.dcm")), out_dir / "figures" / f"{section}_sc_overlay.png")
    if png is None:
        return []
    return [{"section": section, "title": title, "path": str(png.relative_to(out_dir)), "caption": caption}]


def _sc_preview(files: list[Path], dest: Path) -> Path | None:
    """A PNG of the SC overlay slice with the most colour (heatmap) in it: what a PACS viewer shows."""
    import pydicom

    from dicom_io import write_photo

    best, best_colour = None, -1.0
    for f in files:
        rgb = pydicom.dcmread(f).pixel_array
        if rgb.ndim != 3:
            continue
        colour = float((rgb.max(-1).astype(np.int16) - rgb.min(-1)).sum())  # grey pixels have none
        if colour > best_colour:
            best, best_colour = rgb, colour
    if best is None:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    return write_photo(np.ascontiguousarray(best, dtype=np.uint8), dest)


def _fundus_part(out_dir: Path) -> tuple[dict[str, str], dict[str, Any], list[dict[str, str]]]:
    """Phantom fundus photograph with referable DR -> DVCE towards healthy; lesion AUROC of the change."""
    from dicom_io import read_image
    from medxai.metrics import pixel_auroc
    from pipelines.explain import run_explain
    from pipelines.phantom import write_fundus_cohort
    from pipelines.pretrained import pretrained_overrides

    cohort = write_fundus_cohort(out_dir / "phantom_fundus", 1, seed=DEMO_FUNDUS_SEED)
    case_dir, row = _first_case(cohort, 1)
    res = run_explain(
        REPO / "configs" / "dr_fundus.yaml",
        case_dir / "image.dcm",
        out_dir / "fundus_explanation",
        method="dvce",
        overrides=pretrained_overrides("fundus"),
        overwrite=True,
    )
    (case,) = res.cases
    exp = case.explanation
    heat = case.grid.to_source(exp.heatmaps_numpy()[0])  # (H, W) on the photo grid, 0 outside the field of view
    lesions = np.asarray(read_image(case_dir / "masks" / "lesions.png").array)
    lesions = (lesions.max(-1) if lesions.ndim == 3 else lesions) > 127  # PNG read back as grey or RGB
    rgb = np.asarray(read_image(case_dir / "image.png").array)
    fov = rgb.astype(np.float32).sum(-1) > 30  # the photograph, not the black surround
    m = lesions[fov]
    auroc = pixel_auroc(heat[fov], m) if 0 < m.sum() < m.size else float("nan")
    healthy = 0
    q = float(exp.probabilities[0, healthy])
    c = float(exp.sweep.probabilities[0, -1, healthy])  # the counterfactual (DVCE's one step)
    fundus = {
        "models": {
            "case": row["case_id"],
            "label": int(row["label"]),
            "classifier_p_healthy_query": q,
            "classifier_p_healthy_counterfactual": c,
        },
        "dvce": {"target_rate": float(np.mean(exp.diagnostics["target_reached"])), "loc_auroc": auroc},
    }
    written = {"phantom_fundus": str(case_dir / "image.dcm"), "fundus_explanation": str(case.case_dir)}
    if "sc_overlay" in case.files:
        written["fundus_secondary_capture"] = str(next(case.files["sc_overlay"].glob("*.dcm")))
    figures = [
        {
            "section": "fundus",
            "title": "DVCE: the phantom photograph and its healthy-looking counterfactual",
            "path": str(case.files["strip"].relative_to(out_dir)),
            "caption": "query | counterfactual (P = the classifier's probability of 'healthy') | change "
            "(red brighter, blue darker) | heatmap.",
        }
    ]
    figures += _sc_figure(case.files, out_dir, "fundus", "Secondary Capture overlay on the photograph", "As a PACS shows it.")
    return written, fundus, figures
