"""Small pieces the bench's sections share (pipelines.bench and pipelines.bench_digin): NaN-aware
means, AUROCs, the classifiers' probabilities, building a method from a config, explaining in batches."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from medxai.config import Config

__all__ = ["auroc", "build_method", "explain_all", "nanmean", "nanmedian", "present", "probabilities", "region_auroc"]


def nanmean(values: Sequence[float]) -> float:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def nanmedian(values: Sequence[float]) -> float:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(np.median(a)) if a.size else float("nan")


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from medxai.metrics import pixel_auroc

    labels = np.asarray(labels).astype(bool)
    return pixel_auroc(scores, labels) if 0 < labels.sum() < labels.size else float("nan")


def present(masks: np.ndarray) -> np.ndarray:
    """Per case, whether its mask ``(N, ...)`` has any pixel: bool ``(N,)``."""
    return np.asarray(masks).reshape(len(masks), -1).max(1) > 0


def region_auroc(maps: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Mean over cases of the pixel AUROC of ``maps`` against ``truth`` counting only the pixels of
    ``region`` (all ``(N, S, S)``); cases without a truth pixel in the region are left out."""
    from medxai.metrics.counterfactual_dr import lesion_auroc

    return nanmean(lesion_auroc(maps, truth, np.asarray(region) > 0.5).tolist())


def probabilities(model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The model's softmax probabilities ``(N, K)`` on ``x`` ``(N, C, S, S)``."""
    import torch

    with torch.no_grad():
        return np.concatenate(
            [torch.softmax(model(torch.from_numpy(x[i : i + batch])), 1).numpy() for i in range(0, len(x), batch)]
        )


def build_method(spec: Any, cfg: Config, black_box: Any, models: Mapping[str, Any], settings: Any = None) -> Any:
    """``spec.build`` with the settings of ``cfg``'s section of the method and the config's seed."""
    from pipelines.models import method_settings

    settings = method_settings(cfg, spec) if settings is None else settings
    return spec.build(black_box, settings, models, seed=int(cfg.get("seed", 0)))


def explain_all(
    explainer: Any,
    x: np.ndarray,
    target: int,
    batch: int = 4,
    mask: Any = None,
    report: Callable[[int, int], None] | None = None,
) -> tuple[Any, float]:
    """The :class:`~medxai.explanation.Explanation` of ``x`` ``(N, C, S, S)`` for class ``target``,
    explained ``batch`` cases at a time and joined (:meth:`~medxai.explanation.Explanation.concat`),
    and seconds per case. ``mask`` ``(N, 1, S, S)``: per-case regions for methods that take one."""
    import torch

    from medxai.explanation import Explanation

    t0 = time.perf_counter()
    parts = []
    for i in range(0, len(x), batch):
        m = None if mask is None else mask[i : i + batch]
        parts.append(explainer.explain(torch.from_numpy(x[i : i + batch]), target, mask=m))
        if report is not None:
            report(min(i + batch, len(x)), len(x))
    return Explanation.concat(parts), (time.perf_counter() - t0) / max(1, len(x))
