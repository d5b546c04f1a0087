"""Weights on disk: safetensors written atomically beside a JSON sidecar; loading never unpickles.

The one format of every medxai model (agent, autoencoder, DDPM, NN-Explainer network, classifiers):
``<name>.safetensors`` (the state dict) plus ``<name>.json`` (``kind``, the architecture needed to
rebuild the network, and free metadata such as the training history). :func:`save_pretrained` and
:func:`load_pretrained` take either the weights file or a folder, which then holds
``<default name>.safetensors`` and ``<default name>.json`` (e.g. ``medxai/pretrained/ct`` holds
``agent.*``, ``autoencoder.*`` and ``teacher.*``).

``.safetensors`` files are read with safetensors, anything else with ``torch.load(weights_only=True)``.
A state dict that does not fit a network raises one ``ValueError`` naming the file and the first
mismatching keys/shapes.

Resumable training keeps a second file beside the weights, ``<name>.resume.pt`` (:func:`resume_path`):
the live weights, the optimiser, any EMA, the trainer's generator, the step count and the loss history
(:func:`save_train_state`, read back with ``torch.load(weights_only=True)`` by :func:`load_train_state`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atomicfs import atomic_path

__all__ = [
    "TRAIN_STATE_FORMAT",
    "resume_path",
    "save_train_state",
    "load_train_state",
    "save_weights",
    "load_weights",
    "load_state_checked",
    "write_json_atomic",
    "read_json",
    "pretrained_files",
    "save_pretrained",
    "load_pretrained",
]

# weights files load_weights reads besides safetensors (torch.load with weights_only=True)
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

logger = logging.getLogger(__name__)


def _atomic(final: Path, write: Any) -> None:
    with atomic_path(final) as tmp:
        write(str(tmp))


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON to ``path`` under a temporary name, then rename."""
    final = Path(path)

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

    _atomic(final, _write)
    return final


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse the JSON file ``path``; a missing or malformed file raises ``ValueError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{str(p)!r} does not exist; train the model first or fix the path.")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(p)!r} is not valid JSON ({err}); re-create it.") from err


