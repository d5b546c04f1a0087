"""``medxai bench``: every explainer against the phantoms' ground truth, in one run.

The run (``run_bench``):

1. **Models.** Each model the benchmark needs lives in ``<models>/`` (default ``<out>/models``) and is
   trained there from the named configs when it is missing (or loaded when it is there: the cache):
   CT teacher, diffusion autoencoder and agent; a second teacher trained on the biased split (the
   shortcut scenario) with its own agent; a re-initialised teacher with its own agent (the
   randomisation check); the fundus DDPM, plain and robust classifiers; NN-Explainer networks.
2. **Held-out cohorts** with seeds no training cohort uses (``configs/bench.yaml``).
3. **CT**: DiffExplainer on every held-out case (flip rate, reconstruction PSNR, heatmap AUROC,
   agent-teacher agreement); Grad-CAM, Grad-CAM++, occlusion, Integrated Gradients, RISE and
   NN-Explainer on the positives (pixel AUROC of the 2D map against the biomarker's projection over
   the four slices, the same ground truth for every method).
4. **Shortcut**: on biased held-out positives whose pacemaker lies in the stack, the share of each
   method's heatmap mass on the marker, for the shortcut teacher and for the clean teacher.
5. **Sanity**: model-parameter randomisation: median Spearman correlation between each method's maps
   for the trained and the re-initialised model (near 0 = the explanation depends on the model).
6. **Fundus**: DVCE (with cone projection, without it, without the distance term) towards "healthy"
   on referable held-out crops (target rate, L1 outside the lesions, lesion AUROC of the difference
   map), the attribution baselines on the plain classifier.
7. ``results.json`` (schema in docs/benchmarks.md), figures and ``report.html``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medxai.config import Config, ConfigError, load_config
from pipelines.provenance import json_safe, package_versions

__all__ = ["BenchSettings", "load_bench_settings", "run_bench", "TARGETS"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench.yaml"

# The issues' targets, shown as met / not met in the report.
TARGETS: dict[str, tuple[str, float]] = {
    "ct.diffexplainer.flip_rate": (">=", 0.95),
    "ct.diffexplainer.recon_psnr_db": (">=", 35.0),
    "ct.diffexplainer.loc_auroc": (">=", 0.90),
    "ct.agent_agreement": (">=", 0.95),
    "fundus.dvce.target_rate": (">=", 0.90),
    "fundus.dvce.l1_outside_lesions": ("<=", 0.02),
    "fundus.dvce.loc_auroc": (">=", 0.90),
}

ATTRIBUTION_METHODS = ("gradcam", "gradcam++", "occlusion", "integrated_gradients", "rise", "nn_explainer")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """One section of ``configs/bench.yaml`` (paths relative to that file)."""

    ct_config: str
    dr_config: str
    ddpm_config: str
    ct_test_seed: int = 7001
    ct_test_n: int = 40
    shortcut: float = 0.9
    shortcut_test_seed: int = 7003
    shortcut_test_n: int = 60
    fundus_test_seed: int = 7002
    fundus_test_n: int = 80
    explain_n: int = 16
    randomization_n: int = 8
    rise_masks: int = 1000
    nn_explainer_steps: int = 400
    dvce_variants: tuple[str, ...] = ("cone", "no_cone", "no_distance")
    figure_cases: int = 2
    ct_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dr_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    train_steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    train_n: Mapping[str, int] = dataclasses.field(default_factory=dict)
    base_dir: str = "."

    def path(self, name: str) -> Path:
        p = Path(getattr(self, name))
        return p if p.is_absolute() else Path(self.base_dir) / p


def load_bench_settings(path: str | os.PathLike[str] | None = None, quick: bool = False) -> BenchSettings:
    """The ``full`` (or ``quick``) section of a bench config as :class:`BenchSettings`."""
    from medxai.config import dataclass_from_mapping

    path = Path(path) if path is not None else DEFAULT_CONFIG
    section = "quick" if quick else "full"
    cfg = load_config(path, {section: dict})
    data = cfg.section(section)
    if "dvce_variants" in data:
        data["dvce_variants"] = tuple(data["dvce_variants"])
    data["base_dir"] = str(path.parent)
    try:
        settings = dataclass_from_mapping(BenchSettings, data, f"{path}: section '{section}'")
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    for name in ("ct_config", "dr_config", "ddpm_config"):
        if not settings.path(name).is_file():
            raise ConfigError(f"{path}: section '{section}': {name} {str(settings.path(name))!r} does not exist.")
    return settings


# ------------------------------------------------------------------------------------------ helpers
class _Clock:
    """Wall-clock seconds of each stage (for results.json) and the progress bars of the explaining stages."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.stages: dict[str, float] = {}
        self.progress = progress

    def maps(self, name: str, explainer: Any, x: np.ndarray, target: int) -> tuple[np.ndarray, float]:
        """:func:`_explain_maps` as the timed stage ``name``, with a progress bar."""
        report = (lambda done, total: self.progress(name, done, total)) if self.progress else None
        return self.time(name, lambda: _explain_maps(explainer, x, target, report=report))

    def time(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t0, 2)


