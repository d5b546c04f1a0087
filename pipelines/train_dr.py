"""Training the DVCE models for DR: the fundus diffusion model and the (robust) classifiers.

The functions behind ``medxai train diffusion`` and ``medxai train classifier [--robust]``
(:mod:`pipelines.commands.train_dr` is their command-line layer), and what ``medxai bench`` trains its
fundus models with. Both train on fundus phantoms (:func:`medxai.data.fundus_set`) unless ``data``
names an ``.npz`` written by ``StackSet.save`` (arrays ``x`` ``(N, 3, S, S)`` in [0, 1] and ``y`` ``(N,)``).

Both take ``device`` (``auto``/``cpu``/``cuda``) and ``resume``: with ``save_every > 0`` in the training
settings a checkpoint ``<out stem>.resume.pt`` is kept beside the weights and ``resume=True``
continues from it (:func:`medxai.training.trainers.train_loop`). Both run in one process (torchrun with
several ranks is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_fundus_arrays", "train_diffusion", "train_dr_classifier"]


def load_fundus_arrays(
    data: Path | None,
    n: int,
    seed: int,
    size: int,
    label: str = "referable",
    phantom_overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Images ``(N, 3, S, S)`` and labels ``(N,)`` as tensors, plus a description of the source.

    ``label`` and ``phantom_overrides`` (phantoms only; :func:`medxai.data.fundus_set`): referable DR or
    one lesion type present; fields of the phantom preset to replace.
    """
    import numpy as np
    import torch

    if data is not None:
        if label != "referable" or phantom_overrides:
            raise ValueError(
                f"--data {str(data)!r}: its images and labels 'y' are used as they are; a label other than "
                f"'referable' ({label!r}) or phantom overrides apply to phantoms only."
            )
        if not data.is_file() or data.suffix != ".npz":
            raise ValueError(f"--data {str(data)!r} must be an existing .npz written by StackSet.save (arrays x, y).")
        with np.load(data, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise ValueError(f"--data {str(data)!r} lacks arrays 'x' and 'y'; write it with StackSet.save().")
            x, y = f["x"], f["y"]
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"--data {str(data)!r} holds images of shape {x.shape}; expected (N, 3, {size}, {size}).")
        return torch.from_numpy(x).float(), torch.from_numpy(y).long(), {"data": str(data), "n": int(len(x))}
    from medxai.data import fundus_set

    s = fundus_set(n, seed, size=size, label=label, phantom_overrides=phantom_overrides)
    source = {"phantom": "fundus", "n": n, "phantom_seed": seed, "size": size, "label": label}
    if phantom_overrides:
        source["phantom_overrides"] = dict(phantom_overrides)
    return torch.from_numpy(s.x), torch.from_numpy(s.y), source


def _check_start(init: Path | None, resume: bool) -> None:
    if init is not None and resume:
        raise TypeError(
            f"--init {str(init)!r} and --resume exclude each other: --resume continues the interrupted run "
            "from its checkpoint (weights included); --init starts a new run from other weights."
        )


