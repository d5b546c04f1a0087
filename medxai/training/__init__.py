"""Training of the DiffExplainer parts (teacher, diffusion autoencoder, agent) and safe checkpoints."""

from __future__ import annotations

from medxai.training.checkpoint import load_state_checked, load_weights, read_json, save_weights, write_json_atomic
from medxai.training.trainers import (
    EMA,
    TrainConfig,
    agreement,
    compute_latents,
    train_agent,
    train_autoencoder,
    train_teacher,
)

__all__ = [
    "EMA",
    "TrainConfig",
    "agreement",
    "compute_latents",
    "load_state_checked",
    "load_weights",
    "read_json",
    "save_weights",
    "train_agent",
    "train_autoencoder",
    "train_teacher",
    "write_json_atomic",
]
