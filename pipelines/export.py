"""The export job: put an explanation (heatmap, optional counterfactual) where users look.

From a source CT series and a heatmap on its grid it writes, under ``OUT/<patient>/<study>/``:
a Secondary Capture overlay series (in the source study), the same for the counterfactual, a Parametric
Map, a binary Segmentation of the thresholded heatmap, a 3D Slicer bundle and ``export.json``.
The explain command calls `export_explanation` with its in-memory heatmaps.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from dicom_io import Photo, Volume, read_series, safe_filename
from dicom_io.atomic import atomic_dir, atomic_path
from dicom_io.export import (
    Legend,
    read_source_headers,
    render_overlay,
    render_photo_overlay,
    threshold_heatmap,
    write_parametric_map,
    write_photo_secondary_capture,
    write_secondary_capture,
    write_segmentation,
    write_slicer_bundle,
)
from dicom_io.export.slicer import check_same_grid

from .errors import StepError

__all__ = ["ExportResult", "export_explanation", "export_photo_explanation", "select_slices", "load_on_grid"]

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What an export wrote (paths), for reports and for pushing to a PACS."""

    out_dir: Path
    overlay_files: list[Path] = field(default_factory=list)
    counterfactual_files: list[Path] = field(default_factory=list)
    parametric_map: Path | None = None
    segmentation: Path | None = None
    slicer_bundle: Path | None = None
    summary: Path | None = None

    def dicom_files(self) -> list[Path]:
        """All DICOM objects written (for `dicom_io.pacs.push`)."""
        out = [*self.overlay_files, *self.counterfactual_files]
        out += [p for p in (self.parametric_map, self.segmentation) if p is not None]
        return out


def select_slices(heatmap: np.ndarray, mode: str | Sequence[int] = "nonzero", rel: float = 1e-3) -> list[int]:
    """Slice indices to render: ``"all"``, ``"nonzero"`` (slices where |heatmap| exceeds ``rel`` of its
    maximum) or an explicit list of indices."""
    nz = heatmap.shape[0]
    if isinstance(mode, str):
        if mode == "all":
            return list(range(nz))
        if mode == "nonzero":
            a = np.abs(np.nan_to_num(heatmap))
            top = float(a.max())
            if top == 0:
                return []
            return [k for k in range(nz) if float(a[k].max()) > rel * top]
        raise ValueError(f"slices must be 'all', 'nonzero' or a list of indices; got {mode!r}.")
    idx = [int(k) for k in mode]
    bad = [k for k in idx if not 0 <= k < nz]
    if bad:
        raise ValueError(f"slices {bad} are outside 0..{nz - 1}.")
    return idx


def load_on_grid(path: str | os.PathLike[str], ct: Volume, what: str) -> Volume:
    """Read a NIfTI/NRRD volume and check it lies on the CT's grid."""
    from dicom_io import read_image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file '{p}' does not exist.")
    vol = read_image(p)
    if not isinstance(vol, Volume):
        raise ValueError(f"{what} '{p}' is a 2D image; give a .nii.gz or .nrrd volume on the CT grid.")
    check_same_grid(ct, vol, f"{what} '{p.name}'")
    return vol


def _study_folder(out: Path, ps: dict[str, object], study_uid: str | None) -> Path:
    patient = safe_filename(ps.get("PatientID") or "unknown-patient", default="unknown-patient")
    date = str(ps.get("StudyDate") or "")
    study = safe_filename(f"{date}_{ps.get('StudyID') or ''}" if date else (study_uid or "study"), default="study")
    return out / patient / study


