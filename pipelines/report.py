"""A self-contained HTML report of a benchmark (or demo) run: tables, plots and the caller's figures.

`write_report` writes ``OUT/report.html`` and the plots it draws itself under ``OUT/figures/``. Every
path in the page is relative and nothing is loaded from the network (inline CSS, no JS, no web fonts),
so the folder can be moved, zipped or opened offline. Every section is optional: a results dict that
holds only ``"ct"``, only ``"fundus"`` or neither still gives a valid page.

Sections and method tables come from the results, not from a list kept here: every top-level entry
whose value holds method rows (mappings with at least one of :data:`METRICS`) is a section, with one
row per method the run measured and one column per metric some row has. A method registered in
``medxai/explainers`` therefore shows up in its section's table as soon as the bench ran it; its
one-line summary (``results["methods"][name]["summary"]``, written by the bench from the registry)
labels the row.

Keys read from ``results`` (all optional)::

    <section>: {<method>: {flip_rate, recon_psnr_db, target_rate, l1_outside_lesions, loc_auroc,
                           seconds_per_case, randomization?: {spearman_whole, spearman_in_mask,
                           random_model_auroc, decision_changed_rate}, method?: registered name,
                           sweep?: {signed_steps: [S], teacher_target_prob: [[S] per case],
                                    agent_target_prob?: [[S] per case]}},   # probabilities, not logits
                agent_agreement?: number | {name: number},
                models?: {name: number | {name: number}},
                shortcut?: {<method>: {mass_on_marker, mass_ratio_uniform, ...}, _marker_area_fraction: number},
                model_swap?: {<method>: {own_auroc_min, cross_auroc_max, spearman_in_mask, n_cases},
                              _models: {name: description}}}
               (the bench writes the sections "ct" and "fundus")
    methods: {<registered name>: {summary: str, ...}}                 # row labels
    targets: {"ct.diffexplainer.flip_rate": [">=", 0.95], ...}   # dotted path into results
    versions: {package: version}, config: {...}, started: str, seconds: number, quick: bool
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np

from atomicfs import atomic_path

__all__ = ["write_report", "METRICS"]

logger = logging.getLogger(__name__)

#: the metrics a method row may hold, in column order (a section shows those its rows have)
METRICS: tuple[str, ...] = (
    "flip_rate",
    "recon_psnr_db",
    "target_rate",
    "l1_outside_lesions",
    "loc_auroc",
    "seconds_per_case",
    "randomization.spearman_whole",
    "randomization.spearman_in_mask",
    "randomization.random_model_auroc",
    "randomization.decision_changed_rate",
)
#: columns of the model-swap table (rows: methods), dotted paths into ``<section>.model_swap.<method>``
SWAP_COLUMNS: tuple[str, ...] = ("own_auroc_min", "cross_auroc_max", "spearman_in_mask", "n_cases")
#: columns of the shortcut table
SHORTCUT_COLUMNS: tuple[str, ...] = (
    "mass_on_marker",
    "mass_ratio_uniform",
    "mass_on_marker_clean_teacher",
    "mass_ratio_uniform_clean_teacher",
)
#: the DiG-IN figures of ``ct.digin`` shown in the report, in this order (pipelines/bench_digin.py)
DIGIN_ROWS: tuple[str, ...] = (
    "disagreement_rate",
    "shortcut_marker_mass_ratio",
    "model_swap_own_auroc_min",
    "model_swap.fibrosis_over_emphysema.auroc_in_lungs",
    "model_swap.emphysema_over_fibrosis.auroc_in_lungs",
    "neuron_activation_ratio",
    "neuron_selectivity",
    "neuron_cf_direction_rate",
    "seconds_per_image",
    "seconds_per_image_batched",
    "peak_rss_gib",
    "n_starts_per_scenario",
)
#: what besides method rows makes a top-level results entry a section
_SECTION_PARTS = frozenset({"models", "agent_agreement", "shortcut", "model_swap", "digin"})
#: top-level results entries that are never sections
_NOT_SECTIONS = frozenset({"targets", "versions", "config", "models", "methods", "stage_seconds", "started", "seconds", "quick"})
_LABELS = {
    "flip_rate": "flip rate",
    "recon_psnr_db": "recon. PSNR (dB)",
    "loc_auroc": "loc. AUROC",
    "seconds_per_case": "s / case",
    "randomization.spearman_whole": "randomisation Spearman (whole)",
    "randomization.spearman_in_mask": "randomisation Spearman (in mask)",
    "randomization.random_model_auroc": "randomised model's AUROC",
    "randomization.decision_changed_rate": "randomised model decides",
    "own_auroc_min": "own-feature AUROC (lower)",
    "cross_auroc_max": "other-feature AUROC (higher)",
    "spearman_in_mask": "Spearman of the two models' maps (in mask)",
    "n_cases": "cases",
    "mass_ratio_uniform": "/ uniform",
    "mass_on_marker_clean_teacher": "mass on marker, clean teacher",
    "mass_ratio_uniform_clean_teacher": "/ uniform, clean teacher",
    "target_rate": "target rate",
    "l1_outside_lesions": "L1 outside lesions",
    "mass_on_marker": "mass on marker",
}
_SECTION_TITLES = {"ct": "CT", "fundus": "Fundus", "shortcut": "Shortcut check", "demo": "Demo"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}
_MISSING = "\u2013"  # en dash
_FIG_DIR = "figures"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.banner{background:#eef3fb;border-left:4px solid #3b6fb6;padding:.5em 1em;font-weight:600}
.warning{background:#fff4e0;border-left:4px solid #d98c00;padding:.5em 1em;font-weight:600}
table{border-collapse:collapse;margin:.8em 0}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.met{background:#dff3df;color:#14532d}td.unmet{background:#fbe0e0;color:#7f1d1d}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.9em;color:#444;max-width:640px}
nav a{margin-right:1em}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
.note{font-size:.9em;color:#555}
"""


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    figures: Sequence[Mapping[str, str]] = (),
    title: str = "medxai benchmark",
) -> Path:
    """Write ``out_dir/report.html``: metric tables, plots and the given figures, usable offline.

    Parameters
    ----------
    results : Mapping[str, Any]
        Benchmark results; see the module docstring for the keys read. Every key is optional; keys the
        report does not know are ignored (``config`` is shown in full).
    out_dir : str or os.PathLike
        Report folder; created if missing. The plots go to ``out_dir/figures/``.
    figures : Sequence[Mapping[str, str]]
        Figures the caller already saved under ``out_dir``, each
        ``{"section": "ct"|"fundus"|"shortcut"|"demo"|..., "title": str, "path": str, "caption": str}``;
        ``path`` is relative to ``out_dir`` (an absolute path inside ``out_dir`` is made relative).
        A section name the report does not know gets its own section.
    title : str
        Page title and heading.

    Returns
    -------
    Path
        The written ``report.html``.

    Raises
    ------
    TypeError
        If ``results`` or an entry of ``figures`` is not a mapping.
    ValueError
        If a figure has no ``path``/``section``, or its path leaves ``out_dir``.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping (the benchmark's results dict), got {type(results).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    given = _check_figures(figures, out)
    targets = _Targets(results)

    # Plots first, so that a plotting error leaves no report that points at missing files.
    sections = _sections(results)
    made: list[dict[str, str]] = []
    notes: dict[str, list[str]] = {}
    for section in sections:
        made += _section_plots(section, results[section], out, notes)
    for fig in given:  # checked after plotting: a caller may name a plot the report draws
        if not (out / fig["path"]).is_file():
            warnings.warn(f"figure {fig['path']!r} does not exist under {out}; the report will show it broken", stacklevel=2)

    body: list[str] = []
    nav: list[tuple[str, str]] = []  # (id, title) for the navigation line
    all_figs = made + given
    summaries = _summaries(results.get("methods"))

    def figs_for(section: str) -> list[dict[str, str]]:
        return [f for f in all_figs if f["section"] == section]

    for section in sections:
        block = results[section]
        figs = figs_for(section)
        parts = [_methods_table(section, block, targets, summaries)]
        for key, caption in (("models", "Models"), ("agent_agreement", "Agent agreement")):
            if key in block:
                parts.append(f"<h3>{caption}</h3>" + _kv_table(_flatten(block[key]), (section, key), targets))
        if isinstance(block.get("model_swap"), Mapping):
            parts.append(
                "<h3>Model swap</h3>"
                '<p class="note">Two models of the same images, each deciding on a different planted feature; '
                "each model's map scored (pixel AUROC inside the lungs / field of view) against its OWN "
                "feature and against the OTHER model's. An explainer that follows the model scores high on "
                "its own and near 0.5 on the other.</p>" + _swap_table(section, block["model_swap"], targets)
            )
        if isinstance(block.get("digin"), Mapping):
            digin = block["digin"]
            parts.append(
                "<h3>DiG-IN</h3>"
                '<p class="note">Scenarios with known answers (docs/digin.md): images the shortcut teacher calls '
                "'death' and the clean one does not (change on the pacemaker, over its area share); the fibrosis "
                "and emphysema teachers disagreeing (change on the feature of the model whose decision moves, "
                "AUROC in the lungs); the top unit for 'death' visualised (activation over its mean on real "
                "images; over the other top units') and driven down from real positives.</p>"
                + _kv_table([(k, _get(digin, k)) for k in DIGIN_ROWS if _get(digin, k) is not None], (section, "digin"), targets)
            )
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes.get(section, [])]
        parts.append(_figures_html([f for f in figs if f.get("_kind") != "shortcut"]))
        _add_section(body, nav, section, parts)

    shortcut_parts = []
    for section in sections:
        sc = results[section].get("shortcut")
        if isinstance(sc, Mapping):
            shortcut_parts.append(f"<h3>{html.escape(_title(section))}</h3>" + _shortcut_table(section, sc, targets))
    shortcut_figs = [f for f in all_figs if f.get("_kind") == "shortcut"] + figs_for("shortcut")
    if shortcut_parts or shortcut_figs:
        if shortcut_parts:
            shortcut_parts.insert(
                0,
                '<p class="note">Share of each heatmap\'s mass that falls on the planted '
                "marker; an explainer that sees the shortcut puts much more there than "
                "the marker's share of the image.</p>",
            )
        _add_section(body, nav, "shortcut", [*shortcut_parts, _figures_html(shortcut_figs)])

    # figure sections without results (e.g. the demo's), in the order first given
    for section in dict.fromkeys(f["section"] for f in given):
        if section not in sections and section != "shortcut":
            _add_section(body, nav, section, [_figures_html(figs_for(section))])

    if targets.rules:
        _add_section(body, nav, "targets", [targets.table()], "Targets", sid="targets")
    _add_section(body, nav, "environment", [_environment(results)], "Environment", sid="environment")

    head = [f"<h1>{html.escape(title)}</h1>", '<p class="banner">Research use, not for diagnosis.</p>']
    if results.get("quick"):
        head.append('<p class="warning">Quick run: tiny models and few cases; the figures are not meaningful.</p>')
    if targets.rules:
        n_met = sum(1 for r in targets.rules if r[3] == "met")
        head.append(f'<p>Targets met: <a href="#targets">{n_met} of {len(targets.rules)}</a></p>')
    head.append("<nav>" + "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in nav) + "</nav>")

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(head)
        + "\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%d figures)", path, len(all_figs))
    return path


# --- figures given by the caller -------------------------------------------------------------------


def _check_figures(figures: Sequence[Mapping[str, str]], out: Path) -> list[dict[str, str]]:
    checked = []
    for i, fig in enumerate(figures):
        if not isinstance(fig, Mapping):
            raise TypeError(f"figures[{i}] must be a mapping with section/title/path/caption, got {type(fig).__name__}")
        if not fig.get("path") or not fig.get("section"):
            raise ValueError(f"figures[{i}] needs 'path' and 'section', got keys {sorted(fig)}")
        rel = _relative(str(fig["path"]), out, f"figures[{i}]['path']")
        checked.append(
            {
                "section": str(fig["section"]),
                "title": str(fig.get("title", "")),
                "path": rel,
                "caption": str(fig.get("caption", "")),
            }
        )
    return checked


def _relative(path: str, out: Path, name: str) -> str:
    """``path`` as a POSIX path relative to ``out``; refuses one that leaves the report folder."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(out.resolve())
        except ValueError:
            raise ValueError(
                f"{name} = {path!r} is outside the report folder {out}; save the figure under it "
                "and pass a path relative to it, so the folder can be moved"
            ) from None
    rel = PurePosixPath(p.as_posix())
    if not rel.parts:
        raise ValueError(f"{name} = {path!r} names no file; pass e.g. 'figures/x.png'")
    if ".." in rel.parts or ":" in rel.parts[0]:  # ':' catches 'C:' and 'http:'
        raise ValueError(f"{name} = {path!r} leaves the report folder {out}; pass a path inside it")
    return str(rel)


