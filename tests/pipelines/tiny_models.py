"""Tiny model settings the CT pipeline tests share (untrained or trained for a few steps: the jobs'
wiring is under test, not the models)."""

from __future__ import annotations

from pathlib import Path

import yaml

#: a 32-pixel, 8-dimensional diffusion autoencoder (seconds to build, milliseconds per call)
TINY_DIFFAE_NET = {
    "image_size": 32,
    "in_channels": 1,
    "base_channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "z_dim": 8,
    "dropout": 0.0,
}


def write_tiny_diffae_config(folder: Path, steps: int) -> Path:
    """``folder/diffae.yaml`` for :data:`TINY_DIFFAE_NET`, trained for ``steps`` steps; returns its path."""
    path = Path(folder) / "diffae.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "network": TINY_DIFFAE_NET,
                "schedule": {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"},
                "training": {"steps": steps, "batch_size": 4, "lr": 1e-3},
            }
        )
    )
    return path


def write_npz_ct_config(folder: Path, teacher_training: dict[str, object]) -> Path:
    """A CT config whose teacher (TinyCNN, no BatchNorm) trains on 8 stored 16-pixel stacks with
    ``teacher_training`` (``training.teacher``); returns ``folder/ct.yaml``."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "stacks.npz").exists():
        rng = np.random.default_rng(0)
        np.savez(folder / "stacks.npz", stacks=rng.random((8, 4, 16, 16), dtype=np.float32), labels=np.array([0, 1] * 4))
    (folder / "diffae.yaml").write_text(
        yaml.safe_dump(
            {
                "network": {"image_size": 16, "base_channels": 8, "channel_mults": [1], "z_dim": 4},
                "schedule": {},
                "training": {"steps": 1, "batch_size": 2, "lr": 1e-3},
            }
        )
    )
    config = {
        "input": "ct_stack",
        "seed": 0,
        "target_class": 1,
        "run_dir": "run",
        "stack": {"size": 16},
        "teacher": {
            "kind": "class_path",
            "path": "teacher.safetensors",
            "class_path": "medxai.networks.classifiers:TinyCNN",
            "init_kwargs": {"in_channels": 4, "num_classes": 2, "width": 4},
            "num_classes": 2,
        },
        "autoencoder": {"config": "diffae.yaml", "path": "autoencoder.safetensors"},
        "agent": {"path": "agent.safetensors"},
        "diffexplainer": {"step_sizes": [1.0], "encode_steps": 2, "decode_steps": 2},
        "data": {"source": "npz", "npz": "stacks.npz"},
        "training": {"teacher": dict(teacher_training)},
    }
    (folder / "ct.yaml").write_text(yaml.safe_dump(config))
    return folder / "ct.yaml"
