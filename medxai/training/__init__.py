"""Training (the one loop :func:`fit`, the DiffExplainer and DVCE trainers), safe checkpoints, resume
checkpoints, and where a run executes (device, bf16, torchrun ranks: :mod:`medxai.training.runtime`)."""

from __future__ import annotations

from medxai.training.checkpoint import (
    load_pretrained,
    load_state_checked,
    load_train_state,
    load_weights,
    pretrained_files,
    read_json,
    resume_path,
    save_pretrained,
    save_train_state,
    save_weights,
    write_json_atomic,
)
from medxai.training.runtime import Ranks, autocast_for, distributed, resolve_device, torchrun_ranks
from medxai.training.trainers import (
    CheckpointPath,
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
    "CheckpointPath",
    "FitResult",
    "Ranks",
    "TrainConfig",
    "agreement",
    "autocast_for",
    "compute_latents",
    "distributed",
    "ema_model",
    "fit",
    "fit_classifier",
    "load_pretrained",
    "load_state_checked",
    "load_train_state",
    "load_weights",
    "pretrained_files",
    "random_batches",
    "read_json",
    "resolve_device",
    "resume_path",
    "save_pretrained",
    "save_train_state",
    "save_weights",
    "torchrun_ranks",
    "train_agent",
    "train_autoencoder",
    "train_loop",
    "train_teacher",
    "train_with_ema",
    "write_json_atomic",
]
