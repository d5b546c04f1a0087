"""How many training steps does the bench's CT NN-Explainer need? (issue 13: three of them cost
~12 of the full bench's 38 minutes at 400 steps each.)

Trains an NN-Explainer for the shipped CT teacher (the bench's ``ct`` model, ``--pretrained``) for each
step count on the bench's training set, and measures what the bench reports for it: pixel AUROC of
its class-1 map against the planted fibrosis on the bench's held-out positives (seed 7001), plus
the training seconds. Same code paths as ``medxai bench`` (``pipelines.bench``).

    python benchmarks/nn_explainer_steps.py [--steps 50 100 200 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import bench as b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from medxai.data import ct_stack_set
    from medxai.metrics.counterfactual import heatmap_auroc
    from medxai.registry import CT_STACK, get_method
    from medxai.training.ct import load_data, stack_config
    from pipelines.models import load_black_box, method_settings, target_class
    from pipelines.pretrained import seed_models_dir

    settings = b.load_bench_settings()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        root.mkdir()
        seed_models_dir(root)
        clock = b.StageClock(None)
        models = b.ModelCache(root, settings, None, clock)
        cfg = models.ct("ct")
        target = target_class(cfg)
        spec = get_method("nn_explainer", CT_STACK)
        test = ct_stack_set(
            settings.ct_test_n, settings.ct_test_seed, phantom=str(cfg.get("data.phantom", "test")), stack=stack_config(cfg)
        )
        gt2d = test.masks["biomarker"].max(axis=1)
        pos = np.flatnonzero((test.y == 1) & (gt2d.reshape(len(gt2d), -1).sum(1) > 0))[: settings.explain_n]
        teacher = load_black_box(cfg)
        train = load_data(cfg, "train")
        for steps in args.steps:
            m = b.ModelCache(root, dataclasses.replace(settings, nn_explainer_steps=steps), None, clock)
            t0 = time.perf_counter()
            nn = m.nn_explainer(f"ct_{steps}", teacher, train["stacks"], train["labels"])
            seconds = time.perf_counter() - t0
            # the registry builds it as the bench does: the bench's network as models["nn_explainer"]
            ex = spec.build(teacher, method_settings(cfg, spec), {"nn_explainer": nn}, seed=int(cfg.get("seed")))
            maps, _ = b.explain_maps(ex, test.x[pos], target)
            auroc = heatmap_auroc(maps, gt2d[pos])
            row = {
                "steps": steps,
                "train_seconds": round(seconds, 1),
                "loc_auroc": round(float(np.nanmean(auroc)), 4),
                "loc_auroc_sd": round(float(np.nanstd(auroc)), 4),
                "n_cases": int(len(pos)),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'steps':>6} | {'train s':>8} | CT pixel AUROC (mean, sd over {rows[0]['n_cases']} positives)")
    for r in rows:
        print(f"{r['steps']:>6} | {r['train_seconds']:>8.1f} | {r['loc_auroc']:.3f} ({r['loc_auroc_sd']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