def train_diffusion(
    config_path: Path,
    out: Path,
    *,
    data: Path | None = None,
    n: int | None = None,
    seconds: float | None = None,
    steps: int | None = None,
    init: Path | None = None,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Train the unconditional fundus DDPM of ``config_path`` and save it to ``out`` (.safetensors + .json).

    ``init`` starts from saved weights (same architecture; the optimiser state starts afresh);
    ``resume`` continues an interrupted run exactly (weights, optimiser, EMA, generator).
    """
    import logging

    import torch

    from medxai.config import ConfigError, load_config
    from medxai.diffusion.autoencoder import ScheduleConfig
    from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM, save_ddpm
    from medxai.training.checkpoint import resume_path
    from medxai.training.dvce import train_ddpm
    from medxai.training.runtime import resolve_device, single_process
    from medxai.training.trainers import TrainConfig

    log = logging.getLogger(__name__)
    _check_start(init, resume)
    single_process("DDPM")
    dev = resolve_device(device)
    cfg = load_config(config_path, {"network": dict, "network.image_size": int, "training": dict, "training.steps": int})
    try:
        net_cfg = DDPMNetConfig.from_dict(cfg.section("network"))
        schedule = ScheduleConfig.from_dict(cfg.section("schedule", {}))
        train_section = cfg.section("training")
        if seconds is not None:
            train_section["max_seconds"] = seconds
        if steps is not None:
            train_section["steps"] = steps
        tcfg = TrainConfig.from_dict(train_section)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{config_path}: {err}") from err
    data_section = cfg.section("data", {})
    x, _, source = load_fundus_arrays(
        data, int(n if n is not None else data_section.get("n", 400)), int(data_section.get("seed", 0)), net_cfg.image_size
    )
    model = ImageDDPM(net_cfg, schedule, generator=torch.Generator().manual_seed(tcfg.seed))
    previous: dict[str, Any] = {}
    if init is not None:
        from medxai.diffusion.ddpm import load_ddpm
        from medxai.training.checkpoint import read_json

        loaded = load_ddpm(init)
        if loaded.config != net_cfg:
            raise ValueError(
                f"--init {str(init)!r} has network {loaded.config} but the config says {net_cfg}; use the same architecture."
            )
        model.unet.load_state_dict(loaded.unet.state_dict())
        previous = read_json(Path(init).with_suffix(".json")).get("history", {})
    log.info("DDPM: %.2fM parameters, %d training images", model.num_parameters() / 1e6, len(x))
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"-o must end in .safetensors, got {str(out)!r}.")
    meta_base = {
        "source": source,
        "config": cfg.to_dict(),
        "config_source": str(config_path),
        "init": None if init is None else str(init),
        "previous_steps": int(previous.get("steps", 0)) + int(previous.get("previous_steps", 0)),
    }

    def save(step: int) -> None:
        save_ddpm(model, out, {**meta_base, "steps": step})

    hist = train_ddpm(model.to(dev), x, tcfg, save=save, checkpoint=resume_path(out, "ddpm"), resume=resume)
    model.cpu()
    losses = hist.pop("losses")
    hist["previous_steps"] = meta_base["previous_steps"]
    save_ddpm(model, out, {**meta_base, "history": {**hist, "losses_every_10": losses[::10]}})
    return hist


def train_dr_classifier(
    config_path: Path,
    out: Path | None = None,
    *,
    robust: bool = False,
    data: Path | None = None,
    n: int | None = None,
    seconds: float | None = None,
    steps: int | None = None,
    trust_code: bool = False,
    label: str | None = None,
    phantom_overrides: dict[str, Any] | None = None,
    init: Path | None = None,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Train the plain (or, with ``robust``, the adversarially robust) classifier of a DR config.

    ``trust_code`` (or ``trust_code: true`` in the config) lets ``class_path`` name a class outside the
    allow-list of :mod:`medxai.trust`. ``label`` and ``phantom_overrides`` (phantom data only) replace
    ``train.data.label`` (default ``referable``; see :data:`medxai.data.FUNDUS_LABELS`) and
    ``train.data.phantom_overrides`` (fields of :class:`medxai.phantoms.FundusPhantomConfig`). ``init``:
    weights of the same architecture to start from (e.g. the plain classifier, fine-tuned adversarially
    for the robust one: a fraction of the steps from scratch). ``device``, ``resume``: the module docstring.
    """
    import torch

    from medxai.config import ConfigError, load_config
    from medxai.networks.classifiers import load_class
    from medxai.training.checkpoint import resume_path, save_weights
    from medxai.training.dvce import RobustConfig, evaluate_classifier, train_classifier
    from medxai.training.runtime import resolve_device, single_process
    from medxai.training.trainers import TrainConfig
    from medxai.trust import trusts_code

    _check_start(init, resume)
    single_process("robust classifier" if robust else "classifier")
    dev = resolve_device(device)

    cfg = load_config(config_path, {"image_size": int, "classifier": dict, "train": dict, "train.classifier": dict})
    key = "robust_classifier" if robust else "classifier"
    section = cfg.section(key) if cfg.get(key, None) else cfg.section("classifier")
    if section.get("kind", "class_path") != "class_path" or not section.get("class_path"):
        raise ConfigError(f"{config_path}: '{key}' must be kind: class_path with a class_path to train it.")
    # before the data: a refused class_path fails at once
    where = f"{config_path}: {key if cfg.get(key, None) else 'classifier'}.class_path"
    cls = load_class(str(section["class_path"]), trust_code=trusts_code(cfg, trust_code), where=where)
    try:
        robust_section = robust and cfg.get("train.robust_classifier", None)
        train_section = cfg.section("train.robust_classifier" if robust_section else "train.classifier")
        if seconds is not None:
            train_section["max_seconds"] = seconds
        if steps is not None:
            train_section["steps"] = steps
        tcfg = TrainConfig.from_dict(train_section)
        rcfg = RobustConfig.from_dict(cfg.section("train.robust", {})) if robust else None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{config_path}: {err}") from err
    size = int(cfg.get("image_size"))
    data_section = cfg.section("train.data", {})
    label = str(label or data_section.get("label", "referable"))
    phantom_overrides = dict(phantom_overrides or data_section.get("phantom_overrides") or {})
    from medxai.data import FUNDUS_LABELS

    if label not in FUNDUS_LABELS:
        raise ConfigError(f"{config_path}: train.data.label must be one of {', '.join(FUNDUS_LABELS)}, got {label!r}.")
    x, y, source = load_fundus_arrays(
        data,
        int(n if n is not None else data_section.get("n", 400)),
        int(data_section.get("seed", 0)),
        size,
        label,
        phantom_overrides,
    )
    kwargs = dict(section.get("init_kwargs", {}))
    if "generator" in cls.__init__.__code__.co_varnames:
        kwargs_build = {**kwargs, "generator": torch.Generator().manual_seed(tcfg.seed)}
    else:
        kwargs_build = kwargs
    model = cls(**kwargs_build)
    if init is not None:
        from medxai.training.checkpoint import load_weights

        try:
            model.load_state_dict({k: v.float() for k, v in load_weights(init).items()})
        except RuntimeError as err:
            raise ConfigError(f"--init {str(init)!r} does not fit {section['class_path']}: {err}") from err
    target = Path(out) if out is not None else cfg.path(f"{key}.path")
    hist = train_classifier(model.to(dev), x, y, tcfg, robust=rcfg, checkpoint=resume_path(target, key), resume=resume)
    model.cpu()
    held = data_section.get("val_n")
    # relative to the config file, as every path in a config
    val_path = cfg.path("train.data.val_path") if data_section.get("val_path") else None
    metrics: dict[str, Any] = {}
    if held or val_path is not None:
        if val_path is not None and val_path.is_file() and label == "referable" and not phantom_overrides:
            xv, yv, _ = load_fundus_arrays(val_path, 0, 0, size)
        else:
            xv, yv, _ = load_fundus_arrays(
                None, int(held or 100), int(data_section.get("val_seed", 10_000)), size, label, phantom_overrides
            )
        metrics = evaluate_classifier(model, xv, yv)
        if rcfg is not None:
            from medxai.training.robust import robust_accuracy

            clean, adv = robust_accuracy(model, xv, yv, rcfg.eps, 10, generator=torch.Generator().manual_seed(1))
            metrics.update({"clean_accuracy": clean, "robust_accuracy": adv, "attack_eps": rcfg.eps})
    losses = hist.pop("losses")
    save_weights(
        target,
        model.state_dict(),
        {
            "class_path": section["class_path"],
            "init_kwargs": kwargs,
            "robust": None if rcfg is None else vars(rcfg),
            "history": {**hist, "losses_every_10": losses[::10]},
            "validation": metrics,
            "source": source,
            "config_source": str(config_path),
            "init": None if init is None else str(init),
        },
    )
    hist["validation"] = metrics
    hist["out"] = str(target)
    return hist
