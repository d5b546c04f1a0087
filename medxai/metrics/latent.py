"""Distance of a query's semantic code from the autoencoder's reference codes: an out-of-distribution score.

The diffusion autoencoder's reconstruction error (:mod:`medxai.metrics.reconstruction`) barely
separates out-of-distribution queries, because DDIM inversion finds a stochastic code ``x_T`` that
reproduces almost any image. The SEMANTIC code ``z`` (the encoder output DiffExplainer manipulates)
has no such freedom: a head CT lands far from the chest codes the encoder was trained on.

The score of a case is its mean squared standardised code

    d(z) = mean_j ((z_j - mu_j) / sd_j) ** 2

over the ``D = n_slices * z_dim`` dimensions of the combined stack latent (the same ``(B, D)`` latent
DiffExplainer computes, :meth:`medxai.diffusion.DiffusionAutoencoder.encode_stack`), with ``mu`` and
``sd`` the per-dimension mean and sample sd over reference cases. A query from the reference
distribution scores about 1.

The reference (:class:`LatentReference`) keeps ``mu`` and ``sd`` (from all reference cases) and the
distribution of ``d`` over the reference cases, each scored LEAVE-ONE-OUT (against ``mu`` / ``sd`` of
the other ``n - 1`` cases): scored in-sample, every reference case would be part of its own
statistics and the distribution would sit too low (its mean is exactly ``(n - 1) / n`` in-sample)
compared with a new case's. It lives in the autoencoder's JSON side-car under ``"latent_distance"``
(:meth:`LatentReference.to_dict`); no DDIM steps are involved, so one reference serves every
encode/decode setting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .reconstruction import evaluating, reference_from_dict, stack_chunks

__all__ = [
    "LATENT_SIDECAR_KEY",
    "LatentReference",
    "latent_distance",
    "latent_reference",
    "latent_reference_from_sidecar",
    "record_latent_reference",
]

logger = logging.getLogger(__name__)

#: key of the reference in the autoencoder's JSON side-car
LATENT_SIDECAR_KEY = "latent_distance"
#: floor of a reference sd (a dimension constant over the reference cases would divide by zero)
_SD_FLOOR = 1e-8


def _as_2d(z: torch.Tensor | np.ndarray, name: str = "z") -> np.ndarray:
    a = z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be combined latents (B, D), got shape {a.shape}.")
    return a


def latent_distance(z: torch.Tensor | np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Mean squared standardised code ``mean_j ((z_j - mean_j) / sd_j)^2`` per case.

    Parameters
    ----------
    z : tensor or array, shape (B, D)
        Combined stack latents.
    mean, sd : array, shape (D,)
        Per-dimension reference mean and sd.

    Returns
    -------
    numpy.ndarray float64, shape (B,)
    """
    a = _as_2d(z)
    m, s = np.asarray(mean, dtype=np.float64).ravel(), np.asarray(sd, dtype=np.float64).ravel()
    if a.shape[1] != m.size or m.size != s.size:
        raise ValueError(
            f"z has {a.shape[1]} dimensions but the reference has {m.size} means and {s.size} sds; "
            "record the reference with the same autoencoder and the same number of stack slices."
        )
    return (((a - m) / np.maximum(s, _SD_FLOOR)) ** 2).mean(axis=1)


