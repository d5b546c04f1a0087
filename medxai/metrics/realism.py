"""Realism of generated images: FID and KID on features of an in-domain network trained here.

The usual FID/KID use ImageNet Inception-v3 weights, which cannot be downloaded on this offline
machine (and describe natural photographs, not fundus images). The figures here use
:class:`FeatureNet`, a small CNN trained in the project on fundus phantoms to predict the referable
label, the lesion extent, the shortcut stamp and a coarse lesion map; its penultimate 128-d
global-pooled features stand in for Inception's pool3 features. The numbers are therefore only
comparable to other figures computed with the SAME feature network (saved with its training seed),
never to published FIDs.

* :func:`frechet_distance` -- ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``;
* :func:`kernel_inception_distance` -- unbiased MMD^2 with the cubic polynomial kernel
  ``(x.y / d + 1)^3``, averaged over random subsets (generator-owned).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

__all__ = [
    "FeatureNet",
    "feature_net_loss",
    "extract_features",
    "frechet_distance",
    "kernel_inception_distance",
    "realism_scores",
    "save_feature_net",
    "load_feature_net",
]

logger = logging.getLogger(__name__)


class FeatureNet(nn.Module):
    """In-domain feature extractor: four conv blocks, global average pool -> ``feature_dim`` features.

    Heads (for training only): ``label`` (K logits), ``extent`` (1), ``marker`` (1 logit) from the
    pooled features; ``lesion_map`` (1 logit per cell) from the last feature map (``S/8`` grid).

    Parameters
    ----------
    in_channels : int
    num_classes : int
    width : int
        Channels of the first block (then 2x, 4x, 4x).
    feature_dim : int
        Length of the feature vector.
    generator : torch.Generator, optional
        Initialises the weights.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        width: int = 32,
        feature_dim: int = 128,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, pool: bool) -> list[tuple[str, nn.Module]]:
            return [("conv", nn.Conv2d(cin, cout, 3, padding=1)), ("norm", nn.GroupNorm(8, cout)), ("act", nn.SiLU())] + (
                [("pool", nn.AvgPool2d(2))] if pool else []
            )

        layers: list[nn.Module] = []
        for cin, cout, pool in ((in_channels, w, True), (w, 2 * w, True), (2 * w, 4 * w, True), (4 * w, 4 * w, False)):
            layers.append(nn.Sequential(OrderedDict(block(cin, cout, pool))))
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(4 * w, feature_dim)
        self.label = nn.Linear(feature_dim, num_classes)
        self.extent = nn.Linear(feature_dim, 1)
        self.marker = nn.Linear(feature_dim, 1)
        self.lesion_map = nn.Conv2d(4 * w, 1, 1)
        self.init_kwargs = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim}
        from medxai.networks.classifiers import init_with_generator

        init_with_generator(self, generator if generator is not None else torch.Generator().manual_seed(0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` -> features ``(B, feature_dim)``."""
        return self.proj(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All heads: ``label`` (B, K), ``extent`` (B,), ``marker`` (B,), ``lesion_map`` (B, 1, S/8, S/8)."""
        fmap = self.body(x)
        f = F.silu(self.proj(fmap.mean(dim=(2, 3))))
        return {
            "label": self.label(f),
            "extent": self.extent(f)[:, 0],
            "marker": self.marker(f)[:, 0],
            "lesion_map": self.lesion_map(fmap),
        }


def feature_net_loss(net: FeatureNet, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Multi-task loss: CE(label) + MSE(extent * 20) + BCE(marker) + BCE(lesion map vs max-pooled lesion mask)."""
    out = net(x)
    loss = F.cross_entropy(out["label"], targets["label"].long())
    if "extent" in targets:
        loss = loss + F.mse_loss(out["extent"], targets["extent"].float() * 20.0)
    if "marker" in targets:
        loss = loss + F.binary_cross_entropy_with_logits(out["marker"], targets["marker"].float())
    if "lesions" in targets:
        cells = F.adaptive_max_pool2d(targets["lesions"].float(), out["lesion_map"].shape[-2:])
        loss = loss + F.binary_cross_entropy_with_logits(out["lesion_map"], cells)
    return loss


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Features ``(N, feature_dim)`` (float64 numpy) of images ``(N, C, S, S)``."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, S, S), got shape {tuple(images.shape)}.")
    was = net.training
    net.eval()
    try:
        dev = next(net.parameters()).device
        out = [net.features(chunk.to(dev).float()).cpu() for chunk in images.split(batch_size)]
    finally:
        net.train(was)
    return torch.cat(out).double().numpy()


def _check_feats(a: np.ndarray, b: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) arrays with the same D, got {a.shape} and {b.shape}.")
    if min(len(a), len(b)) < need:
        raise ValueError(f"need at least {need} samples per set, got {len(a)} and {len(b)}.")
    return a, b


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)``, ``(M, D)``."""
    a, b = _check_feats(feats_a, feats_b, 2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    if not np.isfinite(covmean).all():
        off = np.eye(s_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_a + off) @ (s_b + off))
        covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def kernel_inception_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 20,
    subset_size: int | None = None,
    generator: np.random.Generator | None = None,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with kernel ``(x.y / d + 1)^3``; returns ``(mean, std)`` over random subsets."""
    a, b = _check_feats(feats_a, feats_b, 2)
    rng = generator if generator is not None else np.random.default_rng(0)
    m = min(len(a), len(b)) if subset_size is None else min(int(subset_size), len(a), len(b))
    d = a.shape[1]
    vals = []
    for _ in range(int(subsets)):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def realism_scores(net: FeatureNet, generated: torch.Tensor, reference: torch.Tensor, kid_subsets: int = 20) -> dict[str, float]:
    """``{"fid": ..., "kid": ..., "kid_std": ...}`` of ``generated`` against ``reference`` images ``(N, C, S, S)``."""
    fa, fb = extract_features(net, generated), extract_features(net, reference)
    kid, kid_std = kernel_inception_distance(fa, fb, subsets=kid_subsets)
    return {"fid": frechet_distance(fa, fb), "kid": kid, "kid_std": kid_std, "n_generated": len(fa), "n_reference": len(fb)}


def save_feature_net(net: FeatureNet, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Path:
    """Save weights (safetensors) and the constructor arguments in ``<stem>.json``."""
    from medxai.training.checkpoint import save_weights

    return save_weights(path, net.state_dict(), {"kind": "medxai.FeatureNet", "init_kwargs": net.init_kwargs, **dict(meta or {})})


def load_feature_net(path: str | os.PathLike[str]) -> FeatureNet:
    """Load a :class:`FeatureNet` written by :func:`save_feature_net`."""
    from medxai.training.checkpoint import load_state_checked, load_weights, read_json

    p = Path(path)
    info = read_json(p.with_suffix(".json"))
    if info.get("kind") != "medxai.FeatureNet":
        raise ValueError(f"{str(p.with_suffix('.json'))!r} does not describe a FeatureNet (kind={info.get('kind')!r}).")
    net = FeatureNet(**info["init_kwargs"])
    load_state_checked(net, load_weights(p), str(p), "feature network")
    return net.eval()
