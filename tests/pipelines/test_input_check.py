"""Is the input what the models were trained for? ``medxai explain`` refuses a head CT, an MR series and
a non-fundus photo (exit 2, naming the failed checks), explains them with ``--force`` keeping the reasons
(``explanation.json`` ``provenance.input_check``), and lets the phantom chest CT through every check. The
CT job runs the SHIPPED models at 5/5 DDIM steps (a reference is recorded for them in medxai/pretrained/ct/autoencoder.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_models import write_tiny_diffae_config

from dicom_io import StudyInfo, Volume, write_ct_series
from medxai.config import ConfigError, load_config
from medxai.metrics.latent import LatentReference, latent_distance, latent_reference_from_sidecar, record_latent_reference
from medxai.metrics.reconstruction import (
    ReconstructionReference,
    find_reference,
    reconstruction_mse,
    record_reference,
    references_from_sidecar,
)
from medxai.phantoms import ct_config, make_ct_case
from pipelines.cli import EXIT_BAD_INPUT, main
from pipelines.input_check import CTInputLimits, FundusInputLimits, InputCheckError, target_note
from pipelines.pretrained import pretrained_dir, pretrained_overrides

REPO = Path(__file__).resolve().parents[2]
STEPS = 5  # the shipped autoencoder has a reference at 5/5 steps (scripts/make_pretrained.py)


def head_ct(matrix: int = 64, n_slices: int = 32, fov: float = 240.0, dz: float = 5.0, seed: int = 0) -> Volume:
    """A head-like CT in HU: skull (1200 HU) around brain (35 HU), two small air-filled sinuses, no lungs."""
    rng = np.random.default_rng(seed)
    s = fov / matrix
    c = (np.arange(matrix) - (matrix - 1) / 2) * s
    yy, xx = np.meshgrid(c, c, indexing="ij")
    zc = (np.arange(n_slices) - (n_slices - 1) / 2) * dz
    hu = np.full((n_slices, matrix, matrix), -1000.0, np.float32)
    for k, z in enumerate(zc):
        f = np.sqrt(max(0.0, 1 - (z / 95.0) ** 2))
        a, b = 75 * f, 92 * f
        hu[k][(xx / (a + 1e-6)) ** 2 + (yy / (b + 1e-6)) ** 2 <= 1] = 1200.0
        hu[k][(xx / max(a - 7, 1e-6)) ** 2 + (yy / max(b - 7, 1e-6)) ** 2 <= 1] = 35.0
        for sx in (-18.0, 18.0):  # maxillary-sinus-like air pockets, anterior and low
            hu[k][((xx - sx) / 12) ** 2 + ((yy + 55) / 10) ** 2 + ((z + 40) / 15) ** 2 <= 1] = -950.0
    hu += rng.normal(0, 8, hu.shape).astype(np.float32)
    return Volume(hu, (s, s, dz), (float(c[0]), float(c[0]), float(zc[0])))


def chest_ct(seed: int = 3) -> Volume:
    case = make_ct_case(seed, ct_config("test", n_slices=24, matrix=64, vessel_points=40))
    return Volume(np.asarray(case.hu, dtype=np.float32), case.spacing, case.origin)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("input_check")
    write_ct_series(chest_ct(), root / "chest", StudyInfo(uid_seed="chest"))
    write_ct_series(head_ct(), root / "head", StudyInfo(uid_seed="head", body_part="HEAD"))
    write_ct_series(chest_ct(), root / "mr", StudyInfo(uid_seed="mr", extra={"Modality": "MR"}))
    cfg = yaml.safe_load((REPO / "configs" / "ct_prognosis.yaml").read_text())
    cfg["run_dir"] = str(root / "run")
    cfg["autoencoder"]["config"] = str(REPO / "configs" / cfg["autoencoder"]["config"])
    for key, path in pretrained_overrides("ct").items():
        section, field = key.split(".")
        cfg[section][field] = path
    cfg["diffexplainer"].update(step_sizes=[0.8], heatmap_step=0.8, encode_steps=STEPS, decode_steps=STEPS)
    cfg["input_check"] = {"already_target_p": 0.5}  # every query the teacher calls class 1 gets the note
    (root / "ct.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "config": root / "ct.yaml"}


def _explain(ct: dict[str, Path], series: str, out: str, *extra: str) -> int:
    args = ["--config", str(ct["config"]), "--input", str(ct["root"] / series), "-o", str(ct["root"] / out)]
    return main(["explain", *args, *extra])


def _meta(out: Path) -> dict:
    (case_dir,) = [p for p in out.glob("*/*/*") if not p.name.startswith(".")]
    return json.loads((case_dir / "explanation.json").read_text())


def test_head_ct_is_refused_naming_the_lung_check(ct: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = _explain(ct, "head", "head_out")
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_BAD_INPUT, err
    assert "does not look like what the models were trained for (chest CT series)" in err
    assert "lung volume" in err and "(expected >= 1000 mL)" in err
    assert "field of view 240 mm (expected 250-600 mm)" in err
    assert "--force" in err and "Traceback" not in err
    assert not (ct["root"] / "head_out").exists() or not any((ct["root"] / "head_out").iterdir())


def test_head_ct_goes_through_with_force_keeping_the_reasons(ct: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert _explain(ct, "head", "head_forced", "--force") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "input check FAILED, explained because of --force" in text and "lung volume" in text
    check = _meta(ct["root"] / "head_forced")["provenance"]["input_check"]
    assert check["passed"] is False and check["forced"] is True
    # the head's semantic code is far from the chest reference codes too (3.5 vs a limit of 3.4)
    assert set(check["failed"]) == {"lung_volume", "field_of_view", "latent_distance"}
    lung = {c["name"]: c for c in check["checks"]}["lung_volume"]
    assert lung["pass"] is False and 0 < lung["value"] < 1000 and lung["unit"] == "mL"


def test_mr_series_is_refused(ct: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = _explain(ct, "mr", "mr_out")
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_BAD_INPUT, err
    assert "modality MR (expected CT)" in err


def test_chest_phantom_passes_every_check(ct: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert _explain(ct, "chest", "chest_out") == 0
    text = capsys.readouterr().out
    assert "input check FAILED" not in text
    meta = _meta(ct["root"] / "chest_out")
    check = meta["provenance"]["input_check"]
    assert check["passed"] is True and check["forced"] is False and check["failed"] == []
    by_name = {c["name"]: c for c in check["checks"]}
    assert set(by_name) == {
        "modality",
        "slices",
        "field_of_view",
        "scan_length",
        "lung_volume",
        "reconstruction_error",
        "latent_distance",
    }
    assert all(c["pass"] is True for c in check["checks"]), check  # the reconstruction and latent checks ran against references
    assert by_name["lung_volume"]["value"] > 1000
    assert 0 < by_name["latent_distance"]["value"] < 1.5  # about 1 in distribution (this phantom: 0.3-0.8)
    assert "+ 3 sd over 40 phantom 'test' cases, seed 5" in by_name["latent_distance"]["expected"]
    # the "already in the target class" note follows the teacher's own probability (threshold 0.5 here)
    p1 = meta["probabilities"][1]
    assert p1 >= 0.5  # the shipped teacher gives this phantom P(class 1) = 0.76
    assert meta["provenance"]["notes"] == [
        f"the teacher already gives P(class 1) = {p1:.2f} for this query; the 'more likely' counterfactual (z+) has little room"
    ]
    assert "note: the teacher already gives P(class 1)" in " ".join(text.split())


def test_reconstruction_error_outside_the_reference_is_refused(ct: dict[str, Path]) -> None:
    """The autoencoder's side-car reference, recorded (for this test) on head-like stacks, refuses the chest
    phantom after the explainer's own reconstruction: the job stops before writing anything.

    (With the shipped chest reference, a head CT or a noisy chest CT reconstructs as well as the training
    cases do -- DDIM inversion reproduces almost any image from its stochastic code -- so there the lung
    check, not this one, is what refuses a head CT.)"""
    import shutil

    from medxai.diffusion import load_autoencoder
    from medxai.metrics.reconstruction import reconstruction_reference
    from medxai.transforms import CTStackConfig, CTStackTransform
    from pipelines.explain import run_explain

    weights = ct["root"] / "head_ae" / "autoencoder.safetensors"
    weights.parent.mkdir()
    shutil.copy(pretrained_dir() / "ct" / "autoencoder.safetensors", weights)
    meta = json.loads((pretrained_dir() / "ct" / "autoencoder.json").read_text())
    meta.pop("reconstruction_error")
    weights.with_suffix(".json").write_text(json.dumps(meta))
    tf = CTStackTransform(CTStackConfig(size=64))
    heads = np.stack(
        [np.asarray(tf(v.array, v.spacing, v.origin, np.eye(3))["image"]) for v in (head_ct(seed=k) for k in range(4, 8))]
    )
    ref = reconstruction_reference(load_autoencoder(weights), heads, STEPS, STEPS, cases="head-like stacks")
    record_reference(weights.with_suffix(".json"), ref)
    config = yaml.safe_load(ct["config"].read_text())
    config["autoencoder"]["path"] = str(weights)
    (ct["root"] / "head_ae.yaml").write_text(yaml.safe_dump(config))

    with pytest.raises(
        InputCheckError,
        match=r"refused after reconstructing it.*reconstruction error [0-9.]+ MSE "
        r"\(expected <= [0-9.]+ \(mean [0-9.]+ \+ 4 sd over 4 head-like stacks\)\)",
    ) as info:
        run_explain(ct["root"] / "head_ae.yaml", ct["root"] / "chest", ct["root"] / "recon_out")
    (result,) = info.value.results
    assert [c.name for c in result.failed] == ["reconstruction_error"]
    assert result.failed[0].value > ref.upper_limit(4)
    assert not (ct["root"] / "recon_out").exists() or not any((ct["root"] / "recon_out").iterdir())
    # forced, the case is explained and the reason kept
    res = run_explain(ct["root"] / "head_ae.yaml", ct["root"] / "chest", ct["root"] / "recon_forced", force=True)
    assert res.cases[0].input_check["failed"] == ["reconstruction_error"]
    assert _meta(ct["root"] / "recon_forced")["provenance"]["input_check"]["forced"] is True


def test_head_ct_is_refused_by_the_latent_check_alone(ct: dict[str, Path]) -> None:
    """With every other limit loosened (lung volume, field of view, reconstruction error) in the config's
    input_check section, the head-like CT is still refused: its semantic code is far from the chest
    reference codes in the shipped side-car. Forced, the reason is kept in explanation.json."""
    from pipelines.explain import run_explain

    config = yaml.safe_load(ct["config"].read_text())
    config["input_check"] = {"min_lung_volume_ml": 0, "fov_mm": [100, 600], "recon_sd_k": 1e6}
    path = ct["root"] / "latent_only.yaml"
    path.write_text(yaml.safe_dump(config))
    ref = latent_reference_from_sidecar(json.loads((pretrained_dir() / "ct" / "autoencoder.json").read_text()))
    assert ref is not None
    limit = ref.upper_limit(3.0)

    with pytest.raises(
        InputCheckError,
        match=rf"refused after reconstructing it.*latent distance [0-9.]+ \(expected <= "
        rf"{limit:.3g} \(mean {ref.mean:.3g} \+ 3 sd over 40 phantom 'test' cases, seed 5\)\): the "
        r"autoencoder's semantic code of the query is far",
    ) as info:
        run_explain(path, ct["root"] / "head", ct["root"] / "latent_out")
    (result,) = info.value.results
    assert [c.name for c in result.failed] == ["latent_distance"]
    by_name = {c.name: c for c in result.checks}
    assert by_name["lung_volume"].passed is True and by_name["reconstruction_error"].passed is True
    assert by_name["latent_distance"].value > limit > 3.0  # head-like CT: 3.5
    assert not (ct["root"] / "latent_out").exists() or not any((ct["root"] / "latent_out").iterdir())

    res = run_explain(path, ct["root"] / "head", ct["root"] / "latent_forced", force=True)
    assert res.cases[0].input_check["failed"] == ["latent_distance"]
    check = _meta(ct["root"] / "latent_forced")["provenance"]["input_check"]
    assert check["forced"] is True and check["failed"] == ["latent_distance"]
    latent = {c["name"]: c for c in check["checks"]}["latent_distance"]
    assert latent["pass"] is False and latent["value"] == pytest.approx(by_name["latent_distance"].value)


def test_latent_check_without_a_reference_is_not_run(ct: dict[str, Path], tmp_path: Path) -> None:
    """An autoencoder side-car without "latent_distance" (e.g. trained before this check existed): the
    check reports pass null with the reason and refuses nothing."""
    import shutil

    from pipelines.explain import run_explain

    weights = tmp_path / "autoencoder.safetensors"
    shutil.copy(pretrained_dir() / "ct" / "autoencoder.safetensors", weights)
    meta = json.loads((pretrained_dir() / "ct" / "autoencoder.json").read_text())
    meta.pop("latent_distance")
    weights.with_suffix(".json").write_text(json.dumps(meta))
    config = yaml.safe_load(ct["config"].read_text())
    config["autoencoder"]["path"] = str(weights)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    res = run_explain(tmp_path / "c.yaml", ct["root"] / "chest", tmp_path / "out")
    latent = {c["name"]: c for c in res.cases[0].input_check["checks"]}["latent_distance"]
    assert latent["pass"] is None and latent["value"] is None
    assert "no latent reference in" in latent["note"] and "--latent-reference-only" in latent["note"]


def test_latent_reference_is_scored_leave_one_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 6)) * np.arange(1, 7) + 5
    ref = LatentReference.from_latents(z, "synthetic")
    np.testing.assert_allclose(ref.latent_mean, z.mean(0))
    np.testing.assert_allclose(ref.latent_sd, z.std(0, ddof=1))
    loo = [latent_distance(z[i : i + 1], np.delete(z, i, 0).mean(0), np.delete(z, i, 0).std(0, ddof=1))[0] for i in range(12)]
    assert ref.mean == pytest.approx(np.mean(loo)) and ref.max == pytest.approx(np.max(loo))
    assert ref.sd == pytest.approx(np.std(loo, ddof=1))
    # in-sample every case is part of its own statistics: mean exactly (n-1)/n, below the leave-one-out mean
    assert ref.distance(z).mean() == pytest.approx(11 / 12) and ref.mean > 1.0
    assert ref.upper_limit(3) == pytest.approx(ref.mean + 3 * ref.sd)
    side = tmp_path / "ae.json"
    side.write_text(json.dumps({"kind": "diffae"}))
    record_latent_reference(side, ref)
    back = latent_reference_from_sidecar(json.loads(side.read_text()))
    assert back is not None and back.n == 12 and back.dim == 6 and back.cases == "synthetic"
    np.testing.assert_allclose(back.distance(z), ref.distance(z), rtol=1e-6)
    with pytest.raises(ValueError, match="z has 5 dimensions but the reference has 6"):
        ref.distance(z[:, :5])
    assert latent_reference_from_sidecar({"kind": "diffae"}) is None


def test_limits_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"input_check": {"min_lung_volume_ml": 500, "fov_mm": [200, 700]}}))
    limits = CTInputLimits.from_config(load_config(path))
    assert limits.min_lung_volume_ml == 500 and limits.fov_mm == (200.0, 700.0) and limits.min_slices == 8
    path.write_text(yaml.safe_dump({"input_check": {"min_lung_ml": 500}}))
    with pytest.raises(ConfigError, match=r"c\.yaml: section 'input_check'.*min_lung_ml.*min_lung_volume_ml"):
        CTInputLimits.from_config(load_config(path))
    path.write_text("seed: 0\n")  # no section: the documented defaults
    assert FundusInputLimits.from_config(load_config(path)) == FundusInputLimits()


def test_target_note() -> None:
    assert target_note([0.01, 0.99], 1, 0.9) == (
        "the teacher already gives P(class 1) = 0.99 for this query; the counterfactual towards class 1 has little room"
    )
    assert target_note([0.2, 0.8], 1, 0.9) is None


def test_reconstruction_reference_sidecar(tmp_path: Path) -> None:
    x = torch.zeros(3, 4, 8, 8)
    r = x.clone()
    r[1] += 0.1
    np.testing.assert_allclose(reconstruction_mse(x, r), [0.0, 0.01, 0.0], atol=1e-12)
    side = tmp_path / "ae.json"
    side.write_text(json.dumps({"kind": "diffae"}))
    a = ReconstructionReference.from_errors([0.01, 0.02, 0.03], 20, 20, "a")
    record_reference(side, a)
    record_reference(side, ReconstructionReference.from_errors([0.1, 0.2], 5, 5, "b"))
    record_reference(side, ReconstructionReference.from_errors([0.02, 0.04], 20, 20, "c"))  # replaces a
    meta = json.loads(side.read_text())
    assert meta["kind"] == "diffae"
    refs = references_from_sidecar(meta)
    assert [(r.encode_steps, r.cases) for r in refs] == [(20, "c"), (5, "b")]
    assert find_reference(refs, 20, 20).mean == pytest.approx(0.03)  # type: ignore[union-attr]
    assert find_reference(refs, 10, 10) is None
    assert a.upper_limit(4) == pytest.approx(0.02 + 4 * 0.01)


def test_shipped_autoencoder_has_references() -> None:
    meta = json.loads((pretrained_dir() / "ct" / "autoencoder.json").read_text())
    refs = references_from_sidecar(meta)
    assert {(r.encode_steps, r.decode_steps) for r in refs} >= {(20, 20), (STEPS, STEPS)}
    assert all(r.n >= 20 and 0 < r.mean < r.upper_limit(4) for r in refs)
    latent = latent_reference_from_sidecar(meta)
    assert latent is not None and latent.n == 40 and latent.cases == "phantom 'test' cases, seed 5"
    assert latent.dim == 4 * meta["network"]["z_dim"]  # the combined latent of the four-slice stack
    assert all(s > 0 for s in latent.latent_sd)
    assert 0.9 < latent.mean < 1.3 and latent.p95 <= latent.p99 <= latent.max < latent.upper_limit(3)


def test_train_autoencoder_records_its_reference(tmp_path: Path) -> None:
    from medxai.training.ct import load_ct_config, train_autoencoder_from_config

    write_tiny_diffae_config(tmp_path, steps=2)
    cfg = {
        "input": "ct_stack",
        "method": "diffexplainer",
        "target_class": 1,
        "seed": 0,
        "run_dir": str(tmp_path / "run"),
        "stack": {"size": 32},
        "teacher": {
            "kind": "class_path",
            "path": str(tmp_path / "t.safetensors"),
            "class_path": "medxai.networks.classifiers:TinyCNN",
            "init_kwargs": {"in_channels": 4, "num_classes": 2, "width": 4},
            "num_classes": 2,
        },
        "autoencoder": {"config": "diffae.yaml", "path": str(tmp_path / "ae.safetensors")},
        "agent": {"path": str(tmp_path / "agent.safetensors")},
        "diffexplainer": {"step_sizes": [1.0], "encode_steps": 3, "decode_steps": 2},
        "data": {"source": "phantom", "n_train": 3, "n_test": 3, "seed_train": 11, "seed_test": 12, "phantom": "test"},
    }
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump(cfg))
    result = train_autoencoder_from_config(load_ct_config(tmp_path / "ct.yaml"))
    refs = references_from_sidecar(json.loads((tmp_path / "ae.json").read_text()))
    assert len(refs) == 1 and (refs[0].encode_steps, refs[0].decode_steps) == (3, 2)
    assert refs[0].n == 3 and refs[0].cases == "held-out cases" and refs[0].mean > 0
    assert result["reconstruction_error"]["mean"] == refs[0].mean
    latent = latent_reference_from_sidecar(json.loads((tmp_path / "ae.json").read_text()))
    assert latent is not None and latent.n == 3 and latent.cases == "held-out cases" and latent.dim == 4 * 8
    assert result["latent_distance"]["mean"] == latent.mean and "latent_mean" not in result["latent_distance"]


# ------------------------------------------------------------------------------------------ fundus
@pytest.fixture(scope="module")
def dr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny untrained DR models (the job's checks are under test), a phantom photo and a non-fundus photo."""
    import skimage
    from PIL import Image

    from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM, save_ddpm
    from medxai.networks.classifiers import TinyCNN
    from medxai.phantoms import fundus_config, make_fundus_case
    from medxai.training.checkpoint import save_weights

    root = tmp_path_factory.mktemp("dr_check")
    save_weights(root / "clf.safetensors", TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(0)).state_dict())
    save_ddpm(ImageDDPM(DDPMNetConfig(image_size=32, block_out_channels=(16, 32), norm_num_groups=8)), root / "ddpm.safetensors")
    spec = {
        "kind": "class_path",
        "class_path": "medxai.networks.classifiers:TinyCNN",
        "init_kwargs": {"in_channels": 3, "num_classes": 2, "width": 4},
        "num_classes": 2,
    }
    config = {
        "input": "fundus",
        "method": "dvce",
        "target_class": 0,
        "seed": 0,
        "image_size": 32,
        "classifier": {**spec, "path": str(root / "clf.safetensors")},
        "diffusion": {"path": str(root / "ddpm.safetensors")},
        "dvce": {
            "num_steps": 4,
            "skip_steps": 2,
            "batch_size": 2,
            "guidance": {"mode": "plain", "n_augmentations": 1, "grad_through_unet": False},
        },
    }
    (root / "dr.yaml").write_text(yaml.safe_dump(config))
    Image.fromarray(np.asarray(make_fundus_case(3, fundus_config("test")).rgb)).save(root / "fundus.png")
    Image.fromarray(skimage.data.coffee()).save(root / "coffee.png")
    return {"root": root, "config": root / "dr.yaml"}


