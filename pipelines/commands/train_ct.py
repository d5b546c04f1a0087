"""``medxai train teacher|autoencoder|agent|all|evaluate``: the DiffExplainer parts for CT prognosis.

Data: phantom cohorts made on the fly (config section ``data``), ``--data stacks.npz`` (relative to
the working directory), or ``--data COHORT/``, a folder written by ``medxai cohort build``: training
uses its train split, the held-out figures its validation split, and its test split is left alone
(:mod:`pipelines.cohort_data`). Each part is written to its ``<section>.path`` in the config, relative to the
config file (``configs/ct_prognosis.yaml`` writes to ``runs/ct_prognosis/`` of the repository, whatever
the working directory). ``medxai train all --config configs/ct_prognosis.yaml`` trains everything at
the CPU default.

``--device auto|cpu|cuda`` picks where to train; ``--resume`` continues a part from
``<path stem>.resume.pt``. ``torchrun --nproc-per-node N -m pipelines train teacher|autoencoder``
trains with DistributedDataParallel (rank 0 shows progress and writes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from pipelines.commands._groups import get_train_app
from pipelines.commands._options import device_option, resume_option, trust_code_option

logger = logging.getLogger(__name__)

_CONFIG = typer.Option(Path("configs/ct_prognosis.yaml"), "--config", "-c", help="CT prognosis config.")
_DATA = typer.Option(
    None,
    "--data",
    help="A cohort folder (medxai cohort build: train split to train, validation split held out) or an npz with "
    "'stacks' (N, 4, S, S) in [0, 1] and 'labels' (N,); default: the config's phantoms.",
)
_MINUTES = typer.Option(None, "--minutes", help="Wall-clock budget (overrides training.*.max_seconds).")
_TRUST = trust_code_option("the teacher class_path / evaluate MONAI bundle expressions")
_DEVICE = device_option()
_RESUME = resume_option("<path stem>.resume.pt beside the part's weights")


def evaluate_ct(cfg: Any, n_cases: int | None = None, progress: Any = None, trust_code: bool = False) -> dict[str, Any]:
    """Explain the held-out phantom cohort with the config's DiffExplainer and compute every
    counterfactual metric (the targets); ``trust_code``: see :func:`pipelines.models.load_black_box`."""
    import numpy as np
    import torch

    from medxai.metrics.counterfactual import summarise_diffexplainer
    from medxai.registry import CT_STACK, get_method
    from medxai.training import ct
    from pipelines.models import load_black_box, load_method_models, method_settings, target_class

    data = ct.load_data(cfg, "test", progress)
    n = len(data["stacks"]) if n_cases is None else min(n_cases, len(data["stacks"]))
    spec = get_method("diffexplainer", CT_STACK)
    teacher = load_black_box(cfg, trust_code=trust_code)
    models = load_method_models(cfg, spec, trust_code=trust_code)
    if torch.cuda.is_available():  # the teacher stays on the CPU with the inputs
        for m in models.values():
            m.to("cuda")
    explainer = spec.build(teacher, method_settings(cfg, spec), models, seed=int(cfg.get("seed")))
    c = target_class(cfg)
    x = torch.from_numpy(data["stacks"][:n])
    t0 = time.perf_counter()
    exp = explainer.explain(x, c)
    seconds = time.perf_counter() - t0
    summary = summarise_diffexplainer(x, exp, c, torch.from_numpy(data["biomarker"][:n]), torch.from_numpy(data["lungs"][:n]))
    auroc = [a for a in summary.get("heatmap_auroc", []) if a == a]
    return {
        "n_cases": n,
        "seconds_per_case": seconds / n,
        "psnr_mean": float(np.mean(summary["psnr"])),
        "ssim_mean": float(np.mean(summary["ssim"])),
        "score_change_reconstruction_mean": float(np.mean(summary["score_change_reconstruction"])),
        "flip_rate": summary["flip_rate"],
        "monotonicity": summary["monotonicity"],
        "heatmap_auroc_mean": float(np.mean(auroc)) if auroc else float("nan"),
        "heatmap_auroc_cases": len(auroc),
        "agent_teacher_agreement": summary["agent_teacher_agreement"],
        "change_outside_lungs": summary.get("change_outside_lungs"),
        "weights": dict(cfg.resolved_weights),
    }


def _data_source(data: Path | None, cfg: Any) -> Any:
    """``--data`` as the trainers take it: None, an npz path, or a cohort's splits (read once here)."""
    from pipelines.cohort_data import cohort_training_data, is_cohort

    if data is None or not data.is_dir():
        return data
    if not is_cohort(data):
        raise ValueError(f"--data '{data}' is a folder but not a cohort (no cases.csv); build one with medxai cohort build.")
    source = cohort_training_data(data, cfg)
    parts = ", ".join(f"{k}: {v['cases']} ({v['positive']} positive)" for k, v in source.info["splits"].items())
    logger.info("training data: %s; %s", source.source, parts)
    return source


