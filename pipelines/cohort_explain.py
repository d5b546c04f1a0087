"""``medxai cohort explain``: every case of a built cohort explained with one registered method.

Reads the stacks ``medxai cohort build`` wrote (``COHORT/stacks.zarr``, ``COHORT/cases.csv``) and
writes, per case, the same layout as ``medxai explain`` on the stack grid (``OUT/cases/<id>/``: heatmap,
counterfactuals, strip, ``explanation.json`` with the case's identifiers), plus, with ``dicom=True``,
the DICOM objects in the source study (the series is read again from the path ``cases.csv`` names).

* **Resumable**: each case folder appears atomically when complete; a rerun skips the finished ones
  and retries the failed ones.
* **Failures** are logged naming the case and its series, recorded in ``OUT/failed/<id>.json`` and
  in ``OUT/cases.csv`` (status ``failed`` with the reason); the other cases go on.
* **Sharding** with no coordinator (:mod:`pipelines.shard`): ``--shard i/n`` and ``torchrun`` ranks take
  the selected cases round-robin. Cases are explained one at a time with the method's own seed, so a
  case's output does not depend on which shard or batch it fell in: two ranks give exactly the union
  of one rank's outputs.
* ``OUT/cases.csv`` is rebuilt from the finished folders at the end of every run (atomically; with
  several shards the one that finishes last writes the union of all).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import StepError

__all__ = [
    "CohortExplainResult",
    "FOV_MASK_FILE",
    "LUNG_MASK_FILE",
    "OUT_COLUMNS",
    "RUN_FILE",
    "collect_cases",
    "explain_cohort",
    "write_case_files",
    "write_run_json",
]

logger = logging.getLogger(__name__)

#: columns of ``OUT/cases.csv`` (per step: ``p_step_<s>``, the black box's probability of the target)
OUT_COLUMNS: tuple[str, ...] = (
    "id", "label", "split", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "source", "method", "status",
    "reason", "target_class", "p_query", "p_reconstruction", "flip", "heatmap_max", "heatmap_mean",
    "heatmap_share_in_lungs", "output", "seconds",
)  # fmt: skip


#: per case: the stack's lung mask, uint8 ``lung_mask`` (C, S, S) (what medxai cohort report reads)
LUNG_MASK_FILE = "lung_mask.npz"
#: per fundus case: the field of view, uint8 ``fov_mask`` (S, S)
FOV_MASK_FILE = "fov_mask.npz"
#: OUT/run.json: the method, target class and stack settings of the run (window, slice fractions)
RUN_FILE = "run.json"

#: the columns of the cohort's cases.csv carried into every output row and provenance
_IDS = ("id", "label", "split", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "source")


@dataclasses.dataclass(frozen=True)
class CohortExplainResult:
    """What one run of :func:`explain_cohort` did (this process's shard)."""

    out: Path
    method: str
    shard: str
    selected: int
    mine: int
    explained: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]
    seconds: float


def _safe_id(case_id: str) -> str:
    from dicom_io import safe_filename

    return safe_filename(case_id, max_len=80) or "case"


