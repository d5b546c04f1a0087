"""NN-Explainer vs RISE: seconds to get masks for ALL classes of one image.

Both run in this one process on the same input (a 4-channel 128x128 CT slice stack) and the same
MONAI classifier (ResNet-18 with a stride-2 stem, or DenseNet121). NN-Explainer: one forward pass of
the explainer network (weights do not change the timing; an untrained network is used unless
``--explainer`` points to a trained folder). RISE: ``--masks`` masks, batches of ``--batch`` masks,
one saliency map per class from the same forward passes. Medians of several runs; prints the ratio.

    python benchmarks/attribution.py            # 4000 RISE masks, 3 RISE runs (a few minutes)
    python benchmarks/attribution.py --quick    # 500 masks, 1 run, ratio extrapolated to 4000
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from medxai.explainers import NNExplainerConfig, build_explainer_network
from medxai.networks.classifiers import make_classifier
from medxai.registry import TENSOR, get_method
from medxai.targets import AllClasses

logger = logging.getLogger("benchmarks.attribution")


def _median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 RISE masks, 1 run; extrapolates to 4000.")
    parser.add_argument("--masks", type=int, default=None, help="RISE masks (default 4000, quick 500).")
    parser.add_argument("--batch", type=int, default=16, help="RISE masks per forward pass.")
    parser.add_argument("--repeats", type=int, default=None, help="RISE runs (default 3, quick 1).")
    parser.add_argument("--nn-repeats", type=int, default=20, help="NN-Explainer runs.")
    parser.add_argument("--classifier", default="resnet18", choices=("resnet18", "densenet121"))
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--explainer", default=None, help="Folder of a trained NN-Explainer (optional).")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    n_masks = args.masks or (500 if args.quick else 4000)
    repeats = args.repeats or (1 if args.quick else 3)

    gen = torch.Generator().manual_seed(0)
    classifier = make_classifier(args.classifier, in_channels=4, num_classes=args.classes, generator=gen).eval()
    x = torch.rand((1, 4, args.size, args.size), generator=gen)
    # both built through the registry, as every job builds them
    nn_spec, rise_spec = get_method("nn_explainer", TENSOR), get_method("rise", TENSOR)
    if args.explainer:
        network: Any = args.explainer  # a folder written by save_nn_explainer
    else:
        config = NNExplainerConfig(num_classes=args.classes, in_channels=4, channels=(16, 32, 64), strides=(2, 2))
        network = (build_explainer_network(config), config)
    nn_explainer = nn_spec.build(classifier, nn_spec.settings_from({"score_masked": False}), {"nn_explainer": network})
    rise = rise_spec.build(
        classifier, rise_spec.settings_from({"n_masks": n_masks, "grid_size": 8, "batch_size": args.batch}), seed=0
    )
    target = AllClasses(activation="softmax")

    nn_med, nn_times = _median_seconds(lambda: nn_explainer.explain(x, AllClasses()), args.nn_repeats, warmup=2)
    logger.info("NN-Explainer median %.4f s", nn_med)
    rise_med, rise_times = _median_seconds(lambda: rise.explain(x, target), repeats, warmup=0)
    # the NN-Explainer again after RISE, to see drift within the run
    nn_med2, _ = _median_seconds(lambda: nn_explainer.explain(x, AllClasses()), args.nn_repeats, warmup=0)
    nn_best = statistics.median([nn_med, nn_med2])
    rise_4000 = rise_med * 4000.0 / n_masks
    result = {
        "classifier": args.classifier,
        "input": [1, 4, args.size, args.size],
        "classes": args.classes,
        "threads": torch.get_num_threads(),
        "nn_explainer_seconds_median": nn_best,
        "nn_explainer_seconds_before_after": [nn_med, nn_med2],
        "rise_masks": n_masks,
        "rise_batch": args.batch,
        "rise_seconds_median": rise_med,
        "rise_seconds_runs": rise_times,
        "ratio_measured": rise_med / nn_best,
        "rise_4000_seconds": rise_4000,
        "rise_4000_extrapolated": n_masks != 4000,
        "ratio_vs_rise_4000": rise_4000 / nn_best,
    }
    print(
        f"classifier {args.classifier}, input (1, 4, {args.size}, {args.size}), {args.classes} classes, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"NN-Explainer, all-class masks, one forward: median {nn_best * 1000:.1f} ms "
        f"(before/after RISE: {nn_med * 1000:.1f} / {nn_med2 * 1000:.1f} ms, {args.nn_repeats} runs each)"
    )
    print(f"RISE, {n_masks} masks (batch {args.batch}), all classes: median {rise_med:.2f} s over {repeats} run(s)")
    label = "extrapolated linearly from the measured run" if n_masks != 4000 else "measured"
    print(f"RISE-4000: {rise_4000:.2f} s ({label}); ratio RISE-4000 / NN-Explainer = {rise_4000 / nn_best:.0f}x (target >= 100x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