def _nanmean(values: Sequence[float]) -> float:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def _nanmedian(values: Sequence[float]) -> float:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(np.median(a)) if a.size else float("nan")


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from medxai.metrics import pixel_auroc

    labels = np.asarray(labels).astype(bool)
    return pixel_auroc(scores, labels) if 0 < labels.sum() < labels.size else float("nan")


def _maps_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Median over cases of the Spearman correlation of two methods' maps (the randomisation check)."""
    from medxai.metrics import spearman

    return _nanmedian([spearman(x, y) for x, y in zip(a, b)])


def _randomised(model: Any, seed: int) -> Any:
    """A copy of ``model`` with every parameter re-initialised (the model-randomisation check)."""
    from medxai.networks.classifiers import init_with_generator

    import torch

    clone = copy.deepcopy(model)
    return init_with_generator(clone, torch.Generator().manual_seed(seed)).eval()


# ------------------------------------------------------------------------------------------ models
class _Models:
    """Resolves every model file under ``root``: loads it if present, trains it otherwise."""

    def __init__(
        self, root: Path, settings: BenchSettings, progress: Progress | None, clock: _Clock, trust_code: bool = False
    ) -> None:
        self.root, self.s, self.progress, self.clock = root, settings, progress, clock
        self.trust_code = trust_code  # written into every config it hands out (trust_code: true), so loaders see it
        self.trained: list[str] = []
        self.loaded: list[str] = []
        self.configs: dict[str, Config] = {}  # the resolved configs, for results.json

    def _note(self, name: str, path: Path, train: Callable[[], Any]) -> None:
        """Load-or-train bookkeeping: train ``name`` into ``path`` unless it is there already."""
        if name in self.trained or name in self.loaded:
            return
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            self.loaded.append(name)
            return
        logger.info("training %s -> %s", name, path)
        self.clock.time(f"train_{name}", train)
        self.trained.append(name)

    # --- CT -------------------------------------------------------------------------------
    def ct_config(self, which: str = "ct") -> Config:
        """The CT config with the bench's overrides and every weight path under ``<root>/<which>``."""
        from medxai.training.ct import load_ct_config

        cfg = load_ct_config(self.s.path("ct_config"))
        d = self.root / which
        main = self.root / "ct"
        over: dict[str, Any] = dict(self.s.ct_overrides)
        over.update({
            "run_dir": str(d),
            "teacher.path": str(d / "teacher.safetensors"),
            "autoencoder.path": str(main / "autoencoder.safetensors"),  # one autoencoder for every teacher
            "agent.path": str(d / "agent.safetensors"),
        })
        if self.trust_code:
            over["trust_code"] = True
        if which == "ct_shortcut":
            over["data.shortcut"] = float(self.s.shortcut)
        if which == "ct_random":
            over["run_dir"] = str(main)  # the agent of the random teacher is distilled on the main data
        return cfg.with_overrides(over)

    def ct(self, which: str = "ct") -> Config:
        """Make sure the teacher, autoencoder and agent of ``which`` exist; return their config."""
        from medxai.training import ct as ctt

        cfg = self.ct_config(which)
        secs = self.s.train_seconds
        main = self.ct_config("ct")
        self._note("ct_autoencoder", main.path("autoencoder.path"),
                   lambda: ctt.train_autoencoder_from_config(main, self.progress, max_seconds=secs.get("autoencoder")))
        if which == "ct_random":
            self._note("ct_random_teacher", cfg.path("teacher.path"), lambda: self._random_teacher(main, cfg))
        else:
            self._note(f"{which}_teacher", cfg.path("teacher.path"),
                       lambda: ctt.train_teacher_from_config(cfg, self.progress, max_seconds=secs.get("teacher")))
        self._note(f"{which}_agent", cfg.path("agent.path"),
                   lambda: ctt.train_agent_from_config(cfg, self.progress, max_seconds=secs.get("agent")))
        self.configs[which] = cfg
        return cfg

    def _random_teacher(self, main: Config, cfg: Config) -> None:
        from medxai.training.checkpoint import save_weights
        from medxai.training.ct import load_teacher_from_config

        rand = _randomised(load_teacher_from_config(self.ct("ct")), seed=int(main.get("seed")) + 1000)
        save_weights(cfg.path("teacher.path"), rand.state_dict(), {"kind": "teacher", "randomised": True})

    def nn_explainer(self, name: str, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """Network and config of an NN-Explainer for ``model`` (trained on ``x, y`` if missing)."""
        import torch

        from medxai.explainers import NNExplainerConfig, load_nn_explainer, save_nn_explainer, train_nn_explainer

        folder = self.root / f"nn_explainer_{name}"
        probe = NNExplainerConfig(num_classes=2, in_channels=int(x.shape[1]))
        per_epoch = max(1, math.ceil(len(x) * (1 - probe.val_fraction) / probe.batch_size))
        cfg = NNExplainerConfig(
            num_classes=2, in_channels=int(x.shape[1]), multilabel=False, lr=1e-3, seed=0, patience=10**6,
            max_epochs=max(1, math.ceil(self.s.nn_explainer_steps / per_epoch)),
            max_steps_per_epoch=min(per_epoch, self.s.nn_explainer_steps),
        )

        def train() -> None:
            net, hist = train_nn_explainer(model, (torch.from_numpy(x), torch.from_numpy(y)), cfg)
            save_nn_explainer(net, cfg, folder, hist)

        self._note(f"nn_explainer_{name}", folder, train)
        net, loaded_cfg, _ = load_nn_explainer(folder)
        return net, loaded_cfg

    # --- fundus ---------------------------------------------------------------------------
    def fundus(self) -> Config:
        """Make sure the DDPM and both DR classifiers exist; return the DR config pointing at them."""
        from pipelines.commands.train_dr import train_diffusion, train_dr_classifier
        from pipelines.explain_dr import DR_SCHEMA

        d = self.root / "fundus"
        s = self.s
        paths = {k: d / f"{k}.safetensors" for k in ("ddpm", "classifier", "robust_classifier")}
        n = s.train_n.get("fundus")
        self._note("fundus_ddpm", paths["ddpm"], lambda: train_diffusion(
            s.path("ddpm_config"), paths["ddpm"], n=n, seconds=s.train_seconds.get("ddpm"), steps=s.train_steps.get("ddpm")))
        for key, robust in (("classifier", False), ("robust_classifier", True)):
            self._note(f"fundus_{key}", paths[key], lambda key=key, robust=robust: train_dr_classifier(
                s.path("dr_config"), paths[key], robust=robust, n=n, seconds=s.train_seconds.get(key), steps=s.train_steps.get(key),
                trust_code=self.trust_code))
        cfg = load_config(s.path("dr_config"), DR_SCHEMA)
        over = dict(s.dr_overrides)
        over.update({"classifier.path": str(paths["classifier"]), "robust_classifier.path": str(paths["robust_classifier"]),
                     "diffusion.path": str(paths["ddpm"])})
        if self.trust_code:
            over["trust_code"] = True
        self.configs["fundus"] = cfg.with_overrides(over)
        return self.configs["fundus"]


# -------------------------------------------------------------------------------------- explaining
def _attribution_explainers(model: Any, nn: tuple[Any, Any] | None, rise_masks: int) -> dict[str, Any]:
    from medxai.explainers import RISE, GradCAM, GradCAMpp, IntegratedGradients, NNExplainer, Occlusion

    out: dict[str, Any] = {
        "gradcam": GradCAM(model),
        "gradcam++": GradCAMpp(model),
        "occlusion": Occlusion(model),
        "integrated_gradients": IntegratedGradients(model, channel_reduction="abs"),
        "rise": RISE(model, n_masks=rise_masks, seed=0),
    }
    if nn is not None:
        out["nn_explainer"] = NNExplainer(model, nn[0], nn[1])
    return out


def _explain_maps(
    explainer: Any, x: np.ndarray, target: int, batch: int = 4, report: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, float]:
    """2D maps ``(N, S, S)`` of class ``target`` and seconds per case."""
    import torch

    from medxai.targets import ClassTarget

    t0 = time.perf_counter()
    maps = []
    for i in range(0, len(x), batch):
        h = explainer.explain(torch.from_numpy(x[i : i + batch]), ClassTarget(target)).heatmaps_numpy()
        maps.append(h.reshape(len(h), -1, *x.shape[2:]).sum(1))  # one map per input (sum over targets/channels)
        if report is not None:
            report(min(i + batch, len(x)), len(x))
    return np.concatenate(maps), (time.perf_counter() - t0) / max(1, len(x))


def _teacher_probs(model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([
            torch.softmax(model(torch.from_numpy(x[i : i + batch])), 1).numpy() for i in range(0, len(x), batch)
        ])


def _diffexplain(cfg: Config, x: np.ndarray, target: int, batch: int = 8, progress: Progress | None = None) -> tuple[dict[str, Any], float]:
    """Run DiffExplainer on ``x`` in batches; returns the concatenated scores/counterfactuals and s/case."""
    import torch

    from medxai.training.ct import build_explainer

    explainer = build_explainer(cfg)
    parts: list[Any] = []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        parts.append(explainer.explain(torch.from_numpy(x[i : i + batch]), target))
        if progress:
            progress("DiffExplainer", min(i + batch, len(x)), len(x))
    seconds = (time.perf_counter() - t0) / max(1, len(x))
    cat = lambda key, sub: torch.cat([getattr(p, key)[sub] for p in parts])  # noqa: E731
    merged = {
        "heatmaps": torch.cat([p.heatmaps for p in parts]),
        "scores": {k: cat("scores", k) for k in parts[0].scores},
        "counterfactuals": {k: cat("counterfactuals", k) for k in parts[0].counterfactuals},
        "step_sizes": list(explainer.step_sizes),
        "heatmap_step": explainer.heatmap_step,
    }
    return merged, seconds


class _Merged:
    """The attributes :func:`medxai.metrics.counterfactual.summarise_diffexplainer` reads."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.scores = d["scores"]
        self.counterfactuals = d["counterfactuals"]


# --------------------------------------------------------------------------------------------- CT
def _ct_section(models: _Models, s: BenchSettings, figs: "_Figures", progress: Progress | None, clock: _Clock) -> dict[str, Any]:
    import torch

    from medxai.data import ct_stack_set
    from medxai.metrics import mass_on_mask
    from medxai.metrics.counterfactual import heatmap_auroc, summarise_diffexplainer
    from medxai.training.ct import load_teacher_from_config, stack_config

    cfg = models.ct("ct")
    target = int(cfg.get("explainer.target_class"))
    phantom = str(cfg.get("data.phantom", "test"))
    stack = stack_config(cfg)
    test = clock.time("ct_test_cohort", lambda: ct_stack_set(s.ct_test_n, s.ct_test_seed, phantom=phantom, stack=stack))
    teacher = load_teacher_from_config(cfg).eval()
    probs = _teacher_probs(teacher, test.x)
    out: dict[str, Any] = {"models": {
        "teacher_heldout_auroc": _auroc(probs[:, 1], test.y),
        "teacher_heldout_accuracy": float((probs.argmax(1) == test.y).mean()),
        "n_test": int(len(test.y)), "n_test_positive": int(test.y.sum()),
    }}

    # DiffExplainer on every held-out case
    d, secs = clock.time("ct_diffexplainer", lambda: _diffexplain(cfg, test.x, target, progress=progress))
    summ = summarise_diffexplainer(torch.from_numpy(test.x), _Merged(d), target,
                                   torch.from_numpy(test.masks["biomarker"]), torch.from_numpy(test.masks["lungs"]))
    gt2d = test.masks["biomarker"].max(axis=1)  # (N, S, S): projection over the four slices
    heat2d = d["heatmaps"][:, 0].numpy()
    sweep = _sweep(d, target)
    out["diffexplainer"] = {
        "flip_rate": summ["flip_rate"],
        "recon_psnr_db": _nanmean(summ["psnr"]),
        "recon_ssim": _nanmean(summ["ssim"]),
        "loc_auroc": _nanmean(heatmap_auroc(heat2d, gt2d)),
        "loc_auroc_per_slice": _nanmean(summ["heatmap_auroc"]),
        "seconds_per_case": secs,
        "monotonicity": summ["monotonicity"],
        "change_outside_lungs": summ["change_outside_lungs"],
        "score_change_reconstruction": _nanmean(summ["score_change_reconstruction"]),
        "n_cases": int(len(test.x)),
        "sweep": sweep,
    }
    out["agent_agreement"] = summ["agent_teacher_agreement"]

    # attribution baselines on the held-out positives
    pos = np.flatnonzero((test.y == 1) & (gt2d.reshape(len(gt2d), -1).sum(1) > 0))[: s.explain_n]
    if not len(pos):
        raise ValueError(f"the held-out CT cohort (seed {s.ct_test_seed}, {s.ct_test_n} cases) has no positive case with a "
                         "biomarker in the stack; raise ct_test_n in the bench config.")
    train = _load_train(cfg)
    nn = models.nn_explainer("ct", teacher, train["stacks"], train["labels"])
    methods = _attribution_explainers(teacher, nn, s.rise_masks)
    maps: dict[str, np.ndarray] = {"diffexplainer": heat2d[pos]}
    for name, ex in methods.items():
        m, t = clock.maps(f"ct_{name}", ex, test.x[pos], target)
        maps[name] = m
        out[name] = {"loc_auroc": _nanmean(heatmap_auroc(m, gt2d[pos])), "seconds_per_case": t, "n_cases": int(len(pos)),
                     "flip_rate": None, "recon_psnr_db": None}

    # model-parameter randomisation
    r = pos[: s.randomization_n]
    rand_cfg = models.ct("ct_random")
    rand_teacher = load_teacher_from_config(rand_cfg).eval()
    rd, _ = clock.time("ct_random_diffexplainer", lambda: _diffexplain(rand_cfg, test.x[r], target))
    out["diffexplainer"]["randomization_spearman"] = _maps_spearman(heat2d[r], rd["heatmaps"][:, 0].numpy())
    rand_nn = models.nn_explainer("ct_random", rand_teacher, train["stacks"], train["labels"])
    for name, ex in _attribution_explainers(rand_teacher, rand_nn, s.rise_masks).items():
        m, _ = clock.maps(f"ct_random_{name}", ex, test.x[r], target)
        out[name]["randomization_spearman"] = _maps_spearman(maps[name][: len(r)], m)

    figs.ct_strips(test, d, pos[: s.figure_cases], target)
    figs.overlays("ct", "CT heatmaps on held-out positives (slice 2 of the stack; green = planted biomarker)",
                  test.x[pos[: s.figure_cases]][:, 1], {k: v[: s.figure_cases] for k, v in maps.items()}, gt2d[pos[: s.figure_cases]])

    # shortcut scenario
    sc_cfg = models.ct("ct_shortcut")
    sc_teacher = load_teacher_from_config(sc_cfg).eval()
    sc_test = clock.time("ct_shortcut_cohort", lambda: ct_stack_set(
        s.shortcut_test_n, s.shortcut_test_seed, phantom=phantom, stack=stack, shortcut=float(s.shortcut)))
    marker2d = sc_test.masks["marker"].max(axis=1)
    has = marker2d.reshape(len(marker2d), -1).sum(1) > 0
    sc_idx = np.flatnonzero(has & (sc_test.y == 1))[: s.explain_n]
    sc_probs = _teacher_probs(sc_teacher, sc_test.x)
    clean_probs = _teacher_probs(teacher, sc_test.x)
    flipped = has != (sc_test.y == 1)  # cases where the marker contradicts the label
    shortcut: dict[str, Any] = {
        "_n_cases": int(len(sc_idx)),
        "_marker_area_fraction": float(marker2d[sc_idx].mean()) if len(sc_idx) else None,
        "_shortcut_teacher": {"auroc_biased_split": _auroc(sc_probs[:, 1], sc_test.y),
                              "accuracy_where_marker_contradicts_label": float((sc_probs.argmax(1) == sc_test.y)[flipped].mean()) if flipped.any() else None},
        "_clean_teacher": {"auroc_biased_split": _auroc(clean_probs[:, 1], sc_test.y),
                           "accuracy_where_marker_contradicts_label": float((clean_probs.argmax(1) == sc_test.y)[flipped].mean()) if flipped.any() else None},
    }
    if len(sc_idx):
        xs = sc_test.x[sc_idx]
        sc_maps: dict[str, np.ndarray] = {}
        dd, _ = clock.time("ct_shortcut_diffexplainer", lambda: _diffexplain(sc_cfg, xs, target))
        dc, _ = clock.time("ct_shortcut_diffexplainer_clean", lambda: _diffexplain(cfg, xs, target))
        sc_maps["diffexplainer"] = dd["heatmaps"][:, 0].numpy()
        clean_maps = {"diffexplainer": dc["heatmaps"][:, 0].numpy()}
        sc_train = _load_train(sc_cfg)
        sc_nn = models.nn_explainer("ct_shortcut", sc_teacher, sc_train["stacks"], sc_train["labels"])
        for name, ex in _attribution_explainers(sc_teacher, sc_nn, s.rise_masks).items():
            sc_maps[name], _ = clock.maps(f"ct_shortcut_{name}", ex, xs, target)
        for name, ex in methods.items():
            clean_maps[name], _ = clock.maps(f"ct_shortcut_clean_{name}", ex, xs, target)
        for name in sc_maps:
            shortcut[name] = {
                "mass_on_marker": _nanmean([mass_on_mask(h, k) for h, k in zip(sc_maps[name], marker2d[sc_idx])]),
                "mass_on_marker_clean_teacher": _nanmean([mass_on_mask(h, k) for h, k in zip(clean_maps[name], marker2d[sc_idx])]),
            }
        figs.overlays("shortcut", "Shortcut teacher: heatmaps on a biased case (green = pacemaker marker)",
                      xs[: s.figure_cases][:, 1], {k: v[: s.figure_cases] for k, v in sc_maps.items()}, marker2d[sc_idx][: s.figure_cases])
    out["shortcut"] = shortcut
    return out


def _load_train(cfg: Config) -> dict[str, np.ndarray]:
    from medxai.training.ct import load_data

    return load_data(cfg, "train")


def _sweep(d: Mapping[str, Any], target: int) -> dict[str, Any]:
    """Teacher (and agent) probability of ``target`` along the signed step ``-a_k..0..a_k`` per case."""
    import torch

    steps = list(d["step_sizes"])
    sc = d["scores"]

    def prob(logits: Any) -> np.ndarray:
        return torch.softmax(torch.as_tensor(logits), -1)[..., target].numpy()

    teacher = np.concatenate([prob(sc["sweep_minus"])[:, ::-1], prob(sc["reconstruction"])[:, None], prob(sc["sweep_plus"])], axis=1)
    agent = np.concatenate([prob(sc["agent_sweep_minus"])[:, ::-1], prob(sc["agent_query"])[:, None], prob(sc["agent_sweep_plus"])], axis=1)
    return {
        "signed_steps": [-a for a in steps[::-1]] + [0.0] + steps,
        "teacher_target_prob": teacher.tolist(),
        "agent_target_prob": agent.tolist(),
        "query_target_prob": prob(sc["query"]).tolist(),
    }


# ----------------------------------------------------------------------------------------- fundus
def _fundus_section(models: _Models, s: BenchSettings, figs: "_Figures", progress: Progress | None, clock: _Clock) -> dict[str, Any]:
    import torch

    from medxai.data import fundus_set
    from medxai.explainers.dvce import DVCE, dvce_variant
    from medxai.metrics.counterfactual_dr import evaluate_dr_counterfactuals, fov_from_images, lesion_auroc
    from pipelines.explain_dr import _dvce_config, load_dr_models

    cfg = models.fundus()
    dr = load_dr_models(cfg)
    size = int(cfg.get("image_size"))
    target = int(cfg.get("dvce.target_class"))
    test = clock.time("fundus_test_cohort", lambda: fundus_set(s.fundus_test_n, s.fundus_test_seed, size=size))
    probs = _teacher_probs(dr.classifier, test.x)
    rprobs = _teacher_probs(dr.robust, test.x) if dr.robust is not None else None
    out: dict[str, Any] = {"models": {
        "classifier_heldout_auroc": _auroc(probs[:, 1], test.y),
        "robust_classifier_heldout_auroc": _auroc(rprobs[:, 1], test.y) if rprobs is not None else None,
        "n_test": int(len(test.y)), "n_test_referable": int(test.y.sum()),
    }}
    lesions = test.masks["lesions"][:, 0]
    idx = np.flatnonzero((test.y == 1) & (lesions.reshape(len(lesions), -1).sum(1) > 0))[: s.explain_n]
    if not len(idx):
        raise ValueError(f"the held-out fundus cohort (seed {s.fundus_test_seed}, {s.fundus_test_n} images) has no referable "
                         "image with lesions; raise fundus_test_n in the bench config.")
    x = test.x[idx]
    fov = fov_from_images(x)
    fov_t = torch.from_numpy(fov[:, None].astype(np.float32))
    base = _dvce_config(cfg)
    seed = int(cfg.get("seed"))
    cfs: dict[str, np.ndarray] = {}
    heat: dict[str, np.ndarray] = {}
    for i, name in enumerate(s.dvce_variants):
        vcfg = dvce_variant(base, name)
        robust = dr.robust if vcfg.guidance.mode in ("cone", "robust") else None
        dvce = DVCE(dr.classifier, dr.diffusion, robust, config=vcfg, seed=seed)
        t0 = time.perf_counter()
        exp = clock.time(f"fundus_dvce_{name}", lambda dvce=dvce: dvce.explain(torch.from_numpy(x), target, fov_mask=fov_t))
        secs = (time.perf_counter() - t0) / max(1, len(x))
        cf = exp.counterfactuals["dvce"].numpy()
        h = exp.heatmaps_numpy()[:, 0]
        m = evaluate_dr_counterfactuals(x, cf, exp.scores["counterfactual"], target, lesions[idx], h, fov)
        key = "dvce" if name == "cone" else f"dvce_{name}"
        out[key] = {"target_rate": m["target_rate"], "l1_outside_lesions": m["l1_outside_lesions"], "loc_auroc": m["lesion_auroc"],
                    "seconds_per_case": secs, "variant": name, "guidance": vcfg.guidance.to_dict(), "n_cases": int(len(x))}
        cfs[key], heat[key] = cf, h
        if progress:
            progress("DVCE variants", i + 1, len(s.dvce_variants))

    # attribution baselines on the plain classifier
    model = dr.classifier.eval()
    # NN-Explainer's own training images (a cohort neither the classifiers nor the test use)
    train = fundus_set(int(s.train_n.get("nn_explainer_fundus", 200)), s.fundus_test_seed + 100, size=size)
    nn = models.nn_explainer("fundus", model, train.x, train.y)
    maps: dict[str, np.ndarray] = {k: v for k, v in heat.items()}
    for name, ex in _attribution_explainers(model, nn, s.rise_masks).items():
        m_, t = clock.maps(f"fundus_{name}", ex, x, 1)
        maps[name] = m_
        out[name] = {"loc_auroc": _nanmean(lesion_auroc(m_, lesions[idx], fov)), "seconds_per_case": t,
                     "n_cases": int(len(x)), "target_rate": None, "l1_outside_lesions": None}

    # randomisation: both DVCE classifiers and the attribution baselines' classifier re-initialised
    r = np.arange(min(s.randomization_n, len(x)))
    rand = _randomised(model, seed + 1000)
    if "dvce" in out:
        rrob = _randomised(dr.robust, seed + 1001) if dr.robust is not None else None
        vcfg = dvce_variant(base, "cone")
        rexp = clock.time("fundus_random_dvce", lambda: DVCE(rand, dr.diffusion, rrob if vcfg.guidance.mode in ("cone", "robust") else None,
                                                                 config=vcfg, seed=seed).explain(torch.from_numpy(x[r]), target, fov_mask=fov_t[r]))
        out["dvce"]["randomization_spearman"] = _maps_spearman(heat["dvce"][r], rexp.heatmaps_numpy()[:, 0])
    rnn = models.nn_explainer("fundus_random", rand, train.x, train.y)
    for name, ex in _attribution_explainers(rand, rnn, s.rise_masks).items():
        m_, _ = clock.maps(f"fundus_random_{name}", ex, x[r], 1)
        out[name]["randomization_spearman"] = _maps_spearman(maps[name][r], m_)

    figs.fundus_strips(x[: s.figure_cases], {k: v[: s.figure_cases] for k, v in cfs.items()}, lesions[idx][: s.figure_cases])
    figs.overlays("fundus", "Fundus heatmaps on held-out referable crops (green = planted lesions)",
                  x[: s.figure_cases], {k: v[: s.figure_cases] for k, v in maps.items()}, lesions[idx][: s.figure_cases])
    return out


# ---------------------------------------------------------------------------------------- figures
class _Figures:
    """PNG figures under ``<out>/figures`` and their entries for the report."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, str]] = []

    def _add(self, section: str, name: str, title: str, caption: str) -> Path:
        self.entries.append({"section": section, "title": title, "path": f"figures/{name}", "caption": caption})
        return self.dir / name

    def _save_rgb(self, rgb: np.ndarray, path: Path) -> None:
        from PIL import Image

        from atomicfs import atomic_path

        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")

    def ct_strips(self, test: Any, d: Mapping[str, Any], idx: np.ndarray, target: int) -> None:
        from pipelines.explain_ct import strip_image

        tag = f"{d['heatmap_step']:g}"
        cf = d["counterfactuals"]
        for k, i in enumerate(idx):
            rgb = strip_image(test.x[i], cf["reconstruction"][i].numpy(), cf[f"minus_{tag}"][i].numpy(), cf[f"plus_{tag}"][i].numpy())
            rgb = np.kron(rgb, np.ones((2, 2, 1), dtype=np.uint8))  # 2x so the 64-pixel slices are visible
            self._save_rgb(rgb, self._add("ct", f"ct_strip_{k}.png", f"DiffExplainer counterfactuals, held-out case {k + 1}",
                                          f"Rows: the four slices. Columns: query | reconstruction | z- (less likely) | z+ (more likely, a={tag}) | "
                                          "z+ - recon | z- - recon (red brighter, blue darker)."))

    def fundus_strips(self, x: np.ndarray, cfs: Mapping[str, np.ndarray], lesions: np.ndarray) -> None:
        for k in range(len(x)):
            cols = [np.moveaxis(x[k], 0, -1)]
            for cf in cfs.values():
                cols.append(np.moveaxis(cf[k], 0, -1))
            for cf in cfs.values():
                diff = np.abs(cf[k] - x[k]).sum(0)
                cols.append(np.repeat((diff / max(float(diff.max()), 1e-6))[..., None], 3, axis=-1))
            les = np.zeros_like(cols[0])
            les[..., 1] = lesions[k]
            cols.append(les)
            rgb = (np.clip(np.concatenate(cols, axis=1), 0, 1) * 255).round().astype(np.uint8)
            rgb = np.kron(rgb, np.ones((2, 2, 1), dtype=np.uint8))
            names = " | ".join(cfs)
            self._save_rgb(rgb, self._add("fundus", f"fundus_strip_{k}.png", f"DVCE counterfactuals, held-out referable crop {k + 1}",
                                          f"query | counterfactuals ({names}) | |difference| of each | planted lesions (green)"))

    def overlays(self, section: str, title: str, base: np.ndarray, maps: Mapping[str, np.ndarray], gt: np.ndarray) -> None:
        """One figure per case: the image with the ground truth, then each method's map over it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from atomicfs import atomic_path

        for k in range(len(base)):
            img = base[k] if base[k].ndim == 2 else np.moveaxis(base[k], 0, -1)
            names = list(maps)
            fig, axes = plt.subplots(1, len(names) + 1, figsize=(1.9 * (len(names) + 1), 2.2), dpi=90)
            axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            axes[0].contour(gt[k] > 0.5, levels=[0.5], colors="lime", linewidths=0.8)
            axes[0].set_title("image + truth", fontsize=8)
            for ax, name in zip(axes[1:], names):
                h = np.asarray(maps[name][k], dtype=np.float64)
                h = (h - h.min()) / (h.max() - h.min()) if h.max() > h.min() else np.zeros_like(h)
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
                ax.imshow(h, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
                ax.contour(gt[k] > 0.5, levels=[0.5], colors="lime", linewidths=0.6)
                ax.set_title(name, fontsize=8)
            for ax in axes:
                ax.axis("off")
            fig.tight_layout()
            path = self._add(section, f"{section}_overlays_{k}.png", f"{title} ({k + 1})",
                             "Each map min-max scaled; the ground truth is outlined.")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")
            plt.close(fig)


# ------------------------------------------------------------------------------------------- main
def run_bench(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    models_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    only: str | None = None,
    pretrained: bool = False,
    progress: Progress | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Run the benchmark into ``out``; returns the results (also in ``out/results.json``).

    Parameters
    ----------
    out : path
        Output folder: ``results.json``, ``report.html``, ``figures/`` (and ``models/`` by default).
    quick : bool
        Tiny sizes and few cases (the ``quick`` section of the bench config).
    models_dir : path, optional
        Where the models are cached (loaded if present, trained otherwise); default ``out/models``.
    config : path, optional
        Bench config (default ``configs/bench.yaml``).
    only : {"ct", "fundus"}, optional
        Run one half.
    pretrained : bool
        Start the model cache with the shipped phantom models (``medxai/pretrained``) instead of
        training teacher, autoencoder, agent, DDPM and classifiers (the rest is still trained).
    trust_code : bool
        Allow model classes / MONAI bundle code outside the allow-list of :mod:`medxai.trust` in the
        CT and DR configs (``--trust-code``; ``trust_code: true`` at the top of the bench config counts too).
    """
    from medxai.training.checkpoint import write_json_atomic
    from medxai.trust import trusts_code
    from pipelines.report import write_report

    if only not in (None, "ct", "fundus"):
        raise ValueError(f"--only must be 'ct' or 'fundus', got {only!r}.")
    settings = load_bench_settings(config, quick)
    trust_code = trusts_code(load_config(Path(config) if config is not None else DEFAULT_CONFIG), trust_code)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(models_dir) if models_dir is not None else out_dir / "models"
    root.mkdir(parents=True, exist_ok=True)
    seeded: list[str] = []
    if pretrained:
        from pipelines.pretrained import seed_models_dir

        seeded = seed_models_dir(root)
    for stale in ("results.json", "report.html"):  # a failed run must not leave an old, finished-looking report
        (out_dir / stale).unlink(missing_ok=True)
    if (out_dir / "figures").is_dir():
        shutil.rmtree(out_dir / "figures")
    clock = _Clock(progress)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    models = _Models(root, settings, progress, clock, trust_code)
    figs = _Figures(out_dir)
    results: dict[str, Any] = {"quick": quick, "started": started}
    if only in (None, "ct"):
        results["ct"] = _ct_section(models, settings, figs, progress, clock)
    if only in (None, "fundus"):
        results["fundus"] = _fundus_section(models, settings, figs, progress, clock)
    results.update({
        "seconds": round(time.perf_counter() - t0, 1),
        "stage_seconds": clock.stages,
        "models": {"dir": str(root), "trained": models.trained, "loaded": models.loaded, "pretrained": pretrained,
                   "copied_from_package": seeded},
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "config": {"bench": dataclasses.asdict(settings), **{k: c.to_dict() for k, c in models.configs.items()}},
        "versions": package_versions(),
    })
    results = json_safe(results)
    write_json_atomic(out_dir / "results.json", results)
    write_report(results, out_dir, figs.entries, title="medxai benchmark" + (" (quick)" if quick else ""))
    return results