def _run(
    stages: list[str],
    config: Path,
    data: Path | None,
    minutes: float | None,
    trust_code: bool = False,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.markup import escape

    from medxai.training import ct
    from medxai.training.runtime import resolve_device, single_process, torchrun_ranks
    from pipelines.commands._progress import progress_bars

    ranks = torchrun_ranks()
    resolve_device(device, ranks)  # a bad --device fails before any data are made
    for stage in stages:  # before anything trains: 'all' would stop at the agent after hours
        if stage not in ("teacher", "autoencoder"):
            single_process(stage, ranks)
    cfg = ct.load_ct_config(config)
    source = _data_source(data, cfg)
    seconds = None if minutes is None else 60.0 * minutes
    funcs: dict[str, Callable[..., dict[str, Any]]] = {
        "teacher": ct.train_teacher_from_config,
        "autoencoder": ct.train_autoencoder_from_config,
        "agent": ct.train_agent_from_config,
    }
    console = Console(highlight=False)
    results: dict[str, Any] = {}
    with progress_bars(eta=True) as bars:
        progress = bars if ranks.writer else None  # under torchrun one bar, rank 0's
        for stage in stages:
            if stage == "evaluate":
                results[stage] = evaluate_ct(cfg, progress=progress, trust_code=trust_code)
            else:
                # the autoencoder loads no model class, so it takes no trust_code
                trust = {} if stage == "autoencoder" else {"trust_code": trust_code}
                results[stage] = funcs[stage](
                    cfg, progress=progress, npz=source, max_seconds=seconds, device=device, resume=resume, **trust
                )
            if ranks.writer:
                console.print(f"[bold]{stage}[/]: {escape(json.dumps(results[stage], default=str))}")
    return results


def register(app: typer.Typer) -> None:
    train = get_train_app(app)

    @train.command("teacher")
    def teacher_cmd(
        config: Path = _CONFIG,
        data: Path | None = _DATA,
        minutes: float | None = _MINUTES,
        trust_code: bool = _TRUST,
        device: str = _DEVICE,
        resume: bool = _RESUME,
    ) -> None:
        """Train the black-box teacher classifier (kind class_path) on four-slice stacks (torchrun: DDP)."""
        _run(["teacher"], config, data, minutes, trust_code, device, resume)

    @train.command("autoencoder")
    def autoencoder_cmd(
        config: Path = _CONFIG,
        data: Path | None = _DATA,
        minutes: float | None = _MINUTES,
        device: str = _DEVICE,
        resume: bool = _RESUME,
    ) -> None:
        """Train the diffusion autoencoder on every slice of the stacks (EMA weights saved; torchrun: DDP)."""
        _run(["autoencoder"], config, data, minutes, device=device, resume=resume)

    @train.command("agent")
    def agent_cmd(
        config: Path = _CONFIG,
        data: Path | None = _DATA,
        minutes: float | None = _MINUTES,
        trust_code: bool = _TRUST,
        device: str = _DEVICE,
        resume: bool = _RESUME,
    ) -> None:
        """Distil the teacher into the two-layer linear agent on DiffAE latents."""
        _run(["agent"], config, data, minutes, trust_code, device, resume)

    @train.command("all")
    def all_cmd(
        config: Path = _CONFIG,
        data: Path | None = _DATA,
        evaluate: bool = typer.Option(True, help="Evaluate on the held-out cohort afterwards."),
        trust_code: bool = _TRUST,
        device: str = _DEVICE,
    ) -> None:
        """Teacher, autoencoder and agent in one go (CPU default), then the held-out metrics (resume: part by part)."""
        _run(
            ["teacher", "autoencoder", "agent"] + (["evaluate"] if evaluate and data is None else []),
            config,
            data,
            None,
            trust_code,
            device,
        )

    @train.command("evaluate")
    def evaluate_cmd(config: Path = _CONFIG, trust_code: bool = _TRUST) -> None:
        """Explain the held-out phantom cohort and report PSNR, flip rate, AUROC, agreement."""
        _run(["evaluate"], config, None, None, trust_code)