def _figures_html(figs: Sequence[Mapping[str, str]]) -> str:
    parts = []
    for f in figs:
        src = html.escape(quote(f["path"], safe="/"), quote=True)  # percent-encode spaces, '#', '?' etc.
        alt = html.escape(f.get("title") or f.get("caption") or PurePosixPath(f["path"]).name, quote=True)
        cap = " ".join(html.escape(s) for s in (f"{f['title']}." if f.get("title") else "", f.get("caption", "")) if s)
        parts.append(f'<figure><img src="{src}" alt="{alt}"><figcaption>{cap}</figcaption></figure>')
    return "\n".join(parts)


def _add_section(
    body: list[str],
    sections: list[tuple[str, str]],
    name: str,
    parts: Sequence[str],
    heading: str | None = None,
    sid: str | None = None,
) -> None:
    # caller section names are user text: slug them for the id, escape them for the heading
    sid = sid or "sec-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x")
    while any(sid == s for s, _ in sections):  # two names that slug the same, e.g. "a b" and "a-b"
        sid += "-2"
    heading = heading or _title(name)
    sections.append((sid, heading))
    body.append(f'<section id="{sid}">\n<h2>{html.escape(heading)}</h2>\n' + "\n".join(p for p in parts if p) + "\n</section>")


# --- tables ----------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    """A value for a table cell (not escaped): 3 significant digits for floats, dash for missing."""
    if v is None:
        return _MISSING
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v) or abs(v) >= 1000:
            return f"{v:.0f}"  # no exponent for large numbers such as seconds
        return f"{v:#.3g}".rstrip(".")  # '#' keeps trailing zeros (0.970) so columns line up
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _cell(v: Any, path: tuple[str, ...] = (), targets: _Targets | None = None) -> str:
    cls = ["num"] if _is_num(v) else []
    title = ""
    rule = targets.lookup(path) if targets is not None else None
    if rule is not None:
        status = targets.status(rule, v)
        if status in ("met", "not met"):
            cls.append("met" if status == "met" else "unmet")
        title = f' title="target {html.escape(rule[0])} {html.escape(_fmt(rule[1]))}: {status}"'
    cls_attr = f' class="{" ".join(cls)}"' if cls else ""
    return f"<td{cls_attr}{title}>{html.escape(_fmt(v))}</td>"


