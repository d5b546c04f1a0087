"""``medxai train diffusion`` and ``medxai train classifier [--robust]``: the DVCE models for DR.

The command-line layer of :mod:`pipelines.train_dr` (which holds the training functions). Both train
on fundus phantoms unless ``--data`` names an ``.npz`` written by ``StackSet.save``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._options import device_option, resume_option, trust_code_option
from pipelines.train_dr import train_diffusion, train_dr_classifier

from ._groups import get_train_app

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    train = get_train_app(app)

    @train.command("diffusion")
    def train_diffusion_cmd(
        config: Path = typer.Option(Path("configs/ddpm_fundus_cpu64.yaml"), "--config", "-c", help="DDPM config (YAML)."),
        out: Path = typer.Option(..., "-o", "--out", help="Weights file (.safetensors; a .json sidecar is written beside it)."),
        data: Path | None = typer.Option(None, "--data", help="StackSet .npz (x, y); default: fundus phantoms."),
        n: int | None = typer.Option(None, "--n", help="Number of phantom images (default: data.n of the config)."),
        seconds: float | None = typer.Option(None, "--seconds", help="Wall-clock budget (overrides training.max_seconds)."),
        steps: int | None = typer.Option(None, "--steps", help="Maximum steps (overrides training.steps)."),
        init: Path | None = typer.Option(None, "--init", help="Start from these DDPM weights (same architecture)."),
        device: str = device_option(),
        resume: bool = resume_option("<out stem>.resume.pt"),
    ) -> None:
        """Train the unconditional fundus diffusion model (DDPM) that DVCE denoises with."""
        hist = train_diffusion(config, out, data=data, n=n, seconds=seconds, steps=steps, init=init, device=device, resume=resume)
        typer.echo(
            f"wrote {out} ({hist['steps']} steps in {hist['seconds']:.0f} s, "
            f"loss {hist['loss_first']:.4f} -> {hist['loss_last']:.4f})"
        )

    @train.command("classifier")
    def train_classifier_cmd(
        config: Path = typer.Option(Path("configs/dr_fundus.yaml"), "--config", "-c", help="DR config (YAML)."),
        robust: bool = typer.Option(False, "--robust", help="Adversarial training (train.robust: TRADES or PGD, L2)."),
        out: Path | None = typer.Option(
            None, "-o", "--out", help="Weights file; default: the config's (robust_)classifier.path."
        ),
        data: Path | None = typer.Option(None, "--data", help="StackSet .npz (x, y); default: fundus phantoms."),
        n: int | None = typer.Option(None, "--n", help="Number of phantom images (default: train.data.n)."),
        seconds: float | None = typer.Option(None, "--seconds", help="Wall-clock budget."),
        steps: int | None = typer.Option(None, "--steps", help="Maximum steps."),
        trust_code: bool = trust_code_option("the classifier's class_path"),
        device: str = device_option(),
        resume: bool = resume_option("<weights stem>.resume.pt"),
    ) -> None:
        """Train the DR classifier (the black box) or, with --robust, the robust classifier DVCE guides with."""
        hist = train_dr_classifier(
            config,
            out,
            robust=robust,
            data=data,
            n=n,
            seconds=seconds,
            steps=steps,
            trust_code=trust_code,
            device=device,
            resume=resume,
        )
        val = hist.get("validation") or {}
        extra = ", ".join(f"{k} {v:.3f}" for k, v in val.items() if isinstance(v, float))
        typer.echo(
            f"wrote {hist['out']} ({hist['steps']} steps in {hist['seconds']:.0f} s; "
            f"train accuracy {hist['train_accuracy']:.3f}{'; ' + extra if extra else ''})"
        )
