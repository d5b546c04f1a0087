"""The demo job: the README's first command, on bundled data and the shipped phantom models.

1. A phantom chest CT study is written as a DICOM series (with its planted fibrosis mask), then read
   back like a user's data.
2. DiffExplainer explains it with the small pretrained phantom models shipped in
   ``medxai/pretrained`` (teacher, diffusion autoencoder, agent): counterfactual slices, teacher scores
   along the step sweep, a difference heatmap on the CT grid.
3. The heatmap goes back out as Secondary Capture overlays in the source study, a Parametric Map, a
   Segmentation and a 3D Slicer bundle.
4. DVCE turns a phantom fundus photograph with referable DR into a healthy-looking one (shipped
   DDPM and classifiers); its overlay is a Secondary Capture too.
5. ``report.html`` shows the counterfactuals, the overlays and two checks against the planted truth:
   did the teacher's score move, and does the heatmap land on the biomarker (pixel AUROC).

It also reads a real CT series shipped with pydicom and writes it as NIfTI/NRRD (the ingest path).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["run_demo", "demo_ct_source", "DEMO_CT_SEED", "DEMO_FUNDUS_SEED"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

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


def _p1(logits: Any) -> float:
    """Softmax probability of class 1 from a teacher's logits ``(K,)``."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return float(e[1] / e.sum())


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
    """Phantom CT study -> DiffExplainer -> SC/PM/SEG/Slicer; the checks against the planted biomarker."""
    import json

    from dicom_io import read_nifti, read_series
    from medxai.metrics import pixel_auroc
    from pipelines.explain_ct import explain_ct
    from pipelines.export import export_explanation
    from pipelines.phantom import write_ct_cohort
    from pipelines.pretrained import pretrained_overrides

    cohort = write_ct_cohort(out_dir / "phantom_ct", 1, seed=DEMO_CT_SEED)
    case_dir, row = _first_case(cohort, 1)
    dicom = case_dir / "dicom"
    res = explain_ct(REPO / "configs" / "ct_prognosis.yaml", dicom, out_dir / "ct_explanation", progress=progress,
                     overrides=pretrained_overrides("ct"))
    case = res["cases"][0]["case"]
    exp_dir = out_dir / "ct_explanation" / case
    meta = json.loads((exp_dir / "explanation.json").read_text())
    heat = read_nifti(exp_dir / "heatmap.nii.gz").array
    bio = read_nifti(case_dir / "masks" / "biomarker.nii.gz").array > 0
    lungs = read_nifti(case_dir / "masks" / "lungs.nii.gz").array > 0
    idx = meta["slice_indices"]
    # AUROC on the explained slices, inside the lungs (where fibrosis can be), on the CT grid
    h, m = heat[idx][lungs[idx]], bio[idx][lungs[idx]]
    auroc = pixel_auroc(h, m) if 0 < m.sum() < m.size else float("nan")
    ts = meta["teacher_scores"]
    p = _p1
    sweep = {"signed_steps": [-a for a in meta["step_sizes"][::-1]] + [0.0] + list(meta["step_sizes"]),
             "teacher_target_prob": [[p(v) for v in ts["sweep_minus"][::-1]] + [p(ts["reconstruction"])] + [p(v) for v in ts["sweep_plus"]]]}
    ct = {
        "models": {"case": case, "planted_extent": float(row.get("extent", "nan")), "label": int(row["label"]),
                   "teacher_p_query": p(ts["query"]), "teacher_p_reconstruction": p(ts["reconstruction"]),
                   "teacher_p_less_likely": p(ts["sweep_minus"][-1]), "teacher_p_more_likely": p(ts["sweep_plus"][-1])},
        "diffexplainer": {"loc_auroc": auroc, "seconds_per_case": res["seconds"], "sweep": sweep,
                          "score_moved": p(ts["sweep_plus"][-1]) - p(ts["sweep_minus"][-1])},
    }
    vol = read_series(dicom)
    exported = export_explanation(
        vol, heat, out_dir / "dicom_export", method="DiffExplainer", target="one-year mortality (phantom)",
        score_before=p(ts["query"]), score_after=p(ts["sweep_minus"][-1]),
        step=-float(meta["step_sizes"][-1]),  # the counterfactual whose probability is shown
        overwrite=True,  # the demo owns its output folder and regenerates everything in it
    )
    written = {
        "phantom_dicom": str(dicom),
        "ct_explanation": str(exp_dir),
        "secondary_captures": str(exported.overlay_files[0].parent) if exported.overlay_files else "",
        "parametric_map": str(exported.parametric_map or ""),
        "slicer_bundle": str(exported.slicer_bundle or ""),
    }
    figures = [{"section": "ct", "title": "DiffExplainer on the demo CT study",
                "path": str((exp_dir / "strip.png").relative_to(out_dir)),
                "caption": "Rows: the four slices. Columns: query | reconstruction | z- (less likely) | z+ (more likely) | "
                           "z+ - recon | z- - recon (red brighter, blue darker)."}]
    if exported.overlay_files:
        png = _sc_preview(exported.overlay_files, out_dir / "figures" / "ct_sc_overlay.png")
        if png is not None:
            figures.append({"section": "ct", "title": "Secondary Capture overlay (as a PACS shows it)",
                            "path": str(png.relative_to(out_dir)), "caption": "The SC slice with the most heatmap mass."})
    return written, ct, figures


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
    from pipelines.explain_dr import run_dr_explain
    from pipelines.phantom import write_fundus_cohort
    from pipelines.pretrained import pretrained_overrides

    cohort = write_fundus_cohort(out_dir / "phantom_fundus", 1, seed=DEMO_FUNDUS_SEED)
    case_dir, row = _first_case(cohort, 1)
    exp_dir = out_dir / "fundus_explanation"
    res = run_dr_explain(REPO / "configs" / "dr_fundus.yaml", case_dir / "image.dcm", exp_dir, dicom=True,
                         overrides=pretrained_overrides("fundus"))
    heat = np.load(res.files["heatmap_photo_npy"])
    lesions = np.asarray(read_image(case_dir / "masks" / "lesions.png").array)
    lesions = (lesions.max(-1) if lesions.ndim == 3 else lesions) > 127  # PNG read back as grey or RGB
    rgb = np.asarray(read_image(case_dir / "image.png").array)
    fov = rgb.astype(np.float32).sum(-1) > 30  # the photograph, not the black surround
    m = lesions[fov]
    auroc = pixel_auroc(heat[fov], m) if 0 < m.sum() < m.size else float("nan")
    q = np.asarray(res.scores["classifier_query"], dtype=np.float64).ravel()  # probabilities
    c = np.asarray(res.scores["classifier_counterfactual"], dtype=np.float64).ravel()
    fundus = {
        "models": {"case": row["case_id"], "label": int(row["label"]),
                   "classifier_p_healthy_query": float(q[0]), "classifier_p_healthy_counterfactual": float(c[0])},
        "dvce": {"target_rate": float(res.target_reached), "loc_auroc": auroc},
    }
    written = {"phantom_fundus": str(case_dir / "image.dcm"), "fundus_explanation": str(exp_dir)}
    if "dicom" in res.files:
        written["fundus_secondary_capture"] = str(res.files["dicom"])
    figures = [{"section": "fundus", "title": f"DVCE: {name}", "path": str(Path(res.files[key]).relative_to(out_dir)),
                "caption": cap}
               for name, key, cap in (("query", "query", "The phantom photograph (field-of-view crop)."),
                                      ("counterfactual", "counterfactual", "The healthy-looking counterfactual."),
                                      ("change", "difference_abs", "|counterfactual - query| (brighter = more change)."))]
    return written, fundus, figures
