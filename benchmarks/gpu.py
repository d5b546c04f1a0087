"""DiffExplainer at paper scale on one GPU: autoencoder and teacher training throughput, explanation time.

For a machine with a CUDA device; CI never runs it. Paper scale is ``configs/diffae_paper256.yaml`` (256x256
slices, base 64 channels, mults 1,2,4,8, z 512) wired into ``configs/ct_prognosis.yaml`` with
``autoencoder.config`` pointed at it and ``stack.size`` set to 256. All weights are random (throughput does
not depend on them) and so are the data. Measured, in one process on one device:

* autoencoder training: images/s (an image is one 256x256 slice, as the trainer counts them) and seconds per
  step of :func:`medxai.training.trainers.train_autoencoder` itself (what ``medxai train autoencoder`` runs:
  EMA, gradient clipping, bf16 autocast on CUDA, data on the CPU moved per batch), at the paper batch size
  (64), timed per step after warm-up steps through the trainer's progress hook; peak GPU memory; the host
  share of a step (noise drawn and batch gathered on the CPU, copied to the device); FLOPs per image;
* teacher training: images/s (an image is one 4x256x256 stack) of :func:`~medxai.training.trainers.train_teacher`
  with the CT config's teacher class (DenseNet121) at batch 16 and 32; peak GPU memory;
* explanation: DiffExplainer built through the registry with the config's settings (encode/decode steps
  20/20, or ``--steps``), median seconds per case of single cases and of a batch of cases explained together;
  FLOPs per case; where each model ran.

Usage::

    python benchmarks/gpu.py [--json OUT.json] [--batch-size 64] [--train-steps 30] [--warmup 5] [--cases 5]
                             [--steps 100] [--parts autoencoder teacher explain] [--teacher-on-cpu] [--fp32]
    python benchmarks/gpu.py --device cpu --smoke --json /tmp/gpu_smoke.json   # code paths only, tiny sizes

Sizes, to plan device time (counted with torch.utils.flop_counter on the meta device, no GPU needed): the
paper UNet has 66.3M parameters and the semantic encoder 14.3M; one 256x256 slice costs 373 GFLOP through the
UNet and 83 GFLOP through the encoder, so a training image is about 1.4 TFLOP (forward + backward) and a
batch of 64 about 87 TFLOP; one explained case at 20/20 steps is about 300 TFLOP (4 slices x (20 + 9 x 20)
UNet calls; 9 = the reconstruction and 2 x 4 step sizes), 5x that at ``--steps 100``. A training step keeps
roughly 1-3 GiB of activations per slice, so batch 64 may not fit on one 80 GiB GPU: the run then halves the
batch until it fits and says so (``did_not_fit``); the paper batch is then one for ``torchrun`` over several GPUs.

Without a CUDA device it refuses (exit status 1) unless ``--device cpu --smoke`` is given: ``--smoke`` shrinks
everything (32x32 slices, a tiny network of the same layout, batch 2, 2 steps, 1 case, 2 DDIM steps) so that
the code paths can be checked on a CPU in seconds; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CT_CONFIG = REPO / "configs" / "ct_prognosis.yaml"
PAPER_AE = REPO / "configs" / "diffae_paper256.yaml"
PARTS = ("autoencoder", "teacher", "explain")

# --smoke: the paper layout (four levels, attention at the last, two res blocks) at a size a CPU runs in seconds
SMOKE_SIZE = 32
SMOKE_NETWORK = {
    "image_size": SMOKE_SIZE,
    "base_channels": 8,
    "encoder_base_channels": 8,
    "z_dim": 16,
    "groups": 4,
}

from medxai.config import Config  # noqa: E402


# ------------------------------------------------------------------------------------ set-up
def job_config(smoke: bool, workdir: Path) -> tuple[Config, Config]:
    """The CT job config at paper scale (or the smoke one) and the DiffAE config it points at.

    Parameters
    ----------
    smoke : bool
        Point ``autoencoder.config`` at a shrunken copy of the paper config (written into ``workdir``).
    workdir : Path
        Where the smoke config is written (it is read again whenever a network is built: keep it until the end).

    Returns
    -------
    (Config, Config)
        The job config (validated as ``medxai train`` validates it) and the DiffAE config it names.
    """
    from medxai.training.ct import autoencoder_config, load_ct_config

    ae_path, size = PAPER_AE, 256
    if smoke:
        ae = yaml.safe_load(PAPER_AE.read_text())
        ae["network"].update(SMOKE_NETWORK)
        ae_path, size = workdir / "diffae_smoke.yaml", SMOKE_SIZE
        ae_path.write_text(yaml.safe_dump(ae))
    # an absolute path: overridden paths are read relative to the working directory, not to the config
    cfg = load_ct_config(CT_CONFIG).with_overrides({"autoencoder.config": str(ae_path), "stack.size": size})
    return cfg, autoencoder_config(cfg)  # which checks image_size == stack.size


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Free cached blocks and restart the peak-memory counter (per part)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since :func:`reset_peak`, in GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class StepClock:
    """A trainer progress hook that stamps the time after every optimiser step (device synchronised).

    The trainers call ``progress(stage, step, total)`` after each step; timing between the stamps after
    step ``warmup`` and the last step leaves out the one-off costs of the first steps (lazy CUDA and cuDNN
    initialisation, allocator growth, Adam state) and everything the trainer does before and after its loop.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, stage: str, step: int, total: int) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def per_step(self, warmup: int) -> tuple[float, float]:
        """Mean and median seconds of the steps after ``warmup``."""
        t = self.stamps[warmup - 1 :] if warmup > 0 else self.stamps
        diffs = [b - a for a, b in zip(t, t[1:])]
        if not diffs:
            raise RuntimeError(f"only {len(self.stamps)} steps were stamped; run more steps than --warmup.")
        return (t[-1] - t[0]) / len(diffs), statistics.median(diffs)


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of ``fn()`` (forward and backward, whatever it runs) by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def train_settings(section: dict[str, Any], source: str, field: str, steps: int, batch: int, bf16: bool) -> Any:
    """The config's :class:`~medxai.training.trainers.TrainConfig` (as ``medxai train`` reads it) with the
    benchmark's steps and batch size, no time budget and no checkpoints."""
    from medxai.training.ct import train_config

    tcfg = train_config(section, source, field)
    return dataclasses.replace(tcfg, steps=steps, batch_size=batch, max_seconds=None, save_every=0, bf16=bf16)