def _select(rows: Sequence[dict[str, str]], split: str, ids: Sequence[str] | None) -> list[dict[str, str]]:
    """The cases to explain, in ``cases.csv`` order: status ok, in ``split`` (``all``: every split), or the given ids."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("index", "") != ""]
    if ids:
        known = {r["id"]: r for r in ok}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ValueError(f"case(s) {missing[:5]} are not built cases of the cohort (status ok in cases.csv).")
        return [known[i] for i in ids]
    if split == "all":
        return ok
    splits = sorted({r.get("split", "") for r in ok})
    if split not in splits:
        raise ValueError(
            f"the cohort has no built case in split {split!r}; its splits: {', '.join(splits) or 'none'} (or 'all')."
        )
    return [r for r in ok if r.get("split") == split]


def write_run_json(
    out: Path,
    *,
    method: str,
    target: int,
    stack: dict[str, Any],
    cohort: str = "",
    config: str = "",
    input_kind: str = "ct_stack",
) -> None:
    """``OUT/run.json``: the input kind (``ct_stack`` / ``fundus``), method, target class and stack settings
    of an explain run (atomic; every shard writes the same content)."""
    from pipelines.cohort_store import write_json
    from pipelines.provenance import package_versions

    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / RUN_FILE,
        {"input": input_kind, "method": method, "target_class": target, "cohort": cohort, "config": config,
         "stack": stack, "versions": package_versions()},
    )  # fmt: skip


def write_case_files(folder: Path, mask: np.ndarray, row: dict[str, Any], *, fov: bool = False) -> None:
    """Beside a case's explanation: its lung mask (``fov``: a fundus field of view, ``fov_mask.npz``) so
    that medxai cohort report needs nothing but OUT/, and ``row.json`` (its OUT/cases.csv row; written
    last, it marks the case as finished)."""
    if fov:
        np.savez_compressed(folder / FOV_MASK_FILE, fov_mask=np.asarray(mask, np.uint8))
    else:
        np.savez_compressed(folder / LUNG_MASK_FILE, lung_mask=np.asarray(mask, np.uint8))
    (folder / "row.json").write_text(json.dumps(row, default=float), encoding="utf-8")


def _row(case: dict[str, str], exp: Any, target: int, folder: Path, lungs: np.ndarray, seconds: float) -> dict[str, Any]:
    """The ``OUT/cases.csv`` row of an explained case."""
    heat = exp.heatmaps_numpy()[0].sum(0)
    inside = float(heat[lungs > 0.5].sum()) / max(float(heat.sum()), 1e-12)
    row: dict[str, Any] = {k: case.get(k, "") for k in _IDS}
    row.update(
        method=exp.method, status="ok", reason="", target_class=target, p_query=float(exp.probabilities[0, target]),
        heatmap_max=float(heat.max()), heatmap_mean=float(heat.mean()), heatmap_share_in_lungs=inside,
        output=str(folder), seconds=round(seconds, 3),
    )  # fmt: skip
    sw = exp.sweep
    if sw is not None:
        if sw.origin_logits is not None:
            row["p_reconstruction"] = float(sw.origin_probabilities[0, target])
        probs = sw.probabilities[0, :, target]
        for s, p in zip(sw.steps, probs):
            row[f"p_step_{s:+g}"] = float(p)
        # flip: the decision moved to the other side of 0.5 at the step farthest from the query's side
        start = float(row.get("p_reconstruction", row["p_query"]))
        end = float(probs[-1] if start < 0.5 else probs[0])
        row["flip"] = (start >= 0.5) != (end >= 0.5)
    return row


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    from atomicfs import atomic_path

    steps = sorted({k for r in rows for k in r if k.startswith("p_step_")}, key=lambda k: float(k[7:]))
    cols = [*OUT_COLUMNS[: OUT_COLUMNS.index("flip")], *steps, *OUT_COLUMNS[OUT_COLUMNS.index("flip") :]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def collect_cases(out: str | os.PathLike[str], cohort_rows: Sequence[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Rebuild ``OUT/cases.csv`` from the finished case folders and the failure records; returns the rows
    (in ``cohort_rows`` order when given)."""
    root = Path(out)
    found: dict[str, dict[str, Any]] = {}
    for meta in sorted((root / "cases").glob("*/row.json")):
        row = json.loads(meta.read_text(encoding="utf-8"))
        found[str(row["id"])] = row
    for meta in sorted((root / "failed").glob("*.json")):
        row = json.loads(meta.read_text(encoding="utf-8"))
        found.setdefault(str(row["id"]), row)  # a later success wins over an old failure
    order = [r["id"] for r in cohort_rows] if cohort_rows is not None else sorted(found)
    rows = [found[i] for i in order if i in found] + [r for i, r in found.items() if i not in set(order)]
    _write_csv(root / "cases.csv", rows)
    return rows


