"""ONE explain job for every registered method: each method that takes CT stacks runs through
`medxai explain --method` on a phantom DICOM series with the SHIPPED models and writes the same layout
(maps on the CT grid, strip, explanation.json with the case's identifiers) plus DICOM in the source study
(SC overlays, Parametric Map; for DiffExplainer the counterfactual as a derived CT series in HU). Fundus:
DVCE and an attribution method on a phantom DICOM photograph. A method added as one class shows up in
`--list-methods` and runs through `run_explain` with nothing else changed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import yaml

from dicom_io import StudyInfo, Volume, read_image, read_series, safe_filename, write_ct_series, write_nifti
from medxai.config import pretrained_dir
from medxai.phantoms import ct_config, make_ct_case
from medxai.registry import CT_STACK, FUNDUS, method_names
from pipelines.cli import EXIT_BAD_INPUT, main

REPO = Path(__file__).resolve().parents[2]
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")

# tiny settings: each method runs in seconds on two CPU cores
TINY = {
    "diffexplainer": {"step_sizes": [0.8], "heatmap_step": 0.8, "encode_steps": 2, "decode_steps": 2},
    "rise": {"n_masks": 16, "batch_size": 16},
    "integrated_gradients": {"n_steps": 4},
    "occlusion": {"mask_size": 16, "overlap": 0.0},
    "dvce": {"num_steps": 4, "skip_steps": 2, "batch_size": 1},
    **{
        name: {"engine": {"steps": 3, "iterations": 1, "n_crops": 2, "loss_weights": [1.0]}, "batch_size": 1}
        for name in ("digin-disagreement", "digin-uvce", "digin-neuron")
    },
}


def _dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stderr + r.stdout).splitlines() if line.startswith("Error")]


def _shipped(cfg: dict[str, Any], sections: dict[str, str]) -> None:
    """Point model sections at the shipped weights (absolute: the test config lives elsewhere)."""
    for section, rel in sections.items():
        cfg[section]["path"] = str(pretrained_dir() / rel)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("methods")
    case = make_ct_case(3, ct_config("test", n_slices=24, matrix=64, vessel_points=40))
    vol = Volume(np.asarray(case.hu, dtype=np.float32), case.spacing, case.origin)
    write_ct_series(vol, root / "dicom", StudyInfo(uid_seed="explain-methods", patient_id="P/1", series_description="chest"))
    cfg = yaml.safe_load((REPO / "configs" / "ct_prognosis.yaml").read_text())
    _shipped(
        cfg,
        {
            "teacher": "ct/teacher.safetensors",
            "autoencoder": "ct/autoencoder.safetensors",
            "agent": "ct/agent.safetensors",
            "nn_explainer_network": "nn_explainer_ct",
        },
    )
    cfg["autoencoder"]["config"] = str(REPO / "configs" / cfg["autoencoder"]["config"])
    # the model digin-disagreement compares the black box with: the shipped shortcut teacher
    cfg["second_model"] = {**cfg["teacher"], "path": str(pretrained_dir() / "ct_shortcut" / "teacher.safetensors")}
    cfg["run_dir"] = str(root / "run")
    for name, settings in TINY.items():
        if name != "dvce":
            cfg.setdefault(name, {}).update(settings)
    (root / "ct.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "dicom": root / "dicom", "config": root / "ct.yaml", "ct": read_series(root / "dicom")}


def _case_dir(out: Path, method: str) -> Path:
    """OUT/<patient>_<h>/<study>_<h>/<series>_<method>_<h>/: the one case folder (the export's naming)."""
    (case,) = [p for p in out.glob("*/*/*") if p.is_dir() and not p.name.startswith(".")]
    patient, study = case.parent.parent.name, case.parent.name
    assert patient.startswith("P_1_") and case.name.startswith(safe_filename(f"chest_{method}", max_len=64) + "_")
    assert all(len(name.rsplit("_", 1)[1]) == 8 for name in (patient, study, case.name))  # 8 hex digits each
    return case


def _check_ct_layout(case: Path, ct: Volume, method: str) -> dict[str, Any]:
    meta = json.loads((case / "explanation.json").read_text())
    assert meta["method"] == method and meta["target_class"] == 1
    probs = np.asarray(meta["probabilities"])
    assert probs.shape == (2,) and abs(probs.sum() - 1) < 1e-6
    prov = meta["provenance"]
    assert prov["PatientID"] == "P/1"
    assert prov["StudyInstanceUID"] == ct.source.study_instance_uid
    assert prov["SeriesInstanceUID"] == ct.source.series_instance_uid
    assert Path(prov["source"]).is_dir() and prov["input_check"]["passed"] is True
    assert prov["versions"]["medxai"] and prov["config"]["input"] == "ct_stack"
    assert prov["resolved_weights"]["teacher"]["path"].endswith("teacher.safetensors")
    for name in meta["files"].values():
        assert (case / name).is_file(), name
    # the heatmap on the ORIGINAL CT grid, non-zero only on the explained slices
    img = nib.load(str(case / "heatmap.nii.gz"))
    assert img.shape == ct.array.shape[::-1]
    np.testing.assert_allclose(img.affine, ct.affine_ras, atol=1e-4)
    heat = np.asarray(img.dataobj).transpose(2, 1, 0)
    others = np.setdiff1d(np.arange(heat.shape[0]), prov["slice_indices"])
    assert np.all(heat[others] == 0) and np.isfinite(heat).all()
    assert (case / "strip.png").is_file()
    # DICOM in the same run: SC overlays and a Parametric Map in the source study
    scs = sorted((case / "dicom" / "SC_overlay").glob("*.dcm"))
    assert len(scs) == len(set(prov["slice_indices"]))
    pm = pydicom.dcmread(case / "dicom" / "PM.dcm", stop_before_pixels=True)
    assert "Parametric Map" in pm.SOPClassUID.name
    for f in [*scs, case / "dicom" / "PM.dcm"]:
        assert pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID == ct.source.study_instance_uid
    sc = pydicom.dcmread(scs[0], stop_before_pixels=True)
    # the burned-in score is the Explanation's probability of the target, not typed by hand
    assert f"P(target): {probs[1]:.3f} ->" in sc.DerivationDescription
    assert not list(case.parent.glob(".*partial*"))
    return meta


@pytest.mark.parametrize("method", method_names(CT_STACK))
def test_every_ct_method_runs_from_the_cli(ct: dict[str, Any], method: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = ct["root"] / f"out_{method}"
    code = main(["explain", "-c", str(ct["config"]), "-i", str(ct["dicom"]), "-o", str(out), "--method", method])
    text = capsys.readouterr()
    assert code == 0, text.err
    printed = " ".join(text.out.split())
    assert "P(class 0)" in printed and "P(class 1)" in printed and "wrote" in printed and "explanation.json" in printed
    case = _case_dir(out, method)
    meta = _check_ct_layout(case, ct["ct"], method)
    if method == "diffexplainer":
        _check_derived_series(case, ct["ct"], meta)
        # each explained slice carries its OWN map (|z+ - z| + |z- - z| of that slice), not the stack's sum
        heat = np.asarray(nib.load(str(case / "heatmap.nii.gz")).dataobj).transpose(2, 1, 0)
        on_slices = [float(heat[k].sum()) for k in sorted(set(meta["provenance"]["slice_indices"]))]
        assert min(on_slices) > 0 and len({round(v, 3) for v in on_slices}) == len(on_slices), on_slices
    if method == "digin-disagreement":  # both models' probabilities, printed and stored
        assert "second model, P(class 1)" in printed
        assert len(meta["sweep"]["second_query_probabilities"]) == 2 and "disagreement_reached" in meta["diagnostics"]


def test_disagreement_with_a_second_config(ct: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two job configs, one per model: the second config's black box is the second model (no
    second_model section needed); a config for another input kind is refused naming both files."""
    cfg = yaml.safe_load(ct["config"].read_text())
    del cfg["second_model"]
    first = tmp_path / "site_a.yaml"
    first.write_text(yaml.safe_dump(cfg))
    cfg["teacher"]["path"] = str(pretrained_dir() / "ct_emphysema" / "teacher.safetensors")
    second = tmp_path / "site_b.yaml"
    second.write_text(yaml.safe_dump(cfg))
    args = ["explain", "-c", str(first), "-i", str(ct["dicom"]), "-m", "digin-disagreement"]
    assert main([*args, "-o", str(tmp_path / "none")]) == EXIT_BAD_INPUT  # no second model at all
    assert "second_model" in " ".join(capsys.readouterr().err.split())
    assert main([*args, "-o", str(tmp_path / "o"), "--second-config", str(second)]) == 0, capsys.readouterr().err
    meta = json.loads((_case_dir(tmp_path / "o", "digin-disagreement") / "explanation.json").read_text())
    from medxai.config import load_config
    from pipelines.models import load_black_box

    x = np.load(_case_dir(tmp_path / "o", "digin-disagreement") / "counterfactuals.npz")["query"][None]
    with torch.no_grad():
        expected = torch.softmax(load_black_box(load_config(second))(torch.from_numpy(x)), 1)[0].numpy()
    np.testing.assert_allclose(meta["sweep"]["second_query_probabilities"], expected, rtol=1e-4, atol=1e-6)
    dr = tmp_path / "dr.yaml"
    dr.write_text((REPO / "configs" / "dr_fundus.yaml").read_text())
    assert main([*args, "-o", str(tmp_path / "o2"), "--second-config", str(dr)]) == EXIT_BAD_INPUT
    assert "the two models must take the same inputs" in " ".join(capsys.readouterr().err.split())


def test_digin_units_sharded_and_resumable(ct: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Neuron visualisation of the top units of "death": each unit one item, split by --shard, written
    atomically, skipped when a rerun finds it."""
    from medxai.config import load_config
    from medxai.explainers.digin import top_units
    from pipelines.models import load_black_box

    units = top_units(load_black_box(load_config(ct["config"])), 1, 2)
    args = ["digin-units", "-c", str(ct["config"]), "-i", str(ct["dicom"]), "-o", str(tmp_path / "u"), "--top", "2"]
    assert main([*args, "--shard", "1/2"]) == 0, capsys.readouterr().err
    assert [p.name for p in (tmp_path / "u").iterdir()] == [f"unit_{units[1]}"]
    assert main(args) == 0  # the rest: only the first unit is new
    assert "1 unit(s) visualised" in " ".join(capsys.readouterr().out.split())
    meta = json.loads((tmp_path / "u" / f"unit_{units[0]}" / "unit.json").read_text())
    assert meta["unit"] == units[0] and meta["rank_by_head_weight"] == 1 and meta["class_index"] == 1
    assert set(meta["other_top_units_ratio"]) == {str(units[1])} and (tmp_path / "u" / f"unit_{units[0]}" / "unit.png").is_file()
    assert main(args) == 0 and "0 unit(s) visualised" in " ".join(capsys.readouterr().out.split())


def _check_derived_series(case: Path, ct: Volume, meta: dict[str, Any]) -> None:
    """The counterfactual of each end of the sweep as a CT series in HU, in the source study."""
    prov = meta["provenance"]
    idx = sorted(set(prov["slice_indices"]))
    steps = meta["sweep"]["steps"]
    assert steps == [-0.8, 0.8]
    src = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in ct.source.files}
    series_uids = set()
    for end, step in (("minus", -0.8), ("plus", 0.8)):
        files = sorted((case / "dicom" / f"CT_counterfactual_{end}").glob("*.dcm"))
        assert len(files) == len(idx)
        hu_nifti = np.asarray(nib.load(str(case / f"counterfactual_{end}.nii.gz")).dataobj).transpose(2, 1, 0)
        for f in files:
            ds = pydicom.dcmread(f)
            assert ds.Modality == "CT" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert ds.StudyInstanceUID == ct.source.study_instance_uid
            assert ds.SeriesInstanceUID != ct.source.series_instance_uid
            assert ds.FrameOfReferenceUID == ct.source.frame_of_reference_uid and ds.PatientID == "P/1"
            assert f"step {step:+g}" in ds.SeriesDescription and "diffexplainer" in ds.SeriesDescription
            assert ds.RescaleType == "HU"
            k = int(ds.InstanceNumber) - 1
            assert k in idx
            ref = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
            source = pydicom.dcmread(src[ref])
            position = [float(v) for v in source.ImagePositionPatient]
            assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(position, abs=1e-3)
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            # HU-scaled: inside the lung window's range (-1350..150), the same as the NIfTI beside it,
            # and the source's own HU outside the stack's crop
            assert -1351 <= hu.min() and hu.max() <= 3072 and np.abs(hu - hu_nifti[k]).max() <= 0.5
            changed = np.abs(hu - ct.array[k]) > 0.5
            assert 0.1 < changed.mean() <= 1.0
            p = meta["sweep"]["probabilities"][steps.index(step)][1]
            assert f"{p:.3f}" in ds.DerivationDescription
            series_uids.add(ds.SeriesInstanceUID)
        if shutil.which("dciodvfy"):
            assert _dciodvfy_errors(files[0]) == [], files[0]
    assert len(series_uids) == 2
    sc = sorted((case / "dicom" / "SC_counterfactual").glob("*.dcm"))
    assert sc and "Counterfactual" in pydicom.dcmread(sc[0], stop_before_pixels=True).DerivationDescription


def test_shipped_config_explains_a_phantom_series_with_no_copying(
    ct: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh clone: configs/ct_prognosis.yaml as shipped (runs/ has no weights: medxai/pretrained stands in)."""
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            "-c",
            str(REPO / "configs" / "ct_prognosis.yaml"),
            "-i",
            str(ct["dicom"]),
            "-o",
            str(out),
            "--encode-steps",
            "2",
            "--decode-steps",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    case = _case_dir(out, "diffexplainer")
    meta = json.loads((case / "explanation.json").read_text())
    assert meta["parameters"]["decode_steps"] == 2 and len(meta["sweep"]["steps"]) == 8
    weights = meta["provenance"]["resolved_weights"]
    if not (REPO / "runs").exists():
        assert weights["teacher"]["pretrained"] is True and weights["agent"]["pretrained"] is True
    assert (case / "dicom" / "CT_counterfactual_plus").is_dir()


def test_existing_case_is_refused_without_overwrite(
    ct: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", "-c", str(ct["config"]), "-i", str(ct["dicom"]), "-o", str(tmp_path / "o"), "--method", "gradcam"]
    assert main(args) == 0
    case = _case_dir(tmp_path / "o", "gradcam")
    (case / "marker.txt").write_text("old")
    capsys.readouterr()
    assert main(args) == EXIT_BAD_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert "already exists" in err and "--overwrite" in err and (case / "marker.txt").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert not (case / "marker.txt").exists() and (case / "explanation.json").is_file()


def test_a_method_for_another_input_is_refused_naming_the_valid_ones(
    ct: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["explain", "-c", str(ct["config"]), "-i", str(ct["dicom"]), "-o", str(tmp_path / "o"), "--method", "dvce"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_BAD_INPUT and "Traceback" not in err
    assert "does not explain ct stack inputs" in err and all(m in err for m in method_names(CT_STACK))
    assert (
        main(["explain", "-c", str(ct["config"]), "-i", str(ct["dicom"]), "-o", str(tmp_path / "o"), "--method", "gradcma"])
        == EXIT_BAD_INPUT
    )
    assert "unknown method 'gradcma'" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()


def test_every_ct_series_of_a_folder_is_one_case(ct: dict[str, Any], tmp_path: Path) -> None:
    """Two CT series and a photograph in one folder: two cases, one folder each; the photo is left out."""
    from dicom_io import write_photo_dicom
    from pipelines.explain import run_explain

    src = tmp_path / "study"
    shutil.copytree(ct["dicom"], src / "a")
    vol = ct["ct"].replace(source=None)
    write_ct_series(
        vol, src / "b", StudyInfo(uid_seed="explain-methods", patient_id="P/1", series_number=2, series_description="chest")
    )
    write_photo_dicom(np.zeros((64, 64, 3), np.uint8), src / "photo.dcm", StudyInfo(uid_seed="a-photo"))
    res = run_explain(ct["config"], src, tmp_path / "o", method="gradcam")
    assert res.n_cases == 2 and len({c.case_dir for c in res.cases}) == 2
    assert {c.series_instance_uid for c in res.cases} == {
        ct["ct"].source.series_instance_uid,
        read_series(src / "b").source.series_instance_uid,
    }
    assert len({c.study_instance_uid for c in res.cases}) == 1 and all(c.case_dir.is_dir() for c in res.cases)


def test_volume_file_gets_the_same_layout_without_dicom(ct: dict[str, Any], tmp_path: Path) -> None:
    from pipelines.explain import run_explain

    write_nifti(ct["ct"].replace(source=None), tmp_path / "chest.nii.gz")
    res = run_explain(ct["config"], tmp_path / "chest.nii.gz", tmp_path / "o", method="rise")
    (case,) = res.cases
    assert case.case_dir.parent.parent.parent == tmp_path / "o" and case.case_dir.name.startswith("chest_rise_")
    assert case.patient_id is None and case.study_instance_uid is None
    assert {"heatmap", "strip", "explanation"} <= set(case.files) and not (case.case_dir / "dicom").exists()
    heat = read_image(case.files["heatmap"])
    assert heat.shape == ct["ct"].shape
    np.testing.assert_allclose(heat.affine_lps, ct["ct"].affine_lps, atol=1e-3)
    assert abs(sum(case.probabilities) - 1) < 1e-6 and res.n_cases == 1


# ------------------------------------------------------------------------------------------ fundus
@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pipelines.phantom import write_fundus_cohort

    root = tmp_path_factory.mktemp("methods_fundus")
    cohort = write_fundus_cohort(root / "cohort", 1, seed=9006)
    (case,) = [p for p in cohort.iterdir() if p.is_dir()]
    cfg = yaml.safe_load((REPO / "configs" / "dr_fundus.yaml").read_text())
    _shipped(
        cfg,
        {
            "classifier": "fundus/classifier.safetensors",
            "robust_classifier": "fundus/robust_classifier.safetensors",
            "diffusion": "fundus/ddpm.safetensors",
            "nn_explainer_network": "nn_explainer_fundus",
        },
    )
    cfg["dvce"].update(TINY["dvce"])
    cfg["dvce"]["guidance"]["n_augmentations"] = 1
    cfg["rise"] = TINY["rise"]
    cfg["digin-uvce"] = TINY["digin-uvce"]
    (root / "dr.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "config": root / "dr.yaml", "photo": case / "image.dcm", "png": case / "image.png"}


@pytest.mark.parametrize("method", ["dvce", "rise", "digin-uvce"])
def test_fundus_methods_write_the_same_layout_and_an_sc_overlay(
    fundus: dict[str, Any], method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fundus["root"] / f"out_{method}"
    assert method in method_names(FUNDUS)
    code = main(["explain", "-c", str(fundus["config"]), "-i", str(fundus["photo"]), "-o", str(out), "--method", method])
    assert code == 0, capsys.readouterr().err
    (case,) = [p for p in out.glob("*/*/*") if p.is_dir()]
    assert case.name.startswith(f"fundus_Fundus_phantom_{method}_")
    photo = read_image(fundus["photo"])
    meta = json.loads((case / "explanation.json").read_text())
    assert meta["method"] == method and meta["target_class"] == 0
    assert meta["provenance"]["StudyInstanceUID"] == photo.source.study_instance_uid
    heat = np.asarray(nib.load(str(case / "heatmap.nii.gz")).dataobj)
    assert heat.shape[:2] == photo.shape[::-1] and np.isfinite(heat).all()
    (sc,) = sorted((case / "dicom" / "SC_overlay").glob("*.dcm"))
    ds = pydicom.dcmread(sc)
    assert ds.StudyInstanceUID == photo.source.study_instance_uid and ds.SamplesPerPixel == 3
    assert f"P(target): {meta['probabilities'][0]:.3f} ->" in ds.DerivationDescription
    if method in ("dvce", "digin-uvce"):
        assert meta["sweep"]["steps"] == [1.0] and (case / "counterfactuals.npz").is_file()
    if method == "dvce":
        corner = heat[: heat.shape[0] // 20, : heat.shape[1] // 20]
        assert float(np.abs(corner).max()) == 0.0  # DVCE changes only the field of view
        assert "robust_logits" in meta["diagnostics"]


# ------------------------------------------------------------------------ a method added as one class
def test_a_method_added_as_one_class_is_listed_and_runs(
    ct: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medxai import registry
    from medxai.explainers.base import Explainer
    from medxai.registry import ANY_IMAGE, register_method
    from pipelines.explain import run_explain

    method_names()  # discover the shipped methods before the registry is swapped for a copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclasses.dataclass(frozen=True)
    class CentreSettings:
        radius: int = 8

    @register_method("centre_test", settings=CentreSettings, inputs=ANY_IMAGE, summary="a disc in the middle (test)")
    class Centre(Explainer):
        def __init__(self, model: torch.nn.Module, radius: int = 8, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            self.radius = radius

        def _explain(self, x: torch.Tensor, target: Any, generator: Any, **inputs: Any) -> torch.Tensor:
            h, w = x.shape[-2:]
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            disc = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) <= self.radius**2).float()
            return disc.expand(x.shape[0], 1, h, w).clone()

    assert main(["explain", "--list-methods"]) == 0
    listing = capsys.readouterr().out
    assert "centre_test" in listing and "a disc in the middle (test)" in listing and "diffexplainer" in listing
    res = run_explain(ct["config"], ct["dicom"], tmp_path / "o", method="centre_test")
    (case,) = res.cases
    assert case.method == "centre_test" and case.case_dir.name.startswith("chest_centre_test_")
    assert {"heatmap", "strip", "explanation", "sc_overlay", "parametric_map"} <= set(case.files)
    heat = read_image(case.files["heatmap"]).array
    assert heat[case.grid.slice_indices].max() == 1.0 and heat.max() == 1.0
