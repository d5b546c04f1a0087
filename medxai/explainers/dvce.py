"""DVCE: diffusion visual counterfactual explanations (Augustin, Boreiko, Croce, Hein, NeurIPS 2022).

The query is noised to about half the schedule and denoised by an unconditional diffusion model
whose reverse steps are guided towards the target class of the black box (see
:mod:`medxai.diffusion.guidance`). The explanation is the counterfactual itself and the difference to the
query; the heatmap is ``sum_c |G_sigma * (x_cf - x)_c|`` (signed differences smoothed per channel
before the absolute value, so that incoherent resampling noise cancels), zero outside the field of
view.

Example
-------
>>> dvce = DVCE(classifier, ddpm, robust_model=robust, config=DVCEConfig(), seed=0)  # doctest: +SKIP
>>> exp = dvce.explain(x, target=0, mask=fov)                                        # doctest: +SKIP
>>> exp.sweep.at(1.0).shape, exp.heatmaps.shape                                      # doctest: +SKIP
((B, 3, S, S), torch.Size([B, 1, S, S]))
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medxai.config import dataclass_from_mapping
from medxai.diffusion.guidance import DVCEGuidance, GuidanceConfig, guided_counterfactual
from medxai.explainers.base import Explainer, MethodResult, ModelStateGuard
from medxai.explanation import CounterfactualSweep
from medxai.registry import FUNDUS, TENSOR, register_method
from medxai.targets import ClassTarget, Target

__all__ = ["DVCE", "DVCEConfig", "DVCE_VARIANTS", "difference_heatmap", "dvce_variant", "target_log_prob"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DVCEConfig:
    """Settings of :class:`DVCE`.

    Parameters
    ----------
    num_steps : int
        Respaced reverse steps over the whole schedule (200 in the paper).
    skip_steps : int
        Steps skipped at the noisy end (100: start from about half the schedule).
    scheduler : {"ddpm", "ddim"}
        Ancestral DDPM (the paper; guidance shifts the mean by ``Sigma_t g``) or DDIM.
    eta : float
        DDIM noise (``scheduler="ddim"`` only).
    guidance : GuidanceConfig
    heatmap_sigma : float
        Gaussian smoothing (pixels) of the signed difference before the absolute value; 0: none.
    batch_size : int
        Images per guided denoising loop.
    start : {"noise", "inversion"}
        ``"noise"``: the paper's start (the query noised with fresh noise); ``"inversion"``: the query's
        deterministic DDIM inversion, denoised with DDIM ``eta = 0`` (needs ``scheduler: ddim``), so with
        zero guidance the output is the query and every change comes from the guidance.
    activation : {"softmax", "sigmoid"}
        How ``log p(target | x)`` is read from the logits: softmax for single-label classifiers (the
        DR classifiers), sigmoid for multi-label ones.
    """

    num_steps: int = 200
    skip_steps: int = 100
    scheduler: str = "ddpm"
    eta: float = 0.0
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    heatmap_sigma: float = 1.0
    batch_size: int = 8
    activation: str = "softmax"
    start: str = "noise"

    def __post_init__(self) -> None:
        if isinstance(self.guidance, Mapping):
            object.__setattr__(self, "guidance", GuidanceConfig.from_dict(self.guidance))
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {self.num_steps!r}; the paper uses 200.")
        if isinstance(self.skip_steps, bool) or not isinstance(self.skip_steps, int) or not 0 <= self.skip_steps < self.num_steps:
            raise ValueError(
                f"skip_steps must be an int in 0..{self.num_steps - 1}, got {self.skip_steps!r}; use about num_steps // 2."
            )
        if self.scheduler not in ("ddpm", "ddim"):
            raise ValueError(f"scheduler must be 'ddpm' or 'ddim', got {self.scheduler!r}.")
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}.")
        if self.start not in ("noise", "inversion"):
            raise ValueError(f"start must be 'noise' or 'inversion', got {self.start!r}.")
        if self.start == "inversion" and (self.scheduler != "ddim" or self.eta != 0):
            raise ValueError("start 'inversion' needs scheduler 'ddim' with eta 0 (a deterministic reverse process).")
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {self.activation!r}.")
        if not self.heatmap_sigma >= 0:
            raise ValueError(f"heatmap_sigma must be >= 0, got {self.heatmap_sigma}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DVCEConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "dvce")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def target_log_prob(logits: torch.Tensor, target: Target, activation: str = "softmax") -> torch.Tensor:
    """The quantity DVCE maximises, per image ``(B,)``.

    A plain :class:`~medxai.targets.ClassTarget` (no activation) means ``log p(target | x)``:
    ``log_softmax`` of the logits (``activation="softmax"``, single-label classifiers) or
    ``log sigmoid`` of the target's logit (``"sigmoid"``: multi-label classifiers, and always for
    ``K = 1``). Any other target (e.g. :class:`~medxai.targets.ScoreDirection`) is maximised as it is.
    """
    if isinstance(target, ClassTarget) and target.activation == "none":
        if logits.shape[1] == 1 or activation == "sigmoid":
            return F.logsigmoid(logits[:, target.index])
        return F.log_softmax(logits, dim=1)[:, target.index]
    return target(logits)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(r**2) / (2.0 * sigma**2))
    return k / k.sum()


def difference_heatmap(diff: torch.Tensor, sigma: float = 1.0, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Heatmap ``(B, 1, H, W)`` of signed differences ``(B, C, H, W)``: ``sum_c |G_sigma * diff_c|``.

    Parameters
    ----------
    diff : torch.Tensor
        ``x_cf - x``.
    sigma : float
        Gaussian smoothing in pixels (0: none).
    fov : torch.Tensor, optional
        ``(B, 1, H, W)`` mask; the heatmap is 0 outside it.
    """
    d = diff.detach().float()
    if sigma > 0:
        k = _gaussian_kernel(sigma).to(d.device)
        c = d.shape[1]
        pad = k.numel() // 2
        d = F.conv2d(F.pad(d, (pad, pad, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        d = F.conv2d(F.pad(d, (0, 0, pad, pad), mode="replicate"), k.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    heat = d.abs().sum(1, keepdim=True)
    if fov is not None:
        heat = heat * fov.to(heat.dtype)
    return heat


@register_method(
    "dvce",
    settings=DVCEConfig,
    inputs=frozenset({FUNDUS, TENSOR}),
    needs=("diffusion",),
    optional=("robust_model",),
    uses_mask=True,
    counterfactual=True,
    summary="DVCE: diffusion counterfactual guided by the black box (and a robust model's cone)",
)
class DVCE(Explainer):
    """Diffusion visual counterfactual explanations of a classifier.

    Parameters
    ----------
    model : nn.Module
        The black box (the "plain" classifier) ``(B, C, S, S)`` -> logits ``(B, K)``.
    diffusion : medxai.diffusion.ddpm.ImageDDPM
        Unconditional diffusion model of the image domain (same C and S, ``data_range`` of the inputs).
    robust_model : nn.Module, optional
        Adversarially robust classifier with the same classes; required for ``mode`` "cone" or "robust".
    config : DVCEConfig, optional
    seed : int or None
        Seed of the explainer's generator (start noise, ancestral noise, augmentations).
    check_weights : bool
        Verify that the black box's weights are unchanged after every call.

    Notes
    -----
    ``explain(x, target, mask=None)``: ``target`` is the class to move TOWARDS (e.g. 0 =
    "healthy"); ``mask`` ``(B, 1, S, S)`` (the field of view) confines the change. The explanation's
    ``sweep`` has one step (``+1``): the counterfactual ``(B, 1, C, S, S)`` and the black box's logits
    on it; ``diagnostics`` holds ``robust_logits`` / ``robust_counterfactual_logits`` (with a robust
    model) and ``target_reached`` (black-box argmax equals the target class).
    """

    stochastic = True
    uses_mask = True

    def __init__(
        self,
        model: nn.Module,
        diffusion: nn.Module,
        robust_model: nn.Module | None = None,
        *,
        config: DVCEConfig | None = None,
        in_channels: int | None = None,
        seed: int | None = 0,
        check_weights: bool = True,
    ) -> None:
        super().__init__(model, in_channels=in_channels, spatial_dims=2, seed=seed, check_weights=check_weights)
        if not hasattr(diffusion, "check_images") or not hasattr(diffusion, "make_scheduler"):
            raise TypeError(
                f"diffusion must be a medxai.diffusion.ddpm.ImageDDPM (or provide check_images/make_scheduler/eps), "
                f"got {type(diffusion).__name__}."
            )
        if robust_model is not None and not isinstance(robust_model, nn.Module):
            raise TypeError(f"robust_model must be a torch.nn.Module or None, got {type(robust_model).__name__}.")
        self.config = config if config is not None else DVCEConfig()
        if not isinstance(self.config, DVCEConfig):
            raise TypeError(f"config must be a DVCEConfig, got {type(self.config).__name__}.")
        if self.config.guidance.mode in ("cone", "robust") and robust_model is None:
            raise TypeError(
                f"guidance mode {self.config.guidance.mode!r} needs robust_model; pass a robust classifier "
                "(medxai train classifier --robust) or use GuidanceConfig(mode='plain') (cone projection off)."
            )
        dc = getattr(diffusion, "config", None)
        if self.in_channels is not None and dc is not None and getattr(dc, "in_channels", self.in_channels) != self.in_channels:
            raise ValueError(
                f"the classifier takes {self.in_channels} channels but the diffusion model {dc.in_channels}; "
                "use a diffusion model trained on the classifier's images."
            )
        self.diffusion = diffusion
        self.robust_model = robust_model
        self.activation = self.config.activation

    @classmethod
    def from_settings(cls, model: nn.Module, settings: Any, models: Mapping[str, Any], **kwargs: Any) -> DVCE:
        return cls(model, models["diffusion"], models.get("robust_model"), config=settings, **kwargs)

    def get_parameters(self) -> dict[str, Any]:
        params = super().get_parameters()
        params.update(self.config.to_dict())
        params["robust_model"] = self.robust_model is not None
        params["diffusion"] = type(self.diffusion).__name__
        return params

    def _explain(
        self, x: torch.Tensor, target: Target, generator: torch.Generator | None, *, mask: torch.Tensor | None = None
    ) -> MethodResult:
        if target.multi:
            raise ValueError(f"DVCE explains one target class at a time, got {target.describe()}; pass e.g. ClassTarget(0).")
        self.diffusion.check_images(x, "x")
        cfg = self.config
        guards = [ModelStateGuard(self.diffusion, check_weights=False)]
        if self.robust_model is not None and self.robust_model is not self.model:
            guards.append(ModelStateGuard(self.robust_model, check_weights=self.check_weights))
        for g in guards:
            g.__enter__()
        try:
            act = cfg.activation
            plain = lambda imgs: target_log_prob(self.model(imgs), target, act)  # noqa: E731
            robust = None
            if self.robust_model is not None:
                with torch.no_grad():
                    out_r = self.robust_model(x[:1])
                if not isinstance(out_r, torch.Tensor) or out_r.ndim != 2:
                    raise TypeError("robust_model must return logits (B, K).")
                target.validate(out_r)
                robust = lambda imgs: target_log_prob(self.robust_model(imgs), target, act)  # noqa: E731
            guidance = DVCEGuidance(plain, robust, cfg.guidance)
            cfs, infos = [], []
            for i in range(0, x.shape[0], cfg.batch_size):
                xb = x[i : i + cfg.batch_size]
                fov = None if mask is None else mask[i : i + cfg.batch_size].to(x.device)
                cf, info = guided_counterfactual(
                    self.diffusion,
                    xb,
                    guidance,
                    num_steps=cfg.num_steps,
                    skip_steps=cfg.skip_steps,
                    scheduler=cfg.scheduler,
                    eta=cfg.eta,
                    start=cfg.start,
                    fov=fov,
                    generator=generator,
                )
                cfs.append(cf)
                infos.append(info)
            cf = torch.cat(cfs)
            diagnostics: dict[str, Any] = {}
            with torch.no_grad():
                cf_logits = self.model(cf).detach().float().cpu()
                if self.robust_model is not None:
                    diagnostics["robust_logits"] = self.robust_model(x).detach().float().cpu()
                    diagnostics["robust_counterfactual_logits"] = self.robust_model(cf).detach().float().cpu()
        finally:
            for g in reversed(guards):
                g.__exit__(None, None, None)
        heat = difference_heatmap((cf - x).detach(), cfg.heatmap_sigma, mask)
        timers: dict[str, float] = {}
        for info in infos:
            for k, v in info["timers"].items():
                timers[k] = timers.get(k, 0.0) + float(v)
        diagnostics["start_timestep"] = infos[0]["start_timestep"]
        diagnostics["steps_run"] = infos[0]["steps_run"]
        if target.class_index is not None and cf_logits.shape[1] > 1:
            k = target.class_index % cf_logits.shape[1]
            diagnostics["target_reached"] = (cf_logits.argmax(1) == k).numpy()
        sweep = CounterfactualSweep(
            steps=(1.0,), images=cf.detach().cpu()[:, None], logits=cf_logits[:, None], activation=self.activation
        )
        return MethodResult(heatmaps=heat, sweep=sweep, timings=timers, diagnostics=diagnostics)


DVCE_VARIANTS = (
    "cone",
    "no_cone",
    "robust_only",
    "no_distance",
    "unguided",
    "exact_grad",
    "approx_grad",
    "noise_start",
    "inversion_start",
    "unguided_noise_start",
    "unguided_inversion_start",
)


def dvce_variant(base: DVCEConfig, name: str) -> DVCEConfig:
    """``base`` with one ablation applied, for comparing DVCE settings.

    ``cone``: unchanged; ``no_cone``: the plain classifier's gradient only; ``robust_only``: the robust
    one only; ``no_distance``: distance term off; ``unguided``: no guidance at all (what resampling
    alone changes); ``exact_grad`` / ``approx_grad``: gradient through the UNet on / off;
    ``noise_start``: the paper's start (fresh noise, ancestral DDPM); ``inversion_start``: the query's
    deterministic inversion, DDIM ``eta = 0``; ``unguided_noise_start`` / ``unguided_inversion_start``:
    no guidance from either start (with the inversion start the output should be the query).
    """
    g = base.guidance
    changes = {
        "cone": {},
        "no_cone": {"mode": "plain"},
        "robust_only": {"mode": "robust"},
        "no_distance": {"distance_scale": 0.0},
        "unguided": {"mode": "plain", "classifier_scale": 0.0, "distance_scale": 0.0, "n_augmentations": 1},
        "exact_grad": {"grad_through_unet": True},
        "approx_grad": {"grad_through_unet": False},
    }
    starts = {
        "noise_start": {"scheduler": "ddpm", "eta": 0.0, "start": "noise"},
        "inversion_start": {"scheduler": "ddim", "eta": 0.0, "start": "inversion"},
    }
    for key in ("noise_start", "inversion_start"):
        changes[key] = {}
        changes[f"unguided_{key}"] = dict(changes["unguided"])
    if name not in changes:
        raise ValueError(f"unknown DVCE variant {name!r}; use one of {', '.join(DVCE_VARIANTS)}.")
    out = dataclasses.replace(base, guidance=dataclasses.replace(g, **changes[name])) if changes[name] else base
    for key, fields in starts.items():
        if name.endswith(key):
            out = dataclasses.replace(out, **fields)
    return out