def _title(section: str) -> str:
    return _SECTION_TITLES.get(section, section)


def _get(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]`` where ``key`` may be a dotted path into nested mappings; None when absent."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _methods(block: Mapping[str, Any]) -> list[str]:
    """The method rows of a section: entries holding at least one of :data:`METRICS`."""
    return [k for k, v in block.items() if isinstance(v, Mapping) and any(_get(v, m) is not None for m in METRICS)]


def _columns(block: Mapping[str, Any]) -> list[str]:
    """The metrics some method row of ``block`` has, in :data:`METRICS` order."""
    rows = [block[k] for k in _methods(block)]
    return [m for m in METRICS if any(_get(r, m) is not None for r in rows)]


def _sections(results: Mapping[str, Any]) -> list[str]:
    """Top-level entries with method rows (or a section's other tables), in the order of ``results``."""
    return [
        str(k)
        for k, v in results.items()
        if k not in _NOT_SECTIONS and isinstance(v, Mapping) and (_methods(v) or _SECTION_PARTS & set(v))
    ]


def _summaries(methods: Any) -> dict[str, str]:
    """Registered method name -> its one-line summary (``results["methods"]``, written by the bench)."""
    if not isinstance(methods, Mapping):
        return {}
    return {str(k): str(v["summary"]) for k, v in methods.items() if isinstance(v, Mapping) and v.get("summary")}


