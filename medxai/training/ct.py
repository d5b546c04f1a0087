"""CT prognosis wiring for training: config -> data, teacher, autoencoder, agent; train them.

Used by ``medxai train teacher|autoencoder|agent|all``; the explain jobs load their models through
``pipelines.models`` (training never imports explainers). Training data are four-slice stacks made on
the fly from phantom cohorts (:mod:`medxai.phantoms`, cached as ``<run_dir>/data_<split>.npz``) or
read from an npz with ``stacks`` ``(N, 4, S, S)`` in [0, 1] and ``labels`` ``(N,)``, or handed over as
:class:`StackSplits` (a cohort store read by ``pipelines.cohort_data``: train / validation / test).

Held-out data (the agent's agreement, the autoencoder's reconstruction reference, the teacher's
held-out AUROC) come from a split that training never sees: the phantoms' ``test`` cohort, or a
cohort's ``validation`` split (its ``test`` split is left for ``medxai cohort explain``). An npz has no
held-out split, and the results say so.

Paths come from the config (relative to the config file, :meth:`medxai.config.Config.path`):
trainers write to ``<section>.path``; loaders read :meth:`~medxai.config.Config.weights`, which falls
back to the section's shipped ``pretrained`` weights while ``path`` does not exist.

Every trainer takes ``device`` (``auto``/``cpu``/``cuda``, :func:`medxai.training.runtime.resolve_device`)
and ``resume``: with ``save_every > 0`` in its training settings it keeps ``<path stem>.resume.pt``
beside its weights (:func:`medxai.training.checkpoint.resume_path`) and ``resume=True`` continues from
it. Teacher and autoencoder run under ``torchrun`` with DistributedDataParallel (rank 0 builds the
data cache first and writes the files); the agent trains in one process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medxai.config import CT_PROGNOSIS_SCHEMA, DIFFAE_SCHEMA, Config, ConfigError, load_config
from medxai.progress import ProgressFn as Progress

if TYPE_CHECKING:
    from medxai.training.runtime import Ranks

__all__ = [
    "load_ct_config",
    "stack_config",
    "phantom_stacks",
    "StackSplits",
    "DataArg",
    "load_data",
    "held_out_data",
    "autoencoder_config",
    "new_autoencoder",
    "load_autoencoder_from_config",
    "teacher_spec",
    "new_teacher",
    "load_teacher_from_config",
    "load_agent_from_config",
    "diffexplainer_steps",
    "train_teacher_from_config",
    "train_autoencoder_from_config",
    "train_config",
    "train_agent_from_config",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackSplits:
    """Training data already read into arrays, one entry per split.

    Attributes
    ----------
    splits : mapping
        split name (``train``, ``validation``, ``test``) -> arrays: ``stacks`` float32 ``(N, C, S, S)``
        in [0, 1], ``labels`` int64 ``(N,)`` and optionally ``lungs`` uint8 ``(N, C, S, S)``.
    source : str
        Where they came from (for messages and results).
    held_out : str
        The split used for held-out figures during training (never trained on).
    info : mapping
        What the reader wants said about the data (a cohort: its path, cases and positives per split).
    """

    splits: Mapping[str, Mapping[str, np.ndarray]]
    source: str
    held_out: str = "validation"
    info: Mapping[str, Any] = field(default_factory=dict)


#: what the CT trainers take as data: None (the config's phantoms or data.npz), an npz path, or arrays
DataArg = str | Path | StackSplits | None


def load_ct_config(path: str | Path) -> Config:
    """Load and validate ``configs/ct_prognosis.yaml`` (and the autoencoder config it names)."""
    from medxai.data import CT_LABELS

    cfg = load_config(path, CT_PROGNOSIS_SCHEMA)
    autoencoder_config(cfg)  # validate the referenced file too
    if str(cfg.get("data.label", "outcome")) not in CT_LABELS:
        raise ConfigError(f"{cfg.source}: data.label must be one of {', '.join(CT_LABELS)}, got {cfg.get('data.label')!r}.")
    over = cfg.get("data.phantom_overrides", None) or {}
    if not isinstance(over, dict):
        raise ConfigError(f"{cfg.source}: data.phantom_overrides must be a mapping of phantom fields, got {over!r}.")
    return cfg


def stack_config(cfg: Config) -> Any:
    from medxai.transforms import CTStackConfig

    section = cfg.section("stack")
    if "fractions" in section:
        section["fractions"] = tuple(section["fractions"])
    try:
        return CTStackConfig(**section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cfg.source}: section 'stack' is invalid: {err}") from err


def _cohort_settings(cfg: Config) -> dict[str, Any]:
    """The ``data`` settings that decide a phantom cohort besides its size and seed: what
    :func:`phantom_stacks` passes to ``ct_stack_set`` and what the cache key of :func:`load_data` holds."""
    return {
        "phantom": str(cfg.get("data.phantom", "test")),
        "shortcut": float(cfg.get("data.shortcut", 0.0)),
        "phantom_overrides": cfg.get("data.phantom_overrides", None) or {},
        "label": str(cfg.get("data.label", "outcome")),
    }


def phantom_stacks(n: int, seed: int, cfg: Config, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Make ``n`` phantom cases and their stacks (the cohort of ``medxai.phantoms.iter_ct_cohort``).

    Returns
    -------
    dict
        ``stacks`` float32 ``(n, 4, S, S)`` in [0, 1]; ``labels`` int64 ``(n,)``; ``extent`` ``(n,)``;
        ``biomarker`` and ``lungs`` uint8 ``(n, 4, S, S)`` (ground-truth masks on the stack grid).
    """
    from medxai.data import ct_stack_set

    done = [0]

    def step(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress("phantoms", done[0], n)

    s = ct_stack_set(n, seed, stack=stack_config(cfg), progress=step, **_cohort_settings(cfg))
    return {
        "stacks": s.x,
        "labels": s.y,
        "extent": s.extent,
        "biomarker": s.masks["biomarker"].astype(np.uint8),
        "lungs": s.masks["lungs"].astype(np.uint8),
    }


def load_data(cfg: Config, split: str = "train", progress: Progress | None = None, npz: DataArg = None) -> dict[str, np.ndarray]:
    """Training (``split="train"``) or held-out (``"test"``) stacks from the npz or phantoms (cached);
    with ``npz`` a :class:`StackSplits`, that split of it (``ValueError`` if it has no such split)."""
    if isinstance(npz, StackSplits):
        got = npz.splits.get(split)
        if got is None or len(got["stacks"]) == 0:
            raise ValueError(f"{npz.source} has no case in split {split!r} (splits: {', '.join(sorted(npz.splits))}).")
        return dict(got)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    # --data (npz) is relative to the working directory; data.npz to the config file
    source = (
        Path(npz)
        if npz
        else (cfg.path("data.npz") if cfg.get("data.source", "phantom") == "npz" and cfg.has("data.npz") else None)
    )
    if source:
        p = source
        if not p.is_file():
            raise ValueError(f"data npz {str(p)!r} does not exist; fix data.npz in {cfg.source} or pass --data.")
        with np.load(p) as f:
            if "stacks" not in f or "labels" not in f:
                raise ValueError(f"{str(p)!r} must hold arrays 'stacks' (N, 4, S, S) and 'labels' (N,), has {sorted(f.files)}.")
            data = {k: f[k] for k in f.files}
        size = int(cfg.get("stack.size"))
        if data["stacks"].ndim != 4 or data["stacks"].shape[2:] != (size, size):
            raise ValueError(f"{str(p)!r}: stacks have shape {data['stacks'].shape}, expected (N, n_slices, {size}, {size}).")
        return data
    run_dir = cfg.path("run_dir")
    cache = run_dir / f"data_{split}.npz"
    n = int(cfg.get(f"data.n_{split}", 240 if split == "train" else 40))
    seed = int(cfg.get(f"data.seed_{split}", 1 if split == "train" else 2))
    # every setting that changes the cohort is part of the key, so a stale cache is never reused
    key = np.asarray(
        json.dumps(
            {"n": n, "seed": seed, "stack": cfg.section("stack"), **_cohort_settings(cfg)},
            sort_keys=True,
            default=str,
        )
    )
    if cache.is_file():
        with np.load(cache) as f:
            if "key" in f and np.array_equal(f["key"], key):
                return {k: f[k] for k in f.files if k != "key"}
    data = phantom_stacks(n, seed, cfg, progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp.npz")
    np.savez_compressed(tmp, key=key, **data)
    tmp.replace(cache)
    return data


def held_out_data(cfg: Config, progress: Progress | None, data: DataArg) -> tuple[dict[str, np.ndarray] | None, str]:
    """The held-out stacks for figures measured during training, and what they are.

    Phantoms: the ``test`` cohort; :class:`StackSplits`: its ``held_out`` split; an npz: none (it has
    no split, so no held-out figure is claimed). Returns ``(None, why)`` when there are none.
    """
    if isinstance(data, StackSplits):
        got = data.splits.get(data.held_out)
        if got is None or len(got["stacks"]) == 0:
            return None, f"{data.source} has no case in its {data.held_out!r} split"
        return dict(got), f"{data.held_out} split of {data.source}"
    if data is not None or cfg.get("data.source", "phantom") == "npz":
        return None, "an npz has no held-out split"
    try:
        return load_data(cfg, "test", progress, None), "held-out phantom cohort"
    except Exception as err:  # noqa: BLE001 - held-out data are optional here
        logger.info("no held-out data (%s)", err)
        return None, f"no held-out data ({err})"


# ---------------------------------------------------------------------------------------- parts
def autoencoder_config(cfg: Config) -> Config:
    """The DiffAE config named by ``autoencoder.config`` (validated; its image size must be ``stack.size``)."""
    path = cfg.path("autoencoder.config")
    if not path.is_file():
        raise ConfigError(f"{cfg.source}: field 'autoencoder.config' points to {str(path)!r}, which does not exist.")
    ae_cfg = load_config(path, DIFFAE_SCHEMA)
    size = int(cfg.get("stack.size"))
    if int(ae_cfg.get("network.image_size")) != size:
        raise ConfigError(
            f"{ae_cfg.source}: field 'network.image_size' is {ae_cfg.get('network.image_size')} but {cfg.source} "
            f"has stack.size={size}; they must match."
        )
    return ae_cfg


def _net_and_schedule(cfg: Config) -> tuple[Any, Any]:
    from medxai.diffusion import ScheduleConfig
    from medxai.networks.diffae import DiffAENetConfig

    ae_cfg = autoencoder_config(cfg)
    try:
        return DiffAENetConfig.from_dict(ae_cfg.section("network")), ScheduleConfig.from_dict(ae_cfg.section("schedule"))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{ae_cfg.source}: {err}") from err


def new_autoencoder(cfg: Config) -> Any:
    from medxai.diffusion import DiffusionAutoencoder
    from medxai.networks.diffae import DiffAENet

    net_cfg, sched = _net_and_schedule(cfg)
    return DiffusionAutoencoder(DiffAENet(net_cfg, torch.Generator().manual_seed(int(cfg.get("seed")))), sched)


def load_autoencoder_from_config(cfg: Config) -> Any:
    """The trained DiffusionAutoencoder of ``cfg`` (architecture from ``autoencoder.config``, weights
    from :meth:`~medxai.config.Config.weights`), in eval mode on the CPU."""
    from medxai.diffusion import load_autoencoder

    net_cfg, sched = _net_and_schedule(cfg)
    return load_autoencoder(cfg.weights("autoencoder"), net_cfg, sched).eval()


def teacher_spec(cfg: Config, resolve: bool = False) -> Any:
    """The :class:`~medxai.networks.teacher.TeacherSpec` of the ``teacher`` section.

    ``resolve``: its ``path`` is the resolved weights (:meth:`~medxai.config.Config.weights`, which may
    fall back to ``teacher.pretrained``) instead of ``teacher.path`` made config-relative.
    """
    from medxai.networks.teacher import teacher_spec_from_dict

    section = cfg.section("teacher")
    section.pop("pretrained", None)
    section["path"] = str(cfg.weights("teacher") if resolve else cfg.path("teacher.path"))
    try:
        return teacher_spec_from_dict(
            section, image_size=int(cfg.get("stack.size")), in_channels=len(stack_config(cfg).fractions)
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cfg.source}: section 'teacher' is invalid: {err}") from err


def new_teacher(cfg: Config, trust_code: bool = False) -> torch.nn.Module:
    """An untrained teacher (kind ``class_path`` only) to train on the data.

    ``trust_code`` (or ``trust_code: true`` in the config) allows a class outside the allow-list of
    :mod:`medxai.trust`.
    """
    import inspect

    from medxai.networks.classifiers import init_with_generator, load_class
    from medxai.trust import trusts_code

    spec = teacher_spec(cfg)
    if spec.kind != "class_path":
        raise ConfigError(f"{cfg.source}: 'medxai train teacher' needs teacher.kind: class_path, got {spec.kind!r}.")
    cls = load_class(str(spec.class_path), trust_code=trusts_code(cfg, trust_code), where=f"{cfg.source}: teacher.class_path")
    kwargs = dict(spec.init_kwargs)
    gen = torch.Generator().manual_seed(int(cfg.get("seed")))
    if "generator" in inspect.signature(cls).parameters:
        return cls(generator=gen, **kwargs)
    # e.g. MONAI networks initialise from the global RNG: re-initialise from our own generator
    return init_with_generator(cls(**kwargs), gen)


def load_teacher_from_config(cfg: Config, trust_code: bool = False) -> torch.nn.Module:
    """The trained teacher of ``cfg``; ``trust_code`` as in :func:`medxai.networks.teacher.load_teacher`
    (``trust_code: true`` in the config counts too)."""
    from medxai.networks.teacher import load_teacher
    from medxai.trust import trusts_code

    return load_teacher(
        teacher_spec(cfg, resolve=True), trust_code=trusts_code(cfg, trust_code), source=cfg.source, key="teacher"
    )


def load_agent_from_config(cfg: Config) -> Any:
    """The trained agent of ``cfg`` (weights from :meth:`~medxai.config.Config.weights`), in eval mode."""
    from medxai.networks.agent import load_agent

    return load_agent(cfg.weights("agent"))


def diffexplainer_steps(cfg: Config) -> tuple[int, int, int]:
    """``(encode_steps, decode_steps, batch_size)`` of the ``diffexplainer`` section: the steps the
    autoencoder's reconstruction reference is measured at (what ``medxai explain`` will run)."""
    return (
        int(cfg.get("diffexplainer.encode_steps")),
        int(cfg.get("diffexplainer.decode_steps")),
        int(cfg.get("diffexplainer.batch_size", 64)),
    )


# --------------------------------------------------------------------------------------- training
def train_config(section: dict[str, Any], source: str, field: str, max_seconds: float | None = None) -> Any:
    """The :class:`~medxai.training.trainers.TrainConfig` of a config section; ``max_seconds`` (--minutes) overrides."""
    from medxai.training.trainers import TrainConfig

    if max_seconds is not None:
        section = {**section, "max_seconds": max_seconds}
    try:
        return TrainConfig.from_dict(section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: field '{field}' is invalid: {err}") from err


def _train_data(cfg: Config, ranks: Ranks, progress: Progress | None, npz: DataArg) -> dict[str, np.ndarray]:
    """The training stacks; under torchrun rank 0 first, so that only it writes the phantom cache."""
    from medxai.training.runtime import rank_zero_first

    with rank_zero_first(ranks):
        return load_data(cfg, "train", progress, npz)


def train_teacher_from_config(
    cfg: Config,
    progress: Progress | None = None,
    npz: DataArg = None,
    max_seconds: float | None = None,
    trust_code: bool = False,
    *,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Train the teacher on the training stacks and save it to ``teacher.path`` (``trust_code``: see :func:`new_teacher`).

    ``device``, ``resume`` and torchrun: see the module docstring.
    """
    from medxai.training.checkpoint import resume_path, save_weights
    from medxai.training.runtime import distributed, resolve_device, torchrun_ranks
    from medxai.training.trainers import train_teacher

    ranks = torchrun_ranks()
    dev = resolve_device(device, ranks)
    model = new_teacher(cfg, trust_code)  # before the data: a refused class_path fails at once
    tcfg = train_config(cfg.section("training.teacher", {}), cfg.source, "training.teacher", max_seconds)
    path = cfg.path("teacher.path")
    with distributed(dev, ranks):
        data = _train_data(cfg, ranks, progress, npz)
        hist = train_teacher(
            model.to(dev),
            torch.from_numpy(data["stacks"]),
            torch.from_numpy(data["labels"]),
            tcfg,
            progress=progress,  # progress("teacher", step, steps)
            checkpoint=resume_path(path, "teacher"),
            resume=resume,
            ranks=ranks,
        )
    if not ranks.writer:
        return {"path": str(path), **_short(hist)}
    model.cpu()
    held = _teacher_held_out(model, cfg, progress, npz)
    meta = {"kind": "teacher", "class_path": cfg.get("teacher.class_path"), "history": _short(hist), **held}
    save_weights(path, model.state_dict(), meta)
    return {"path": str(path), **_short(hist), **held}


def _teacher_held_out(model: torch.nn.Module, cfg: Config, progress: Progress | None, data: DataArg) -> dict[str, Any]:
    """The trained teacher's AUROC and accuracy on the held-out split (``held_out`` says which, or why none)."""
    from medxai.metrics import pixel_auroc

    test, what = held_out_data(cfg, progress, data)
    out: dict[str, Any] = {"held_out": what}
    if test is None:
        return out
    was = model.training
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(test["stacks"], np.float32))
        logits = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)])
    model.train(was)
    y = np.asarray(test["labels"]).astype(np.int64)
    p = torch.softmax(logits.float(), 1)[:, -1].numpy()
    out["held_out_cases"] = len(y)
    out["accuracy_held_out"] = float((logits.argmax(1).numpy() == y).mean())
    out["auroc_held_out"] = float(pixel_auroc(p, y.astype(bool))) if 0 < y.sum() < len(y) else None
    return out


