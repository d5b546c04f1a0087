"""Resume checkpoints: a run killed after a checkpoint and resumed ends with the weights, bit for bit,
and the loss history of an uninterrupted run with the same seed, for every TrainConfig trainer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medxai.training import trainers
from medxai.training.checkpoint import load_train_state, resume_path
from medxai.training.trainers import TrainConfig

CFG = TrainConfig(steps=9, batch_size=4, lr=1e-2, ema_decay=0.9, seed=3, save_every=2)
KILL_AFTER = 5  # the run dies while fetching batch 6: step 5 is done, the last checkpoint is step 4


class Killed(Exception):
    """What the injected failure raises (a stand-in for SIGKILL / a pre-empted job)."""


def _dies_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make the TrainConfig trainers' batch stream raise once ``steps`` steps are done."""
    real = trainers.random_batches

    def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        for i, idx in enumerate(real(n, batch_size, generator)):
            if i == steps:
                raise Killed(f"killed after step {steps}")
            yield idx

    monkeypatch.setattr(trainers, "random_batches", batches)


Train = Callable[[nn.Module, dict[str, Any]], dict[str, Any]]


def _check_resume(
    make: Callable[[], nn.Module], train: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Uninterrupted run vs. killed-at-step-5 run resumed from its step-4 checkpoint: same weights, same losses."""
    reference = make()
    expected = train(reference, {})
    ckpt = tmp_path / f"{what}.resume.pt"

    _dies_after(monkeypatch, KILL_AFTER)
    with pytest.raises(Killed):
        train(make(), {"checkpoint": ckpt})
    monkeypatch.undo()
    state = load_train_state(ckpt, what=what, identity={})
    assert state["step"] == 4 and len(state["losses"]) == 4 and state["losses"] == expected["losses"][:4]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # written atomically

    resumed = make()  # a fresh process would start from freshly built, untrained modules
    hist = train(resumed, {"checkpoint": ckpt, "resume": True})
    assert hist["resumed_from"] == 4 and hist["steps"] == CFG.steps
    assert hist["losses"] == expected["losses"]
    ref_state, got_state = reference.state_dict(), resumed.state_dict()
    assert list(ref_state) == list(got_state)
    for key, value in ref_state.items():
        assert torch.equal(value, got_state[key]), key
    # the run ended off the save_every grid: a final checkpoint lets a later --resume go on from step 9
    assert load_train_state(ckpt, what=what, identity={})["step"] == CFG.steps


def _images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_teacher_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.networks.classifiers import TinyCNN

    x, y = _images(12, 2, 16), torch.tensor([0, 1, 1] * 4)
    _check_resume(
        lambda: TinyCNN(2, 2, width=4, generator=torch.Generator().manual_seed(0)),
        lambda m, kw: trainers.train_teacher(m, x, y, CFG, **kw),
        tmp_path,
        monkeypatch,
        "teacher",
    )


def test_autoencoder_with_dropout_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout (p=0.1) draws from the trainer's generator: the masks after a resume are the same too."""
    from medxai.diffusion import DiffusionAutoencoder
    from medxai.networks.diffae import DiffAENet, DiffAENetConfig

    net = DiffAENetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, z_dim=4, dropout=0.1)
    stacks = _images(4, 2, 16)
    saved: list[int] = []
    _check_resume(
        lambda: DiffusionAutoencoder(DiffAENet(net, torch.Generator().manual_seed(0))),
        lambda m, kw: trainers.train_autoencoder(m, stacks, CFG, save=saved.append, **kw),
        tmp_path,
        monkeypatch,
        "autoencoder",
    )
    # the EMA weights file is saved on the same grid as the checkpoints, and at the end
    assert saved[:2] == [2, 4] and saved[-1] == CFG.steps


def test_agent_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.networks.agent import Agent

    g = torch.Generator().manual_seed(0)
    latents, logits, feats = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g), torch.randn(16, 6, generator=g)
    head = nn.Linear(6, 2)
    _check_resume(
        lambda: Agent(8, 6, 2, head, torch.Generator().manual_seed(0)),
        lambda m, kw: trainers.train_agent(m, latents, logits, feats, CFG, **kw),
        tmp_path,
        monkeypatch,
        "agent",
    )


