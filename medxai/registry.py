"""The method registry: every explainer registers its name, class, settings and inputs once.

A method file decorates its class::

    @register_method("gradcam", settings=GradCAMSettings, inputs=ANY_IMAGE)
    class GradCAM(Explainer): ...

and everything that runs methods (``medxai explain --method``, the bench, the report, the demo)
asks the registry instead of keeping its own list. :func:`methods` imports every module of
:mod:`medxai.explainers` once (method files register on import), so adding a method is adding one
file there.

Inputs a method takes (:data:`CT_STACK`, :data:`FUNDUS`, :data:`TENSOR`) say which explain jobs can
run it; ``needs`` names the extra models it is built with beyond the black box (``"autoencoder"``,
``"agent"``, ``"diffusion"``, ``"robust_model"``, ``"nn_explainer"``, ``"second_model"``: the classifier
a comparing method sets against the black box), which the job loads from the
config section :data:`MODEL_SECTIONS` names. A method's settings come from the config section named
after the method (``diffexplainer:``, ``dvce:``, ``gradcam:``, ...; absent = the defaults).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "ANY_IMAGE",
    "CT_STACK",
    "FUNDUS",
    "MODEL_SECTIONS",
    "TENSOR",
    "MethodSpec",
    "get_method",
    "method_names",
    "methods",
    "register_method",
]

logger = logging.getLogger(__name__)

#: a four-slice CT stack ``(B, 4, S, S)`` made from a DICOM series by ``CTStackTransform``
CT_STACK = "ct_stack"
#: a fundus photo crop ``(B, 3, S, S)`` in [0, 1] made by ``FundusTransform``
FUNDUS = "fundus"
#: any tensor the black box takes (the Python API)
TENSOR = "tensor"
#: the inputs of model-agnostic attribution methods
ANY_IMAGE = frozenset({CT_STACK, FUNDUS, TENSOR})

_KNOWN_INPUTS = {CT_STACK, FUNDUS, TENSOR}
#: extra model role -> the config section that locates its weights
MODEL_SECTIONS: dict[str, str] = {
    "autoencoder": "autoencoder",
    "agent": "agent",
    "diffusion": "diffusion",
    "robust_model": "robust_classifier",
    "nn_explainer": "nn_explainer_network",
    "second_model": "second_model",
}
_KNOWN_NEEDS = set(MODEL_SECTIONS)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Parameters
    ----------
    name : str
        What users type (``--method NAME``, ``method:`` in a config); equals ``cls.method``.
    cls : type
        The :class:`~medxai.explainers.base.Explainer` subclass.
    settings : type
        Its settings dataclass (built strictly from a config section by :meth:`settings_from`).
    inputs : frozenset of str
        Which inputs it explains (:data:`CT_STACK`, :data:`FUNDUS`, :data:`TENSOR`).
    needs : tuple of str
        Extra models it is built with (loaded by the job from config sections of these names).
    optional : tuple of str
        Extra models it uses when the config has them.
    uses_mask : bool
        Whether ``explain`` takes a per-case region ``mask`` (lungs, field of view).
    counterfactual : bool
        Whether it returns a :class:`~medxai.explanation.CounterfactualSweep`.
    summary : str
        One line for ``medxai explain --list-methods`` and the report.
    """

    name: str
    cls: type
    settings: type
    inputs: frozenset[str]
    needs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    uses_mask: bool = False
    counterfactual: bool = False
    summary: str = ""

    def settings_from(self, mapping: Mapping[str, Any] | None) -> Any:
        """The settings dataclass from a config section (``None``: the defaults); unknown keys raise."""
        from medxai.config import dataclass_from_mapping

        from_dict = getattr(self.settings, "from_dict", None)
        data = dict(mapping or {})
        if from_dict is not None:
            return from_dict(data)
        return dataclass_from_mapping(self.settings, data, self.name)

    def build(self, model: Any, settings: Any, models: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """The explainer for black box ``model`` with ``settings`` and the extra ``models``
        (``role -> object`` for every name in :attr:`needs`, and :attr:`optional` ones if present)."""
        models = dict(models or {})
        missing = [n for n in self.needs if models.get(n) is None]
        if missing:
            raise ValueError(
                f"method {self.name!r} needs the model(s) {missing}; give their sections ({', '.join(missing)}) in the config."
            )
        # the registry sits below the explainers and does not import their base class
        build = getattr(self.cls, "from_settings")  # noqa: B009
        return build(model, settings, models, **kwargs)

    def accepts(self, kind: str) -> bool:
        return kind in self.inputs


_REGISTRY: dict[str, MethodSpec] = {}
_DISCOVERED = False

C = TypeVar("C", bound=type)


def register_method(
    name: str,
    *,
    settings: type,
    inputs: frozenset[str] | set[str] | tuple[str, ...],
    needs: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    uses_mask: bool = False,
    counterfactual: bool = False,
    summary: str = "",
) -> Callable[[C], C]:
    """Class decorator: register an explainer under ``name`` (sets ``cls.method = name``)."""
    bad_inputs = set(inputs) - _KNOWN_INPUTS
    bad_needs = (set(needs) | set(optional)) - _KNOWN_NEEDS
    if bad_inputs or bad_needs or not dataclasses.is_dataclass(settings):
        raise ValueError(
            f"register_method({name!r}): unknown inputs {sorted(bad_inputs)} / models {sorted(bad_needs)}, "
            f"or settings {settings!r} is not a dataclass; inputs are {sorted(_KNOWN_INPUTS)}, models {sorted(_KNOWN_NEEDS)}."
        )

    def deco(cls: C) -> C:
        old = _REGISTRY.get(name)
        if old is not None and (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"method {name!r} is registered twice: {old.cls.__module__} and {cls.__module__}.")
        cls.method = name  # type: ignore[attr-defined]
        doc = summary or (cls.__doc__ or name).strip().splitlines()[0]
        _REGISTRY[name] = MethodSpec(
            name, cls, settings, frozenset(inputs), tuple(needs), tuple(optional), uses_mask, counterfactual, doc
        )
        return cls

    return deco


def _discover() -> None:
    """Import every module of :mod:`medxai.explainers` once; method files register on import."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import medxai.explainers as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _DISCOVERED = True


def methods(input_kind: str | None = None) -> tuple[MethodSpec, ...]:
    """Every registered method (that explains ``input_kind``, if given), in registration order."""
    _discover()
    return tuple(s for s in _REGISTRY.values() if input_kind is None or input_kind in s.inputs)


def method_names(input_kind: str | None = None) -> tuple[str, ...]:
    return tuple(s.name for s in methods(input_kind))


def get_method(name: str, input_kind: str | None = None) -> MethodSpec:
    """The spec of ``name``; a ``ValueError`` lists the valid names (for ``input_kind``, if given)."""
    _discover()
    spec = _REGISTRY.get(name)
    valid = ", ".join(method_names(input_kind))
    if spec is None:
        raise ValueError(f"unknown method {name!r}; registered methods: {valid}.")
    if input_kind is not None and input_kind not in spec.inputs:
        raise ValueError(
            f"method {name!r} does not explain {input_kind.replace('_', ' ')} inputs (it takes "
            f"{', '.join(sorted(spec.inputs))}); methods for this input: {valid}."
        )
    return spec
