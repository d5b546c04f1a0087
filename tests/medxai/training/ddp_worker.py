"""The training runs that test_ddp.py compares: under ``torchrun --nproc-per-node 2`` (gloo) and in one
process, with the same global batch.

``python ddp_worker.py OUT CONFIG`` trains a tiny autoencoder and a tiny teacher with
:func:`medxai.training.runtime.distributed` (resume checkpoints on), then the CT teacher of ``CONFIG``
through :func:`medxai.training.ct.train_teacher_from_config` (which opens its own process group).
Rank 0 writes ``OUT/result.pt`` (loss curves and final weights); every rank writes
``OUT/writes_rank<r>.json`` (the checkpoints it wrote).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from medxai.training import trainers
from medxai.training.runtime import distributed, torchrun_ranks
from medxai.training.trainers import TrainConfig

CFG = TrainConfig(steps=6, batch_size=4, lr=2e-3, ema_decay=0.9, seed=5, save_every=3)


def tiny_autoencoder() -> Any:
    from medxai.diffusion import DiffusionAutoencoder
    from medxai.networks.diffae import DiffAENet, DiffAENetConfig

    # no dropout: each rank's masks cover its share only, so only dropout-free models match exactly
    net = DiffAENetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, z_dim=4, dropout=0.0)
    return DiffusionAutoencoder(DiffAENet(net, torch.Generator().manual_seed(0)))


def tiny_teacher() -> torch.nn.Module:
    from medxai.networks.classifiers import TinyCNN

    return TinyCNN(2, 2, width=4, generator=torch.Generator().manual_seed(0))  # no BatchNorm


def run(out: Path, config: Path | None = None) -> dict[str, Any] | None:
    """Train everything in this process (one of several under torchrun); the result on rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    ranks = torchrun_ranks()
    writes: list[str] = []
    real_save = trainers.save_train_state

    def recording_save(path: Any, **kw: Any) -> Path:
        writes.append(Path(path).name)
        return real_save(path, **kw)

    trainers.save_train_state = recording_save  # type: ignore[assignment]
    g = torch.Generator().manual_seed(1)
    stacks = torch.rand(8, 2, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0])
    try:
        with distributed(torch.device("cpu"), ranks):
            ae, teacher = tiny_autoencoder(), tiny_teacher()
            ae_hist = trainers.train_autoencoder(ae, stacks, CFG, checkpoint=out / "ae.resume.pt", ranks=ranks)
            t_hist = trainers.train_teacher(teacher, stacks, labels, CFG, checkpoint=out / "teacher.resume.pt", ranks=ranks)
    finally:
        trainers.save_train_state = real_save  # type: ignore[assignment]
    (out / f"writes_rank{ranks.rank}.json").write_text(json.dumps(writes))
    if config is not None:
        from medxai.training.ct import load_ct_config, train_teacher_from_config

        train_teacher_from_config(load_ct_config(config), device="cpu")
    if not ranks.writer:
        return None
    result = {
        "world_size": ranks.world_size,
        "autoencoder": ae_hist["losses"],
        "teacher": t_hist["losses"],
        "autoencoder_state": ae.state_dict(),
        "teacher_state": teacher.state_dict(),
    }
    torch.save(result, out / "result.pt")
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
