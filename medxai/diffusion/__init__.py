"""Diffusion objects: the diffusion autoencoder (network + diffusers DDIM schedulers).

Network, scheduler and guidance are separate objects (the diffusers split): the networks live in
:mod:`medxai.networks.diffae`, the schedule maths in diffusers' ``DDIMScheduler`` /
``DDIMInverseScheduler``; :class:`DiffusionAutoencoder` only writes the loops out plainly.
"""

from __future__ import annotations

from medxai.diffusion.autoencoder import (
    DiffusionAutoencoder,
    ScheduleConfig,
    from_image_range,
    load_autoencoder,
    save_autoencoder,
    to_image_range,
)

__all__ = [
    "DiffusionAutoencoder",
    "ScheduleConfig",
    "from_image_range",
    "load_autoencoder",
    "save_autoencoder",
    "to_image_range",
]
