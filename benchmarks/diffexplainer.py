"""DiffExplainer speed at the CPU default (configs/diffae_cpu64.yaml, 64x64, 4-slice stacks).

Reports, all measured in the same process:

* seconds per explained case: semantic encoding, 20-step DDIM stochastic encoding of the 4 slices,
  and 20-step decoding of reconstruction + z+ + z- (12 slices in one batch), teacher re-scoring;
* the sampling loop's achieved GFLOP/s (FLOPs of one UNet call counted with
  ``torch.utils.flop_counter``) against a large float32 matmul measured in the same run;
* the inversion error (PSNR of encode -> decode) at 20/50/100 steps when trained weights are given;
* peak resident memory of autoencoder training steps (batch 16), measured in a child process.

Usage::

    python benchmarks/diffexplainer.py [--weights runs/ct_prognosis/autoencoder.safetensors] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medxai.diffusion import DiffusionAutoencoder, ScheduleConfig, load_autoencoder  # noqa: E402
from medxai.networks.agent import Agent  # noqa: E402
from medxai.networks.classifiers import TinyCNN  # noqa: E402
from medxai.networks.diffae import DiffAENet, DiffAENetConfig  # noqa: E402
from medxai.registry import CT_STACK, get_method  # noqa: E402


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def unet_flops(ae: DiffusionAutoencoder, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ae.config
    x = torch.randn(batch, 1, cfg.image_size, cfg.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        ae.net(x, torch.full((batch,), 500), torch.randn(batch, cfg.z_dim))
    return float(fc.get_total_flops())


def _train_peak(conn: Any, net_cfg: dict, steps: int, batch: int, threads: int) -> None:
    torch.set_num_threads(threads)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ae = DiffusionAutoencoder(DiffAENet(DiffAENetConfig.from_dict(net_cfg)))
    opt = torch.optim.Adam(ae.parameters(), 2e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, net_cfg["image_size"], net_cfg["image_size"], generator=gen)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = ae.training_loss(x, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = (time.perf_counter() - t0) / steps
    conn.send(
        {
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "baseline_rss_mb": before / 1024,
            "seconds_per_step": dt,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "diffae_cpu64.yaml"))
    ap.add_argument("--weights", default=None, help="trained autoencoder (.safetensors); random weights if omitted")
    ap.add_argument("--cases", type=int, default=1, help="cases explained together per timed call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = yaml.safe_load(Path(args.config).read_text())
    net_cfg = DiffAENetConfig.from_dict(cfg["network"])
    if args.weights:
        ae = load_autoencoder(args.weights, net_cfg, ScheduleConfig.from_dict(cfg["schedule"]))
    else:
        ae = DiffusionAutoencoder(DiffAENet(net_cfg), ScheduleConfig.from_dict(cfg["schedule"])).eval()
        with torch.no_grad():  # non-zero outputs so the loop does real work
            ae.net.unet.conv_out.weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    s = net_cfg.image_size
    teacher = TinyCNN(4, 2, width=16).eval()
    agent = Agent(4 * net_cfg.z_dim, teacher.head.in_features, 2, teacher.head)
    spec = get_method("diffexplainer", CT_STACK)  # built as every job builds it: the registry
    settings = spec.settings_from({"step_sizes": [1.0], "encode_steps": args.steps, "decode_steps": args.steps})
    explainer = spec.build(teacher, settings, {"autoencoder": ae, "agent": agent}, check_weights=False)
    x = torch.rand(args.cases, 4, s, s, generator=torch.Generator().manual_seed(1))
    explainer.explain(x, 1)  # warm-up
    mm_before = matmul_gflops()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        explainer.explain(x, 1)
        times.append(time.perf_counter() - t0)
    mm_after = matmul_gflops()
    per_case = statistics.median(times) / args.cases
    # FLOPs of the loop: steps x (encode on 4n slices + decode on 12n slices); encoder and teacher are tiny
    n = args.cases
    loop_flops = args.steps * (unet_flops(ae, 4 * n) + unet_flops(ae, 12 * n))
    # time the sampling loop alone (decode 12 slices x steps) for its FLOP rate
    z = torch.randn(12 * n, net_cfg.z_dim)
    xT = torch.randn(12 * n, 1, s, s)
    ae.decode(xT, z, args.steps)
    dec_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ae.decode(xT, z, args.steps)
        dec_times.append(time.perf_counter() - t0)
    dec_rate = args.steps * unet_flops(ae, 12 * n) / statistics.median(dec_times) / 1e9
    mm = max(mm_before, mm_after)
    result: dict[str, Any] = {
        "config": args.config,
        "params": ae.net.num_parameters(),
        "unet_gflop_per_slice": unet_flops(ae, 1) / 1e9,
        "threads": args.threads,
        "steps": args.steps,
        "seconds_per_case": per_case,
        "explain_times": times,
        "explain_gflops": loop_flops / statistics.median(times) / 1e9,
        "decode_loop_gflops": dec_rate,
        "matmul_gflops": [mm_before, mm_after],
        "decode_loop_fraction_of_matmul": dec_rate / mm,
        "explain_fraction_of_matmul": loop_flops / statistics.median(times) / 1e9 / mm,
    }
    if args.weights:
        from medxai.metrics.counterfactual import psnr

        gen = torch.Generator().manual_seed(2)
        data_path = Path(args.weights).parent / "data_test.npz"
        if data_path.is_file():
            import numpy as np

            with np.load(data_path) as f:
                imgs = torch.from_numpy(f["stacks"][:2]).reshape(-1, 1, s, s)
        else:
            imgs = torch.rand(8, 1, s, s, generator=gen)
        result["inversion_psnr"] = {}
        for steps in (20, 50, 100):
            rec = ae.reconstruct(imgs, steps, steps)
            result["inversion_psnr"][steps] = float(psnr(imgs, rec).mean())
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_train_peak, args=(child, cfg["network"], 5, 16, args.threads))
    proc.start()
    result["training_b16"] = parent.recv()
    proc.join()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
