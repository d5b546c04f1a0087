"""The one base class of all explainers, and the model-state guard they share.

``Explainer.explain(x, target)`` validates the input and the target, puts the model in eval mode
with frozen parameters, runs the method (``_explain``), and then restores the model exactly: the
train/eval flag of every module, ``requires_grad`` of every parameter, the ``.grad`` tensors,
``inplace`` flags, and removes every hook registered during the call -- also when the method
raises. With ``check_weights=True`` the parameters and buffers are compared bit for bit with a
snapshot afterwards; a change is undone and reported with a warning.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from medxai.explanation import CounterfactualSweep, Explanation
from medxai.networks.layers import find_layer, infer_input_spec, layer_names  # re-exported (moved there)
from medxai.targets import NeuronTarget, Target, as_target

__all__ = [
    "Explainer",
    "MethodResult",
    "ModelStateGuard",
    "find_layer",
    "layer_names",
    "infer_input_spec",
    "hook_count",
]

logger = logging.getLogger(__name__)

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_HOOK_SIDE_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def hook_count(model: nn.Module) -> int:
    """Number of forward/backward (pre-)hooks registered on ``model`` and all its sub-modules."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


@dataclasses.dataclass
class MethodResult:
    """What a method's ``_explain`` returns besides plain heatmaps.

    Parameters
    ----------
    heatmaps : torch.Tensor
        ``(B, T, *spatial)`` on the input grid.
    sweep : CounterfactualSweep, optional
    channel_maps : torch.Tensor, optional
        ``(B, C, *spatial)`` one map per input channel (see :class:`~medxai.explanation.Explanation`).
    latent : torch.Tensor, optional
        ``(B, D)`` latent code of the query.
    timings : dict of str to float
    diagnostics : dict
        Method-specific figures (arrays with a leading batch axis, or JSON values).
    """

    heatmaps: torch.Tensor
    sweep: CounterfactualSweep | None = None
    channel_maps: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)