def test_non_fundus_photo_is_refused_then_forced(dr: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["explain", "--config", str(dr["config"]), "--input", str(dr["root"] / "coffee.png")]
    code = main([*args, "-o", str(dr["root"] / "coffee_out")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_BAD_INPUT, err
    assert "colour fundus photograph" in err and "fov surround dark" in err and "(expected >= 0.8)" in err
    assert not (dr["root"] / "coffee_out").exists()
    assert main([*args, "-o", str(dr["root"] / "coffee_forced"), "--force"]) == 0
    assert "input check FAILED, explained because of --force" in capsys.readouterr().out
    check = _meta(dr["root"] / "coffee_forced")["provenance"]["input_check"]
    assert check["forced"] is True and check["failed"] == ["fov_surround_dark"]


def test_fundus_phantom_passes(dr: dict[str, Path]) -> None:
    from pipelines.explain import run_explain

    res = run_explain(dr["config"], dr["root"] / "fundus.png", dr["root"] / "fundus_out")
    (case,) = res.cases
    assert case.input_check["passed"] is True and case.input_check["forced"] is False
    assert {c["name"] for c in case.input_check["checks"]} == {"photo_size", "fov_fraction", "fov_surround_dark"}
    prov = _meta(dr["root"] / "fundus_out")["provenance"]
    assert prov["input_check"]["passed"] is True and isinstance(prov["notes"], list)
