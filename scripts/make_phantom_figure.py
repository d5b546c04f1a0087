"""Draw the phantom overview figures: docs/phantom_ct.png and docs/phantom_fundus.png.

Usage::

    python scripts/make_phantom_figure.py [--out docs] [--size benchmark|test]

CT: one row per case; axial slices in a lung window (W 1500 / L -600) at a basal and a mid level,
a mediastinal window (W 400 / L 40) at the mid level, and a coronal reformat, with the biomarker
(fibrosis, red), distractor (emphysema, cyan) and marker (pacemaker, yellow) outlined.
Fundus: scikit-image's real photograph ``skimage.data.retina()`` next to phantoms of grades 0-4,
plain (top) and with lesion outlines (bottom).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medxai.phantoms import (
    CT_BENCHMARK,
    CT_TEST,
    FUNDUS_BENCHMARK,
    FUNDUS_TEST,
    make_ct_case,
    make_fundus_case,
)

logger = logging.getLogger("make_phantom_figure")

CT_COLOURS = {"biomarker": "#ff3030", "distractor": "#00e5ff", "marker": "#ffd400"}
FUNDUS_COLOURS = {
    "microaneurysms": "#00a0ff",
    "haemorrhages": "#00ff80",
    "exudates": "#ff00ff",
    "cotton_wool": "#ffffff",
    "marker": "#ffd400",
}


def _save(fig: plt.Figure, path: Path, dpi: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, facecolor="black")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    plt.close(fig)
    logger.info("wrote %s", path)


def _outline(ax: plt.Axes, mask: np.ndarray, colour: str, extent=None) -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8, extent=extent)


def ct_figure(out: Path, benchmark: bool) -> Path:
    cfg = CT_BENCHMARK if benchmark else CT_TEST
    specs = [  # (seed, extent override, marker)
        (2, 0.0, False),
        (1, 0.12, True),
        (3, 0.28, False),
    ]
    cases = []
    for seed, extent, marker in specs:
        c = make_ct_case(seed, cfg, extent=extent, marker=marker)
        cases.append(c)
    fig, axes = plt.subplots(len(cases), 4, figsize=(16, 4.6 * len(cases)), facecolor="black")
    for row, c in enumerate(cases):
        z0, z1 = c.info["lung_z_first"], c.info["lung_z_last"]
        z_basal = int(round(z0 + 0.18 * (z1 - z0)))
        z_mid = int(round(z0 + 0.55 * (z1 - z0)))
        panels = [
            (c.hu[z_basal], (-1350, 150), f"axial basal (z={z_basal}) lung window", z_basal),
            (c.hu[z_mid], (-1350, 150), f"axial mid (z={z_mid}) lung window", z_mid),
            (c.hu[z_mid], (-160, 240), "axial mid, mediastinal window", None),
        ]
        for col, (img, (vmin, vmax), title, z) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="bilinear")
            if z is not None:
                for name, colour in CT_COLOURS.items():
                    _outline(ax, c.masks[name][z], colour)
            ax.set_title(title, color="white", fontsize=9)
        # coronal reformat through the row with the most biomarker (or lung) voxels
        y = int(np.argmax(c.masks["lungs"].sum(axis=(0, 2))))
        sx, _, sz = c.spacing
        nz, _, nx = c.hu.shape
        ext = (0, nx * sx, 0, nz * sz)
        ax = axes[row, 3]
        ax.imshow(c.hu[::-1, y, :], cmap="gray", vmin=-1350, vmax=150, extent=ext, interpolation="bilinear")
        for name, colour in CT_COLOURS.items():
            _outline(ax, c.masks[name][::-1, y, :], colour, extent=(0, nx * sx, nz * sz, 0))
        ax.set_title(f"coronal (y={y}), superior up", color="white", fontsize=9)
        axes[row, 0].text(
            0.02,
            0.02,
            f"seed {c.seed}\nextent {c.extent:.3f}  risk {c.risk:.2f}  label {c.label}\n"
            f"pacemaker {int(c.has_marker)}  emphysema {int(c.info['emphysema'])}",
            transform=axes[row, 0].transAxes,
            color="white",
            fontsize=8,
            va="bottom",
        )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([0], [0], color=v, lw=2) for v in CT_COLOURS.values()]
    fig.legend(
        handles,
        ["biomarker: fibrosis", "distractor: emphysema", "marker: pacemaker"],
        loc="lower center",
        ncol=3,
        facecolor="black",
        labelcolor="white",
        frameon=False,
    )
    fig.suptitle(f"CT phantom {c.hu.shape} (z, y, x); image left = patient right, anterior up", color="white")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    path = out / "phantom_ct.png"
    _save(fig, path)
    return path


def fundus_figure(out: Path, benchmark: bool) -> Path:
    from skimage.data import retina

    cfg = FUNDUS_BENCHMARK if benchmark else FUNDUS_TEST
    specs = [(40, 0, False), (41, 1, False), (42, 2, True), (43, 3, False), (44, 4, False)]
    cases = [make_fundus_case(s, cfg, grade=g, marker=m) for s, g, m in specs]
    fig, axes = plt.subplots(2, 6, figsize=(21, 7.6), facecolor="black")
    axes[0, 0].imshow(retina())
    axes[0, 0].set_title("real: skimage.data.retina()", color="white", fontsize=9)
    axes[1, 0].axis("off")
    for i, c in enumerate(cases, start=1):
        for row in (0, 1):
            ax = axes[row, i]
            ax.imshow(c.rgb, interpolation="bilinear")
            if row == 1:
                for name, colour in FUNDUS_COLOURS.items():
                    _outline(ax, c.masks[name], colour)
        n = c.counts
        axes[0, i].set_title(f"phantom {c.eye}, grade {c.grade}, label {c.label}", color="white", fontsize=9)
        axes[1, i].set_title(
            f"MA {n['microaneurysms']} H {n['haemorrhages']} EX {n['exudate_clusters']} CWS {n['cotton_wool']}",
            color="white",
            fontsize=9,
        )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([0], [0], color=v, lw=2) for v in FUNDUS_COLOURS.values()]
    fig.legend(
        handles,
        ["microaneurysms", "haemorrhages", "hard exudates", "cotton-wool spots", "marker (stamp)"],
        loc="lower left",
        bbox_to_anchor=(0.01, 0.1),
        ncol=1,
        facecolor="black",
        labelcolor="white",
        frameon=False,
    )
    fig.suptitle(f"Fundus phantom {cfg.size}x{cfg.size}: plain (top), lesion outlines (bottom)", color="white")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = out / "phantom_fundus.png"
    _save(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--size", choices=("benchmark", "test"), default="benchmark")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bench = args.size == "benchmark"
    ct_figure(args.out, bench)
    fundus_figure(args.out, bench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
