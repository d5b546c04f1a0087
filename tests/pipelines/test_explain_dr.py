"""The explain job on fundus photographs (input: fundus) end to end with tiny untrained models: a phantom
photo, skimage's real retina.jpg, a DICOM photo (SC overlay in its study), bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM, save_ddpm
from medxai.networks.classifiers import TinyCNN
from medxai.training.checkpoint import save_weights
from pipelines.errors import StepError
from pipelines.explain import run_explain

SIZE = 32


def _retina_path() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "retina.jpg"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained tiny models on disk and a config that wires them (the job's plumbing is under test)."""
    import yaml
    from PIL import Image

    from dicom_io import StudyInfo, write_photo_dicom
    from medxai.phantoms import fundus_config, make_fundus_case

    root = tmp_path_factory.mktemp("dr")
    clf = TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(0))
    rob = TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(1))
    save_weights(root / "clf.safetensors", clf.state_dict())
    save_weights(root / "rob.safetensors", rob.state_dict())
    ddpm = ImageDDPM(DDPMNetConfig(image_size=SIZE, block_out_channels=(16, 32), norm_num_groups=8))
    save_ddpm(ddpm, root / "ddpm.safetensors")
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
        "image_size": SIZE,
        "classifier": {**spec, "path": "clf.safetensors"},  # relative to the config file
        "robust_classifier": {**spec, "path": "rob.safetensors"},
        "diffusion": {"path": "ddpm.safetensors"},
        "dvce": {
            "num_steps": 10,
            "skip_steps": 6,
            "batch_size": 2,
            "guidance": {"mode": "cone", "n_augmentations": 2, "grad_through_unet": False},
        },
    }
    (root / "dr.yaml").write_text(yaml.safe_dump(config))
    case = make_fundus_case(3, fundus_config("test"))
    Image.fromarray(np.asarray(case.rgb)).save(root / "phantom.png")
    Image.fromarray(np.asarray(case.rgb)[..., 1]).save(root / "grey.png")
    write_photo_dicom(np.ascontiguousarray(case.rgb), root / "phantom.dcm", StudyInfo(uid_seed="dr-photo", patient_id="DR-1"))
    return {
        "root": root,
        "config": root / "dr.yaml",
        "phantom": root / "phantom.png",
        "grey": root / "grey.png",
        "dicom": root / "phantom.dcm",
    }


