"""The diffusion autoencoder's own reconstruction error, and its reference statistics.

An input unlike the training images tends to reconstruct worse; the explain job compares the query's
reconstruction error (from the reconstruction DiffExplainer computes anyway) with statistics recorded
on held-out training-distribution cases when the autoencoder was trained (``medxai train
autoencoder``) or shipped (``scripts/make_pretrained.py``). DDIM reconstruction error depends strongly
on the number of encode/decode steps (about 0.002 at 20/20 and 0.03 at 5/5 for the shipped CT model),
so each reference is recorded for one ``(encode_steps, decode_steps)`` pair and only compared at it.

The references live in the autoencoder's JSON side-car under ``"reconstruction_error"``: a list of
:meth:`ReconstructionReference.to_dict` entries, one per step pair.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SIDECAR_KEY",
    "ReconstructionReference",
    "reconstruction_mse",
    "reconstruction_reference",
    "references_from_sidecar",
    "find_reference",
    "record_reference",
    "evaluating",
    "stack_chunks",
    "reference_from_dict",
]

logger = logging.getLogger(__name__)

#: key of the reference list in the autoencoder's JSON side-car
SIDECAR_KEY = "reconstruction_error"


def reconstruction_mse(x: torch.Tensor | np.ndarray, reconstruction: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-case mean squared error between inputs and their reconstructions.

    Parameters
    ----------
    x, reconstruction : tensor or array, shape (B, ...)
        Images in [0, 1] (e.g. stacks ``(B, n, S, S)``).

    Returns
    -------
    numpy.ndarray float64, shape (B,)
    """
    a = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
    b = torch.as_tensor(np.asarray(reconstruction) if not isinstance(reconstruction, torch.Tensor) else reconstruction)
    b = b.detach().cpu().double()
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"x has shape {tuple(a.shape)} and reconstruction {tuple(b.shape)}; pass two batches (B, ...) of the same shape."
        )
    return ((a - b) ** 2).reshape(a.shape[0], -1).mean(dim=1).numpy()


@dataclasses.dataclass(frozen=True)
class ReconstructionReference:
    """Distribution of the per-case reconstruction MSE on held-out training-distribution cases.

    Attributes
    ----------
    encode_steps, decode_steps : int
        DDIM steps the errors were measured at (errors at other step counts are not comparable).
    n : int
        Number of cases.
    mean, sd, p50, p95, p99, max : float
        Statistics of the per-case MSE (images in [0, 1]).
    cases : str
        What the cases were (e.g. ``"phantom 'test', seed 5, 40 cases"``).
    metric : str
        ``"mse"``.
    """

    encode_steps: int
    decode_steps: int
    n: int
    mean: float
    sd: float
    p50: float
    p95: float
    p99: float
    max: float
    cases: str = ""
    metric: str = "mse"

    def upper_limit(self, k: float) -> float:
        """``mean + k * sd``: the largest error still counted as in distribution."""
        return float(self.mean + k * self.sd)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReconstructionReference:
        return reference_from_dict(cls, data, "scripts/make_pretrained.py --recon-reference-only")

    @classmethod
    def from_errors(
        cls, errors: Sequence[float] | np.ndarray, encode_steps: int, decode_steps: int, cases: str = ""
    ) -> ReconstructionReference:
        """Statistics of the per-case errors ``(N,)``."""
        e = np.asarray(errors, dtype=np.float64).ravel()
        if e.size < 2 or not np.all(np.isfinite(e)):
            raise ValueError(f"need at least 2 finite per-case errors for a reference, got {e.size} ({e[:4].tolist()}...).")
        p50, p95, p99 = np.percentile(e, [50, 95, 99])
        return cls(
            int(encode_steps),
            int(decode_steps),
            int(e.size),
            float(e.mean()),
            float(e.std(ddof=1)),
            float(p50),
            float(p95),
            float(p99),
            float(e.max()),
            cases,
        )


