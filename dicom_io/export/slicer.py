"""3D Slicer bundle: the CT, heatmap(s) and counterfactual volume(s) as NRRD (LPS, one grid), a colour
table, a manifest and ``load_in_slicer.py`` that shows the heatmap as a coloured overlay on the CT."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from atomicfs import atomic_dir, atomic_path

from ..naming import safe_filename
from ..types import Volume
from ..volume_files import write_nrrd
from .overlay import WINDOWS, colormap_lut

__all__ = ["write_slicer_bundle", "write_color_table", "check_same_grid", "LOAD_SCRIPT"]

logger = logging.getLogger(__name__)


def check_same_grid(ref: Volume, other: Volume, name: str, atol_mm: float = 1e-3) -> None:
    """Raise ValueError unless ``other`` lies on ``ref``'s grid (shape, spacing, origin, direction)."""
    problems = []
    if other.shape != ref.shape:
        problems.append(f"shape {other.shape} != {ref.shape}")
    if not np.allclose(other.spacing, ref.spacing, atol=atol_mm):
        problems.append(f"spacing {other.spacing} != {ref.spacing}")
    if not np.allclose(other.origin, ref.origin, atol=max(atol_mm, 1e-3 * max(ref.spacing))):
        problems.append(f"origin {other.origin} != {ref.origin}")
    if not np.allclose(other.direction, ref.direction, atol=1e-4):
        problems.append(f"direction {other.direction.tolist()} != {ref.direction.tolist()}")
    if problems:
        raise ValueError(
            f"{name} is not on the CT grid: {'; '.join(problems)}. Resample it onto the source CT first "
            "(e.g. SimpleITK.Resample with the CT as reference image)."
        )


def _as_volume(ref: Volume, v: Volume | np.ndarray, name: str) -> Volume:
    if isinstance(v, Volume):
        check_same_grid(ref, v, name)
        return v
    arr = np.asarray(v, dtype=np.float32)
    if arr.shape != ref.shape:
        raise ValueError(f"{name} has shape {arr.shape}; it must be (z, y, x) = {ref.shape}, the CT's shape.")
    return ref.replace(array=arr, source=None, warnings=(), notes=())


def write_color_table(path: str | os.PathLike[str], colormap: str = "inferno", name: str = "medxai") -> Path:
    """Write a 256-entry 3D Slicer colour table (``.ctbl``/``.txt``: ``index name R G B A`` lines)."""
    lut = colormap_lut(colormap)
    lines = [f"# medxai colour table ({colormap}), 256 entries", "# index name R G B A"]
    for i, (r, g, b) in enumerate(lut):
        alpha = 0 if i == 0 else 255
        lines.append(f"{i} {name}_{i:03d} {r} {g} {b} {alpha}")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="ascii")
    return Path(path)


#: The loader script written into every bundle (reads manifest.json next to it).
LOAD_SCRIPT = '''"""Load a medxai explanation bundle into 3D Slicer.

Run:  Slicer --python-script load_in_slicer.py
or in Slicer's Python console:
      exec(open(r"/path/to/bundle/load_in_slicer.py").read(), {"__file__": r"/path/to/bundle/load_in_slicer.py"})
"""
import json
import os

import slicer

try:
    HERE = os.path.dirname(os.path.abspath(__file__))
except NameError:  # pasted into the console
    HERE = os.getcwd()

with open(os.path.join(HERE, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)

ct = slicer.util.loadVolume(os.path.join(HERE, manifest["ct"]), {"name": "CT"})
ct_display = ct.GetDisplayNode()
ct_display.SetAutoWindowLevel(False)
ct_display.SetWindowLevel(manifest["window"][1], manifest["window"][0])

colors = slicer.util.loadColorTable(os.path.join(HERE, manifest["color_table"]))
loaded = []
for item in manifest["heatmaps"]:
    node = slicer.util.loadVolume(os.path.join(HERE, item["file"]), {"name": item["name"]})
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colors.GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(item["min"], item["max"])
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(item["threshold"])
    display.SetUpperThreshold(item["max"])
    loaded.append(node)
for item in manifest["counterfactuals"]:
    node = slicer.util.loadVolume(os.path.join(HERE, item["file"]), {"name": item["name"]})
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(manifest["window"][1], manifest["window"][0])

if loaded:
    slicer.util.setSliceViewerLayers(
        background=ct, foreground=loaded[0], foregroundOpacity=manifest["opacity"], fit=True
    )
print("medxai bundle loaded: CT, %d heatmap(s), %d counterfactual(s)" % (len(loaded), len(manifest["counterfactuals"])))
'''


