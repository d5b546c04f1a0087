"""The bench's DiG-IN scenarios (``ct.digin``, ``fundus.uvce``), each with an answer known by construction.

DiG-IN optimises every image (about 45 s per CT stack on 2 cores at the default 20 iterations), so
its methods are measured here on a few starts per scenario (``digin_n``), not in the per-method loops:

* **shortcut vs clean teacher** (``digin-disagreement``, ``f`` = the teacher that learned the
  pacemaker, ``g`` = the clean fibrosis teacher, class "death"): from held-out negatives without a
  pacemaker, the images the shortcut teacher calls "death" and the clean one does not must show the
  marker. Scored as the change's mass where the marker of the SAME case would be (the phantom makes
  the case again with a pacemaker; nothing else changes) over the marker's area share.
* **fibrosis vs emphysema teacher** (the model-swap teachers; cases with both features): with
  ``f`` = the fibrosis teacher and ``g`` = the emphysema teacher, ``g`` must stop seeing emphysema while
  ``f`` still sees fibrosis, so the change must land on the emphysema; the other way round on the
  fibrosis. Scored as the AUROC of the change map against the feature of the model whose decision
  moves (``g``'s), inside the lungs; the lower of the two directions is ``model_swap_own_auroc_min``.
* **neuron visualisation** (:func:`~medxai.explainers.digin.visualise_units`): the clean teacher's top
  units for "death" by head weight, each driven up from generator samples; its activation over its
  mean on the held-out cohort, and over the other top units' (each over its own mean).
* **neuron counterfactuals** (``digin-neuron``): the unit the head weighs most for "death", driven down
  from held-out positives, the change confined to the lungs: the share of cases whose activation fell.
* **UVCE on fundus** (``digin-uvce``): referable crops towards "healthy", the field of view as the mask
  (as ``medxai explain`` passes it: the change is free inside it); target rate and the L1 change outside
  the lesions, beside DVCE's.
* **time and memory**: one image of the shortcut scenario in a fresh process (seconds, peak RSS).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medxai.config import Config

logger = logging.getLogger(__name__)

__all__ = ["DIGIN_METHODS", "digin_ct", "digin_fundus"]

#: the DiG-IN methods: measured in this module's scenarios, not in the bench's per-method loops
DIGIN_METHODS = ("digin-disagreement", "digin-uvce", "digin-neuron")
#: the disagreement target of the two CT scenarios: 1, "death within a year"
_DEATH = 1


def _peak_rss_gib() -> float:
    """This process's peak resident memory so far (GiB).

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's own memory (a child
    started with fork + exec inherits its parent's ``ru_maxrss``, so that would report the bench's peak);
    elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def _one_image(cfg: Config, sc_cfg: Config, x: np.ndarray) -> tuple[float, float]:
    """Seconds and peak resident memory (GiB) of one shortcut-vs-clean disagreement image, in a fresh
    process (so the figure is DiG-IN's own, not the bench process's peak from earlier sections)."""
    import torch

    from medxai.registry import get_method
    from pipelines.bench_common import build_method
    from pipelines.models import load_black_box

    spec = get_method("digin-disagreement")
    ex = build_method(
        spec, cfg, load_black_box(sc_cfg), {"second_model": load_black_box(cfg), "autoencoder": _generator(cfg, "autoencoder")}
    )
    t0 = time.perf_counter()
    ex.explain(torch.from_numpy(x), _DEATH)
    return time.perf_counter() - t0, _peak_rss_gib()


