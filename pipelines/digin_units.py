"""``medxai digin-units``: DiG-IN's neuron visualisation of the top units of a class, sharded by unit.

For the ``top`` units the black box's head weighs most for a class (:func:`medxai.explainers.digin.top_units`),
generator samples seeded by the inputs' conditioning (one per input case) are optimised to make the
unit fire. Each unit is one work item written atomically to ``OUT/unit_<u>/`` (``unit.png``,
``unit.json``, ``images.npz``); items are split round-robin over ``--shard i/n`` and ``torchrun`` ranks
(:mod:`pipelines.shard`), and a rerun skips the units already written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import StepError

__all__ = ["run_units"]

logger = logging.getLogger(__name__)


def _inputs(cfg: Any, kind: str, src: Path) -> np.ndarray:
    """The job's transformed inputs ``(N, C, S, S)`` of every case in ``src`` (as ``medxai explain`` reads them)."""
    from medxai.registry import CT_STACK
    from pipelines.explain import make_transform, read_ct_volumes, read_photo

    objs = read_ct_volumes(src, False) if kind == CT_STACK else [read_photo(src)]
    transform = make_transform(cfg, kind)
    images = []
    for obj in objs:
        if kind == CT_STACK:
            d = transform(np.asarray(obj.array), obj.spacing, obj.origin, obj.direction)
        else:
            d = transform(np.asarray(obj.array))
        images.append(np.asarray(d["image"], np.float32))
    return np.stack(images)


def run_units(
    config: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    class_index: int | None = None,
    top: int = 3,
    shard: str | None = None,
    trust_code: bool = False,
    progress: Any = None,
) -> list[Path]:
    """Visualise the ``top`` units of ``class_index`` (default: the config's ``target_class``); returns
    the unit folders this shard wrote (finished ones are skipped)."""
    import torch

    from atomicfs import atomic_dir
    from medxai.explainers.digin import chain_generator, head_weights, top_units, visualise_units
    from medxai.explanation import image_tiles
    from medxai.registry import get_method
    from pipelines import models as job_models
    from pipelines.explain import load_job_config
    from pipelines.shard import current_shard

    me = current_shard(shard)
    try:
        cfg = load_job_config(config, None)
        kind = job_models.input_kind(cfg)
        k = job_models.target_class(cfg) if class_index is None else int(class_index)
        spec = get_method("digin-neuron", kind)
        settings = job_models.method_settings(cfg, spec)
    except (ValueError, TypeError, KeyError) as e:
        raise StepError("config", str(e)) from e
    x = torch.from_numpy(_inputs(cfg, kind, Path(source)))
    try:
        model = job_models.load_black_box(cfg, trust_code=trust_code)
        gen = chain_generator(job_models.load_method_models(cfg, spec, trust_code=trust_code), x.shape[1])
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise StepError("load models", str(e)) from e
    units = top_units(model, k, top)
    weights = head_weights(model, k)
    out_dir = Path(out)
    written: list[Path] = []
    mine = [u for u in me.take(units) if not (out_dir / f"unit_{u}" / "unit.json").is_file()]
    logger.info("shard %s: units %s of %s (%d already written)", me, mine, units, len(me.take(units)) - len(mine))
    from medxai.diffusion.digin_objectives import NeuronObjective

    probes = [NeuronObjective(model, u, settings.layer) for u in units]
    with torch.no_grad():
        real = torch.stack([p.activation(x) for p in probes], 1).mean(0)
    for i, u in enumerate(mine):
        vis = visualise_units(
            model, gen, x, units=[u], layer=settings.layer, config=settings.engine, seed=int(cfg.get("seed", 0))
        )
        images = vis.images[0]
        with torch.no_grad():
            acts = torch.stack([p.activation(images) for p in probes], 1)  # (N, U)
            probs = torch.softmax(model(images), 1)[:, k]
        rel = acts.mean(0) / real.clamp_min(1e-12)
        j = units.index(u)
        meta = {
            "unit": u,
            "layer": vis.layer,
            "class_index": k,
            "rank_by_head_weight": j + 1,
            "head_weight": float(weights[u]),
            "activation_mean_on_inputs": float(real[j]),
            "activation_on_visualisation": acts[:, j].tolist(),
            "activation_ratio": float(rel[j]),
            "other_top_units_ratio": {str(v): float(rel[m]) for m, v in enumerate(units) if v != u},
            "p_class_on_visualisation": probs.tolist(),
            "n_starts": int(len(x)),
            "settings": {"engine": settings.engine.__dict__, "seed": int(cfg.get("seed", 0))},
        }
        with atomic_dir(out_dir / f"unit_{u}") as tmp:
            np.savez_compressed(tmp / "images.npz", images=images.numpy(), starts=x.numpy(), activations=acts.numpy())
            from PIL import Image

            tiles = np.concatenate([np.concatenate(image_tiles(im.numpy()), axis=0) for im in images], axis=1)
            Image.fromarray(tiles).save(tmp / "unit.png")
            (tmp / "unit.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        written.append(out_dir / f"unit_{u}")
        if progress is not None:
            progress("units", i + 1, len(mine))
    return written
