"""Cohort-level helpers shared by the CT and fundus phantoms: seeds, label tables."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from atomicfs import atomic_path

from ._common import case_seed
from .ct import CTCase
from .fundus import FundusCase

__all__ = ["case_seed", "cohort_seeds", "label_rows", "write_labels_csv", "write_label_rows", "LABEL_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of the label table, in order.
LABEL_COLUMNS: tuple[str, ...] = ("case_id", "seed", "label", "extent", "risk", "grade", "has_marker")

Case = CTCase | FundusCase


def cohort_seeds(n: int, seed: int) -> list[int]:
    """Seeds of cases ``0..n-1`` of the cohort with seed ``seed`` (``case_seed(seed, i)``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}; pass e.g. n=60")
    return [case_seed(seed, i) for i in range(n)]


def label_rows(cases: Iterable[Case]) -> list[dict[str, object]]:
    """One dict per case with the :data:`LABEL_COLUMNS`.

    ``risk`` is the label model's probability for CT cases and empty for fundus cases; ``grade``
    is the DR grade for fundus cases and empty for CT cases.
    """
    rows: list[dict[str, object]] = []
    for c in cases:
        if isinstance(c, CTCase):
            risk: object = f"{c.risk:.6f}"
            grade: object = ""
        elif isinstance(c, FundusCase):
            risk, grade = "", c.grade
        else:
            raise TypeError(
                f"cases must hold CTCase or FundusCase objects, got {type(c).__name__}; "
                "pass the output of make_ct_cohort or make_fundus_cohort"
            )
        rows.append(
            {
                "case_id": c.case_id,
                "seed": c.seed,
                "label": int(c.label),
                "extent": f"{c.extent:.6f}",
                "risk": risk,
                "grade": grade,
                "has_marker": int(c.has_marker),
            }
        )
    return rows


def write_labels_csv(cases: Iterable[Case], path: str | os.PathLike) -> Path:
    """Write the label table of ``cases`` to ``path`` (CSV with a header of :data:`LABEL_COLUMNS`).

    The file is written under a temporary name in the same folder and renamed when complete.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return write_label_rows(label_rows(cases), path)


def write_label_rows(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    """Write rows from :func:`label_rows` (e.g. gathered while streaming a cohort) as the label CSV."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"path must be a file path, got the folder {str(path)!r}; pass e.g. {str(path / 'labels.csv')!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LABEL_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d label rows to %s", len(rows), path)
    return path
