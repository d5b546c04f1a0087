"""Classifier guidance of diffusion visual counterfactuals (DVCE; Augustin et al., NeurIPS 2022).

The pieces, each usable alone:

* :class:`RandomAugment` -- random affine + perspective warps written with torch ops
  (``affine``-style homographies + ``grid_sample``), drawn from a caller-owned generator;
* :func:`cone_projection` -- rotate the robust classifier's gradient into the cone of half-angle
  ``alpha`` around the plain classifier's gradient;
* :class:`GuidanceConfig` / :class:`DVCEGuidance` -- the guidance of one reverse step: from the
  predicted clean image ``x0_hat`` it forms ``g_c`` (mean log-probability of the target over
  augmentations, cone-projected), the distance gradient ``g_d`` of ``mean |x0_hat - x_query|^p``,
  scales each to the norm of the noise prediction and returns ``g = l_c g_c - l_d g_d`` (with respect
  to ``x_t``);
* :func:`guided_counterfactual` -- the loop: noise the query to ``t = timesteps[skip]`` with the
  scheduler's ``add_noise``, then denoise with diffusers' ``DDPMScheduler`` (the reverse-step mean
  shifted by ``Sigma_t g``) or ``DDIMScheduler`` (the noise prediction shifted by
  ``-sqrt(1 - alpha_bar_t) g``, the classifier-guidance form for deterministic samplers).

Gradients with respect to ``x_t`` go through the UNet (vector-Jacobian products of ``x0_hat``) when
``grad_through_unet=True`` (the paper); with ``False`` the Jacobian of ``x0_hat`` is taken as a
multiple of the identity, which the per-gradient norm scaling makes exact up to the UNet's own
Jacobian -- about 3x faster on a CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from medxai.config import dataclass_from_mapping
from medxai.progress import ProgressFn

__all__ = [
    "AugmentConfig",
    "RandomAugment",
    "cone_projection",
    "angle_degrees",
    "GuidanceConfig",
    "DVCEGuidance",
    "Objective",
    "guided_counterfactual",
    "GUIDANCE_MODES",
]

logger = logging.getLogger(__name__)

#: "cone": robust gradient projected into the cone around the plain one; "plain" / "robust": one classifier
GUIDANCE_MODES = ("cone", "plain", "robust")

#: log p(target | images) per image: images (B, C, H, W) in the data range -> (B,)
Objective = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- augmentations
@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random warps applied to ``x0_hat`` before the classifiers see it.

    Parameters
    ----------
    rotate_deg : float
        Rotation drawn uniformly from ``[-rotate_deg, rotate_deg]``.
    scale : float
        Isotropic zoom drawn from ``[1 - scale, 1 + scale]``.
    translate : float
        Shift per axis as a fraction of the half-width, from ``[-translate, translate]``.
    perspective : float
        Perspective coefficients (normalised coordinates) from ``[-perspective, perspective]``.
    noise_std : float
        Standard deviation of added Gaussian noise (in the data range).
    """

    rotate_deg: float = 10.0
    scale: float = 0.05
    translate: float = 0.05
    perspective: float = 0.05
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotate_deg", "scale", "translate", "perspective", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}.")
        if self.scale >= 1:
            raise ValueError(f"augment.scale must be < 1, got {self.scale}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "augment")


class RandomAugment:
    """Random affine + perspective warps of a batch, ``n`` per image (torch ops only).

    Parameters
    ----------
    config : AugmentConfig
    n : int
        Warps per image; ``n = 1`` with all ranges 0 is the identity.
    """

    def __init__(self, config: AugmentConfig | None = None, n: int = 4) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (augmentations per image) must be an int >= 1, got {n!r}.")
        self.config = config or AugmentConfig()
        self.n = n

    def homographies(self, count: int, generator: torch.Generator | None) -> torch.Tensor:
        """``(count, 3, 3)`` maps from output to input normalised coordinates ``(x, y, 1)``."""
        c = self.config
        u = torch.rand((count, 6), generator=generator) * 2.0 - 1.0  # uniform [-1, 1]
        ang = u[:, 0] * math.radians(c.rotate_deg)
        s = 1.0 + u[:, 1] * c.scale
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        h = torch.zeros((count, 3, 3))
        h[:, 0, 0], h[:, 0, 1], h[:, 0, 2] = cos, -sin, u[:, 2] * c.translate
        h[:, 1, 0], h[:, 1, 1], h[:, 1, 2] = sin, cos, u[:, 3] * c.translate
        h[:, 2, 0], h[:, 2, 1], h[:, 2, 2] = u[:, 4] * c.perspective, u[:, 5] * c.perspective, 1.0
        return h

    def is_identity(self) -> bool:
        c = self.config
        return self.n == 1 and not any((c.rotate_deg, c.scale, c.translate, c.perspective, c.noise_std))

    def draw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
        """Random warp parameters for the batch ``x`` ``(B, C, H, W)`` (``None`` for the identity)."""
        if self.is_identity():
            return None
        b = x.shape[0]
        params = {"homographies": self.homographies(self.n * b, generator).to(x.device, x.dtype)}
        if self.config.noise_std > 0:
            params["noise"] = (self.config.noise_std * torch.randn((self.n * b, *x.shape[1:]), generator=generator)).to(
                x.device, x.dtype
            )
        return params

    def apply(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        """Warp ``x`` ``(B, C, H, W)`` with ``params`` from :meth:`draw` into ``(n * B, C, H, W)``.

        Rows are warp-major (``k*B .. k*B+B-1`` hold warp ``k``); differentiable with respect to ``x``;
        areas mapped from outside the image are 0.
        """
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}.")
        if params is None:
            return x
        b, _, hgt, wid = x.shape
        h = params["homographies"]
        if h.shape[0] != self.n * b:
            raise ValueError(f"params were drawn for {h.shape[0] // self.n} images, x has {b}.")
        ys = torch.linspace(-1.0 + 1.0 / hgt, 1.0 - 1.0 / hgt, hgt, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0 + 1.0 / wid, 1.0 - 1.0 / wid, wid, device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)  # (1, HW, 3)
        mapped = base @ h.transpose(1, 2)  # (nB, HW, 3)
        grid = (mapped[..., :2] / mapped[..., 2:].clamp_min(1e-3)).reshape(self.n * b, hgt, wid, 2)
        out = F.grid_sample(x.repeat(self.n, 1, 1, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if "noise" in params:
            out = out + params["noise"]
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw warps from ``generator`` and apply them: ``(B, C, H, W)`` -> ``(n * B, C, H, W)``."""
        return self.apply(x, self.draw(x, generator))


# ------------------------------------------------------------------------ cone projection
def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between corresponding rows of ``a`` and ``b`` ``(B, ...)`` -> ``(B,)``."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (a2 * b2).sum(1) / (a2.norm(dim=1) * b2.norm(dim=1)).clamp_min(1e-30)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def cone_projection(g_robust: torch.Tensor, g_plain: torch.Tensor, alpha_deg: float = 30.0) -> torch.Tensor:
    """Keep ``g_robust`` if it lies within ``alpha_deg`` of ``g_plain``, else rotate it onto the cone.

    Per image (rows of ``(B, ...)``): when the angle between the two gradients exceeds ``alpha``, the
    result is the unit vector ``alpha`` away from ``g_plain`` towards ``g_robust`` in the plane they
    span, times ``||g_robust||``. If ``g_robust`` is (anti)parallel to ``g_plain`` outside the cone (no
    plane), ``g_plain``'s direction is used.

    Parameters
    ----------
    g_robust, g_plain : torch.Tensor
        ``(B, ...)`` gradients of the robust and the plain classifier.
    alpha_deg : float
        Half-angle of the cone in degrees, in ``(0, 90]``.

    Returns
    -------
    torch.Tensor
        ``(B, ...)`` like ``g_robust``.
    """
    if not 0.0 < float(alpha_deg) <= 90.0:
        raise ValueError(f"alpha_deg must be in (0, 90], got {alpha_deg!r}; the paper uses 30.")
    if g_robust.shape != g_plain.shape:
        raise ValueError(f"g_robust {tuple(g_robust.shape)} and g_plain {tuple(g_plain.shape)} must have the same shape.")
    b = g_robust.shape[0]
    r = g_robust.reshape(b, -1)
    n = g_plain.reshape(b, -1)
    r_norm = r.norm(dim=1, keepdim=True)
    n_hat = n / n.norm(dim=1, keepdim=True).clamp_min(1e-30)
    along = (r * n_hat).sum(1, keepdim=True)
    ortho = r - along * n_hat
    o_norm = ortho.norm(dim=1, keepdim=True)
    cos_angle = along / r_norm.clamp_min(1e-30)
    alpha = math.radians(float(alpha_deg))
    outside = cos_angle < math.cos(alpha)
    o_hat = torch.where(o_norm > 1e-12 * r_norm.clamp_min(1e-30), ortho / o_norm.clamp_min(1e-30), torch.zeros_like(ortho))
    rotated = math.cos(alpha) * n_hat + math.sin(alpha) * o_hat
    rotated = rotated / rotated.norm(dim=1, keepdim=True).clamp_min(1e-30) * r_norm
    out = torch.where(outside, rotated, r)
    return out.reshape(g_robust.shape)


# ---------------------------------------------------------------------------- guidance
@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Settings of the DVCE guidance.

    Parameters
    ----------
    classifier_scale : float
        ``l_c`` (0.1 in the paper).
    distance_scale : float
        ``l_d`` (0.15 in the paper); 0 switches the distance term off.
    distance_p : float
        Exponent ``p`` of ``mean |x0_hat - x_query|^p`` (1 in the paper, 2 in the retinal follow-up).
    mode : {"cone", "plain", "robust"}
        ``"cone"``: robust gradient cone-projected around the plain one (needs both classifiers);
        ``"plain"`` / ``"robust"``: one classifier's gradient only (cone projection off).
    cone_angle : float
        Half-angle ``alpha`` in degrees (30).
    n_augmentations : int
        Random warps per image and step over which ``log p(target | aug(x0_hat))`` is averaged.
    augment : AugmentConfig
    grad_through_unet : bool
        Back-propagate through the UNet's ``x0_hat`` (exact gradient w.r.t. ``x_t``).
    """

    classifier_scale: float = 0.1
    distance_scale: float = 0.15
    distance_p: float = 1.0
    mode: str = "cone"
    cone_angle: float = 30.0
    n_augmentations: int = 4
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    grad_through_unet: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {self.mode!r}.")
        if self.classifier_scale < 0 or self.distance_scale < 0:
            raise ValueError(
                f"classifier_scale and distance_scale must be >= 0, got {self.classifier_scale}, {self.distance_scale}."
            )
        if not self.distance_p > 0:
            raise ValueError(f"distance_p must be > 0, got {self.distance_p}; use 1 (paper) or 2.")
        if not 0 < self.cone_angle <= 90:
            raise ValueError(f"cone_angle must be in (0, 90] degrees, got {self.cone_angle}.")
        if isinstance(self.n_augmentations, bool) or not isinstance(self.n_augmentations, int) or self.n_augmentations < 1:
            raise ValueError(f"n_augmentations must be an int >= 1, got {self.n_augmentations!r}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuidanceConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError``."""
        return dataclass_from_mapping(cls, data, "guidance")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scale_to(g: torch.Tensor, ref_norm: torch.Tensor) -> torch.Tensor:
    """Rescale each row of ``g`` ``(B, ...)`` to the norms ``ref_norm`` ``(B,)`` (zero rows stay 0)."""
    norm = g.reshape(g.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    return g * (ref_norm / norm).reshape(-1, *([1] * (g.ndim - 1)))


class DVCEGuidance:
    """Guidance gradients of one reverse step.

    Parameters
    ----------
    plain : Objective or None
        ``log p_plain(target | x)`` per image (the black box being explained).
    robust : Objective or None
        The same for the robust classifier.
    config : GuidanceConfig
    """

    def __init__(self, plain: Objective | None, robust: Objective | None, config: GuidanceConfig | None = None) -> None:
        self.config = config or GuidanceConfig()
        mode = self.config.mode
        if mode in ("cone", "plain") and plain is None:
            raise TypeError(f"guidance mode {mode!r} needs the plain classifier objective; pass plain=... or mode='robust'.")
        if mode in ("cone", "robust") and robust is None:
            raise TypeError(
                f"guidance mode {mode!r} needs a robust classifier; pass robust=... or set mode='plain' (cone projection off)."
            )
        self.plain = plain
        self.robust = robust
        self.augment = RandomAugment(self.config.augment, self.config.n_augmentations)
        self.timers: dict[str, float] = {"classifiers": 0.0}
        self.last_angles: torch.Tensor | None = None

    def _classifier_grad(
        self, objective: Objective, x0: torch.Tensor, warped_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        leaf = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            logp = objective(warped_fn(leaf))  # (n * B,)
            (grad,) = torch.autograd.grad(logp.sum() / self.config.n_augmentations, leaf)
        return grad

    def image_space_gradients(
        self,
        x0: torch.Tensor,
        query: torch.Tensor,
        fov: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradients with respect to the clean-image estimate.

        Parameters
        ----------
        x0 : torch.Tensor
            ``(B, C, H, W)`` predicted clean images in the data range (detached).
        query : torch.Tensor
            ``(B, C, H, W)`` the original images.
        fov : torch.Tensor or None
            ``(B, 1, H, W)`` field-of-view masks in {0, 1}; outside it the classifiers see the query
            and the distance is not counted.

        Returns
        -------
        (g_c, g_d)
            Unscaled classifier gradient (after the cone projection) and distance gradient (``None``
            when ``distance_scale`` is 0), both ``(B, C, H, W)``.
        """
        cfg = self.config
        b = x0.shape[0]
        # one set of warps per step, shared by both classifiers so that their gradients compare
        params = self.augment.draw(x0, generator)

        def warped(z: torch.Tensor) -> torch.Tensor:
            img = z if fov is None else z * fov + query * (1.0 - fov)
            return self.augment.apply(img, params)

        t0 = time.perf_counter()
        g_n = self._classifier_grad(self.plain, x0, warped) if cfg.mode in ("cone", "plain") else None  # type: ignore[arg-type]
        g_r = self._classifier_grad(self.robust, x0, warped) if cfg.mode in ("cone", "robust") else None  # type: ignore[arg-type]
        self.timers["classifiers"] += time.perf_counter() - t0
        if cfg.mode == "cone":
            assert g_n is not None and g_r is not None
            self.last_angles = angle_degrees(g_r, g_n).detach()
            g_c = cone_projection(g_r, g_n, cfg.cone_angle)
        else:
            g_c = g_n if g_n is not None else g_r
        assert g_c is not None
        g_d = None
        if cfg.distance_scale > 0:
            leaf = x0.detach().requires_grad_(True)
            with torch.enable_grad():
                diff = (leaf - query).abs().pow(cfg.distance_p)
                if fov is not None:
                    diff = diff * fov
                (g_d,) = torch.autograd.grad(diff.reshape(b, -1).mean(1).sum(), leaf)
        return g_c, g_d

    def combine(self, g_c: torch.Tensor, g_d: torch.Tensor | None, eps: torch.Tensor) -> torch.Tensor:
        """``l_c * g_c - l_d * g_d`` with each gradient scaled to the norm of ``eps`` (per image)."""
        ref = eps.detach().reshape(eps.shape[0], -1).norm(dim=1)
        g = self.config.classifier_scale * _scale_to(g_c, ref)
        if g_d is not None:
            g = g - self.config.distance_scale * _scale_to(g_d, ref)
        return g


@torch.no_grad()
def _ddim_invert(
    ddpm: Any, x0: torch.Tensor, timesteps: list[int], acp: torch.Tensor, timers: dict[str, float]
) -> dict[int, torch.Tensor]:
    """Deterministic DDIM inversion of ``x0`` (model range) up the respaced ladder ``timesteps``
    (descending, as the reverse process walks them); returns the sample at every level.

    Each step uses eps at the current (lower) level: DDIM inversion's usual approximation, accurate
    at the low noise levels DVCE starts from."""
    levels = sorted(timesteps)
    out: dict[int, torch.Tensor] = {}
    x, a_cur, t_cur = x0, torch.ones((), device=x0.device), 0
    for t in levels:
        t0 = time.perf_counter()
        eps = ddpm.eps(x, t_cur)
        timers["unet_forward"] += time.perf_counter() - t0
        x0_pred = (x - torch.sqrt(1.0 - a_cur) * eps) / torch.sqrt(a_cur)
        a_next = acp[t]
        x = torch.sqrt(a_next) * x0_pred + torch.sqrt(1.0 - a_next) * eps
        out[t], a_cur, t_cur = x, a_next, t
    return out


def guided_counterfactual(
    ddpm: Any,
    x_query: torch.Tensor,
    guidance: DVCEGuidance,
    *,
    num_steps: int = 200,
    skip_steps: int = 100,
    scheduler: str = "ddpm",
    eta: float = 0.0,
    fov: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    start: str = "noise",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Noise ``x_query`` to ``timesteps[skip_steps]`` and denoise it with DVCE guidance.

    Parameters
    ----------
    ddpm : medxai.diffusion.ddpm.ImageDDPM
        The unconditional diffusion model (frozen by the caller).
    x_query : torch.Tensor
        ``(B, C, S, S)`` images in the model's data range.
    guidance : DVCEGuidance
    num_steps : int
        Respaced reverse steps over the whole schedule (200 in the paper).
    skip_steps : int
        Steps skipped at the noisy end (100 of 200: start at about half the schedule).
    scheduler : {"ddpm", "ddim"}
    eta : float
        DDIM noise (``scheduler="ddim"`` only).
    fov : torch.Tensor, optional
        ``(B, 1, S, S)`` field-of-view masks; outside, the result is the query.
    generator : torch.Generator, optional
        All noise (start noise, ancestral noise, augmentations).
    start : {"noise", "inversion"}
        ``"noise"``: the paper's start, the query noised with fresh noise. ``"inversion"``: the query's
        deterministic DDIM inversion to the start step, denoised by DDIM with ``eta = 0``: with zero
        guidance the output is the query up to the inversion error, so every change comes from the
        guidance (needs ``scheduler="ddim"``, ``eta=0``).

    Returns
    -------
    (counterfactual, info)
        ``(B, C, S, S)`` in the data range; ``info`` holds timers (seconds in ``unet_forward``,
        ``unet_backward``, ``classifiers``, ``rest``) and the cone angles of the last step.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
    if isinstance(skip_steps, bool) or not isinstance(skip_steps, int) or not 0 <= skip_steps < num_steps:
        raise ValueError(f"skip_steps must be an int in 0..{num_steps - 1}, got {skip_steps!r}.")
    ddpm.check_images(x_query, "x_query")
    if start not in ("noise", "inversion"):
        raise ValueError(f"start must be 'noise' or 'inversion', got {start!r}.")
    if start == "inversion" and (scheduler != "ddim" or eta != 0):
        raise ValueError(
            f"start='inversion' denoises deterministically: use scheduler='ddim' with eta=0 (got {scheduler!r}, eta={eta})."
        )
    t_start = time.perf_counter()
    timers = {"unet_forward": 0.0, "unet_backward": 0.0}
    guidance.timers["classifiers"] = 0.0
    sched = ddpm.make_scheduler(scheduler)
    sched.set_timesteps(num_steps)
    timesteps = sched.timesteps[skip_steps:]
    dev = x_query.device
    query = x_query.detach()
    fov_t = None if fov is None else fov.to(dev, query.dtype)
    q_model = ddpm.to_model_range(query)
    acp = sched.alphas_cumprod.to(dev)
    if start == "inversion":
        # the query's own trajectory, level by level up to the start step (also the outside of the FOV)
        trajectory = _ddim_invert(ddpm, q_model, [int(t) for t in timesteps], acp, timers)
        x = trajectory[int(timesteps[0])]
        noise = None
    else:
        noise = torch.randn(q_model.shape, generator=generator).to(dev)
        x = sched.add_noise(q_model, noise, timesteps[:1].repeat(q_model.shape[0]).to(dev))
    cfg = guidance.config
    for i, t in enumerate(timesteps):
        t_int = int(t)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(cfg.grad_through_unet)
            t0 = time.perf_counter()
            eps = ddpm.eps(x_in, t_int)
            timers["unet_forward"] += time.perf_counter() - t0
            if scheduler == "ddpm":
                # the step draws its ancestral noise now; guidance is added to the mean afterwards
                out = sched.step(eps, t_int, x_in, generator=generator)
            else:
                out = sched.step(eps, t_int, x_in, eta=eta, generator=generator)
            x0_model = out.pred_original_sample
            x0_img = ddpm.from_model_range(x0_model.detach())
            g_c, g_d = guidance.image_space_gradients(x0_img, query, fov_t, generator)
            if cfg.grad_through_unet:
                t0 = time.perf_counter()
                # chain rule through x0_img = from_model_range(x0_model) is a constant factor (removed by scaling)
                (g_c,) = torch.autograd.grad(x0_model, x_in, grad_outputs=g_c, retain_graph=g_d is not None)
                if g_d is not None:
                    (g_d,) = torch.autograd.grad(x0_model, x_in, grad_outputs=g_d)
                timers["unet_backward"] += time.perf_counter() - t0
        g = guidance.combine(g_c, g_d, eps)
        if scheduler == "ddpm":
            variance = sched._get_variance(t_int)  # diffusers' Sigma_t of this (respaced) step
            x = out.prev_sample.detach() + variance.to(dev) * g
        else:
            eps_guided = eps.detach() - torch.sqrt(1.0 - acp[t_int]) * g
            x = sched.step(eps_guided, t_int, x.detach(), eta=eta, generator=generator).prev_sample
        if fov_t is not None and i + 1 < len(timesteps):
            # keep the outside of the field of view on the query's noise level (blended-diffusion style)
            if noise is None:
                outside = trajectory[int(timesteps[i + 1])]
            else:
                outside = sched.add_noise(q_model, noise, timesteps[i + 1 : i + 2].repeat(q_model.shape[0]).to(dev))
            x = x * fov_t + outside * (1.0 - fov_t)
        if progress is not None:
            progress("guided denoising", i + 1, len(timesteps))
    cf = ddpm.from_model_range(x.detach()).clamp(*ddpm.config.data_range)
    if fov_t is not None:
        cf = cf * fov_t + query * (1.0 - fov_t)
    total = time.perf_counter() - t_start
    timers["classifiers"] = guidance.timers["classifiers"]
    timers["rest"] = max(0.0, total - sum(timers.values()))
    timers["total"] = total
    info: dict[str, Any] = {
        "timers": timers,
        "start_timestep": int(timesteps[0]),
        "steps_run": len(timesteps),
    }
    if guidance.last_angles is not None:
        info["cone_angle_last_step"] = guidance.last_angles.tolist()
    return cf, info