def _isolated(cfg: Config, sc_cfg: Config, x: np.ndarray) -> tuple[float, float]:
    """:func:`_one_image` in a child Python process (a subprocess, not multiprocessing: the bench may be
    started from a script without a ``__main__`` guard)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medxai-digin-") as tmp:
        job = Path(tmp)
        for name, c in (("cfg", cfg), ("sc_cfg", sc_cfg)):
            (job / f"{name}.json").write_text(json.dumps({"source": str(c.source), "data": c.to_dict()}), encoding="utf-8")
        np.save(job / "x.npy", x)
        code = "import sys; from pipelines.bench_digin import _child; _child(sys.argv[1])"
        done = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the one-image DiG-IN measurement failed: {done.stderr[-2000:]}")
        result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    return float(result["seconds"]), float(result["peak_rss_gib"])


def _child(folder: str) -> None:
    """The child side of :func:`_isolated`: read the job, run it, write ``result.json``."""
    import json

    job = Path(folder)
    cfgs = [json.loads((job / f"{n}.json").read_text(encoding="utf-8")) for n in ("cfg", "sc_cfg")]
    cfg, sc_cfg = (Config(c["data"], c["source"]) for c in cfgs)
    secs, rss = _one_image(cfg, sc_cfg, np.load(job / "x.npy"))
    (job / "result.json").write_text(json.dumps({"seconds": secs, "peak_rss_gib": rss}), encoding="utf-8")


def _generator(cfg: Config, role: str) -> Any:
    from medxai.registry import get_method
    from pipelines.models import load_method_models

    return load_method_models(cfg, get_method("digin-uvce"))[role]


def digin_ct(models: Any, s: Any, progress: Any, clock: Any) -> dict[str, Any]:
    """The CT scenarios; returns the ``ct.digin`` block."""
    import torch

    from medxai.data import ct_stack_set
    from medxai.explainers.digin import top_units, visualise_units
    from medxai.metrics import mass_on_mask
    from medxai.registry import get_method
    from medxai.training.ct import stack_config
    from pipelines.bench_common import auroc, build_method, explain_all, nanmean, present, region_auroc
    from pipelines.models import load_black_box, method_settings

    cfg, sc_cfg, em_cfg = models.ct("ct"), models.ct("ct_shortcut"), models.ct("ct_emphysema")
    clean, short, emph = (load_black_box(c) for c in (cfg, sc_cfg, em_cfg))
    ae = _generator(cfg, "autoencoder")
    stack = stack_config(cfg)
    phantom = str(cfg.get("data.phantom", "test"))
    n = int(s.digin_n)
    spec = get_method("digin-disagreement")
    out: dict[str, Any] = {"n_starts_per_scenario": n, "settings": {}}
    seconds: list[float] = []

    def disagree(f: Any, g: Any, x: np.ndarray, stage: str) -> Any:
        ex = build_method(spec, cfg, f, {"second_model": g, "autoencoder": ae})
        exp, secs = clock.time(stage, lambda: explain_all(ex, x, _DEATH, batch=len(x)))
        seconds.append(secs)
        out["settings"][spec.name] = exp.parameters
        return exp

    def change(exp: Any) -> np.ndarray:
        return exp.heatmaps_numpy().sum(1)  # (N, S, S): the smoothed change, summed over the slices

    reached: list[np.ndarray] = []
    # --- shortcut vs clean: the same held-out cases without and with a pacemaker
    cohort = {
        rate: clock.time(
            f"digin_shortcut_cohort_{int(rate)}",
            lambda rate=rate: ct_stack_set(
                s.digin_cohort_n,
                s.digin_seed,
                phantom=phantom,
                stack=stack,
                phantom_overrides={**dict(s.shortcut_phantom), "marker_rate": rate},
            ),
        )
        for rate in (0.0, 1.0)
    }
    marker = cohort[1.0].masks["marker"].max(axis=1)
    start = np.flatnonzero((cohort[0.0].y == 0) & present(marker))[:n]
    sc: dict[str, Any] = {"n": int(len(start))}
    if len(start):
        exp = disagree(short, clean, cohort[0.0].x[start], "digin_shortcut")
        uniform = marker[start].reshape(len(start), -1).mean(1)
        on = np.array([mass_on_mask(h, m) for h, m in zip(change(exp), marker[start])])
        sc.update(
            {
                "reached": exp.diagnostics["disagreement_reached"].tolist(),
                "mass_on_marker": on.tolist(),
                "marker_area_share": uniform.tolist(),
                "p_f_result": exp.sweep.probabilities[:, 0, _DEATH].tolist(),
                "p_g_result": _second_p(exp)[:, _DEATH].tolist(),
            }
        )
        out["shortcut_marker_mass_ratio"] = nanmean((on / np.maximum(uniform, 1e-12)).tolist())
        reached.append(exp.diagnostics["disagreement_reached"])
    out["shortcut"] = sc

    # --- fibrosis vs emphysema: cases with both features; the change lands on g's feature
    swap = clock.time(
        "digin_swap_cohort",
        lambda: ct_stack_set(s.swap_test_n, s.swap_test_seed, phantom=phantom, stack=stack, phantom_overrides=s.swap_phantom),
    )
    truth = {"fibrosis": swap.masks["biomarker"].max(axis=1), "emphysema": swap.masks["distractor"].max(axis=1)}
    both = np.flatnonzero(present(truth["fibrosis"]) & present(truth["emphysema"]))[:n]
    lungs = swap.masks["lungs"].max(axis=1)
    sw: dict[str, Any] = {"n": int(len(both))}
    if len(both):
        pairs = {"fibrosis_over_emphysema": (clean, emph, "emphysema"), "emphysema_over_fibrosis": (emph, clean, "fibrosis")}
        aurocs = []
        for name, (f, g, feature) in pairs.items():
            exp = disagree(f, g, swap.x[both], f"digin_swap_{name}")
            auc = region_auroc(change(exp), truth[feature][both], lungs[both])
            aurocs.append(auc)
            sw[name] = {
                "changed_feature": feature,
                "auroc_in_lungs": auc,
                "reached": exp.diagnostics["disagreement_reached"].tolist(),
                "p_f_result": exp.sweep.probabilities[:, 0, _DEATH].tolist(),
                "p_g_result": _second_p(exp)[:, _DEATH].tolist(),
            }
            reached.append(exp.diagnostics["disagreement_reached"])
        out["model_swap_own_auroc_min"] = float(min(aurocs))
    out["model_swap"] = sw
    if reached:
        out["disagreement_rate"] = float(np.concatenate(reached).mean())
    out["seconds_per_image_batched"] = nanmean(seconds)  # the scenarios above, all starts in one batch
    one = cohort[0.0].x[start[:1]] if len(start) else cohort[0.0].x[:1]
    secs, rss = clock.time("digin_one_image", lambda: _isolated(cfg, sc_cfg, one))
    out["seconds_per_image"], out["peak_rss_gib"] = secs, rss

    # --- neuron visualisation: the clean teacher's top units for "death"
    test = clock.time("digin_test_cohort", lambda: ct_stack_set(s.ct_test_n, s.ct_test_seed, phantom=phantom, stack=stack))
    neuron_spec = get_method("digin-neuron")
    neuron_settings = method_settings(cfg, neuron_spec)
    units = top_units(clean, _DEATH, int(s.digin_top_units))
    from medxai.diffusion.digin import DiffAEChain
    from medxai.diffusion.digin_objectives import NeuronObjective

    objectives = [NeuronObjective(clean, u) for u in units]
    with torch.no_grad():
        real = torch.stack([o.activation(torch.from_numpy(test.x)) for o in objectives], 1).mean(0)  # (U,)
    vis = clock.time(
        "digin_neuron_visualisation",
        lambda: visualise_units(
            clean,
            DiffAEChain(ae, n_slices=test.x.shape[1]),
            torch.from_numpy(test.x[: s.digin_vis_starts]),
            units=units,
            config=neuron_settings.engine,
            seed=int(cfg.get("seed", 0)),
        ),
    )
    rel = vis.activations.mean(1) / real.clamp_min(1e-12)  # (U, U): unit v's activation on unit u's images / v's mean
    own = rel.diagonal()
    others = [float((own[u] / torch.cat([rel[u, :u], rel[u, u + 1 :]]).clamp_min(1e-12)).min()) for u in range(len(units))]
    out["neuron_activation_ratio"] = float(own[0])
    out["neuron_selectivity"] = others[0] if len(units) > 1 else None
    out["neuron_visualisation"] = {
        "units": units,
        "layer": vis.layer,
        "real_mean_activation": real.tolist(),
        "activation_ratio": own.tolist(),
        "selectivity": others,
        "relative_activations": rel.tolist(),
        "start_activation_ratio": (vis.start_activations.mean(1).diagonal() / real.clamp_min(1e-12)).tolist(),
    }

    # --- neuron counterfactuals: the top unit driven down on held-out positives, change inside the lungs
    pos = np.flatnonzero((test.y == 1) & present(test.masks["biomarker"].max(axis=1)))[:n]
    if len(pos):
        ex = build_method(neuron_spec, cfg, clean, {"autoencoder": ae})
        mask = torch.from_numpy(test.masks["lungs"].max(axis=1)[pos][:, None].astype(np.float32))
        exp, secs = clock.time(
            "digin_neuron_counterfactual", lambda: explain_all(ex, test.x[pos], _DEATH, batch=len(pos), mask=mask)
        )
        d = exp.diagnostics
        out["neuron_cf_direction_rate"] = float(np.mean(d["moved_as_intended"]))
        out["neuron_counterfactual"] = {
            "unit": int(d["unit"][0]),
            "direction": neuron_settings.direction,
            "keep": neuron_settings.keep,
            "activation_origin": np.asarray(d["activation_origin"]).tolist(),
            "activation_result": np.asarray(d["activation_result"]).tolist(),
            "p_death_origin": exp.sweep.origin_probabilities[:, _DEATH].tolist(),
            "p_death_result": exp.sweep.probabilities[:, 0, _DEATH].tolist(),
            "seconds_per_image": secs,
            "n": int(len(pos)),
        }
        out["settings"][neuron_spec.name] = exp.parameters
    out["bench_process_peak_rss_gib"] = _peak_rss_gib()  # includes every earlier section of the bench
    out["_teachers"] = {
        "shortcut_p_death_on_starts": _p(short, cohort[0.0].x[start]),
        "clean_p_death_on_starts": _p(clean, cohort[0.0].x[start]),
        "emphysema_teacher_auroc_on_emphysema": auroc(_p(emph, swap.x), present(truth["emphysema"]).astype(int)),
    }
    if progress:
        progress("digin", 1, 1)
    return out


def _p(model: Any, x: np.ndarray) -> list[float]:
    from pipelines.bench_common import probabilities

    return probabilities(model, x)[:, _DEATH].tolist() if len(x) else []


def _second_p(exp: Any) -> np.ndarray:
    """The second model's probabilities ``(N, K)`` on the result."""
    from medxai.explanation import probabilities

    return probabilities(np.asarray(exp.sweep.second_logits)[:, 0], exp.activation)


