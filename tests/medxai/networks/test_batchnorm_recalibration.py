"""recalibrate_batchnorm: eval-mode outputs match the data's statistics after training moved the weights."""

from __future__ import annotations

import torch
from torch import nn

from medxai.networks.classifiers import recalibrate_batchnorm


def test_stale_running_statistics_are_replaced_by_the_population_ones() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 8, 8, generator=g) * 2.0 + 5.0  # mean 5, std 2: far from the initial 0 / 1
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():  # positive weights from our own generator: conv outputs have a mean near 20, not 0
        net[0].weight.copy_(torch.rand(net[0].weight.shape, generator=g) * 0.2 + 0.05)
        net[0].bias.zero_()
    net.eval()
    with torch.no_grad():
        stale = net[1](net[0](x))
    assert stale.mean(dim=(0, 2, 3)).min() > 5.0  # stale statistics: the "normalised" activations are far off zero mean
    out = recalibrate_batchnorm(net, x, batch_size=64)
    assert out is net and not net.training
    with torch.no_grad():
        fresh = net[1](net[0](x))
    # population statistics over all 256 samples: per channel mean 0 and variance 1 in eval mode
    assert fresh.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (fresh.var(dim=(0, 2, 3)) - 1).abs().max() < 0.02
    assert net[1].momentum == 0.1  # update_bn restores the layer's momentum


def test_models_without_batchnorm_are_unchanged() -> None:
    net = nn.Sequential(nn.Linear(4, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    recalibrate_batchnorm(net, torch.randn(10, 4))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
