"""A small CNN for referable diabetic retinopathy on fundus crops (the DVCE black box and robust guide).

Lesions (microaneurysms, haemorrhages, exudates) are small and sparse, so the head pools the last
feature map with both the mean and the maximum (presence of any lesion) before the linear layer.
~0.1M parameters at ``width=16``; BatchNorm after every convolution (trains in a few hundred steps).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from medxai.networks.classifiers import init_with_generator

__all__ = ["DRClassifier"]


class DRClassifier(nn.Module):
    """Conv-BN-ReLU x5 (two max-pools), mean+max global pooling, linear head.

    Parameters
    ----------
    in_channels : int
        3 for RGB.
    num_classes : int
        2 for referable DR (0 = non-referable, 1 = referable), 5 for grades.
    width : int
        Channels of the first block (then 2x, 4x).
    generator : torch.Generator, optional
        Initialises the weights (seed 0 when omitted).

    Layer names: ``features.conv1`` ... ``features.conv5``, ``features.act5`` (a Grad-CAM layer), ``head``.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, width: int = 16, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or width < 1:
            raise ValueError(f"in_channels, num_classes and width must be positive, got {in_channels}, {num_classes}, {width}.")
        w = width
        chans = [(in_channels, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w)]
        layers: list[tuple[str, nn.Module]] = []
        for i, (cin, cout) in enumerate(chans, start=1):
            layers += [
                (f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                (f"bn{i}", nn.BatchNorm2d(cout)),
                (f"act{i}", nn.ReLU()),
            ]
            if i in (2, 4):
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(8 * w, num_classes)
        self.in_channels, self.num_classes = in_channels, num_classes
        init_with_generator(self, generator if generator is not None else torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, K)``."""
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))
