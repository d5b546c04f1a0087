"""The bench's ``cohort`` section: ``medxai cohort report`` on held-out phantom cohorts whose answer is known.

Each CT scenario explains ``cohort_n`` held-out phantom patients with DiffExplainer (the bench's
teacher / agent set of that scenario and the shared autoencoder), writes them in the layout of
``medxai cohort explain`` (``<out>/cohort/<scenario>/explained``), runs the report on that folder
exactly as the command does (``<out>/cohort/<scenario>/report``), and scores the report's own ranking
against what the phantom planted:

* ``fibrosis`` (the clean teacher; label: death, driven by subpleural basal fibrosis): the lower rind
  must be the top region and the high-attenuation area of the lungs the top feature, rising toward
  "death";
* ``emphysema`` (the model-swap teacher, label: emphysema holes in the stack, emphysema made visible
  as in the swap scenario): %LAA-950 of the lungs the top feature, rising toward "emphysema"; the top
  lung zone must not be a lower one (emphysema is not basal in the phantom);
* ``shortcut`` (the teacher trained where the pacemaker always follows the label), explained on an
  UNBIASED cohort (the marker in half the patients whatever their label, the lead as thick as in the
  shortcut scenario): the report must flag a change outside the lungs (the top region outside the
  lungs, or a shortcut candidate there), and the marker's feature (dense area >= 100 HU of the chest
  wall or the mediastinum) must be unrelated to the outcome.
* ``fundus`` (the DR classifier, DVCE toward "healthy", the field of view as the mask, as medxai
  explain passes it): ``cohort_n`` referable held-out crops; the red-lesion and bright-lesion counts
  must fall (both significant, ranked on top) and the vessel area must not change (q >= 0.05). Only
  referable crops are explained (DVCE toward "healthy" has nothing to remove from a healthy one), so
  the outcome AUROC of this scenario is undefined and no shortcut is checked.

Keys (``cohort.<scenario>.``): ``expected_rank`` (rank of the planted row in the report's ranking of
its primary direction -- ``span``, toward minus away, for DiffExplainer; ``toward`` for DVCE -- the
worse of region and feature where both are planted), ``expected_q`` (its
q-value, the larger of the two), ``flagged_shortcut`` and the rows behind them; ``cohort.report_seconds``:
the report of the ``fibrosis`` scenario (``cohort_n`` patients) from its folder, start to end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CT_SCENARIOS", "cohort_section"]

#: the CT scenarios: bench model set, label of the cohort, the planted answer
CT_SCENARIOS: dict[str, dict[str, Any]] = {
    "fibrosis": {"models": "ct", "label": "outcome", "region": "lower_rind", "feature": "lungs/haa_pct", "wants": "more"},
    "emphysema": {"models": "ct_emphysema", "label": "emphysema", "region": None, "feature": "lungs/laa950_pct", "wants": "more"},
    "shortcut": {"models": "ct_shortcut", "label": "outcome", "region": None, "feature": None, "wants": "more"},
}
_OUTSIDE_MARKER_FEATURES = ("chest_wall/dense_pct", "mediastinum/dense_pct")


def _explain_to_folder(
    explainer: Any, data: Any, folder: Path, target: int, stack: Mapping[str, Any], method: str, fov: np.ndarray | None = None
) -> float:
    """Explain every case of ``data`` (a :class:`medxai.data.StackSet`) and write each in the layout of
    medxai cohort explain; returns seconds per case. ``fov`` ``(N, S, S)``: fundus crops, the mask the
    method gets and the one written beside each case (CT: the lung mask of ``data``)."""
    import torch

    from atomicfs import atomic_dir
    from pipelines.bench_common import explain_all
    from pipelines.cohort_explain import write_case_files, write_run_json

    mask = None if fov is None else torch.from_numpy(fov[:, None].astype(np.float32))
    exp, secs = explain_all(explainer, data.x, target, batch=8, mask=mask)
    kind = "ct_stack" if fov is None else "fundus"
    write_run_json(folder, method=method, target=target, stack=dict(stack), input_kind=kind)
    for i in range(len(data.x)):
        cid = f"P{i:04d}"
        with atomic_dir(folder / "cases" / cid) as tmp:
            exp.select(i).save(tmp, query=data.x[i : i + 1], provenance={"id": cid, "seed": int(data.seeds[i])})
            row = {"id": cid, "label": int(data.y[i]), "status": "ok"}
            if fov is None:
                write_case_files(tmp, data.masks["lungs"][i], row)
            else:
                write_case_files(tmp, fov[i], row, fov=True)
    return secs


def _feature(analysis: Any, key: str) -> Any:
    region, feature = key.split("/")
    return next(r for r in analysis.features if r.region == region and r.feature == feature and r.direction == analysis.primary)


def _score(name: str, analysis: Any) -> dict[str, Any]:
    """The planted answer's place in the report's ranking (see the module docstring)."""
    plan = CT_SCENARIOS[name]
    out: dict[str, Any] = {"n_cases": analysis.n_cases}
    ranks, qs = [], []
    if plan["region"]:
        rank, q = analysis.rank_of("regions", plan["region"])
        out.update(region=plan["region"], region_rank=rank, region_q=q)
        ranks.append(rank)
        qs.append(q)
    if plan["feature"]:
        row = _feature(analysis, plan["feature"])
        out.update(feature=plan["feature"], feature_rank=row.rank, feature_q=row.q, feature_wants=row.wants,
                   feature_dz=row.dz, feature_auroc=row.auroc)  # fmt: skip
        # a planted feature changed the wrong way is not found: its rank does not count
        ranks.append(row.rank if row.wants == plan["wants"] else len(analysis.features))
        qs.append(row.q)
    primary = analysis.primary
    out["direction"] = primary
    zones = [r for r in analysis.regions if r.direction == primary and r.inside_lungs]
    out["top_region"] = next((r.region for r in analysis.regions if r.direction == primary and r.rank == 1), None)
    out["top_lung_zone"] = zones[0].region if zones else None
    out["basal_predominant"] = bool(zones and zones[0].region.startswith("lower"))
    top_feats = [r for r in analysis.features if r.direction == primary][:5]
    out["top_features"] = [f"{r.region}/{r.feature} ({r.wants}, q {r.q:.2g})" for r in top_feats]
    out["shortcut_candidates"] = list(analysis.shortcut_candidates)
    outside_candidates = [c for c in analysis.shortcut_candidates if c.split("/")[0] in ("chest_wall", "mediastinum")]
    out["flagged_shortcut"] = bool(analysis.top_region_outside_lungs or outside_candidates)
    if name == "shortcut":
        marker = [_feature(analysis, k) for k in _OUTSIDE_MARKER_FEATURES]
        best = min(marker, key=lambda r: r.rank)
        out.update(
            marker_feature=f"{best.region}/{best.feature}", marker_feature_auroc=best.auroc, marker_feature_wants=best.wants
        )
        ranks.append(best.rank)
        qs.append(best.q)
    out["expected_rank"] = int(max(ranks)) if ranks else None
    out["expected_q"] = float(max(qs)) if qs else None
    return out


def _scenario(name: str, models: Any, s: Any, folder: Path, clock: Any) -> tuple[dict[str, Any], float]:
    """Explain one scenario's cohort into ``folder/explained``, report it into ``folder/report``, score it."""
    import dataclasses

    from medxai.data import ct_stack_set
    from medxai.registry import CT_STACK, get_method
    from medxai.training.ct import stack_config
    from pipelines.bench_common import build_method
    from pipelines.cohort_report import write_cohort_report
    from pipelines.models import load_black_box, load_method_models, target_class

    plan = CT_SCENARIOS[name]
    spec = get_method("diffexplainer", CT_STACK)
    cfg = models.ct(plan["models"])
    stack = stack_config(cfg)
    over: dict[str, Any] = {}
    if name == "emphysema":
        over = dict(s.swap_phantom)
    elif name == "shortcut":
        over = {**dict(s.shortcut_phantom), "marker_rate": 0.5}  # unbiased: the marker whatever the label

    def make() -> Any:
        phantom = str(cfg.get("data.phantom", "test"))
        seed = int(s.cohort_seeds[name])
        return ct_stack_set(s.cohort_n, seed, phantom=phantom, stack=stack, phantom_overrides=over, label=plan["label"])

    data = clock.time(f"cohort_{name}_data", make)
    target = int(target_class(cfg))
    explainer = build_method(spec, cfg, load_black_box(cfg), load_method_models(cfg, spec))
    stack_dict = dataclasses.asdict(stack)
    secs = clock.time(
        f"cohort_{name}_explain", lambda: _explain_to_folder(explainer, data, folder / "explained", target, stack_dict, spec.name)
    )
    t0 = time.perf_counter()
    rep = write_cohort_report(folder / "explained", folder / "report", n_resamples=s.cohort_resamples, overwrite=True)
    report_seconds = time.perf_counter() - t0
    return {**_score(name, rep.analysis), "explain_seconds_per_case": secs, "report_seconds": report_seconds}, report_seconds