def save_weights(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
    """Save a state dict as safetensors (atomically) and ``meta`` as ``<stem>.json`` beside it."""
    from safetensors.torch import save_file

    final = Path(path)
    if final.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(final)!r}.")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    _atomic(final, lambda tmp: save_file(tensors, tmp))
    if meta is not None:
        write_json_atomic(final.with_suffix(".json"), dict(meta))
    logger.info("saved %d tensors to %s", len(tensors), final)
    return final


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or (``weights_only=True``) a torch file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"weights file {str(p)!r} does not exist; train the model first or fix the path.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except Exception as err:
            raise ValueError(f"weights file {str(p)!r} is not a readable safetensors file ({err}).") from err
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"weights file {str(p)!r} cannot be loaded with weights_only=True ({type(err).__name__}: {err}); "
            "save a plain state dict (or safetensors)."
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(p)!r} holds a {type(state).__name__}, not a state dict.")
    return state


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str = "network") -> nn.Module:
    """``module.load_state_dict(state)`` with one clear ``ValueError`` when the weights do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs {what} {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        raise ValueError(
            f"weights in {source!r} do not fit the {what}: {', '.join(parts)}; use the architecture config "
            "the weights were trained with (or retrain)."
        )
    module.load_state_dict(state)
    return module


def pretrained_files(path: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """The weights file and the JSON side-car that ``path`` names.

    Parameters
    ----------
    path : str or path-like
        A weights file (``x.safetensors`` -> ``x.json`` beside it; torch files ``.pt``/``.pth``/``.bin``/
        ``.ckpt`` are accepted for reading) or a folder (an existing directory or a path without a
        suffix) -> ``folder/<name>.safetensors`` and ``folder/<name>.json``.
    name : str
        File stem inside a folder (``"agent"``, ``"autoencoder"``, ``"ddpm"``, ``"explainer"``, ...).

    Returns
    -------
    (Path, Path)
        Weights file and side-car.
    """
    p = Path(path)
    if p.is_dir() or (p.suffix == "" and not p.is_file()):
        return p / f"{name}.safetensors", p / f"{name}.json"
    if p.suffix == ".safetensors" or p.suffix in _TORCH_SUFFIXES:
        return p, p.with_suffix(".json")
    raise ValueError(
        f"path {str(p)!r} is neither a weights file (.safetensors) nor a folder; pass 'model.safetensors' "
        f"or a folder (which then holds {name}.safetensors and {name}.json)."
    )


def save_pretrained(
    path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, name: str
) -> Path:
    """Write ``state`` as safetensors and ``meta`` as the JSON side-car, each atomically.

    Parameters
    ----------
    path : str or path-like
        ``x.safetensors`` or a folder (created if missing); see :func:`pretrained_files`.
    state : mapping of str to torch.Tensor
        The state dict (copied to the CPU).
    meta : mapping
        Side-car content: ``kind``, the architecture, free metadata (JSON-serialisable).
    name : str
        File stem inside a folder.

    Returns
    -------
    Path
        The weights file.
    """
    weights, sidecar = pretrained_files(path, name)
    if weights.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors or name a folder, got {str(path)!r}.")
    save_weights(weights, state, None)
    write_json_atomic(sidecar, dict(meta))
    return weights


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    name: str,
    kinds: Collection[str | None] | None = None,
    sidecar_required: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """Read weights and side-car written by :func:`save_pretrained` (no unpickling).

    Parameters
    ----------
    path : str or path-like
        Weights file or folder; see :func:`pretrained_files`.
    name : str
        File stem inside a folder.
    kinds : collection of str or None, optional
        Accepted values of the side-car's ``kind`` (``None`` in the collection: a side-car without
        ``kind``, as older files have). ``None``: no check.
    sidecar_required : bool
        False: a missing side-car gives empty metadata (the caller supplies the architecture).

    Returns
    -------
    (dict, dict, Path)
        State dict, side-car metadata and the weights file it came from.
    """
    weights, sidecar = pretrained_files(path, name)
    if not weights.is_file():
        raise ValueError(f"weights file {str(weights)!r} does not exist; train the model first or fix the path.")
    meta = read_json(sidecar) if sidecar_required or sidecar.is_file() else {}
    if kinds is not None and meta.get("kind") not in kinds:
        wanted = " or ".join(repr(k) for k in kinds if k is not None)
        raise ValueError(
            f"{str(sidecar)!r} describes kind={meta.get('kind')!r}, not {wanted}; pass the weights of the right model."
        )
    return load_weights(weights), meta, weights


# ----------------------------------------------------------------------------- resumable training
#: Version of the layout :func:`save_train_state` writes.
TRAIN_STATE_FORMAT = 1


def resume_path(weights: str | os.PathLike[str], name: str = "model") -> Path:
    """The resume checkpoint of the weights ``weights``: ``<stem>.resume.pt`` beside them.

    ``weights`` is a weights file or a folder as in :func:`pretrained_files` (``folder/<name>.resume.pt``).
    """
    file, _ = pretrained_files(weights, name)
    return file.with_suffix(".resume.pt")


def save_train_state(
    path: str | os.PathLike[str],
    *,
    what: str,
    identity: Mapping[str, Any],
    step: int,
    losses: Sequence[float],
    seconds: float,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> Path:
    """Write everything a trainer needs to continue exactly where it was, atomically.

    Parameters
    ----------
    path : path
        The checkpoint (``.resume.pt``, :func:`resume_path`); replaced as a whole or not at all.
    what : str
        The model trained (``"autoencoder"``, ``"teacher"``, ...); a resume of another model is refused.
    identity : mapping
        The settings a resumed run must share (learning rate, batch size, seed, data size, ...).
    step : int
        Optimiser steps done.
    losses : sequence of float
        The loss of every step so far.
    seconds : float
        Training time so far.
    modules : mapping of str to nn.Module
        ``"model"`` (the live weights) and any other state to restore (``"ema"``).
    optimizer : torch.optim.Optimizer
    generator : torch.Generator
        The trainer's generator (batches, noise, flips, dropout): its state makes the rest of the
        run draw what an uninterrupted run would have drawn.
    """
    state = {
        "format": TRAIN_STATE_FORMAT,
        "what": what,
        "identity": dict(identity),
        "step": int(step),
        "losses": [float(v) for v in losses],
        "seconds": float(seconds),
        "modules": {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()} for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
    }
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _atomic(final, lambda tmp: torch.save(state, tmp))
    logger.info("%s checkpoint at step %d: %s", what, step, final)
    return final


def load_train_state(path: str | os.PathLike[str], *, what: str, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint of :func:`save_train_state` and check that it belongs to this run.

    Raises
    ------
    ValueError
        One paragraph naming the file: it does not exist, is no medxai training checkpoint, holds
        another model (``what``), or was written with other settings (``identity``, the differing
        fields named).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"cannot resume the {what}: there is no checkpoint {str(p)!r}. A run writes it every save_every steps "
            "(training settings, save_every > 0) and when it ends; start once without --resume."
        )
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{str(p)!r} is not a readable medxai training checkpoint ({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(
            f"{str(p)!r} is not a medxai training checkpoint of format {TRAIN_STATE_FORMAT}; "
            "delete it and start without --resume."
        )
    if state.get("what") != what:
        raise ValueError(
            f"{str(p)!r} is a checkpoint of the {state.get('what')!r} training, not of the {what!r}; "
            "pass the checkpoint of this model or start without --resume."
        )
    saved = state.get("identity", {})
    diff = [f"{k}={saved.get(k)!r} there but {identity[k]!r} here" for k in identity if saved.get(k) != identity[k]]
    if diff:
        raise ValueError(
            f"{str(p)!r} was written by a {what} run with other settings ({'; '.join(diff)}); resume with the settings "
            "it was started with, or start without --resume."
        )
    return state
