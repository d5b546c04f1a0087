"""``medxai bench --quick``: the whole benchmark path on tiny models (train -> explain -> metrics ->
results.json -> report.html), the documented results schema, and the report as a browser shows it."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from browser_check import INSTALL_HINT, chromium, images_in_chromium

from medxai import registry
from medxai.explainers.base import Explainer
from medxai.registry import ANY_IMAGE, CT_STACK, FUNDUS, methods, register_method
from pipelines.cli import main

CT_KEYS = ("flip_rate", "recon_psnr_db", "loc_auroc", "seconds_per_case", "randomization")
RANDOMIZATION_KEYS = ("spearman_in_mask", "spearman_whole", "random_model_auroc", "decision_changed_rate")
FUNDUS_KEYS = ("target_rate", "l1_outside_lesions", "loc_auroc", "seconds_per_case")
# the bench runs every registered method: the attribution ones are whatever the registry holds
ATTRIBUTION = tuple(s.name for s in methods(CT_STACK) if not s.counterfactual)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    assert main(["bench", "--quick", "-o", str(out)]) == 0
    return out


def _in(v: object, lo: float, hi: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi


def test_results_follow_the_documented_schema(bench: Path) -> None:
    r = json.loads((bench / "results.json").read_text())
    assert r["quick"] is True
    ct, fu = r["ct"], r["fundus"]
    for method in ("diffexplainer", *ATTRIBUTION):
        assert set(CT_KEYS) <= set(ct[method]), method
        assert _in(ct[method]["loc_auroc"], 0, 1), (method, ct[method])
        assert _in(ct[method]["seconds_per_case"], 0, 600)
        rnd = ct[method]["randomization"]
        assert set(RANDOMIZATION_KEYS) <= set(rnd), (method, rnd)
        assert _in(rnd["spearman_whole"], -1, 1) and _in(rnd["decision_changed_rate"], 0, 1), (method, rnd)
        # a re-initialised DenseNet outputs one class for every image: no decision to explain
        assert rnd["decision_changed_rate"] == ct["diffexplainer"]["randomization"]["decision_changed_rate"]
    # the counterfactual metrics belong to DiffExplainer only
    dx = ct["diffexplainer"]
    assert _in(dx["flip_rate"], 0, 1) and _in(dx["recon_psnr_db"], 0, 100)
    assert all(ct[m]["flip_rate"] is None and ct[m]["recon_psnr_db"] is None for m in ATTRIBUTION)
    assert _in(ct["agent_agreement"], 0, 1)
    # the score-vs-step curves the report draws: one row per case, one value per signed step
    sweep = dx["sweep"]
    assert len(sweep["teacher_target_prob"]) == dx["n_cases"]
    assert all(len(row) == len(sweep["signed_steps"]) for row in sweep["teacher_target_prob"])
    for method in ("diffexplainer", *ATTRIBUTION):
        row = ct["shortcut"][method]
        assert _in(row["mass_on_marker"], 0, 1) and _in(row["mass_on_marker_clean_teacher"], 0, 1), method
    # model swap: every method explained for both teachers, each map scored on both features
    for half, methods_run in (("ct", ("diffexplainer", *ATTRIBUTION)), ("fundus", ("dvce", *ATTRIBUTION))):
        swap = r[half]["model_swap"]
        assert swap["_n_cases"] > 0, (half, swap)
        for method in methods_run:
            row = swap[method]
            assert len(row["own_auroc"]) == 2 and len(row["cross_auroc"]) == 2, (half, method, row)
            own, cross = list(row["own_auroc"].values()), list(row["cross_auroc"].values())
            # NaN (written null) propagates: a model whose feature no explained case shows has no figure
            assert row["own_auroc_min"] == (None if None in own else min(own)), (half, method, row)
            assert row["cross_auroc_max"] == (None if None in cross else max(cross)), (half, method, row)
            # ... and every method is held to the same faithfulness rules in the report
            assert f"{half}.model_swap.{method}.own_auroc_min" in r["targets"]
            assert f"{half}.{method}.randomization.spearman_in_mask" in r["targets"]
    assert r["ct"]["model_swap"]["_emphysema_teacher"]["auroc_on_emphysema"] is not None
    assert _in(fu["dvce"]["randomization"]["spearman_in_mask"], -1, 1)
    sc = ct["shortcut"]
    assert sc["_n_contradicting"] >= 0 and "ratio" in sc["_marker_in_reconstruction"]
    for method in ("dvce", "dvce_no_cone", "dvce_no_distance"):
        assert set(FUNDUS_KEYS) <= set(fu[method])
        assert _in(fu[method]["target_rate"], 0, 1) and _in(fu[method]["l1_outside_lesions"], 0, 1)
        assert _in(fu[method]["loc_auroc"], 0, 1)
    assert fu["dvce"]["guidance"]["mode"] == "cone" and fu["dvce_no_cone"]["guidance"]["mode"] == "plain"
    assert fu["dvce_no_distance"]["guidance"]["distance_scale"] == 0.0
    for method in ATTRIBUTION:
        assert _in(fu[method]["loc_auroc"], 0, 1) and fu[method]["target_rate"] is None
    # every registered method of each input kind ran there, and results.json says so
    from pipelines.bench_digin import DIGIN_METHODS

    for part, kind in (("ct", CT_STACK), ("fundus", FUNDUS)):
        for spec in methods(kind):
            if spec.name in DIGIN_METHODS:  # an optimisation per image: measured in its own scenarios
                assert "own scenarios" in r["methods"][spec.name]["skipped"][part]
            else:
                assert part in r["methods"][spec.name]["ran"], (spec.name, r["methods"][spec.name])
    # DiG-IN: every figure of the list, from this run
    dg = r["ct"]["digin"]
    for key in ("disagreement_rate", "neuron_activation_ratio", "neuron_cf_direction_rate", "seconds_per_image", "peak_rss_gib"):
        assert dg[key] is not None and dg[key] >= 0, key
    assert _in(dg["disagreement_rate"], 0, 1) and _in(dg["neuron_cf_direction_rate"], 0, 1)
    assert len(dg["neuron_visualisation"]["units"]) == 2 and "ct.digin.shortcut_marker_mass_ratio" in r["targets"]
    assert _in(fu["uvce"]["target_rate"], 0, 1) and _in(fu["uvce"]["l1_outside_lesions"], 0, 1)
    # the cohort report's scenarios: each report written and scored against its planted answer
    co = r["cohort"]
    for name in ("fibrosis", "emphysema", "shortcut", "fundus"):
        assert 3 <= co[name]["n_cases"] <= r["config"]["bench"]["cohort_n"], name
        assert isinstance(co[name]["expected_rank"], int) and co[name]["expected_rank"] >= 1, name
        assert _in(co[name]["expected_q"], 0, 1) and isinstance(co[name]["flagged_shortcut"], bool), name
        assert (bench / co[name]["report"]).is_file()
    assert _in(co["report_seconds"], 0, 600) and "cohort.fibrosis.expected_rank" in r["targets"]
    assert r["methods"]["dvce"]["counterfactual"] is True and r["methods"]["gradcam++"]["summary"]
    assert {"torch", "monai", "medxai"} <= set(r["versions"])
    assert r["config"]["bench"]["ct_test_n"] > 0 and r["config"]["ct"]["run_dir"].endswith("ct")
    # every model was trained in this run, into OUT/models
    assert "ct_teacher" in r["models"]["trained"] and "fundus_ddpm" in r["models"]["trained"]
    assert (bench / "models" / "ct" / "autoencoder.safetensors").is_file()


def test_report_shows_every_image_in_chromium(bench: Path) -> None:
    report = bench / "report.html"
    text = report.read_text()
    for heading in ("CT", "Fundus", "Shortcut", "Model swap", "Research use, not for diagnosis"):
        assert heading in text
    assert chromium() is not None, INSTALL_HINT
    seen = images_in_chromium(report)
    # strips, overlays (CT, shortcut, fundus) and the report's own plots
    assert seen["n_images"] == text.count("<img ") and seen["n_images"] >= 8
    assert seen["broken"] == []


@dataclasses.dataclass(frozen=True)
class _BrightnessSettings:
    pass


class _Brightness(Explainer):
    """A method added as one class: the map is the image's brightness (no model involved)."""

    def _explain(self, x: torch.Tensor, target: object, generator: object) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


