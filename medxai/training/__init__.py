"""Training (the one loop :func:`fit`, the DiffExplainer and DVCE trainers) and safe checkpoints."""

from __future__ import annotations

from medxai.training.checkpoint import (
    load_pretrained,
    load_state_checked,
    load_weights,
    pretrained_files,
    read_json,
    save_pretrained,
    save_weights,
    write_json_atomic,
)
from medxai.training.trainers import (
    FitResult,
    TrainConfig,
    agreement,
    compute_latents,
    ema_model,
    fit,
    fit_classifier,
    random_batches,
    train_agent,
    train_autoencoder,
    train_loop,
    train_teacher,
    train_with_ema,
)

__all__ = [
    "FitResult",
    "TrainConfig",
    "agreement",
    "compute_latents",
    "ema_model",
    "fit",
    "fit_classifier",
    "load_pretrained",
    "load_state_checked",
    "load_weights",
    "pretrained_files",
    "random_batches",
    "read_json",
    "save_pretrained",
    "save_weights",
    "train_agent",
    "train_autoencoder",
    "train_loop",
    "train_teacher",
    "train_with_ema",
    "write_json_atomic",
]