def _methods_table(section: str, block: Mapping[str, Any], targets: _Targets, summaries: Mapping[str, str]) -> str:
    methods = _methods(block)
    if not methods:
        return ""
    metrics = _columns(block)
    head = "<tr><th>method</th>" + "".join(f'<th title="{m}">{html.escape(_LABELS.get(m, m))}</th>' for m in metrics)
    rows = []
    for name in methods:
        vals = block[name]
        about = summaries.get(str(vals.get("method", name)))
        title = f' title="{html.escape(about, quote=True)}"' if about else ""
        rows.append(
            f"<tr><th{title}>{html.escape(str(name))}</th>"
            + "".join(_cell(_get(vals, m), (section, str(name), m), targets) for m in metrics)
            + "</tr>"
        )
    return (
        f'<table class="metrics" id="{section}-metrics">\n{head}</tr>\n'
        + "\n".join(rows)
        + "\n</table>"
        + (
            '\n<p class="note">Green: meets its target; red: misses it (hover for the rule).</p>'
            if any(targets.lookup((section, str(n), m)) for n in methods for m in metrics)
            else ""
        )
    )


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``; lists are summarised, a scalar gives one row."""
    if isinstance(value, Mapping):
        rows: list[tuple[str, Any]] = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(value, (list, tuple, np.ndarray)):
        return [(prefix, f"list of {len(value)}")]
    return [(prefix, value)]


def _kv_table(rows: Sequence[tuple[str, Any]], path: tuple[str, ...] = (), targets: _Targets | None = None) -> str:
    if not rows:
        return ""
    out = []
    for k, v in rows:
        key = html.escape(k) if k else "value"
        out.append(f"<tr><th>{key}</th>{_cell(v, (*path, *k.split('.')) if k else path, targets)}</tr>")
    return '<table class="kv">\n' + "\n".join(out) + "\n</table>"


def _rows_table(path: tuple[str, ...], block: Mapping[str, Any], columns: Sequence[str], targets: _Targets) -> list[str]:
    """Rows ``<tr>`` of a method table of ``block`` (method -> mapping; ``_``-prefixed keys skipped):
    the header, then one row per method with the ``columns`` some method has."""
    rows = {str(k): v for k, v in block.items() if not str(k).startswith("_") and isinstance(v, Mapping)}
    cols = [c for c in columns if any(_get(v, c) is not None for v in rows.values())]
    out = ["<tr><th>method</th>" + "".join(f'<th title="{c}">{html.escape(_LABELS.get(c, c))}</th>' for c in cols) + "</tr>"]
    for name, vals in rows.items():
        cells = "".join(_cell(_get(vals, c), (*path, name, c), targets) for c in cols)
        out.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return out


def _shortcut_table(section: str, sc: Mapping[str, Any], targets: _Targets) -> str:
    rows = _rows_table((section, "shortcut"), sc, SHORTCUT_COLUMNS, targets)
    ref = sc.get("_marker_area_fraction")
    if ref is not None:
        rows.append(f"<tr><th><em>expected by chance (marker area)</em></th>{_cell(ref)}</tr>")
    return f'<table class="shortcut" id="{section}-shortcut">\n' + "\n".join(rows) + "\n</table>"


def _swap_table(section: str, swap: Mapping[str, Any], targets: _Targets) -> str:
    """The model-swap table: per method, each model's map scored on its own and on the other's feature."""
    rows = _rows_table((section, "model_swap"), swap, SWAP_COLUMNS, targets)
    models = swap.get("_models", {})
    about = ", ".join(f"{k}: {v}" for k, v in models.items()) if isinstance(models, Mapping) else ""
    return (
        f'<table class="swap" id="{section}-model-swap">\n'
        + "\n".join(rows)
        + "\n</table>"
        + (f'<p class="note">{html.escape(about)}</p>' if about else "")
    )


def _environment(results: Mapping[str, Any]) -> str:
    rows: list[tuple[str, Any]] = []
    if "started" in results:
        rows.append(("started", results["started"]))
    if "seconds" in results:
        s = results["seconds"]
        rows.append(("duration", f"{_fmt(s)} s ({float(s) / 60:.1f} min)" if _is_num(s) else s))
    if "quick" in results:
        rows.append(("quick run", bool(results["quick"])))
    parts = [_kv_table(rows)]
    versions = results.get("versions")
    if isinstance(versions, Mapping) and versions:
        parts.append("<h3>Versions</h3>" + _kv_table(_flatten(versions)))
    config = results.get("config")
    if config is not None:
        text = json.dumps(config, indent=2, default=str, ensure_ascii=False)
        parts.append(f"<details><summary>Configuration</summary><pre>{html.escape(text)}</pre></details>")
    return "\n".join(p for p in parts if p) or '<p class="note">No environment recorded.</p>'


class _Targets:
    """Rules ``{"ct.diffexplainer.flip_rate": [">=", 0.95]}`` and their status against ``results``."""

    def __init__(self, results: Mapping[str, Any]) -> None:
        raw = results.get("targets")
        self.by_key: dict[str, tuple[str, Any]] = {}
        self.rules: list[tuple[str, tuple[str, Any], Any, str]] = []  # (key, rule, value, status)
        if not isinstance(raw, Mapping):
            return
        for key, rule in raw.items():
            if isinstance(rule, (list, tuple)) and len(rule) == 2 and rule[0] in _OPS:
                r: tuple[str, Any] = (str(rule[0]), rule[1])
            else:
                r = (str(rule), None)
            self.by_key[str(key)] = r
            value = _resolve(results, str(key))
            self.rules.append((str(key), r, value, self.status(r, value)))

    def lookup(self, path: tuple[str, ...]) -> tuple[str, Any] | None:
        return self.by_key.get(".".join(path))

    @staticmethod
    def status(rule: tuple[str, Any], value: Any) -> str:
        op, threshold = rule
        if op not in _OPS or not _is_num(threshold):
            return "invalid rule"
        if not _is_num(value) or math.isnan(float(value)):
            return "missing"
        return "met" if _OPS[op](float(value), float(threshold)) else "not met"

    def table(self) -> str:
        rows = ["<tr><th>target</th><th>rule</th><th>value</th><th>status</th></tr>"]
        for key, (op, thr), value, status in self.rules:
            cls = {"met": ' class="met"', "not met": ' class="unmet"'}.get(status, "")
            rule = f"{op} {_fmt(thr)}" if thr is not None else op
            rows.append(
                f"<tr><th>{html.escape(key)}</th><td>{html.escape(rule)}</td>"
                f'<td class="num">{html.escape(_fmt(value))}</td><td{cls}>{status}</td></tr>'
            )
        return '<table class="targets" id="targets-table">\n' + "\n".join(rows) + "\n</table>"


def _resolve(results: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted path; a key that itself holds dots (``"ct.v1.2"``) is matched whole."""
    node: Any = results
    parts = key.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(node, Mapping):
            return None
        for j in range(len(parts), i, -1):  # longest key first
            k = ".".join(parts[i:j])
            if k in node:
                node, i = node[k], j
                break
        else:
            return None
    return node


