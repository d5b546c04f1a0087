"""DVCE on held-out fundus phantoms: validity, locality, lesion localisation, realism, and speed.

Loads the models of ``configs/dr_fundus.yaml`` (train them first, see the config's header), takes
held-out phantom crops with referable DR (label 1) and explains them towards "healthy" (class 0)
with several DVCE variants:

* ``cone``        -- the config's settings (robust gradient cone-projected around the plain one);
* ``no_cone``     -- plain classifier's gradient only (cone projection off);
* ``no_distance`` -- cone projection, distance term off (``l_d = 0``);
* ``unguided``    -- no guidance at all (``l_c = l_d = 0``): what the diffusion model's resampling
  alone changes (the floor of the L1 figure).

Figures per variant: target rate (the plain classifier's argmax is the target), mean L1 change
outside the lesion masks (inside the field of view; images in [0, 1]), pixel AUROC of the
difference heatmap against the lesion masks (over the field of view), KID/FID of the
counterfactuals against held-out real healthy crops, computed on the in-project
:class:`medxai.metrics.realism.FeatureNet` (Inception weights are unavailable offline), and seconds
per counterfactual with the share spent in the UNet (forward, backward), the classifiers and the rest.

    python benchmarks/dvce.py [--config configs/dr_fundus.yaml] [--n 16] [--json out.json]
        [--variants cone,no_cone,no_distance,unguided] [--test-data runs/dr/test.npz]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxai.config import DR_FUNDUS_SCHEMA, load_config
from medxai.data import StackSet, fundus_set
from medxai.explainers.dvce import dvce_variant
from medxai.metrics.counterfactual_dr import fov_from_images, summarise_dr_counterfactuals
from medxai.metrics.realism import (
    FeatureNet,
    extract_features,
    frechet_distance,
    kernel_inception_distance,
    load_feature_net,
    save_feature_net,
)
from medxai.registry import FUNDUS, get_method
from medxai.training.dvce import evaluate_classifier, train_feature_net
from medxai.training.trainers import TrainConfig
from pipelines.models import load_black_box, load_method_models, method_settings, target_class

log = logging.getLogger("benchmarks.dvce")


def _feature_net(path: Path, size: int, seconds: float, data_path: str | None) -> FeatureNet:
    if path.is_file():
        return load_feature_net(path)
    log.info("training the realism feature network (%s s) -> %s", seconds, path)
    # by default its own cohort (not the classifiers' or the DDPM's); --feature-data reuses a saved set
    data = StackSet.load(data_path) if data_path else fundus_set(400, 20_000, size=size)
    net = FeatureNet(width=32, feature_dim=128, generator=torch.Generator().manual_seed(0))
    targets = {
        "label": torch.from_numpy(data.y),
        "extent": torch.from_numpy(data.extent),
        "marker": torch.from_numpy(data.has_marker.astype(np.float32)),
        "lesions": torch.from_numpy(data.masks["lesions"]),
    }
    hist = train_feature_net(
        net, torch.from_numpy(data.x), targets, TrainConfig(steps=5000, batch_size=32, lr=2e-3, max_seconds=seconds, seed=0)
    )
    save_feature_net(
        net,
        path,
        {
            "steps": hist["steps"],
            "loss_first": hist["loss_first"],
            "loss_last": hist["loss_last"],
            "cohort": data_path or {"n": 400, "seed": 20_000, "size": size},
        },
    )
    return net


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dr_fundus.yaml")
    ap.add_argument("--n", type=int, default=16, help="held-out referable images per variant")
    ap.add_argument("--variants", default="cone,no_cone,no_distance,unguided")
    ap.add_argument("--test-data", default=None, help="StackSet .npz of held-out crops (default: 160 phantoms, seed 1000)")
    ap.add_argument("--feature-net", default="runs/dr/feature_net.safetensors")
    ap.add_argument("--feature-seconds", type=float, default=120.0)
    ap.add_argument("--feature-data", default=None, help="StackSet .npz to train the feature network on (if it is absent)")
    ap.add_argument("--override", action="append", default=[], help="dotted=value (YAML value), e.g. dvce.num_steps=50")
    ap.add_argument("--json", default=None)
    ap.add_argument("--save-images", default=None, help="folder for an .npz of queries and counterfactuals per variant")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import yaml

    config = load_config(args.config, DR_FUNDUS_SCHEMA)
    if args.override:
        config = config.with_overrides({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.override)})
    size = int(config.get("image_size"))
    spec = get_method("dvce", FUNDUS)
    classifier = load_black_box(config)
    models = load_method_models(config, spec)  # diffusion, and robust_model when the config has one
    robust = models.get("robust_model")
    target = target_class(config)
    test = StackSet.load(args.test_data) if args.test_data else fundus_set(160, 1000, size=size)
    x_all, y_all = torch.from_numpy(test.x), torch.from_numpy(test.y)
    result: dict[str, Any] = {
        "config": args.config,
        "overrides": args.override,
        "n": args.n,
        "target_class": target,
        "torch_threads": torch.get_num_threads(),
        "classifier_heldout": evaluate_classifier(classifier, x_all, y_all),
        "robust_heldout": evaluate_classifier(robust, x_all, y_all) if robust is not None else None,
        "ddpm_parameters": models["diffusion"].num_parameters(),
    }
    sick = np.nonzero(test.y == 1)[0][: args.n]
    healthy = np.nonzero(test.y == 0)[0]
    x = x_all[sick]
    lesions = test.masks["lesions"][sick]
    fov = fov_from_images(test.x[sick])
    fov_t = torch.from_numpy(fov[:, None].astype(np.float32))
    feat_net = _feature_net(Path(args.feature_net), size, args.feature_seconds, args.feature_data)
    real_healthy = extract_features(feat_net, x_all[healthy])
    real_sick = extract_features(feat_net, x)
    kid_floor, _ = kernel_inception_distance(real_sick, real_healthy, subsets=20, subset_size=min(len(sick), len(healthy)))
    result["realism_reference"] = {
        "n_real_healthy": int(len(healthy)),
        "kid_queries_vs_real_healthy": kid_floor,
        "fid_queries_vs_real_healthy": frechet_distance(real_sick, real_healthy),
        "feature_net": args.feature_net,
    }
    base = method_settings(config, spec)
    result["variants"] = {}
    saved: dict[str, np.ndarray] = {"query": x.numpy(), "lesions": lesions}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        cfg = dvce_variant(base, name)
        dvce = spec.build(classifier, cfg, models, seed=int(config.get("seed")))
        t0 = time.perf_counter()
        exp = dvce.explain(x, target, mask=fov_t)
        wall = time.perf_counter() - t0
        cf = exp.sweep.at(1.0)  # (N, 3, S, S): DVCE's sweep has the one step +1, the counterfactual
        saved[name] = cf
        metrics = summarise_dr_counterfactuals(x.numpy(), exp, lesions, fov, target=target)
        per_image = metrics.pop("per_image")
        feats = extract_features(feat_net, torch.as_tensor(cf))
        kid, kid_std = kernel_inception_distance(feats, real_healthy, subsets=20, subset_size=min(len(feats), len(healthy)))
        timers = {k: v for k, v in exp.timings.items() if k != "seconds"}  # the denoising loop's stages
        total = timers.pop("total", wall)
        robust_cf = exp.diagnostics.get("robust_counterfactual_logits")
        metrics.update(
            {
                "robust_target_rate": float((torch.as_tensor(robust_cf).argmax(1) == target).float().mean())
                if robust_cf is not None
                else None,
                "query_target_rate": float((torch.as_tensor(exp.logits).argmax(1) == target).float().mean()),
                "mean_target_prob_cf": float(exp.sweep.probabilities[:, 0, target].mean()),
                "l1_total": float(np.abs(cf - x.numpy()).mean()),
                "kid_vs_real_healthy": kid,
                "kid_std": kid_std,
                "fid_vs_real_healthy": frechet_distance(feats, real_healthy),
                "seconds_per_counterfactual": wall / len(x),
                "time_share": {k: v / total for k, v in timers.items()},
                "guidance": cfg.guidance.to_dict(),
                "num_steps": cfg.num_steps,
                "skip_steps": cfg.skip_steps,
                "start_timestep": exp.diagnostics.get("start_timestep"),
                "per_image": per_image,
            }
        )
        result["variants"][name] = metrics
        log.info(
            "%s: target rate %.2f, L1 outside %.4f, AUROC %.3f, KID %.4f, %.1f s/cf",
            name,
            metrics["target_rate"],
            metrics["l1_outside_lesions"],
            metrics["lesion_auroc"],
            kid,
            metrics["seconds_per_counterfactual"],
        )
    if args.save_images:
        Path(args.save_images).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(Path(args.save_images) / "dvce_counterfactuals.npz", **saved)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2, default=float)
        os.replace(tmp, out)
    short = {
        k: {
            m: v[m]
            for m in ("target_rate", "l1_outside_lesions", "lesion_auroc", "kid_vs_real_healthy", "seconds_per_counterfactual")
        }
        for k, v in result["variants"].items()
    }
    print(json.dumps({"classifier_heldout": result["classifier_heldout"], "variants": short}, indent=2))
    return result


if __name__ == "__main__":
    main()