# ------------------------------------------------------------------------------------ parts
def bench_autoencoder(cfg: Config, ae_cfg: Config, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time :func:`~medxai.training.trainers.train_autoencoder` at ``args.batch_size`` slices per step; when
    that batch does not fit in GPU memory, at half of it, and so on (unless ``--no-shrink``).

    The paper's batch of 64 slices at 256x256 may not fit on one GPU (the saved activations of one slice's
    step take of the order of 1-3 GiB); ``did_not_fit`` lists the batch sizes that ran out of memory.

    Returns
    -------
    dict
        ``images_per_s``, ``seconds_per_step`` (mean) and ``seconds_per_step_median`` after warm-up, ``batch_size``,
        ``did_not_fit``, ``host_seconds_per_step``, ``gflop_per_image``, ``achieved_tflops``, ``peak_gpu_gib``, ...
    """
    batch: int = args.batch_size
    too_big: list[int] = []
    while True:
        try:
            return {**autoencoder_run(cfg, ae_cfg, args, device, batch), "did_not_fit": too_big}
        except torch.cuda.OutOfMemoryError:
            if args.no_shrink or batch == 1:
                raise
        # out of the except block: the failed run's tensors are unreferenced now and can be freed
        too_big.append(batch)
        print(f"autoencoder: batch {batch} does not fit in GPU memory; trying {batch // 2}", flush=True)
        gc.collect()
        batch //= 2


def autoencoder_run(cfg: Config, ae_cfg: Config, args: argparse.Namespace, device: torch.device, batch: int) -> dict[str, Any]:
    """One timed :func:`~medxai.training.trainers.train_autoencoder` run at ``batch`` slices per step (fresh model)."""
    from medxai.training.ct import new_autoencoder
    from medxai.training.runtime import autocast_for
    from medxai.training.trainers import train_autoencoder

    reset_peak(device)
    ae = new_autoencoder(cfg).to(device)
    size = int(cfg.get("stack.size"))
    tcfg = train_settings(ae_cfg.section("training"), ae_cfg.source, "training", args.warmup + args.train_steps, batch, args.bf16)
    # the data stay on the CPU as in train_autoencoder_from_config; every slice is one training image, so
    # batch_size / 4 stacks (twice that, to draw from) hold enough slices
    n_stacks = max(2, 2 * math.ceil(batch / 4))
    stacks = torch.rand(n_stacks, 4, size, size, generator=torch.Generator().manual_seed(0))

    # FLOPs of one image's training step (forward + backward under the trainer's autocast), counted once
    flat = stacks.reshape(-1, 1, size, size)
    gen = torch.Generator().manual_seed(1)

    def one_step() -> None:
        with autocast_for(device) if tcfg.bf16 else contextlib.nullcontext():
            loss = ae.training_loss(flat[:1].to(device), gen)
        loss.backward()

    flops = count_flops(one_step)
    ae.zero_grad(set_to_none=True)

    # the host side of a step: the trainer draws t and the noise on the CPU, gathers the batch there and copies
    t0 = time.perf_counter()
    for _ in range(3):
        idx = torch.randint(0, flat.shape[0], (tcfg.batch_size,), generator=gen)
        t, noise = ae.training_noise((tcfg.batch_size, *flat.shape[1:]), gen)
        _ = flat[idx].to(device), t.to(device), noise.to(device)
    sync(device)
    host = (time.perf_counter() - t0) / 3

    clock = StepClock(device)
    hist = train_autoencoder(ae, stacks, tcfg, progress=clock)
    mean, median = clock.per_step(args.warmup)
    return {
        "images_per_s": tcfg.batch_size / mean,
        "seconds_per_step": mean,
        "seconds_per_step_median": median,
        "timed_steps": args.train_steps,
        "warmup_steps": args.warmup,
        "batch_size": tcfg.batch_size,
        "image_shape": [1, size, size],
        "host_seconds_per_step": host,
        "gflop_per_image": flops / 1e9,
        "achieved_tflops": flops * tcfg.batch_size / mean / 1e12,
        "peak_gpu_gib": peak_gib(device),
        "parameters": ae.net.num_parameters(),
        "loss_last": hist["loss_last"],
        "train_config": dataclasses.asdict(tcfg),
        "autocast_bf16": tcfg.bf16 and device.type == "cuda",
    }


def bench_teacher(cfg: Config, args: argparse.Namespace, device: torch.device, batch: int) -> dict[str, Any]:
    """Time :func:`~medxai.training.trainers.train_teacher` on a fresh random teacher at ``batch`` stacks per step."""
    from medxai.training.ct import new_teacher
    from medxai.training.trainers import train_teacher

    reset_peak(device)
    model = new_teacher(cfg).to(device)
    size = int(cfg.get("stack.size"))
    tcfg = train_settings(
        cfg.section("training.teacher", {}), cfg.source, "training.teacher", args.warmup + args.train_steps, batch, args.bf16
    )
    gen = torch.Generator().manual_seed(2)
    stacks = torch.rand(batch, 4, size, size, generator=gen)
    labels = torch.arange(batch) % 2  # both classes, so the class weights are finite
    clock = StepClock(device)
    train_teacher(model, stacks, labels, tcfg, progress=clock)
    mean, median = clock.per_step(args.warmup)
    return {
        "batch_size": batch,
        "images_per_s": batch / mean,
        "seconds_per_step": mean,
        "seconds_per_step_median": median,
        "timed_steps": args.train_steps,
        "peak_gpu_gib": peak_gib(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "class": str(cfg.get("teacher.class_path")),
    }


@torch.no_grad()
def explain_flops(ae: Any, teacher: torch.nn.Module, settings: Any, size: int, n_slices: int, teacher_dev: torch.device) -> float:
    """FLOPs of explaining one case, from the model calls DiffExplainer makes (counted at batch 1, linear in it).

    FlopCounterMode cannot watch the whole ``explain`` (it refuses the agent's ``autograd.grad``), so the calls
    are added up: the semantic encoder on the n slices, the UNet ``encode_steps`` times on them (stochastic
    encoding) and ``decode_steps`` times on the m = 1 + 2 * len(step_sizes) decoded latents' slices (EDICT:
    two UNet calls per step), and the teacher on the query and the m decoded stacks. The agent is negligible.
    """
    dev = next(ae.parameters()).device
    x = torch.zeros(1, 1, size, size, device=dev)
    enc = count_flops(lambda: ae.net.encode(x))
    unet = count_flops(lambda: ae.net(x, torch.full((1,), 500, device=dev), torch.zeros(1, ae.z_dim, device=dev)))
    teach = count_flops(lambda: teacher(torch.zeros(1, n_slices, size, size, device=teacher_dev)))
    m = 1 + 2 * len(settings.step_sizes)
    calls = 2 if settings.sampler == "edict" else 1
    return n_slices * enc + calls * unet * n_slices * (settings.encode_steps + m * settings.decode_steps) + (1 + m) * teach


def bench_explain(cfg: Config, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median seconds per case of DiffExplainer (built through the registry) on single cases and on a batch.

    The autoencoder and the agent go to ``device`` (as ``evaluate_ct`` moves them to CUDA); the teacher
    and the inputs go there too unless ``--teacher-on-cpu`` (``evaluate_ct``'s placement).
    """
    from medxai.networks.agent import Agent
    from medxai.networks.teacher import teacher_mode
    from medxai.registry import CT_STACK, get_method
    from medxai.training.ct import new_autoencoder, new_teacher, teacher_spec
    from pipelines.models import method_settings

    reset_peak(device)
    size = int(cfg.get("stack.size"))
    seed = int(cfg.get("seed"))
    ae = new_autoencoder(cfg).eval()
    with torch.no_grad():  # the random net's output layer starts at zero: make it non-zero, as benchmarks/diffexplainer.py
        ae.net.unet.conv_out.weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(seed))
    teacher = new_teacher(cfg).eval()
    _, head = teacher_mode(teacher, teacher_spec(cfg).classifier_layer)
    n_slices = 4
    if head is not None:  # features mode: layer 2 is the teacher's classification layer
        agent = Agent(n_slices * ae.z_dim, head.in_features, head.out_features, head, torch.Generator().manual_seed(seed))
    else:
        agent = Agent(n_slices * ae.z_dim, 256, int(cfg.get("teacher.num_classes")), None, torch.Generator().manual_seed(seed))
    teacher_dev = torch.device("cpu") if args.teacher_on_cpu else device
    models = {"autoencoder": ae.to(device), "agent": agent.to(device)}
    teacher.to(teacher_dev)
    spec = get_method("diffexplainer", CT_STACK)  # built as every job builds it: the registry
    settings = method_settings(cfg, spec)
    if args.steps is not None:
        settings = dataclasses.replace(settings, encode_steps=args.steps, decode_steps=args.steps)
    explainer = spec.build(teacher, settings, models, seed=seed)
    target = int(cfg.get("target_class"))
    gen = torch.Generator().manual_seed(3)
    # the inputs sit with the teacher: the explainer scores them (and moves its images) there
    single = [torch.rand(1, n_slices, size, size, generator=gen).to(teacher_dev) for _ in range(args.cases)]
    batch = torch.rand(args.batch_cases, n_slices, size, size, generator=gen).to(teacher_dev)

    def timed(x: torch.Tensor) -> float:
        sync(device)
        t0 = time.perf_counter()
        explainer.explain(x, target)
        sync(device)
        return time.perf_counter() - t0

    flops = explain_flops(ae, teacher, settings, size, n_slices, teacher_dev)
    timed(single[0])  # warm-up of the single-case shapes
    single_times = [timed(x) for x in single]
    timed(batch)  # warm-up of the batch shapes
    batch_times = [timed(batch) for _ in range(args.batch_repeats)]
    per_case = statistics.median(single_times)
    return {
        "seconds_per_case": per_case,
        "single_case_times": single_times,
        "batched_cases": args.batch_cases,
        "batched_seconds_per_case": statistics.median(batch_times) / args.batch_cases,
        "batched_times": batch_times,
        "encode_steps": settings.encode_steps,
        "decode_steps": settings.decode_steps,
        "step_sizes": list(settings.step_sizes),
        "slices_per_network_call": settings.batch_size,
        "gflop_per_case": flops / 1e9,
        "achieved_tflops": flops / per_case / 1e12,
        "peak_gpu_gib": peak_gib(device),
        "placement": {
            "autoencoder": str(next(ae.parameters()).device),
            "agent": str(next(agent.parameters()).device),
            "teacher": str(next(teacher.parameters()).device),
            "inputs": str(teacher_dev),
        },
        "precision": "float32 (the explainer runs without autocast)",
    }