# --- plots -----------------------------------------------------------------------------------------


def _mpl_text(s: str) -> str:
    return s.replace("$", r"\$")  # a '$' in a method name would start matplotlib mathtext


def _section_plots(section: str, block: Mapping[str, Any], out: Path, notes: dict[str, list[str]]) -> list[dict[str, str]]:
    """Draw the section's plots into ``out/figures``; problems with one plot go to ``notes``."""
    figs: list[dict[str, str]] = []
    sweeps = [(k, v["sweep"]) for k, v in block.items() if isinstance(v, Mapping) and isinstance(v.get("sweep"), Mapping)]
    for i, (method, sweep) in enumerate(sweeps):
        name = f"{section}_sweep.png" if len(sweeps) == 1 else f"{section}_sweep_{i}.png"
        try:
            n_cases = _plot_sweep(sweep, out / _FIG_DIR / name, str(method))
        except ValueError as e:
            notes.setdefault(section, []).append(f"Probability-vs-step plot for {method} skipped: {e}")
            warnings.warn(f"report: probability-vs-step plot for {section}.{method} skipped: {e}", stacklevel=3)
            continue
        figs.append(
            {
                "section": section,
                "title": "Teacher probability vs step size",
                "path": f"{_FIG_DIR}/{name}",
                "caption": f"{method}: teacher probability of the target class against the signed step "
                f"size a, for {n_cases} cases (thin grey) and their mean (thick).",
            }
        )
    loc = {str(k): block[k]["loc_auroc"] for k in _methods(block) if "loc_auroc" in block[k]}
    loc = {k: float(v) for k, v in loc.items() if _is_num(v) and math.isfinite(float(v))}
    if loc:
        name = f"{section}_loc_auroc.png"
        _plot_bars(
            loc,
            out / _FIG_DIR / name,
            "Localisation AUROC",
            "AUROC (heatmap vs lesion mask)",
            refs=[(0.5, "chance", "grey"), (0.9, "target", "tab:green")],
            xlim=(0.0, 1.0),
        )
        figs.append(
            {
                "section": section,
                "title": "Localisation AUROC",
                "path": f"{_FIG_DIR}/{name}",
                "caption": "How well each heatmap ranks lesion pixels above the rest; "
                "dashed lines at 0.5 (chance) and 0.9 (target).",
            }
        )
    sc = block.get("shortcut")
    if isinstance(sc, Mapping):
        mass = {
            str(k): float(v["mass_on_marker"])
            for k, v in sc.items()
            if not str(k).startswith("_")
            and isinstance(v, Mapping)
            and _is_num(v.get("mass_on_marker"))
            and math.isfinite(float(v["mass_on_marker"]))
        }
        ref = sc.get("_marker_area_fraction")
        if mass:
            name = f"{section}_shortcut.png"
            refs = [(float(ref), "mass expected by chance", "grey")] if _is_num(ref) else []
            top = max([*mass.values(), *(r[0] for r in refs)])
            _plot_bars(
                mass,
                out / _FIG_DIR / name,
                f"Shortcut check ({_mpl_text(_title(section))})",
                "heatmap mass on the marker",
                refs=refs,
                xlim=(0.0, min(1.0, max(top * 1.25, 0.05))),
            )
            chance = "; dashed: the marker's share of the image (mass expected by chance)." if refs else "."
            figs.append(
                {
                    "section": section,
                    "_kind": "shortcut",
                    "path": f"{_FIG_DIR}/{name}",
                    "title": f"Mass on marker ({_title(section)})",
                    "caption": "Share of heatmap mass on the planted marker" + chance,
                }
            )
    return figs


