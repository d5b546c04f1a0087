"""The one training loop (medxai.training.trainers.fit), its EMA and the trainers built on it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from medxai.networks.classifiers import TinyCNN, state_fingerprint
from medxai.training.trainers import (
    TrainConfig,
    ema_model,
    fit,
    fit_classifier,
    random_batches,
    train_loop,
    train_teacher,
    train_with_ema,
)


def _regression(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1


def _linear(seed: int = 0) -> nn.Linear:
    net = nn.Linear(3, 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.weight.copy_(torch.randn(net.weight.shape, generator=g))
        net.bias.zero_()
    return net


def _pairs(x: torch.Tensor, y: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(batch), y.split(batch)))


def test_step_mode_stops_at_max_steps_and_reports_progress() -> None:
    x, y = _regression()
    net = _linear()
    calls: list[tuple[str, int, int]] = []
    steps_seen: list[int] = []
    gen = torch.Generator().manual_seed(0)
    run = fit(
        net,
        lambda idx, g: nn.functional.mse_loss(net(x[idx]), y[idx]),
        lambda: random_batches(len(x), 8, gen),
        torch.optim.SGD(net.parameters(), lr=0.1),
        generator=gen,
        max_steps=25,
        after_step=steps_seen.append,
        progress=lambda *a: calls.append(a),
        stage="toy",
    )
    assert run.steps == 25 and run.epochs == 1 and len(run.losses) == 25 and steps_seen == list(range(1, 26))
    assert calls == [("toy", s, 25) for s in range(1, 26)]
    assert run.losses[-1] < 0.2 * run.losses[0] and not net.training
    assert not run.stopped_early and not run.out_of_time


def test_same_seed_same_training_other_seed_other_training() -> None:
    x, y = _regression()

    def train(seed: int) -> tuple[list[float], str]:
        net = _linear()
        hist = train_loop(
            net,
            len(x),
            TrainConfig(steps=20, batch_size=8, lr=0.05, seed=seed),
            lambda idx, g: nn.functional.mse_loss(net(x[idx] + 0.1 * torch.randn(x[idx].shape, generator=g)), y[idx]),
        )
        return hist["losses"], state_fingerprint(net)

    assert train(3) == train(3)
    assert train(3)[1] != train(4)[1]


def test_epochs_cap_validate_stop_early_and_restore_the_best_epoch() -> None:
    x, y = _regression()
    net = _linear()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    epochs: list[tuple[int, float, float]] = []
    per_epoch: list[tuple[str, int, int]] = []

    def after_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        epochs.append((epoch, train_loss, val_loss))
        snapshots[epoch] = {k: v.clone() for k, v in net.state_dict().items()}

    # validation targets of the opposite sign: its loss falls, then rises as the fit gets better
    val = _pairs(x[:16], -y[:16] + 3.0, 8)
    run = fit(
        net,
        lambda b, g: nn.functional.mse_loss(net(b[0]), b[1]),
        lambda: _pairs(x, y, 8),
        torch.optim.SGD(net.parameters(), lr=0.05),
        generator=torch.Generator(),
        max_epochs=50,
        max_steps_per_epoch=3,
        validation=lambda: val,
        patience=2,
        restore_best=True,
        after_epoch=after_epoch,
        progress=lambda *a: per_epoch.append(a),
        stage="toy",
    )
    assert run.stopped_early and run.epochs == len(epochs) < 50
    assert run.steps == 3 * run.epochs  # max_steps_per_epoch cut every epoch of 8 batches to 3
    assert run.best_epoch == min(range(len(run.val_loss)), key=run.val_loss.__getitem__) == run.epochs - 3
    assert [e[2] for e in epochs] == run.val_loss and per_epoch[-1] == ("toy", run.epochs, 50)
    for k, v in net.state_dict().items():
        assert torch.equal(v, snapshots[run.best_epoch][k]), k
    # the epoch's training loss is the batch-size weighted mean of its steps
    assert math.isclose(run.train_loss[0], sum(run.losses[:3]) / 3, rel_tol=1e-6)


def test_without_validation_the_training_loss_is_watched() -> None:
    x, y = _regression()
    net = _linear()
    run = fit(
        net,
        lambda b, g: nn.functional.mse_loss(net(b[0]), b[1]),
        lambda: _pairs(x, y, 10),
        torch.optim.SGD(net.parameters(), lr=0.05),
        generator=torch.Generator(),
        max_epochs=3,
    )
    assert run.val_loss == run.train_loss and run.best_epoch == 2 and run.steps == 3 * 7  # 64 samples: 7 batches


def test_time_budget_stops_after_the_step_and_still_closes_the_epoch() -> None:
    x, y = _regression()
    net = _linear()
    run = fit(
        net,
        lambda b, g: nn.functional.mse_loss(net(b[0]), b[1]),
        lambda: _pairs(x, y, 8),
        torch.optim.SGD(net.parameters(), lr=0.05),
        generator=torch.Generator(),
        max_epochs=5,
        max_seconds=0.0,
        validation=lambda: _pairs(x, y, 32),
    )
    assert run.out_of_time and run.steps == 1 and run.epochs == 1 and len(run.val_loss) == 1


def test_diverging_loss_names_the_stage_and_step() -> None:
    net = _linear()
    gen = torch.Generator()
    with pytest.raises(RuntimeError, match=r"toy training diverged at step 1 .*lower lr"):
        fit(
            net,
            lambda idx, g: net.weight.sum() * float("nan"),
            lambda: random_batches(4, 2, gen),
            torch.optim.SGD(net.parameters(), lr=0.1),
            generator=gen,
            max_steps=3,
            stage="toy",
        )


def test_bad_limits_are_refused() -> None:
    net = _linear()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="max_steps"):
        fit(net, lambda b, g: net.weight.sum(), list, opt, generator=torch.Generator(), max_steps=0)
    with pytest.raises(ValueError, match="max_epochs"):
        fit(net, lambda b, g: net.weight.sum(), list, opt, generator=torch.Generator(), max_epochs=0)


def test_gradient_clipping_bounds_the_update() -> None:
    net = _linear()
    before = net.weight.detach().clone()
    gen = torch.Generator()
    fit(
        net,
        lambda idx, g: 1e6 * net.weight.sum(),
        lambda: random_batches(4, 2, gen),
        torch.optim.SGD(net.parameters(), lr=1.0),
        generator=gen,
        max_steps=1,
        grad_clip=0.5,
    )
    assert float((net.weight.detach() - before).norm()) == pytest.approx(0.5, rel=1e-5)


def test_ema_warms_up_as_documented_and_copies_buffers() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ema_model(net, decay=0.9)
    reference = [p.detach().clone() for p in net.parameters()]  # the average starts at the untrained weights
    for n in range(1, 30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * n)
            net[1].running_mean.add_(1.0)
        ema.update_parameters(net)
        d = min(0.9, (1 + n) / (10 + n))  # 2/11, 3/12, ... until it reaches the decay
        reference = [d * r + (1 - d) * p.detach() for r, p in zip(reference, net.parameters())]
        for r, s in zip(reference, ema.module.parameters()):
            torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-6)
        assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        ema_model(net, decay=1.0)


def test_train_with_ema_saves_and_ends_with_the_average() -> None:
    x, y = _regression()
    net = _linear()
    holder = nn.Sequential(net)
    saved: list[tuple[int, torch.Tensor]] = []
    live: list[torch.Tensor] = []

    def loss_fn(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        live.append(net.weight.detach().clone())  # what the optimiser sees at every step
        return nn.functional.mse_loss(net(x[idx]), y[idx])

    hist = train_with_ema(
        holder,
        net,
        len(x),
        TrainConfig(steps=12, batch_size=8, lr=0.05, ema_decay=0.9, save_every=5),
        loss_fn,
        save=lambda step: saved.append((step, net.weight.detach().clone())),
    )
    assert [s for s, _ in saved] == [5, 10, 12] and hist["steps"] == 12
    # the save after step 5 sees the EMA weights; step 6 starts again from the live weights
    assert not torch.equal(saved[0][1], live[5])
    assert torch.equal(saved[-1][1], net.weight.detach()) and not holder.training


def test_fit_classifier_is_repeatable_and_learns() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 16, 16, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    x[y == 1, :, :8, :8] += 1.0

    def train() -> TinyCNN:
        m = TinyCNN(2, 2, width=4, generator=torch.Generator().manual_seed(1))
        return fit_classifier(m, x, y, steps=60, batch_size=16, lr=1e-2, generator=torch.Generator().manual_seed(2))

    a, b = train(), train()
    assert state_fingerprint(a) == state_fingerprint(b) and not a.training
    with torch.no_grad():
        assert float((a(x).argmax(1) == y).float().mean()) > 0.9


def test_train_teacher_reports_its_stage() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 2, 16, 16, generator=g), torch.randint(0, 2, (20,), generator=g)
    calls: list[Any] = []
    hist = train_teacher(TinyCNN(2, 2, width=4), x, y, TrainConfig(steps=4, batch_size=4), progress=lambda *a: calls.append(a))
    assert calls == [("teacher", s, 4) for s in range(1, 5)] and hist["steps"] == 4 and len(hist["losses"]) == 4
