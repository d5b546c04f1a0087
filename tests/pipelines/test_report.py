"""The HTML report: tables, plots, caller figures, escaping, optional sections, and every image
actually loading in a real browser (headless Chromium, from scripts/install_system_deps.sh)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from browser_check import INSTALL_HINT, chromium, images_in_chromium
from PIL import Image

from pipelines.report import write_report

EVIL = "<script>alert('x')</script>"


def make_results() -> dict:
    rng = np.random.default_rng(0)
    steps = np.round(np.linspace(-0.4, 0.4, 9), 2).tolist()
    # per case: probability rising with the step, plus noise
    teacher = np.clip(0.5 + np.asarray(steps) + rng.normal(0, 0.05, (6, 9)), 0, 1).tolist()
    agent = np.clip(0.5 + 0.9 * np.asarray(steps) + rng.normal(0, 0.05, (6, 9)), 0, 1).tolist()
    return {
        "ct": {
            "diffexplainer": {
                "flip_rate": 0.9712,
                "recon_psnr_db": 31.2345,
                "loc_auroc": 0.934,
                "seconds_per_case": 12.5,
                "randomization": {"spearman_whole": 0.041, "spearman_in_mask": 0.02, "random_model_auroc": 0.51},
                "sweep": {"signed_steps": steps, "teacher_target_prob": teacher, "agent_target_prob": agent},
            },
            "gradcam": {"loc_auroc": 0.71, "seconds_per_case": 0.02, "randomization": {"spearman_whole": 0.12}},
            "rise": {"loc_auroc": float("nan"), "seconds_per_case": 4.1, "randomization": {"spearman_whole": None}},
            EVIL: {"loc_auroc": 0.55},
            "agent_agreement": {"spearman": 0.81, "top1": 0.9},
            "models": {"teacher": {"heldout_auroc": 0.953}, "agent": {"heldout_auroc": 0.91}},
            "shortcut": {
                "diffexplainer": {"mass_on_marker": 0.31},
                "gradcam": {"mass_on_marker": 0.05},
                "_marker_area_fraction": 0.02,
            },
            "model_swap": {
                "_models": {"fibrosis": "the teacher", "emphysema": "the swap teacher"},
                "diffexplainer": {"own_auroc_min": 0.91, "cross_auroc_max": 0.48, "spearman_in_mask": 0.1, "n_cases": 6},
                "gradcam": {"own_auroc_min": 0.62, "cross_auroc_max": 0.7, "n_cases": 6},
            },
        },
        "fundus": {
            "dvce": {"target_rate": 0.88, "l1_outside_lesions": 0.0123, "loc_auroc": 0.81, "seconds_per_case": 2.5},
            "dvce_no_cone": {"target_rate": 0.95, "l1_outside_lesions": 0.0456, "loc_auroc": 0.62, "seconds_per_case": 2.4},
        },
        "targets": {
            "ct.diffexplainer.flip_rate": [">=", 0.95],
            "ct.gradcam.loc_auroc": [">=", 0.9],
            "ct.model_swap.diffexplainer.own_auroc_min": [">=", 0.85],
            "ct.model_swap.gradcam.cross_auroc_max": ["<=", 0.6],
            "ct.diffexplainer.randomization.spearman_in_mask": ["<=", 0.3],
        },
        "versions": {"medxai": "0.1.0", "torch": "2.13.0"},
        "config": {"seed": 0, "ct": {"n_cases": 6}, "note": "<b>bold?</b>"},
        "started": "2025-01-01T00:00:00",
        "seconds": 754.2,
        "quick": True,
    }


def make_figures(out: Path) -> list[dict[str, str]]:
    figs = []
    for name, section, color in (("ct case 1.png", "ct", (200, 30, 30)), ("demo.png", "demo", (30, 30, 200))):
        path = out / "figures" / "given" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), color).save(path)
        figs.append(
            {
                "section": section,
                "title": f"{section} figure",
                "path": f"figures/given/{name}",
                "caption": f"caption {EVIL} & more",
            }
        )
    return figs


def img_srcs(text: str) -> list[str]:
    return re.findall(r'<img\s[^>]*src="([^"]*)"', text)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return write_report(make_results(), out, make_figures(out), title="bench <&> run")


def test_report_has_every_section_and_table(report: Path) -> None:
    assert report == report.parent / "report.html" and report.is_file()
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for piece in [
        'id="sec-ct"',
        'id="sec-fundus"',
        'id="sec-shortcut"',
        'id="sec-demo"',
        'id="targets"',
        'id="environment"',
        'id="ct-metrics"',
        'id="fundus-metrics"',
        'id="ct-shortcut"',
        "Research use, not for diagnosis.",
        "Quick run: tiny models and few cases; the figures are not meaningful.",
        "Teacher probability vs step size",
        "heldout_auroc",
        "spearman",
        "L1 outside lesions",
        "<details><summary>Configuration</summary>",
        "2.13.0",
        "2025-01-01T00:00:00",
        "dvce_no_cone",
    ]:
        assert piece in text, piece
    # floats to 3 significant digits, missing values as a dash, NaN shown as such
    assert ">0.971<" in text and ">31.2<" in text and ">0.0123<" in text and ">\u2013<" in text and ">NaN<" in text
    # targets: flip rate met (green), gradcam AUROC missed (red)
    assert re.search(r'class="num met"[^>]*>0.971<', text) and re.search(r'class="num unmet"[^>]*>0.710<', text)
    # the model-swap table and nested randomisation figures, held to their targets like any metric
    assert 'id="ct-model-swap"' in text and "the swap teacher" in text
    assert re.search(r'class="num met"[^>]*>0.910<', text) and re.search(r'class="num unmet"[^>]*>0.700<', text)
    assert re.search(r'class="num met"[^>]*>0.0200<', text) and "randomisation Spearman (in mask)" in text
    # no external resources: the report works offline
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text


def test_images_are_relative_and_exist(report: Path) -> None:
    srcs = img_srcs(report.read_text(encoding="utf-8"))
    assert len(srcs) == 6  # sweep, loc AUROC (ct, fundus), ct shortcut, and the two given (ct, demo)
    for src in srcs:
        assert not src.startswith(("/", "file:", "http")) and ".." not in src, src
        assert (report.parent / unquote(src)).is_file(), src
    assert "figures/given/ct%20case%201.png" in srcs  # the space is percent-encoded
    assert {"figures/ct_sweep.png", "figures/ct_loc_auroc.png", "figures/fundus_loc_auroc.png", "figures/ct_shortcut.png"} <= set(
        srcs
    )
    for src in srcs:
        with Image.open(report.parent / unquote(src)) as im:
            assert im.format == "PNG"


def test_user_text_is_escaped(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>bold?</b>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text  # method name and captions
    assert "<title>bench &lt;&amp;&gt; run</title>" in text


def test_only_ct_and_empty_results(tmp_path: Path) -> None:
    full = make_results()
    path = write_report({"ct": {"gradcam": full["ct"]["gradcam"]}}, tmp_path / "ct_only")
    text = path.read_text(encoding="utf-8")
    assert 'id="sec-ct"' in text and 'id="sec-fundus"' not in text and 'id="sec-shortcut"' not in text
    assert "Quick run" not in text and "Research use, not for diagnosis." in text
    assert all((path.parent / s).is_file() for s in img_srcs(text)) and img_srcs(text) == ["figures/ct_loc_auroc.png"]
    empty = write_report({}, tmp_path / "empty").read_text(encoding="utf-8")
    assert "Research use" in empty and "<img" not in empty and not (tmp_path / "empty" / "figures").exists()


def test_sections_and_columns_come_from_the_results(tmp_path: Path) -> None:
    # a method the report has never heard of, in a section it has never heard of, labelled from results["methods"]
    results = {
        "ct": {"dig_in": {"method": "dig_in", "flip_rate": 0.5, "loc_auroc": 0.75}, "gradcam": {"loc_auroc": 0.61}},
        "oct": {"new_method": {"target_rate": 0.8, "loc_auroc": 0.7}},
        "methods": {"dig_in": {"summary": "DiG-IN: <guided> diffusion"}},
        "models": {"dir": "/x", "trained": []},  # the bench's model list is not a section
    }
    text = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert 'id="sec-ct"' in text and 'id="sec-oct"' in text and 'id="sec-models"' not in text
    assert 'id="oct-metrics"' in text and ">new_method<" in text
    assert '<th title="DiG-IN: &lt;guided&gt; diffusion">dig_in</th>' in text
    ct_table = re.search(r'<table class="metrics" id="ct-metrics">(.*?)</table>', text, re.S).group(1)
    oct_table = re.search(r'<table class="metrics" id="oct-metrics">(.*?)</table>', text, re.S).group(1)
    # columns: the metrics some row has, nothing else
    assert re.findall(r'<th title="([a-z_]+)">', ct_table) == ["flip_rate", "loc_auroc"]
    assert re.findall(r'<th title="([a-z_]+)">', oct_table) == ["target_rate", "loc_auroc"]
    assert {"figures/ct_loc_auroc.png", "figures/oct_loc_auroc.png"} <= set(img_srcs(text))


def test_figure_paths_must_stay_in_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the report folder"):
        write_report({}, tmp_path, [{"section": "demo", "path": "/etc/hostname"}])
    with pytest.raises(ValueError, match="leaves the report folder"):
        write_report({}, tmp_path, [{"section": "demo", "path": "../x.png"}])
    assert not (tmp_path / "report.html").exists()


def require_chromium() -> None:
    if chromium() is None:
        pytest.fail(INSTALL_HINT)  # not a skip: CI installs it, and a skipped check passes silently


def test_every_image_loads_in_chromium(report: Path) -> None:
    require_chromium()
    result = images_in_chromium(report)
    assert result["n_images"] == len(img_srcs(report.read_text(encoding="utf-8"))) >= 5
    assert result["broken"] == []
    assert not list(report.parent.glob(".check_*"))  # the probed copy is removed


def test_chromium_check_reports_a_missing_figure(report: Path, tmp_path: Path) -> None:
    # negative control: the checker must be able to fail
    require_chromium()
    copy = tmp_path / "moved"
    shutil.copytree(report.parent, copy)  # also shows the folder can be moved
    (copy / "figures" / "fundus_loc_auroc.png").unlink()
    result = images_in_chromium(copy / "report.html")
    assert result["broken"] == ["figures/fundus_loc_auroc.png"]
