"""Bring your own classifier (docs/byo_classifier.md): the two worked examples run exactly as the page
writes them (its files written, its commands run through the CLI in a fresh folder), and a model that
breaks the input contract, or asks for a DiffExplainer mode it cannot give, is refused with exit 2 and
one paragraph that names the config file, the section and the expected input."""

from __future__ import annotations

import json
import logging
import re
import runpy
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from dicom_io import StudyInfo, Volume, write_ct_series
from medxai.config import pretrained_dir
from medxai.networks.classifiers import TinyCNN
from medxai.phantoms import ct_config, make_ct_case
from pipelines.cli import EXIT_BAD_INPUT, main

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "byo_classifier.md"
# ```lang title="path"\n...```: a file the reader writes (title) or commands the reader runs (bash)
_FENCE = re.compile(r'^```(\w*)(?:[ \t]+title="([^"]+)")?[ \t]*\n(.*?)^```[ \t]*$', re.M | re.S)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def _section(heading: str) -> str:
    """The text of the doc's section whose ``## `` heading starts with ``heading``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _run_example(heading: str, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """Write the section's files and run its commands in ``root`` (a stand-in for the repository root);
    returns the one case folder ``medxai explain`` wrote."""
    monkeypatch.chdir(root)
    (root / "configs").mkdir(exist_ok=True)
    shutil.copy(REPO / "configs" / "diffae_cpu64.yaml", root / "configs")  # what autoencoder.config names
    ran: list[str] = []
    for lang, title, body in _FENCE.findall(_section(heading)):
        if title:
            (root / title).parent.mkdir(parents=True, exist_ok=True)
            (root / title).write_text(body, encoding="utf-8")
            continue
        assert lang == "bash", f"an untitled {lang!r} block in {heading!r}: the test would not know what to do with it"
        for line in body.splitlines():
            argv = shlex.split(line, comments=True)
            if not argv:
                continue
            if argv[0] == "python":
                runpy.run_path(str(root / argv[1]), run_name="__main__")
            else:
                assert argv[0] == "medxai", line
                # the DICOM exports cost most of the time and are tested elsewhere (test_explain_methods)
                extra = ["--no-dicom"] if argv[1] == "explain" else []
                assert main([*argv[1:], *extra]) == 0, capsys.readouterr().err
            ran.append(argv[0] if argv[0] == "python" else " ".join(argv[:2]))
    assert ran == ["python", "medxai phantom", "medxai explain"], ran
    (case,) = [p.parent for p in (root / "runs" / "byo" / "explained").rglob("explanation.json")]
    return case


def _teacher_record(case: Path) -> dict[str, Any]:
    meta = json.loads((case / "explanation.json").read_text())
    probs = np.asarray(meta["probabilities"])
    assert meta["method"] == "occlusion" and probs.shape == (2,) and abs(probs.sum() - 1) < 1e-6
    return dict(meta["provenance"]["resolved_weights"]["teacher"])


# ------------------------------------------------------------------------------------ worked examples
def test_torchscript_worked_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pipelines.models"):
        case = _run_example("Example 1: a TorchScript model", tmp_path, monkeypatch, capsys)
    record = _teacher_record(case)
    assert record["kind"] == "torchscript" and record["path"].endswith("my_teacher.ts") and record["pretrained"] is False
    assert record["input_shape"] == [4, 64, 64] and record["num_classes"] == 2
    assert record["mode"] == "logits"  # said, not silently fallen back to
    assert "teacher mode: logits" in caplog.text and "the only mode of a TorchScript teacher" in caplog.text


def test_monai_bundle_worked_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pipelines.models"):
        case = _run_example("Example 2: a MONAI bundle folder", tmp_path, monkeypatch, capsys)
    record = _teacher_record(case)
    assert record["kind"] == "monai_bundle" and record["path"].endswith("my_bundle")
    assert record["input_shape"] == [4, 64, 64] and record["mode"] == "features"
    assert "teacher mode: features (the agent distils the input of 'class_layers.out')" in caplog.text


# ------------------------------------------------------------------------------- contract and modes
@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom chest CT written as a DICOM series."""
    root = tmp_path_factory.mktemp("byo")
    case = make_ct_case(3, ct_config("test", n_slices=24, matrix=64, vessel_points=40))
    vol = Volume(np.asarray(case.hu, dtype=np.float32), case.spacing, case.origin)
    write_ct_series(vol, root / "dicom", StudyInfo(uid_seed="byo-classifier", patient_id="P1", series_description="chest"))
    return root / "dicom"


def _config(folder: Path, teacher: dict[str, Any], **extra: Any) -> Path:
    """An explain config (the doc's example 1) whose teacher section is ``teacher``."""
    cfg: dict[str, Any] = {
        "input": "ct_stack",
        "method": "occlusion",
        "target_class": 1,
        "seed": 0,
        "stack": {"size": 64, "window_level": -600, "window_width": 1500, "fractions": [0.2, 0.4, 0.6, 0.8]},
        "teacher": {"num_classes": 2, **teacher},
        "occlusion": {"mask_size": 16, "overlap": 0.0},
        **extra,
    }
    path = folder / "ct.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _scripted(model: nn.Module, path: Path) -> str:
    torch.jit.script(model.eval()).save(str(path))
    return str(path)


