"""`medxai explain` (DiffExplainer) end to end on a tiny DICOM series with tiny untrained models, and its
bad-config errors. Every other method and the shipped models: test_explain_methods.py."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from tiny_models import TINY_DIFFAE_NET, write_tiny_diffae_config

from dicom_io import StudyInfo, Volume, read_series, write_ct_series
from medxai.diffusion import DiffusionAutoencoder, save_autoencoder
from medxai.networks.agent import Agent, save_agent
from medxai.networks.classifiers import TinyCNN
from medxai.networks.diffae import DiffAENet, DiffAENetConfig
from medxai.phantoms import ct_config, make_ct_case
from medxai.training.checkpoint import save_weights
from pipelines.cli import EXIT_BAD_INPUT, main

NET = TINY_DIFFAE_NET


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain_ct")
    case = make_ct_case(3, ct_config("test", n_slices=24, matrix=64, vessel_points=40))
    vol = Volume(np.asarray(case.hu, dtype=np.float32), case.spacing, case.origin)
    write_ct_series(vol, root / "dicom", StudyInfo(uid_seed="explain-ct"))
    # tiny models: untrained teacher and autoencoder, agent with the teacher's head
    teacher = TinyCNN(4, 2, width=4)
    save_weights(root / "teacher.safetensors", teacher.state_dict())
    ae = DiffusionAutoencoder(DiffAENet(DiffAENetConfig.from_dict(NET)))
    save_autoencoder(ae, root / "ae.safetensors")
    agent = Agent(4 * NET["z_dim"], 16, 2, teacher.head)
    agent.set_latent_stats(torch.randn(16, 4 * NET["z_dim"], generator=torch.Generator().manual_seed(0)))
    save_agent(agent, root / "agent.safetensors")
    write_tiny_diffae_config(root, steps=10)
    config = {
        "input": "ct_stack",
        "method": "diffexplainer",
        "target_class": 1,
        "seed": 0,
        "run_dir": str(root / "run"),
        "stack": {"size": 32},
        "teacher": {
            "kind": "class_path",
            "path": str(root / "teacher.safetensors"),
            "class_path": "medxai.networks.classifiers:TinyCNN",
            "init_kwargs": {"in_channels": 4, "num_classes": 2, "width": 4},
            "num_classes": 2,
            "classifier_layer": "head",
        },
        "autoencoder": {"config": "diffae.yaml", "path": str(root / "ae.safetensors")},
        "agent": {"path": str(root / "agent.safetensors")},
        "diffexplainer": {"step_sizes": [1.0, 2.0], "encode_steps": 4, "decode_steps": 4, "batch_size": 64},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "dicom": root / "dicom", "config": root / "config.yaml", "raw": config}  # type: ignore[dict-item]


def test_explain_writes_files_on_the_ct_grid(setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "out"
    assert main(["explain", "--config", str(setup["config"]), "--input", str(setup["dicom"]), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "heatmap.nii.gz" in text and "P(class 1)" in text
    (case_dir,) = [p for p in out.glob("*/*/*") if not p.name.startswith(".")]
    for name in (
        "heatmap.nii.gz",
        "difference_plus.nii.gz",
        "difference_minus.nii.gz",
        "counterfactuals.npz",
        "counterfactual_plus.nii.gz",
        "counterfactual_minus.nii.gz",
        "strip.png",
        "explanation.json",
    ):
        assert (case_dir / name).is_file(), name
    ct = read_series(setup["dicom"])
    img = nib.load(str(case_dir / "heatmap.nii.gz"))
    assert img.shape == ct.array.shape[::-1]  # NIfTI (x, y, z) on the CT grid
    np.testing.assert_allclose(img.affine, ct.affine_ras, atol=1e-4)
    meta = json.loads((case_dir / "explanation.json").read_text())
    idx = meta["provenance"]["slice_indices"]
    heat = np.asarray(img.dataobj).transpose(2, 1, 0)
    others = np.setdiff1d(np.arange(heat.shape[0]), idx)
    assert np.all(heat[others] == 0) and np.all(np.isfinite(heat))
    assert len(meta["probabilities"]) == 2 and abs(sum(meta["probabilities"]) - 1) < 1e-6
    sweep = meta["sweep"]
    assert sweep["steps"] == [-2.0, -1.0, 1.0, 2.0]
    assert np.asarray(sweep["probabilities"]).shape == (4, 2) and np.asarray(sweep["agent_probabilities"]).shape == (4, 2)
    assert len(sweep["origin_probabilities"]) == 2
    assert meta["parameters"]["decode_steps"] == 4 and meta["provenance"]["seed"] == 0
    with np.load(case_dir / "counterfactuals.npz") as f:
        assert f["origin"].shape == (4, 32, 32) and f["images"].shape == (4, 4, 32, 32) and f["query"].shape == (4, 32, 32)
    # the counterfactual in HU on the CT grid: the source outside the explained slices
    cf = np.asarray(nib.load(str(case_dir / "counterfactual_plus.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(cf[others], ct.array[others])
    assert sorted(p.name for p in (case_dir / "dicom").iterdir()) == [
        "CT_counterfactual_minus",
        "CT_counterfactual_plus",
        "PM.dcm",
        "SC_counterfactual",
        "SC_overlay",
        "SEG.dcm",
    ]
    assert not [p for p in case_dir.parent.iterdir() if ".partial" in p.name]


def _write(setup: dict, name: str, changes: dict) -> Path:
    cfg = json.loads(json.dumps(setup["raw"]))
    for key, value in changes.items():
        cur = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur[p]
        if value is None:
            del cur[parts[-1]]
        else:
            cur[parts[-1]] = value
    path = setup["root"] / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"agent.path": None}, r"bad1\.yaml: missing section 'agent'"),
        ({"agent": None}, r"method 'diffexplainer' needs the agent model, but the config has no section 'agent'"),
        ({"target_class": None}, r"bad1\.yaml: missing field 'target_class'"),
        ({"method": "gradcma"}, r"unknown method 'gradcma'; registered methods: .*gradcam"),
        ({"diffexplainer.step_size": [1.0]}, r"diffexplainer.*step_size"),
        ({"teacher.num_classes": 3}, r"num_classes=3"),
        ({"stack.size": 48}, r"network\.image_size"),
        ({"teacher.init_kwargs": {"in_channels": 4, "num_classes": 2, "width": 8}}, r"teacher\.safetensors.*do not fit"),
        ({"teacher.init_kwargs": {"in_channels": 3, "num_classes": 2, "width": 4}}, r"teacher\.safetensors"),
    ],
)
def test_bad_config_is_one_clear_error(setup: dict, capsys: pytest.CaptureFixture[str], changes: dict, message: str) -> None:
    import re

    path = _write(setup, "bad1.yaml", changes)
    code = main(["explain", "--config", str(path), "--input", str(setup["dicom"]), "-o", str(setup["root"] / "bad_out")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert re.search(message, " ".join(err.split())), err
    assert "Traceback" not in err
