"""``medxai cohort report``: the cohort view of ``medxai cohort explain`` outputs, as a report a study can cite.

Reads only ``OUT/`` (each case's ``counterfactuals.npz``, ``lung_mask.npz`` and ``row.json``, and
``OUT/run.json`` for the stack's window and slice positions; outputs of an older explain run fall back
to the cohort store named in their provenance), runs :func:`medxai.biomarkers.analyse_cohort`, and
writes ``REPORT/``::

    report.html          one page: summary, population maps, regions, features (volcano, forest),
                         outcome association and shortcut flags, how to read it, what it cannot claim
    features.csv         every (region, feature, direction) row in rank order
    regions.csv          every (region, direction) row in rank order
    case_values.csv      the per-case numbers behind every row (id, label, then one column each)
    population_maps.npz  mean change, share of same sign, t and q per pixel and direction; mean image (CT)
    settings.json        the resolved settings, the inputs (OUT, cases used, cases left out and why)
    figures/*.png

The folder appears complete or not at all (written under a temporary name, renamed at the end).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cohort_explain import FOV_MASK_FILE, LUNG_MASK_FILE, RUN_FILE
from pipelines.provenance import json_safe

__all__ = ["ReportResult", "write_cohort_report", "read_explained_cases"]

logger = logging.getLogger(__name__)

_MAP_FIELDS = ("mean_change", "share_same_sign", "t", "q")


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_cohort_report` did."""

    out: Path
    n_cases: int
    left_out: tuple[tuple[str, str], ...]
    analysis: Any
    seconds: float


def _run_settings(out: Path) -> dict[str, Any]:
    """``OUT/run.json``, or for outputs without one the cohort's ``cohort.json`` named in a case's provenance."""
    run = out / RUN_FILE
    if run.is_file():
        return dict(json.loads(run.read_text(encoding="utf-8")))
    for meta in sorted((out / "cases").glob("*/explanation.json")):
        cohort = json.loads(meta.read_text(encoding="utf-8")).get("provenance", {}).get("cohort")
        if cohort and (Path(cohort) / "cohort.json").is_file():
            c = json.loads((Path(cohort) / "cohort.json").read_text(encoding="utf-8"))
            return {"stack": c.get("stack", {}), "cohort": cohort, "method": json.loads(meta.read_text())["method"]}
    raise FileNotFoundError(
        f"'{out}' has no {RUN_FILE} and no case names a cohort with a cohort.json; pass an OUT folder written by "
        "medxai cohort explain."
    )


def _mask(folder: Path, case_id: str, run: dict[str, Any], index: dict[str, int]) -> np.ndarray:
    """The case's lung mask (CT) or field of view (fundus): from its folder, else from the cohort store."""
    for name, key in ((LUNG_MASK_FILE, "lung_mask"), (FOV_MASK_FILE, "fov_mask")):
        if (folder / name).is_file():
            with np.load(folder / name) as z:
                return np.asarray(z[key]) > 0
    from pipelines.cohort_store import CohortStore

    if case_id not in index:
        raise ValueError(f"no {LUNG_MASK_FILE} and the cohort has no built case {case_id!r}")
    return CohortStore.open(run["cohort"]).read(index[case_id])["lung_mask"] > 0


def _target_probabilities(folder: Path, n_steps: int) -> list[float] | None:
    """The black box's probability of the target at each step of the case's sweep (explanation.json), or None."""
    meta = folder / "explanation.json"
    if not meta.is_file():
        return None
    d = json.loads(meta.read_text(encoding="utf-8"))
    probs, target = (d.get("sweep") or {}).get("probabilities"), d.get("target_class")
    if not isinstance(probs, list) or len(probs) != n_steps or not isinstance(target, int):
        return None
    return [float(p[target]) for p in probs]


def read_explained_cases(
    out: str | os.PathLike[str], run: dict[str, Any], left_out: list[tuple[str, str]], step_rule: str = "flip"
) -> Iterator[Any]:
    """Yield a :class:`medxai.biomarkers.analysis.CaseImages` per finished case folder of ``out`` (sorted
    by id), its counterfactuals picked from the sweep by ``step_rule`` (:func:`medxai.biomarkers.analysis.choose_steps`);
    a case that cannot be used is appended to ``left_out`` with its reason."""
    from medxai.biomarkers.analysis import CaseImages, choose_steps

    root = Path(out)
    index: dict[str, int] = {}
    has_mask = [
        (p.parent / LUNG_MASK_FILE).is_file() or (p.parent / FOV_MASK_FILE).is_file() for p in (root / "cases").glob("*/row.json")
    ]
    if run.get("cohort") and not all(has_mask):
        from pipelines.cohort import read_cases

        index = {r["id"]: int(r["index"]) for r in read_cases(run["cohort"]) if r.get("index")}
    for meta in sorted((root / "cases").glob("*/row.json")):
        folder = meta.parent
        row = json.loads(meta.read_text(encoding="utf-8"))
        cid = str(row.get("id", folder.name))
        try:
            npz = folder / "counterfactuals.npz"
            if not npz.is_file():
                raise ValueError("no counterfactuals.npz: the method gives no counterfactual (the report needs one)")
            with np.load(npz) as z:
                steps = np.asarray(z["steps"], np.float64)
                images = np.asarray(z["images"], np.float32)
                query = np.asarray(z["query"], np.float32) if "query" in z.files else None
                origin = np.asarray(z["origin"], np.float32) if "origin" in z.files else None
            if query is None:
                raise ValueError("counterfactuals.npz holds no query")
            it, ia = choose_steps(steps.tolist(), _target_probabilities(folder, len(steps)), step_rule)
            if it is None:
                raise ValueError(f"no step toward the target class (steps {steps.tolist()})")
            label = row.get("label")
            lab = int(float(label)) if label not in (None, "") else None
            yield CaseImages(
                cid, lab, query, origin if origin is not None else query, images[it], None if ia is None else images[ia],
                _mask(folder, cid, run, index), float(steps[it]), float("nan") if ia is None else float(steps[ia]),
            )  # fmt: skip
        except (ValueError, KeyError, OSError) as e:
            left_out.append((cid, str(e)))
            logger.warning("case %s left out of the report: %s", cid, e)


