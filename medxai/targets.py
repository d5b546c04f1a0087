"""Targets: what an explainer explains, as callables on the model output.

A target maps the classifier output ``(B, K)`` to one score per input ``(B,)``; explainers
attribute that score. Plain integers are accepted wherever a target is expected and mean
``ClassTarget(index)``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medxai.networks.layers import find_layer

__all__ = ["Target", "ClassTarget", "ScoreDirection", "NeuronTarget", "AllClasses", "as_target"]

logger = logging.getLogger(__name__)


class Target(abc.ABC):
    """Base class of targets.

    Subclasses implement :meth:`__call__` (output ``(B, K)`` -> score ``(B,)``) and may override
    :meth:`validate` to check the target against an actual model output.
    """

    #: class index the target refers to, if any
    class_index: int | None = None
    #: True if ``__call__`` returns several scores ``(B, T)`` (one heatmap each) instead of ``(B,)``
    multi: bool = False

    @abc.abstractmethod
    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return the score to explain, shape ``(B,)``, from the model output ``(B, K)``."""

    def validate(self, output: torch.Tensor) -> None:  # noqa: B027 - optional hook, most targets fit any output
        """Raise ``ValueError`` if the target does not fit the model output ``(B, K)``."""

    @property
    def sign(self) -> float:
        """+1 if larger scores are 'more of the target', -1 otherwise."""
        return 1.0

    def describe(self) -> str:
        """Short human-readable description (stored in ``Explanation.target``)."""
        return repr(self)


def _check_index(index: Any, output: torch.Tensor, name: str = "index") -> None:
    if output.ndim != 2:
        raise ValueError(
            f"the model output has shape {tuple(output.shape)}; class targets need logits of shape (B, K). "
            "Wrap the model so that it returns (B, K) scores."
        )
    k = int(output.shape[1])
    if not -k <= index < k:
        raise ValueError(
            f"target {name}={index} is out of range for a model with {k} output classes; use an index in 0..{k - 1}."
        )


class ClassTarget(Target):
    """The logit (or, with ``activation``, probability) of one class.

    Parameters
    ----------
    index : int
        Class index into the model output ``(B, K)``.
    activation : {"none", "softmax", "sigmoid"}
        Applied to the output before selecting the class. Gradient methods usually explain logits.
    """

    def __init__(self, index: int, activation: str = "none") -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int class index, got {type(index).__name__} {index!r}.")
        if activation not in ("none", "softmax", "sigmoid"):
            raise ValueError(f"activation must be 'none', 'softmax' or 'sigmoid', got {activation!r}.")
        self.index = index
        self.activation = activation

    @property
    def class_index(self) -> int:  # type: ignore[override]
        return self.index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            output = output.softmax(dim=1)
        elif self.activation == "sigmoid":
            output = output.sigmoid()
        return output[:, self.index]

    def validate(self, output: torch.Tensor) -> None:
        _check_index(self.index, output)

    def __repr__(self) -> str:
        extra = "" if self.activation == "none" else f", activation={self.activation!r}"
        return f"ClassTarget(index={self.index}{extra})"


class ScoreDirection(Target):
    """A class score pushed in one direction: ``sign * output[:, index]``.

    ``sign=-1`` explains what lowers the class score (evidence against the class).
    """

    def __init__(self, index: int, sign: int = 1) -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int class index, got {type(index).__name__} {index!r}.")
        if sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {sign!r}.")
        self.index = index
        self._sign = int(sign)

    @property
    def class_index(self) -> int:  # type: ignore[override]
        return self.index

    @property
    def sign(self) -> float:
        return float(self._sign)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self._sign * output[:, self.index]

    def validate(self, output: torch.Tensor) -> None:
        _check_index(self.index, output)

    def __repr__(self) -> str:
        return f"ScoreDirection(index={self.index}, sign={self._sign:+d})"