def train_autoencoder_from_config(
    cfg: Config,
    progress: Progress | None = None,
    npz: DataArg = None,
    max_seconds: float | None = None,
    *,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Train the diffusion autoencoder on all slices of the training stacks; save EMA weights.

    ``device``, ``resume`` and torchrun: see the module docstring (under torchrun only rank 0 measures
    the reconstruction reference and writes).
    """
    from medxai.diffusion import save_autoencoder
    from medxai.training.checkpoint import resume_path
    from medxai.training.runtime import distributed, resolve_device, torchrun_ranks
    from medxai.training.trainers import train_autoencoder

    ranks = torchrun_ranks()
    dev = resolve_device(device, ranks)
    ae_cfg = autoencoder_config(cfg)
    tcfg = train_config(ae_cfg.section("training"), ae_cfg.source, "training", max_seconds)
    ae = new_autoencoder(cfg).to(dev)
    path = cfg.path("autoencoder.path")

    def save(step: int) -> None:
        save_autoencoder(ae, path, {"step": step})

    with distributed(dev, ranks):
        data = _train_data(cfg, ranks, progress, npz)
        hist = train_autoencoder(
            ae,
            torch.from_numpy(data["stacks"]),
            tcfg,
            progress=progress,  # progress("autoencoder", step, steps)
            save=save,
            checkpoint=resume_path(path, "autoencoder"),
            resume=resume,
            ranks=ranks,
        )
    if not ranks.writer:
        return {"path": str(path), **_short(hist)}
    ref, latent_ref = _recon_reference(cfg, ae, data, progress, npz)
    ae.cpu()
    meta: dict[str, Any] = {"history": _short(hist), "reconstruction_error": [ref.to_dict()]}
    latent_summary = None
    if latent_ref is not None:
        meta["latent_distance"] = latent_ref.to_dict()
        latent_summary = {k: v for k, v in meta["latent_distance"].items() if k not in ("latent_mean", "latent_sd")}
    save_autoencoder(ae, path, meta)
    return {"path": str(path), **_short(hist), "reconstruction_error": ref.to_dict(), "latent_distance": latent_summary}


def _recon_reference(
    cfg: Config, ae: Any, train: dict[str, np.ndarray], progress: Progress | None, npz: DataArg
) -> tuple[Any, Any]:
    """Reconstruction-error statistics at the explainer's steps, and the reference codes (encoder only),
    on the same held-out stacks (medxai explain's input checks)."""
    from medxai.metrics.latent import latent_reference
    from medxai.metrics.reconstruction import reconstruction_reference

    max_cases = 64  # enough for mean and sd, and a bounded cost after training
    test, _ = held_out_data(cfg, progress, npz)
    if test is not None:
        stacks, what = test["stacks"][:max_cases], "held-out cases"
    else:  # no held-out split: the last training cases, which slightly underestimates the error
        stacks, what = train["stacks"][-max_cases:], "training cases (no held-out split)"
    enc, dec, batch = diffexplainer_steps(cfg)
    recon = reconstruction_reference(ae, stacks, enc, dec, batch_size=batch, cases=what)
    if len(stacks) < 3:  # a leave-one-out sd needs 3 cases; explain then skips the latent check, saying why
        logger.warning("only %d reference stacks: no latent reference recorded (medxai explain skips that check)", len(stacks))
        return recon, None
    return recon, latent_reference(ae, stacks, batch_size=batch, cases=what)


def _teacher_outputs(
    cfg: Config, stacks: torch.Tensor, trust_code: bool = False
) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    from medxai.networks.teacher import TeacherFeatures

    teacher = load_teacher_from_config(cfg, trust_code)
    tf = TeacherFeatures(teacher, cfg.get("teacher.classifier_layer", None))
    logits, feats = tf.run_batched(stacks)
    return tf, logits, feats


def train_agent_from_config(
    cfg: Config,
    progress: Progress | None = None,
    npz: DataArg = None,
    max_seconds: float | None = None,
    trust_code: bool = False,
    *,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Distil the teacher into the agent on the training latents; save it to ``agent.path``
    (``trust_code``: see :func:`load_teacher_from_config`; ``device``, ``resume``: the module docstring).

    One process only: the agent is a small linear model (torchrun with several ranks is refused).
    """
    from medxai.networks.agent import Agent, save_agent
    from medxai.training.checkpoint import resume_path
    from medxai.training.runtime import resolve_device, single_process
    from medxai.training.trainers import agreement, compute_latents, train_agent

    single_process("agent")
    dev = resolve_device(device)
    tcfg = train_config(cfg.section("training.agent", {}), cfg.source, "training.agent", max_seconds)
    data = load_data(cfg, "train", progress, npz)
    stacks = torch.from_numpy(data["stacks"])
    tf, logits, feats = _teacher_outputs(cfg, stacks, trust_code)
    ae = load_autoencoder_from_config(cfg).to(dev)
    latents = compute_latents(ae, stacks)
    feature_dim = tf.feature_dim or int(cfg.get("agent.feature_dim", 256))
    agent = Agent(
        latents.shape[1], feature_dim, logits.shape[1], tf.classifier, torch.Generator().manual_seed(int(cfg.get("seed")))
    )
    path = cfg.path("agent.path")
    hist = train_agent(
        agent.to(dev),
        latents,
        logits,
        feats,
        tcfg,
        progress=progress,  # progress("agent", step, steps)
        checkpoint=resume_path(path, "agent"),
        resume=resume,
    )
    agent.cpu()
    result = {**_short(hist)}
    test, what = held_out_data(cfg, progress, npz)
    result["held_out"] = what
    if test is not None:
        ts = torch.from_numpy(test["stacks"])
        _, tlog, _ = _teacher_outputs(cfg, ts, trust_code)
        with torch.no_grad():
            result["agreement_test"] = agreement(agent(agent.normalise(compute_latents(ae, ts))), tlog)
        result["held_out_cases"] = len(ts)
    save_agent(agent, path, {"history": result})
    return {"path": str(path), **result}


def _short(hist: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hist.items() if k != "losses"}
