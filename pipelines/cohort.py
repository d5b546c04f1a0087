"""The cohort build job: a studies folder + an outcomes CSV -> a chunked store of CT stacks + cases.csv.

`build_cohort` scans every top-level folder of the studies folder (`pipelines.cohort_series`), checks
the labels (`pipelines.cohort_labels`), picks one series per CSV row by the selection rule, draws the
patient-level split, and writes each case's four-slice stack (`medxai.transforms.CTStackTransform`)
into the store (`pipelines.cohort_store`). Every row of the CSV and every series without a row ends
up in ``cases.csv`` with a status (``ok``, ``failed``, ``no_images``, ``no_row``, ``excluded``) and
its reason: nothing is guessed or left out silently.

A rerun builds only what is missing: a case counts as built once its done marker exists (written
after its arrays), so an interrupted run loses at most the cases in flight and never counts a
half-written one. Reading and transforming run in worker processes (``workers``); only the parent
writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomicfs import atomic_path

from .cohort_labels import SPLITS, LabelTable, RowProblem, assign_splits, check_fractions, read_labels
from .cohort_series import MATCH_KINDS, FolderScan, FoundSeries, SelectionRule, choose_series, scan_folder, top_folders
from .cohort_store import (
    STORE_NAME,
    CohortStore,
    clear_done,
    file_sha256,
    mark_done,
    prepare_cohort_folder,
    read_done,
    write_json,
)
from .cohort_workers import DIED, CaseTask, Workers, build_case, died_case

if TYPE_CHECKING:
    from medxai.progress import ProgressFn

__all__ = ["CASES_COLUMNS", "STATUSES", "CaseRecord", "CohortResult", "build_cohort", "read_cases", "SelectionRule"]

COHORT_FORMAT = 1
STATUSES = ("ok", "failed", "no_images", "no_row", "excluded")
#: Columns of cases.csv, in order.
CASES_COLUMNS = (
    "id", "label", "split", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "source",
    "status", "reason", "index", "SeriesDescription", "slices", "slice_thickness", "folder", "csv_line",
)  # fmt: skip


@dataclass
class CaseRecord:
    """One row of ``cases.csv``: a CSV row, or a series without a row (``status="no_row"``)."""

    id: str
    label: str = ""
    split: str = ""
    status: str = "pending"
    reason: str = ""
    index: int | None = None
    csv_line: int | None = None
    series: FoundSeries | None = None
    source: str = ""

    def row(self) -> dict[str, object]:
        """The ``cases.csv`` row (`CASES_COLUMNS`)."""
        s = self.series
        return {
            "id": self.id, "label": self.label, "split": self.split,
            "PatientID": s.patient_id if s else "", "StudyInstanceUID": s.study_uid if s else "",
            "SeriesInstanceUID": s.series_uid if s else "", "AccessionNumber": s.accession if s else "",
            "source": s.source if s else self.source, "status": self.status, "reason": self.reason,
            "index": "" if self.index is None else self.index, "SeriesDescription": s.description if s else "",
            "slices": s.n_slices if s else "", "slice_thickness": "" if s is None or s.thickness is None else s.thickness,
            "folder": s.folder if s else "", "csv_line": "" if self.csv_line is None else self.csv_line,
        }  # fmt: skip


@dataclass(frozen=True)
class CohortResult:
    """What `build_cohort` did.

    Attributes
    ----------
    out : Path
        The cohort folder (``cases.csv``, ``cohort.json``, ``stacks.zarr/``, ``done/``).
    cases : tuple of CaseRecord
        Every row of ``cases.csv``.
    built, skipped : int
        Cases written by this run, and cases already in the store (from an earlier run).
    store_shape : tuple of int
        Shape of the ``image`` array ``(N, C, S, S)`` (rows of cases not ``ok`` are unused).
    warnings : tuple of str
        Notes for the user (loose DICOM files, a patient in two splits, ...).
    """

    out: Path
    cases: tuple[CaseRecord, ...]
    built: int
    skipped: int
    store_shape: tuple[int, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        return {s: sum(c.status == s for c in self.cases) for s in STATUSES}

    def splits(self) -> dict[str, int]:
        """Cases with status ``ok`` per split."""
        out: dict[str, int] = defaultdict(int)
        for c in self.cases:
            if c.status == "ok":
                out[c.split] += 1
        return dict(out)


def _match(
    table: LabelTable, split_of: dict[str, str], scans: list[FolderScan], rule: SelectionRule, match: str
) -> list[CaseRecord]:
    """One record per CSV row (file order), then one per key with images but no row."""
    by_key: dict[str, list[FoundSeries]] = defaultdict(list)
    unkeyed: dict[str, list[FoundSeries]] = defaultdict(list)
    for scan in scans:
        for s in scan.series:
            (by_key[s.key(match)] if s.key(match) else unkeyed[s.folder]).append(s)
    failed = {s.folder: s for s in scans if s.error}
    attr = MATCH_KINDS[match]
    note = f"; {len(failed)} folder(s) could not be scanned (rows with status failed)" if failed else ""
    lines = [(r.line, r) for r in table.rows.values()] + [(p.line, p) for p in table.problems]
    records: list[CaseRecord] = []
    for _, r in sorted(lines, key=lambda t: t[0]):
        rec = CaseRecord(r.id, str(r.label), csv_line=r.line)
        cands = by_key.get(r.id, [])
        if isinstance(r, RowProblem):  # a row set aside: say so, and where its images are
            rec.status, rec.reason = "excluded", r.reason + ("; its images are not built" if cands else "")
            rec.source = ";".join(sorted({s.source for s in cands}))
        else:
            rec.split = split_of[r.id]
            chosen, notes = choose_series(cands, rule)
            if match == "folder" and r.id in failed:
                rec.status, rec.reason, rec.source = (
                    "failed",
                    f"scan of the folder failed: {failed[r.id].error}",
                    failed[r.id].path,
                )
            elif not cands:
                rec.status, rec.reason = "no_images", f"no series with {attr} {r.id!r} under the studies folder{note}"
            elif chosen is None:
                rec.status, rec.reason = "excluded", "no series passes the selection rule: " + "; ".join(notes)
                rec.source = ";".join(sorted({s.source for s in cands}))
            else:
                rec.series, rec.reason = chosen, ("not chosen: " + "; ".join(notes)) if notes else ""
        records.append(rec)
    known = set(table.rows) | table.problem_ids()
    for key in sorted(set(by_key) - known):
        chosen, _ = choose_series(by_key[key], rule)
        series = chosen or by_key[key][0]
        records.append(CaseRecord(key, status="no_row", reason=f"no row with this {attr} in the labels file", series=series))
    for _, found in sorted(unkeyed.items()):
        why = f"{len(found)} series without {attr}, so no row can match them"
        records.append(CaseRecord("", status="no_row", reason=why, source=found[0].source))
    for folder, scan in sorted(failed.items()):
        if not (match == "folder" and folder in table.rows):
            records.append(
                CaseRecord(folder if match == "folder" else "", status="failed", reason=scan.error or "", source=scan.path)
            )
    return records


def _plan(records: list[CaseRecord], out: Path, stack_key: str) -> tuple[list[CaseRecord], int]:
    """Give each chosen case its store row: the row of its done marker when it is already built with the
    same series and stack settings (status ok, skipped), else the lowest free row; returns the cases to
    build and the number skipped."""
    done = read_done(out)
    by_id = {rec.get("id"): (idx, rec) for idx, rec in sorted(done.items())}
    used = set(done)
    todo, skipped, free = [], 0, 0
    for rec in records:
        if rec.status != "pending" or rec.series is None:
            continue
        hit = by_id.get(rec.id)
        if hit and hit[1].get("series_uid") == rec.series.series_uid and hit[1].get("stack") == stack_key:
            rec.status, rec.index = "ok", hit[0]
            skipped += 1
            continue
        if hit:  # built from another series: its row is rebuilt (marker removed first)
            rec.index = hit[0]
        else:
            while free in used:
                free += 1
            rec.index = free
            used.add(free)
        todo.append(rec)
    return todo, skipped


def _split_warnings(records: Sequence[CaseRecord], split_of: dict[str, str], fractions: Sequence[float]) -> list[str]:
    """Empty splits, and patients (PatientID) whose cases landed in several splits."""
    empty = [name for name, f in zip(SPLITS, fractions) if f > 0 and name not in split_of.values()]
    out = [f"the {name} split is empty: too few patients per label for --split" for name in empty]
    splits: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.series is not None and r.split and r.series.patient_id:
            splits[r.series.patient_id].add(r.split)
    return out + [
        f"PatientID {pid!r} has cases in {', '.join(sorted(s))}: pass --patient-column so a patient's rows share a split"
        for pid, s in sorted(splits.items())
        if len(s) > 1
    ]


def _scan(pool: Workers, folders: list[Path], skip_unreadable: bool, progress: ProgressFn | None) -> list[FolderScan]:
    """Scan the top-level folders in the workers; a folder whose worker died is a failed scan."""

    def died(args: tuple[Any, ...]) -> FolderScan:
        return FolderScan(Path(args[0]).name, args[0], error=DIED)

    scans = []
    for k, (_, scan) in enumerate(pool.map(scan_folder, [(str(f), skip_unreadable) for f in folders], died), start=1):
        scans.append(scan)
        if progress:
            progress("find studies", k, len(folders))
    return sorted(scans, key=lambda s: s.folder)


def _build(
    pool: Workers,
    todo: list[CaseRecord],
    store: CohortStore,
    stack: Any,
    stack_key: str,
    skip_unreadable: bool,
    skipped: int,
    progress: ProgressFn | None,
) -> None:
    """Build ``todo`` in the workers; the parent writes each case's row, then its done marker."""
    by_index: dict[int, tuple[CaseRecord, FoundSeries]] = {}
    tasks = []
    for r in todo:
        assert r.index is not None and r.series is not None  # _plan gives both to every case it returns
        by_index[r.index] = (r, r.series)
        tasks.append((CaseTask(r.index, r.series.source, r.series.series_uid, stack, skip_unreadable),))
    total = skipped + len(todo)
    if progress:
        progress("build cases", skipped, total)
    for k, (args, res) in enumerate(pool.map(build_case, tasks, died_case), start=1):
        index = args[0].index
        rec, series = by_index[index]
        if res.error is not None or res.image is None or res.slice_indices is None:
            rec.status, rec.reason, rec.index = "failed", res.error or "the stack transform gave no image", None
        else:
            clear_done(store.path.parent, index)  # a marker of an earlier series must not outlive its row
            store.write(index, res.image, res.lung_mask, res.slice_indices)
            mark_done(store.path.parent, index, {"id": rec.id, "series_uid": series.series_uid, "stack": stack_key})
            rec.status = "ok"
            if res.warnings:
                rec.reason = "; ".join([*res.warnings, rec.reason] if rec.reason else res.warnings)
        if progress:
            progress("build cases", skipped + k, total)


