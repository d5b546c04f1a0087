"""Weights on disk: safetensors written atomically beside a JSON sidecar; loading never unpickles.

``.safetensors`` files are read with safetensors, anything else with ``torch.load(weights_only=True)``.
A state dict that does not fit a network raises one ``ValueError`` naming the file and the first
mismatching keys/shapes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from atomicfs import atomic_path

__all__ = ["save_weights", "load_weights", "load_state_checked", "write_json_atomic", "read_json"]

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
        except Exception as err:  # noqa: BLE001 - corrupt header etc.
            raise ValueError(f"weights file {str(p)!r} is not a readable safetensors file ({err}).") from err
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
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
    shapes = [f"{k}: file {tuple(state[k].shape)} vs {what} {tuple(own[k].shape)}" for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
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
