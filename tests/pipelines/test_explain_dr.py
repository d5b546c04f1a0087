"""The DR explain job end to end with tiny models: a phantom photo, skimage's real retina.jpg, bad input."""

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
from pipelines.explain_dr import run_dr_explain

SIZE = 32


def _retina_path() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "retina.jpg"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained tiny models on disk and a config that wires them (the job's plumbing is under test)."""
    import yaml
    from PIL import Image

    from medxai.phantoms import fundus_config, make_fundus_case

    root = tmp_path_factory.mktemp("dr")
    clf = TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(0))
    rob = TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(1))
    save_weights(root / "clf.safetensors", clf.state_dict())
    save_weights(root / "rob.safetensors", rob.state_dict())
    ddpm = ImageDDPM(DDPMNetConfig(image_size=SIZE, block_out_channels=(16, 32), norm_num_groups=8))
    save_ddpm(ddpm, root / "ddpm.safetensors")
    spec = {"kind": "class_path", "class_path": "medxai.networks.classifiers:TinyCNN",
            "init_kwargs": {"in_channels": 3, "num_classes": 2, "width": 4}, "num_classes": 2}
    config = {
        "type": "dvce_fundus",
        "seed": 0,
        "image_size": SIZE,
        "classifier": {**spec, "path": str(root / "clf.safetensors")},
        "robust_classifier": {**spec, "path": str(root / "rob.safetensors")},
        "diffusion": {"path": str(root / "ddpm.safetensors")},
        "dvce": {"target_class": 0, "num_steps": 10, "skip_steps": 6, "batch_size": 2,
                 "guidance": {"mode": "cone", "n_augmentations": 2, "grad_through_unet": False}},
    }
    (root / "dr.yaml").write_text(yaml.safe_dump(config))
    case = make_fundus_case(3, fundus_config("test"))
    Image.fromarray(np.asarray(case.rgb)).save(root / "phantom.png")
    Image.fromarray(np.asarray(case.rgb)[..., 1]).save(root / "grey.png")
    return {"root": root, "config": root / "dr.yaml", "phantom": root / "phantom.png", "grey": root / "grey.png"}


