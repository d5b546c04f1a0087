"""The demo job: the README's first command. It grows with the project; today it reads a real CT
series shipped with pydicom, writes it for 3D Slicer, and builds the four-slice stack the
prognosis explainers consume."""

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
    return {"source": str(src), "summary": summarize(volume), "written": written}
