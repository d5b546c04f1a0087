"""The README's demo command: a phantom CT study explained with the shipped models by the explain job,
which writes in the same run where users look (SC overlays, Parametric Map and the counterfactual as a
derived CT series in the source study, Slicer bundle), a DVCE fundus counterfactual, and a report whose
checks against the planted truth hold."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from browser_check import INSTALL_HINT, chromium, images_in_chromium

from dicom_io import read_image, read_series
from pipelines.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "-o", str(out)]) == 0
    return out, buf.getvalue()


def test_demo_prints_where_everything_is(demo: tuple[Path, str]) -> None:
    out, printed = demo
    for key in (
        "report",
        "secondary_captures",
        "slicer_bundle",
        "parametric_map",
        "counterfactual_series",
        "fundus_explanation",
        "fundus_secondary_capture",
    ):
        assert key in printed, key
    assert read_image(out / "real_ct" / "ct.nii.gz").shape == (5, 16, 16)


def test_counterfactuals_move_the_teacher_and_the_heatmap_finds_the_biomarker(demo: tuple[Path, str]) -> None:
    out, _ = demo
    (case,) = (out / "ct_explanation").glob("*/*/*")
    meta = json.loads((case / "explanation.json").read_text())
    results = json.loads((out / "demo_results.json").read_text())
    ct = results["ct"]
    # the shipped teacher calls the planted-fibrosis case positive, and the sweep moves it both ways
    assert ct["models"]["label"] == 1
    m = ct["models"]
    assert m["teacher_p_more_likely"] > m["teacher_p_reconstruction"] > m["teacher_p_less_likely"]
    assert ct["diffexplainer"]["score_moved"] >= 0.3
    # the difference heatmap ranks the planted biomarker above the rest of the lungs
    assert ct["diffexplainer"]["loc_auroc"] >= 0.8
    # the demo's figures are the explanation's own probabilities (no second softmax)
    k = meta["target_class"]
    assert ct["models"]["teacher_p_query"] == meta["probabilities"][k]
    assert ct["models"]["teacher_p_more_likely"] == meta["sweep"]["probabilities"][-1][k]
    assert meta["provenance"]["resolved_weights"]["teacher"]["path"].endswith("ct/teacher.safetensors")
    fu = results["fundus"]
    assert fu["models"]["label"] == 1 and fu["dvce"]["target_rate"] == 1.0
    assert fu["models"]["classifier_p_healthy_counterfactual"] > fu["models"]["classifier_p_healthy_query"]


def test_dicom_objects_are_in_the_source_study_and_slicer_bundle_is_complete(demo: tuple[Path, str]) -> None:
    out, _ = demo
    dicom = next((out / "phantom_ct").glob("*/dicom"))
    study_uid = read_series(dicom).source.study_instance_uid
    (case,) = (out / "ct_explanation").glob("*/*/*")
    objs = sorted((case / "dicom").rglob("*.dcm"))
    assert objs
    kinds = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID.name for f in objs}
    assert any("Secondary Capture" in k for k in kinds) and any("Parametric Map" in k for k in kinds)
    assert any(k == "CT Image Storage" for k in kinds)  # the counterfactual as a derived CT series
    assert all(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID == study_uid for f in objs)
    bundle = next(case.rglob("load_in_slicer.py")).parent
    assert list(bundle.glob("*.nrrd"))
    photo = read_image(next((out / "phantom_fundus").glob("*/image.dcm")))
    (sc,) = (out / "fundus_explanation").rglob("*.dcm")
    assert pydicom.dcmread(sc, stop_before_pixels=True).StudyInstanceUID == photo.source.study_instance_uid


def test_report_shows_every_image_in_chromium(demo: tuple[Path, str]) -> None:
    out, _ = demo
    report = out / "report.html"
    assert chromium() is not None, INSTALL_HINT
    seen = images_in_chromium(report)
    assert seen["n_images"] >= 5 and seen["broken"] == []