def digin_fundus(models: Any, s: Any, progress: Any, clock: Any) -> dict[str, Any]:
    """UVCE on the held-out referable fundus crops; returns the ``fundus.uvce`` block."""
    import torch

    from medxai.data import fundus_set
    from medxai.metrics.counterfactual_dr import fov_from_images, l1_outside_lesions, summarise_dr_counterfactuals
    from medxai.registry import get_method
    from pipelines.bench_common import build_method, explain_all, nanmean, present
    from pipelines.models import load_black_box, target_class

    cfg = models.fundus()
    size = int(cfg.get("image_size"))
    target = target_class(cfg)
    test = clock.time("fundus_test_cohort", lambda: fundus_set(s.fundus_test_n, s.fundus_test_seed, size=size))
    lesions = test.masks["lesions"][:, 0]
    idx = np.flatnonzero((test.y == 1) & present(lesions))[: s.digin_n]
    if not len(idx):
        return {"n_cases": 0}
    x = test.x[idx]
    fov = fov_from_images(x)
    spec = get_method("digin-uvce")
    ex = build_method(spec, cfg, load_black_box(cfg), {"diffusion": _generator(cfg, "diffusion")})
    t0 = time.perf_counter()
    # the field of view as the mask, as `medxai explain` passes it (the change is free inside it)
    fov_t = torch.from_numpy(fov[:, None].astype(np.float32))
    exp, secs = clock.time("fundus_digin_uvce", lambda: explain_all(ex, x, target, batch=len(x), mask=fov_t))
    m = summarise_dr_counterfactuals(x, exp, lesions[idx], fov, target=target)
    origin = np.asarray(exp.sweep.origin)
    if progress:
        progress("digin-uvce", 1, 1)
    return {
        "target_rate": m["target_rate"],
        "l1_outside_lesions": m["l1_outside_lesions"],
        # what the optimisation changed, without the DDIM inversion's own error
        "l1_outside_lesions_from_reconstruction": nanmean(
            l1_outside_lesions(origin, exp.sweep.at(1.0), lesions[idx], fov).tolist()
        ),
        "l1_reconstruction_outside_lesions": nanmean(l1_outside_lesions(x, origin, lesions[idx], fov).tolist()),
        "loc_auroc": m["lesion_auroc"],
        "seconds_per_case": secs,
        "wall_seconds": time.perf_counter() - t0,
        "n_cases": int(len(x)),
        "settings": exp.parameters,
    }
