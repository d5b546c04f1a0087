"""DiG-IN's objectives: small objects mapping images to a loss per image (lower is better).

Each is called as ``objective(images, augment)`` with images ``(B, ...)`` in the classifiers' input
range and an optional :class:`~medxai.diffusion.digin.Augment`; classifier terms are averaged over
the augmented views, image-distance terms use the un-augmented images (METHODS.md section 4):

* :class:`Disagreement` -- where two models disagree: ``-p_f(k) + p_g(k)`` (or log-probabilities,
  or logit margins);
* :class:`NeuronObjective` -- what a unit wants: minus (or plus) the mean activation of one unit of a
  named layer (default: the input of the model's last linear layer, the penultimate features);
* :class:`UniversalVCE` -- a counterfactual with no dataset-specific guidance model: cross-entropy to
  the target class plus the squared distance to the start OUTSIDE a mask;
* :class:`NeuronCounterfactual` -- a neuron objective from a real image with the squared distance to
  it INSIDE a mask (the change is allowed outside).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medxai.diffusion.digin import Augment, views_mean

__all__ = [
    "DISAGREEMENT_KINDS",
    "Disagreement",
    "NeuronCounterfactual",
    "NeuronObjective",
    "Penalised",
    "UniversalVCE",
    "last_linear_input",
]

logger = logging.getLogger(__name__)

DISAGREEMENT_KINDS = ("probability", "log_probability", "logit_margin")


def _views(images: torch.Tensor, augment: Augment | None) -> torch.Tensor:
    return images if augment is None else augment(images)


def _per_image(values: torch.Tensor, images: torch.Tensor, augment: Augment | None) -> torch.Tensor:
    return values if augment is None else views_mean(values, images.shape[0])


def _margin(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``z_k - max_{j != k} z_j``: positive when class k wins."""
    others = logits.clone()
    others[:, k] = float("-inf")
    return logits[:, k] - others.max(dim=1).values


class Disagreement:
    """Images that model ``f`` puts in class ``k`` and model ``g`` does not.

    Parameters
    ----------
    f, g : nn.Module
        Classifiers ``(B, ...)`` -> logits ``(B, K)`` (frozen by the caller).
    k : int
        The class ``f`` should pick and ``g`` should not.
    kind : {"probability", "log_probability", "logit_margin"}
        ``-p_f(k) + p_g(k)``; the same with log-probabilities; or
        ``-(z_fk - max_j z_fj) + (z_gk - max_j z_gj)`` (margins to the best other class).
    """

    def __init__(self, f: nn.Module, g: nn.Module, k: int, kind: str = "probability") -> None:
        if kind not in DISAGREEMENT_KINDS:
            raise ValueError(f"kind must be one of {DISAGREEMENT_KINDS}, got {kind!r}.")
        self.f, self.g, self.k, self.kind = f, g, int(k), kind

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-row score of one model's logits (higher = more class ``k``)."""
        if self.kind == "probability":
            return torch.softmax(logits, 1)[:, self.k]
        if self.kind == "log_probability":
            return torch.log_softmax(logits, 1)[:, self.k]
        return _margin(logits, self.k)

    def __call__(self, images: torch.Tensor, augment: Augment | None = None) -> torch.Tensor:
        v = _views(images, augment)
        loss = -self.score(self.f(v)) + self.score(self.g(v))
        return _per_image(loss, images, augment)


