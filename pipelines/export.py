"""The export job: put an explanation (heatmap, optional counterfactual) where users look.

From a source CT series and a heatmap on its grid it writes one folder per exported series and method::

    OUT/<patient>_<h>/<study>_<h>/<series>_<method>_<h>/
        SC_overlay/          Secondary Capture overlay series (in the source study)
        SC_counterfactual/   the same for the counterfactual (when given)
        PM.dcm               Parametric Map of the heatmap
        SEG.dcm              binary Segmentation of the thresholded heatmap (unless disabled)
        slicer/              3D Slicer bundle (unless disabled)
        export.json          what was exported, with paths relative to this folder

Each ``<…>_<h>`` is a readable, sanitised label followed by 8 hex digits of the SHA-256 of what
identifies it (PatientID with its issuer; StudyInstanceUID; SeriesInstanceUID and method), so two
patients, studies or series whose labels sanitise alike (``12345/1`` and ``12345 1``, ``Müller`` and
``Möller``) never share a folder. The whole series folder is written under a hidden ``.…partial``
name and renamed when complete: an interrupted export leaves nothing that looks finished. An existing
export is replaced only with ``overwrite=True`` (``--overwrite``). The output may not lie inside the
source folder. Fundus exports (`export_photo_explanation`) use the same naming.

`medxai export` is for heatmaps made elsewhere. The explain job (`pipelines.explain`) writes the same
objects into its own case folders in the same run through `write_ct_objects` / `write_photo_objects`
(no folder naming, not atomic: the caller's `atomic_dir` is) and names its folders with
`ct_export_folder` / `photo_export_folder`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NoReturn

import numpy as np
from pydicom.dataset import Dataset

from atomicfs import atomic_dir
from dicom_io import Photo, Volume, read_series, safe_filename
from dicom_io.export import (
    Legend,
    check_render_options,
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
from .paths import check_output_outside_input

__all__ = [
    "ExportResult",
    "check_dicom_source",
    "ct_export_folder",
    "export_explanation",
    "export_folder",
    "export_photo_explanation",
    "photo_export_folder",
    "select_slices",
    "load_on_grid",
    "write_ct_objects",
    "write_photo_objects",
]

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What an export wrote (paths), for reports and for pushing to a PACS.

    ``out_dir`` is the export's own folder ``OUT/<patient>/<study>/<series>_<method>_<h>/``.
    """

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

    def moved(self, old: Path, new: Path) -> ExportResult:
        """The same result with every path under ``old`` moved under ``new``."""

        def mv(v: object) -> object:
            if isinstance(v, Path):
                return new / v.relative_to(old) if v.is_relative_to(old) else v
            if isinstance(v, list):
                return [mv(x) for x in v]
            return v

        return ExportResult(**{f.name: mv(getattr(self, f.name)) for f in fields(self)})


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


