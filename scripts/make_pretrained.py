"""Copy trained phantom models into ``medxai/pretrained`` (float16) for the demo and ``medxai bench --pretrained``.

The shipped weights are produced by these commands (from the repository root, CPU, about an hour):

    medxai train teacher     -c configs/ct_prognosis.yaml
    medxai train autoencoder -c configs/ct_prognosis.yaml --minutes 40
    medxai train agent       -c configs/ct_prognosis.yaml
    medxai train diffusion   -c configs/ddpm_fundus_cpu64.yaml -o runs/dr/ddpm.safetensors
    medxai train classifier  -c configs/dr_fundus.yaml
    medxai train classifier  -c configs/dr_fundus.yaml --robust
    python scripts/make_pretrained.py --ct runs/ct_prognosis --fundus runs/dr

Every floating-point tensor is stored as float16 (half the size; the loaders cast back to the
network's float32). The JSON sidecars (architecture, training history) are copied with a note of
where the weights came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PARTS = {"ct": ("teacher", "autoencoder", "agent"), "fundus": ("ddpm", "classifier", "robust_classifier")}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=Path, default=Path("runs/ct_prognosis"), help="folder with teacher/autoencoder/agent.safetensors")
    ap.add_argument("--fundus", type=Path, default=Path("runs/dr"), help="folder with ddpm/classifier/robust_classifier.safetensors")
    ap.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "medxai" / "pretrained")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
