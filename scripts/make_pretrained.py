"""Copy trained phantom models into ``medxai/pretrained`` (float16) for the demo and ``medxai bench --pretrained``.

The shipped weights are produced by these commands (from the repository root, CPU, about an hour):

    medxai train teacher     -c configs/ct_prognosis.yaml
    medxai train autoencoder -c configs/ct_prognosis.yaml --minutes 40
    medxai train agent       -c configs/ct_prognosis.yaml
    medxai train diffusion   -c configs/ddpm_fundus_cpu64.yaml -o runs/dr/ddpm.safetensors
    medxai train classifier  -c configs/dr_fundus.yaml
    medxai train classifier  -c configs/dr_fundus.yaml --robust
    python scripts/make_pretrained.py --ct runs/ct_prognosis --fundus runs/dr

The last step also records, in ``ct/autoencoder.json`` (``"reconstruction_error"``), the shipped
autoencoder's reconstruction-error statistics at the encode/decode steps of ``RECON_STEPS`` on a
held-out phantom cohort (``RECON_SEED``, ``RECON_CASES`` cases; not a seed of training (1, 2), the
bench (7001-7003) or the demo (9003)); ``medxai explain`` compares a query's error with them
(:mod:`pipelines.input_check`). To record them alone for the weights already shipped (a few
minutes on a CPU: 7 minutes on two busy cores; how the current file was made):

    python scripts/make_pretrained.py --recon-reference-only

It also records the reference semantic codes (``"latent_distance"``: per-dimension mean and sd of the
combined stack latent and the leave-one-out distribution of the mean squared standardised code,
:mod:`medxai.metrics.latent`) on the same cohort, encoder only (about 10 s on a CPU); alone, for the
weights already shipped (how the current entry was made):

    python scripts/make_pretrained.py --latent-reference-only

``medxai bench --pretrained`` also needs the models that only the bench uses: the shortcut
scenario's teacher and agent, the model swap's emphysema teacher and agent and its two DR classifier
pairs (haemorrhages only, exudates only), the randomised teacher's agent and one NN-Explainer per
model (about 25 minutes of training on 2 cores). They are products of the bench config alone (seeded), so they
ship too: run the full bench once into a model cache, then copy them (how the current files were made):

    medxai bench -o bench_out --pretrained --models bench_models
    python scripts/make_pretrained.py --bench-models bench_models

Every floating-point tensor is stored as float16 (half the size; the loaders cast back to the
network's float32). The JSON sidecars (architecture, training history) are copied with a note of
where the weights came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.pretrained import BENCH_PARTS

PARTS = {"ct": ("teacher", "autoencoder", "agent"), "fundus": ("ddpm", "classifier", "robust_classifier")}

#: held-out phantom cohort of the shipped autoencoder's reconstruction-error reference
RECON_SEED, RECON_CASES = 5, 40
#: (encode_steps, decode_steps) pairs recorded: the config's 20/20 and two quicker settings
RECON_STEPS = ((20, 20), (10, 10), (5, 5))


def convert(src: Path, dest: Path) -> int:
    """Write ``src`` (.safetensors) as float16 to ``dest`` with its JSON sidecar; returns the bytes written."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    with safe_open(str(src), "pt") as fh:
        metadata = fh.metadata()
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    save_file(half, str(tmp), metadata=metadata)
    tmp.replace(dest)
    dest.chmod(0o644)  # package data: readable by every user of the install
    side = src.with_suffix(".json")
    if side.is_file():
        meta = json.loads(side.read_text())
        meta["shipped"] = {"from": str(src), "stored_as": "float16"}
        dest.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    assert all(torch.isfinite(v.float()).all() for v in half.values() if v.is_floating_point()), f"{src}: not finite in float16"
    return dest.stat().st_size