# ------------------------------------------------------------------------------------ report
def print_table(result: dict[str, Any]) -> None:
    """The figures of ``result`` as a table (parts that failed show their error)."""

    def show(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    rows: list[tuple[str, Any, str]] = []
    ae = result.get("autoencoder")
    if ae and "error" not in ae:
        rows += [
            (f"AE train, batch {ae['batch_size']}", ae["images_per_s"], "images/s"),
            *[(f"AE train, batch {b}", "out of memory", "") for b in ae["did_not_fit"]],
            ("AE train", ae["seconds_per_step"], "s/step (mean)"),
            ("AE train", ae["seconds_per_step_median"], "s/step (median)"),
            ("AE train host side", ae["host_seconds_per_step"], "s/step"),
            ("AE train", ae["achieved_tflops"], "TFLOP/s"),
            ("AE train peak memory", ae["peak_gpu_gib"], "GiB"),
        ]
    for t in result.get("teacher", []):
        if "error" not in t:
            rows += [
                (f"teacher train, batch {t['batch_size']}", t["images_per_s"], "images/s"),
                (f"teacher train, batch {t['batch_size']}", t["peak_gpu_gib"], "GiB peak"),
            ]
    ex = result.get("explain")
    if ex and "error" not in ex:
        steps = f"{ex['encode_steps']}/{ex['decode_steps']} steps"
        rows += [
            (f"explain, 1 case, {steps}", ex["seconds_per_case"], "s/case (median)"),
            (f"explain, {ex['batched_cases']} cases, {steps}", ex["batched_seconds_per_case"], "s/case"),
            ("explain", ex["achieved_tflops"], "TFLOP/s"),
            ("explain peak memory", ex["peak_gpu_gib"], "GiB"),
        ]
    print(f"\n{result['device_name']} (torch {result['torch']})")
    print(f"{'figure':<34} {'value':>13}  unit")
    for name, value, unit in rows:
        print(f"{name:<34} {show(value):>13}  {unit}")
    for part, err in result["errors"].items():
        print(f"{part}: FAILED: {err}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu only with --smoke")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the code paths (figures mean nothing)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    ap.add_argument("--batch-size", type=int, default=None, help="autoencoder slices per step (default 64, the paper's)")
    ap.add_argument("--no-shrink", action="store_true", help="fail instead of halving an autoencoder batch that does not fit")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps per run (default 30)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 5)")
    ap.add_argument("--teacher-batch-sizes", type=int, nargs="+", default=None, help="default 16 32")
    ap.add_argument("--fp32", action="store_true", help="train without the trainers' bf16 autocast on CUDA")
    ap.add_argument("--cases", type=int, default=None, help="single cases explained and timed (default 5)")
    ap.add_argument("--batch-cases", type=int, default=None, help="cases explained together (default 8)")
    ap.add_argument("--batch-repeats", type=int, default=None, help="timed batched calls (default 2)")
    ap.add_argument("--steps", type=int, default=None, help="encode and decode DDIM steps (default: the config's, 20/20)")
    ap.add_argument("--teacher-on-cpu", action="store_true", help="explain with the teacher and inputs on the CPU")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here (rewritten after each part)")
    args = ap.parse_args()

    from medxai.training.runtime import resolve_device

    if not args.smoke and not str(args.device).startswith("cuda"):
        sys.exit(f"benchmarks/gpu.py measures paper scale on a GPU; --device {args.device} is only for --smoke.")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"benchmarks/gpu.py needs a CUDA device and this machine or PyTorch build (torch {torch.__version__}) has none; "
            "run it on a GPU machine, or check its code paths with --device cpu --smoke."
        )
    device = resolve_device(args.device)
    # the defaults: paper scale, or tiny for --smoke
    defaults = {
        "batch_size": 2 if args.smoke else 64,
        "train_steps": 2 if args.smoke else 30,
        "warmup": 1 if args.smoke else 5,
        "teacher_batch_sizes": [2] if args.smoke else [16, 32],
        "cases": 1 if args.smoke else 5,
        "batch_cases": 2 if args.smoke else 8,
        "batch_repeats": 1 if args.smoke else 2,
        "steps": 2 if args.smoke else None,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 1 or args.train_steps < 1:
        sys.exit("--warmup and --train-steps must be >= 1 (the first step's time is the warm-up's).")
    args.bf16 = not args.fp32
    if device.type == "cpu":  # a smoke run checks code paths; one thread keeps it quick on a shared, small CPU
        torch.set_num_threads(1)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="medxai-gpu-bench-") as tmp:
        result = measure(args, device, Path(tmp))
    print_table(result)
    if result["errors"]:
        sys.exit(1)