def _fundus_scenario(models: Any, s: Any, folder: Path, clock: Any) -> dict[str, Any]:
    """The DR classifier's cohort (module docstring): DVCE on referable held-out crops, then the report."""
    from medxai.data import StackSet, fundus_set
    from medxai.metrics.counterfactual_dr import fov_from_images
    from medxai.registry import FUNDUS, get_method
    from pipelines.bench_common import build_method
    from pipelines.cohort_report import write_cohort_report
    from pipelines.models import load_black_box, load_method_models, target_class

    cfg = models.fundus()
    spec = get_method("dvce", FUNDUS)
    size = int(cfg.get("image_size"))
    seed = int(s.cohort_seeds["fundus"])
    pool = clock.time("cohort_fundus_data", lambda: fundus_set(3 * s.cohort_n, seed, size=size))
    idx = np.flatnonzero(pool.y == 1)[: s.cohort_n]
    data = StackSet(pool.x[idx], pool.y[idx], pool.extent[idx], {k: v[idx] for k, v in pool.masks.items()},
                    pool.has_marker[idx], pool.seeds[idx])  # fmt: skip
    fov = fov_from_images(data.x)
    target = int(target_class(cfg))
    explainer = build_method(spec, cfg, load_black_box(cfg), load_method_models(cfg, spec))
    secs = clock.time(
        "cohort_fundus_explain", lambda: _explain_to_folder(explainer, data, folder / "explained", target, {}, spec.name, fov)
    )
    t0 = time.perf_counter()
    rep = write_cohort_report(folder / "explained", folder / "report", n_resamples=s.cohort_resamples, overwrite=True)
    a = rep.analysis
    red, bright, vessels = (_feature(a, f"fov/{k}") for k in ("red_lesion_count", "bright_lesion_count", "vessel_contrast"))
    ranks = [r.rank if r.wants == "less" else len(a.features) for r in (red, bright)]
    return {
        "n_cases": a.n_cases,
        "red_lesion_count": {"rank": red.rank, "q": red.q, "wants": red.wants, "median_change": red.median_change},
        "bright_lesion_count": {"rank": bright.rank, "q": bright.q, "wants": bright.wants, "median_change": bright.median_change},
        "vessel_contrast": {"rank": vessels.rank, "q": vessels.q, "wants": vessels.wants, "median_change": vessels.median_change},
        "vessels_unchanged": bool(not vessels.q < a.settings.alpha),
        "top_features": [f"{r.region}/{r.feature} ({r.wants}, q {r.q:.2g})" for r in a.features if r.direction == a.primary][:5],
        "expected_rank": int(max(ranks)),
        "expected_q": float(max(red.q, bright.q)),
        "flagged_shortcut": bool(a.shortcut_candidates),
        "explain_seconds_per_case": secs,
        "report_seconds": time.perf_counter() - t0,
    }