def write_cohort_report(
    out: str | os.PathLike[str],
    report: str | os.PathLike[str],
    *,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    step_rule: str = "flip",
    overwrite: bool = False,
    progress: Any = None,
) -> ReportResult:
    """Analyse the explained cases of ``out`` and write the report folder ``report`` (see the module docstring).

    Raises
    ------
    FileNotFoundError
        ``out`` is not an explain output.
    ValueError
        Fewer than 3 usable cases, or ``report`` exists and ``overwrite`` is not set.
    """
    from atomicfs import atomic_dir
    from medxai.biomarkers import ReportSettings, analyse_cohort

    t0 = time.perf_counter()
    src, dst = Path(out), Path(report)
    if not (src / "cases").is_dir():
        raise FileNotFoundError(f"'{src}' holds no cases/ folder; pass the -o folder of medxai cohort explain.")
    if dst.exists() and not overwrite:
        raise ValueError(f"'{dst}' exists; pass --overwrite to replace it, or another -o.")
    run = _run_settings(src)
    stack = run.get("stack", {})
    level, width = float(stack.get("window_level", -600.0)), float(stack.get("window_width", 1500.0))
    kind = "fundus" if run.get("input") == "fundus" else "ct"
    settings = ReportSettings(
        kind=kind,
        step_rule=step_rule,
        window=(level - width / 2.0, level + width / 2.0),
        fractions=tuple(float(f) for f in stack.get("fractions", (0.2, 0.4, 0.6, 0.8))),
        body_hu=float(stack.get("body_threshold", -500.0)),
        alpha=alpha,
        n_resamples=n_resamples,
        seed=seed,
    )
    n_total = len(list((src / "cases").glob("*/row.json")))
    left_out: list[tuple[str, str]] = []

    def step(done: int) -> None:
        if progress is not None:
            progress("cases", done, n_total)

    try:
        analysis = analyse_cohort(read_explained_cases(src, run, left_out, step_rule), settings, step)
    except ValueError as e:
        if left_out:  # say why the cases could not be used (e.g. a method without counterfactuals)
            cid, why = left_out[0]
            raise ValueError(f"'{src}': {e} {len(left_out)} case(s) were left out, e.g. {cid}: {why}") from e
        raise
    failed = sorted(p.stem for p in (src / "failed").glob("*.json")) if (src / "failed").is_dir() else []
    with atomic_dir(dst, replace=overwrite) as tmp:
        (tmp / "figures").mkdir()
        _write_rows(tmp / "features.csv", analysis.features)
        _write_rows(tmp / "regions.csv", analysis.regions)
        _write_case_values(tmp / "case_values.csv", analysis)
        if analysis.maps:
            np.savez_compressed(
                tmp / "population_maps.npz",
                mean_image_hu=next(iter(analysis.maps.values())).mean_image,
                **{
                    f"{d}_{k}": getattr(m, k)
                    for d, m in analysis.maps.items()
                    for k in ("mean_change", "share_same_sign", "t", "q")
                },
            )
        meta = {
            "explain_output": str(src.resolve()),
            "run": run,
            "settings": settings.to_dict(),
            "cases_used": list(analysis.ids),
            "cases_left_out": [{"id": i, "reason": r} for i, r in left_out],
            "cases_failed_in_explain": failed,
            "shortcut_candidates": list(analysis.shortcut_candidates),
            "top_region_outside_lungs": analysis.top_region_outside_lungs,
            "notes": list(analysis.notes),
        }
        (tmp / "settings.json").write_text(json.dumps(json_safe(meta), indent=2) + "\n", encoding="utf-8")
        from pipelines.cohort_report_html import write_html

        write_html(tmp, analysis, meta)
    return ReportResult(dst, analysis.n_cases, tuple(left_out), analysis, time.perf_counter() - t0)


def _write_rows(path: Path, rows: Sequence[Any]) -> None:
    buf = io.StringIO()
    if rows:
        cols = list(asdict(rows[0]))
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v) for k, v in asdict(r).items()})
    path.write_text(buf.getvalue(), encoding="utf-8")


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v


def _write_case_values(path: Path, analysis: Any) -> None:
    keys = sorted(analysis.case_values)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "label", *keys])
    for i, cid in enumerate(analysis.ids):
        label = int(analysis.labels[i])
        w.writerow([cid, "" if label < 0 else label, *(_cell(float(analysis.case_values[k][i])) for k in keys)])
    path.write_text(buf.getvalue(), encoding="utf-8")
