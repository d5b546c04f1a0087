"""DiG-IN as explainers: where two models disagree, universal counterfactuals, neuron counterfactuals.

DiG-IN (Augustin, Neuhaus, Hein, CVPR 2024; METHODS.md section 4) optimises the inputs of a
differentiable DDIM chain (:mod:`medxai.diffusion.digin`) against an objective
(:mod:`medxai.diffusion.digin_objectives`). Three registered methods start the chain from the
query -- by default its deterministic DDIM inversion, so the unoptimised chain returns the query up to
the inversion error -- and report the optimised image as a one-step counterfactual sweep:

* ``digin-disagreement``: an image the black box ``f`` puts in the target class and the second model
  ``g`` does not (``-p_f(k) + p_g(k)``); the change from the query shows WHAT the two models read
  differently (two sites, before / after retraining, a shortcut);
* ``digin-uvce``: a universal visual counterfactual towards the target class with no guidance model
  trained for it: cross-entropy of the black box plus the squared change outside the mask (lungs /
  field of view), so the change stays where the mask allows it;
* ``digin-neuron``: a neuron counterfactual: one unit of the penultimate features (by default the one
  the classifier head weighs most for the target class) driven down (or up), the squared change inside
  the kept region penalised.

:func:`visualise_units` makes DiG-IN's neuron visualisations: generator samples optimised to drive
each of the top-k units of a class up.

Differences from the original: the generators are the project's own (the CT diffusion autoencoder,
conditioned on per-slice semantic codes, and the fundus DDPM) instead of Stable Diffusion; the masks are
our segmentations (lungs, field of view) instead of SAM / cross-attention masks; there is no captioner.

Every explanation's ``sweep`` has one step (``+1``): the optimised image; its ``origin`` is the
unoptimised chain's output (from the inversion: the query's reconstruction), so ``difference(1.0)``
is what the objective changed, not the inversion error. The heatmap is that change, smoothed per
channel (:func:`~medxai.explainers.dvce.difference_heatmap`); ``channel_maps`` holds one map per
channel (each CT slice's own).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from medxai.config import dataclass_from_mapping
from medxai.diffusion.digin import ChainGenerator, DDPMChain, DiffAEChain, DiGInConfig, DiGInEngine, DiGInResult, Objective
from medxai.diffusion.digin_objectives import (
    DISAGREEMENT_KINDS,
    Disagreement,
    NeuronCounterfactual,
    NeuronObjective,
    Penalised,
    UniversalVCE,
    last_linear_input,
)
from medxai.explainers.base import Explainer, MethodResult, ModelStateGuard
from medxai.explainers.dvce import difference_heatmap
from medxai.explanation import CounterfactualSweep
from medxai.registry import ANY_IMAGE, register_method
from medxai.targets import ClassTarget, Target

__all__ = [
    "DiGInDisagreement",
    "DiGInNeuron",
    "DiGInUVCE",
    "DisagreementSettings",
    "NeuronSettings",
    "UVCESettings",
    "UnitVisualisation",
    "chain_generator",
    "top_units",
    "visualise_units",
]

logger = logging.getLogger(__name__)

_STARTS = ("inversion", "sample")


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What every DiG-IN method takes.

    Parameters
    ----------
    engine : DiGInConfig
        The chain and its optimisation (a mapping in a config).
    start : {"inversion", "sample"}
        ``"inversion"``: the query's deterministic DDIM inversion (the unoptimised chain returns the
        query up to the inversion error); ``"sample"``: fresh noise (a generator sample; for the CT
        autoencoder conditioned on the query's semantic codes).
    heatmap_sigma : float
        Gaussian smoothing (pixels) of the signed change before the absolute value.
    batch_size : int
        Images optimised together (memory grows with it and with ``engine.n_crops``).
    """

    engine: DiGInConfig = dataclasses.field(default_factory=DiGInConfig)
    start: str = "inversion"
    heatmap_sigma: float = 1.0
    batch_size: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.engine, Mapping):
            object.__setattr__(
                self, "engine", dataclass_from_mapping(DiGInConfig, self.engine, "engine", ("loss_weights", "crop_scale"))
            )
        if not isinstance(self.engine, DiGInConfig):
            raise TypeError(f"engine must be a DiGInConfig or a mapping, got {type(self.engine).__name__}.")
        if self.start not in _STARTS:
            raise ValueError(f"start must be one of {_STARTS}, got {self.start!r}.")
        if not self.heatmap_sigma >= 0:
            raise ValueError(f"heatmap_sigma must be >= 0, got {self.heatmap_sigma}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from a mapping (a config section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, cls.__name__)


@dataclasses.dataclass(frozen=True)
class DisagreementSettings(_Settings):
    """Settings of :class:`DiGInDisagreement`.

    Parameters
    ----------
    kind : {"probability", "log_probability", "logit_margin"}
        See :class:`~medxai.diffusion.digin_objectives.Disagreement`. ``probability`` (the paper's
        default) has no gradient once a model is sure (p = 1e-15 stays there); ``logit_margin`` does not
        saturate.
    distance : float
        Weight of the mean squared change from the query (0: DiG-IN's free generation). With a weight,
        the image moves only as far as the disagreement needs, so the change shows where on THIS
        patient the models read differently.
    """

    kind: str = "probability"
    distance: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in DISAGREEMENT_KINDS:
            raise ValueError(f"kind must be one of {DISAGREEMENT_KINDS}, got {self.kind!r}.")
        if not self.distance >= 0:
            raise ValueError(f"distance must be >= 0, got {self.distance}.")


@dataclasses.dataclass(frozen=True)
class UVCESettings(_Settings):
    """Settings of :class:`DiGInUVCE`: ``distance`` weighs the mean squared change outside the mask
    (the whole image without a mask) against the cross-entropy to the target."""

    distance: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.distance >= 0:
            raise ValueError(f"distance must be >= 0, got {self.distance}.")


@dataclasses.dataclass(frozen=True)
class NeuronSettings(_Settings):
    """Settings of :class:`DiGInNeuron`.

    Parameters
    ----------
    unit : int, optional
        The unit; default: the one the head weighs most for the target class (:func:`top_units`).
    layer : str, optional
        Module name; default: the input of the last linear layer (the penultimate features).
    direction : {"decrease", "increase"}
        Drive the unit down (remove the evidence the head reads for the class) or up.
    distance : float
        Weight of the mean squared change in the kept region.
    keep : {"inside", "outside"}
        Which side of the mask must stay (DiG-IN: ``inside``, the object; the change goes elsewhere);
        without a mask the whole image is kept (weighted by ``distance``).
    """

    unit: int | None = None
    layer: str | None = None
    direction: str = "decrease"
    distance: float = 10.0
    keep: str = "inside"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction not in ("decrease", "increase"):
            raise ValueError(f"direction must be 'decrease' or 'increase', got {self.direction!r}.")
        if self.keep not in ("inside", "outside"):
            raise ValueError(f"keep must be 'inside' or 'outside', got {self.keep!r}.")
        if not self.distance >= 0:
            raise ValueError(f"distance must be >= 0, got {self.distance}.")
        if self.unit is not None and (isinstance(self.unit, bool) or not isinstance(self.unit, int) or self.unit < 0):
            raise ValueError(f"unit must be a non-negative int or None, got {self.unit!r}.")


def chain_generator(models: Mapping[str, Any], n_channels: int | None = None) -> ChainGenerator:
    """The engine's view of the generator a job loaded: the CT diffusion autoencoder (``autoencoder``;
    one sample per stack slice) or an image DDPM (``diffusion``)."""
    if models.get("autoencoder") is not None:
        return DiffAEChain(models["autoencoder"], n_slices=n_channels or 4)
    if models.get("diffusion") is not None:
        return DDPMChain(models["diffusion"])
    raise ValueError(
        "DiG-IN needs a generator: the CT diffusion autoencoder (config section 'autoencoder') or an image "
        "DDPM (section 'diffusion')."
    )


def _generator_module(gen: ChainGenerator) -> nn.Module:
    return gen.ae if isinstance(gen, DiffAEChain) else gen.ddpm  # type: ignore[attr-defined]


def head_weights(model: nn.Module, class_index: int) -> torch.Tensor:
    """``(F,)`` how much one unit of the penultimate features raises class ``class_index``'s logit
    over the others': ``w_k - mean_{j != k} w_j`` of the last linear layer (``w_k`` with one output)."""
    head = dict(model.named_modules())[last_linear_input(model)]
    w = head.weight.detach()
    k = class_index % w.shape[0]
    if w.shape[0] == 1:
        return w[0]
    others = torch.cat([w[:k], w[k + 1 :]])
    return w[k] - others.mean(0)


def top_units(model: nn.Module, class_index: int, k: int = 3) -> list[int]:
    """The ``k`` penultimate units the head weighs most for ``class_index`` (:func:`head_weights`)."""
    return [int(i) for i in torch.argsort(head_weights(model, class_index), descending=True)[:k]]


class _DiGIn(Explainer):
    """The shared part: build the chain, start from the query, run the engine, shape the result."""

    stochastic = True
    settings_type: ClassVar[type] = _Settings

    def __init__(
        self,
        model: nn.Module,
        generator: ChainGenerator | Mapping[str, Any],
        *,
        settings: Any = None,
        in_channels: int | None = None,
        seed: int | None = 0,
        check_weights: bool = True,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        super().__init__(model, in_channels=in_channels, spatial_dims=2, seed=seed, check_weights=check_weights)
        self.settings = settings if settings is not None else self.settings_type()
        if not isinstance(self.settings, self.settings_type):
            raise TypeError(f"settings must be a {self.settings_type.__name__}, got {type(self.settings).__name__}.")
        self.generator = generator if isinstance(generator, ChainGenerator) else chain_generator(generator, self.in_channels)
        self.progress = progress

    @classmethod
    def from_settings(cls, model: nn.Module, settings: Any, models: Mapping[str, Any], **kwargs: Any) -> Explainer:
        return cls(model, models, settings=settings, **kwargs)

    def get_parameters(self) -> dict[str, Any]:
        params = super().get_parameters()
        params.update(dataclasses.asdict(self.settings))
        params["generator"] = type(_generator_module(self.generator)).__name__
        # the origin is a DDIM inversion + decode with this many steps each: the explain job's
        # reconstruction check looks up the autoencoder's reference recorded at these steps
        params["encode_steps"] = params["decode_steps"] = self.settings.engine.steps
        return params

    # -------------------------------------------------------------------- for the methods
    def _others(self) -> list[nn.Module]:
        """Extra classifiers the objective consults (guarded like the black box)."""
        return []

    def _objective(self, x: torch.Tensor, target: Target, mask: torch.Tensor | None) -> Objective:
        raise NotImplementedError

    def _diagnostics(self, x: torch.Tensor, res: DiGInResult, target: Target) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------------------ core
    def _check_target(self, target: Target) -> int:
        if not isinstance(target, ClassTarget) or target.multi:
            raise TypeError(f"{type(self).__name__} explains one class, got {target!r}; pass ClassTarget(k) or an int.")
        return target.index

    def _explain(
        self, x: torch.Tensor, target: Target, generator: torch.Generator | None, *, mask: torch.Tensor | None = None
    ) -> MethodResult:
        self._check_target(target)
        gen = self.generator
        net = _generator_module(gen)
        guards = [ModelStateGuard(net, check_weights=False)]
        guards += [ModelStateGuard(m, check_weights=self.check_weights) for m in self._others() if m is not self.model]
        for g in guards:
            g.__enter__()
        try:
            engine = DiGInEngine(gen, self.settings.engine, self.progress)
            results, diags = [], []
            for i in range(0, x.shape[0], self.settings.batch_size):
                xb = x[i : i + self.settings.batch_size]
                mb = None if mask is None else mask[i : i + self.settings.batch_size]
                cond = gen.conditioning(xb)
                if self.settings.start == "inversion":
                    x_T = gen.invert(xb, cond, self.settings.engine.steps)
                else:
                    x_T = gen.noise(xb, generator)
                res = engine.run(self._objective(xb, target, mb), x_T, cond, generator)
                results.append(res)
                diags.append(self._diagnostics(xb, res, target))
            images = torch.cat([r.images for r in results])
            start = torch.cat([r.start_images for r in results])
            with torch.no_grad():
                logits = self.model(images).float().cpu()
                start_logits = self.model(start).float().cpu()
                second = self._second_logits(x, start, images)
        finally:
            for g in reversed(guards):
                g.__exit__(None, None, None)
        diff = (images - start).float()
        # one map per channel (each CT slice its own); RGB: one map
        per_channel = torch.cat(
            [difference_heatmap(diff[:, c : c + 1], self.settings.heatmap_sigma) for c in range(diff.shape[1])], 1
        )
        heat = difference_heatmap(diff, self.settings.heatmap_sigma) if diff.shape[1] == 3 else per_channel.sum(1, keepdim=True)
        sweep = CounterfactualSweep(
            steps=(1.0,),
            images=images[:, None],
            logits=logits[:, None],
            origin=start,
            origin_logits=start_logits,
            activation=self.activation,
            **second,
        )
        diagnostics: dict[str, Any] = {
            "losses": torch.cat([r.losses for r in results], 1).T.numpy(),  # (B, iterations + 1)
            "best_iteration": torch.cat([r.best_iteration for r in results]).numpy(),
        }
        for key in diags[0]:
            diagnostics[key] = torch.cat([torch.as_tensor(d[key]) for d in diags]).numpy()
        k = self._check_target(target) % logits.shape[1]
        if logits.shape[1] > 1:
            diagnostics["target_reached"] = (logits.argmax(1) == k).numpy()
        return MethodResult(
            heatmaps=heat, sweep=sweep, channel_maps=per_channel if diff.shape[1] != 3 else None, diagnostics=diagnostics
        )

    def _second_logits(self, x: torch.Tensor, start: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


@register_method(
    "digin-disagreement",
    settings=DisagreementSettings,
    inputs=ANY_IMAGE,
    needs=("second_model",),
    optional=("autoencoder", "diffusion"),
    counterfactual=True,
    summary="DiG-IN: an image the black box puts in the target class and the second model does not",
)
class DiGInDisagreement(_DiGIn):
    """Where two classifiers disagree: optimise the query (from its inversion) until the black box
    ``f`` says the target class and ``second_model`` ``g`` does not.

    Parameters
    ----------
    model : nn.Module
        The black box ``f``: ``(B, C, S, S)`` -> logits ``(B, K)``.
    second_model : nn.Module
        ``g``, with the same inputs and classes (another site's model, the model before retraining).
    generator : ChainGenerator or mapping
        The chain, or the job's models (``autoencoder`` or ``diffusion``).
    settings : DisagreementSettings, optional
    seed : int or None

    Notes
    -----
    ``diagnostics["disagreement_reached"]``: ``p_f(k) >= 0.9`` and ``p_g(k) <= 0.1`` on the result;
    the sweep carries ``g``'s logits on the query, the origin and the result (``second_*_logits``).
    """

    settings_type = DisagreementSettings

    def __init__(
        self,
        model: nn.Module,
        second_model: nn.Module,
        generator: ChainGenerator | Mapping[str, Any],
        *,
        settings: DisagreementSettings | None = None,
        seed: int | None = 0,
        check_weights: bool = True,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        if not isinstance(second_model, nn.Module):
            raise TypeError(f"second_model must be a torch.nn.Module, got {type(second_model).__name__}.")
        super().__init__(model, generator, settings=settings, seed=seed, check_weights=check_weights, progress=progress)
        self.second_model = second_model

    @classmethod
    def from_settings(cls, model: nn.Module, settings: Any, models: Mapping[str, Any], **kwargs: Any) -> Explainer:
        return cls(model, models["second_model"], models, settings=settings, **kwargs)

    def _others(self) -> list[nn.Module]:
        return [self.second_model]

    def _objective(self, x: torch.Tensor, target: Target, mask: torch.Tensor | None) -> Objective:
        with torch.no_grad():
            target.validate(self.second_model(x[:1]))
        objective = Disagreement(self.model, self.second_model, self._check_target(target), self.settings.kind)
        if not self.settings.distance:
            return objective
        return Penalised(objective, x, torch.ones_like(x[:, :1]), self.settings.distance)

    def _second_logits(self, x: torch.Tensor, start: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.second_model
        return {
            "second_logits": g(images).float().cpu()[:, None],
            "second_origin_logits": g(start).float().cpu(),
            "second_query_logits": g(x).float().cpu(),
        }

    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None, **inputs: Any) -> MethodResult:
        result = super()._explain(x, target, generator, **inputs)
        sw = result.sweep
        assert sw is not None and sw.second_logits is not None
        k = self._check_target(target)
        p_f = torch.softmax(torch.as_tensor(sw.logits)[:, 0], 1)[:, k]
        p_g = torch.softmax(torch.as_tensor(sw.second_logits)[:, 0], 1)[:, k]
        result.diagnostics["disagreement_reached"] = ((p_f >= 0.9) & (p_g <= 0.1)).numpy()
        return result


@register_method(
    "digin-uvce",
    settings=UVCESettings,
    inputs=ANY_IMAGE,
    optional=("autoencoder", "diffusion"),
    uses_mask=True,
    counterfactual=True,
    summary="DiG-IN universal counterfactual: the black box's target class, the change kept inside the mask",
)
class DiGInUVCE(_DiGIn):
    """A universal visual counterfactual: cross-entropy of the black box to the target class plus
    ``distance`` times the mean squared change OUTSIDE ``mask`` (lungs, field of view), from the
    query's inversion. No guidance model trained for the task (unlike DVCE's robust classifier)."""

    settings_type = UVCESettings
    uses_mask = True

    def _objective(self, x: torch.Tensor, target: Target, mask: torch.Tensor | None) -> Objective:
        free = torch.zeros_like(x[:, :1]) if mask is None else mask.to(x)
        return UniversalVCE(self.model, self._check_target(target), x, free, self.settings.distance)


@register_method(
    "digin-neuron",
    settings=NeuronSettings,
    inputs=ANY_IMAGE,
    optional=("autoencoder", "diffusion"),
    uses_mask=True,
    counterfactual=True,
    summary="DiG-IN neuron counterfactual: the unit the head weighs most for the class, driven down",
)
class DiGInNeuron(_DiGIn):
    """A neuron counterfactual of the query: one penultimate unit (by default the one the classifier
    head weighs most for the target class) driven down (or up), the change kept out of the mask's
    kept side (``keep``).

    ``diagnostics``: ``unit``, ``activation_query`` / ``activation_origin`` / ``activation_result``
    ``(B,)`` and ``moved_as_intended`` (the result's activation is below -- above for ``increase`` --
    the origin's).
    """

    settings_type = NeuronSettings
    uses_mask = True

    def _neuron(self, target: Target) -> NeuronObjective:
        k = self._check_target(target)
        unit = self.settings.unit if self.settings.unit is not None else top_units(self.model, k, 1)[0]
        sign = -1 if self.settings.direction == "decrease" else 1
        return NeuronObjective(self.model, unit, self.settings.layer, sign=sign)

    def _objective(self, x: torch.Tensor, target: Target, mask: torch.Tensor | None) -> Objective:
        neuron = self._neuron(target)
        if mask is None:
            kept = torch.ones_like(x[:, :1])
        else:
            kept = mask.to(x) if self.settings.keep == "inside" else 1.0 - mask.to(x)
        return NeuronCounterfactual(neuron, x, kept, self.settings.distance)

    def _diagnostics(self, x: torch.Tensor, res: DiGInResult, target: Target) -> dict[str, Any]:
        neuron = self._neuron(target)
        with torch.no_grad():
            acts = {
                w: neuron.activation(im).cpu() for w, im in (("query", x), ("origin", res.start_images), ("result", res.images))
            }
        moved = acts["result"] < acts["origin"] if neuron.sign < 0 else acts["result"] > acts["origin"]
        return {
            "unit": torch.full((x.shape[0],), neuron.unit),
            **{f"activation_{w}": a for w, a in acts.items()},
            "moved_as_intended": moved,
        }


# ------------------------------------------------------------------------------- visualisation
@dataclasses.dataclass
class UnitVisualisation:
    """Images that drive units of a classifier up (DiG-IN's neuron visualisation).

    Attributes
    ----------
    units : list of int
        The units, in the order of the head's weight for the class.
    layer : str
    images : torch.Tensor
        ``(U, N, C, S, S)``: ``N`` optimised samples per unit.
    activations : torch.Tensor
        ``(U, N, U)``: every listed unit's activation on every unit's images.
    start_activations : torch.Tensor
        ``(U, N, U)`` the same on the unoptimised samples.
    """

    units: list[int]
    layer: str
    images: torch.Tensor
    activations: torch.Tensor
    start_activations: torch.Tensor


def visualise_units(
    model: nn.Module,
    generator: ChainGenerator,
    starts: torch.Tensor,
    *,
    class_index: int | None = None,
    units: list[int] | None = None,
    top_k: int = 3,
    layer: str | None = None,
    config: DiGInConfig | None = None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> UnitVisualisation:
    """For each unit (``units``, or the ``top_k`` the head weighs most for ``class_index``), optimise
    generator samples (fresh noise; the CT autoencoder conditioned on the semantic codes of ``starts``)
    so that the unit's mean activation rises.

    Parameters
    ----------
    model : nn.Module
    generator : ChainGenerator
    starts : torch.Tensor
        ``(N, C, S, S)`` real images: their conditioning seeds the samples (one sample each).
    class_index, units, top_k, layer
        Which units (see :func:`top_units`) of which layer (default: the penultimate features).
    config : DiGInConfig, optional
    seed : int
        Seed of the start noise and the augmentations.
    """
    if units is None:
        if class_index is None:
            raise ValueError("pass units=[...] or class_index (the top_k units the head weighs most for it).")
        units = top_units(model, class_index, top_k)
    engine = DiGInEngine(generator, config or DiGInConfig(), progress)
    objectives = [NeuronObjective(model, u, layer, sign=1) for u in units]
    images, acts, start_acts = [], [], []
    with ModelStateGuard(model), ModelStateGuard(_generator_module(generator), check_weights=False):
        for obj in objectives:
            gen = torch.Generator().manual_seed(seed)
            cond = generator.conditioning(starts)
            res = engine.run(obj, generator.noise(starts, gen), cond, gen)
            with torch.no_grad():
                acts.append(torch.stack([o.activation(res.images) for o in objectives], 1))
                start_acts.append(torch.stack([o.activation(res.start_images) for o in objectives], 1))
            images.append(res.images)
    return UnitVisualisation(
        units=list(units),
        layer=objectives[0].layer,
        images=torch.stack(images),
        activations=torch.stack(acts),
        start_activations=torch.stack(start_acts),
    )
