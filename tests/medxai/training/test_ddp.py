"""Autoencoder and teacher under torchrun with DistributedDataParallel on the CPU (gloo, 2 processes):
the same loss curve and weights as one process with the same global batch; only rank 0 writes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("ddp_worker.py")

# the tiny CT config the pipeline tests share (tests/pipelines is not on this file's import path)
_spec = importlib.util.spec_from_file_location(
    "_tiny_models", Path(__file__).resolve().parents[2] / "pipelines" / "tiny_models.py"
)
assert _spec is not None and _spec.loader is not None
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed gloo backend, which the 2-process CPU check needs",
)


def _ct_config(folder: Path) -> Path:
    """A CT config whose teacher (TinyCNN, no BatchNorm) trains on 8 stored stacks, batch 4."""
    assert not folder.exists()
    return _tiny.write_npz_ct_config(folder, {"steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0})


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lr: float) -> None:
    """Same weights up to rounding. Adam moves every weight by about ``lr`` whatever its gradient's size,
    so where a gradient is ~0 the rounding of the rank average can change a step: those few weights
    may differ by up to one step; nearly all agree to 1e-5."""
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=lr, msg=key)
    x, y = (torch.cat([v.flatten().float() for v in d.values()]) for d in (a, b))
    assert float(((x - y).abs() <= 1e-5).float().mean()) > 0.99


def test_two_gloo_ranks_follow_the_one_process_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    from medxai.training.checkpoint import load_weights

    two_config, one_config = _ct_config(tmp_path / "two_cfg"), _ct_config(tmp_path / "one_cfg")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(tmp_path / "two"), str(two_config)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank0]"))[-4000:]
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    one = ddp_worker.run(tmp_path / "one", one_config)
    assert one is not None and two["world_size"] == 2 and one["world_size"] == 1

    for part in ("autoencoder", "teacher"):
        assert len(two[part]) == len(one[part]) == ddp_worker.CFG.steps
        np.testing.assert_allclose(two[part], one[part], rtol=1e-4)
        _close(two[f"{part}_state"], one[f"{part}_state"], ddp_worker.CFG.lr)
    # only rank 0 wrote checkpoints (steps 3 and 6 of each model)
    assert json.loads((tmp_path / "two" / "writes_rank0.json").read_text()) == ["ae.resume.pt"] * 2 + ["teacher.resume.pt"] * 2
    assert json.loads((tmp_path / "two" / "writes_rank1.json").read_text()) == []
    # the CLI's path: medxai.training.ct opens the process group itself; rank 0 writes the weights
    _close(
        load_weights(two_config.with_name("teacher.safetensors")), load_weights(one_config.with_name("teacher.safetensors")), 1e-3
    )
    assert not dist.is_initialized()
