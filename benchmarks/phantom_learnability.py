"""Can a small classifier learn the phantoms' labels from anatomy? (issue: phantoms with a known answer)

Generates a training and a held-out cohort with different seeds (CT four-slice stacks at 64x64 and
fundus crops at 64x64), trains a MONAI ResNet-18 (2D, stride-2 stem) on each for a fixed number of steps
(about two minutes on 2 CPU cores), and reports the held-out AUROC, next to the AUROC of the true lesion extent (the best a
model could do given the label noise of the CT label model).

    python benchmarks/phantom_learnability.py [--train 240 --test 100 --steps 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxai.data import StackSet, ct_stack_set, fundus_set
from medxai.metrics.localisation import pixel_auroc


def train_classifier(train: StackSet, steps: int, seed: int) -> torch.nn.Module:
    from medxai.networks.classifiers import make_classifier
    from medxai.training.trainers import fit_classifier

    g = torch.Generator().manual_seed(seed)
    net = make_classifier("resnet18", train.x.shape[1], 2, 2, generator=g)
    t0 = time.perf_counter()
    fit_classifier(net, torch.from_numpy(train.x), torch.from_numpy(train.y), steps=steps, generator=g)
    net.train_seconds_ = time.perf_counter() - t0  # type: ignore[attr-defined]
    return net


@torch.no_grad()
def scores(net: torch.nn.Module, data: StackSet) -> np.ndarray:
    out = [torch.softmax(net(torch.from_numpy(data.x[i : i + 32])), 1)[:, 1] for i in range(0, len(data.x), 32)]
    return torch.cat(out).numpy()


def run(kind: str, n_train: int, n_test: int, steps: int, size: int) -> dict[str, object]:
    make = ct_stack_set if kind == "ct" else fundus_set
    t0 = time.perf_counter()
    train = make(n_train, seed=1000, size=size)
    test = make(n_test, seed=2000, size=size)
    gen_s = time.perf_counter() - t0
    net = train_classifier(train, steps, seed=0)
    s = scores(net, test)
    return {
        "n_train": n_train,
        "n_test": n_test,
        "positives_train": int(train.y.sum()),
        "positives_test": int(test.y.sum()),
        "generation_s": round(gen_s, 1),
        "train_steps_batch16": steps,
        "train_s": round(net.train_seconds_, 1),  # type: ignore[attr-defined]
        "test_auroc": round(float(pixel_auroc(s, test.y)), 3),
        "extent_auroc_ceiling": round(float(pixel_auroc(test.extent, test.y)), 3),
        "test_accuracy": round(float(((s > 0.5) == test.y).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--steps", type=int, default=600, help="training steps (batch 16) per model; ~2 min on 2 cores")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", choices=["ct", "fundus"], default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {}
    for kind in ("ct", "fundus"):
        if args.only and kind != args.only:
            continue
        result[kind] = run(kind, args.train, args.test, args.steps, args.size)
        print(kind, json.dumps(result[kind]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