class NeuronTarget(Target):
    """Mean activation of one unit (channel) of an inner layer.

    The score is read from a forward hook on ``layer``; explainers call :meth:`attach` before the
    forward pass and :meth:`detach` after it (the :class:`~medxai.explainers.base.Explainer` base
    class does this and always releases the hook). The model output passed to ``__call__`` is ignored.

    Parameters
    ----------
    layer : str
        Qualified module name as in ``model.named_modules()``.
    unit : int
        Channel index in the layer output ``(B, C, ...)``.
    """

    def __init__(self, layer: str, unit: int) -> None:
        if not isinstance(layer, str) or not layer:
            raise TypeError(f"layer must be a module name (str), got {layer!r}.")
        if isinstance(unit, bool) or not isinstance(unit, int) or unit < 0:
            raise ValueError(f"unit must be a non-negative int channel index, got {unit!r}.")
        self.layer = layer
        self.unit = unit
        self._handle: Any = None
        self._activation: torch.Tensor | None = None

    def attach(self, model: nn.Module) -> None:
        """Register the forward hook on ``model``'s layer (raises ``ValueError`` for an unknown layer)."""
        module = find_layer(model, self.layer)

        def _hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            self._activation = out

        self.detach()
        self._handle = module.register_forward_hook(_hook)

    def detach(self) -> None:
        """Remove the hook and drop the cached activation."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self._activation is None:
            raise RuntimeError(
                f"NeuronTarget({self.layer!r}, {self.unit}) has no activation: attach() it to the model before the forward pass."
            )
        act = self._activation
        if act.ndim < 2 or not 0 <= self.unit < act.shape[1]:
            raise ValueError(
                f"unit={self.unit} is out of range for layer {self.layer!r} with output shape "
                f"{tuple(act.shape)}; use a channel index in 0..{act.shape[1] - 1 if act.ndim >= 2 else 0}."
            )
        return act[:, self.unit].reshape(act.shape[0], -1).mean(dim=1)

    def __repr__(self) -> str:
        return f"NeuronTarget(layer={self.layer!r}, unit={self.unit})"


class AllClasses(Target):
    """Every class at once: ``__call__`` returns the whole output ``(B, K)`` (optionally activated).

    Only explainers that produce one map per class from the same computation accept it (RISE,
    occlusion, NN-Explainer); the heatmaps then have ``T = K`` maps.
    """

    multi = True

    def __init__(self, activation: str = "none") -> None:
        if activation not in ("none", "softmax", "sigmoid"):
            raise ValueError(f"activation must be 'none', 'softmax' or 'sigmoid', got {activation!r}.")
        self.activation = activation

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            return output.softmax(dim=1)
        if self.activation == "sigmoid":
            return output.sigmoid()
        return output

    def validate(self, output: torch.Tensor) -> None:
        if output.ndim != 2:
            raise ValueError(f"the model output has shape {tuple(output.shape)}; AllClasses needs logits (B, K).")

    def __repr__(self) -> str:
        extra = "" if self.activation == "none" else f"activation={self.activation!r}"
        return f"AllClasses({extra})"


#: a plain callable ``output (B, K) -> score (B,)`` used as a target
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def as_target(target: Target | int | ScoreFn | None) -> Target:
    """Turn ``target`` into a :class:`Target`.

    An ``int`` means ``ClassTarget(target)``; a callable ``output (B, K) -> score (B,)`` is wrapped.
    ``None`` raises ``TypeError`` (it is accepted only to give a helpful message).
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, bool):
        raise TypeError(f"target must be a Target or an int class index, got bool {target!r}.")
    if isinstance(target, int):
        return ClassTarget(target)
    if target is None:
        raise TypeError("target must be given: pass a Target (e.g. ClassTarget(1)) or an int class index.")
    if callable(target):
        return _CallableTarget(target)
    raise TypeError(f"target must be a Target, an int class index or a callable (B, K) -> (B,), got {type(target).__name__}.")


class _CallableTarget(Target):
    """Adapter for a plain callable ``output (B, K) -> score (B,)``."""

    def __init__(self, fn: ScoreFn) -> None:
        self.fn = fn

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.fn(output)

    def __repr__(self) -> str:
        return f"CallableTarget({getattr(self.fn, '__name__', repr(self.fn))})"
