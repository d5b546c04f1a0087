"""NN-Explainer (Stalder et al., NeurIPS 2022): one forward pass gives masks for all classes.

An explainer segmentation network ``E`` (a small MONAI ``UNet``/``BasicUNet`` trained from scratch)
maps an image ``(B, C, *spatial)`` to per-class logits ``S`` ``(B, K, *spatial)``; ``sigmoid(S_k)``
is the mask of class ``k``. It is trained against a frozen classifier ``f`` with

    L = CE/BCE(f(m * x), y) + l_e * negentropy(softmax f((1 - m) * x))
        + l_tv * (TV(m) + TV(n)) + l_a * area(S, y) + l_t * mean(m) + l_nc * mean(n),

``m = sigmoid(max over present classes of S)``, ``n = sigmoid(max over absent classes of S)``;
the area loss sorts each present class's mask values and penalises ``relu(1 - s)`` over the top
``area_low`` (5 %) and ``relu(s)`` beyond the top ``area_high`` (30 %).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from medxai.config import dataclass_from_mapping
from medxai.explainers.base import Explainer, MethodResult, ModelStateGuard
from medxai.networks.classifiers import init_with_generator, state_fingerprint
from medxai.progress import ProgressFn
from medxai.registry import ANY_IMAGE, register_method
from medxai.targets import AllClasses, ClassTarget, Target
from medxai.training.checkpoint import load_pretrained, load_state_checked, pretrained_files, save_pretrained
from medxai.training.trainers import fit

__all__ = [
    "NNExplainerConfig",
    "NNExplainer",
    "build_explainer_network",
    "nn_explainer_loss",
    "train_nn_explainer",
    "save_nn_explainer",
    "load_nn_explainer",
    "TrainingHistory",
]

logger = logging.getLogger(__name__)

_NAME = "explainer"  # explainer.safetensors + explainer.json in the network's folder


@dataclasses.dataclass
class NNExplainerConfig:
    """Settings of the explainer network and its training.

    Parameters
    ----------
    num_classes, in_channels : int
        K classes of the classifier, C input channels.
    spatial_dims : int
        2 (images, CT slice stacks as channels) or 3 (volumes).
    network : {"unet", "basicunet"}
        MONAI ``UNet`` (``channels``/``strides``) or ``BasicUNet`` (``features``).
    channels, strides : tuple of int
        MONAI ``UNet`` widths and strides; spatial sizes must be divisible by ``prod(strides)``.
    num_res_units : int
        Residual units per UNet level.
    features : tuple of int
        ``BasicUNet`` features (6 values).
    multilabel : bool
        BCE over sigmoid outputs (labels ``(B, K)`` multi-hot) instead of CE (single label).
    lambda_entropy, lambda_tv, lambda_area, lambda_mask, lambda_nonclass : float
        l_e, l_tv, l_a, l_t, l_nc of the paper (defaults 1, 1, 1, 0.1, 0.3).
    area_low, area_high : float
        Fractions of the sorted mask forced towards 1 / towards 0 (paper: 0.05, 0.30).
    lr : float
        Adam learning rate (the paper uses 1e-5 with a pretrained encoder; a small network trained
        from scratch needs 1e-4 to 1e-3).
    batch_size, max_epochs, patience : int
        Training batch size, epoch limit, early-stopping patience (epochs without a lower validation loss).
    val_fraction : float
        Share of the data held out for early stopping when no validation data is given.
    max_seconds : float or None
        Wall-clock budget for training (stops after the optimiser step that exceeds it; that epoch
        is still validated).
    max_steps_per_epoch : int or None
        Cap on optimisation steps per epoch (None = the whole loader).
    seed : int
        Seeds the network initialisation, the split and the shuffling (own generators only).
    """

    num_classes: int
    in_channels: int
    spatial_dims: int = 2
    network: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 1
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    multilabel: bool = True
    lambda_entropy: float = 1.0
    lambda_tv: float = 1.0
    lambda_area: float = 1.0
    lambda_mask: float = 0.1
    lambda_nonclass: float = 0.3
    area_low: float = 0.05
    area_high: float = 0.30
    lr: float = 1e-4
    batch_size: int = 16
    max_epochs: int = 50
    patience: int = 5
    val_fraction: float = 0.2
    max_seconds: float | None = None
    max_steps_per_epoch: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        self.features = tuple(int(f) for f in self.features)
        if self.num_classes < 1 or self.in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {self.num_classes} and {self.in_channels}.")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}.")
        if self.network not in ("unet", "basicunet"):
            raise ValueError(f"network must be 'unet' or 'basicunet', got {self.network!r}.")
        if self.network == "unet" and len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides {self.strides} must have one entry fewer than channels {self.channels}; "
                "e.g. channels=(16, 32, 64), strides=(2, 2)."
            )
        if not 0.0 < self.area_low < self.area_high < 1.0:
            raise ValueError(f"need 0 < area_low < area_high < 1, got area_low={self.area_low}, area_high={self.area_high}.")
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("lr, batch_size, max_epochs and patience must be positive.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}.")

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this number."""
        if self.network == "basicunet":
            return 16
        return int(math.prod(self.strides))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NNExplainerConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "NNExplainerConfig")