def _refused(config: Path, series: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["explain", "-c", str(config), "-i", str(series), "-o", str(out), "--no-dicom"]) == EXIT_BAD_INPUT
    assert not out.exists() or not any(out.rglob("explanation.json"))
    return " ".join(capsys.readouterr().err.split())


def test_wrong_input_shape_is_refused_naming_the_shape(tmp_path: Path, series: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _scripted(TinyCNN(3, 2, width=4), tmp_path / "rgb.ts")  # made for 3-channel images, given 4 CT slices
    config = _config(tmp_path, {"kind": "torchscript", "path": model})
    msg = _refused(config, series, tmp_path / "out", capsys)
    assert f"{config}: teacher (torchscript {model!r}) does not take the input medxai gives it" in msg
    assert "float32 batches of shape (B, 4, 64, 64) with values in [0, 1]" in msg
    assert "HU clipped to [-1350, 150]" in msg and "fractions [0.2, 0.4, 0.6, 0.8]" in msg
    assert "dummy batch of shape (2, 4, 64, 64) it raised RuntimeError:" in msg and "to have 3 channels" in msg
    assert "Traceback of TorchScript" not in msg and "Cause:" not in msg  # one paragraph, not TorchScript's trace


class _Probabilities(nn.Module):
    """A classifier that ends in a softmax: probabilities, not the logits medxai needs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN(4, 2, width=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def test_probabilities_are_refused(tmp_path: Path, series: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _scripted(_Probabilities(), tmp_path / "p.ts")
    msg = _refused(_config(tmp_path, {"kind": "torchscript", "path": model}), series, tmp_path / "out", capsys)
    assert "must return one tensor of logits (B, 2)" in msg and "probabilities, not logits" in msg


def test_torchscript_teacher_cannot_give_features(tmp_path: Path, series: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that asks for features mode from a TorchScript teacher is an error, not a quiet switch to logits."""
    model = _scripted(TinyCNN(4, 2, width=4), tmp_path / "t.ts")
    config = _config(tmp_path, {"kind": "torchscript", "path": model, "classifier_layer": "head"})
    msg = _refused(config, series, tmp_path / "out", capsys)
    assert f"{config}: teacher.classifier_layer is 'head', which asks for features mode" in msg
    assert "TorchScript" in msg and "remove teacher.classifier_layer to distil on logits" in msg


def test_bundle_metadata_for_another_size_is_refused(tmp_path: Path, series: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A network with adaptive pooling runs at any size: the bundle's metadata is what tells 256 from 64."""
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    net_def = {"_target_": "medxai.networks.classifiers.TinyCNN", "in_channels": 4, "num_classes": 2, "width": 4}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": net_def}))
    image = {"num_channels": 4, "spatial_shape": [256, 256], "value_range": [0, 1]}
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {"inputs": {"image": image}}}))
    torch.save(TinyCNN(4, 2, width=4).state_dict(), bundle / "models" / "model.pt")
    config = _config(tmp_path, {"kind": "monai_bundle", "path": str(bundle)})
    msg = _refused(config, series, tmp_path / "out", capsys)
    assert f"{config}: teacher.path {str(bundle)!r}" in msg and "metadata.json" in msg
    assert "inputs.image.spatial_shape is [256, 256]" in msg and "(C, S, S) = (4, 64, 64)" in msg


def test_agent_training_says_logits_mode_for_torchscript(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`medxai train agent` with a TorchScript teacher: logits mode, said in the log, the printed
    result and the agent's side-car; asking it for features fails before any training."""
    model = _scripted(TinyCNN(4, 2, width=4), tmp_path / "t.ts")
    rng = np.random.default_rng(0)
    npz = tmp_path / "stacks.npz"
    np.savez(npz, stacks=rng.random((4, 4, 64, 64), dtype=np.float32), labels=np.array([0, 1, 0, 1]))
    agent = tmp_path / "agent.safetensors"
    extra = {
        "run_dir": str(tmp_path / "run"),
        "autoencoder": {
            "config": str(REPO / "configs" / "diffae_cpu64.yaml"),
            "path": str(pretrained_dir() / "ct" / "autoencoder.safetensors"),
        },
        "agent": {"path": str(agent)},
        "diffexplainer": {"step_sizes": [0.8], "encode_steps": 2, "decode_steps": 2},
        "training": {"agent": {"steps": 5, "batch_size": 4, "lr": 0.001, "seed": 0}},
    }
    config = _config(tmp_path, {"kind": "torchscript", "path": model, "classifier_layer": "head"}, **extra)
    assert main(["train", "agent", "-c", str(config), "--data", str(npz)]) == EXIT_BAD_INPUT
    assert "teacher.classifier_layer is 'head'" in " ".join(capsys.readouterr().err.split()) and not agent.exists()

    config = _config(tmp_path, {"kind": "torchscript", "path": model}, **extra)
    with caplog.at_level(logging.WARNING, logger="medxai.networks.teacher"):
        assert main(["train", "agent", "-c", str(config), "--data", str(npz)]) == 0, capsys.readouterr().err
    assert '"mode": "logits"' in " ".join(capsys.readouterr().out.split())
    assert "teacher mode: logits (TorchScript teacher)" in caplog.text
    side_car = json.loads(agent.with_suffix(".json").read_text())
    assert side_car["history"]["mode"] == "logits" and side_car["frozen_head"] is False
