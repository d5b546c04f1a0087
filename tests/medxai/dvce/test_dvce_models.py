"""The DDPM (training step, loss decrease, save/load, sampling), robust training and the trainers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medxai.diffusion.ddpm import DDPMNetConfig, ImageDDPM, load_ddpm, save_ddpm
from medxai.networks.classifiers import TinyCNN
from medxai.training.dvce import RobustConfig, train_classifier, train_ddpm
from medxai.training.robust import adversarial_examples, l2_pgd, robust_accuracy, robust_loss
from medxai.training.trainers import TrainConfig


def _smooth_images(n: int, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    c = torch.rand((n, 3, 1, 1), generator=gen)
    r = 0.3 + 0.4 * torch.rand((n, 1, 1, 1), generator=gen)
    disc = ((yy**2 + xx**2) < r**2).float()
    return (c * disc).clamp(0, 1)


def _tiny(size: int = 32) -> ImageDDPM:
    return ImageDDPM(
        DDPMNetConfig(image_size=size, block_out_channels=(16, 32), norm_num_groups=8), generator=torch.Generator().manual_seed(0)
    )


def test_ddpm_training_loss_decreases() -> None:
    ddpm = _tiny()
    images = _smooth_images(32)
    hist = train_ddpm(ddpm, images, TrainConfig(steps=40, batch_size=16, lr=2e-3, ema_decay=0.9, seed=0))
    losses = hist["losses"]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5, losses
    assert not ddpm.training


def test_ddpm_save_load_and_sample(tmp_path: Path) -> None:
    ddpm = _tiny()
    path = save_ddpm(ddpm, tmp_path / "ddpm.safetensors", {"note": "test"})
    back = load_ddpm(path)
    for (k, a), (_, b) in zip(ddpm.unet.state_dict().items(), back.unet.state_dict().items()):
        assert torch.equal(a, b), k
    s1 = back.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    s2 = back.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert s1.shape == (2, 3, 32, 32) and torch.equal(s1, s2)
    assert float(s1.min()) >= 0.0 and float(s1.max()) <= 1.0
    (tmp_path / "bad.json").write_text('{"kind": "other"}')
    (tmp_path / "bad.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="ImageDDPM"):
        load_ddpm(tmp_path / "bad.safetensors")


def test_ddpm_config_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DDPMNetConfig(image_size=30, block_out_channels=(16, 32, 32))
    with pytest.raises(ValueError, match="norm_num_groups"):
        DDPMNetConfig(block_out_channels=(12, 32), norm_num_groups=8)
    with pytest.raises(ValueError, match="unknown network field"):
        DDPMNetConfig.from_dict({"image_sise": 64})
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        _tiny().training_loss(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="scheduler kind"):
        _tiny().make_scheduler("euler")


def test_ddpm_attention_variant_builds() -> None:
    ddpm = ImageDDPM(DDPMNetConfig(image_size=16, block_out_channels=(16, 32), attention_levels=(1,), norm_num_groups=8))
    assert ddpm.eps(torch.randn(1, 3, 16, 16), 10).shape == (1, 3, 16, 16)


def test_l2_pgd_stays_in_ball_and_raises_loss() -> None:
    model = TinyCNN(3, 2, width=4).eval()
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 1, 0, 1])
    gen = torch.Generator().manual_seed(0)
    adv = l2_pgd(model, x, lambda lo: F.cross_entropy(lo, y, reduction="none"), eps=0.5, steps=5, generator=gen)
    assert torch.all((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="eps"):
        l2_pgd(model, x, lambda lo: lo[:, 0], eps=0.0)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_robust_loss_backpropagates(method: str) -> None:
    model = TinyCNN(3, 2, width=4)
    model.train()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    loss = robust_loss(model, x, y, method, eps=0.25, steps=2, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.training
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="method"):
        adversarial_examples(model, x, y, "fgsm")


def test_train_classifier_plain_and_robust() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=gen) * 0.2
    y = (torch.rand(64, generator=gen) < 0.5).long()
    x[y == 1, 0, 4:12, 4:12] += 0.7  # class 1: a red square
    for robust in (None, RobustConfig(method="trades", eps=0.1, steps=2)):
        model = TinyCNN(3, 2, width=4, generator=torch.Generator().manual_seed(1))
        hist = train_classifier(model, x, y, TrainConfig(steps=60, batch_size=32, lr=1e-2, seed=0), robust=robust)
        assert hist["train_accuracy"] > 0.85, hist["train_accuracy"]
    clean, adv = robust_accuracy(model, x, y, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= adv <= clean <= 1.0
    with pytest.raises(ValueError, match="robust.method"):
        RobustConfig(method="free")


def test_dr_classifier_shapes_and_init() -> None:
    from medxai.networks.dr import DRClassifier

    a = DRClassifier(3, 2, width=4, generator=torch.Generator().manual_seed(0))
    b = DRClassifier(3, 2, width=4, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 32, 32)
    assert a.eval()(x).shape == (2, 2)
    assert torch.equal(a(x), b.eval()(x))
    with pytest.raises(ValueError, match="positive"):
        DRClassifier(3, 0)