@dataclasses.dataclass(frozen=True)
class LatentReference:
    """Reference codes of the autoencoder: per-dimension mean/sd and the distribution of the distance.

    Attributes
    ----------
    n : int
        Number of reference cases.
    mean, sd, p50, p95, p99, max : float
        Statistics of the leave-one-out :func:`latent_distance` of the reference cases.
    latent_mean, latent_sd : tuple of float, length D
        Per-dimension mean and sample sd (``ddof=1``) of the codes over all reference cases.
    cases : str
        What the cases were (e.g. ``"phantom 'test' cases, seed 5"``).
    metric : str
        ``"mean_squared_standardised_latent"``.
    """

    n: int
    mean: float
    sd: float
    p50: float
    p95: float
    p99: float
    max: float
    latent_mean: tuple[float, ...]
    latent_sd: tuple[float, ...]
    cases: str = ""
    metric: str = "mean_squared_standardised_latent"

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent_mean", tuple(float(v) for v in self.latent_mean))
        object.__setattr__(self, "latent_sd", tuple(float(v) for v in self.latent_sd))
        if not self.latent_mean or len(self.latent_mean) != len(self.latent_sd):
            raise ValueError(
                f"latent_mean and latent_sd must be non-empty and of one length, got {len(self.latent_mean)} "
                f"and {len(self.latent_sd)}; re-record the reference (scripts/make_pretrained.py)."
            )

    @property
    def dim(self) -> int:
        """``D``, the latent size the reference was recorded at."""
        return len(self.latent_mean)

    def distance(self, z: torch.Tensor | np.ndarray) -> np.ndarray:
        """:func:`latent_distance` of combined latents ``(B, D)`` against this reference, ``(B,)``."""
        return latent_distance(z, np.asarray(self.latent_mean), np.asarray(self.latent_sd))

    def upper_limit(self, k: float) -> float:
        """``mean + k * sd`` of the reference distances: the largest still counted as in distribution."""
        return float(self.mean + k * self.sd)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # float32 precision is plenty for a standardisation; keeps the side-car short
        d["latent_mean"] = [float(f"{v:.7g}") for v in self.latent_mean]
        d["latent_sd"] = [float(f"{v:.7g}") for v in self.latent_sd]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentReference:
        return reference_from_dict(cls, data, "scripts/make_pretrained.py --latent-reference-only")

    @classmethod
    def from_latents(cls, latents: torch.Tensor | np.ndarray, cases: str = "") -> LatentReference:
        """Reference from the codes ``(N, D)`` of N >= 3 reference cases (distances scored leave-one-out)."""
        z = _as_2d(latents, "latents")
        n = z.shape[0]
        if n < 3 or not np.all(np.isfinite(z)):
            raise ValueError(
                f"need the finite codes of at least 3 reference cases, got {n} (finite: {bool(np.all(np.isfinite(z)))})."
            )
        mu, sd = z.mean(axis=0), z.std(axis=0, ddof=1)
        # leave-one-out mean and sd of every case at once, from the full-sample sums
        s1, s2 = z.sum(axis=0), (z**2).sum(axis=0)
        mu_loo = (s1 - z) / (n - 1)
        var_loo = np.maximum((s2 - z**2 - (n - 1) * mu_loo**2) / (n - 2), 0.0)
        d = (((z - mu_loo) / np.maximum(np.sqrt(var_loo), _SD_FLOOR)) ** 2).mean(axis=1)
        p50, p95, p99 = np.percentile(d, [50, 95, 99])
        return cls(
            n,
            float(d.mean()),
            float(d.std(ddof=1)),
            float(p50),
            float(p95),
            float(p99),
            float(d.max()),
            tuple(mu.tolist()),
            tuple(sd.tolist()),
            cases,
        )


def latent_reference(
    autoencoder: Any, stacks: torch.Tensor | np.ndarray, *, batch_size: int = 64, cases: str = ""
) -> LatentReference:
    """Encode ``stacks`` as DiffExplainer does and return their :class:`LatentReference`.

    Parameters
    ----------
    autoencoder : medxai.diffusion.DiffusionAutoencoder
        1-channel DiffAE (each slice encoded separately).
    stacks : tensor or array, shape (N, n, S, S)
        Training-distribution stacks in [0, 1] (held-out cases where there are any).
    batch_size : int
        Slices per network call.
    cases : str
        Description of the cases, stored with the statistics.
    """
    dev = next(autoencoder.parameters()).device
    with evaluating(autoencoder), torch.no_grad():  # the encoder alone: no DDIM
        z = torch.cat([autoencoder.encode_stack(c.to(dev), batch_size).cpu() for c in stack_chunks(stacks, batch_size)])
    ref = LatentReference.from_latents(z, cases)
    logger.info(
        "latent distance on %s (leave-one-out): mean %.3f sd %.3f p99 %.3f max %.3f",
        cases or f"{ref.n} cases",
        ref.mean,
        ref.sd,
        ref.p99,
        ref.max,
    )
    return ref


def latent_reference_from_sidecar(meta: Mapping[str, Any]) -> LatentReference | None:
    """The reference recorded in an autoencoder side-car, or None when none was recorded."""
    raw = meta.get(LATENT_SIDECAR_KEY)
    return LatentReference.from_dict(raw) if raw else None


def record_latent_reference(sidecar: str | os.PathLike[str], ref: LatentReference) -> Path:
    """Store ``ref`` in the side-car JSON (replacing an earlier one), written atomically."""
    from medxai.training.checkpoint import read_json, write_json_atomic

    path = Path(sidecar)
    meta = read_json(path) if path.is_file() else {}
    meta[LATENT_SIDECAR_KEY] = ref.to_dict()
    return write_json_atomic(path, meta)
