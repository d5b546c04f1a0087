"""``medxai cohort report`` on an explain output whose answer is planted (tests/medxai/biomarkers/planted.py):
the tables, the page in headless Chromium, reproducibility, cases left out with their reason, bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser_check import INSTALL_HINT, chromium, images_in_chromium

from pipelines.cli import EXIT_BAD_INPUT, main

_spec = importlib.util.spec_from_file_location(
    "_planted", Path(__file__).resolve().parents[1] / "medxai" / "biomarkers" / "planted.py"
)
assert _spec is not None and _spec.loader is not None
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


def write_explain_output(out: Path, cases: list[Any]) -> Path:
    """The layout medxai cohort explain writes, for synthetic cases (DiffExplainer-like: steps -1, +1)."""
    (out / "cases").mkdir(parents=True)
    stack = {"window_level": -600.0, "window_width": 1500.0, "fractions": list(planted.FRACTIONS), "body_threshold": -500.0}
    (out / "run.json").write_text(json.dumps({"method": "diffexplainer", "target_class": 1, "stack": stack}))
    for c in cases:
        folder = out / "cases" / c.id
        folder.mkdir()
        np.savez_compressed(
            folder / "counterfactuals.npz",
            steps=np.array([-1.0, 1.0], np.float32),
            images=np.stack([c.away, c.toward]),
            query=c.query,
            origin=c.base,
        )
        np.savez_compressed(folder / "lung_mask.npz", lung_mask=c.mask.astype(np.uint8))
        (folder / "row.json").write_text(json.dumps({"id": c.id, "label": str(c.label), "status": "ok"}))
    return out


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_explain_output(tmp_path_factory.mktemp("report") / "out", planted.planted_cohort(24))
    broken = out / "cases" / "zz_broken"  # a case whose method left no counterfactual
    broken.mkdir()
    (broken / "row.json").write_text(json.dumps({"id": "zz_broken", "label": "1"}))
    return out


@pytest.fixture(scope="module")
def report(explained: Path) -> Path:
    dst = explained.parent / "report"
    assert main(["cohort", "report", str(explained), "-o", str(dst), "--resamples", "300"]) == 0
    return dst


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_tables_hold_the_planted_answer(report: Path) -> None:
    for name in ("report.html", "features.csv", "regions.csv", "case_values.csv", "population_maps.npz", "settings.json"):
        assert (report / name).is_file(), name
    regions = _rows(report / "regions.csv")
    top = next(r for r in regions if r["direction"] == "toward" and r["rank"] == "1")
    assert top["region"] == "lower_rind" and float(top["q"]) < 0.05
    feats = {(r["region"], r["feature"], r["direction"]): r for r in _rows(report / "features.csv")}
    assert feats[("lungs", "haa_pct", "toward")]["wants"] == "more"
    assert feats[("mediastinum", "mean_hu", "toward")]["wants"] == "unchanged"
    assert float(feats[("lungs", "haa_pct", "toward")]["auroc"]) > 0.9
    values = _rows(report / "case_values.csv")
    assert len(values) == 24 and {"id", "label", "lungs/haa_pct/query"} <= set(values[0])
    with np.load(report / "population_maps.npz") as z:
        assert z["toward_mean_change"].shape == (4, 32, 32) and "away_q" in z.files


def test_cases_left_out_are_named_with_their_reason(report: Path) -> None:
    meta = json.loads((report / "settings.json").read_text())
    assert len(meta["cases_used"]) == 24
    (left,) = meta["cases_left_out"]
    assert left["id"] == "zz_broken" and "counterfactuals.npz" in left["reason"]
    assert meta["settings"]["alpha"] == 0.05 and meta["settings"]["n_resamples"] == 300


def test_the_same_output_gives_the_same_digits(explained: Path, report: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["cohort", "report", str(explained), "-o", str(again), "--resamples", "300"]) == 0
    for name in ("features.csv", "regions.csv", "case_values.csv"):
        assert (again / name).read_text() == (report / name).read_text(), name


def test_report_shows_every_figure_in_chromium(report: Path) -> None:
    assert chromium() is not None, INSTALL_HINT
    seen = images_in_chromium(report / "report.html")
    assert seen["n_images"] >= 5 and seen["broken"] == []  # two population maps, regions, volcano, forest
    page = (report / "report.html").read_text()
    assert "cannot claim" in page and "shortcut candidate" in page.lower()


def test_bad_input_exits_2_naming_the_folder(
    explained: Path, report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cohort", "report", str(explained), "-o", str(report)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and "Traceback" not in err
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["cohort", "report", str(empty), "-o", str(tmp_path / "r")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "nothing" in err and "cohort explain" in err
    assert not (tmp_path / "r").exists()  # nothing half-written
    # a method without counterfactuals (an attribution map): every case left out, and the reason said
    rise = tmp_path / "rise"
    for i in range(4):
        (rise / "cases" / f"c{i}").mkdir(parents=True)
        (rise / "cases" / f"c{i}" / "row.json").write_text(json.dumps({"id": f"c{i}", "label": "0"}))
    (rise / "run.json").write_text(json.dumps({"method": "rise", "target_class": 1, "stack": {}}))
    assert main(["cohort", "report", str(rise), "-o", str(tmp_path / "r2")]) == EXIT_BAD_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert "at least 3" in err and "no counterfactuals.npz" in err and not (tmp_path / "r2").exists()


def test_fundus_output_gives_lesion_rows_and_no_map(tmp_path: Path) -> None:
    """A DR cohort (DVCE-like: one step toward 'healthy', no origin, fov_mask.npz beside each case): the
    counterfactual is the phantom redrawn at grade 0, so both lesion counts must fall."""
    from medxai.phantoms import fundus_config, make_fundus_case
    from medxai.transforms import FundusConfig, FundusTransform

    tf, cfg = FundusTransform(FundusConfig(size=64)), fundus_config("test")
    out = tmp_path / "out"
    (out / "cases").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"input": "fundus", "method": "dvce", "target_class": 0, "stack": {}}))
    n = 0
    for seed in range(100, 200):
        case = make_fundus_case(seed, cfg)
        if case.label != 1:
            continue
        x = np.asarray(tf(np.array(case.rgb))["image"], np.float32)
        healthy = np.asarray(tf(np.array(make_fundus_case(seed, cfg, grade=0).rgb))["image"], np.float32)
        folder = out / "cases" / f"F{seed}"
        folder.mkdir()
        np.savez_compressed(folder / "counterfactuals.npz", steps=np.array([1.0], np.float32), images=healthy[None], query=x)
        np.savez_compressed(folder / "fov_mask.npz", fov_mask=(x.max(0) > 1e-6).astype(np.uint8))
        (folder / "row.json").write_text(json.dumps({"id": f"F{seed}", "label": "1"}))
        n += 1
        if n == 12:
            break
    assert main(["cohort", "report", str(out), "-o", str(tmp_path / "r"), "--resamples", "200"]) == 0
    feats = {(r["feature"], r["direction"]): r for r in _rows(tmp_path / "r" / "features.csv")}
    assert feats[("red_lesion_count", "toward")]["wants"] == "less"
    assert feats[("bright_lesion_count", "toward")]["wants"] == "less"
    assert not any(d == "away" for _, d in feats)
    assert not (tmp_path / "r" / "population_maps.npz").exists()
    assert "no population map" in (tmp_path / "r" / "report.html").read_text()
    assert {r["region"] for r in _rows(tmp_path / "r" / "regions.csv")} == {
        "red_lesions",
        "bright_lesions",
        "vessels",
        "background",
    }