def _write_cases(path: Path, records: Sequence[CaseRecord]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CASES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in records)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def build_cohort(
    studies: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    id_column: str,
    label_column: str = "label",
    match: str = "patient-id",
    patient_column: str | None = None,
    rule: SelectionRule | None = None,
    config: str | os.PathLike[str] = "configs/ct_prognosis.yaml",
    seed: int = 0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    workers: int = 1,
    skip_unreadable: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> CohortResult:
    """Build (or complete) a cohort folder from DICOM studies and an outcomes CSV.

    Parameters
    ----------
    studies : path
        Folder of studies; each top-level folder is searched recursively for DICOM series.
    labels : path
        CSV with a header; ``id_column`` is matched against the images, ``label_column`` holds 0/1.
    out : path
        Cohort folder: new, empty, or one built before with the same stack settings (then only what
        is missing is built).
    id_column, label_column, patient_column : str
        Columns of the CSV (see :func:`pipelines.cohort_labels.read_labels`).
    match : {"patient-id", "study-uid", "accession", "folder"}
        What the ID is compared with: PatientID, StudyInstanceUID, AccessionNumber, or the name of the
        top-level folder holding the series.
    rule : SelectionRule, optional
        Which series of a case is built (default: CT, >= 8 slices, any thickness and description).
    config : path
        CT prognosis config; its ``stack`` section makes the ``(C, S, S)`` stacks.
    seed, split : int, (float, float, float)
        Seed and (train, validation, test) fractions of the stratified patient-level split.
    workers : int
        Processes that read and transform (1: in this process).
    skip_unreadable : bool
        Leave out unreadable files of a series (noted in the case's reason) instead of failing it.
    overwrite : bool
        Start the folder anew (store, markers, cases.csv) instead of completing it.
    progress : ProgressFn, optional
        Called as ``progress("find studies" | "build cases", done, total)``.

    Returns
    -------
    CohortResult

    Raises
    ------
    ValueError
        A bad argument, labels file, config or output folder; the message names it.
    """
    from medxai.training.ct import load_ct_config, stack_config

    t0 = time.time()
    studies, labels, out = Path(studies), Path(labels), Path(out)
    if match not in MATCH_KINDS:
        raise ValueError(f"--match must be one of {', '.join(MATCH_KINDS)}, got {match!r}.")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}.")
    if not studies.is_dir():
        raise NotADirectoryError(f"--studies '{studies}' is not a folder; pass the folder that holds the studies.")
    fractions = check_fractions(split)
    rule = rule or SelectionRule()
    stack = stack_config(load_ct_config(config))
    stack_dict = asdict(stack)
    stack_key = hashlib.sha256(json.dumps(stack_dict, sort_keys=True).encode()).hexdigest()[:16]
    table = read_labels(labels, id_column, label_column, patient_column)
    if not table.rows:
        raise ValueError(f"Labels file '{labels}' has no usable row: {'; '.join(p.reason for p in table.problems[:5])}.")
    split_of = assign_splits(table.rows, fractions, seed)
    prepare_cohort_folder(out, studies, stack_dict, overwrite, check_only=True)  # fail before the scan, not after
    folders, loose = top_folders(studies)
    warnings = [f"{len(loose)} DICOM file(s) lie directly in '{studies}' and are not read; put each study in a folder"]
    warnings = warnings if loose else []
    with Workers(workers) as pool:
        scans = _scan(pool, folders, skip_unreadable, progress)
        if not any(s.series for s in scans) and not any(s.error for s in scans):
            raise ValueError(f"--studies '{studies}' holds no DICOM image series in its {len(folders)} folder(s).")
        prepare_cohort_folder(out, studies, stack_dict, overwrite)
        settings: dict[str, Any] = {
            "format": "medxai-cohort", "format_version": COHORT_FORMAT, "state": "building",
            "studies": str(studies.resolve()), "labels": str(labels.resolve()), "labels_sha256": file_sha256(labels),
            "id_column": id_column, "label_column": label_column, "patient_column": patient_column, "match": match,
            "selection": rule.to_dict(), "config": str(Path(config).resolve()), "stack": stack_dict, "stack_key": stack_key,
            "seed": seed, "split": dict(zip(SPLITS, fractions)), "skip_unreadable": skip_unreadable,
        }  # fmt: skip
        write_json(out / "cohort.json", settings)
        store = CohortStore.open(out, "a", channels=len(stack.fractions), size=int(stack.size))
        records = _match(table, split_of, scans, rule, match)
        todo, skipped = _plan(records, out, stack_key)
        _build(pool, todo, store, stack, stack_key, skip_unreadable, skipped, progress)
    warnings += _split_warnings(records, split_of, fractions)
    _write_cases(out / "cases.csv", records)
    built = sum(r.status == "ok" for r in todo)
    result = CohortResult(out, tuple(records), built, skipped, tuple(store.array("image").shape), tuple(warnings))
    from .provenance import package_versions

    settings.update(
        state="complete", store={"path": STORE_NAME, "format": "zarr v2", "arrays": store.shapes()},
        counts=result.counts(), splits=result.splits(), warnings=warnings, seconds=time.time() - t0,
        versions=package_versions(), updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )  # fmt: skip
    write_json(out / "cohort.json", settings)
    return result


def read_cases(cohort: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of ``cohort/cases.csv`` as dicts of strings (`CASES_COLUMNS`)."""
    path = Path(cohort) / "cases.csv"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist; build the cohort with medxai cohort build first.")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