def _tagged(label: object, key: str, default: str, max_len: int = 40) -> str:
    """``<sanitised label>_<8 hex of sha256(key)>``: readable, and distinct for distinct keys."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe_filename(label, default=default, max_len=max_len)}_{digest}"


def export_folder(
    out: str | os.PathLike[str],
    patient_study: Mapping[str, object],
    study_uid: str | None,
    series_label: str,
    series_key: str,
) -> Path:
    """The folder of one export: ``out/<patient>_<h>/<study>_<h>/<series_label>_<h>``.

    Parameters
    ----------
    out : path
        Output root.
    patient_study : mapping
        The source's patient/study attributes (``SourceRef.patient_study``): ``PatientID``,
        ``IssuerOfPatientID``, ``StudyDate``, ``StudyID``.
    study_uid : str or None
        StudyInstanceUID of the source (part of the study folder's hash).
    series_label : str
        Readable part of the series folder name (sanitised here).
    series_key : str
        What identifies the export within the study (e.g. SeriesInstanceUID and method); hashed.

    Returns
    -------
    Path
        The folder; names never start with ``.`` or ``-``, and differ whenever the raw identifying
        values differ (up to an 8-hex-digit hash collision).
    """
    pid = str(patient_study.get("PatientID") or "")
    issuer = str(patient_study.get("IssuerOfPatientID") or "")
    patient = _tagged(pid or "unknown-patient", f"{pid}\x00{issuer}" if issuer else pid, "unknown-patient")
    date, sid = str(patient_study.get("StudyDate") or ""), str(patient_study.get("StudyID") or "")
    study = _tagged("_".join(x for x in (date, sid) if x) or "study", study_uid or "", "study")
    return Path(out) / patient / study / _tagged(series_label, series_key, "series", max_len=64)


def _refuse_existing(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not overwrite:
        raise ValueError(
            f"an export of this series with this method already exists in '{folder}'; medxai does not replace "
            f"it silently. Pass --overwrite (overwrite=True) to replace it, or choose another output folder."
        )


def export_explanation(
    source: str | os.PathLike[str] | Volume,
    heatmap: str | os.PathLike[str] | Volume | np.ndarray,
    out: str | os.PathLike[str],
    *,
    method: str = "unknown",
    target: str = "unknown",
    score_before: float | None = None,
    score_after: float | None = None,
    step: str | float | None = None,
    counterfactual: str | os.PathLike[str] | Volume | np.ndarray | None = None,
    series_uid: str | None = None,
    multiframe: bool = False,
    slices: str | Sequence[int] = "nonzero",
    window: str | tuple[float, float] = "lung",
    colormap: str | None = None,
    alpha: float = 0.5,
    overlay_threshold: float = 0.05,
    segmentation: bool = True,
    seg_threshold: float = 0.5,
    slicer: bool = True,
    overwrite: bool = False,
    skip_unreadable: bool = False,
) -> ExportResult:
    """Export one CT explanation as DICOM (SC overlays, Parametric Map, SEG) and a Slicer bundle.

    Everything goes into one folder ``out/<patient>_<h>/<study>_<h>/<series>_<method>_<h>/`` (see the
    module docstring) that appears complete or not at all.

    Parameters
    ----------
    source : path or Volume
        The source CT series folder (read with `read_series`) or a Volume read from DICOM (its
        ``source.files`` are read for the headers; they are never modified).
    heatmap : path, Volume or np.ndarray
        (z, y, x) attribution map on the CT grid (NIfTI/NRRD files are checked against the grid).
    out : path
        Output root; must not be the source folder or lie inside it.
    method, target, score_before, score_after
        Burned into the overlays' legend and stored in descriptions and ``export.json``; the scores are
        the model's probabilities of the target (in [0, 1]) for the query and the counterfactual.
    step : str or float, optional
        Counterfactual step (signed guidance strength) shown in the legend as ``Step: a = +1.6``.
    counterfactual : path, Volume or np.ndarray, optional
        CT-like counterfactual (z, y, x) in HU on the same grid; exported as a second SC series and into
        the Slicer bundle.
    series_uid : str, optional
        Series to read when the source folder holds several.
    multiframe : bool
        One Multi-frame True Color SC object per series instead of one file per slice.
    slices : 'all', 'nonzero' or list of int
        Slices rendered as SC.
    window : str or (float, float)
        CT window of the overlays.
    colormap : str, optional
        Colour map of the heatmap in the overlays and the Slicer bundle; by default each writer's own.
    alpha : float
        Maximum opacity of the heatmap in the overlays, in [0, 1].
    overlay_threshold : float
        Fraction of the map's maximum below which the overlays leave the image untinted, in [0, 1].
    segmentation : bool
        Also write a binary SEG of ``heatmap >= seg_threshold * max``.
    slicer : bool
        Also write the 3D Slicer bundle.
    overwrite : bool
        Replace an existing export of the same series and method (only once the new one is complete).
    skip_unreadable : bool
        Reading ``source`` from a folder: leave out files that cannot be read (``--skip-unreadable``);
        the warning listing them is kept in ``export.json`` ``reader_warnings``.

    Returns
    -------
    ExportResult
        Paths at their final locations.

    Raises
    ------
    ValueError
        Bad inputs, an output inside the source folder, or an existing export without ``overwrite``.
    StepError
        A writing step failed (naming the step); nothing is left in ``out`` for this export.
    """
    check_render_options(alpha, overlay_threshold)
    Legend(method, target, score_before, score_after, step=step)  # scores must be probabilities: refuse before any work
    if not isinstance(source, Volume):
        check_output_outside_input(out, source, option="output folder (-o/--out)")
    try:
        ct = source if isinstance(source, Volume) else read_series(source, series_uid, skip_unreadable=skip_unreadable)
    except Exception as e:
        raise StepError("export: read source", f"cannot read the source CT '{source}': {e}") from e
    check_dicom_source(ct, out)
    heat = _as_array(heatmap, ct, "heatmap")
    cf = _as_array(counterfactual, ct, "counterfactual") if counterfactual is not None else None
    folder = ct_export_folder(out, ct, method)
    _refuse_existing(folder, overwrite)  # before any work; checked again when the new folder is complete
    try:
        # one hidden folder for the whole export, renamed onto `folder` only when every part is written
        with atomic_dir(folder, replace=overwrite) as tmp:
            result = write_ct_objects(
                ct,
                heat,
                tmp,
                method=method,
                target=target,
                score_before=score_before,
                score_after=score_after,
                step=step,
                counterfactual=cf,
                multiframe=multiframe,
                slices=slices,
                window=window,
                colormap=colormap,
                alpha=alpha,
                overlay_threshold=overlay_threshold,
                segmentation=segmentation,
                seg_threshold=seg_threshold,
                slicer_dir=tmp / "slicer" if slicer else None,
            )
            result.summary = tmp / "export.json"
            summary = {
                "method": method,
                "target": target,
                "score_before": score_before,
                "score_after": score_after,
                "step": step,
                "source_series": ct.source.series_instance_uid,  # type: ignore[union-attr]
                "study": ct.source.study_instance_uid,  # type: ignore[union-attr]
                "slices": select_slices(heat, slices),
                "reader_warnings": list(ct.warnings),
                "reader_notes": list(ct.notes),
                "files": {k: _rel(v, tmp) for k, v in asdict(result).items() if k != "out_dir"},
            }
            # plain write: the whole folder is renamed into place only when complete
            result.summary.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    except FileExistsError as e:  # another run wrote the same export meanwhile
        _raise_exists(e, folder)
    logger.info("export written to %s", folder)
    return result.moved(tmp, folder)


def check_dicom_source(ct: Volume, out: str | os.PathLike[str]) -> None:
    """Refuse a volume that did not come from DICOM files (nothing to join), an output inside the source
    files' folders, or slices without a DICOM source (interpolated over a gap)."""
    if ct.source is None or not ct.source.files:
        raise ValueError("source must be a DICOM series (a Volume with SourceRef.files); NIfTI sources have no study to join.")
    src_dirs = sorted({str(Path(f).parent) for f in ct.source.files})
    check_output_outside_input(out, src_dirs, option="output folder (-o/--out)")
    if any(f is None for f in ct.source.frames):
        raise ValueError("the source volume has interpolated slices without a DICOM source; export needs every slice's source.")


def ct_export_folder(out: str | os.PathLike[str], ct: Volume, method: str) -> Path:
    """``out/<patient>_<h>/<study>_<h>/<SeriesDescription>_<method>_<h>`` of a CT series read from DICOM
    (a volume from a file: ``unknown-patient_<h>/study_<h>/<file stem>_<method>_<h>``, hashed on the path)."""
    src = ct.source
    if src is None or not src.files:
        raise ValueError("ct_export_folder needs a Volume read from DICOM (SourceRef.files); use export_folder for files.")
    desc = src.series_description or "series"
    return export_folder(
        out, src.patient_study, src.study_instance_uid, f"{desc}_{method}", f"{src.series_instance_uid or ''}\x00{method}"
    )


def write_ct_objects(
    ct: Volume,
    heat: np.ndarray,
    dest: str | os.PathLike[str],
    *,
    method: str,
    target: str,
    score_before: float | None = None,
    score_after: float | None = None,
    step: str | float | None = None,
    counterfactual: np.ndarray | None = None,
    multiframe: bool = False,
    slices: str | Sequence[int] = "nonzero",
    window: str | tuple[float, float] = "lung",
    colormap: str | None = None,
    alpha: float = 0.5,
    overlay_threshold: float = 0.05,
    segmentation: bool = True,
    seg_threshold: float = 0.5,
    slicer_dir: str | os.PathLike[str] | None = None,
    headers: Sequence[Dataset] | None = None,
) -> ExportResult:
    """Write the DICOM objects of one CT explanation into ``dest`` (no folder naming, not atomic: the
    caller writes ``dest`` inside its own `atomic_dir`). See `export_explanation` for the parameters;
    ``heat`` and ``counterfactual`` are (z, y, x) arrays on the CT grid, ``slicer_dir`` (None: no
    bundle) where the 3D Slicer bundle goes, ``headers`` the source headers if already read.

    Writes ``SC_overlay/``, ``SC_counterfactual/`` (with a counterfactual), ``PM.dcm``, ``SEG.dcm``
    (``segmentation``) and the bundle.
    """
    if ct.source is None or not ct.source.files:
        raise ValueError("write_ct_objects needs a Volume read from DICOM (SourceRef.files).")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    heat = np.asarray(heat, dtype=np.float32)
    cf = None if counterfactual is None else np.asarray(counterfactual, dtype=np.float32)
    headers = list(headers) if headers is not None else read_source_headers(ct.source.files)
    multi_source = len(headers) == 1 and ct.shape[0] > 1
    per_slice = [headers[0]] * ct.shape[0] if multi_source else headers
    if len(per_slice) != ct.shape[0]:
        raise ValueError(f"{len(headers)} source files for {ct.shape[0]} slices; cannot map slices to sources.")
    idx = select_slices(heat, slices)
    lo, hi = float(heat.min()), float(heat.max())
    normal = np.cross(ct.direction[:, 0], ct.direction[:, 1])
    locs = [float(np.dot(ct.affine_lps @ np.array([0.0, 0.0, k, 1.0]), np.r_[normal, 0.0])) for k in range(ct.shape[0])]
    info = {"method": method, "target": target, "score_before": score_before, "score_after": score_after, "step": step}
    cmap = {} if colormap is None else {"colormap": colormap}
    src = ct.source

    def sc_series(folder: Path, images: np.ndarray, kind: str, extra: tuple[str, ...], number_offset: int) -> list[Path]:
        if not idx:
            logger.warning("heatmap is zero everywhere; no %s slices exported (use slices='all')", kind)
            return []
        leg = Legend(method, target, score_before, score_after, extra, step=step)
        frames = np.stack(
            [
                render_overlay(
                    images[k],
                    heat[k],
                    Legend(method, target, score_before, score_after, (*extra, f"Slice {k + 1}/{ct.shape[0]}"), step=step),
                    window=window,
                    alpha=alpha,
                    threshold=overlay_threshold,
                    **cmap,
                    vmin=lo,
                    vmax=hi,
                )
                for k in idx
            ]
        )
        base = per_slice[0].get("SeriesNumber")
        number = number_offset + (int(base) if base not in (None, "") else 0)
        write_secondary_capture(
            frames,
            [per_slice[k] for k in idx],
            folder,
            source_frames=[src.frames[k] for k in idx] if src.frames else None,
            series_description=f"medxai {kind} {method} {src.series_description or ''}".strip(),
            series_number=number,
            derivation_description=f"medxai {kind}: {leg.describe()}",
            multiframe=multiframe,
            slice_locations=[locs[k] for k in idx],
            frame_labels=[f"slice {k + 1}" for k in idx],
        )
        return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")

    result = ExportResult(out_dir=out)
    try:
        result.overlay_files = sc_series(out / "SC_overlay", ct.array, "overlay", (), 1000)
        if cf is not None:
            result.counterfactual_files = sc_series(
                out / "SC_counterfactual", cf, "counterfactual", ("Counterfactual image (synthetic)",), 1100
            )
    except Exception as e:
        raise StepError("export: secondary capture", str(e)) from e
    pm_sources = headers if multi_source else per_slice
    try:
        result.parametric_map = write_parametric_map(
            heat,
            pm_sources,
            out / "PM.dcm",
            description=f"{method}: {target}",
            series_description=f"medxai heatmap {method}"[:64],
        )
    except Exception as e:
        raise StepError("export: parametric map", str(e)) from e
    if segmentation:
        try:
            result.segmentation = write_segmentation(
                threshold_heatmap(heat, seg_threshold),
                pm_sources,
                out / "SEG.dcm",
                method=method,
                description=f"{method}: {target} >= {seg_threshold:g} x max",
            )
        except Exception as e:
            raise StepError("export: segmentation", str(e)) from e
    if slicer_dir is not None:
        try:
            result.slicer_bundle = write_slicer_bundle(
                ct.replace(source=None),
                Path(slicer_dir),
                heatmaps={method: heat},
                counterfactuals={"counterfactual": cf} if cf is not None else None,
                window=window,
                info=info,
                **cmap,
            )
        except Exception as e:
            raise StepError("export: slicer bundle", str(e)) from e
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
    colormap: str | None = None,
    alpha: float = 0.5,
    overlay_threshold: float = 0.05,
    overwrite: bool = False,
) -> list[Path]:
    """Export a fundus explanation as one SC: in the photo's study when it came from DICOM, otherwise in a
    new study with a clearly marked unlinked patient (see `write_photo_secondary_capture`).

    The SC goes into ``out/<patient>_<h>/<study>_<h>/<photo>_<method>_<h>/`` (named like
    `export_explanation`'s folders; the photo is identified by its SOPInstanceUID, or for an image file by
    its resolved path, or for an in-memory photo by its pixels), written whole or not at all; an existing
    export is replaced only with ``overwrite=True``.

    Returns
    -------
    list of Path
        The SC file(s) at their final location.
    """
    check_render_options(alpha, overlay_threshold)
    legend = Legend(method, target, score_before, score_after)
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != photo.shape:
        raise ValueError(f"heatmap shape {h.shape} must equal the photo's (H, W) {photo.shape}.")
    src = photo.source
    files = list(src.files) if src is not None else []
    if files:
        check_output_outside_input(out, files, option="output folder")
    folder = photo_export_folder(out, photo, method)
    _refuse_existing(folder, overwrite)
    try:
        with atomic_dir(folder, replace=overwrite) as tmp:
            names = [
                p.name
                for p in write_photo_objects(
                    photo,
                    h,
                    tmp,
                    method=method,
                    target=target,
                    score_before=score_before,
                    score_after=score_after,
                    colormap=colormap,
                    alpha=alpha,
                    overlay_threshold=overlay_threshold,
                )
            ]
    except FileExistsError as e:
        _raise_exists(e, folder)
    logger.debug("photo export %s: %s", folder, legend.describe())
    return [folder / n for n in names]


