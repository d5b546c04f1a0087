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
