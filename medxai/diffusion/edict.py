"""EDICT: exactly invertible DDIM by two coupled sequences, as a scheduler object.

Wallace, Gokul, Naik (CVPR 2023). The state is a pair ``(x, y)``; a reverse step from level ``i`` to
``i - 1`` with the DDIM coefficients ``a_i = sqrt(abar_{i-1} / abar_i)`` and
``b_i = sqrt(1 - abar_{i-1}) - sqrt(abar_{i-1} (1 - abar_i) / abar_i)`` is

    x' = a x + b eps(y, t_i);   y' = a y + b eps(x', t_i)
    x_{i-1} = p x' + (1 - p) y';   y_{i-1} = p y' + (1 - p) x_{i-1}

and each line is solved exactly backwards, so encoding and decoding are each other's inverse up to
float round-off (two network calls per step). The inverse divides by ``p`` twice per step; the
difference ``x - y`` grows by ``1 / p**2`` per encoding step (1.16 at p = 0.93, the authors' value).

Why our own: diffusers has EDICT only as an unmaintained community pipeline for Stable Diffusion, and
its DDIM / DPM-Solver inverse schedulers are approximate. Like a diffusers scheduler, this object only
does the per-step arithmetic; the loop that calls the network lives in the model
(:class:`medxai.diffusion.autoencoder.DiffusionAutoencoder`).

BDIA-DDIM (one call per step) was measured first on the CPU DiffAE and rejected: its inverse has a
parasitic mode growing by ``1 / (1 - gamma)`` per step, so at 20 steps and gamma = 0.5 the code reached
1e6 in magnitude and float32 round-off left 13 dB. EDICT itself reconstructs exactly, but decoding a
MOVED latent from its pair diverges on the CPU DiffAE (docs/diffexplainer.md).

Levels: ``t_0`` is the clean image (alpha = 1) and ``t_1 < ... < t_N`` the timesteps of diffusers'
``DDIMScheduler`` with the same schedule and step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

__all__ = ["EDICTScheduler"]

#: eps(sample, network timestep) -> predicted noise
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


class EDICTScheduler:
    """Per-step arithmetic of EDICT on a diffusers DDIM timestep ladder.

    Parameters
    ----------
    mix : float
        The mixing weight ``p`` in ``(0.5, 1]``; 0.93 as in the paper. Lower mixes the sequences more
        strongly (closer to each other) and amplifies more on inversion.
    **ddim_kwargs
        The schedule, as for ``diffusers.DDIMScheduler``.
    """

    def __init__(self, mix: float = 0.93, **ddim_kwargs: object) -> None:
        if not (isinstance(mix, (int, float)) and 0.5 < float(mix) <= 1.0):
            raise ValueError(f"mix must be in (0.5, 1], got {mix!r}; the EDICT paper uses 0.93.")
        self.mix = float(mix)
        self._ddim = DDIMScheduler(**ddim_kwargs)  # type: ignore[arg-type]
        self.levels: list[int] = []
        self._alphas: list[float] = []

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Build the ladder ``t_0 (clean) < t_1 < ... < t_N`` with ``N = num_inference_steps``."""
        self._ddim.set_timesteps(num_inference_steps)
        self.levels = sorted(int(t) for t in self._ddim.timesteps)
        ac = self._ddim.alphas_cumprod
        self._alphas = [float(self._ddim.final_alpha_cumprod)] + [float(ac[t]) for t in self.levels]

    @property
    def num_steps(self) -> int:
        return len(self.levels)

    def _coefficients(self, i: int) -> tuple[float, float]:
        a_i, a_prev = self._alphas[i], self._alphas[i - 1]
        a = math.sqrt(a_prev / a_i)
        b = math.sqrt(1.0 - a_prev) - math.sqrt(a_prev * (1.0 - a_i) / a_i)
        return a, b

    def step(self, eps: EpsFn, x: torch.Tensor, y: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_{i-1}, y_{i-1})`` from ``(x_i, y_i)``; ``eps`` is called twice at timestep ``t_i``."""
        a, b = self._coefficients(i)
        t, p = self.levels[i - 1], self.mix
        x_inter = a * x + b * eps(y, t)
        y_inter = a * y + b * eps(x_inter, t)
        x_new = p * x_inter + (1.0 - p) * y_inter
        y_new = p * y_inter + (1.0 - p) * x_new
        return x_new, y_new

    def inverse_step(self, eps: EpsFn, x: torch.Tensor, y: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_i, y_i)`` from ``(x_{i-1}, y_{i-1})``: the exact inverse of :meth:`step` at level ``i``."""
        a, b = self._coefficients(i)
        t, p = self.levels[i - 1], self.mix
        y_inter = (y - (1.0 - p) * x) / p
        x_inter = (x - (1.0 - p) * y_inter) / p
        y_old = (y_inter - b * eps(x_inter, t)) / a
        x_old = (x_inter - b * eps(y_old, t)) / a
        return x_old, y_old