def test_ddpm_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM
    from medxai.training.dvce import train_ddpm

    net = DDPMNetConfig(image_size=16, in_channels=3, block_out_channels=(8, 16), layers_per_block=1, dropout=0.1)
    images = _images(8, 3, 16)
    _check_resume(
        lambda: ImageDDPM(net, generator=torch.Generator().manual_seed(0)),
        lambda m, kw: train_ddpm(m, images, CFG, **kw),
        tmp_path,
        monkeypatch,
        "DDPM",
    )


@pytest.mark.parametrize("robust", [False, True], ids=["plain", "robust"])
def test_dr_classifiers_resume_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, robust: bool) -> None:
    from medxai.networks.classifiers import TinyCNN
    from medxai.training.dvce import RobustConfig, train_classifier

    x, y = _images(12, 3, 16), torch.tensor([0, 1] * 6)
    rcfg = RobustConfig(method="trades", eps=0.1, steps=1) if robust else None
    _check_resume(
        lambda: TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(0)),
        lambda m, kw: train_classifier(m, x, y, CFG, robust=rcfg, **kw),
        tmp_path,
        monkeypatch,
        "robust classifier" if robust else "classifier",
    )


# ------------------------------------------------------------------------------- refusals
def _linear_run(tmp_path: Path, cfg: TrainConfig = CFG, **kw: Any) -> dict[str, Any]:
    net = nn.Linear(3, 1)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    return trainers.train_loop(
        net, len(x), cfg, lambda idx, g: net(x[idx]).pow(2).mean(), checkpoint=tmp_path / "m.resume.pt", what="toy", **kw
    )


def test_resume_without_a_checkpoint_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot resume the toy: there is no checkpoint .*m\.resume\.pt.*save_every"):
        _linear_run(tmp_path, resume=True)


def test_resume_refuses_another_model_or_other_settings(tmp_path: Path) -> None:
    _linear_run(tmp_path)
    ckpt = tmp_path / "m.resume.pt"
    assert ckpt.is_file()
    with pytest.raises(ValueError, match=r"is a checkpoint of the 'toy' training, not of the 'teacher'"):
        load_train_state(ckpt, what="teacher", identity={})
    with pytest.raises(ValueError, match=r"other settings \(lr=0\.01 there but 0\.5 here\)"):
        _linear_run(tmp_path, TrainConfig(**{**CFG.__dict__, "lr": 0.5}), resume=True)
    # the run's bounds may change: more steps continue the finished run
    hist = _linear_run(tmp_path, TrainConfig(**{**CFG.__dict__, "steps": 12, "max_seconds": 60.0}), resume=True)
    assert hist["resumed_from"] == CFG.steps and hist["steps"] == 12 and len(hist["losses"]) == 12
    # a network of another shape: the weights do not fit, said once, naming the file
    with pytest.raises(ValueError, match=r"weights in '.*m\.resume\.pt' do not fit the toy \(model\)"):
        wide = nn.Linear(3, 2)
        x = torch.randn(16, 3)
        trainers.train_loop(wide, 16, CFG, lambda idx, g: wide(x[idx]).pow(2).mean(), checkpoint=ckpt, resume=True, what="toy")
    with pytest.raises(ValueError, match="not a readable medxai training checkpoint"):
        (tmp_path / "bad.resume.pt").write_bytes(b"not a checkpoint")
        load_train_state(tmp_path / "bad.resume.pt", what="toy", identity={})


def test_no_checkpoints_without_save_every(tmp_path: Path) -> None:
    _linear_run(tmp_path, TrainConfig(steps=3, batch_size=4))
    assert not (tmp_path / "m.resume.pt").exists()


def test_resume_path_sits_beside_the_weights(tmp_path: Path) -> None:
    assert resume_path(tmp_path / "teacher.safetensors") == tmp_path / "teacher.resume.pt"
    assert resume_path(tmp_path / "run", "autoencoder") == tmp_path / "run" / "autoencoder.resume.pt"


def test_dropout_draws_from_the_trainer_generator_and_leaves_the_global_rng() -> None:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))

    def net() -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1))
        return model

    def run(model: nn.Module) -> torch.Tensor:
        trainers.train_loop(model, len(x), TrainConfig(steps=5, batch_size=8, seed=1), lambda idx, g: model(x[idx]).pow(2).mean())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b = net(), net()
    before = torch.get_rng_state()
    first = run(a)
    assert torch.equal(torch.get_rng_state(), before)  # forked per step and restored
    try:
        torch.manual_seed(1234)  # whatever the global RNG holds, the run is the same
        assert torch.equal(run(b), first)
    finally:
        torch.set_rng_state(before)