def _photo_header(photo: Photo) -> Dataset | None:
    src = photo.source
    if src is not None and src.frames and src.files:
        return read_source_headers(list(src.files)[:1])[0]
    return None


def photo_export_folder(out: str | os.PathLike[str], photo: Photo, method: str) -> Path:
    """``out/<patient>_<h>/<study>_<h>/fundus_<photo>_<method>_<h>``: a DICOM photo is identified by its
    SOPInstanceUID, a photo file by its resolved path (patient ``MEDXAI-UNLINKED``), an in-memory photo
    by its pixels."""
    src = photo.source
    files = list(src.files) if src is not None else []
    if src is not None and src.frames and files:
        ps: Mapping[str, object] = src.patient_study
        study_uid = src.study_instance_uid
        label = src.series_description or Path(files[0]).stem
        key = ";".join(f.sop_instance_uid for f in src.frames if f is not None)
    else:
        # an image file: write_photo_secondary_capture makes a new study per export
        ps = {"PatientID": "MEDXAI-UNLINKED"}
        key = str(Path(files[0]).resolve()) if files else hashlib.sha256(photo.array.tobytes()).hexdigest()
        study_uid = key
        label = Path(files[0]).stem if files else "photo"
    return export_folder(out, ps, study_uid, f"fundus_{label}_{method}", f"{key}\x00{method}")


