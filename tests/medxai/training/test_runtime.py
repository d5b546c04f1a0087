"""Where training runs: --device, bf16 autocast on CUDA only, torchrun ranks, and progress against
the bound that really ends the run (steps or the time budget)."""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from medxai.training import runtime, trainers
from medxai.training.runtime import Ranks, autocast_for, resolve_device, single_process, torchrun_ranks
from medxai.training.trainers import TrainConfig, fit, random_batches


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"--device must be one of auto, cpu, cuda, got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"--device cuda was asked for but .* no CUDA device .* --device cpu"):
        resolve_device("cuda")


def test_autocast_is_bf16_on_cuda_and_nothing_on_the_cpu() -> None:
    assert isinstance(autocast_for("cpu"), contextlib.nullcontext)
    with warnings.catch_warnings():  # a CPU-only build warns that CUDA autocast is unavailable
        warnings.simplefilter("ignore")
        ctx = autocast_for(torch.device("cuda", 0))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16


def test_fit_computes_the_loss_under_the_autocast_of_the_model_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.device] = []
    dtypes: list[torch.dtype] = []

    def recording(device: torch.device) -> Any:
        seen.append(torch.device(device))
        return autocast_for(device)

    monkeypatch.setattr(trainers, "autocast_for", recording)
    net = nn.Linear(3, 1)
    x = torch.randn(8, 3)

    def loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        out = net(x[idx])
        dtypes.append(out.dtype)
        return out.pow(2).mean()

    trainers.train_loop(net, 8, TrainConfig(steps=2, batch_size=4), loss)
    assert seen == [torch.device("cpu")] * 2 and dtypes == [torch.float32] * 2  # the CPU stays float32
    seen.clear()
    trainers.train_loop(net, 8, TrainConfig(steps=2, batch_size=4, bf16=False), loss)
    assert seen == []


def test_ranks_split_the_global_batch() -> None:
    assert Ranks().part(6) == slice(0, 6) and not Ranks().active and Ranks().writer
    assert [Ranks(r, 3).part(6) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert not Ranks(1, 2).writer
    with pytest.raises(ValueError, match="batch of 5 samples does not split evenly over 2 processes"):
        Ranks(0, 2).part(5)
    with pytest.raises(ValueError, match="inconsistent"):
        Ranks(2, 2)


def test_torchrun_environment_is_read() -> None:
    assert torchrun_ranks({}) == Ranks()
    assert torchrun_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Ranks(3, 4, 1)
    with pytest.raises(ValueError, match="torchrun environment"):
        torchrun_ranks({"RANK": "4", "WORLD_SIZE": "4"})


def test_one_process_trainers_refuse_several_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="'agent' runs in one process, but torchrun started 2"):
        single_process("agent")
    single_process("agent", Ranks())


def test_a_batch_that_does_not_split_over_the_ranks_is_refused() -> None:
    net = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="choose a batch_size divisible by 2"):
        trainers.train_loop(net, 8, TrainConfig(steps=1, batch_size=3), lambda i, g: net.weight.sum(), ranks=Ranks(0, 2))


def test_distributed_is_a_no_op_in_one_process() -> None:
    with runtime.distributed(torch.device("cpu"), Ranks()) as ranks:
        assert ranks == Ranks()
        assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------------- progress
def test_progress_counts_against_the_time_budget_when_it_ends_the_run_first() -> None:
    """20000 steps with a 0.2 s budget: the bar's total is the projected step count, not 20000."""
    net = nn.Linear(3, 1)
    x = torch.randn(16, 3)
    gen = torch.Generator().manual_seed(0)
    calls: list[tuple[str, int, int]] = []

    def slow_loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        time.sleep(0.02)
        return net(x[idx]).pow(2).mean()

    run = fit(
        net,
        slow_loss,
        lambda: random_batches(16, 4, gen),
        torch.optim.SGD(net.parameters(), lr=0.01),
        generator=gen,
        max_steps=20000,
        max_seconds=0.2,
        progress=lambda *a: calls.append(a),
        stage="autoencoder",
    )
    assert run.out_of_time and len(calls) == run.steps < 100
    assert all(stage == "autoencoder" and done <= total < 100 for stage, done, total in calls)
    assert calls[-1] == ("autoencoder", run.steps, run.steps)  # the bar ends full


def test_progress_counts_steps_when_the_step_bound_ends_the_run_first() -> None:
    net = nn.Linear(3, 1)
    gen = torch.Generator()
    calls: list[tuple[str, int, int]] = []
    fit(
        net,
        lambda idx, g: net.weight.sum(),
        lambda: random_batches(4, 2, gen),
        torch.optim.SGD(net.parameters(), lr=0.01),
        generator=gen,
        max_steps=5,
        max_seconds=3600.0,
        progress=lambda *a: calls.append(a),
    )
    assert calls == [("model", s, 5) for s in range(1, 6)]
