"""``medxai bench``: every registered explainer against the phantoms' ground truth, in one run.

The methods come from the registry (:mod:`medxai.registry`): each half runs every method registered
for its config's ``input`` kind, each built by ``spec.build`` with the settings of the config section
named after it (the bench config's ``methods:`` and ``ct_overrides`` / ``dr_overrides`` override
them) and the models :mod:`pipelines.models` loads for it. A method added as one file in
``medxai/explainers`` is benchmarked without touching this module. Counterfactual methods get the
counterfactual metrics, the others (attribution methods) the localisation metrics; a method whose
models neither the config nor the bench provides is skipped and listed in ``results["methods"]``.

The run (``run_bench``):

1. **Models.** Each model the benchmark needs lives in ``<models>/`` (default ``<out>/models``) and is
   trained there from the named configs when it is missing (or loaded when it is there: the cache):
   CT teacher, diffusion autoencoder and agent; a second teacher trained on the biased split (the
   shortcut scenario) and a third on the emphysema label (the model swap), each with its own agent;
   a re-initialised teacher with its own agent (the randomisation check); the fundus DDPM, plain and
   robust classifiers, and a plain + robust pair per model-swap lesion type; NN-Explainer networks
   (the ``nn_explainer`` model of every method that needs one).
2. **Held-out cohorts** with seeds no training cohort uses (``configs/bench.yaml``).
3. **CT** (``input: ct_stack``): each counterfactual method (DiffExplainer) on every held-out case
   (flip rate, reconstruction PSNR, heatmap AUROC, agent-teacher agreement); each attribution method
   (Grad-CAM, Grad-CAM++, occlusion, Integrated Gradients, RISE, NN-Explainer, ...) on the positives
   (pixel AUROC of the 2D map against the biomarker's projection over the four slices, the same
   ground truth for every method).
4. **Shortcut**: a teacher trained where the pacemaker always follows the label (``shortcut_train``;
   the lead made thick enough for the stack, ``shortcut_phantom``); on biased held-out positives whose
   pacemaker lies in the stack, the share of each method's heatmap mass on the marker (and that over
   the uniform share), for the shortcut teacher and for the clean teacher; the shortcut teacher's
   accuracy where marker and label disagree; whether the DiffAE reconstruction still shows the marker.
5. **Sanity**, done fairly (METHODS.md section 9): every model a method consults re-initialised;
   Spearman of the trained and randomised maps inside the lungs and over the whole image, the
   randomised model's localisation AUROC, and whether the randomised model decides at all.
6. **Model swap**: a second CT teacher whose label is the distractor (emphysema), with its own agent,
   and every CT method explained for both teachers on the same held-out images; each map scored
   against its own teacher's feature and against the other's (fundus likewise, with classifiers of
   haemorrhages only and of exudates only).
7. **Fundus** (``input: fundus``): each counterfactual method (DVCE with cone projection, without it,
   without the distance term, the start variants) towards "healthy" on referable held-out crops
   (target rate, L1 outside the lesions, lesion AUROC of the difference map), the attribution methods
   on the plain classifier; randomisation and model swap as for CT.
8. ``results.json`` (schema in docs/benchmarks.md), figures and ``report.html``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medxai.config import Config, ConfigError, load_config
from medxai.progress import ProgressFn
from pipelines.bench_common import auroc, build_method, explain_all, nanmean, nanmedian, present, probabilities, region_auroc
from pipelines.provenance import json_safe, package_versions

__all__ = [
    "BenchMethods",
    "BenchSettings",
    "ModelCache",
    "StageClock",
    "TARGETS",
    "FAITHFULNESS_TARGETS",
    "run_targets",
    "bench_methods",
    "explain_all",
    "explain_maps",
    "load_bench_settings",
    "method_models",
    "run_bench",
]

logger = logging.getLogger(__name__)

Progress = ProgressFn  # the one progress-callback type (medxai.progress)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench.yaml"

# The issues' targets, shown as met / not met in the report.
TARGETS: dict[str, tuple[str, float]] = {
    "ct.diffexplainer.flip_rate": (">=", 0.95),
    "ct.diffexplainer.recon_psnr_db": (">=", 40.0),
    "ct.diffexplainer.change_outside_lungs.outside_share": ("<=", 0.30),
    "ct.diffexplainer.loc_auroc": (">=", 0.90),
    "ct.agent_agreement": (">=", 0.95),
    "fundus.dvce.target_rate": (">=", 0.90),
    "fundus.dvce.l1_outside_lesions": ("<=", 0.010),
    "fundus.dvce.zero_guidance_psnr_db": (">=", 40.0),
    "fundus.dvce_unguided_inversion_start.psnr_db": (">=", 40.0),
    "fundus.dvce.loc_auroc": (">=", 0.90),
    "ct.shortcut._shortcut_teacher.accuracy_where_marker_contradicts_label": ("<=", 0.30),
    "ct.shortcut.diffexplainer.mass_ratio_uniform": (">=", 10.0),
    "ct.shortcut.diffexplainer.mass_ratio_uniform_clean_teacher": ("<=", 2.0),
    "ct.digin.disagreement_rate": (">=", 0.80),
    "ct.digin.shortcut_marker_mass_ratio": (">=", 10.0),
    "ct.digin.model_swap_own_auroc_min": (">=", 0.85),
    "ct.digin.neuron_activation_ratio": (">=", 5.0),
    "ct.digin.neuron_selectivity": (">=", 3.0),
    "ct.digin.neuron_cf_direction_rate": (">=", 0.90),
    "ct.digin.seconds_per_image": ("<=", 60.0),
    "ct.digin.peak_rss_gib": ("<=", 2.0),
    "fundus.uvce.target_rate": (">=", 0.90),
    "fundus.uvce.l1_outside_lesions": ("<=", 0.02),
    "cohort.fibrosis.expected_rank": ("<=", 1),
    "cohort.fibrosis.expected_q": ("<", 0.05),
    "cohort.emphysema.expected_rank": ("<=", 1),
    "cohort.emphysema.expected_q": ("<", 0.05),
    "cohort.shortcut.expected_rank": ("<=", 1),
    "cohort.fundus.expected_rank": ("<=", 1),
    "cohort.fundus.expected_q": ("<", 0.05),
    "cohort.report_seconds": ("<=", 120.0),
}

#: faithfulness rules (METHODS.md section 9) applied to EVERY method a run measured, so the report shows
#: which pass: ``(block, key) -> rule``, block ``model_swap`` = ``<half>.model_swap.<method>``, block
#: ``randomization`` = ``<half>.<method>.randomization``
FAITHFULNESS_TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("model_swap", "own_auroc_min"): (">=", 0.85),
    ("model_swap", "cross_auroc_max"): ("<=", 0.60),
    ("randomization", "random_model_auroc"): ("<=", 0.60),
    ("randomization", "spearman_in_mask"): ("<=", 0.30),
}


def run_targets(results: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """:data:`TARGETS` plus the :data:`FAITHFULNESS_TARGETS` of every method ``results`` holds figures for."""
    out = dict(TARGETS)
    for half in ("ct", "fundus"):
        block = results.get(half)
        if not isinstance(block, Mapping):
            continue
        for method in block.get("model_swap", {}):
            if not str(method).startswith("_"):
                for (kind, key), rule in FAITHFULNESS_TARGETS.items():
                    if kind == "model_swap":
                        out[f"{half}.model_swap.{method}.{key}"] = rule
        for method, row in block.items():
            if isinstance(row, Mapping) and isinstance(row.get("randomization"), Mapping):
                for (kind, key), rule in FAITHFULNESS_TARGETS.items():
                    if kind == "randomization":
                        out[f"{half}.{method}.randomization.{key}"] = rule
    return out


#: the class the fundus attribution maps explain: referable DR, the class the planted lesions drive
#: (the counterfactual methods move towards the config's ``target_class``, "healthy")
FUNDUS_EVIDENCE_CLASS = 1
#: extra models that are classifiers of the black box's task: re-initialised with it in the randomisation check
_CLASSIFIER_ROLES = ("robust_model",)
#: extra models the bench makes itself instead of loading them from a config
_BENCH_ROLES = ("nn_explainer",)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """One section of ``configs/bench.yaml`` (paths relative to that file).

    ``methods`` maps a registered method name to settings that override the CT and DR configs'
    section of that name (e.g. ``{"rise": {"n_masks": 500}}``); ``variants`` runs a counterfactual
    method a second time with other settings, reported under the variant's name in the same run
    (``{"diffexplainer_edict": {"method": "diffexplainer", "settings": {"sampler": "edict"}}}``);
    ``ct_overrides`` / ``dr_overrides`` are dotted fields of one config
    (e.g. ``{"diffexplainer.encode_steps": 4}``) and win over both.
    """

    ct_config: str
    dr_config: str
    ddpm_config: str
    ct_test_seed: int = 7001
    ct_test_n: int = 40
    shortcut: float = 0.9
    shortcut_train: float | None = None
    shortcut_phantom: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    shortcut_test_seed: int = 7003
    shortcut_test_n: int = 60
    swap_phantom: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    swap_test_seed: int = 7004
    swap_test_n: int = 48
    fundus_swap_labels: tuple[str, ...] = ("haemorrhages", "exudates")
    fundus_swap_phantom: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"lesion_mix": "independent"})
    #: training steps of the model-swap DR classifiers (``classifier``, ``robust_classifier``; the robust
    #: one is the plain one fine-tuned adversarially); missing: ``train_steps`` / the DR config's
    fundus_swap_steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    fundus_swap_test_seed: int = 7005
    fundus_swap_test_n: int = 120
    fundus_test_seed: int = 7002
    fundus_test_n: int = 80
    explain_n: int = 16
    randomization_n: int = 8
    nn_explainer_steps: int = 400
    dvce_variants: tuple[str, ...] = ("cone", "no_cone", "no_distance")
    figure_cases: int = 2
    methods: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    ct_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dr_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: per CT model set (``ct_shortcut``, ``ct_emphysema``): fields of its config's ``training.teacher``
    teacher_training: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    #: DiG-IN (pipelines.bench_digin): starts per scenario, the held-out cohort the shortcut starts come
    #: from (its seed and size), how many top units are visualised and from how many samples each
    digin_n: int = 4
    digin_seed: int = 7006
    digin_cohort_n: int = 40
    digin_top_units: int = 3
    digin_vis_starts: int = 2
    #: the cohort report's known-answer scenarios (pipelines.bench_cohort): patients per scenario, the
    #: held-out seed of each, bootstrap resamples
    cohort_n: int = 100
    cohort_seeds: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"fibrosis": 7007, "emphysema": 7008, "shortcut": 7009, "fundus": 7010}
    )
    cohort_resamples: int = 2000
    train_steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    train_n: Mapping[str, int] = dataclasses.field(default_factory=dict)
    base_dir: str = "."

    def path(self, name: str) -> Path:
        p = Path(getattr(self, name))
        return p if p.is_absolute() else Path(self.base_dir) / p


#: old bench-config fields -> what replaces them (refused with this hint, never silently ignored)
_RENAMED_FIELDS = {"rise_masks": "methods: {rise: {n_masks: N}}"}
#: old config sections an override may still name -> the section that replaced them
_RENAMED_SECTIONS = {"explainer": "diffexplainer"}


def _check_overrides(where: str, name: str, overrides: Mapping[str, Any]) -> None:
    for key in overrides:
        head, _, rest = str(key).partition(".")
        if rest == "target_class" and head in ("explainer", "diffexplainer", "dvce"):
            raise ConfigError(
                f"{where}: {name} field '{key}' moved to the top level of the config; write 'target_class' instead."
            )
        if head in _RENAMED_SECTIONS:
            raise ConfigError(
                f"{where}: {name} field '{key}': section '{head}' was renamed '{_RENAMED_SECTIONS[head]}'; "
                f"write '{_RENAMED_SECTIONS[head]}.{rest}'."
            )


def load_bench_settings(path: str | os.PathLike[str] | None = None, quick: bool = False) -> BenchSettings:
    """The ``full`` (or ``quick``) section of a bench config as :class:`BenchSettings`."""
    from medxai.config import dataclass_from_mapping

    path = Path(path) if path is not None else DEFAULT_CONFIG
    section = "quick" if quick else "full"
    cfg = load_config(path, {section: dict})
    data = cfg.section(section)
    where = f"{path}: section '{section}'"
    for old, new in _RENAMED_FIELDS.items():
        if old in data:
            raise ConfigError(f"{where}: field '{old}' is no longer read; write {new} instead.")
    for key in ("dvce_variants", "fundus_swap_labels"):
        if key in data:
            data[key] = tuple(data[key])
    data["base_dir"] = str(path.parent)
    try:
        settings = dataclass_from_mapping(BenchSettings, data, where)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    for name in ("ct_config", "dr_config", "ddpm_config"):
        if not settings.path(name).is_file():
            raise ConfigError(f"{where}: {name} {str(settings.path(name))!r} does not exist.")
    if not isinstance(settings.methods, Mapping) or not all(isinstance(v, Mapping) for v in settings.methods.values()):
        raise ConfigError(
            f"{where}: 'methods' must map method names to settings mappings, e.g. "
            "{rise: {n_masks: 500}}, got " + repr(settings.methods) + "."
        )
    for vname, variant in settings.variants.items():
        if (
            not isinstance(variant, Mapping)
            or set(variant) - {"method", "settings"}
            or not isinstance(variant.get("method"), str)
            or not isinstance(variant.get("settings", {}), Mapping)
        ):
            raise ConfigError(
                f"{where}: variant {vname!r} must be {{method: NAME, settings: {{...}}}}, e.g. "
                "{method: diffexplainer, settings: {sampler: ddim}}; got " + repr(variant) + "."
            )
    _check_overrides(where, "ct_overrides", settings.ct_overrides)
    _check_overrides(where, "dr_overrides", settings.dr_overrides)
    _check_overrides(where, "methods", {f"{k}.x": v for k, v in settings.methods.items()})
    return settings


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """``("rise", {"n_masks": 5})`` -> ``{"rise.n_masks": 5}`` (nested mappings flattened too)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}", v))
        return out
    return {prefix: value}


