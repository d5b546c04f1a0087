"""The page and figures of ``medxai cohort report`` (matplotlib, Agg; one self-contained HTML page).

Every path in the page is relative and nothing loads from the network, so the report folder can be
moved, zipped, attached to a manuscript's supplement or opened offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_html"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}tr.sig td{background:#fff8e1}.flag{color:#b00020;font-weight:bold}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}.note{color:#555;font-size:.9em}
"""


#: what each direction compares (figure titles, headings)
_TITLES = {
    "toward": "toward the target: counterfactual - base",
    "away": "away from the target: counterfactual - base",
    "span": "span: counterfactual toward - counterfactual away",
}
#: one colour per direction in every plot
_COLOURS = {"toward": "#c62828", "away": "#1565c0", "span": "#6a1b9a"}


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, format="png")
    return f"figures/{path.name}"


def _maps_figure(m: Any, alpha: float, fractions: Sequence[float], path: Path) -> str:
    from medxai.biomarkers.regions import height_of

    c = m.mean_change.shape[0]
    fig = _figure((2.6 * c + 1.2, 5.4))
    axes = fig.subplots(2, c, squeeze=False)
    sig = np.nan_to_num(m.q, nan=1.0) < alpha
    vals = np.abs(m.mean_change[sig]) if sig.any() else np.abs(m.mean_change).ravel()
    vmax = float(np.percentile(vals, 99)) if vals.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    for i in range(c):
        ax = axes[0, i]
        ax.imshow(m.mean_image[i], cmap="gray", vmin=-1350, vmax=150)
        over = np.where(sig[i], m.mean_change[i], np.nan)
        im = ax.imshow(over, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        f = float(fractions[i]) if i < len(fractions) else float("nan")
        ax.set_title(f"slice {i} ({height_of(f) if 0 <= f <= 1 else '?'}, {f:.2f})", fontsize=8)
        ax.axis("off")
        ax2 = axes[1, i]
        im2 = ax2.imshow(m.share_same_sign[i], cmap="viridis", vmin=0.5, vmax=1.0)
        ax2.axis("off")
    fig.colorbar(im, ax=axes[0, :].tolist(), label=f"mean change, HU (q < {alpha:g})", shrink=0.9)
    fig.colorbar(im2, ax=axes[1, :].tolist(), label="share of patients, same sign", shrink=0.9)
    fig.suptitle(f"{_TITLES[m.direction]}, {m.n} patients", fontsize=10)
    return _save(fig, path)


def _regions_figure(rows: Sequence[Any], path: Path, unit: str) -> str:
    regions = list(dict.fromkeys(r.region for r in rows))
    fig = _figure((7.0, 0.35 * len(regions) + 1.4))
    ax = fig.subplots()
    for k, (direction, colour) in enumerate(_COLOURS.items()):
        sel = {r.region: r for r in rows if r.direction == direction}
        if not sel:
            continue
        ys = [i + 0.22 * (k - 1) for i, reg in enumerate(regions) if reg in sel]
        rs = [sel[reg] for reg in regions if reg in sel]
        x = np.array([r.mean_change for r in rs])
        err = np.array([[r.mean_change - r.ci_low for r in rs], [r.ci_high - r.mean_change for r in rs]])
        err = np.clip(np.nan_to_num(err), 0, None)
        ax.errorbar(x, ys, xerr=err, fmt="o", color=colour, label=direction, capsize=2)
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_yticks(range(len(regions)), regions)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean change in the region, {unit} (95 % bootstrap interval of the median)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _volcano_figure(rows: Sequence[Any], alpha: float, path: Path) -> str:
    fig = _figure((7.0, 4.5))
    ax = fig.subplots()
    for direction, colour in _COLOURS.items():
        rs = [r for r in rows if r.direction == direction and math.isfinite(r.dz) and math.isfinite(r.q)]
        if not rs:
            continue
        ax.scatter([r.dz for r in rs], [-math.log10(max(r.q, 1e-300)) for r in rs], s=14, color=colour, label=direction)
        for r in rs[:5]:
            ax.annotate(f"{r.region}/{r.feature}", (r.dz, -math.log10(max(r.q, 1e-300))), fontsize=7)
    ax.axhline(-math.log10(alpha), color="#888", lw=0.8, ls="--")
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)  # a few huge effects must not squash the rest onto the axis
    ax.set_xlabel("standardised paired change d_z (counterfactual - base; symmetric log scale)")
    ax.set_ylabel("-log10 q (BH)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _forest_figure(rows: Sequence[Any], path: Path, direction: str, top: int = 15) -> str:
    rs = [r for r in rows if r.direction == direction and math.isfinite(r.dz)][:top]
    fig = _figure((7.0, 0.32 * max(len(rs), 1) + 1.4))
    ax = fig.subplots()
    ys = np.arange(len(rs))
    x = np.array([r.dz for r in rs])
    err = np.clip(np.nan_to_num(np.array([[r.dz - r.dz_low for r in rs], [r.dz_high - r.dz for r in rs]])), 0, None)
    ax.errorbar(x, ys, xerr=err, fmt="s", color="#c62828", capsize=2)
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_yticks(ys, [f"{r.rank}. {r.region}/{r.feature}" for r in rs])
    ax.invert_yaxis()
    ax.set_xlabel(f"d_z of the {direction} contrast (95 % bootstrap interval)")
    return _save(fig, path)


def _f(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return "–"
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(rows: Sequence[Any], cols: Sequence[tuple[str, str]], alpha: float) -> str:
    head = "".join(
        f"<th class='l'>{html.escape(t)}</th>" if i < 3 else f"<th>{html.escape(t)}</th>" for i, (_, t) in enumerate(cols)
    )
    body = []
    for r in rows:
        cls = " class='sig'" if getattr(r, "q", 1.0) < alpha else ""
        cells = "".join(
            f"<td class='l'>{_f(getattr(r, k))}</td>" if i < 3 else f"<td>{_f(getattr(r, k))}</td>"
            for i, (k, _) in enumerate(cols)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_READ = """
<h2>How to read this report</h2>
<ul>
<li><b>Base, toward, away.</b> For each patient the method gives the image its steps start from
(the base: DiffExplainer's reconstruction; the query itself for methods without one) and
counterfactuals moved <i>toward</i> the target class and <i>away</i> from it. Every change here is
counterfactual minus base, so what the autoencoder fails to reproduce is not counted as a change.</li>
<li><b>Which counterfactual.</b> By default (<code>--step flip</code>) each patient's counterfactual
toward the target is the smallest step of the sweep at which the black box decides the target, and
the one away from it the smallest step at which it decides otherwise: the least change that makes
the model decide otherwise (<code>--step largest</code> takes the farthest steps). The step used per
patient is in <code>case_values.csv</code> (<code>step/toward</code>, <code>step/away</code>).</li>
<li><b>Span.</b> Where the method moves both ways (DiffExplainer) the <i>span</i> compares the two
counterfactuals directly (toward minus away): the whole move from one decision to the other, as in
DiffExplainer's own difference map. What the generator does to every decoded image alike (a shift of
the body's grey level, say) cancels in it, so the summary, the ranking the shortcut check reads and
the bench use the span; methods with one direction (DVCE) use toward.</li>
<li><b>Population maps.</b> Top row: the mean change in HU over the mean patient, drawn only where
the pixel-wise one-sample t-test survives Benjamini-Hochberg FDR at the level shown; red = the model
wants higher attenuation there, blue = lower. Bottom row: the share of patients whose change has the
mean's sign (0.5 = no agreement, 1 = every patient). The stack grid is normalised to each patient's
lung extent, so a pixel is roughly the same place in every patient.</li>
<li><b>Regions.</b> The six lung zones (upper / middle / lower by the slice's position along the
lungs, core / rind by an equal-area split of the distance to the pleura) and the body outside the
lungs (mediastinum inside the lungs' convex hull, chest wall outside it). Per patient the mean change
in the zone; across patients the median with a bootstrap interval, the Wilcoxon signed-rank test,
BH q-values, and d_z (mean / sd of the change). Rows are ranked by q, then |d_z|.</li>
<li><b>Fundus photographs.</b> Regions are the lesion types found on each patient's own image
(red lesions: dark blobs; bright lesions: bright blobs smaller than the optic disc; vessels: the other
dark pixels; background: the rest of the field of view), the change is in grey levels of the green
channel, and the features count and measure each lesion type in the field of view with thresholds
taken from the base image (docs/cohort.md). Photographs are not aligned across patients, so there
is no population map.</li>
<li><b>Features.</b> HU features of a region measured on the base and on each counterfactual; the
paired change is tested the same way. "Wants more" / "less": significant rows by the sign of the
median change. The volcano plot places every feature by effect (d_z) and certainty (q); the forest
plot shows the top features toward the target with intervals.</li>
<li><b>Outcome association.</b> For significant features, the feature measured on the patients' own
images, AUROC for the outcome (with a bootstrap interval). A top feature the model changes but whose
AUROC is close to 0.5 is a <span class="flag">shortcut candidate</span>: the model uses something
that does not tell the outcome in this cohort.</li>
</ul>
<h2>What this report cannot claim</h2>
<ul>
<li>It shows what <b>the model</b> responds to, not what causes the disease: a counterfactual changes
the model's output, and the regions and features here are those the model consistently wants more or
less of. Associations with the outcome are associations, not causation.</li>
<li>The counterfactuals come from a generative model: a feature the generator cannot draw (e.g. a
thin device) cannot show up here even if the model uses it, and a generator may add what it typically
draws. Compare with the faithfulness figures of <code>medxai bench</code>.</li>
<li>q-values control the false discovery rate within each table, not across reports; the cohort, its
split and the selection of patients limit how far the findings carry.</li>
</ul>
"""


def write_html(folder: Path, analysis: Any, meta: Mapping[str, Any]) -> None:
    """Draw the figures into ``folder/figures`` and write ``folder/report.html``."""
    st = analysis.settings
    alpha = st.alpha
    figs = folder / "figures"
    maps_html = []
    for d, m in analysis.maps.items():
        src = _maps_figure(m, alpha, st.fractions, figs / f"population_{d}.png")
        maps_html.append(f"<h3>{html.escape(_TITLES[d])}</h3><img src='{src}' alt='population map {d}'>")
    regions_src = _regions_figure(analysis.regions, figs / "regions.png", st.change_unit)
    if not maps_html:
        maps_html.append("<p class='note'>No population map: " + html.escape("; ".join(analysis.notes)) + ".</p>")
    volcano_src = _volcano_figure(analysis.features, alpha, figs / "volcano.png")
    primary = analysis.primary
    forest_src = _forest_figure(analysis.features, figs / "forest.png", primary)

    ranked = [r for r in analysis.features if r.direction == primary]
    more = [r for r in ranked if r.wants == "more"][:8]
    less = [r for r in ranked if r.wants == "less"][:8]

    def names(rs: Sequence[Any]) -> str:
        return ", ".join(f"{html.escape(r.region)}/{html.escape(r.feature)} (d_z {r.dz:+.2f}, q {_f(r.q)})" for r in rs) or "none"

    flags = []
    if analysis.shortcut_candidates:
        flags.append(
            "<p class='flag'>Shortcut candidates: " + ", ".join(html.escape(s) for s in analysis.shortcut_candidates)
            + " -- the model changes them, but they do not tell the outcome (AUROC near 0.5).</p>"
        )  # fmt: skip
    if analysis.top_region_outside_lungs:
        flags.append("<p class='flag'>The region the model changes most surely lies outside the lungs.</p>")
    run = meta.get("run", {})
    region_cols = [("rank", "rank"), ("region", "region"), ("direction", "direction"), ("n", "n"),
                   ("mean_change", f"mean {st.change_unit}"), ("median_change", "median"), ("ci_low", "CI low"),
                   ("ci_high", "CI high"), ("dz", "d_z"), ("share_same_sign", "same sign"),
                   ("mean_abs_change", "mean |change|"), ("p", "p"), ("q", "q")]  # fmt: skip
    feature_cols = [("rank", "rank"), ("region", "region"), ("feature", "feature"), ("direction", "direction"),
                    ("unit", "unit"), ("n", "n"), ("reference_mean", "reference"), ("counterfactual_mean", "cf"),
                    ("median_change", "median change"), ("ci_low", "CI low"), ("ci_high", "CI high"),
                    ("dz", "d_z"), ("dz_low", "d_z low"), ("dz_high", "d_z high"), ("p", "p"), ("q", "q"),
                    ("wants", "wants"), ("auroc", "AUROC outcome"), ("auroc_low", "low"), ("auroc_high", "high"),
                    ("shortcut_candidate", "shortcut?")]  # fmt: skip
    # rank first in the tables: swap the rank column into the label block
    left_out = meta.get("cases_left_out", [])
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>medxai cohort report</title><style>{_CSS}</style></head><body>
<h1>Cohort report: what the model wants more of and less of</h1>
<p>{analysis.n_cases} explained patients ({int((analysis.labels == 1).sum())} with label 1,
{int((analysis.labels == 0).sum())} with label 0) from <code>{html.escape(str(meta.get("explain_output", "")))}</code>;
method <b>{html.escape(str(run.get("method", "?")))}</b>, target class {html.escape(str(run.get("target_class", "?")))};
FDR level {alpha:g}. Left out: {len(left_out)}; failed in explain: {len(meta.get("cases_failed_in_explain", []))}
(reasons in <code>settings.json</code>).</p>
<h2>Summary</h2>
<p>Ranked by the {html.escape(_TITLES[primary])} ({"both sides of the sweep" if primary == "span" else "one side"}).</p>
<p><b>For the target the model wants more of:</b> {names(more)}.</p>
<p><b>... and less of:</b> {names(less)}.</p>
{"".join(flags)}
{"".join(f"<p class='note'>{html.escape(n)}</p>" for n in analysis.notes)}
<h2>Population maps</h2>{"".join(maps_html)}
<h2>Regions</h2><img src="{regions_src}" alt="regions">
{_table(analysis.regions, region_cols, alpha)}
<h2>Features</h2><img src="{volcano_src}" alt="volcano plot"><img src="{forest_src}" alt="forest plot">
{_table(analysis.features, feature_cols, alpha)}
{_READ}
<h2>Files</h2><p><code>features.csv</code>, <code>regions.csv</code>, <code>case_values.csv</code> (every
per-patient number behind the tables), <code>population_maps.npz</code>, <code>settings.json</code>
(the settings, the cases used and left out). Every number here is recomputed from the explain output
by <code>medxai cohort report</code>.</p>
</body></html>
"""
    (folder / "report.html").write_text(page, encoding="utf-8")