@pytest.fixture
def one_file_method() -> Iterator[str]:
    """Register a method for the duration of one test (as a file in medxai/explainers would)."""
    register_method("brightness_test", settings=_BrightnessSettings, inputs=ANY_IMAGE)(_Brightness)
    try:
        yield "brightness_test"
    finally:
        registry._REGISTRY.pop("brightness_test", None)


def test_cached_models_are_loaded_not_retrained(bench: Path, tmp_path: Path, one_file_method: str) -> None:
    out = tmp_path / "again"
    assert main(["bench", "--quick", "--only", "fundus", "--models", str(bench / "models"), "-o", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["models"]["trained"] == []
    assert {"fundus_ddpm", "fundus_classifier", "fundus_robust_classifier", "nn_explainer_fundus"} <= set(r["models"]["loaded"])
    assert "ct" not in r and (out / "report.html").is_file()
    # the method registered beside the others was benchmarked and reported like them, nothing else changed
    row = r["fundus"][one_file_method]
    assert _in(row["loc_auroc"], 0, 1) and row["target_rate"] is None and _in(row["randomization"]["spearman_whole"], -1, 1)
    assert _in(r["fundus"]["model_swap"][one_file_method]["own_auroc_min"], 0, 1)
    assert r["methods"][one_file_method]["ran"] == ["fundus"]
    assert f">{one_file_method}</th>" in (out / "report.html").read_text()


def test_bad_bench_config_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("full:\n  ct_config: nowhere.yaml\n  dr_config: nowhere.yaml\n  ddpm_config: nowhere.yaml\n  n_cases: 3\n")
    assert main(["bench", "-c", str(cfg), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "n_cases" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ("  rise_masks: 64\n", "methods: {rise: {n_masks: N}}"),
        ("  ct_overrides: {explainer.encode_steps: 4}\n", "renamed 'diffexplainer'"),
        ("  dr_overrides: {dvce.target_class: 0}\n", "moved to the top level"),
        ("  methods: {no_such_method: {n: 1}}\n", "not registered"),
    ],
)
def test_old_or_unknown_bench_fields_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    # never silently ignored: an old field name would otherwise run the bench with other settings than asked
    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(
        f"full:\n  ct_config: {configs / 'ct_prognosis.yaml'}\n  dr_config: {configs / 'dr_fundus.yaml'}\n"
        f"  ddpm_config: {configs / 'ddpm_fundus_cpu64.yaml'}\n{extra}"
    )
    assert main(["bench", "-c", str(cfg), "-o", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()