def build_explainer_network(config: NNExplainerConfig, generator: torch.Generator | None = None) -> nn.Module:
    """The explainer segmentation network: ``(B, C, *spatial)`` -> logits ``(B, K, *spatial)``."""
    if config.network == "basicunet":
        from monai.networks.nets import BasicUNet

        net: nn.Module = BasicUNet(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.num_classes,
            features=config.features,
        )
    else:
        from monai.networks.nets import UNet

        net = UNet(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.num_classes,
            channels=config.channels,
            strides=config.strides,
            num_res_units=config.num_res_units,
        )
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    return init_with_generator(net, gen)


def _total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbours along every spatial axis; mask ``(B, *spatial)``."""
    tv = mask.new_zeros(())
    for axis in range(1, mask.ndim):
        tv = tv + mask.diff(dim=axis).abs().mean()
    return tv


def _area_loss(masks: torch.Tensor, present: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Area loss over the masks ``(B, K, N)`` of the present classes ``(B, K)``."""
    if not present.any():
        return masks.new_zeros(())
    sel = masks[present]  # (P, N)
    s, _ = sel.sort(dim=1, descending=True)
    n = s.shape[1]
    k_low = max(1, int(round(low * n)))
    k_high = min(n - 1, int(round(high * n)))
    return F.relu(1.0 - s[:, :k_low]).mean() + F.relu(s[:, k_high:]).mean()


def _as_multihot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1 and num_classes > 1):
        idx = labels.reshape(-1).long()
        if (idx < 0).any() or (idx >= num_classes).any():
            raise ValueError(f"labels hold class indices outside 0..{num_classes - 1}: {idx.unique().tolist()}.")
        return F.one_hot(idx, num_classes).float()
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected (B,) class indices or (B, {num_classes}) multi-hot.")
    return labels.float()


