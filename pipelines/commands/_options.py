"""Options that several commands share, so their flag and meaning are written once."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["trust_code_option", "skip_unreadable_option", "device_option", "resume_option"]


def trust_code_option(what: str = "model classes / MONAI bundle expressions in the config") -> Any:
    """``--trust-code``: load ``what`` even outside the allow-list (docs/trust.md)."""
    return typer.Option(
        False,
        "--trust-code",
        help=f"Import {what} even outside the allow-list (torch.nn, monai.networks, medxai); only for configs and "
        "models from a source you trust (docs/trust.md).",
    )


def skip_unreadable_option(kept_in: str) -> Any:
    """``--skip-unreadable``: read the rest of a DICOM folder; the skipped files are listed in ``kept_in``."""
    return typer.Option(
        False,
        "--skip-unreadable",
        help="Leave out DICOM files that cannot be read (empty, cut short, no permission) instead of stopping; "
        f"they are listed in {kept_in}.",
    )


def device_option() -> Any:
    """``--device auto|cpu|cuda`` of the training commands (medxai.training.runtime.resolve_device)."""
    return typer.Option(
        "auto",
        "--device",
        help="Where to train: auto (CUDA when available, else the CPU), cpu or cuda. On CUDA the loss runs under "
        "bf16 autocast (training.bf16); the CPU stays float32.",
    )


def resume_option(checkpoint: str = "<weights>.resume.pt") -> Any:
    """``--resume``: continue an interrupted training run from its checkpoint."""
    return typer.Option(
        False,
        "--resume",
        help=f"Continue from the checkpoint {checkpoint} (written every training save_every steps and when a run "
        "ends): the same weights, optimiser, EMA and random stream as if never stopped.",
    )