# ------------------------------------------------------------------------------------------ helpers
class StageClock:
    """Wall-clock seconds of each stage (for results.json) and the progress bars of the explaining stages."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.stages: dict[str, float] = {}
        self.progress = progress

    def maps(self, name: str, explainer: Any, x: np.ndarray, target: int) -> tuple[np.ndarray, float]:
        """:func:`explain_maps` as the timed stage ``name``, with a progress bar."""
        report = (lambda done, total: self.progress(name, done, total)) if self.progress else None
        return self.time(name, lambda: explain_maps(explainer, x, target, report=report))

    def time(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t0, 2)


def _maps_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Median over cases of the Spearman correlation of two methods' maps (the randomisation check)."""
    from medxai.metrics import spearman

    return nanmedian([spearman(x, y) for x, y in zip(a, b)])


def _spearman_in(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Median over cases of the Spearman correlation of two maps ``(N, S, S)`` inside ``region``
    ``(N, S, S)`` (the lungs, the field of view): change the model never looks at cannot carry it."""
    from medxai.metrics import spearman

    return nanmedian([spearman(x[m], y[m]) for x, y, m in zip(a, b, np.asarray(region) > 0.5) if m.sum() > 1])


def _decision_changed_rate(probs: np.ndarray) -> float:
    """Share of cases whose predicted class differs from the model's most frequent prediction: 0 when
    the model says the same for every image (a re-initialised DenseNet), so there is no decision to explain."""
    pred = np.asarray(probs).argmax(1)
    return float((pred != np.bincount(pred).argmax()).mean()) if len(pred) else float("nan")


def _randomization(
    trained: np.ndarray, random: np.ndarray, truth: np.ndarray, region: np.ndarray, random_probs: np.ndarray
) -> dict[str, Any]:
    """The model-randomisation figures of one method (METHODS.md section 9): maps of the trained and of
    the randomised model (every model the method consults re-initialised) on the same cases."""
    return {
        "spearman_in_mask": _spearman_in(trained, random, region),
        "spearman_whole": _maps_spearman(trained, random),
        "random_model_auroc": region_auroc(random, truth, region),
        "trained_model_auroc": region_auroc(trained, truth, region),
        "decision_changed_rate": _decision_changed_rate(random_probs),
        "n_cases": int(len(trained)),
    }


def _swap_scores(maps: Mapping[str, np.ndarray], truths: Mapping[str, np.ndarray], region: np.ndarray) -> dict[str, Any]:
    """Model-swap figures of one method: each model's maps ``(N, S, S)`` scored against its OWN feature
    and against the OTHER model's (region AUROC), and how alike the two models' maps are in the region."""
    a, b = list(maps)
    other = {a: b, b: a}
    own = {m: region_auroc(maps[m], truths[m], region) for m in (a, b)}
    cross = {m: region_auroc(maps[m], truths[other[m]], region) for m in (a, b)}
    return {
        "own_auroc": own,
        "cross_auroc": cross,
        # NaN (no case with the feature in the region) must not hide behind min / max
        "own_auroc_min": float(np.min(list(own.values()))),
        "cross_auroc_max": float(np.max(list(cross.values()))),
        "spearman_in_mask": _spearman_in(maps[a], maps[b], region),
        "n_cases": int(len(maps[a])),
    }


def _marker_contrast(x: np.ndarray, recon: np.ndarray, marker: np.ndarray) -> dict[str, float]:
    """How visible the marker is in the queries ``x`` and in their reconstructions ``recon`` (both
    ``(N, C, S, S)``, marker mask the same shape): mean intensity on the marker minus the mean of a
    2-pixel ring around it, averaged over cases; ``ratio`` = reconstruction / query (1: fully drawn)."""
    from scipy import ndimage

    in_plane = np.zeros((3, 3, 3), dtype=bool)  # the stack's slices lie far apart: grow within each slice
    in_plane[1] = ndimage.generate_binary_structure(2, 1)

    def contrast(img: np.ndarray) -> float:
        vals = []
        for im, m in zip(img, np.asarray(marker) > 0.5):
            ring = ndimage.binary_dilation(m, iterations=2, structure=in_plane) & ~m
            if m.any() and ring.any():
                vals.append(float(im[m].mean() - im[ring].mean()))
        return nanmean(vals)

    q, r = contrast(x), contrast(recon)
    return {"query_contrast": q, "reconstruction_contrast": r, "ratio": r / q if q else float("nan")}


def _randomised(model: Any, seed: int) -> Any:
    """A copy of ``model`` with every parameter re-initialised (the model-randomisation check)."""
    import torch

    from medxai.networks.classifiers import init_with_generator

    clone = copy.deepcopy(model)
    return init_with_generator(clone, torch.Generator().manual_seed(seed)).eval()


# ------------------------------------------------------------------------------------------ models
class ModelCache:
    """Resolves every model file under ``root``: loads it if present, trains it otherwise.

    The configs it hands out point every model section at ``root`` (and drop the sections'
    ``pretrained`` fallbacks: the bench uses only what is in its cache, see ``--pretrained``).
    """

    def __init__(
        self, root: Path, settings: BenchSettings, progress: Progress | None, clock: StageClock, trust_code: bool = False
    ) -> None:
        self.root, self.s, self.progress, self.clock = Path(root).absolute(), settings, progress, clock
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

    def _overrides(self, cfg: Config, specific: Mapping[str, Any], paths: Mapping[str, Path]) -> dict[str, Any]:
        """The bench's ``methods`` settings, then ``specific`` (ct/dr_overrides), then the model paths
        (every ``pretrained`` fallback off) and ``trust_code``."""
        over: dict[str, Any] = {}
        for name, values in self.s.methods.items():
            over.update(_flat(name, values))
        over.update(specific)
        for field, path in paths.items():
            over[field] = str(path)
            section = field.rsplit(".", 1)[0]
            if cfg.has(section):
                over[f"{section}.pretrained"] = None
        if self.trust_code:
            over["trust_code"] = True
        return over

    # --- CT -------------------------------------------------------------------------------
    def ct_config(self, which: str = "ct") -> Config:
        """The CT config with the bench's overrides and every weight path under ``<root>/<which>``."""
        from medxai.training.ct import load_ct_config

        cfg = load_ct_config(self.s.path("ct_config"))
        d = self.root / which
        main = self.root / "ct"
        over = self._overrides(
            cfg,
            self.s.ct_overrides,
            {
                "teacher.path": d / "teacher.safetensors",
                "autoencoder.path": main / "autoencoder.safetensors",  # one autoencoder for every teacher
                "agent.path": d / "agent.safetensors",
                "nn_explainer_network.path": self.root / f"nn_explainer_{which}",  # what nn_explainer() trains
            },
        )
        over["run_dir"] = str(d)
        if which == "ct_shortcut":
            over["data.shortcut"] = float(self.s.shortcut if self.s.shortcut_train is None else self.s.shortcut_train)
            over["data.phantom_overrides"] = dict(self.s.shortcut_phantom)
        if which == "ct_emphysema":  # the model-swap teacher: its label is the distractor, not the outcome
            over["data.label"] = "emphysema"
            over["data.phantom_overrides"] = dict(self.s.swap_phantom)
        for key, value in dict(self.s.teacher_training.get(which, {})).items():
            over[f"training.teacher.{key}"] = value
        if which == "ct_random":
            over["run_dir"] = str(main)  # the agent of the random teacher is distilled on the main data
        return cfg.with_overrides(over)

    def ct(self, which: str = "ct") -> Config:
        """Make sure the teacher, autoencoder and agent of ``which`` exist; return their config."""
        from medxai.training import ct as ctt

        cfg = self.ct_config(which)
        secs = self.s.train_seconds
        main = self.ct_config("ct")
        self._note(
            "ct_autoencoder",
            main.path("autoencoder.path"),
            lambda: ctt.train_autoencoder_from_config(main, self.progress, max_seconds=secs.get("autoencoder")),
        )
        if which == "ct_random":
            self._note("ct_random_teacher", cfg.path("teacher.path"), lambda: self._random_teacher(main, cfg))
        else:
            self._note(
                f"{which}_teacher",
                cfg.path("teacher.path"),
                lambda: ctt.train_teacher_from_config(cfg, self.progress, max_seconds=secs.get("teacher")),
            )
        self._note(
            f"{which}_agent",
            cfg.path("agent.path"),
            lambda: ctt.train_agent_from_config(cfg, self.progress, max_seconds=secs.get("agent")),
        )
        self.configs[which] = cfg
        return cfg

    def _random_teacher(self, main: Config, cfg: Config) -> None:
        from medxai.training.checkpoint import save_weights
        from pipelines.models import load_black_box

        rand = _randomised(load_black_box(self.ct("ct")), seed=int(main.get("seed")) + 1000)
        save_weights(cfg.path("teacher.path"), rand.state_dict(), {"kind": "teacher", "randomised": True})

    def nn_explainer(self, name: str, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """Network and config of an NN-Explainer for ``model`` (trained on ``x, y`` if missing), the
        ``nn_explainer`` model of the methods that need one."""
        import torch

        from medxai.explainers import NNExplainerConfig, load_nn_explainer, save_nn_explainer, train_nn_explainer

        folder = self.root / f"nn_explainer_{name}"
        probe = NNExplainerConfig(num_classes=2, in_channels=int(x.shape[1]))
        per_epoch = max(1, math.ceil(len(x) * (1 - probe.val_fraction) / probe.batch_size))
        cfg = NNExplainerConfig(
            num_classes=2,
            in_channels=int(x.shape[1]),
            multilabel=False,
            lr=1e-3,
            seed=0,
            patience=10**6,
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
        from medxai.config import DR_FUNDUS_SCHEMA
        from pipelines.train_dr import train_diffusion

        d = self.root / "fundus"
        s = self.s
        paths = {k: d / f"{k}.safetensors" for k in ("ddpm", "classifier", "robust_classifier")}
        n = s.train_n.get("fundus")
        self._note(
            "fundus_ddpm",
            paths["ddpm"],
            lambda: train_diffusion(
                s.path("ddpm_config"), paths["ddpm"], n=n, seconds=s.train_seconds.get("ddpm"), steps=s.train_steps.get("ddpm")
            ),
        )
        self._dr_classifiers("fundus", paths, dict(s.train_steps))
        cfg = load_config(s.path("dr_config"), DR_FUNDUS_SCHEMA)
        over = self._overrides(
            cfg,
            s.dr_overrides,
            {
                "classifier.path": paths["classifier"],
                "robust_classifier.path": paths["robust_classifier"],
                "diffusion.path": paths["ddpm"],
                "nn_explainer_network.path": self.root / "nn_explainer_fundus",
            },
        )
        self.configs["fundus"] = cfg.with_overrides(over)
        return self.configs["fundus"]

    def _dr_classifiers(
        self,
        prefix: str,
        paths: Mapping[str, Path],
        steps: Mapping[str, int],
        robust_from_plain: bool = False,
        **kwargs: Any,
    ) -> None:
        """Load-or-train the plain and the robust DR classifier into ``paths``; ``robust_from_plain``:
        the robust one is the plain one fine-tuned adversarially; ``kwargs`` go to
        :func:`~pipelines.train_dr.train_dr_classifier` (``label`` / ``phantom_overrides``)."""
        from pipelines.train_dr import train_dr_classifier

        s = self.s
        for key, robust in (("classifier", False), ("robust_classifier", True)):
            init = paths["classifier"] if robust and robust_from_plain else None
            self._note(
                f"{prefix}_{key}",
                paths[key],
                lambda key=key, robust=robust, init=init: train_dr_classifier(
                    s.path("dr_config"),
                    paths[key],
                    robust=robust,
                    n=s.train_n.get("fundus"),
                    seconds=s.train_seconds.get(key),
                    steps=steps.get(key),
                    trust_code=self.trust_code,
                    init=init,
                    **kwargs,
                ),
            )

    def fundus_swap(self, label: str) -> Config:
        """The DR config with a plain and a robust classifier whose label is ``label`` (one lesion type
        present, :data:`medxai.data.FUNDUS_LABELS`): the model-swap classifiers, trained if missing."""
        base = self.fundus()
        s, d = self.s, self.root / f"fundus_{label}"
        paths = {k: d / f"{k}.safetensors" for k in ("classifier", "robust_classifier")}
        # the robust one starts from the plain one (adversarial fine-tuning: a fraction of the steps)
        steps = {**s.train_steps, **s.fundus_swap_steps}
        self._dr_classifiers(
            f"fundus_{label}",
            paths,
            steps,
            robust_from_plain=True,
            label=label,
            phantom_overrides=dict(s.fundus_swap_phantom),
        )
        cfg = base.with_overrides(
            {
                "classifier.path": str(paths["classifier"]),
                "robust_classifier.path": str(paths["robust_classifier"]),
                "nn_explainer_network.path": str(self.root / f"nn_explainer_fundus_{label}"),
            }
        )
        self.configs[f"fundus_{label}"] = cfg
        return cfg


# -------------------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class BenchMethods:
    """The registered methods one half of the bench runs (registration order)."""

    counterfactual: tuple[Any, ...]
    attribution: tuple[Any, ...]
    #: method name -> why it was not run
    skipped: dict[str, str]


def bench_methods(cfg: Config) -> BenchMethods:
    """Every method registered for ``cfg``'s ``input`` kind whose extra models the config names (or the
    bench makes: the NN-Explainer network), split into counterfactual and attribution methods."""
    from medxai.registry import MODEL_SECTIONS, methods
    from pipelines.bench_digin import DIGIN_METHODS
    from pipelines.models import input_kind

    kind = input_kind(cfg)
    run, skipped = [], {}
    for spec in methods(kind):
        if spec.name in DIGIN_METHODS:
            skipped[spec.name] = "an optimisation per image: measured in its own scenarios (ct.digin, fundus.uvce)"
            continue
        missing = [MODEL_SECTIONS[r] for r in spec.needs if r not in _BENCH_ROLES and not cfg.has(MODEL_SECTIONS[r])]
        if missing:
            skipped[spec.name] = f"{cfg.source} has no section {', '.join(missing)} for the model(s) it needs"
            logger.warning("bench: %s skipped on %s inputs: %s", spec.name, kind, skipped[spec.name])
        else:
            run.append(spec)
    return BenchMethods(tuple(s for s in run if s.counterfactual), tuple(s for s in run if not s.counterfactual), skipped)


def method_models(spec: Any, cfg: Config, provided: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The extra models of ``spec``: those in ``provided`` (``role -> model``, e.g. the bench's own
    NN-Explainer or randomised classifiers), the rest loaded from ``cfg`` by :mod:`pipelines.models`."""
    from pipelines.models import load_method_models

    return load_method_models(cfg, spec, provided=provided)


def _attribution_explainers(
    specs: Sequence[Any], cfg: Config, black_box: Any, nn: Callable[[], tuple[Any, Any]]
) -> dict[str, Any]:
    """The attribution methods for ``black_box``; ``nn()`` makes the NN-Explainer network, called
    only when a method needs one."""
    provided: dict[str, Any] = {}
    if any("nn_explainer" in (*s.needs, *s.optional) for s in specs):
        provided["nn_explainer"] = nn()
    return {s.name: build_method(s, cfg, black_box, method_models(s, cfg, provided)) for s in specs}


def explain_maps(
    explainer: Any, x: np.ndarray, target: int, batch: int = 4, report: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, float]:
    """2D maps ``(N, S, S)`` of class ``target`` (summed over the explanation's targets) and seconds per case."""
    exp, secs = explain_all(explainer, x, target, batch, report=report)
    return exp.heatmaps_numpy().reshape(len(x), -1, *x.shape[2:]).sum(1), secs


def _maps(exp: Any) -> np.ndarray:
    """One 2D map per case ``(N, S, S)``: the heatmaps summed over targets."""
    return exp.heatmaps_numpy().sum(1)


def _sweep_curves(exp: Any, target: int) -> dict[str, Any]:
    """Black-box (and agent) PROBABILITY of ``target`` along the signed steps ``-a_k..0..a_k`` per case;
    step 0 is the sweep's origin (the reconstruction; the query when it has none)."""
    sw = exp.sweep
    neg = [sw.index(a) for a in sw.negative_steps]
    pos = [sw.index(a) for a in sw.positive_steps]

    def curve(steps: np.ndarray, origin: np.ndarray) -> list[list[float]]:
        return np.concatenate([steps[:, neg, target], origin[:, None, target], steps[:, pos, target]], axis=1).tolist()

    origin = sw.origin_probabilities if sw.origin_probabilities is not None else exp.probabilities
    out: dict[str, Any] = {
        "signed_steps": [*sw.negative_steps, 0.0, *sw.positive_steps],
        "teacher_target_prob": curve(sw.probabilities, origin),
    }
    if sw.agent_probabilities is not None and sw.agent_origin_probabilities is not None:
        out["agent_target_prob"] = curve(sw.agent_probabilities, sw.agent_origin_probabilities)
    out["query_target_prob"] = exp.probabilities[:, target].tolist()
    return out


def _catalogue(entries: dict[str, dict[str, Any]], part: str, found: BenchMethods) -> None:
    """Record what ran (and what was skipped) per registered method, for results.json and the report."""
    from medxai.registry import get_method

    def entry(name: str) -> dict[str, Any]:
        spec = get_method(name)
        return entries.setdefault(
            name,
            {
                "summary": spec.summary,
                "counterfactual": spec.counterfactual,
                "inputs": sorted(spec.inputs),
                "ran": [],
                "skipped": {},
            },
        )

    for spec in (*found.counterfactual, *found.attribution):
        entry(spec.name)["ran"].append(part)
    for name, why in found.skipped.items():
        entry(name)["skipped"][part] = why


# --------------------------------------------------------------------------------------------- CT
def _ct_section(
    models: ModelCache,
    s: BenchSettings,
    figs: _Figures,
    progress: Progress | None,
    clock: StageClock,
    catalogue: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    import torch

    from medxai.data import ct_stack_set
    from medxai.metrics import mass_on_mask
    from medxai.metrics.counterfactual import heatmap_auroc, summarise_diffexplainer
    from medxai.training.ct import load_data, stack_config
    from pipelines.models import load_black_box, target_class

    cfg = models.ct("ct")
    found = bench_methods(cfg)
    _catalogue(catalogue, "ct", found)
    target = target_class(cfg)
    phantom = str(cfg.get("data.phantom", "test"))
    stack = stack_config(cfg)
    test = clock.time("ct_test_cohort", lambda: ct_stack_set(s.ct_test_n, s.ct_test_seed, phantom=phantom, stack=stack))
    teacher = load_black_box(cfg)
    probs = probabilities(teacher, test.x)
    out: dict[str, Any] = {
        "models": {
            "teacher_heldout_auroc": auroc(probs[:, 1], test.y),
            "teacher_heldout_accuracy": float((probs.argmax(1) == test.y).mean()),
            "n_test": int(len(test.y)),
            "n_test_positive": int(test.y.sum()),
        }
    }
    gt2d = test.masks["biomarker"].max(axis=1)  # (N, S, S): projection over the four slices
    pos = np.flatnonzero((test.y == 1) & present(gt2d))[: s.explain_n]
    if not len(pos):
        raise ValueError(
            f"the held-out CT cohort (seed {s.ct_test_seed}, {s.ct_test_n} cases) has no positive case with a "
            "biomarker in the stack; raise ct_test_n in the bench config."
        )

    def counterfactual(spec: Any, c: Config, black_box: Any, x: np.ndarray, stage: str, show: bool = False) -> tuple[Any, float]:
        """Explain ``x`` with counterfactual method ``spec`` built from config ``c``, 8 cases at a time."""
        report = (lambda done, total: progress(spec.name, done, total)) if progress and show else None

        def run() -> tuple[Any, float]:
            return explain_all(build_method(spec, c, black_box, method_models(spec, c)), x, target, batch=8, report=report)

        return clock.time(stage, run)

    # counterfactual methods (DiffExplainer) on every held-out case
    maps: dict[str, np.ndarray] = {}
    heat: dict[str, np.ndarray] = {}
    cf_exps: dict[str, Any] = {}
    runs = [(spec.name, spec, cfg) for spec in found.counterfactual]
    for vname, variant in s.variants.items():
        vspec = next((sp for sp in found.counterfactual if sp.name == variant.get("method")), None)
        if vspec is not None:  # a variant of a method of this input (else it belongs to the other half)
            over = {f"{vspec.name}.{k}": v for k, v in dict(variant.get("settings", {})).items()}
            runs.append((vname, vspec, cfg.with_overrides(over)))
    for name, spec, run_cfg in runs:
        exp, secs = counterfactual(spec, run_cfg, teacher, test.x, f"ct_{name}", show=True)
        summ = summarise_diffexplainer(
            torch.from_numpy(test.x),
            exp,
            target,
            torch.from_numpy(test.masks["biomarker"]),
            torch.from_numpy(test.masks["lungs"]),
        )
        heat[name] = _maps(exp)
        maps[name] = heat[name][pos]
        cf_exps[name] = exp
        out[name] = {
            "method": spec.name,
            "settings": json_safe(exp.parameters),
            "flip_rate": summ["flip_rate"],
            "recon_psnr_db": nanmean(summ["psnr"]),
            "recon_ssim": nanmean(summ["ssim"]),
            "loc_auroc": nanmean(heatmap_auroc(heat[name], gt2d)),
            "loc_auroc_per_slice": nanmean(summ["heatmap_auroc"]),
            "seconds_per_case": secs,
            "monotonicity": summ["monotonicity"],
            "change_outside_lungs": summ["change_outside_lungs"],
            "score_change_reconstruction": nanmean(summ["score_change_reconstruction"]),
            "n_cases": int(len(test.x)),
            "sweep": _sweep_curves(exp, target),
        }
        if "agent_teacher_agreement" in summ and "agent_agreement" not in out:
            out["agent_agreement"] = summ["agent_teacher_agreement"]

    # attribution methods on the held-out positives
    def attribution_for(which: str, c: Config, black_box: Any) -> dict[str, Any]:
        """The attribution methods for the teacher of config ``c``, its NN-Explainer trained on the data
        of ``c`` (made only when a method needs one)."""

        def nn() -> tuple[Any, Any]:
            data = load_data(c, "train")
            return models.nn_explainer(which, black_box, data["stacks"], data["labels"])

        return _attribution_explainers(found.attribution, c, black_box, nn)

    attribution = attribution_for("ct", cfg, teacher)
    for name, ex in attribution.items():
        m, t = clock.maps(f"ct_{name}", ex, test.x[pos], target)
        maps[name] = m
        out[name] = {
            "method": name,
            "loc_auroc": nanmean(heatmap_auroc(m, gt2d[pos])),
            "seconds_per_case": t,
            "n_cases": int(len(pos)),
            "flip_rate": None,
            "recon_psnr_db": None,
        }

    # model-parameter randomisation: the teacher re-initialised and the agent re-distilled from it (every
    # model DiffExplainer consults); maps compared inside the lungs, where the teacher's feature lives
    r = pos[: s.randomization_n]
    lungs2d = test.masks["lungs"].max(axis=1)
    rand_cfg = models.ct("ct_random")
    rand_teacher = load_black_box(rand_cfg)
    rand_probs = probabilities(rand_teacher, test.x)
    rand_maps: dict[str, np.ndarray] = {}
    for spec in found.counterfactual:
        rexp, _ = counterfactual(spec, rand_cfg, rand_teacher, test.x[r], f"ct_random_{spec.name}")
        rand_maps[spec.name] = _maps(rexp)
    for name, ex in attribution_for("ct_random", rand_cfg, rand_teacher).items():
        rand_maps[name], _ = clock.maps(f"ct_random_{name}", ex, test.x[r], target)
    for name, rm in rand_maps.items():
        out[name]["randomization"] = _randomization(maps[name][: len(r)], rm, gt2d[r], lungs2d[r], rand_probs)

    for name, exp in cf_exps.items():
        figs.ct_strips(exp, test.x, pos[: s.figure_cases], name)
    figs.overlays(
        "ct",
        "CT heatmaps on held-out positives (slice 2 of the stack; green = planted biomarker)",
        test.x[pos[: s.figure_cases]][:, 1],
        {k: v[: s.figure_cases] for k, v in maps.items()},
        gt2d[pos[: s.figure_cases]],
    )

    # shortcut scenario
    sc_cfg = models.ct("ct_shortcut")
    sc_teacher = load_black_box(sc_cfg)
    sc_test = clock.time(
        "ct_shortcut_cohort",
        lambda: ct_stack_set(
            s.shortcut_test_n,
            s.shortcut_test_seed,
            phantom=phantom,
            stack=stack,
            shortcut=float(s.shortcut),
            phantom_overrides=s.shortcut_phantom,
        ),
    )
    marker2d = sc_test.masks["marker"].max(axis=1)
    has = present(marker2d)
    sc_idx = np.flatnonzero(has & (sc_test.y == 1))[: s.explain_n]
    sc_probs = probabilities(sc_teacher, sc_test.x)
    clean_probs = probabilities(teacher, sc_test.x)
    flipped = has != (sc_test.y == 1)  # cases where the marker contradicts the label
    shortcut: dict[str, Any] = {
        "_n_cases": int(len(sc_idx)),
        "_n_contradicting": int(flipped.sum()),
        "_train_bias": float(s.shortcut if s.shortcut_train is None else s.shortcut_train),
        "_phantom_overrides": dict(s.shortcut_phantom),
        "_marker_area_fraction": float(marker2d[sc_idx].mean()) if len(sc_idx) else None,
        "_shortcut_teacher": {
            "auroc_biased_split": auroc(sc_probs[:, 1], sc_test.y),
            "accuracy_where_marker_contradicts_label": float((sc_probs.argmax(1) == sc_test.y)[flipped].mean())
            if flipped.any()
            else None,
        },
        "_clean_teacher": {
            "auroc_biased_split": auroc(clean_probs[:, 1], sc_test.y),
            "accuracy_where_marker_contradicts_label": float((clean_probs.argmax(1) == sc_test.y)[flipped].mean())
            if flipped.any()
            else None,
        },
    }
    if len(sc_idx):
        xs = sc_test.x[sc_idx]
        sc_maps: dict[str, np.ndarray] = {}
        clean_maps: dict[str, np.ndarray] = {}
        for spec in found.counterfactual:
            dd, _ = counterfactual(spec, sc_cfg, sc_teacher, xs, f"ct_shortcut_{spec.name}")
            dc, _ = counterfactual(spec, cfg, teacher, xs, f"ct_shortcut_{spec.name}_clean")
            sc_maps[spec.name], clean_maps[spec.name] = _maps(dd), _maps(dc)
            if dd.sweep is not None and dd.sweep.origin is not None and "_marker_in_reconstruction" not in shortcut:
                # can the generator draw the marker at all? (an explainer cannot show what it cannot draw)
                shortcut["_marker_in_reconstruction"] = _marker_contrast(
                    xs, np.asarray(dd.sweep.origin), sc_test.masks["marker"][sc_idx]
                )
        for name, ex in attribution_for("ct_shortcut", sc_cfg, sc_teacher).items():
            sc_maps[name], _ = clock.maps(f"ct_shortcut_{name}", ex, xs, target)
        for name, ex in attribution.items():
            clean_maps[name], _ = clock.maps(f"ct_shortcut_clean_{name}", ex, xs, target)
        uniform = float(marker2d[sc_idx].mean())
        for name in sc_maps:
            on = nanmean([mass_on_mask(h, k) for h, k in zip(sc_maps[name], marker2d[sc_idx])])
            on_clean = nanmean([mass_on_mask(h, k) for h, k in zip(clean_maps[name], marker2d[sc_idx])])
            shortcut[name] = {
                "mass_on_marker": on,
                "mass_ratio_uniform": on / uniform if uniform > 0 else None,
                "mass_on_marker_clean_teacher": on_clean,
                "mass_ratio_uniform_clean_teacher": on_clean / uniform if uniform > 0 else None,
            }
        figs.overlays(
            "shortcut",
            "Shortcut teacher: heatmaps on a biased case (green = pacemaker marker)",
            xs[: s.figure_cases][:, 1],
            {k: v[: s.figure_cases] for k, v in sc_maps.items()},
            marker2d[sc_idx][: s.figure_cases],
        )
    out["shortcut"] = shortcut

    # model swap: the same held-out images explained for the fibrosis teacher and for a teacher whose
    # label is the distractor (emphysema); each map scored on its own model's feature and the other's
    em_cfg = models.ct("ct_emphysema")
    em_teacher = load_black_box(em_cfg)
    swap = clock.time(
        "ct_swap_cohort",
        lambda: ct_stack_set(s.swap_test_n, s.swap_test_seed, phantom=phantom, stack=stack, phantom_overrides=s.swap_phantom),
    )
    truth = {"fibrosis": swap.masks["biomarker"].max(axis=1), "emphysema": swap.masks["distractor"].max(axis=1)}
    emph_label = present(truth["emphysema"]).astype(np.int64)
    both = np.flatnonzero(present(truth["fibrosis"]) & (emph_label > 0))[: s.explain_n]
    swap_lungs = swap.masks["lungs"].max(axis=1)[both]
    em_probs = probabilities(em_teacher, swap.x)
    fib_probs = probabilities(teacher, swap.x)
    model_swap: dict[str, Any] = {
        "_models": {
            "fibrosis": "the CT teacher (label: one-year mortality, driven by fibrosis)",
            "emphysema": "a teacher trained on the same kind of phantoms whose label is 'emphysema holes in the stack'",
        },
        "_n_cases": int(len(both)),
        "_emphysema_teacher": {
            "auroc_on_emphysema": auroc(em_probs[:, 1], emph_label),
            "auroc_on_outcome": auroc(em_probs[:, 1], swap.y),
            "decision_changed_rate": _decision_changed_rate(em_probs),
        },
        "_fibrosis_teacher": {
            "auroc_on_emphysema": auroc(fib_probs[:, 1], emph_label),
            "auroc_on_outcome": auroc(fib_probs[:, 1], swap.y),
        },
    }
    swap_maps: dict[str, dict[str, np.ndarray]] = {}
    if len(both):
        xs = swap.x[both]
        for spec in found.counterfactual:
            for who, (c, bb) in {"fibrosis": (cfg, teacher), "emphysema": (em_cfg, em_teacher)}.items():
                e, _ = counterfactual(spec, c, bb, xs, f"ct_swap_{who}_{spec.name}")
                swap_maps.setdefault(spec.name, {})[who] = _maps(e)
        em_ex = attribution_for("ct_emphysema", em_cfg, em_teacher)
        for who, exs in (("fibrosis", attribution), ("emphysema", em_ex)):
            for name, ex in exs.items():
                swap_maps.setdefault(name, {})[who], _ = clock.maps(f"ct_swap_{who}_{name}", ex, xs, target)
        truth_both = {k: v[both] for k, v in truth.items()}
        for name, per_model in swap_maps.items():
            model_swap[name] = _swap_scores(per_model, truth_both, swap_lungs)
            # the fair randomisation's second comparison: a model that still decides, on something else
            out[name].setdefault("randomization", {})["other_model_spearman_in_mask"] = model_swap[name]["spearman_in_mask"]
        figs.swap(
            "ct",
            xs[: s.figure_cases][:, 1],
            {k: {w: m[: s.figure_cases] for w, m in v.items()} for k, v in swap_maps.items()},
            {k: v[: s.figure_cases] for k, v in truth_both.items()},
        )
    out["model_swap"] = model_swap
    return out


# ----------------------------------------------------------------------------------------- fundus
def _variants(spec: Any, base: Any, s: BenchSettings) -> list[tuple[str, str | None, Any]]:
    """``(results key, variant, settings)`` per run of a counterfactual method: DVCE's ablations
    (:func:`medxai.explainers.dvce.dvce_variant`; ``cone`` = the config's settings, key ``dvce``), one
    run with the config's settings for any other method."""
    if spec.name != "dvce":
        return [(spec.name, None, base)]
    from medxai.explainers.dvce import dvce_variant

    return [(spec.name if v == "cone" else f"{spec.name}_{v}", v, dvce_variant(base, v)) for v in s.dvce_variants]


def _fundus_section(
    models: ModelCache,
    s: BenchSettings,
    figs: _Figures,
    progress: Progress | None,
    clock: StageClock,
    catalogue: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    import torch

    from medxai.data import fundus_set
    from medxai.metrics.counterfactual import psnr
    from medxai.metrics.counterfactual_dr import fov_from_images, lesion_auroc, summarise_dr_counterfactuals
    from pipelines.models import load_black_box, method_settings, target_class

    cfg = models.fundus()
    found = bench_methods(cfg)
    _catalogue(catalogue, "fundus", found)
    size = int(cfg.get("image_size"))
    target = target_class(cfg)
    seed = int(cfg.get("seed"))
    test = clock.time("fundus_test_cohort", lambda: fundus_set(s.fundus_test_n, s.fundus_test_seed, size=size))
    classifier = load_black_box(cfg)
    extra = {spec.name: method_models(spec, cfg) for spec in found.counterfactual}
    robust = next((m["robust_model"] for m in extra.values() if m.get("robust_model") is not None), None)
    probs = probabilities(classifier, test.x)
    rprobs = probabilities(robust, test.x) if robust is not None else None
    out: dict[str, Any] = {
        "models": {
            "classifier_heldout_auroc": auroc(probs[:, 1], test.y),
            "robust_classifier_heldout_auroc": auroc(rprobs[:, 1], test.y) if rprobs is not None else None,
            "n_test": int(len(test.y)),
            "n_test_referable": int(test.y.sum()),
        }
    }
    lesions = test.masks["lesions"][:, 0]
    idx = np.flatnonzero((test.y == 1) & present(lesions))[: s.explain_n]
    if not len(idx):
        raise ValueError(
            f"the held-out fundus cohort (seed {s.fundus_test_seed}, {s.fundus_test_n} images) has no referable "
            "image with lesions; raise fundus_test_n in the bench config."
        )
    x = test.x[idx]
    fov = fov_from_images(x)
    fov_t = torch.from_numpy(fov[:, None].astype(np.float32))  # (N, 1, S, S): the change stays inside the field of view
    cfs: dict[str, np.ndarray] = {}
    heat: dict[str, np.ndarray] = {}
    settings: dict[str, Any] = {}

    # counterfactual methods (DVCE and its ablations) towards the target class, all cases in one call
    for spec in found.counterfactual:
        settings[spec.name] = method_settings(cfg, spec)
        runs = _variants(spec, settings[spec.name], s)
        for i, (key, variant, vs) in enumerate(runs):
            ex = build_method(spec, cfg, classifier, extra[spec.name], vs)
            mask = fov_t if spec.uses_mask else None
            exp, secs = clock.time(
                f"fundus_{spec.name}" + (f"_{variant}" if variant else ""),
                lambda ex=ex, mask=mask: explain_all(ex, x, target, batch=len(x), mask=mask),
            )
            m = summarise_dr_counterfactuals(x, exp, lesions[idx], fov, target=target)
            out[key] = {
                "method": spec.name,
                "target_rate": m["target_rate"],
                "l1_outside_lesions": m["l1_outside_lesions"],
                "loc_auroc": m["lesion_auroc"],
                # closeness of the counterfactual to the query (with zero guidance from the inversion
                # start this is the "the output IS the query" figure)
                "psnr_db": nanmean(psnr(torch.as_tensor(np.asarray(exp.sweep.at(m["step"]))), torch.from_numpy(x)).tolist()),
                "start": getattr(vs, "start", None),
                "seconds_per_case": secs,
                "variant": variant,
                "n_cases": int(len(x)),
            }
            guidance = getattr(vs, "guidance", None)
            if guidance is not None:
                out[key]["guidance"] = guidance.to_dict()
            cfs[key], heat[key] = exp.sweep.at(m["step"]), _maps(exp)
            if progress:
                progress(f"{spec.name} variants" if variant else spec.name, i + 1, len(runs))

    # attribution methods on the plain classifier, explaining the class the lesions drive
    model = classifier.eval()
    # NN-Explainer's own training images (a cohort neither the classifiers nor the test use)
    train = fundus_set(int(s.train_n.get("nn_explainer_fundus", 200)), s.fundus_test_seed + 100, size=size)
    maps: dict[str, np.ndarray] = {k: v for k, v in heat.items()}
    attribution = _attribution_explainers(
        found.attribution, cfg, model, lambda: models.nn_explainer("fundus", model, train.x, train.y)
    )
    for name, ex in attribution.items():
        m_, t = clock.maps(f"fundus_{name}", ex, x, FUNDUS_EVIDENCE_CLASS)
        maps[name] = m_
        out[name] = {
            "method": name,
            "loc_auroc": nanmean(lesion_auroc(m_, lesions[idx], fov)),
            "seconds_per_case": t,
            "n_cases": int(len(x)),
            "target_rate": None,
            "l1_outside_lesions": None,
        }

    # randomisation: the black box and every extra classifier re-initialised, the attribution methods'
    # classifier too; maps compared inside the field of view
    r = np.arange(min(s.randomization_n, len(x)))
    rand = _randomised(model, seed + 1000)
    rand_probs = probabilities(rand, test.x)
    rand_maps: dict[str, np.ndarray] = {}
    for spec in found.counterfactual:
        if spec.name not in out:
            continue
        rmodels = {
            role: (_randomised(m, seed + 1001) if role in _CLASSIFIER_ROLES and m is not None else m)
            for role, m in extra[spec.name].items()
        }
        ex = build_method(spec, cfg, rand, rmodels, settings[spec.name])
        rexp, _ = clock.time(
            f"fundus_random_{spec.name}",
            lambda ex=ex, spec=spec: explain_all(ex, x[r], target, batch=len(r), mask=fov_t[r] if spec.uses_mask else None),
        )
        rand_maps[spec.name] = _maps(rexp)
    rand_ex = _attribution_explainers(
        found.attribution, cfg, rand, lambda: models.nn_explainer("fundus_random", rand, train.x, train.y)
    )
    for name, ex in rand_ex.items():
        rand_maps[name], _ = clock.maps(f"fundus_random_{name}", ex, x[r], FUNDUS_EVIDENCE_CLASS)
    for name, rm in rand_maps.items():
        out[name]["randomization"] = _randomization(maps[name][r], rm, lesions[idx][r], fov[r], rand_probs)
    if "dvce_unguided_inversion_start" in out and "dvce" in out:
        # with zero guidance from the inversion start the output must BE the query
        out["dvce"]["zero_guidance_psnr_db"] = out["dvce_unguided_inversion_start"]["psnr_db"]

    out["model_swap"] = _fundus_model_swap(models, s, found, target, size, progress, clock, figs)

    if cfs:
        figs.fundus_strips(x[: s.figure_cases], {k: v[: s.figure_cases] for k, v in cfs.items()}, lesions[idx][: s.figure_cases])
    figs.overlays(
        "fundus",
        "Fundus heatmaps on held-out referable crops (green = planted lesions)",
        x[: s.figure_cases],
        {k: v[: s.figure_cases] for k, v in maps.items()},
        lesions[idx][: s.figure_cases],
    )
    return out


def _fundus_model_swap(
    models: ModelCache,
    s: BenchSettings,
    found: BenchMethods,
    target: int,
    size: int,
    progress: Progress | None,
    clock: StageClock,
    figs: _Figures,
) -> dict[str, Any]:
    """Two DR classifiers whose labels are different lesion types (``s.fundus_swap_labels``), each
    explained on the same held-out crops that hold both types; maps scored (AUROC in the field of view)
    on the own model's lesion type and on the other's."""
    import torch

    from medxai.data import fundus_set
    from medxai.metrics.counterfactual_dr import fov_from_images
    from pipelines.models import load_black_box, method_settings

    labels = tuple(s.fundus_swap_labels)
    if len(labels) != 2:
        raise ConfigError(f"fundus_swap_labels must name two lesion types, got {labels!r}.")
    test = clock.time(
        "fundus_swap_cohort",
        lambda: fundus_set(s.fundus_swap_test_n, s.fundus_swap_test_seed, size=size, phantom_overrides=s.fundus_swap_phantom),
    )
    truth_all = {k: test.masks[k][:, 0] for k in labels}
    has = {k: present(v) for k, v in truth_all.items()}
    both = np.flatnonzero(has[labels[0]] & has[labels[1]])[: s.explain_n]
    result: dict[str, Any] = {
        "_models": {k: f"DR classifier (and its robust twin) whose label is '{k} in the crop'" for k in labels},
        "_n_cases": int(len(both)),
    }
    if not len(both):
        return result
    x = test.x[both]
    fov = fov_from_images(x)
    fov_t = torch.from_numpy(fov[:, None].astype(np.float32))
    truth = {k: v[both] for k, v in truth_all.items()}
    maps: dict[str, dict[str, np.ndarray]] = {}
    for k in labels:
        cfg = models.fundus_swap(k)
        classifier = load_black_box(cfg)
        probs = probabilities(classifier, test.x)
        result[f"_{k}_classifier"] = {
            "auroc_on_own_label": auroc(probs[:, 1], has[k].astype(np.int64)),
            "auroc_on_other_label": auroc(probs[:, 1], has[labels[1 - labels.index(k)]].astype(np.int64)),
        }
        for i, spec in enumerate(found.counterfactual):
            ex = build_method(spec, cfg, classifier, method_models(spec, cfg), method_settings(cfg, spec))
            exp, _ = clock.time(
                f"fundus_swap_{k}_{spec.name}",
                lambda ex=ex, spec=spec: explain_all(ex, x, target, batch=len(x), mask=fov_t if spec.uses_mask else None),
            )
            maps.setdefault(spec.name, {})[k] = _maps(exp)
            if progress:
                progress(f"model swap ({k})", i + 1, len(found.counterfactual))
        train = fundus_set(
            int(s.train_n.get("nn_explainer_fundus", 200)),
            s.fundus_test_seed + 100,
            size=size,
            label=k,
            phantom_overrides=s.fundus_swap_phantom,
        )
        attribution = _attribution_explainers(
            found.attribution,
            cfg,
            classifier,
            lambda k=k, classifier=classifier, train=train: models.nn_explainer(f"fundus_{k}", classifier, train.x, train.y),
        )
        for name, ex in attribution.items():
            maps.setdefault(name, {})[k], _ = clock.maps(f"fundus_swap_{k}_{name}", ex, x, FUNDUS_EVIDENCE_CLASS)
    for name, per_model in maps.items():
        result[name] = _swap_scores(per_model, truth, fov)
    figs.swap(
        "fundus",
        x[: s.figure_cases],
        {k: {w: m[: s.figure_cases] for w, m in v.items()} for k, v in maps.items()},
        {k: v[: s.figure_cases] for k, v in truth.items()},
    )
    return result


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

    def ct_strips(self, exp: Any, x: np.ndarray, idx: np.ndarray, method: str) -> None:
        """The labelled strip every explain job writes (:func:`medxai.explanation.strip_image`) of cases ``idx``."""
        from medxai.explanation import strip_image

        for k, i in enumerate(idx):
            rgb = strip_image(exp.select(int(i)), x[i])
            rgb = np.kron(rgb, np.ones((2, 2, 1), dtype=np.uint8))  # 2x so the 64-pixel slices are visible
            self._save_rgb(
                rgb,
                self._add(
                    "ct",
                    f"ct_strip_{method}_{k}.png",
                    f"{method} counterfactuals, held-out case {k + 1}",
                    "Rows: the four slices. Columns: query | reconstruction | the counterfactual at every "
                    "signed step a (- = less likely, + = more likely); each labelled with the teacher's "
                    "probability p of the target class | change at the outermost steps (red brighter, "
                    "blue darker) | heatmap.",
                ),
            )

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
            self._save_rgb(
                rgb,
                self._add(
                    "fundus",
                    f"fundus_strip_{k}.png",
                    f"Counterfactuals, held-out referable crop {k + 1}",
                    f"query | counterfactuals ({names}) | |difference| of each | planted lesions (green)",
                ),
            )

    def swap(
        self, section: str, base: np.ndarray, maps: Mapping[str, Mapping[str, np.ndarray]], truths: Mapping[str, np.ndarray]
    ) -> None:
        """The model-swap figure, one per case: a row per method with both models' maps side by side,
        both planted features outlined (lime: the first model's, cyan: the second's)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from atomicfs import atomic_path

        who = list(truths)
        colours = dict(zip(who, ("lime", "cyan")))
        methods = list(maps)
        for k in range(len(base)):
            img = base[k] if base[k].ndim == 2 else np.moveaxis(base[k], 0, -1)
            cmap = "gray" if img.ndim == 2 else None
            fig, axes = plt.subplots(len(methods), 3, figsize=(5.4, 1.9 * len(methods)), dpi=90, squeeze=False)
            for row, name in zip(axes, methods):
                panels = [("image + both truths", None), *((f"{name}: {w} model", maps[name][w][k]) for w in who)]
                for ax, (label, h) in zip(row, panels):
                    ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
                    if h is not None:
                        h = np.asarray(h, dtype=np.float64)
                        h = (h - h.min()) / (h.max() - h.min()) if h.max() > h.min() else np.zeros_like(h)
                        ax.imshow(h, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
                    for w in who:
                        if truths[w][k].any():
                            ax.contour(truths[w][k] > 0.5, levels=[0.5], colors=colours[w], linewidths=0.6)
                    ax.set_title(label, fontsize=6)
                    ax.axis("off")
            fig.tight_layout()
            path = self._add(
                section,
                f"{section}_model_swap_{k}.png",
                f"Model swap, held-out case {k + 1}: {' vs '.join(who)} model",
                f"Each row one method; middle: its map for the {who[0]} model, right: for the {who[1]} model "
                f"(min-max scaled). Outlines: {who[0]} (lime), {who[1]} (cyan). A faithful map lights up the "
                "outline of its own model's feature.",
            )
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")
            plt.close(fig)

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
            path = self._add(
                section,
                f"{section}_overlays_{k}.png",
                f"{title} ({k + 1})",
                "Each map min-max scaled; the ground truth is outlined.",
            )
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
    only : {"ct", "fundus", "cohort"}, optional
        Run one half, or only the cohort report's scenarios.
    pretrained : bool
        Start the model cache with the shipped phantom models (``medxai/pretrained``) instead of
        training teacher, autoencoder, agent, DDPM and classifiers (the rest is still trained).
    trust_code : bool
        Allow model classes / MONAI bundle code outside the allow-list of :mod:`medxai.trust` in the
        CT and DR configs (``--trust-code``; ``trust_code: true`` at the top of the bench config counts too).
    """
    from medxai.registry import method_names
    from medxai.training.checkpoint import write_json_atomic
    from medxai.trust import trusts_code
    from pipelines.report import write_report

    if only not in (None, "ct", "fundus", "cohort"):
        raise ValueError(f"--only must be 'ct', 'fundus' or 'cohort', got {only!r}.")
    settings = load_bench_settings(config, quick)
    unknown = sorted(set(settings.methods) - set(method_names()))
    if unknown:
        raise ConfigError(
            f"{config or DEFAULT_CONFIG}: methods: {unknown} are not registered methods; registered: {', '.join(method_names())}."
        )
    trust_code = trusts_code(load_config(Path(config) if config is not None else DEFAULT_CONFIG), trust_code)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = (Path(models_dir) if models_dir is not None else out_dir / "models").absolute()
    root.mkdir(parents=True, exist_ok=True)
    seeded: list[str] = []
    if pretrained:
        from pipelines.pretrained import seed_models_dir

        seeded = seed_models_dir(root)
    for stale in ("results.json", "report.html"):  # a failed run must not leave an old, finished-looking report
        (out_dir / stale).unlink(missing_ok=True)
    if (out_dir / "figures").is_dir():
        shutil.rmtree(out_dir / "figures")
    clock = StageClock(progress)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    models = ModelCache(root, settings, progress, clock, trust_code)
    figs = _Figures(out_dir)
    catalogue: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {"quick": quick, "started": started}
    from pipelines.bench_digin import digin_ct, digin_fundus

    if only in (None, "ct"):
        results["ct"] = _ct_section(models, settings, figs, progress, clock, catalogue)
        results["ct"]["digin"] = digin_ct(models, settings, progress, clock)
    if only in (None, "fundus"):
        results["fundus"] = _fundus_section(models, settings, figs, progress, clock, catalogue)
        results["fundus"]["uvce"] = digin_fundus(models, settings, progress, clock)
    if only in (None, "cohort"):
        from pipelines.bench_cohort import cohort_section

        results["cohort"] = cohort_section(models, settings, out_dir, progress, clock)
    results.update(
        {
            "seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": clock.stages,
            "models": {
                "dir": str(root),
                "trained": models.trained,
                "loaded": models.loaded,
                "pretrained": pretrained,
                "copied_from_package": seeded,
            },
            "methods": catalogue,
            "targets": {k: list(v) for k, v in run_targets(results).items()},
            "config": {"bench": dataclasses.asdict(settings), **{k: c.to_dict() for k, c in models.configs.items()}},
            "versions": package_versions(),
        }
    )
    results = json_safe(results)
    write_json_atomic(out_dir / "results.json", results)
    write_report(results, out_dir, figs.entries, title="medxai benchmark" + (" (quick)" if quick else ""))
    return results
