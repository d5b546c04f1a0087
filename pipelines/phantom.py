"""The phantom job: generate CT or fundus cohorts with known answers and write them as a user's data
would arrive (DICOM series / photographs), with ground-truth masks and a label table."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atomicfs import atomic_dir
from dicom_io import StudyInfo, Volume, safe_filename, write_ct_series, write_nifti, write_photo_dicom
from dicom_io.photo import write_photo

__all__ = ["write_ct_cohort", "write_fundus_cohort", "ct_case_volume"]

logger = logging.getLogger(__name__)


def ct_case_volume(case: object, array: np.ndarray | None = None) -> Volume:
    """The phantom case's grid as a Volume (identity direction: z runs superior), holding ``array``
    (default: the HU image)."""
    arr = case.hu if array is None else array  # type: ignore[attr-defined]
    return Volume(np.asarray(arr, dtype=np.float32), case.spacing, case.origin)  # type: ignore[attr-defined]


def _study(prefix: str, case: object, seed: int, modality_desc: str) -> StudyInfo:
    cid = case.case_id  # type: ignore[attr-defined]
    return StudyInfo(
        patient_name=f"Phantom^{cid}",
        patient_id=f"{prefix}-{cid}",
        study_description=f"medxai {modality_desc} phantom (seed {seed})",
        series_description=f"{modality_desc} phantom",
        study_date="20260101",
        study_time="120000",
        accession_number=safe_filename(cid, max_len=16),
        uid_seed=f"medxai-phantom-{prefix}-{seed}-{cid}",
    )


def write_ct_cohort(
    out: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    config: str = "test",
    shortcut: float = 0.0,
    compression: str = "none",
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``n`` CT phantom cases under ``out``.

    Layout: ``out/<case_id>/dicom/*.dcm`` (a CT Image series), ``out/<case_id>/masks/<name>.nii.gz``
    (uint8 masks on the CT grid: biomarker, distractor, marker, lungs) and ``out/labels.csv``.
    Each case folder appears only when complete.
    """
    from medxai.phantoms import ct_config, iter_ct_cohort, label_rows, write_label_rows

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = ct_config(config)
    rows: list[dict[str, object]] = []
    for case in iter_ct_cohort(n, seed, cfg, shortcut=shortcut):
        with atomic_dir(root / safe_filename(case.case_id)) as tmp:
            write_ct_series(ct_case_volume(case), tmp / "dicom", _study("CT", case, seed, "CT"), compression=compression)
            for name, mask in case.masks.items():
                write_nifti(ct_case_volume(case, mask), tmp / "masks" / f"{name}.nii.gz", dtype=np.uint8)
        rows.extend(label_rows([case]))
        if progress:
            progress(1)
    write_label_rows(rows, root / "labels.csv")
    return root


def write_fundus_cohort(
    out: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    config: str = "test",
    shortcut: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``n`` fundus phantom cases: ``out/<case_id>/image.png`` and ``image.dcm`` (the same RGB
    photograph), ``masks/<name>.png`` (0/255), and ``out/labels.csv``."""
    from medxai.phantoms import fundus_config, iter_fundus_cohort, label_rows, write_label_rows

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = fundus_config(config)
    rows: list[dict[str, object]] = []
    for case in iter_fundus_cohort(n, seed, cfg, shortcut=shortcut):
        with atomic_dir(root / safe_filename(case.case_id)) as tmp:
            write_photo(np.ascontiguousarray(case.rgb), tmp / "image.png")
            eye = {"OD": "R", "OS": "L"}.get(str(getattr(case, "eye", "")), None)
            write_photo_dicom(
                np.ascontiguousarray(case.rgb), tmp / "image.dcm", _study("FUNDUS", case, seed, "Fundus"), laterality=eye
            )
            for name, mask in case.masks.items():
                write_photo(np.where(mask, 255, 0).astype(np.uint8), tmp / "masks" / f"{name}.png")
        rows.extend(label_rows([case]))
        if progress:
            progress(1)
    write_label_rows(rows, root / "labels.csv")
    return root