def export_explanation(
    source: str | os.PathLike[str] | Volume,
    heatmap: str | os.PathLike[str] | Volume | np.ndarray,
    out: str | os.PathLike[str],
    *,
    method: str = "unknown",
    target: str = "unknown",
    score_before: float | None = None,
    score_after: float | None = None,
    counterfactual: str | os.PathLike[str] | Volume | np.ndarray | None = None,
    series_uid: str | None = None,
    multiframe: bool = False,
    slices: str | Sequence[int] = "nonzero",
    window: str | tuple[float, float] = "lung",
    colormap: str = "inferno",
    alpha: float = 0.5,
    segmentation: bool = True,
    seg_threshold: float = 0.5,
    slicer: bool = True,
) -> ExportResult:
    """Export one CT explanation as DICOM (SC overlays, Parametric Map, SEG) and a Slicer bundle.

    Parameters
    ----------
    source : path or Volume
        The source CT series folder (read with `read_series`) or a Volume read from DICOM (its
        ``source.files`` are read for the headers; they are never modified).
    heatmap : path, Volume or np.ndarray
        (z, y, x) attribution map on the CT grid (NIfTI/NRRD files are checked against the grid).
    out : path
        Output root; results go to ``out/<PatientID>/<StudyDate_StudyID>/`` (names sanitised).
    method, target, score_before, score_after
        Burned into the overlays' legend and stored in descriptions and ``export.json``.
    counterfactual : path, Volume or np.ndarray, optional
        CT-like counterfactual (z, y, x) in HU on the same grid; exported as a second SC series and into
        the Slicer bundle.
    series_uid : str, optional
        Series to read when the source folder holds several.
    multiframe : bool
        One Multi-frame True Color SC object per series instead of one file per slice.
    slices : 'all', 'nonzero' or list of int
        Slices rendered as SC.
    window, colormap, alpha
        Rendering of the overlays.
    segmentation : bool
        Also write a binary SEG of ``heatmap >= seg_threshold * max``.
    slicer : bool
        Also write the 3D Slicer bundle.

    Returns
    -------
    ExportResult
    """
    try:
        ct = source if isinstance(source, Volume) else read_series(source, series_uid)
    except Exception as e:
        raise StepError("export: read source", f"cannot read the source CT '{source}': {e}") from e
    if ct.source is None or not ct.source.files:
        raise ValueError("source must be a DICOM series (a Volume with SourceRef.files); NIfTI sources have no study to join.")
    if any(f is None for f in ct.source.frames):
        raise ValueError("the source volume has interpolated slices without a DICOM source; export needs every slice's source.")
    heat = _as_array(heatmap, ct, "heatmap")
    cf = _as_array(counterfactual, ct, "counterfactual") if counterfactual is not None else None
    headers = read_source_headers(ct.source.files)
    multi_source = len(headers) == 1 and ct.shape[0] > 1
    per_slice = [headers[0]] * ct.shape[0] if multi_source else headers
    if len(per_slice) != ct.shape[0]:
        raise ValueError(f"{len(headers)} source files for {ct.shape[0]} slices; cannot map slices to sources.")
    ps = dict(ct.source.patient_study)
    folder = _study_folder(Path(out), ps, ct.source.study_instance_uid)
    desc = safe_filename(ct.source.series_description or ct.source.series_instance_uid or "series", default="series")
    method_tag = safe_filename(method, default="method")
    result = ExportResult(out_dir=folder)
    idx = select_slices(heat, slices)
    lo, hi = float(heat.min()), float(heat.max())
    normal = np.cross(ct.direction[:, 0], ct.direction[:, 1])
    locs = [float(np.dot(ct.affine_lps @ np.array([0.0, 0.0, k, 1.0]), np.r_[normal, 0.0])) for k in range(ct.shape[0])]

    def sc_series(images: np.ndarray, kind: str, extra: tuple[str, ...], number_offset: int) -> list[Path]:
        if not idx:
            logger.warning("heatmap is zero everywhere; no %s slices exported (use slices='all')", kind)
            return []
        leg = Legend(method, target, score_before, score_after, extra)
        frames = np.stack([
            render_overlay(images[k], heat[k], Legend(method, target, score_before, score_after,
                                                       (*extra, f"Slice {k + 1}/{ct.shape[0]}")),
                           window=window, colormap=colormap, alpha=alpha, vmin=lo, vmax=hi)
            for k in idx
        ])
        base = per_slice[0].get("SeriesNumber")
        number = number_offset + (int(base) if base not in (None, "") else 0)
        dest = folder / f"SC_{kind}_{method_tag}_{desc}"
        with atomic_dir(dest) as tmp:
            write_secondary_capture(
                frames, [per_slice[k] for k in idx], tmp,
                source_frames=[ct.source.frames[k] for k in idx] if ct.source.frames else None,
                series_description=f"medxai {kind} {method} {ct.source.series_description or ''}".strip(),
                series_number=number,
                derivation_description=f"medxai {kind}: {leg.describe()}",
                multiframe=multiframe,
                slice_locations=[locs[k] for k in idx],
                frame_labels=[f"slice {k + 1}" for k in idx],
            )
        return sorted(p for p in dest.iterdir() if p.suffix == ".dcm")

    try:
        result.overlay_files = sc_series(ct.array, "overlay", (), 1000)
        if cf is not None:
            result.counterfactual_files = sc_series(cf, "counterfactual", ("Counterfactual image (synthetic)",), 1100)
    except Exception as e:
        raise StepError("export: secondary capture", str(e)) from e
    pm_sources = headers if multi_source else per_slice
    try:
        result.parametric_map = write_parametric_map(
            heat, pm_sources, folder / f"PM_{method_tag}_{desc}.dcm",
            description=f"{method}: {target}", series_description=f"medxai heatmap {method}"[:64],
        )
    except Exception as e:
        raise StepError("export: parametric map", str(e)) from e
    if segmentation:
        try:
            result.segmentation = write_segmentation(
                threshold_heatmap(heat, seg_threshold), pm_sources, folder / f"SEG_{method_tag}_{desc}.dcm",
                method=method, description=f"{method}: {target} >= {seg_threshold:g} x max",
            )
        except Exception as e:
            raise StepError("export: segmentation", str(e)) from e
    info = {"method": method, "target": target, "score_before": score_before, "score_after": score_after}
    if slicer:
        try:
            result.slicer_bundle = write_slicer_bundle(
                ct.replace(source=None), folder / f"slicer_{method_tag}_{desc}",
                heatmaps={method: heat}, counterfactuals={"counterfactual": cf} if cf is not None else None,
                colormap=colormap, window=window, info=info,
            )
        except Exception as e:
            raise StepError("export: slicer bundle", str(e)) from e
    summary = {**info, "source_series": ct.source.series_instance_uid, "study": ct.source.study_instance_uid,
               "slices": idx, "files": {k: _rel(v, folder) for k, v in asdict(result).items() if k != "out_dir"}}
    result.summary = folder / "export.json"
    with atomic_path(result.summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    logger.info("export written to %s", folder)
    return result


def _rel(v: object, root: Path) -> object:
    if isinstance(v, Path):
        return str(v.relative_to(root)) if v.is_relative_to(root) else str(v)
    if isinstance(v, list):
        return [_rel(x, root) for x in v]
    return v


def _as_array(x: str | os.PathLike[str] | Volume | np.ndarray, ct: Volume, what: str) -> np.ndarray:
    if isinstance(x, Volume):
        check_same_grid(ct, x, what)
        arr = x.array
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        arr = load_on_grid(x, ct, what).array
    if arr.shape != ct.shape:
        raise ValueError(f"{what} has shape {arr.shape}; it must match the CT (z, y, x) = {ct.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} holds NaN or infinite values; replace them before export.")
    return np.asarray(arr, dtype=np.float32)


def export_photo_explanation(
    photo: Photo,
    heatmap: np.ndarray,
    out: str | os.PathLike[str],
    *,
    method: str = "unknown",
    target: str = "unknown",
    score_before: float | None = None,
    score_after: float | None = None,
    colormap: str = "inferno",
    alpha: float = 0.5,
) -> list[Path]:
    """Export a fundus explanation as one SC: in the photo's study when it came from DICOM, otherwise in a
    new study with a clearly marked unlinked patient (see `write_photo_secondary_capture`)."""
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != photo.shape:
        raise ValueError(f"heatmap shape {h.shape} must equal the photo's (H, W) {photo.shape}.")
    legend = Legend(method, target, score_before, score_after)
    frame = render_photo_overlay(photo.array, h, legend, colormap=colormap, alpha=alpha)
    src = photo.source
    header = None
    files = list(src.files) if src is not None else []
    if src is not None and src.frames and files:
        header = read_source_headers(files[:1])[0]
    ps = src.patient_study if src is not None and header is not None else {"PatientID": "MEDXAI-UNLINKED"}
    folder = _study_folder(Path(out), ps, src.study_instance_uid if src is not None else None)
    dest = folder / f"SC_fundus_{safe_filename(method, default='method')}"
    with atomic_dir(dest) as tmp:
        write_photo_secondary_capture(
            frame, tmp, source=header, source_file_name=files[0] if files else None,
            derivation_description=f"medxai fundus overlay: {legend.describe()}",
        )
    return sorted(dest.glob("*.dcm"))