class ModelStateGuard:
    """Context manager that snapshots a model and restores it on exit (also on exceptions).

    Inside the context the model is in eval mode and all parameters have ``requires_grad=False``
    (explainers differentiate with respect to the input only), unless ``freeze=False``.

    Parameters
    ----------
    model : nn.Module
        The black box.
    check_weights : bool
        Clone parameters and buffers on entry and verify them bit for bit on exit.
    freeze : bool
        Set ``requires_grad=False`` on all parameters and ``eval()`` the model inside the context.
    """

    def __init__(self, model: nn.Module, check_weights: bool = True, freeze: bool = True) -> None:
        self.model = model
        self.check_weights = check_weights
        self.freeze = freeze

    def __enter__(self) -> ModelStateGuard:
        model = self.model
        self._modules = list(model.modules())
        self._training = [m.training for m in self._modules]
        self._inplace = [(m, m.__dict__["inplace"]) for m in self._modules if "inplace" in m.__dict__]
        self._full_bw = [getattr(m, "_is_full_backward_hook", None) for m in self._modules]
        self._hooks = [{d: set(getattr(m, d, {}).keys()) for d in _HOOK_DICTS} for m in self._modules]
        self._params = list(model.parameters())
        self._requires_grad = [p.requires_grad for p in self._params]
        self._grads = [p.grad for p in self._params]
        self._snapshot: list[tuple[str, torch.Tensor, torch.Tensor]] | None = None
        if self.check_weights:
            self._snapshot = [(k, v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()]
        if self.freeze:
            model.eval()
            for p in self._params:
                p.requires_grad_(False)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        removed = 0
        for m, before, bw in zip(self._modules, self._hooks, self._full_bw):
            for d in _HOOK_DICTS:
                hooks = getattr(m, d, None)
                if hooks is None:
                    continue
                for key in list(hooks.keys()):
                    if key not in before[d]:
                        del hooks[key]
                        removed += 1
                        for side in _HOOK_SIDE_DICTS:
                            side_dict = getattr(m, side, None)
                            if side_dict is not None:
                                side_dict.pop(key, None)
            if hasattr(m, "_is_full_backward_hook"):
                m._is_full_backward_hook = bw
        if removed:
            logger.debug("removed %d hook(s) left on %s", removed, type(self.model).__name__)
        for m, flag in zip(self._modules, self._training):
            m.training = flag
        for m, flag in self._inplace:
            m.__dict__["inplace"] = flag
        for p, flag, grad in zip(self._params, self._requires_grad, self._grads):
            p.requires_grad_(flag)
            p.grad = grad
        if self._snapshot is not None:
            changed = []
            with torch.no_grad():
                for name, live, saved in self._snapshot:
                    if live.shape != saved.shape or not torch.equal(live, saved):
                        changed.append(name)
                        live.data = saved
            self._snapshot = None
            if changed:
                warnings.warn(
                    f"the explainer changed the model's weights/buffers {changed[:5]}; they were restored.",
                    RuntimeWarning,
                    stacklevel=2,
                )


class Explainer(abc.ABC):
    """Base class of all explainers.

    Subclasses set ``method`` and implement :meth:`_explain`; they register hooks only inside
    ``_explain`` (the guard removes anything left over) and draw randomness only from the generator
    they are given.

    Parameters
    ----------
    model : nn.Module
        The black-box classifier: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` -> ``(B, K)`` logits.
    in_channels : int, optional
        Channels the model expects; inferred from its first convolution when omitted.
    spatial_dims : int, optional
        2 or 3; inferred from the first convolution when omitted.
    seed : int or None
        Seed of the explainer's own ``torch.Generator`` (used by stochastic methods).
    check_weights : bool
        Verify after every call that parameters and buffers are bitwise unchanged.
    """

    method: ClassVar[str] = "explainer"
    #: whether the method draws random numbers (then ``seed`` is recorded in the explanation)
    stochastic: ClassVar[bool] = False
    #: whether ``explain`` takes a per-case region ``mask``
    uses_mask: ClassVar[bool] = False
    #: how the black box's logits become probabilities (``"softmax"`` or ``"sigmoid"``)
    activation: str = "softmax"

    def __init__(
        self,
        model: nn.Module,
        *,
        in_channels: int | None = None,
        spatial_dims: int | None = None,
        seed: int | None = 0,
        check_weights: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if spatial_dims is not None and spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}.")
        guess_c, guess_d = infer_input_spec(model)
        self.model = model
        self.in_channels = in_channels if in_channels is not None else guess_c
        self.spatial_dims = spatial_dims if spatial_dims is not None else guess_d
        self.seed = seed
        self.check_weights = check_weights

    # ----------------------------------------------------------------- public API
    @classmethod
    def from_settings(cls, model: nn.Module, settings: Any, models: Mapping[str, Any], **kwargs: Any) -> Explainer:
        """Build from a settings dataclass (its fields are the constructor's keywords) and the extra
        models the method registered as ``needs`` (the registry's :meth:`~medxai.registry.MethodSpec.build`).
        Methods with extra models override this."""
        return cls(model, **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}, **kwargs)

    def explain(self, x: torch.Tensor, target: Target | int, *, mask: torch.Tensor | None = None) -> Explanation:
        """Explain ``target`` for the batch ``x``.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, H, W)`` or ``(B, C, D, H, W)``; never modified.
        target : Target or int
            What to explain; an int means ``ClassTarget(int)``.
        mask : torch.Tensor, optional
            ``(B, 1, *spatial)`` or ``(B, *spatial)`` per-case region (field of view, lungs) for
            methods that take one (``uses_mask`` in the registry); others refuse it.

        Returns
        -------
        Explanation
            ``heatmaps`` ``(B, T, *spatial)`` on the input grid (CPU), ``logits`` ``(B, K)`` of the
            query, and the method's typed extras (sweep, latent, timings, diagnostics).
        """
        target = as_target(target)
        x = self._check_input(x)
        call: dict[str, Any] = {}
        if mask is not None:
            if not self.uses_mask:
                raise TypeError(
                    f"{type(self).__name__} takes no mask; pass mask only to methods that confine their change to a region."
                )
            call["mask"] = self._check_mask(mask, x)
        generator = self._make_generator()
        start = time.perf_counter()
        with ModelStateGuard(self.model, check_weights=self.check_weights):
            if isinstance(target, NeuronTarget):
                target.attach(self.model)
            try:
                with torch.no_grad():
                    logits = self._forward_checked(x)
                    target.validate(logits)
                result = self._explain(x, target, generator, **call)
            finally:
                if isinstance(target, NeuronTarget):
                    target.detach()
        if not isinstance(result, MethodResult):
            result = MethodResult(heatmaps=result)
        heatmaps = self._check_heatmaps(result.heatmaps, x)
        timings = {"seconds": time.perf_counter() - start, **result.timings}
        return Explanation(
            method=self.method,
            target=target.describe(),
            heatmaps=heatmaps,
            logits=logits.detach().float().cpu(),
            target_class=target.class_index if not target.multi else None,
            activation=self.activation,
            sweep=result.sweep,
            channel_maps=None if result.channel_maps is None else result.channel_maps.detach().float().cpu(),
            latent=None if result.latent is None else result.latent.detach().cpu(),
            parameters=self.get_parameters(),
            seed=self.seed if self.stochastic else None,
            timings=timings,
            diagnostics=dict(result.diagnostics),
        )

    def get_parameters(self) -> dict[str, Any]:
        """The explainer's settings (JSON-serialisable); subclasses extend this."""
        return {"in_channels": self.in_channels, "spatial_dims": self.spatial_dims}

    # ------------------------------------------------------------- for subclasses
    @abc.abstractmethod
    def _explain(
        self, x: torch.Tensor, target: Target, generator: torch.Generator | None, **inputs: Any
    ) -> torch.Tensor | MethodResult:
        """Compute heatmaps ``(B, T, *spatial)``, or a :class:`MethodResult` with the typed extras.

        Called with the model in eval mode and its parameters frozen; ``inputs`` holds the per-call
        inputs (``mask``) of methods that take them.
        """

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------------ helpers
    def _make_generator(self) -> torch.Generator | None:
        if not self.stochastic:
            return None
        gen = torch.Generator(device="cpu")
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen

    def _expected_shape(self) -> str:
        c = self.in_channels if self.in_channels is not None else "C"
        if self.spatial_dims == 3:
            return f"(B, {c}, D, H, W)"
        if self.spatial_dims == 2:
            return f"(B, {c}, H, W)"
        return f"(B, {c}, H, W) or (B, {c}, D, H, W)"

    def _check_mask(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor (B, 1, *spatial), got {type(mask).__name__}.")
        m = mask.detach().float()
        if m.ndim == x.ndim - 1:
            m = m[:, None]
        if m.ndim != x.ndim or m.shape[1] != 1 or m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} but x has shape {tuple(x.shape)}; "
                "pass one (1, *spatial) mask per input on the grid of x."
            )
        return (m > 0.5).float()

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape {self._expected_shape()}, got {type(x).__name__}.")
        if not torch.is_floating_point(x):
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with x.float().")
        if x.ndim not in (4, 5) or (self.spatial_dims is not None and x.ndim != self.spatial_dims + 2):
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the model expects {self._expected_shape()}; "
                "add the batch axis with x[None] or select the right number of spatial axes."
            )
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels (shape {tuple(x.shape)}) but the model expects "
                f"{self._expected_shape()}; pass inputs with {self.in_channels} channels."
            )
        if x.shape[0] < 1:
            raise ValueError(f"x has an empty batch (shape {tuple(x.shape)}); pass at least one input.")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values; clean the input first.")
        return x.detach()

    def _forward_checked(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self._forward(x)
        except RuntimeError as err:
            raise ValueError(
                f"the model rejected x of shape {tuple(x.shape)} (expected {self._expected_shape()} with a "
                f"spatial size the model supports): {err}"
            ) from err
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model returned {type(out).__name__}; explainers need a tensor of logits (B, K). "
                "Wrap the model so that forward returns a tensor."
            )
        return out

    @staticmethod
    def _check_heatmaps(heatmaps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        heatmaps = torch.as_tensor(heatmaps).detach().float().cpu()
        if heatmaps.ndim != x.ndim or heatmaps.shape[0] != x.shape[0] or heatmaps.shape[2:] != x.shape[2:]:
            raise RuntimeError(
                f"internal error: heatmaps of shape {tuple(heatmaps.shape)} do not match the input grid "
                f"{tuple(x.shape)}; expected (B, T, *spatial)."
            )
        return heatmaps

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_parameters().items())
        return f"{type(self).__name__}({params})"
