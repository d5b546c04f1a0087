"""Does each attribution method find what the phantoms planted? (issue: one Explainer interface)

Trains a MONAI ResNet-18 on phantom CT stacks (fibrosis -> one-year mortality) and on fundus crops
(DR lesions -> referable), trains NN-Explainer for each, then explains class 1 on held-out positive
cases with every registered attribution method (:mod:`medxai.registry`: Grad-CAM, Grad-CAM++,
occlusion, Integrated Gradients, RISE, NN-Explainer, ...) and scores each map against the ground
truth: pixel AUROC and IoU of the top 5 % of pixels. The attribution
maps are 2D (one per stack), so the CT ground truth is the biomarker's projection over the four
slices. Seconds per case are measured in the same run.

    python benchmarks/localisation.py [--train 240 --test 40 --steps 600 --nn-steps 400 --rise 1000]
                                      [--cache benchmarks/.cache] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxai.data import StackSet, ct_stack_set, fundus_set
from medxai.metrics.localisation import iou_at, pixel_auroc
from medxai.networks.classifiers import make_classifier
from medxai.targets import ClassTarget
from medxai.training.trainers import fit_classifier


def cached(cache: Path | None, name: str, build: Callable[[], StackSet]) -> StackSet:
    if cache is None:
        return build()
    path = cache / f"{name}.npz"
    if path.exists():
        return StackSet.load(str(path))
    data = build()
    cache.mkdir(parents=True, exist_ok=True)
    data.save(str(path))
    return data


def explainers(model: torch.nn.Module, train: StackSet, args: argparse.Namespace) -> dict[str, object]:
    """Every registered attribution method (not counterfactual) for ``model``, built by the registry;
    NN-Explainer with a network trained here for about ``args.nn_steps`` steps."""
    from medxai.explainers import NNExplainerConfig, train_nn_explainer
    from medxai.registry import TENSOR, methods

    # about nn_steps optimiser steps: whole epochs over the training split (early stopping off)
    probe = NNExplainerConfig(num_classes=2, in_channels=train.x.shape[1])
    steps_per_epoch = max(1, math.ceil(len(train.x) * (1 - probe.val_fraction) / probe.batch_size))
    cfg = NNExplainerConfig(
        num_classes=2,
        in_channels=train.x.shape[1],
        multilabel=False,
        max_epochs=max(1, math.ceil(args.nn_steps / steps_per_epoch)),
        patience=10**6,
        lr=1e-3,
        seed=0,
    )
    specs = [s for s in methods(TENSOR) if not s.counterfactual]
    models: dict[str, object] = {}
    nn_train_s = 0.0
    if any("nn_explainer" in s.needs for s in specs):
        t0 = time.perf_counter()
        net, _ = train_nn_explainer(model, (torch.from_numpy(train.x), torch.from_numpy(train.y)), cfg)
        nn_train_s = time.perf_counter() - t0
        models["nn_explainer"] = (net, cfg)
    # the settings this benchmark has always used; other methods get their defaults
    settings = {"integrated_gradients": {"channel_reduction": "abs"}, "rise": {"n_masks": args.rise}}
    out: dict[str, object] = {
        s.name: s.build(model, s.settings_from(settings.get(s.name)), models, seed=0)
        for s in specs
        if all(r in models for r in s.needs)
    }
    out["_nn_train_s"] = nn_train_s
    return out


def evaluate(kind: str, args: argparse.Namespace) -> dict[str, object]:
    make = ct_stack_set if kind == "ct" else fundus_set
    mask_name = "biomarker" if kind == "ct" else "lesions"
    train = cached(
        args.cache, f"{kind}_train_s1000_n{args.train}_{args.size}", lambda: make(args.train, seed=1000, size=args.size)
    )
    test = cached(args.cache, f"{kind}_test_s2000_n{args.test}_{args.size}", lambda: make(args.test, seed=2000, size=args.size))
    g = torch.Generator().manual_seed(0)
    model = make_classifier("resnet18", train.x.shape[1], 2, 2, generator=g)
    fit_classifier(model, torch.from_numpy(train.x), torch.from_numpy(train.y), steps=args.steps, generator=g)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(test.x)), 1)[:, 1].numpy()
    gt = test.masks[mask_name].max(axis=1)  # (N, S, S): projection over slices / the single channel
    keep = np.flatnonzero((test.y == 1) & (gt.reshape(len(gt), -1).sum(1) > 0))
    out: dict[str, object] = {
        "classifier_test_auroc": round(float(pixel_auroc(p, test.y)), 3),
        "n_explained": int(keep.size),
    }
    methods = explainers(model, train, args)
    out["nn_explainer_train_s"] = round(float(methods.pop("_nn_train_s")), 1)  # type: ignore[arg-type]
    x = torch.from_numpy(test.x[keep])
    for name, explainer in methods.items():
        t0 = time.perf_counter()
        maps = np.concatenate(
            [
                explainer.explain(x[i : i + 4], ClassTarget(1)).heatmaps_numpy()[:, 0].reshape(-1, *gt.shape[1:])  # type: ignore[attr-defined]
                for i in range(0, len(x), 4)
            ]
        )
        secs = (time.perf_counter() - t0) / len(x)
        auc = [pixel_auroc(m, k) for m, k in zip(maps, gt[keep])]
        iou = [iou_at(m, k, top_fraction=0.05) for m, k in zip(maps, gt[keep])]
        out[name] = {
            "pixel_auroc": round(float(np.mean(auc)), 3),
            "iou_top5pct": round(float(np.mean(iou)), 3),
            "seconds_per_case": round(secs, 3),
        }
        print(kind, name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=600, help="classifier training steps (batch 16)")
    ap.add_argument("--nn-steps", type=int, default=400, help="NN-Explainer training steps")
    ap.add_argument("--rise", type=int, default=1000, help="RISE masks")
    ap.add_argument("--only", choices=["ct", "fundus"], default=None)
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep generated phantom sets in")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {k: evaluate(k, args) for k in ("ct", "fundus") if not args.only or k == args.only}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