def last_linear_input(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (its input is the penultimate features)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear layer; name the layer whose unit to use (layer=...).")
    return names[-1]


class NeuronObjective:
    """Drive one unit of a layer up (``sign=+1``, maximise) or down (``-1``).

    Parameters
    ----------
    model : nn.Module
    unit : int
        Channel / feature index.
    layer : str, optional
        Module name (``model.named_modules()``); default: the INPUT of the last linear layer (the
        penultimate features, as DiG-IN). Any other named layer: its OUTPUT.
    sign : {1, -1}
    """

    def __init__(self, model: nn.Module, unit: int, layer: str | None = None, sign: int = 1) -> None:
        if sign not in (1, -1):
            raise ValueError(f"sign must be 1 (maximise) or -1 (minimise), got {sign!r}.")
        self.model, self.unit, self.sign = model, int(unit), sign
        self.use_input = layer is None
        self.layer = last_linear_input(model) if layer is None else layer
        modules = dict(model.named_modules())
        if self.layer not in modules:
            raise ValueError(f"the model has no layer {self.layer!r}; layers: {', '.join(n for n in modules if n)[:400]}.")
        self._module = modules[self.layer]

    def activation(self, images: torch.Tensor) -> torch.Tensor:
        """Mean activation ``(B,)`` of the unit on ``images`` (one forward pass)."""
        seen: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            seen["a"] = inputs[0] if self.use_input else output

        handle = self._module.register_forward_hook(hook)
        try:
            self.model(images)
        finally:
            handle.remove()
        act = seen["a"]
        if act.ndim < 2 or not 0 <= self.unit < act.shape[1]:
            raise ValueError(f"unit {self.unit} is out of range for layer {self.layer!r} with output shape {tuple(act.shape)}.")
        return act[:, self.unit].reshape(act.shape[0], -1).mean(dim=1)

    def __call__(self, images: torch.Tensor, augment: Augment | None = None) -> torch.Tensor:
        return _per_image(-self.sign * self.activation(_views(images, augment)), images, augment)


def _masked_sq(images: torch.Tensor, start: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per image over the pixels where ``keep`` (broadcast to the images) is 1."""
    w = keep.expand_as(images).to(images.dtype)
    return ((images - start) ** 2 * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)


class UniversalVCE:
    """A counterfactual of ``start`` towards ``target`` with no guidance model trained for the task:
    cross-entropy of ``model`` to ``target`` plus ``distance`` times the squared change OUTSIDE
    ``mask`` (the change should stay where the mask allows it, e.g. the field of view or the lungs).

    Parameters
    ----------
    model : nn.Module
    target : int
    start : torch.Tensor
        The query images ``(B, ...)``.
    mask : torch.Tensor
        ``1`` where change is free, broadcastable to ``start``.
    distance : float
    """

    def __init__(self, model: nn.Module, target: int, start: torch.Tensor, mask: torch.Tensor, distance: float = 10.0) -> None:
        self.model, self.target = model, int(target)
        self.penalised = Penalised(self._cross_entropy, start, 1.0 - mask.float(), distance)

    def _cross_entropy(self, images: torch.Tensor, augment: Augment | None) -> torch.Tensor:
        v = _views(images, augment)
        ce = F.cross_entropy(self.model(v), torch.full((v.shape[0],), self.target, device=v.device), reduction="none")
        return _per_image(ce, images, augment)

    def __call__(self, images: torch.Tensor, augment: Augment | None = None) -> torch.Tensor:
        return self.penalised(images, augment)


class Penalised:
    """Any objective plus ``distance`` times the mean squared change from ``start`` over the ``kept``
    pixels: the result moves only as far as the objective needs, and only where ``kept`` is 0.

    Parameters
    ----------
    objective : callable
        ``objective(images, augment) -> (B,)``.
    start : torch.Tensor
        The query images.
    kept : torch.Tensor
        ``1`` where the image must stay as it is, broadcastable to ``start``.
    distance : float
    """

    def __init__(self, objective: Any, start: torch.Tensor, kept: torch.Tensor, distance: float = 10.0) -> None:
        self.objective, self.distance = objective, float(distance)
        self.start, self.kept = start.detach(), kept.float().detach()

    def __call__(self, images: torch.Tensor, augment: Augment | None = None) -> torch.Tensor:
        return self.objective(images, augment) + self.distance * _masked_sq(images, self.start, self.kept)


class NeuronCounterfactual(Penalised):
    """A neuron objective from a real image, the change kept out of ``mask``: ``neuron(images)`` plus
    ``distance`` times the squared change INSIDE ``mask`` (DiG-IN's neuron counterfactuals keep the
    object and let the unit's evidence change elsewhere).

    Parameters
    ----------
    neuron : NeuronObjective
    start : torch.Tensor
        The query images.
    mask : torch.Tensor
        ``1`` where the image must stay as it is.
    distance : float
    """

    def __init__(self, neuron: NeuronObjective, start: torch.Tensor, mask: torch.Tensor, distance: float = 10.0) -> None:
        super().__init__(neuron, start, mask, distance)
        self.neuron = neuron
