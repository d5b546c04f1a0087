"""The README's demo command: a phantom CT study explained with the shipped models, exported where
users look (SC overlays in the source study, Parametric Map, Slicer bundle), a DVCE fundus
counterfactual, and a report whose checks against the planted truth hold."""

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
    for key in ("report", "secondary_captures", "slicer_bundle", "parametric_map", "fundus_explanation"):
        assert key in printed, key
    assert read_image(out / "real_ct" / "ct.nii.gz").shape == (5, 16, 16)


def test_counterfactuals_move_the_teacher_and_the_heatmap_finds_the_biomarker(demo: tuple[Path, str]) -> None:
    out, _ = demo
    case = next((out / "ct_explanation").iterdir())
    meta = json.loads((case / "explanation.json").read_text())
    results = json.loads((out / "demo_results.json").read_text())
    ct = results["ct"]
    # the shipped teacher calls the planted-fibrosis case positive, and the sweep moves it both ways
    assert ct["models"]["label"] == 1
    assert ct["models"]["teacher_p_more_likely"] > ct["models"]["teacher_p_reconstruction"] > ct["models"]["teacher_p_less_likely"]
    assert ct["diffexplainer"]["score_moved"] >= 0.3
    # the difference heatmap ranks the planted biomarker above the rest of the lungs
    assert ct["diffexplainer"]["loc_auroc"] >= 0.8
    assert meta["teacher_scores"]["sweep_plus"] and meta["files"]
    fu = results["fundus"]
    assert fu["models"]["label"] == 1 and fu["dvce"]["target_rate"] == 1.0
    assert fu["models"]["classifier_p_healthy_counterfactual"] > fu["models"]["classifier_p_healthy_query"]


def test_overlays_are_in_the_source_study_and_slicer_bundle_is_complete(demo: tuple[Path, str]) -> None:
    out, _ = demo
    dicom = next((out / "phantom_ct").glob("*/dicom"))
    study_uid = read_series(dicom).source.study_instance_uid
    scs = sorted((out / "dicom_export").rglob("*.dcm"))
    assert scs
    kinds = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID.name for f in scs}
    assert any("Secondary Capture" in k for k in kinds) and any("Parametric Map" in k for k in kinds)
    assert all(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID == study_uid for f in scs)
    bundle = next((out / "dicom_export").rglob("load_in_slicer.py")).parent
    assert list(bundle.glob("*.nrrd"))


def test_report_shows_every_image_in_chromium(demo: tuple[Path, str]) -> None:
    out, _ = demo
    report = out / "report.html"
    assert chromium() is not None, INSTALL_HINT
    seen = images_in_chromium(report)
    assert seen["n_images"] >= 5 and seen["broken"] == []