def nn_explainer_loss(
    classifier: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    logits_s: torch.Tensor,
    config: NNExplainerConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The NN-Explainer loss.

    Parameters
    ----------
    classifier : nn.Module
        Frozen classifier ``(B, C, *spatial)`` -> ``(B, K)``.
    x : torch.Tensor
        Images ``(B, C, *spatial)``.
    labels : torch.Tensor
        ``(B,)`` class indices or ``(B, K)`` multi-hot labels.
    logits_s : torch.Tensor
        Explainer output ``S`` ``(B, K, *spatial)``.
    config : NNExplainerConfig
        Weights of the terms.

    Returns
    -------
    (torch.Tensor, dict)
        Scalar loss and its parts as floats.
    """
    k = logits_s.shape[1]
    y = _as_multihot(labels, k)
    present = y > 0.5
    shape = (*present.shape, *([1] * (logits_s.ndim - 2)))
    neg_inf = torch.finfo(logits_s.dtype).min
    s_present = logits_s.masked_fill(~present.view(shape), neg_inf).amax(dim=1)
    s_absent = logits_s.masked_fill(present.view(shape), neg_inf).amax(dim=1)
    m = torch.sigmoid(s_present)  # (B, *spatial); 0 where no class is present
    n = torch.sigmoid(s_absent)
    m_c = m.unsqueeze(1)
    out_m = classifier(m_c * x)
    if config.multilabel:
        cls = F.binary_cross_entropy_with_logits(out_m, y)
    else:
        cls = F.cross_entropy(out_m, y.argmax(dim=1))
    out_inv = classifier((1.0 - m_c) * x)
    p_inv = out_inv.softmax(dim=1)
    neg_entropy = (p_inv * out_inv.log_softmax(dim=1)).sum(dim=1).mean()
    tv = _total_variation(m) + _total_variation(n)
    area = _area_loss(torch.sigmoid(logits_s).flatten(2), present, config.area_low, config.area_high)
    mask_mean = m.mean()
    nonclass_mean = n.mean()
    total = (
        cls
        + config.lambda_entropy * neg_entropy
        + config.lambda_tv * tv
        + config.lambda_area * area
        + config.lambda_mask * mask_mean
        + config.lambda_nonclass * nonclass_mean
    )
    parts = {
        "classification": float(cls.detach()),
        "neg_entropy": float(neg_entropy.detach()),
        "tv": float(tv.detach()),
        "area": float(area.detach()),
        "mask_mean": float(mask_mean.detach()),
        "nonclass_mean": float(nonclass_mean.detach()),
        "total": float(total.detach()),
    }
    return total, parts


@dataclasses.dataclass
class TrainingHistory:
    """Per-epoch losses of :func:`train_nn_explainer`."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int = -1
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    classifier_fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DataLike = Any  # DataLoader, Dataset yielding (x, y), or a tuple (images, labels) of tensors


def _as_dataset(data: DataLike, name: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = (torch.as_tensor(d) for d in data)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in number.")
        return TensorDataset(images.float(), labels)
    raise TypeError(
        f"{name} must be a DataLoader, a Dataset of (x, y) pairs or a tuple (images, labels), got {type(data).__name__}."
    )


def _loader(data: DataLike, config: NNExplainerConfig, shuffle: bool, gen: torch.Generator, name: str) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(_as_dataset(data, name), batch_size=config.batch_size, shuffle=shuffle, generator=gen)


def train_nn_explainer(
    classifier: nn.Module,
    train_data: DataLike,
    config: NNExplainerConfig,
    val_data: DataLike | None = None,
    *,
    device: str | torch.device = "cpu",
    network: nn.Module | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[nn.Module, TrainingHistory]:
    """Train an explainer network for a frozen ``classifier`` (with :func:`medxai.training.trainers.fit`).

    Parameters
    ----------
    classifier : nn.Module
        The black box ``(B, C, *spatial)`` -> ``(B, K)``; left exactly as it was (mode, flags, weights).
    train_data : DataLoader, Dataset or (images, labels)
        Images ``(N, C, *spatial)`` and labels ``(N,)`` indices or ``(N, K)`` multi-hot.
    config : NNExplainerConfig
        Network and training settings (Adam, no gradient clipping; epochs of at most
        ``max_steps_per_epoch`` steps; early stopping after ``patience`` epochs; the best epoch's
        weights are kept).
    val_data : same types as ``train_data``, optional
        Early-stopping data; by default ``config.val_fraction`` of ``train_data`` is held out. When
        ``train_data`` is a DataLoader (no split possible) and no ``val_data`` is given, or
        ``val_fraction=0``, early stopping watches the training loss.
    device : str or torch.device
        Where to train.
    network : nn.Module, optional
        Start from this network instead of a new one (fine-tuning).
    callback : callable, optional
        ``callback(epoch, train_loss, val_loss)`` after every epoch.
    progress : ProgressFn, optional
        ``progress("nn_explainer", epoch + 1, config.max_epochs)`` after every epoch.

    Returns
    -------
    (nn.Module, TrainingHistory)
        The explainer network with the best validation loss (in eval mode) and the history.
    """
    if not isinstance(config, NNExplainerConfig):
        raise TypeError(f"config must be an NNExplainerConfig, got {type(config).__name__}.")
    gen_init = torch.Generator().manual_seed(config.seed)
    gen_split = torch.Generator().manual_seed(config.seed + 1)
    gen_shuffle = torch.Generator().manual_seed(config.seed + 2)
    if val_data is None and not isinstance(train_data, DataLoader) and config.val_fraction > 0:
        full = _as_dataset(train_data, "train_data")
        n_val = max(1, int(round(len(full) * config.val_fraction)))
        if len(full) - n_val < 1:
            raise ValueError(f"train_data has {len(full)} samples: too few to hold out {n_val} for validation.")
        train_set, val_set = random_split(full, [len(full) - n_val, n_val], generator=gen_split)
        train_loader = _loader(train_set, config, True, gen_shuffle, "train_data")
        val_loader: DataLoader | None = _loader(val_set, config, False, gen_shuffle, "val_data")
    else:
        train_loader = _loader(train_data, config, True, gen_shuffle, "train_data")
        val_loader = _loader(val_data, config, False, gen_shuffle, "val_data") if val_data is not None else None
    net = network if network is not None else build_explainer_network(config, gen_init)
    net = net.to(device)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        xb, yb = batch[0].to(device).float(), batch[1].to(device)
        if xb.shape[1] != config.in_channels or any(s % config.divisor for s in xb.shape[2:]):
            raise ValueError(
                f"batch of shape {tuple(xb.shape)} does not fit the explainer: need {config.in_channels} "
                f"channels and spatial sizes divisible by {config.divisor}; resize or pad the images."
            )
        return nn_explainer_loss(classifier, xb, yb, net(xb), config)[0]

    fingerprint = state_fingerprint(classifier)
    with ModelStateGuard(classifier, check_weights=False):  # eval + frozen, restored afterwards
        run = fit(
            net,
            loss_fn,
            lambda: train_loader,
            torch.optim.Adam(net.parameters(), lr=config.lr),
            generator=gen_shuffle,
            max_epochs=config.max_epochs,
            max_steps_per_epoch=config.max_steps_per_epoch,
            max_seconds=config.max_seconds,
            validation=(lambda: val_loader) if val_loader is not None else None,
            patience=config.patience,
            restore_best=True,
            after_epoch=callback,
            progress=progress,
            stage="nn_explainer",
        )
    history = TrainingHistory(
        train_loss=run.train_loss,
        val_loss=run.val_loss,
        best_epoch=run.best_epoch,
        steps=run.steps,
        seconds=run.seconds,
        stopped_early=run.stopped_early,
        classifier_fingerprint=fingerprint,
    )
    return net.eval(), history


def save_nn_explainer(
    network: nn.Module,
    config: NNExplainerConfig,
    folder: str | os.PathLike[str],
    history: TrainingHistory | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``explainer.safetensors`` and ``explainer.json`` (config, history) into ``folder`` atomically.

    The one model format of medxai (:func:`medxai.training.checkpoint.save_pretrained`) with the
    default name ``explainer``; returns ``folder``.
    """
    meta: dict[str, Any] = {
        "format_version": 1,
        "method": "nn_explainer",
        "kind": "nn_explainer",
        "config": config.to_dict(),
        "history": history.to_dict() if history is not None else None,
        "extra": dict(extra or {}),
        "versions": {"torch": torch.__version__},
    }
    try:
        import monai

        meta["versions"]["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    out = Path(folder)
    save_pretrained(out, network.state_dict(), meta, name=_NAME)
    return out


def load_nn_explainer(folder: str | os.PathLike[str]) -> tuple[nn.Module, NNExplainerConfig, dict[str, Any]]:
    """Load a network written by :func:`save_nn_explainer` (safetensors, no unpickling).

    ``folder``: the folder (or its ``explainer.safetensors``).

    Returns
    -------
    (nn.Module, NNExplainerConfig, dict)
        Network in eval mode, its config, and the whole JSON metadata.
    """
    weights, sidecar = pretrained_files(folder, _NAME)
    if not sidecar.is_file() or not weights.is_file():
        raise ValueError(
            f"folder {str(folder)!r} lacks {sidecar.name} or {weights.name}; pass a folder written by save_nn_explainer()."
        )
    # files written before the side-car named its kind have only "method": "nn_explainer"
    state, meta, _ = load_pretrained(folder, name=_NAME, kinds=("nn_explainer", None))
    config = NNExplainerConfig.from_dict(meta["config"])
    net = build_explainer_network(config)
    load_state_checked(net, state, str(weights), "NN-Explainer network")
    return net.eval(), config, meta


@dataclasses.dataclass(frozen=True)
class NNExplainerSettings:
    """Settings of :class:`NNExplainer` when built by the registry (the trained network comes from
    the config's ``nn_explainer.path`` folder, written by ``medxai train explainer``)."""

    score_masked: bool = True


@register_method(
    "nn_explainer",
    settings=NNExplainerSettings,
    inputs=ANY_IMAGE,
    needs=("nn_explainer",),
    summary="NN-Explainer: all-class masks from one pass of a trained explainer network",
)
class NNExplainer(Explainer):
    """Masks for all classes of a classifier from one forward pass of a trained explainer network.

    Parameters
    ----------
    model : nn.Module
        The classifier the explainer network was trained for (used for the query scores and the
        scores of the masked inputs).
    explainer : nn.Module or path
        The trained explainer network, or a folder written by :func:`save_nn_explainer`.
    config : NNExplainerConfig, optional
        Required when ``explainer`` is a network.
    score_masked : bool
        Also score ``mask_k * x`` with the classifier for every explained class (one extra forward
        per class), stored as ``scores["masked"]`` ``(B, T)``.

    Notes
    -----
    ``explain(x, AllClasses())`` returns heatmaps ``(B, K, *spatial)`` (all masks);
    ``explain(x, ClassTarget(k))`` returns ``(B, 1, *spatial)``. Values are mask probabilities in
    [0, 1]. If the classifier's weights differ from those the explainer was trained for, a warning
    is logged (the masks then explain the other classifier).
    """

    def __init__(
        self,
        model: nn.Module,
        explainer: nn.Module | str | os.PathLike[str],
        config: NNExplainerConfig | None = None,
        score_masked: bool = True,
        **kwargs: Any,
    ) -> None:
        meta: dict[str, Any] = {}
        if isinstance(explainer, (str, os.PathLike)):
            if config is not None:
                raise TypeError("pass either a folder as explainer or a network with config, not a folder and a config.")
            explainer, config, meta = load_nn_explainer(explainer)
        elif not isinstance(explainer, nn.Module):
            raise TypeError(f"explainer must be an nn.Module or a folder path, got {type(explainer).__name__}.")
        elif config is None:
            raise TypeError("config is required when explainer is a network; pass the NNExplainerConfig it was trained with.")
        kwargs.setdefault("in_channels", config.in_channels)
        kwargs.setdefault("spatial_dims", config.spatial_dims)
        super().__init__(model, **kwargs)
        self.network = explainer
        self.config = config
        self.score_masked = bool(score_masked)
        trained_for = (meta.get("history") or {}).get("classifier_fingerprint")
        if trained_for:
            now = state_fingerprint(model)
            if now != trained_for:
                logger.warning(
                    "the classifier's weights (fingerprint %s) differ from those the explainer was trained for (%s)",
                    now,
                    trained_for,
                )

    @classmethod
    def from_settings(cls, model: nn.Module, settings: Any, models: Mapping[str, Any], **kwargs: Any) -> NNExplainer:
        """``models["nn_explainer"]``: a folder written by :func:`save_nn_explainer`, or ``(network, config)``."""
        net = models["nn_explainer"]
        if isinstance(net, tuple):
            return cls(model, net[0], net[1], score_masked=settings.score_masked, **kwargs)
        return cls(model, net, score_masked=settings.score_masked, **kwargs)

    def get_parameters(self) -> dict[str, Any]:
        return {**super().get_parameters(), "config": self.config.to_dict(), "score_masked": self.score_masked}

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """All-class masks ``(B, K, *spatial)`` in [0, 1] from one forward pass of the explainer network."""
        if any(s % self.config.divisor for s in x.shape[2:]):
            raise ValueError(
                f"x has spatial shape {tuple(x.shape[2:])}; the explainer network needs sizes divisible by "
                f"{self.config.divisor}. Resize or pad the input."
            )
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                return torch.sigmoid(self.network(x))
        finally:
            self.network.train(was_training)

    def _explain(self, x: torch.Tensor, target: Target, generator: torch.Generator | None) -> Any:
        k = self.config.num_classes
        if isinstance(target, AllClasses):
            classes: Sequence[int] = list(range(k))
        elif isinstance(target, ClassTarget):
            if not -k <= target.index < k:
                raise ValueError(f"target index={target.index} is out of range for the explainer's {k} classes.")
            classes = [target.index % k]
        else:
            raise TypeError(
                f"NNExplainer explains class presence; target must be ClassTarget(k) or AllClasses(), got {target!r}."
            )
        masks = self.masks(x)[:, classes]
        diagnostics: dict[str, Any] = {"classes": list(classes)}
        if self.score_masked:
            with torch.no_grad():
                masked = [self.model(masks[:, i : i + 1] * x)[:, c] for i, c in enumerate(classes)]
            # the classifier's logit of each explained class on mask_k * x, (B, T)
            diagnostics["masked_logits"] = torch.stack(masked, dim=1).cpu()
        return MethodResult(heatmaps=masks, diagnostics=diagnostics)
