"""The demo job: the README's first command. It grows with the project; today it reads a real CT
series shipped with pydicom and writes it for 3D Slicer, then writes a phantom chest CT study as a
DICOM series (with its planted fibrosis mask), reads it back like a user's data and builds the
four-slice lung stack the prognosis explainers consume."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["run_demo", "demo_ct_source"]

logger = logging.getLogger(__name__)


def demo_ct_source() -> Path:
    """A real CT series installed with pydicom (5 slices of a cardiac CT, 'SmartScore')."""
    from pydicom.data import get_testdata_file

    small = get_testdata_file("CT_small.dcm")
    if small is None:
        raise FileNotFoundError("pydicom's test files are not installed; reinstall pydicom.")
    return Path(os.path.dirname(small)) / "dicomdirtests" / "98892001" / "CT5N"


def run_demo(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the demo into ``out``; returns a dict of what was written and the input summary."""
    from dicom_io import write_nrrd, write_nifti
    from pipelines.ingest import ingest, summarize

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = demo_ct_source()
    volume, _ = ingest(src, None)
    written = {
        "ct_nifti": str(write_nifti(volume, out_dir / "ct.nii.gz")),
        "ct_nrrd": str(write_nrrd(volume, out_dir / "ct.nrrd")),
    }
    written.update(_phantom_stack(out_dir))
    return {"source": str(src), "summary": summarize(volume), "written": written}


def _phantom_stack(out_dir: Path) -> dict[str, str]:
    """Phantom CT study as DICOM -> read back -> (4, 64, 64) stack; a PNG strip with the biomarker in red."""
    import numpy as np

    from dicom_io import read_nifti, read_series, write_photo
    from medxai.transforms import CTStackConfig, CTStackTransform
    from pipelines.phantom import write_ct_cohort

    cohort = write_ct_cohort(out_dir / "phantom_ct", 1, seed=3)
    case = next(p for p in sorted(cohort.iterdir()) if p.is_dir())
    vol = read_series(case / "dicom")
    mask = read_nifti(case / "masks" / "biomarker.nii.gz").array
    tf = CTStackTransform(CTStackConfig(size=64), label_keys=("biomarker",))
    d = tf(vol.array, vol.spacing, vol.origin, vol.direction, labels={"biomarker": mask})
    stack, bio = np.asarray(d["image"]), np.asarray(d["biomarker"]) > 0.5
    rgb = np.repeat(np.concatenate(list(stack), axis=1)[..., None], 3, axis=2)
    rgb[np.concatenate(list(bio), axis=1)] = (rgb[np.concatenate(list(bio), axis=1)] * 0.5 + [0.5, 0, 0])
    strip = write_photo((np.clip(rgb, 0, 1) * 255).astype(np.uint8), out_dir / "phantom_stack.png")
    logger.info("phantom stack slices %s", list(d["slice_indices"]))
    return {"phantom_dicom": str(case / "dicom"), "phantom_stack_png": str(strip)}