def record_recon_references(dest: Path, config: Path) -> None:
    """Record the reconstruction-error references of ``dest/ct/autoencoder.safetensors`` in its side-car."""
    from medxai.data import ct_stack_set
    from medxai.diffusion import load_autoencoder
    from medxai.metrics.reconstruction import reconstruction_reference, record_reference
    from medxai.training.ct import load_ct_config, stack_config

    cfg = load_ct_config(config)
    weights = dest / "ct" / "autoencoder.safetensors"
    ae = load_autoencoder(weights)  # architecture from the side-car
    phantom = str(cfg.get("data.phantom", "test"))
    stacks = ct_stack_set(RECON_CASES, RECON_SEED, phantom=phantom, stack=stack_config(cfg)).x
    what = f"phantom '{phantom}' cases, seed {RECON_SEED}"
    for enc, dec in RECON_STEPS:
        ref = reconstruction_reference(ae, stacks, enc, dec, cases=what)
        record_reference(weights.with_suffix(".json"), ref)
        print(f"{enc}/{dec} steps: MSE mean {ref.mean:.5f} sd {ref.sd:.5f} p99 {ref.p99:.5f} max {ref.max:.5f} (n={ref.n})")


def record_latent_ref(dest: Path, config: Path) -> None:
    """Record the reference codes of ``dest/ct/autoencoder.safetensors`` in its side-car (same cohort as the
    reconstruction references)."""
    from medxai.data import ct_stack_set
    from medxai.diffusion import load_autoencoder
    from medxai.metrics.latent import latent_reference, record_latent_reference
    from medxai.training.ct import load_ct_config, stack_config

    cfg = load_ct_config(config)
    weights = dest / "ct" / "autoencoder.safetensors"
    ae = load_autoencoder(weights)
    phantom = str(cfg.get("data.phantom", "test"))
    stacks = ct_stack_set(RECON_CASES, RECON_SEED, phantom=phantom, stack=stack_config(cfg)).x
    ref = latent_reference(ae, stacks, cases=f"phantom '{phantom}' cases, seed {RECON_SEED}")
    record_latent_reference(weights.with_suffix(".json"), ref)
    print(
        f"latent distance (leave-one-out, D={ref.dim}): mean {ref.mean:.3f} sd {ref.sd:.3f} p99 {ref.p99:.3f} "
        f"max {ref.max:.3f} (n={ref.n})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the defaults are where configs/ct_prognosis.yaml and configs/dr_fundus.yaml train to (../runs/ from configs/)
    runs = Path(__file__).resolve().parents[1] / "runs"
    ap.add_argument("--ct", type=Path, default=runs / "ct_prognosis", help="folder with teacher/autoencoder/agent.safetensors")
    ap.add_argument("--fundus", type=Path, default=runs / "dr", help="folder with ddpm/classifier/robust_classifier.safetensors")
    ap.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "medxai" / "pretrained")
    ap.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "configs" / "ct_prognosis.yaml",
        help="CT config whose stack settings make the reference cohort",
    )
    ap.add_argument(
        "--recon-reference-only",
        action="store_true",
        help="only (re)record the autoencoder's reconstruction-error references for the shipped weights",
    )
    ap.add_argument(
        "--latent-reference-only",
        action="store_true",
        help="only (re)record the autoencoder's reference codes (latent distance) for the shipped weights",
    )
    ap.add_argument(
        "--bench-models",
        type=Path,
        default=None,
        help="only copy the bench's per-run models (BENCH_PARTS) from this bench model cache",
    )
    args = ap.parse_args()
    if args.bench_models is not None:
        total = 0
        for part in BENCH_PARTS:
            src = args.bench_models / f"{part}.safetensors"
            if not src.is_file():
                raise SystemExit(f"{src} does not exist; run the full bench into that cache first (see the docstring).")
            total += convert(src, args.dest / f"{part}.safetensors")
            print(f"{src} -> {args.dest / (part + '.safetensors')}")
        print(f"{total / 2**20:.1f} MiB of bench models in {args.dest}")
        return
    if args.recon_reference_only or args.latent_reference_only:
        if args.recon_reference_only:
            record_recon_references(args.dest, args.config)
        if args.latent_reference_only:
            record_latent_ref(args.dest, args.config)
        return
    total = 0
    for part, names in PARTS.items():
        src_dir = args.ct if part == "ct" else args.fundus
        for name in names:
            src = src_dir / f"{name}.safetensors"
            if not src.is_file():
                raise SystemExit(f"{src} does not exist; train it first (see this script's docstring).")
            total += convert(src, args.dest / part / f"{name}.safetensors")
            print(f"{src} -> {args.dest / part / (name + '.safetensors')}")
    print(f"{total / 2**20:.1f} MiB in {args.dest}")
    record_recon_references(args.dest, args.config)
    record_latent_ref(args.dest, args.config)


if __name__ == "__main__":
    main()