def stack_chunks(stacks: torch.Tensor | np.ndarray, batch_size: int) -> tuple[torch.Tensor, ...]:
    """``(N, n, S, S)`` stacks as float32 chunks of about ``batch_size`` slices (whole stacks each)."""
    x = torch.as_tensor(np.asarray(stacks) if not isinstance(stacks, torch.Tensor) else stacks, dtype=torch.float32)
    return x.split(max(1, batch_size // max(1, x.shape[1])))


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode for the block; its train/eval mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def reference_from_dict(cls: type, data: Mapping[str, Any], fix: str) -> Any:
    """``cls(**data)`` for a reference dataclass read from a side-car; missing fields name ``fix``."""
    known = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(k for k in known - set(data) if k not in ("cases", "metric"))
    if missing:
        raise ValueError(f"{cls.__name__} in the side-car lacks {missing}; re-record it ({fix}).")
    return cls(**{k: v for k, v in data.items() if k in known})


def reconstruction_reference(
    autoencoder: Any,
    stacks: torch.Tensor | np.ndarray,
    encode_steps: int,
    decode_steps: int,
    *,
    batch_size: int = 64,
    cases: str = "",
) -> ReconstructionReference:
    """Reconstruct ``stacks`` as DiffExplainer does and return the statistics of the per-case MSE.

    Parameters
    ----------
    autoencoder : medxai.diffusion.DiffusionAutoencoder
        1-channel DiffAE (each slice encoded separately).
    stacks : tensor or array, shape (N, n, S, S)
        Held-out training-distribution stacks in [0, 1].
    encode_steps, decode_steps : int
        DDIM steps (use the explainer's).
    batch_size : int
        Slices per network call.
    cases : str
        Description of the cases, stored with the statistics.
    """
    dev = next(autoencoder.parameters()).device
    errors = []
    with evaluating(autoencoder), torch.no_grad():
        # the same calls as DiffExplainer: semantic code, DDIM inversion, DDIM decode from x_T
        for chunk in stack_chunks(stacks, batch_size):
            xd = chunk.to(dev)
            z = autoencoder.encode_stack(xd, batch_size)
            x_T = autoencoder.stochastic_encode_stack(xd, z, encode_steps, batch_size)
            rec = autoencoder.decode_stack(x_T, z, decode_steps, batch_size)
            errors.append(reconstruction_mse(chunk, rec.cpu()))
    ref = ReconstructionReference.from_errors(np.concatenate(errors), encode_steps, decode_steps, cases)
    logger.info(
        "reconstruction MSE at %d/%d steps on %s: mean %.5f sd %.5f p99 %.5f",
        encode_steps,
        decode_steps,
        cases or f"{ref.n} cases",
        ref.mean,
        ref.sd,
        ref.p99,
    )
    return ref


def references_from_sidecar(meta: Mapping[str, Any]) -> list[ReconstructionReference]:
    """The references recorded in an autoencoder side-car (an empty list when none were recorded)."""
    raw = meta.get(SIDECAR_KEY) or []
    if isinstance(raw, Mapping):
        raw = [raw]
    return [ReconstructionReference.from_dict(r) for r in raw]


def find_reference(
    refs: Sequence[ReconstructionReference], encode_steps: int, decode_steps: int
) -> ReconstructionReference | None:
    """The reference measured at exactly these steps, or None."""
    for r in refs:
        if r.encode_steps == int(encode_steps) and r.decode_steps == int(decode_steps):
            return r
    return None


def record_reference(sidecar: str | os.PathLike[str], ref: ReconstructionReference) -> Path:
    """Add ``ref`` to the side-car JSON (replacing one at the same steps), written atomically."""
    from medxai.training.checkpoint import read_json, write_json_atomic

    path = Path(sidecar)
    meta = read_json(path) if path.is_file() else {}
    keep = [
        r.to_dict()
        for r in references_from_sidecar(meta)
        if (r.encode_steps, r.decode_steps) != (ref.encode_steps, ref.decode_steps)
    ]
    meta[SIDECAR_KEY] = sorted(keep + [ref.to_dict()], key=lambda r: (-r["encode_steps"], -r["decode_steps"]))
    return write_json_atomic(path, meta)