def cohort_section(models: Any, s: Any, out_dir: Path, progress: Any, clock: Any) -> dict[str, Any]:
    """Run the scenarios (module docstring) and return the ``cohort`` section of results.json."""
    result: dict[str, Any] = {"_settings": {"n": s.cohort_n, "seeds": dict(s.cohort_seeds), "resamples": s.cohort_resamples}}
    for i, name in enumerate(CT_SCENARIOS):
        folder = out_dir / "cohort" / name
        row, report_seconds = _scenario(name, models, s, folder, clock)
        row["report"] = str((folder / "report" / "report.html").relative_to(out_dir))
        result[name] = row
        if name == "fibrosis":
            result["report_seconds"] = report_seconds
        shown = {k: v for k, v in row.items() if k != "top_features"}
        logger.info("cohort %s: %s", name, json.dumps(shown, default=str))
        if progress is not None:
            progress("cohort scenarios", i + 1, len(CT_SCENARIOS) + 1)
    folder = out_dir / "cohort" / "fundus"
    result["fundus"] = {**_fundus_scenario(models, s, folder, clock),
                        "report": str((folder / "report" / "report.html").relative_to(out_dir))}  # fmt: skip
    logger.info("cohort fundus: %s", json.dumps(result["fundus"], default=str))
    if progress is not None:
        progress("cohort scenarios", len(CT_SCENARIOS) + 1, len(CT_SCENARIOS) + 1)
    return result
