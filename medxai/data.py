"""Model-ready arrays from the phantoms: CT four-slice stacks and fundus crops with their labels and
ground-truth masks on the same grid (the transforms' output grid)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CT_LABELS", "FUNDUS_LABELS", "StackSet", "ct_stack_set", "fundus_set"]

#: what a CT set's labels ``y`` say: ``outcome`` (the phantom's one-year mortality, driven by fibrosis)
#: or ``emphysema`` (emphysema holes visible in the stack: the distractor, independent of the outcome;
#: the label of the bench's model-swap teacher)
CT_LABELS: tuple[str, ...] = ("outcome", "emphysema")
#: what a fundus set's labels say: ``referable`` DR (grade >= 2), or one lesion type present in the
#: crop (``haemorrhages`` / ``exudates``: the labels of the bench's model-swap classifiers)
FUNDUS_LABELS: tuple[str, ...] = ("referable", "haemorrhages", "exudates")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackSet:
    """A labelled set of model inputs.

    Attributes
    ----------
    x : np.ndarray
        float32 (N, C, S, S): CT stacks (C=4 slices, [0, 1] lung window) or fundus crops (C=3 RGB).
    y : np.ndarray
        int64 (N,) labels.
    extent : np.ndarray
        float32 (N,) continuous lesion extent of each case.
    masks : dict of np.ndarray
        name -> float32 (N, C', S, S) ground truth on the input grid (C'=4 for CT, 1 for fundus).
    has_marker : np.ndarray
        bool (N,).
    seeds : np.ndarray
        int64 (N,) case seeds.
    """

    x: np.ndarray
    y: np.ndarray
    extent: np.ndarray
    masks: dict[str, np.ndarray]
    has_marker: np.ndarray
    seeds: np.ndarray

    def save(self, path: str) -> None:
        np.savez_compressed(
            path,
            x=self.x,
            y=self.y,
            extent=self.extent,
            has_marker=self.has_marker,
            seeds=self.seeds,
            **{f"mask_{k}": v for k, v in self.masks.items()},
        )

    @staticmethod
    def load(path: str) -> StackSet:
        with np.load(path) as f:
            masks = {k[5:]: f[k] for k in f.files if k.startswith("mask_")}
            return StackSet(f["x"], f["y"], f["extent"], masks, f["has_marker"], f["seeds"])


def _preset_fields(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Phantom-preset overrides as the frozen config wants them (YAML lists -> tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}


def _relabel(s: StackSet, label: str, allowed: tuple[str, ...], mask: Mapping[str, str]) -> StackSet:
    """``s`` with ``y`` replaced by "the mask ``mask[label]`` has a pixel on the model's grid" (the label
    is what the model can see, not what the volume holds outside the stack)."""
    if label not in allowed:
        raise ValueError(f"label must be one of {allowed}, got {label!r}")
    if label == allowed[0]:
        return s
    m = s.masks[mask[label]]
    y = (m.reshape(len(m), -1).max(1) > 0.5).astype(np.int64)
    return dataclasses.replace(s, y=y)


def _build(
    cases: Iterable[Any],
    transform: Callable[..., dict[str, Any]],
    image_of: Callable[[Any], tuple[np.ndarray, ...]],
    names: tuple[str, ...],
    progress: Callable[[int], None] | None,
) -> StackSet:
    """Run each case through ``transform`` with its masks as labels and gather the outputs."""
    xs, ys, ext, markers, seeds = [], [], [], [], []
    masks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for case in cases:
        labels = {k: np.asarray(case.masks[k], dtype=np.float32) for k in names}
        d = transform(*image_of(case), labels=labels)
        xs.append(np.asarray(d["image"], np.float32))
        for k in names:
            masks[k].append((np.asarray(d[k]) > 0.5).astype(np.float32))
        ys.append(case.label)
        ext.append(case.extent)
        markers.append(case.has_marker)
        seeds.append(case.seed)
        if progress:
            progress(1)
    return StackSet(
        x=np.stack(xs),
        y=np.array(ys, dtype=np.int64),
        extent=np.array(ext, dtype=np.float32),
        masks={k: np.stack(v) for k, v in masks.items()},
        has_marker=np.array(markers, dtype=bool),
        seeds=np.array(seeds, dtype=np.int64),
    )


def ct_stack_set(
    n: int,
    seed: int,
    *,
    phantom: str = "test",
    size: int = 64,
    shortcut: float = 0.0,
    stack: Any | None = None,
    progress: Callable[[int], None] | None = None,
    phantom_overrides: Mapping[str, Any] | None = None,
    label: str = "outcome",
) -> StackSet:
    """Generate ``n`` CT phantom cases and turn each into its (4, size, size) lung stack.

    ``stack`` (a ``medxai.transforms.CTStackConfig``) overrides the default stack settings (then
    ``size`` is ignored); ``phantom_overrides``: fields of the phantom preset to replace
    (:class:`medxai.phantoms.CTPhantomConfig`, e.g. ``{"marker_lead_radius_mm": 4.0}``); ``label``: one
    of :data:`CT_LABELS`. Masks returned: ``biomarker``, ``distractor``, ``marker``, ``lungs`` on the
    stack grid.
    """
    from medxai.phantoms import ct_config, iter_ct_cohort
    from medxai.transforms import CTStackConfig, CTStackTransform

    names = ("biomarker", "distractor", "marker", "lungs")
    if label not in CT_LABELS:
        raise ValueError(f"label must be one of {CT_LABELS}, got {label!r}")
    tf = CTStackTransform(stack or CTStackConfig(size=size), label_keys=names)
    cases = iter_ct_cohort(n, seed, ct_config(phantom, **_preset_fields(phantom_overrides)), shortcut=shortcut)
    s = _build(cases, tf, lambda c: (np.array(c.hu), c.spacing, c.origin, np.eye(3)), names, progress)
    return _relabel(s, label, CT_LABELS, {"emphysema": "distractor"})


def fundus_set(
    n: int,
    seed: int,
    *,
    phantom: str = "test",
    size: int = 64,
    shortcut: float = 0.0,
    progress: Callable[[int], None] | None = None,
    label: str = "referable",
    phantom_overrides: Mapping[str, Any] | None = None,
) -> StackSet:
    """Generate ``n`` fundus phantom photographs and crop each to its (3, size, size) field of view.

    ``label``: one of :data:`FUNDUS_LABELS`; ``phantom_overrides``: fields of the phantom preset to
    replace (:class:`medxai.phantoms.FundusPhantomConfig`, e.g. ``{"lesion_mix": "independent"}``).
    Masks returned: ``lesions``, ``haemorrhages``,
    ``exudates`` and ``marker`` (1, size, size) on the crop grid.
    """
    from medxai.phantoms import fundus_config, iter_fundus_cohort
    from medxai.transforms import FundusConfig, FundusTransform

    names = ("lesions", "haemorrhages", "exudates", "marker")
    if label not in FUNDUS_LABELS:
        raise ValueError(f"label must be one of {FUNDUS_LABELS}, got {label!r}")
    tf = FundusTransform(FundusConfig(size=size), label_keys=names)
    cases = iter_fundus_cohort(n, seed, fundus_config(phantom, **_preset_fields(phantom_overrides)), shortcut=shortcut)
    s = _build(cases, tf, lambda c: (np.array(c.rgb),), names, progress)
    return _relabel(s, label, FUNDUS_LABELS, {k: k for k in FUNDUS_LABELS[1:]})