def write_slicer_bundle(
    ct: Volume,
    out_dir: str | os.PathLike[str],
    *,
    heatmaps: Mapping[str, Volume | np.ndarray],
    counterfactuals: Mapping[str, Volume | np.ndarray] | None = None,
    colormap: str = "inferno",
    opacity: float = 0.5,
    threshold_fraction: float = 0.05,
    window: str | tuple[float, float] = "lung",
    info: Mapping[str, object] | None = None,
) -> Path:
    """Write a folder that 3D Slicer opens with the heatmap as a coloured overlay on the CT.

    Parameters
    ----------
    ct : Volume
        The source CT, (z, y, x) HU; its geometry is the bundle's grid.
    out_dir : path
        The bundle folder; built under a temporary name and renamed when complete (replaces an old one).
    heatmaps : mapping of name -> Volume or np.ndarray
        Heatmaps on the CT grid (arrays (z, y, x) take the CT's geometry; volumes are checked).
    counterfactuals : mapping of name -> Volume or np.ndarray, optional
        Counterfactual CT-like volumes on the CT grid.
    colormap : str
        matplotlib colour map for the colour table.
    opacity : float
        Foreground (heatmap) opacity in the slice views.
    threshold_fraction : float
        Heatmap values below this fraction of the range are hidden.
    window : str or (centre, width)
        CT display window.
    info : mapping, optional
        Extra provenance stored in manifest.json (method, target, scores).

    Returns
    -------
    Path
        The bundle folder: ``ct.nrrd``, ``heatmap_<name>.nrrd``, ``counterfactual_<name>.nrrd``,
        ``medxai_colors.ctbl``, ``manifest.json``, ``load_in_slicer.py``.
    """
    if not heatmaps:
        raise ValueError("heatmaps is empty; give at least one heatmap (name -> array on the CT grid).")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1]; got {opacity}.")
    win = WINDOWS[window] if isinstance(window, str) else tuple(float(v) for v in window)
    hm = {n: _as_volume(ct, v, f"heatmap {n!r}") for n, v in heatmaps.items()}
    cf = {n: _as_volume(ct, v, f"counterfactual {n!r}") for n, v in (counterfactuals or {}).items()}
    manifest: dict[str, Any] = {
        "format": "medxai-slicer-bundle/1",
        "space": "LPS",
        "ct": "ct.nrrd",
        "color_table": "medxai_colors.ctbl",
        "window": list(win),
        "opacity": opacity,
        "heatmaps": [],
        "counterfactuals": [],
        "info": dict(info or {}),
        "notice": "Research use only, not for diagnosis.",
    }
    with atomic_dir(out_dir) as tmp:
        write_nrrd(ct, tmp / "ct.nrrd")
        used: set[str] = set()
        for name, vol in hm.items():
            fname = _unique(f"heatmap_{safe_filename(name)}.nrrd", used)
            write_nrrd(vol, tmp / fname)
            lo, hi = float(np.min(vol.array)), float(np.max(vol.array))
            hi = hi if hi > lo else lo + 1.0
            manifest["heatmaps"].append(
                {"name": f"heatmap {name}", "file": fname, "min": lo, "max": hi, "threshold": lo + threshold_fraction * (hi - lo)}
            )
        for name, vol in cf.items():
            fname = _unique(f"counterfactual_{safe_filename(name)}.nrrd", used)
            write_nrrd(vol, tmp / fname)
            manifest["counterfactuals"].append({"name": f"counterfactual {name}", "file": fname})
        write_color_table(tmp / "medxai_colors.ctbl", colormap)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        (tmp / "load_in_slicer.py").write_text(LOAD_SCRIPT, encoding="utf-8")
    logger.info("wrote Slicer bundle %s", out_dir)
    return Path(out_dir)


def _unique(name: str, used: set[str]) -> str:
    stem, dot, ext = name.partition(".")
    out, i = name, 1
    while out in used:
        i += 1
        out = f"{stem}_{i}{dot}{ext}"
    used.add(out)
    return out
