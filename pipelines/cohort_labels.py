"""The outcomes table of a cohort: reading and checking the labels CSV, and the patient-level split.

Rows are never repaired or guessed: a row without an ID, a duplicated ID or a label other than 0/1 is
set aside with its reason (``medxai cohort build`` lists it in ``cases.csv``). A file that cannot be
used at all (missing, not UTF-8 text, no header, no ID column) is a ``ValueError`` naming the file.

The split is drawn from the valid rows only, per patient, stratified by label and seeded: a patient's
rank inside its label stratum is a hash of (seed, patient), so it depends neither on the order of
the rows nor on which images later fail to build.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SPLITS", "LabelRow", "LabelTable", "RowProblem", "read_labels", "assign_splits", "check_fractions"]

#: The three splits, in the order their fractions are given (``--split TRAIN VALIDATION TEST``).
SPLITS: tuple[str, str, str] = ("train", "validation", "test")
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class LabelRow:
    """One usable row: its ID, binary label, line in the file (header = line 1) and patient group."""

    id: str
    label: int
    line: int
    group: str


@dataclass(frozen=True)
class RowProblem:
    """A row set aside: the ID as written (may be empty), its line, the label text and why."""

    id: str
    line: int
    label: str
    reason: str


@dataclass
class LabelTable:
    """The labels file after checking: usable rows by ID (file order) and the rows set aside."""

    path: Path
    columns: list[str]
    rows: dict[str, LabelRow] = field(default_factory=dict)
    problems: list[RowProblem] = field(default_factory=list)

    def problem_ids(self) -> set[str]:
        """IDs (non-empty) that appear only in rows set aside."""
        return {p.id for p in self.problems if p.id}


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"Labels file '{path}' {what}")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise _bad(path, "does not exist; pass the outcomes table with --labels FILE.csv.")
    if not path.is_file():
        raise _bad(path, "is not a file; pass the outcomes table (a CSV file) with --labels.")
    try:
        # utf-8-sig: spreadsheet programs put a byte-order mark before the header
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise _bad(
            path, f"is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as 'CSV UTF-8'."
        ) from e
    except OSError as e:
        raise _bad(path, f"cannot be read ({e.strerror or e}).") from e


def _delimiter(header_line: str) -> str:
    # Excel writes ';' in locales with a decimal comma, some exports use tabs: the header decides
    counts = {d: header_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _binary(text: str) -> int | None:
    """0 or 1 from '0', '1', '0.0', '1.0' (what pandas writes when a column had gaps); else None."""
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v in (0.0, 1.0) else None


def read_labels(
    path: str | os.PathLike[str], id_column: str, label_column: str = "label", patient_column: str | None = None
) -> LabelTable:
    """Read and check the labels CSV.

    Parameters
    ----------
    path : path
        CSV with a header row (delimiter ``,``, ``;`` or tab, told from the header; UTF-8).
    id_column : str
        Column holding the value matched against the images (``--id-column``).
    label_column : str
        Column holding the binary outcome: 0 or 1.
    patient_column : str, optional
        Column naming the patient when one patient has several rows (one per study): the split keeps
        a patient's rows together. Default: each ID is a patient.

    Returns
    -------
    LabelTable
        Usable rows and the rows set aside (missing ID, duplicate ID, missing or non-binary label,
        missing patient), each with its reason.

    Raises
    ------
    ValueError
        The file cannot be used at all; the message names it and says what to fix.
    """
    p = Path(path)
    text = _read_text(p)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise _bad(p, "is empty or starts with an empty line; its first line must be the header (e.g. 'patient_id,label').")
    try:
        # (first line, fields): a quoted field may span lines, so count from where the last record ended
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(lines[0]), strict=True)
        records, end = [], 0
        for rec in reader:
            records.append((end + 1, rec))
            end = reader.line_num
    except csv.Error as e:
        raise _bad(p, f"is not a valid CSV table ({e}); check its quoting.") from e
    header = [h.strip() for h in records[0][1]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise _bad(p, f"has the column(s) {', '.join(map(repr, dupes))} more than once; give each column one name.")
    wanted = {"--id-column": id_column, "--label-column": label_column}
    if patient_column:
        wanted["--patient-column"] = patient_column
    for option, col in wanted.items():
        if col not in header:
            raise _bad(
                p, f"has no column {col!r} ({option}); its columns are: {', '.join(map(repr, header))}. Pass {option} NAME."
            )
    if len(records) < 2:
        raise _bad(p, "has a header but no rows.")
    i_id, i_label = header.index(id_column), header.index(label_column)
    i_patient = header.index(patient_column) if patient_column else None
    table = LabelTable(p, header)
    seen: dict[str, list[int]] = defaultdict(list)
    parsed: list[tuple[int, str, str, str]] = []  # (line, id, label text, group)
    for line, rec in records[1:]:
        if not any(v.strip() for v in rec):
            continue  # a blank line (often the last one) is not a row

        def cell(i: int | None, rec: Sequence[str] = rec) -> str:
            return rec[i].strip() if i is not None and i < len(rec) else ""

        rid, lab = cell(i_id), cell(i_label)
        group = cell(i_patient) if i_patient is not None else rid
        parsed.append((line, rid, lab, group))
        if rid:
            seen[rid].append(line)
    for line, rid, lab, group in parsed:
        label = _binary(lab)
        if not rid:
            reason = f"missing ID: line {line} has no value in column {id_column!r}"
        elif len(seen[rid]) > 1:
            reason = f"duplicate ID: lines {', '.join(map(str, seen[rid]))} all carry {rid!r}; keep one row per ID"
        elif not lab:
            reason = f"missing label: line {line} has no value in column {label_column!r}"
        elif label is None:
            reason = f"label {lab!r} on line {line} is not 0 or 1"
        elif not group:
            reason = f"missing patient: line {line} has no value in column {patient_column!r}"
        else:
            table.rows[rid] = LabelRow(rid, label, line, group)
            continue
        table.problems.append(RowProblem(rid, line, lab, reason))
    return table


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """The (train, validation, test) fractions, each in [0, 1], summing to 1; else ``ValueError``."""
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(not math.isfinite(x) or x < 0 or x > 1 for x in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(
            f"--split must be three fractions in [0, 1] (train, validation, test) that sum to 1, got {list(fractions)}; "
            "e.g. --split 0.7 0.15 0.15."
        )
    return f  # type: ignore[return-value]


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` by largest remainder (ties: the earlier split), so the counts always add up to ``n``."""
    raw = [n * f for f in fractions]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: n - sum(out)]:
        out[i] += 1
    return out


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def assign_splits(rows: Mapping[str, LabelRow], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Patient-level split of the usable rows, stratified by label and seeded.

    Patients (``LabelRow.group``) are grouped by label (a patient whose rows disagree forms a stratum
    of its own); inside a stratum they are ordered by a hash of (seed, patient) and cut by the
    fractions (largest remainder), so the same rows and seed always give the same split.

    Returns
    -------
    dict
        ID -> ``"train"``, ``"validation"`` or ``"test"``.
    """
    f = check_fractions(fractions)
    by_group: dict[str, set[int]] = defaultdict(set)
    for r in rows.values():
        by_group[r.group].add(r.label)
    strata: dict[str, list[str]] = defaultdict(list)
    for g, labels in by_group.items():
        strata[str(next(iter(labels))) if len(labels) == 1 else "mixed"].append(g)
    split_of: dict[str, str] = {}
    for groups in strata.values():
        groups.sort(key=lambda g: (_rank(seed, g), g))
        start = 0
        for name, k in zip(SPLITS, _counts(len(groups), f)):
            for g in groups[start : start + k]:
                split_of[g] = name
            start += k
    return {rid: split_of[r.group] for rid, r in rows.items()}