def _check_outputs(case: Path, photo_shape: tuple[int, int]) -> dict:
    import nibabel as nib
    from PIL import Image

    meta = json.loads((case / "explanation.json").read_text())
    for name in meta["files"].values():
        assert (case / name).is_file(), name
    assert not [p for p in case.parent.iterdir() if ".partial" in p.name]
    with np.load(case / "counterfactuals.npz") as arrays:
        query, cf = arrays["query"], arrays["images"][0]
        assert query.shape == (3, SIZE, SIZE) and cf.shape == (3, SIZE, SIZE)
        assert np.isfinite(cf).all() and 0.0 <= cf.min() and cf.max() <= 1.0
    # DVCE changes only the field of view: outside it the counterfactual is the query
    outside = np.all(query < 0.05, axis=0) & np.all(np.abs(cf - query) < 1e-6, axis=0)
    assert outside.mean() > 0.05
    heat = np.asarray(nib.load(str(case / "heatmap.nii.gz")).dataobj)[..., 0].T  # (H, W) on the photo grid
    assert heat.shape == photo_shape and np.isfinite(heat).all() and heat.min() >= 0
    corner = heat[: photo_shape[0] // 20, : photo_shape[1] // 20]
    assert float(np.abs(corner).max()) == 0.0  # outside the circular FOV on the photo grid
    assert np.asarray(Image.open(case / "strip.png")).shape[0] >= SIZE
    assert len(meta["probabilities"]) == 2 and abs(sum(meta["probabilities"]) - 1) < 1e-6
    assert meta["sweep"]["steps"] == [1.0] and abs(sum(meta["sweep"]["probabilities"][0]) - 1) < 1e-6
    assert set(meta["diagnostics"]) >= {"robust_logits", "robust_counterfactual_logits", "target_reached"}
    assert meta["target_class"] == 0 and meta["provenance"]["seed"] == 0
    assert meta["parameters"]["guidance"]["mode"] == "cone"
    return meta


def test_explain_dr_on_phantom_photo(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    res = run_explain(tiny_setup["config"], tiny_setup["phantom"], tmp_path / "out")
    (case,) = res.cases
    assert case.case_dir.parent.parent.name.startswith("MEDXAI-UNLINKED_")  # a photo file: no patient to join
    _check_outputs(case.case_dir, (128, 128))
    assert case.target_class == 0 and case.method == "dvce" and "sc_overlay" not in case.files  # not DICOM: no SC


def test_explain_dr_on_dicom_photo_writes_an_sc_in_its_study(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    import pydicom

    from dicom_io import read_image

    res = run_explain(tiny_setup["config"], tiny_setup["dicom"], tmp_path / "out")
    (case,) = res.cases
    meta = _check_outputs(case.case_dir, (128, 128))
    photo = read_image(tiny_setup["dicom"])
    assert case.patient_id == "DR-1" and case.study_instance_uid == photo.source.study_instance_uid
    (sc,) = case.files["sc_overlay"].glob("*.dcm")
    ds = pydicom.dcmread(sc)
    assert ds.StudyInstanceUID == photo.source.study_instance_uid and "PixelData" in ds
    assert ds.Rows >= 128 and ds.Columns >= 128
    p = meta["probabilities"][0], meta["sweep"]["probabilities"][0][0]
    assert f"P(target): {p[0]:.3f} -> {p[1]:.3f}" in ds.DerivationDescription  # scores from the result
    assert meta["provenance"]["dicom"] == {"sc_overlay": "dicom/SC_overlay"}


def test_explain_dr_on_skimage_retina(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    path = _retina_path()
    if not path.is_file():
        pytest.skip("scikit-image's retina.jpg is not installed")
    from PIL import Image

    shape = Image.open(path).size[::-1]
    res = run_explain(tiny_setup["config"], path, tmp_path / "out", overrides={"dvce.num_steps": 6, "dvce.skip_steps": 4})
    _check_outputs(res.cases[0].case_dir, shape)


def test_explain_dr_bad_inputs(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    with pytest.raises(StepError, match="read input.*not an RGB"):
        run_explain(tiny_setup["config"], tiny_setup["grey"], tmp_path / "o1")
    with pytest.raises(StepError, match="explain.*out of range"):
        run_explain(tiny_setup["config"], tiny_setup["phantom"], tmp_path / "o2", overrides={"target_class": 5})
    cfg = yaml.safe_load(tiny_setup["config"].read_text())
    del cfg["diffusion"]
    (tiny_setup["root"] / "missing.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StepError, match="load models.*'dvce' needs the diffusion model.*no section 'diffusion'") as info:
        run_explain(tiny_setup["root"] / "missing.yaml", tiny_setup["phantom"], tmp_path / "o3")
    assert isinstance(info.value.__cause__, ValueError)
    cfg = yaml.safe_load(tiny_setup["config"].read_text())
    cfg["dvce"]["guidance"]["mode"] = "sideways"
    (tiny_setup["root"] / "badmode.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StepError, match="config.*guidance mode"):
        run_explain(tiny_setup["root"] / "badmode.yaml", tiny_setup["phantom"], tmp_path / "o4")
    with pytest.raises(ValueError, match="does not exist"):
        run_explain(tiny_setup["config"], tmp_path / "nope.png", tmp_path / "o5")
    from dicom_io import StudyInfo, Volume, write_ct_series

    write_ct_series(
        Volume(np.zeros((3, 8, 8), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
        tmp_path / "ct",
        StudyInfo(uid_seed="not-a-photo"),
    )
    with pytest.raises(StepError, match="read input.*is a Volume, not a photograph"):
        run_explain(tiny_setup["config"], tmp_path / "ct" / "CT000001.dcm", tmp_path / "o6")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


def test_cli_train_diffusion_and_classifiers(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from medxai.data import StackSet
    from pipelines.cli import app

    gen = np.random.default_rng(0)
    x = gen.random((8, 3, SIZE, SIZE)).astype(np.float32)
    y = np.array([0, 1] * 4)
    StackSet(
        x, y, np.zeros(8, np.float32), {"lesions": np.zeros((8, 1, SIZE, SIZE), np.float32)}, np.zeros(8, bool), np.arange(8)
    ).save(str(tmp_path / "data.npz"))
    ddpm_cfg = {
        "network": {"image_size": SIZE, "in_channels": 3, "block_out_channels": [16, 32], "norm_num_groups": 8},
        "training": {"steps": 2, "batch_size": 4, "lr": 0.001, "seed": 0},
    }
    (tmp_path / "ddpm.yaml").write_text(yaml.safe_dump(ddpm_cfg))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "diffusion",
            "-c",
            str(tmp_path / "ddpm.yaml"),
            "-o",
            str(tmp_path / "d.safetensors"),
            "--data",
            str(tmp_path / "data.npz"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d.safetensors").is_file() and (tmp_path / "d.json").is_file()
    spec = {
        "kind": "class_path",
        "class_path": "medxai.networks.classifiers:TinyCNN",
        "init_kwargs": {"in_channels": 3, "num_classes": 2, "width": 4},
        "num_classes": 2,
    }
    dr_cfg = {
        "input": "fundus",
        "method": "dvce",
        "target_class": 0,
        "seed": 0,
        "image_size": SIZE,
        "classifier": {**spec, "path": str(tmp_path / "c.safetensors")},
        "robust_classifier": {**spec, "path": str(tmp_path / "r.safetensors")},
        "diffusion": {"path": str(tmp_path / "d.safetensors")},
        "dvce": {},
        "train": {
            "classifier": {"steps": 2, "batch_size": 4, "lr": 0.001},
            "robust": {"method": "trades", "eps": 0.1, "steps": 1},
        },
    }
    (tmp_path / "dr.yaml").write_text(yaml.safe_dump(dr_cfg))
    for extra, name in (([], "c"), (["--robust"], "r")):
        args = ["train", "classifier", "-c", str(tmp_path / "dr.yaml"), "--data", str(tmp_path / "data.npz"), *extra]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"{name}.safetensors").is_file()
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["robust"]["method"] == "trades"
    res = runner.invoke(app, ["train", "classifier", "-c", str(tmp_path / "dr.yaml"), "--data", str(tmp_path / "nope.npz")])
    assert res.exit_code != 0 and "nope.npz" in res.output + str(res.exception)


def test_explain_cli_on_a_fundus_config(tiny_setup, tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["explain", "-c", str(tiny_setup["config"]), "-i", str(tiny_setup["phantom"]), "-o", str(out)]) == 0
    (case,) = out.glob("*/*/*")
    assert (case / "counterfactuals.npz").is_file() and (case / "explanation.json").is_file()
    printed = " ".join(capsys.readouterr().out.split())
    assert "wrote" in printed and "P(class 0)" in printed and "on the counterfactuals: +1:" in printed


def test_explain_cli_unknown_input_kind(tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    (tmp_path / "c.yaml").write_text("input: nonsense\nseed: 0\n")
    (tmp_path / "in").mkdir()
    assert main(["explain", "-c", str(tmp_path / "c.yaml"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "nonsense" in err and "ct_stack" in err and "fundus" in err and "Traceback" not in err
    (tmp_path / "old.yaml").write_text("type: dvce_fundus\nseed: 0\n")
    assert main(["explain", "-c", str(tmp_path / "old.yaml"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2
    assert "input: fundus" in " ".join(capsys.readouterr().err.split())
