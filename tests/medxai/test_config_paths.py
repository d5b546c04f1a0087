"""Training writes where the config says, relative to the config file, whatever the working directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml


def test_train_teacher_writes_next_to_the_config_and_loads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.training.ct import load_ct_config, load_teacher_from_config, train_teacher_from_config

    job = tmp_path / "project" / "configs"
    job.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(job / "stacks.npz", stacks=rng.random((6, 4, 16, 16), dtype=np.float32), labels=np.array([0, 1] * 3))
    (job / "diffae.yaml").write_text(
        yaml.safe_dump(
            {
                "network": {"image_size": 16, "base_channels": 8, "channel_mults": [1], "z_dim": 4},
                "schedule": {},
                "training": {"steps": 1, "batch_size": 2, "lr": 1e-3},
            }
        )
    )
    (job / "ct.yaml").write_text(
        yaml.safe_dump(
            {
                "input": "ct_stack",
                "seed": 0,
                "target_class": 1,
                "run_dir": "../runs/ct",
                "stack": {"size": 16},
                "teacher": {
                    "kind": "class_path",
                    "path": "../runs/ct/teacher.safetensors",
                    "pretrained": "ct/teacher.safetensors",
                    "class_path": "medxai.networks.classifiers:TinyCNN",
                    "init_kwargs": {"in_channels": 4, "num_classes": 2, "width": 4},
                    "num_classes": 2,
                },
                "autoencoder": {"config": "diffae.yaml", "path": "../runs/ct/autoencoder.safetensors"},
                "agent": {"path": "../runs/ct/agent.safetensors"},
                "diffexplainer": {"step_sizes": [1.0], "encode_steps": 2, "decode_steps": 2},
                "data": {"source": "npz", "npz": "stacks.npz"},
                "training": {"teacher": {"steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0}},
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_ct_config(Path("..") / "project" / "configs" / "ct.yaml")
    result = train_teacher_from_config(cfg)
    written = tmp_path / "project" / "runs" / "ct" / "teacher.safetensors"
    assert written.is_file() and Path(result["path"]).resolve() == written
    assert not any(elsewhere.iterdir())  # nothing written relative to the working directory
    teacher = load_teacher_from_config(cfg)  # the trained one, not the shipped fallback
    assert type(teacher).__name__ == "TinyCNN"
    assert cfg.resolved_weights["teacher"]["pretrained"] is False
    assert Path(cfg.resolved_weights["teacher"]["path"]).resolve() == written
