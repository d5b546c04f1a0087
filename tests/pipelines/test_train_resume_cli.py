"""``medxai train ... --device / --resume`` through the CLI: checkpoints beside the weights, a resumed
run with more steps ends where an uninterrupted one does, and clear one-paragraph errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import write_npz_ct_config

from pipelines.cli import main


def _config(folder: Path, steps: int) -> Path:
    """A CT config whose teacher (TinyCNN) trains on 8 stored stacks with checkpoints every 2 steps."""
    return write_npz_ct_config(folder, {"steps": steps, "batch_size": 4, "lr": 1e-3, "seed": 0, "save_every": 2})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from medxai.training.checkpoint import load_weights

    return load_weights(folder / "teacher.safetensors")


def test_resume_with_more_steps_ends_as_an_uninterrupted_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    straight = _config(tmp_path / "straight", steps=5)
    assert main(["train", "teacher", "-c", str(straight), "--device", "cpu"]) == 0

    staged = _config(tmp_path / "staged", steps=3)
    assert main(["train", "teacher", "-c", str(staged), "--device", "cpu"]) == 0
    assert (tmp_path / "staged" / "teacher.resume.pt").is_file()  # the end of the run (step 3) is kept
    _config(tmp_path / "staged", steps=5)  # the run's bound may grow; lr, batch and seed may not
    assert main(["train", "teacher", "-c", str(staged), "--device", "cpu", "--resume"]) == 0
    assert '"resumed_from": 3' in " ".join(capsys.readouterr().out.split())

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "staged")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_errors_are_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, steps=2)
    assert main(["train", "teacher", "-c", str(config), "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot resume the teacher: there is no checkpoint '{tmp_path / 'teacher.resume.pt'}'" in err
    assert "Traceback" not in err

    assert main(["train", "teacher", "-c", str(config)]) == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["training"]["teacher"]["lr"] = 0.5
    config.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", "teacher", "-c", str(config), "--resume"]) == 2
    assert "other settings (lr=0.001 there but 0.5 here)" in " ".join(capsys.readouterr().err.split())

    assert main(["train", "teacher", "-c", str(config), "--device", "tpu"]) == 2
    assert "--device must be one of auto, cpu, cuda, got 'tpu'" in " ".join(capsys.readouterr().err.split())


def test_train_all_under_several_ranks_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, steps=2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "all", "-c", str(config), "--device", "cpu"]) == 2
    assert "'agent' runs in one process, but torchrun started 2" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "teacher.safetensors").exists()
