"""The DiffExplainer agent: a two-layer linear student of the black-box teacher.

Layer 1 maps the (z-normalised) combined DiffAE latent ``(B, D)`` to the teacher's penultimate
feature space ``(B, F)`` and is trained with an L1 loss against the teacher's features; layer 2 is a
frozen copy of the teacher's classification layer ``F -> K``. When the teacher exposes only logits,
layer 2 is trainable and both layers are distilled on logits (logged by the teacher wrapper).

The agent also stores the dataset mean/std of the latent (buffers): manipulation happens in the
normalised space, as in DiffAE (``z_n = (z - mean) / std``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medxai.training.checkpoint import load_pretrained, load_state_checked, save_pretrained

__all__ = ["Agent", "save_agent", "load_agent"]

logger = logging.getLogger(__name__)


class Agent(nn.Module):
    """Two linear layers ``D -> F -> K`` on the normalised latent.

    Parameters
    ----------
    latent_dim : int
        D, the combined latent size (``n_slices * z_dim``).
    feature_dim : int
        F, the teacher's penultimate feature size (1024 for DenseNet121).
    num_classes : int
        K.
    classifier : nn.Linear, optional
        The teacher's classification layer; copied and frozen as layer 2. ``None``: layer 2 is trainable.
    generator : torch.Generator, optional
        Initialises layer 1 (and layer 2 when not copied).
    """

    def __init__(
        self,
        latent_dim: int,
        feature_dim: int,
        num_classes: int,
        classifier: nn.Linear | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("latent_dim", latent_dim), ("feature_dim", feature_dim), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        self.layer1 = nn.Linear(latent_dim, feature_dim)
        self.layer2 = nn.Linear(feature_dim, num_classes)
        from medxai.networks.classifiers import init_with_generator

        init_with_generator(self, generator if generator is not None else torch.Generator().manual_seed(0))
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))
        self.frozen_head = classifier is not None
        if classifier is not None:
            if classifier.in_features != feature_dim or classifier.out_features != num_classes:
                raise ValueError(
                    f"the teacher's classification layer is {classifier.in_features}->{classifier.out_features} but the "
                    f"agent was built {feature_dim}->{num_classes}; set feature_dim/num_classes from the teacher."
                )
            with torch.no_grad():
                self.layer2.weight.copy_(classifier.weight.detach().cpu())
                if classifier.bias is not None:
                    self.layer2.bias.copy_(classifier.bias.detach().cpu())
                else:
                    self.layer2.bias.zero_()
            self.layer2.requires_grad_(False)

    @property
    def latent_dim(self) -> int:
        return int(self.layer1.in_features)

    @property
    def feature_dim(self) -> int:
        return int(self.layer1.out_features)

    @property
    def num_classes(self) -> int:
        return int(self.layer2.out_features)

    def set_latent_stats(self, latents: torch.Tensor, eps: float = 1e-6) -> None:
        """Store mean/std of ``latents`` ``(N, D)`` (the training set's combined latents)."""
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"latents must be (N, {self.latent_dim}), got {tuple(latents.shape)}.")
        self.latent_mean.copy_(latents.mean(0))
        self.latent_std.copy_(latents.std(0).clamp_min(eps) if latents.shape[0] > 1 else torch.ones(self.latent_dim))

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - mean) / std``, ``(B, D)``."""
        return (z - self.latent_mean) / self.latent_std

    def denormalise(self, z_n: torch.Tensor) -> torch.Tensor:
        """``z_n * std + mean``, ``(B, D)``."""
        return z_n * self.latent_std + self.latent_mean

    def features(self, z_n: torch.Tensor) -> torch.Tensor:
        """Layer 1: normalised latent ``(B, D)`` -> teacher-like features ``(B, F)``."""
        return self.layer1(z_n)

    def forward(self, z_n: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of normalised latents ``(B, D)``."""
        if z_n.ndim != 2 or z_n.shape[1] != self.latent_dim:
            raise ValueError(
                f"the agent takes normalised combined latents (B, {self.latent_dim}), got {tuple(z_n.shape)}; "
                "check that the autoencoder's z_dim x n_slices matches the agent."
            )
        return self.layer2(self.layer1(z_n))

    def save_pretrained(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Path:
        """:func:`save_agent`."""
        return save_agent(self, path, meta)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Agent:
        """:func:`load_agent`."""
        return load_agent(path)


def save_agent(agent: Agent, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Path:
    """Write the agent (weights, latent statistics) and its JSON side-car.

    Parameters
    ----------
    agent : Agent
    path : str or path-like
        ``name.safetensors`` (``name.json`` beside it) or a folder (``agent.safetensors`` and
        ``agent.json`` inside).
    meta : mapping, optional
        Further side-car fields (e.g. the training history).

    Returns
    -------
    Path
        The weights file.
    """
    info = {
        "kind": "agent",
        "latent_dim": agent.latent_dim,
        "feature_dim": agent.feature_dim,
        "num_classes": agent.num_classes,
        "frozen_head": agent.frozen_head,
        **dict(meta or {}),
    }
    return save_pretrained(path, agent.state_dict(), info, name="agent")


def load_agent(path: str | os.PathLike[str]) -> Agent:
    """Load an agent written by :func:`save_agent` (a weights file or its folder; no unpickling), eval mode."""
    state, meta, weights = load_pretrained(path, name="agent", kinds=("agent",))
    try:
        agent = Agent(int(meta["latent_dim"]), int(meta["feature_dim"]), int(meta["num_classes"]))
    except KeyError as err:
        raise ValueError(f"the side-car of {str(weights)!r} lacks the field {err}; re-save the agent.") from err
    load_state_checked(agent, state, str(weights), "agent")
    agent.frozen_head = bool(meta.get("frozen_head", False))
    agent.layer2.requires_grad_(not agent.frozen_head)
    return agent.eval()