def _check_outputs(out: Path, photo_shape: tuple[int, int]) -> None:
    from PIL import Image

    summary = json.loads((out / "dvce.json").read_text())
    for name in summary["files"].values():
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))
    arrays = np.load(out / "arrays.npz")
    assert arrays["query"].shape == (3, SIZE, SIZE) and arrays["counterfactual"].shape == (3, SIZE, SIZE)
    for key in arrays.files:
        assert np.isfinite(arrays[key]).all(), key
    fov = arrays["fov"] > 0.5
    assert 0.3 < fov.mean() < 1.0
    assert float(np.abs(arrays["heatmap"][~fov]).max()) == 0.0  # FOV respected
    np.testing.assert_array_equal(arrays["counterfactual"][:, ~fov], arrays["query"][:, ~fov])
    assert 0.0 <= arrays["counterfactual"].min() and arrays["counterfactual"].max() <= 1.0
    heat_photo = np.load(out / "heatmap_photo.npy")
    assert heat_photo.shape == photo_shape and np.isfinite(heat_photo).all() and heat_photo.min() >= 0
    corner = heat_photo[: photo_shape[0] // 20, : photo_shape[1] // 20]
    assert float(np.abs(corner).max()) == 0.0  # outside the circular FOV on the photo grid
    assert np.asarray(Image.open(out / "counterfactual.png")).shape == (SIZE, SIZE, 3)
    assert np.asarray(Image.open(out / "heatmap_photo.png")).shape == photo_shape
    scores = summary["scores"]
    for key in ("classifier_query", "classifier_counterfactual", "robust_query", "robust_counterfactual"):
        assert len(scores[key]) == 2 and abs(sum(scores[key]) - 1) < 1e-4
    assert summary["target_class"] == 0 and summary["seed"] == 0
    assert summary["parameters"]["guidance"]["mode"] == "cone"


def test_explain_dr_on_phantom_photo(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    res = run_dr_explain(tiny_setup["config"], tiny_setup["phantom"], tmp_path / "out", dicom=True)
    _check_outputs(tmp_path / "out", (128, 128))
    assert res.target_class == 0 and isinstance(res.target_reached, bool)
    import pydicom

    ds = pydicom.dcmread(res.files["dicom"])
    assert ds.SOPClassUID and "PixelData" in ds  # a Secondary Capture overlay (photo + legend) was written
    assert ds.Rows >= 128 and ds.Columns >= 128


def test_explain_dr_on_skimage_retina(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    path = _retina_path()
    if not path.is_file():
        pytest.skip("scikit-image's retina.jpg is not installed")
    from PIL import Image

    shape = Image.open(path).size[::-1]
    run_dr_explain(tiny_setup["config"], path, tmp_path / "out", overrides={"dvce.num_steps": 6, "dvce.skip_steps": 4})
    _check_outputs(tmp_path / "out", shape)


def test_explain_dr_bad_inputs(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(StepError, match="read photo.*not an RGB"):
        run_dr_explain(tiny_setup["config"], tiny_setup["grey"], tmp_path / "o1")
    with pytest.raises(StepError, match="out of range"):
        run_dr_explain(tiny_setup["config"], tiny_setup["phantom"], tmp_path / "o2", target_class=5)
    import yaml

    cfg = yaml.safe_load(tiny_setup["config"].read_text())
    del cfg["diffusion"]
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StepError, match="load config.*'diffusion'") as info:
        run_dr_explain(tmp_path / "missing.yaml", tiny_setup["phantom"], tmp_path / "o3")
    assert isinstance(info.value.__cause__, ValueError)
    cfg = yaml.safe_load(tiny_setup["config"].read_text())
    cfg["dvce"]["guidance"]["mode"] = "sideways"
    (tmp_path / "badmode.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StepError, match="guidance mode"):
        run_dr_explain(tmp_path / "badmode.yaml", tiny_setup["phantom"], tmp_path / "o4")
    with pytest.raises(StepError, match="read photo"):
        run_dr_explain(tiny_setup["config"], tmp_path / "nope.png", tmp_path / "o5")


def test_cli_train_diffusion_and_classifiers(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from medxai.data import StackSet
    from pipelines.cli import app

    gen = np.random.default_rng(0)
    x = gen.random((8, 3, SIZE, SIZE)).astype(np.float32)
    y = np.array([0, 1] * 4)
    StackSet(x, y, np.zeros(8, np.float32), {"lesions": np.zeros((8, 1, SIZE, SIZE), np.float32)}, np.zeros(8, bool),
             np.arange(8)).save(str(tmp_path / "data.npz"))
    ddpm_cfg = {
        "network": {"image_size": SIZE, "in_channels": 3, "block_out_channels": [16, 32], "norm_num_groups": 8},
        "training": {"steps": 2, "batch_size": 4, "lr": 0.001, "seed": 0},
    }
    (tmp_path / "ddpm.yaml").write_text(yaml.safe_dump(ddpm_cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "diffusion", "-c", str(tmp_path / "ddpm.yaml"), "-o", str(tmp_path / "d.safetensors"),
                              "--data", str(tmp_path / "data.npz")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d.safetensors").is_file() and (tmp_path / "d.json").is_file()
    spec = {"kind": "class_path", "class_path": "medxai.networks.classifiers:TinyCNN",
            "init_kwargs": {"in_channels": 3, "num_classes": 2, "width": 4}, "num_classes": 2}
    dr_cfg = {
        "seed": 0, "image_size": SIZE,
        "classifier": {**spec, "path": str(tmp_path / "c.safetensors")},
        "robust_classifier": {**spec, "path": str(tmp_path / "r.safetensors")},
        "diffusion": {"path": str(tmp_path / "d.safetensors")},
        "dvce": {"target_class": 0},
        "train": {"classifier": {"steps": 2, "batch_size": 4, "lr": 0.001}, "robust": {"method": "trades", "eps": 0.1, "steps": 1}},
    }
    (tmp_path / "dr.yaml").write_text(yaml.safe_dump(dr_cfg))
    for extra, name in (([], "c"), (["--robust"], "r")):
        res = runner.invoke(app, ["train", "classifier", "-c", str(tmp_path / "dr.yaml"), "--data", str(tmp_path / "data.npz"), *extra])
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"{name}.safetensors").is_file()
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["robust"]["method"] == "trades"
    res = runner.invoke(app, ["train", "classifier", "-c", str(tmp_path / "dr.yaml"), "--data", str(tmp_path / "nope.npz")])
    assert res.exit_code != 0 and "nope.npz" in res.output + str(res.exception)


def test_explain_cli_dispatches_on_config_type(tiny_setup, tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["explain", "-c", str(tiny_setup["config"]), "-i", str(tiny_setup["phantom"]), "-o", str(out)]) == 0
    assert (out / "counterfactual.png").is_file() and (out / "dvce.json").is_file()
    assert "wrote" in capsys.readouterr().out


def test_explain_cli_unknown_config_type(tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    (tmp_path / "c.yaml").write_text("type: nonsense\n")
    assert main(["explain", "-c", str(tmp_path / "c.yaml"), "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "dvce_fundus" in err and "Traceback" not in err