def write_photo_objects(
    photo: Photo,
    heatmap: np.ndarray,
    dest: str | os.PathLike[str],
    *,
    method: str,
    target: str,
    score_before: float | None = None,
    score_after: float | None = None,
    colormap: str | None = None,
    alpha: float = 0.5,
    overlay_threshold: float = 0.05,
) -> list[Path]:
    """Write the SC overlay of one photo explanation into ``dest`` (not atomic: the caller writes ``dest``
    inside its own `atomic_dir`); see `export_photo_explanation`. Returns the SC file(s)."""
    check_render_options(alpha, overlay_threshold)
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != photo.shape:
        raise ValueError(f"heatmap shape {h.shape} must equal the photo's (H, W) {photo.shape}.")
    legend = Legend(method, target, score_before, score_after)
    cmap = {} if colormap is None else {"colormap": colormap}  # None: the renderer's default for photos
    frame = render_photo_overlay(photo.array, h, legend, alpha=alpha, threshold=overlay_threshold, **cmap)
    header = _photo_header(photo)
    files = list(photo.source.files) if photo.source is not None else []
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    write_photo_secondary_capture(
        frame,
        out,
        source=header,
        source_file_name=files[0] if files else None,
        derivation_description=f"medxai fundus overlay: {legend.describe()}",
    )
    return sorted(out.glob("*.dcm"))


def _raise_exists(e: FileExistsError, folder: Path) -> NoReturn:
    if e.filename != str(folder):
        raise e
    raise ValueError(
        f"an export appeared in '{folder}' while this one was being written (another run?); it was kept. "
        f"Pass --overwrite (overwrite=True) to replace it."
    ) from e
