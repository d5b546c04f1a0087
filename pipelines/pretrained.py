"""The small phantom models shipped in ``medxai/pretrained`` (made by ``scripts/make_pretrained.py``).

Layout (the same as a ``medxai bench`` model cache): ``ct/{teacher,autoencoder,agent}.safetensors``
and ``fundus/{ddpm,classifier,robust_classifier}.safetensors``, each with its JSON sidecar; and the
bench's own per-run models (``ct_shortcut/``, ``ct_emphysema/``, ``ct_random/agent``, the model-swap
DR classifiers ``fundus_<lesion>/``, ``nn_explainer_*/``), which only
``medxai bench --pretrained`` uses (see ``scripts/make_pretrained.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from medxai.config import pretrained_dir

__all__ = ["BENCH_PARTS", "pretrained_dir", "pretrained_overrides", "seed_models_dir"]

#: The bench's own per-run models as laid out in its model cache (``folder/name``, no ``.safetensors``).
#: The randomised teachers are not among them: the bench re-makes those from a seed in a second.
BENCH_PARTS = (
    "ct_shortcut/teacher",
    "ct_shortcut/agent",
    "ct_emphysema/teacher",
    "ct_emphysema/agent",
    "ct_random/agent",
    "fundus_haemorrhages/classifier",
    "fundus_haemorrhages/robust_classifier",
    "fundus_exudates/classifier",
    "fundus_exudates/robust_classifier",
    "nn_explainer_ct/explainer",
    "nn_explainer_ct_random/explainer",
    "nn_explainer_ct_shortcut/explainer",
    "nn_explainer_ct_emphysema/explainer",
    "nn_explainer_fundus/explainer",
    "nn_explainer_fundus_random/explainer",
    "nn_explainer_fundus_haemorrhages/explainer",
    "nn_explainer_fundus_exudates/explainer",
)


def pretrained_overrides(kind: str, root: Path | None = None) -> dict[str, str]:
    """Config overrides (absolute paths) that point ``configs/ct_prognosis.yaml`` (``kind="ct"``) or
    ``configs/dr_fundus.yaml`` (``"fundus"``) at the shipped weights, whatever the ``runs/`` folder holds.

    (Without overrides the shipped configs already fall back to these weights while their own paths
    do not exist: see :meth:`medxai.config.Config.weights`.)
    """
    root = pretrained_dir() if root is None else root
    if kind == "ct":
        paths = {
            "teacher.path": "ct/teacher.safetensors",
            "autoencoder.path": "ct/autoencoder.safetensors",
            "agent.path": "ct/agent.safetensors",
            "nn_explainer_network.path": "nn_explainer_ct",
        }
    elif kind == "fundus":
        paths = {
            "classifier.path": "fundus/classifier.safetensors",
            "robust_classifier.path": "fundus/robust_classifier.safetensors",
            "diffusion.path": "fundus/ddpm.safetensors",
            "nn_explainer_network.path": "nn_explainer_fundus",
        }
    else:
        raise ValueError(f"kind must be 'ct' or 'fundus', got {kind!r}.")
    out = {k: str(root / v) for k, v in paths.items()}
    missing = [v for v in out.values() if not Path(v).exists()]
    if missing:
        raise FileNotFoundError(
            f"the shipped model file {missing[0]!r} is missing; reinstall medxai or rebuild the weights with "
            "`python scripts/make_pretrained.py` (see the README)."
        )
    return out


def seed_models_dir(root: Path) -> list[str]:
    """Copy the shipped models into a bench model cache ``root`` (files already there are kept)."""
    src = pretrained_dir()
    copied = []
    for f in sorted(src.glob("*/*")):
        if f.suffix not in (".safetensors", ".json"):
            continue
        dest = root / f.parent.name / f.name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
            copied.append(str(dest))
    if not copied and not any(src.glob("*/*.safetensors")):
        raise FileNotFoundError(f"no shipped models in {src}; rebuild them with `python scripts/make_pretrained.py`.")
    return copied
