"""The result of every explainer: heatmaps, counterfactuals, scores and provenance.

An :class:`Explanation` knows nothing about DICOM. It serialises to a folder of NIfTI (any
dimensionality, identity affine -- the pipelines put the geometry back) or PNG (2D heatmaps) files
plus ``explanation.json``; every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from atomicfs import atomic_path

__all__ = ["Explanation", "ArrayLike"]

logger = logging.getLogger(__name__)

ArrayLike = Any  # np.ndarray or torch.Tensor; torch is not imported here to keep this module light

_JSON_NAME = "explanation.json"
_FORMATS = ("nifti", "png")


def _to_numpy(value: ArrayLike) -> np.ndarray:
    """Return ``value`` as a numpy array (detached and on the CPU for torch tensors)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor without importing torch
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays inside ``value`` to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        return _to_numpy(value).tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _save_array(array: np.ndarray, path_stem: Path, fmt: str) -> str:
    """Save one array as NIfTI (float32, identity affine) or PNG; return the file name written."""
    if fmt == "png":
        from PIL import Image

        arr = np.asarray(array, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
        img = Image.fromarray(np.round(scaled * 255).astype(np.uint8))
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        name = path_stem.name + ".png"
        _atomic_write_bytes(path_stem.parent / name, buf.getvalue())
        return name
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine=np.eye(4))
    name = path_stem.name + ".nii.gz"
    final = path_stem.parent / name
    with atomic_path(final) as tmp:
        nib.save(img, str(tmp))
    return name


def _load_array(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path)).astype(np.float32) / 255.0
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What an explainer says about one batch of inputs.

    Parameters
    ----------
    method : str
        Name of the explainer, e.g. ``"gradcam"``.
    target : str
        Description of the explained quantity (``repr`` of the target callable).
    heatmaps : np.ndarray or torch.Tensor
        Attribution maps of shape ``(B, T, *spatial)``: one map per input and per target, on the
        spatial grid of the input ``(H, W)`` or ``(D, H, W)``.
    counterfactuals : dict of str to array, optional
        Counterfactual images, each ``(B, C, *spatial)`` like the input.
    scores : dict of str to array
        Black-box outputs, e.g. ``"query"`` -> ``(B, K)`` probabilities; counterfactual methods add
        one entry per counterfactual.
    parameters : dict
        The explainer's settings (JSON-serialisable).
    seed : int or None
        Seed of the explainer's own random generator (``None`` for deterministic methods).
    extra : dict
        Anything else (timings, method-specific diagnostics; JSON-serialisable or arrays).
    """

    method: str
    target: str
    heatmaps: ArrayLike
    counterfactuals: dict[str, ArrayLike] | None = None
    scores: dict[str, ArrayLike] = dataclasses.field(default_factory=dict)
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty string, got {self.method!r}; pass the explainer's name.")
        shape = getattr(self.heatmaps, "shape", None)
        if shape is None or len(shape) < 4:
            raise ValueError(
                f"heatmaps must have shape (B, T, *spatial) with 2 or 3 spatial axes, got shape {shape}; "
                "add the batch and target axes."
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the heatmaps, ``(H, W)`` or ``(D, H, W)``."""
        return tuple(int(s) for s in self.heatmaps.shape[2:])

    def heatmaps_numpy(self) -> np.ndarray:
        """Return the heatmaps as a float32 numpy array ``(B, T, *spatial)``."""
        return _to_numpy(self.heatmaps).astype(np.float32, copy=False)

    def save(self, folder: str | os.PathLike[str], fmt: str = "auto") -> Path:
        """Write the explanation into ``folder``.

        Each heatmap ``(b, t)`` becomes ``heatmap_b{b}_t{t}`` and each counterfactual channel
        ``cf_{name}_b{b}_c{c}``; scores, parameters and provenance go to ``explanation.json``.

        Parameters
        ----------
        folder : path
            Output folder; created if missing. Existing files of the same names are replaced.
        fmt : {"auto", "nifti", "png"}
            ``"auto"`` uses NIfTI (``.nii.gz``, identity affine) for 3D grids and PNG for 2D.
            PNG stores min-max scaled 8-bit values, NIfTI keeps float32 values.

        Returns
        -------
        Path
            The folder.
        """
        ndim = len(self.spatial_shape)
        if fmt == "auto":
            fmt = "png" if ndim == 2 else "nifti"
        if fmt not in _FORMATS:
            raise ValueError(f"fmt must be one of 'auto', 'nifti', 'png', got {fmt!r}.")
        if fmt == "png" and ndim != 2:
            raise ValueError(f"fmt='png' needs 2D heatmaps, got spatial shape {self.spatial_shape}; use fmt='nifti'.")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {"heatmaps": [], "counterfactuals": {}}
        heat = self.heatmaps_numpy()
        for b in range(heat.shape[0]):
            files["heatmaps"].append([_save_array(heat[b, t], out / f"heatmap_b{b}_t{t}", fmt) for t in range(heat.shape[1])])
        for name, arr in (self.counterfactuals or {}).items():
            cf = _to_numpy(arr)
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))
            files["counterfactuals"][name] = [
                [_save_array(cf[b, c], out / f"cf_{safe}_b{b}_c{c}", fmt) for c in range(cf.shape[1])]
                for b in range(cf.shape[0])
            ]
        meta = {
            "format_version": 1,
            "method": self.method,
            "target": self.target,
            "seed": self.seed,
            "heatmap_shape": list(heat.shape),
            "heatmap_range": [float(np.nanmin(heat)), float(np.nanmax(heat))] if heat.size else None,
            "file_format": fmt,
            "files": files,
            "scores": _jsonable(self.scores),
            "parameters": _jsonable(self.parameters),
            "extra": _jsonable(self.extra),
        }
        _atomic_write_bytes(out / _JSON_NAME, json.dumps(meta, indent=2, allow_nan=True).encode("utf-8"))
        logger.info("saved %s explanation to %s", self.method, out)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "Explanation":
        """Read an explanation written by :meth:`save`.

        PNG heatmaps come back min-max scaled to [0, 1] unless the stored range allows rescaling
        (the range of all heatmaps together is restored); NIfTI heatmaps come back exactly.
        """
        src = Path(folder)
        meta_path = src / _JSON_NAME
        if not meta_path.is_file():
            raise ValueError(f"folder {str(src)!r} holds no {_JSON_NAME}; pass a folder written by Explanation.save().")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        heat = np.stack(
            [np.stack([_load_array(src / name) for name in row]) for row in meta["files"]["heatmaps"]]
        ).astype(np.float32)
        if meta.get("file_format") == "png" and meta.get("heatmap_range"):
            # PNGs were scaled per image; this restores values only approximately.
            logger.debug("PNG heatmaps are 8-bit and per-image scaled; values are approximate")
        cfs = None
        if meta["files"].get("counterfactuals"):
            cfs = {
                name: np.stack([np.stack([_load_array(src / n) for n in row]) for row in rows]).astype(np.float32)
                for name, rows in meta["files"]["counterfactuals"].items()
            }
        scores = {k: np.asarray(v) for k, v in meta.get("scores", {}).items()}
        return cls(
            method=meta["method"],
            target=meta["target"],
            heatmaps=heat,
            counterfactuals=cfs,
            scores=scores,
            parameters=meta.get("parameters", {}),
            seed=meta.get("seed"),
            extra=meta.get("extra", {}),
        )