def _new_figure(size: tuple[float, float]) -> Any:
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch and no figure left open
    # in a user's session (e.g. a notebook).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _as_cases(value: Any, n_steps: int, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of per-case lists of numbers") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != n_steps or arr.shape[0] == 0:
        raise ValueError(f"{name} has shape {arr.shape}, expected (cases, {n_steps}) to match signed_steps")
    return arr


def _plot_sweep(sweep: Mapping[str, Any], path: Path, method: str) -> int:
    """Teacher target probability against the signed step size; returns the number of cases."""
    steps = np.asarray(sweep.get("signed_steps", ()), dtype=float).ravel()
    if steps.size < 2:
        raise ValueError(f"signed_steps has {steps.size} values, need at least 2")
    if "teacher_target_prob" not in sweep:
        raise ValueError("no teacher_target_prob")
    teacher = _as_cases(sweep["teacher_target_prob"], steps.size, "teacher_target_prob")
    agent = sweep.get("agent_target_prob")
    agent_arr = _as_cases(agent, steps.size, "agent_target_prob") if agent is not None else None
    fig = _new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    for case in teacher:
        ax.plot(steps, case, color="0.6", lw=0.8, alpha=0.7)
    ax.plot(steps, np.nanmean(teacher, axis=0), color="tab:blue", lw=2.5, label="teacher (mean)")
    if agent_arr is not None:
        ax.plot(steps, np.nanmean(agent_arr, axis=0), color="tab:orange", lw=2, ls="--", label="agent (mean)")
    ax.axvline(0.0, color="k", lw=0.6)
    ax.set(
        xlabel="signed step size a",
        ylabel="teacher probability of target class",
        ylim=(-0.02, 1.02),
        title="Teacher probability vs step size",
    )
    ax.legend(loc="best", fontsize="small", title=_mpl_text(method), title_fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return int(teacher.shape[0])


def _plot_bars(
    values: Mapping[str, float],
    path: Path,
    title: str,
    xlabel: str,
    refs: Sequence[tuple[float, str, str]],
    xlim: tuple[float, float],
) -> None:
    names = list(values)
    fig = _new_figure((6.4, 1.0 + 0.4 * len(names)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, [values[n] for n in names], color="tab:blue", height=0.6)
    for yi, n in zip(y, names):
        ax.text(values[n], yi, f" {_fmt(values[n])}", va="center", fontsize="small")
    ax.set_yticks(y, [_mpl_text(n) for n in names])
    ax.invert_yaxis()  # first method at the top, as in the table
    for x, label, color in refs:
        ax.axvline(x, ls="--", color=color, lw=1.2, label=f"{label} ({x:g})")
    ax.set(xlim=xlim, xlabel=xlabel, title=title)
    if refs:
        fig.legend(loc="outside lower center", ncols=len(refs), fontsize="small")  # below the axes: never covers a bar
    _save(fig, path)