def explain_cohort(
    cohort: str | os.PathLike[str],
    config: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    method: str | None = None,
    split: str = "test",
    ids: Sequence[str] | None = None,
    shard: str | None = None,
    dicom: bool = False,
    overrides: dict[str, Any] | None = None,
    trust_code: bool = False,
    progress: Any = None,
) -> CohortExplainResult:
    """Explain the ``split`` cases (or ``ids``) of ``cohort`` with ``method`` into ``out``.

    Parameters
    ----------
    cohort : path
        A folder written by ``medxai cohort build``.
    config : path
        The job config (``input: ct_stack``): black box, method models and settings.
    out : path
        Output root: ``cases/<id>/`` per case, ``failed/<id>.json``, ``cases.csv``.
    method : str, optional
        Registered method (default: the config's ``method``).
    split : {"test", "validation", "train", "all"}
    ids : sequence of str, optional
        Explain these case ids instead of a split.
    shard : str, optional
        ``"i/n"``; with ``torchrun`` the ranks split it further.
    dicom : bool
        Also write the DICOM objects into each case folder (reads the source series again).
    """
    import torch

    from atomicfs import atomic_dir
    from medxai.registry import CT_STACK, get_method
    from medxai.training.ct import stack_config
    from pipelines import models as job_models
    from pipelines.cohort import read_cases
    from pipelines.cohort_data import check_stack
    from pipelines.cohort_store import CohortStore
    from pipelines.explain import load_job_config
    from pipelines.shard import current_shard

    t0 = time.perf_counter()
    root, out_dir = Path(cohort), Path(out)
    me = current_shard(shard)
    try:
        cfg = load_job_config(config, overrides)
        if job_models.input_kind(cfg) != CT_STACK:
            raise ValueError(
                f"{cfg.source}: cohort explain takes CT cohorts (input: ct_stack), not {job_models.input_kind(cfg)}."
            )
        spec = get_method(str(method or cfg.get("method")), CT_STACK)
        settings = job_models.method_settings(cfg, spec)
        target = int(job_models.target_class(cfg))
        rows = read_cases(root)
        check_stack(root, cfg)
        selected = _select(rows, split, ids)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        raise StepError("config", str(e)) from e
    mine = me.take(selected)
    todo = [r for r in mine if not (out_dir / "cases" / _safe_id(r["id"]) / "row.json").is_file()]
    skipped = tuple(r["id"] for r in mine if r not in todo)
    logger.info("shard %s: %d of %d selected cases, %d already explained", me, len(mine), len(selected), len(skipped))
    explained: list[str] = []
    failed: list[str] = []
    if todo:
        try:
            black_box = job_models.load_black_box(cfg, trust_code=trust_code)
            explainer = spec.build(
                black_box, settings, job_models.load_method_models(cfg, spec, trust_code=trust_code), seed=int(cfg.get("seed", 0))
            )
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise StepError("load models", str(e)) from e
        store = CohortStore.open(root)
        write_run_json(
            out_dir, method=spec.name, target=target, stack=dataclasses.asdict(stack_config(cfg)),
            cohort=str(root.resolve()), config=str(Path(str(cfg.source)).resolve()),
        )  # fmt: skip
        for n, case in enumerate(todo):
            started = time.perf_counter()
            folder = out_dir / "cases" / _safe_id(case["id"])
            try:
                data = store.read(int(case["index"]))
                x = torch.from_numpy(np.asarray(data["image"], np.float32))[None]
                lungs = np.asarray(data["lung_mask"]).max(axis=0)
                mask = torch.from_numpy((lungs > 0)[None, None].astype(np.float32)) if spec.uses_mask else None
                exp = explainer.explain(x, target, mask=mask)
                prov = {
                    **{k: case.get(k) for k in _IDS},
                    "cohort": str(root.resolve()),
                    "config_file": str(Path(str(cfg.source)).resolve()),
                    "seed": int(cfg.get("seed", 0)),
                }
                with atomic_dir(folder) as tmp:
                    if dicom:
                        _write_dicom_case(tmp, exp, case, cfg, target, spec, prov)
                    else:
                        exp.save(tmp, query=x.numpy(), provenance=prov)
                    row = _row(case, exp, target, folder, lungs, time.perf_counter() - started)
                    write_case_files(tmp, data["lung_mask"], row)
                (out_dir / "failed" / f"{_safe_id(case['id'])}.json").unlink(missing_ok=True)
                explained.append(case["id"])
            except Exception as e:  # noqa: BLE001 -- one case's failure is recorded and the rest go on
                reason = f"{type(e).__name__}: {e}"
                logger.warning(
                    "case %s (series %s, %s) failed: %s", case["id"], case.get("SeriesInstanceUID"), case.get("source"), reason
                )
                rec = {**{k: case.get(k, "") for k in _IDS},
                       "method": spec.name, "status": "failed", "reason": reason}  # fmt: skip
                (out_dir / "failed").mkdir(parents=True, exist_ok=True)
                (out_dir / "failed" / f"{_safe_id(case['id'])}.json").write_text(json.dumps(rec), encoding="utf-8")
                failed.append(case["id"])
            if progress is not None:
                progress("cases", n + 1, len(todo))
    out_dir.mkdir(parents=True, exist_ok=True)
    collect_cases(out_dir, rows)
    return CohortExplainResult(
        out_dir, spec.name, repr(me), len(selected), len(mine), tuple(explained), skipped, tuple(failed), time.perf_counter() - t0
    )


def _write_dicom_case(tmp: Path, exp: Any, case: dict[str, str], cfg: Any, target: int, spec: Any, prov: dict[str, Any]) -> None:
    """The full ``medxai explain`` layout, DICOM included, by reading the case's series again."""
    from dicom_io import read_series
    from medxai.registry import CT_STACK
    from pipelines.explain import CTSourceGrid, make_transform, write_case

    obj = read_series(case["source"], case["SeriesInstanceUID"])
    transform = make_transform(cfg, CT_STACK)
    data = transform(obj.array, obj.spacing, obj.origin, obj.direction)
    grid = CTSourceGrid(obj, transform, data)
    write_case(
        tmp,
        exp,
        np.asarray(data["image"], np.float32)[None],
        grid,
        obj,
        target,
        spec,
        True,
        {**prov, "slice_indices": grid.slice_indices},
    )
