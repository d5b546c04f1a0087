"""The teacher's input contract and DiffExplainer mode (issue 17 item 3): what load_teacher checks on a
dummy batch, which mode the agent gets, and that nothing falls back silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medxai.explainers.gradcam import GradCAM
from medxai.networks.classifiers import TinyCNN
from medxai.networks.teacher import (
    FEATURES_MODE,
    LOGITS_MODE,
    TeacherFeatures,
    TeacherSpec,
    check_teacher_output,
    load_teacher,
    teacher_mode,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def _tiny(in_channels: int = 4) -> TinyCNN:
    return TinyCNN(in_channels, 2, width=4, generator=torch.Generator().manual_seed(0)).eval()


class _Wrapped(nn.Module):
    """TinyCNN with its output passed through ``post``."""

    def __init__(self, post: Any) -> None:
        super().__init__()
        self.net, self.post = _tiny(), post

    def forward(self, x: torch.Tensor) -> Any:
        return self.post(self.net(x))


# ------------------------------------------------------------------------------------------- output
def test_logits_pass() -> None:
    check_teacher_output(_tiny(), 2, 4, 16)
    # one class: a sigmoid output cannot be told from a logit, so it is not refused
    check_teacher_output(nn.Sequential(_tiny(), nn.Linear(2, 1), nn.Sigmoid()).eval(), 1, 4, 16)


@pytest.mark.parametrize(
    "post, said",
    [
        (lambda y: (y, y), "returned a tuple, not a tensor; wrap the model so that forward returns only the logits"),
        (
            lambda y: torch.cat([y, y], 1),
            "shape (2, 4) for a batch of 2 (expected (2, 2)); set teacher.num_classes to 4",
        ),
        (lambda y: y[:1], "make forward return one row of logits per input"),
        (lambda y: y.argmax(1, keepdim=True).repeat(1, 2), "returned torch.int64 values (class indices?)"),
        (lambda y: y * float("nan"), "non-finite values"),
        (lambda y: torch.softmax(y, 1), "probabilities, not logits"),
    ],
)
def test_anything_but_logits_is_refused(post: Any, said: str) -> None:
    with pytest.raises(ValueError) as info:
        check_teacher_output(_Wrapped(post).eval(), 2, 4, 16, source="ct.yaml: teacher (class_path 'w.pt')")
    msg = str(info.value)
    assert msg.startswith("ct.yaml: teacher (class_path 'w.pt') must return one tensor of logits (B, 2)")
    assert "float32 batches of shape (B, 4, 16, 16) with values in [0, 1]" in msg and said in msg and "\n" not in msg


def test_a_rejected_input_names_the_shape_and_the_contract() -> None:
    with pytest.raises(ValueError) as info:
        check_teacher_output(_tiny(3), 2, 4, 16, source="x.yaml: classifier", key="classifier", contract="RGB crops")
    msg = str(info.value)
    assert msg.startswith("x.yaml: classifier does not take the input medxai gives it: float32 batches of shape (B, 4, 16, 16)")
    assert "(RGB crops)" in msg and "dummy batch of shape (2, 4, 16, 16) it raised RuntimeError:" in msg
    assert "to have 3 channels" in msg and info.value.__cause__ is None  # the cause stays out of the CLI's paragraph


def test_load_teacher_names_config_section_and_kind(tmp_path: Path) -> None:
    torch.jit.script(_tiny(3)).save(str(tmp_path / "t.ts"))
    spec = TeacherSpec(kind="torchscript", path=str(tmp_path / "t.ts"), num_classes=2, image_size=16)
    with pytest.raises(ValueError, match=r"^ct\.yaml: teacher \(torchscript '.*t\.ts'\) does not take the input"):
        load_teacher(spec, source="ct.yaml")
    (tmp_path / "state.pt").write_bytes(b"not a zip")
    bad = TeacherSpec(kind="torchscript", path=str(tmp_path / "state.pt"), num_classes=2)
    with pytest.raises(ValueError, match=r"ct\.yaml: teacher\.path .* is not a TorchScript archive .*torch\.jit\.script"):
        load_teacher(bad, source="ct.yaml")


# --------------------------------------------------------------------------------------------- modes
def test_modes_and_no_silent_fallback(caplog: pytest.LogCaptureFixture) -> None:
    model = _tiny()
    mode, layer = teacher_mode(model, "head")
    assert mode == FEATURES_MODE and layer is model.head
    assert teacher_mode(model, None) == (LOGITS_MODE, None)
    with pytest.raises(ValueError, match=r"^ct\.yaml: teacher\.classifier_layer is 'features\.conv1', a Conv2d; .*remove"):
        teacher_mode(model, "features.conv1", source="ct.yaml")
    with pytest.raises(ValueError, match=r"teacher\.classifier_layer: layer 'haed' does not exist.*'head'.*remove"):
        teacher_mode(model, "haed")
    scripted = torch.jit.script(model)
    with pytest.raises(ValueError, match="TorchScript layers take no hooks"):
        teacher_mode(scripted, "head")
    with pytest.raises(ValueError, match="TorchScript layers take no hooks"):
        TeacherFeatures(scripted, "head")
    with caplog.at_level(logging.INFO, logger="medxai.networks.teacher"):
        tf = TeacherFeatures(model, "head")
    assert tf.mode == FEATURES_MODE and tf.feature_dim == model.head.in_features
    assert "teacher mode: features" in caplog.text
    logits, feats = tf(torch.rand(3, 4, 16, 16))
    assert logits.shape == (3, 2) and feats is not None and feats.shape == (3, model.head.in_features)


def test_gradcam_refuses_torchscript() -> None:
    with pytest.raises(ValueError, match="TorchScript models do not take; explain a TorchScript model with occlusion"):
        GradCAM(torch.jit.script(_tiny()))


# ----------------------------------------------------------------------------------- bundle metadata
def _bundle(root: Path, image: dict[str, Any], pred: dict[str, Any] | None = None) -> TeacherSpec:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    net_def = {"_target_": "medxai.networks.classifiers.TinyCNN", "in_channels": 4, "num_classes": 2, "width": 4}
    (root / "configs" / "inference.json").write_text(json.dumps({"network_def": net_def}))
    fmt = {"inputs": {"image": image}, "outputs": {"pred": pred or {}}}
    (root / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": fmt}))
    torch.save(_tiny().state_dict(), root / "models" / "model.pt")
    return TeacherSpec(kind="monai_bundle", path=str(root), num_classes=2, in_channels=4, image_size=16)


@pytest.mark.parametrize(
    "image, pred, said",
    [
        ({"num_channels": 1}, None, "inputs.image.num_channels is 1) than medxai gives it: (C, S, S) = (4, 16, 16)"),
        ({"spatial_shape": [96, 96]}, None, "inputs.image.spatial_shape is [96, 96]"),
        (
            {},
            {"num_channels": 3},
            "3 classes (network_data_format.outputs.pred.num_channels) but teacher.num_classes is 2",
        ),
    ],
)
def test_bundle_metadata_must_agree(tmp_path: Path, image: dict[str, Any], pred: dict[str, Any] | None, said: str) -> None:
    spec = _bundle(tmp_path / "b", image, pred)
    with pytest.raises(ValueError, match="metadata.json") as info:
        load_teacher(spec, source="ct.yaml")
    assert str(info.value).startswith("ct.yaml: teacher.path") and said in str(info.value)


def test_bundle_metadata_that_agrees_or_is_symbolic_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = _bundle(tmp_path / "a", {"num_channels": 4, "spatial_shape": [16, 16], "value_range": [0, 1]}, {"num_channels": 2})
    assert isinstance(load_teacher(spec), TinyCNN)
    spec = _bundle(tmp_path / "b", {"spatial_shape": ["16*n", "16*n"], "value_range": [-1024, 3071]})
    with caplog.at_level(logging.WARNING, logger="medxai.networks.teacher"):
        assert isinstance(load_teacher(spec), TinyCNN)
    assert "value_range [-1024, 3071]" in caplog.text and "[0, 1]" in caplog.text