def measure(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Run the parts of ``args.parts`` on ``device``; every figure, the settings and notes in one dict.

    A part that fails (e.g. out of GPU memory) records its error and the others still run; with ``--json``
    the file is rewritten after each part, so a run cut short keeps what it measured.
    """
    cfg, ae_cfg = job_config(args.smoke, workdir)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cuda = device.type == "cuda"
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "settings": settings,
        "stack_size": int(cfg.get("stack.size")),
        "autoencoder_network": ae_cfg.section("network"),
        "teacher_class": cfg.get("teacher.class_path"),
        "errors": {},
        "notes": [
            "random weights and random data in [0, 1]; throughput does not depend on them",
            "training is timed inside the real trainers (train_autoencoder, train_teacher) between the progress "
            "calls after the warm-up steps and after the last step, device synchronised at each; EMA, clipping, "
            "dropout RNG and the per-step host work (noise drawn on the CPU, batch copied) are included",
            "autoencoder images are single slices (each stack slice is one training image); teacher images are stacks",
            "explanation time is one explainer.explain call, synchronised, after a warm-up call of the same shape",
            "FLOPs from torch.utils.flop_counter; achieved TFLOP/s = FLOPs / measured time",
        ],
    }
    if args.smoke:
        result["notes"].insert(0, "SMOKE RUN: tiny sizes to check code paths; the figures mean nothing")

    def attempt(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"{name} ...", flush=True)
        try:
            out = fn()
        except (RuntimeError, ValueError) as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            out = {"error": str(err)}
            result["errors"][name] = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{name}: {json.dumps(out, default=str)[:600]}", flush=True)
        return out

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))

    if "autoencoder" in args.parts:
        result["autoencoder"] = attempt("autoencoder", lambda: bench_autoencoder(cfg, ae_cfg, args, device))
        save()
    if "teacher" in args.parts:
        result["teacher"] = []
        for b in args.teacher_batch_sizes:
            result["teacher"].append(attempt(f"teacher_b{b}", lambda b=b: bench_teacher(cfg, args, device, b)))
            save()
    if "explain" in args.parts:
        result["explain"] = attempt("explain", lambda: bench_explain(cfg, args, device))
        save()
    return result


if __name__ == "__main__":
    main()
