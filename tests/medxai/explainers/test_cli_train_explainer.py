"""``medxai train explainer`` end to end on a tiny classifier and an .npz of images + labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medxai.explainers import NNExplainer
from medxai.networks.classifiers import TinyCNN
from medxai.targets import AllClasses

cli = pytest.importorskip("pipelines.cli")


def test_train_explainer_command(tmp_path: Path) -> None:
    torch.save(TinyCNN(3, 2, width=4).state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.random((12, 3, 16, 16)).astype(np.float32), labels=np.arange(12) % 2)
    args = [
        "train",
        "explainer",
        "--classifier-class",
        "medxai.networks.classifiers:TinyCNN",
        "--classifier-weights",
        str(tmp_path / "w.pt"),
        "--classifier-kwargs",
        '{"in_channels": 3, "num_classes": 2, "width": 4}',
        "--data",
        str(tmp_path / "d.npz"),
        "-o",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--channels",
        "4,8",
        "--batch-size",
        "4",
    ]
    assert cli.main(args) == 0
    meta = json.loads((tmp_path / "out" / "explainer.json").read_text())
    assert meta["config"]["multilabel"] is False and meta["extra"]["classifier"]["kwargs"]["width"] == 4
    clf = TinyCNN(3, 2, width=4)
    clf.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    heat = NNExplainer(clf, tmp_path / "out").explain(torch.rand(1, 3, 16, 16), AllClasses()).heatmaps
    assert heat.shape == (1, 2, 16, 16)
    # both or neither data source -> readable error, exit code 2
    assert cli.main(args + ["--phantom", "ct"]) == 2
