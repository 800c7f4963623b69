"""EDM: the preconditioned denoiser, training losses and noise-level sampling.

Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
Table 1. The denoiser wraps a raw network ``F`` as

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

so that both the network's input and its training target have unit variance at every noise
level. In CorrDiff (Mardani et al. 2023) ``x`` is the *residual* (target minus regression
mean) and ``F`` also sees condition channels (the regression mean and the regridded coarse
inputs) concatenated after the latent: the network input is ``[c_in x, condition]``.

Two options of :class:`~corrdiff_xr.config.EDMConfig` change the method. ``objective="direct"``
diffuses the target itself (the "mean" is zero and the condition the inputs alone), as the
non-residual diffusion of CorrDiff COSMO-ERA5 does. ``nu`` makes the noise multivariate
Student-t (t-EDM, Pandey et al. 2024, "Heavy-Tailed Diffusion Models"): ``n = z / sqrt(k / nu)``
with ``z`` standard normal and one ``k ~ chi2(nu)`` per sample (per training row), so
``x = y + sigma n`` has heavy tails for small ``nu`` and is Gaussian as ``nu -> inf``. The
noise then has variance ``sigma^2 nu / (nu - 2)``: the preconditioning and the loss weight
use that effective level (:func:`effective_sigma`), so the network's input and target keep
unit variance. The noise level ``sigma`` itself (log-normal in training, the Karras schedule
in sampling, ``c_noise``) is unchanged.

``flow`` (``x`` or ``v``) trains rectified flow, ``x_t = (1 - t) y + t eps``, as EDM on the
rescaled variable ``x = x_t / (1 - t) = y + sigma eps`` with ``sigma = t / (1 - t)``: the
samplers, the noising and the sigma-binned logs stay those of EDM. The network sees ``x_t``
(``c_in = 1 - t = 1 / (1 + sigma)``) and ``c_noise = ln(sigma) / 4 = logit(t) / 4`` and
predicts the clean sample (``x``: ``D = F``) or the velocity ``v = eps - y`` (``v``:
``D = x_t - t F``); the loss is the squared error of that prediction (weight 1 for ``x``,
``1 / t^2`` for ``v``). The log-normal sigma draw is exactly the logit-normal ``t`` of flow
training (``logit t ~ N(P_mean, P_std^2)``), and the resolution time-shift
``t' = s t / (1 + (s - 1) t)`` is ``sigma' = s sigma``: training adds ``ln s`` to ``P_mean``,
sampling multiplies the Karras schedule by ``s`` (so ``sigma_min``, ``sigma_max`` are
unshifted levels). Flow needs Gaussian noise (``nu`` is refused with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from corrdiff_xr import patching as _patching
from corrdiff_xr.config import EDMConfig, to_dict
from corrdiff_xr.noise import student_t_scale
from corrdiff_xr.protocols import ConditionalDenoiser

__all__ = ["EDMPrecond", "conditions_on_mean", "edm_dict", "effective_sigma"]


def edm_dict(cfg: EDMConfig) -> dict[str, Any]:
    """``cfg`` as plain data for a checkpoint header or run identity; ``objective``, ``nu``,
    ``flow`` and ``flow_shift`` are left out at their defaults, so a residual Gaussian EDM run
    reads as it did before."""
    out = to_dict(cfg)
    defaults = (("objective", "residual"), ("nu", None), ("flow", None), ("flow_shift", 1.0))
    for key, default in defaults:
        if out.get(key) == default:
            del out[key]
    return out


def conditions_on_mean(cfg: EDMConfig) -> bool:
    """Whether the denoiser's condition starts with the regression mean (residual runs with
    ``hr_mean_conditioning``; a direct run has no mean to condition on)."""
    return cfg.hr_mean_conditioning and cfg.objective == "residual"


#: a noise level: a tensor of them or one number
Sigma = TypeVar("Sigma", torch.Tensor, float)


def effective_sigma(sigma: Sigma, nu: float | None) -> Sigma:
    """The noise's standard deviation at level ``sigma``: ``sigma`` for Gaussian noise,
    ``sigma sqrt(nu / (nu - 2))`` for Student-t noise with ``nu`` degrees of freedom."""
    return sigma if nu is None else sigma * math.sqrt(nu / (nu - 2.0))


class EDMPrecond(nn.Module):
    """EDM-preconditioned super-resolution denoiser ``D(x; sigma, condition)``.

    Parameters
    ----------
    net : nn.Module
        Raw network called as ``net(inputs, c_noise, offsets=..., lead_time=...)`` whose input
        channels are the latent's followed by the condition's.
    edm : EDMConfig
        Its ``sigma_data`` (expected standard deviation of the normalised data) and
        ``scale_condition`` (also multiply the condition by ``c_in``, as the reference's
        deprecated ``EDMPrecondSR`` does).
    """

    def __init__(self, net: nn.Module, *, edm: EDMConfig):
        super().__init__()
        self.net = net
        self.sigma_data = float(edm.sigma_data)
        self.scale_condition = bool(edm.scale_condition)
        self.nu = None if edm.nu is None else float(edm.nu)
        self.flow = edm.flow

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        *,
        condition: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        lead_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoised estimate of ``x`` (N, C, h, w) at noise level ``sigma`` (scalar or (N,))."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        s = effective_sigma(sigma, self.nu)  # the noise's std (t-EDM); sigma when Gaussian
        if self.flow is None:
            # Karras et al. (2022), Table 1, "EDM" column (Pandey et al. 2024 for Student-t):
            c_skip = sd2 / (s**2 + sd2)
            c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
            c_in = 1.0 / (s**2 + sd2).sqrt()
        else:  # rectified flow: x_t = c_in x, t = sigma c_in; D = F (x) or x_t - t F (v)
            c_in = 1.0 / (1.0 + sigma)
            c_skip = c_in if self.flow == "v" else torch.zeros_like(sigma)
            c_out = -sigma * c_in if self.flow == "v" else torch.ones_like(sigma)
        c_noise = sigma.log() / 4

        inputs = c_in * x
        if condition is not None:
            cond = condition.to(x.dtype)
            inputs = torch.cat([inputs, c_in * cond if self.scale_condition else cond], dim=1)
        noise = c_noise.reshape(-1)
        if noise.shape[0] != x.shape[0]:
            noise = noise.expand(x.shape[0])
        F_x = self.net(inputs, noise, offsets=offsets, lead_time=lead_time)  # casts to its dtype
        return c_skip * x + c_out * F_x.to(x.dtype)


# -- training losses and noise-level sampling --------------------------------------------------
#
# Losses take the networks as callables and every random draw as an optional explicit tensor
# or generator, so tests can feed identical noise to ours and to the reference. EDM settings
# come from an EDMConfig (or, for the two formula helpers, as required numbers): their
# defaults live on the config alone.
# Reductions (``reduction=``):
#   "mean"            mean over every element (samples or patches, channels, pixels): the
#                     default, independent of the domain size, so one learning rate fits any
#                     grid.
#   "sum_per_sample"  sum over every element divided by the number of *samples* B (not
#                     patches): exactly the reference's ``loss.sum() / batch_size_per_gpu``.
#                     It equals "mean" times (P * C * h * w), with P patches per sample.
#   "none"            the weighted elementwise loss, as the reference's loss classes return.
# Missing targets (NaN: a land-sea mask, radar coverage) contribute nothing: the elementwise
# loss is zero there, its gradient too, and the valid elements are scaled by
# (elements / valid elements) of the batch, so every reduction is normalised by the valid
# pixels and a field without NaN is unchanged bit for bit (the scale is exactly 1).

Reduction = Literal["mean", "sum_per_sample", "none"]

__all__ += [
    "loss_weight",
    "regression_loss",
    "residual_condition",
    "residual_loss",
    "sample_sigma",
]


def sample_sigma(
    n: int,
    *,
    P_mean: float,
    P_std: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels, log-normal: ``ln sigma ~ N(P_mean, P_std^2)`` (EDM, Table 1).

    Returns shape ``(n,)``; one standard-normal draw per row from ``generator``. Training
    takes ``P_mean`` and ``P_std`` from :class:`~corrdiff_xr.config.EDMConfig`.
    """
    return (torch.randn(n, generator=generator, dtype=dtype, device=device) * P_std + P_mean).exp()


def loss_weight(
    sigma: torch.Tensor, *, sigma_data: float, nu: float | None = None, flow: str | None = None
) -> torch.Tensor:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``,
    with ``sigma`` the noise's standard deviation (:func:`effective_sigma`) when ``nu`` is set.
    With ``flow`` the weight makes it the prediction's squared error: 1 for ``x``,
    ``1 / t^2 = ((1 + sigma) / sigma)^2`` for ``v`` (``v - v_hat = (D - y) / t``)."""
    if flow == "x":
        return torch.ones_like(sigma)
    if flow == "v":
        return ((1.0 + sigma) / sigma) ** 2
    sigma = effective_sigma(sigma, nu)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _reduce(loss: torch.Tensor, reduction: str, num_samples: int) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum_per_sample":
        return loss.sum() / num_samples
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum_per_sample' or 'none', got {reduction!r}")


def _masked(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``loss`` zeroed where targets are missing, the rest scaled by elements / valid ones."""
    # where() selects the zero branch, so no NaN reaches the graph: the targets were filled
    # before use, and the masked elements' gradient is exactly zero
    loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    scale = valid.numel() / valid.sum().clamp(min=1).to(loss.dtype)
    return loss * scale


def _fill_missing(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets with missing values set to 0, and the mask of the valid ones."""
    valid = torch.isfinite(y)
    return torch.where(valid, y, torch.zeros((), dtype=y.dtype, device=y.device)), valid


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or y.ndim != 4 or x.shape[0] != y.shape[0] or x.shape[-2:] != y.shape[-2:]:
        raise ValueError(
            f"inputs x {tuple(x.shape)} and targets y {tuple(y.shape)} must be (N, C, H, W) "
            "with the same N, H and W (inputs regridded to the fine grid)"
        )


def regression_loss(
    regression: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Regression (conditional-mean) loss ``|| y - regression(x) ||^2`` with weight 1.

    Parameters
    ----------
    regression
        ``regression(x) -> (N, C_out, H, W)``, e.g. ``model.predict_mean``.
    x
        Normalised inputs on the fine grid ``(N, C_in, H, W)``.
    y
        Normalised targets ``(N, C_out, H, W)``; NaN marks missing values, which contribute
        nothing (see the section comment above).
    reduction
        See the section comment above; ``"sum_per_sample"`` equals PhysicsNeMo's
        ``RegressionLoss`` output reduced as its CorrDiff training does (sum / batch size).
    """
    _check_pair(x, y)
    pred = regression(x)
    if pred.shape != y.shape:
        raise ValueError(
            f"regression returned shape {tuple(pred.shape)}, expected {tuple(y.shape)}"
        )
    y, valid = _fill_missing(y)
    return _reduce(_masked((pred - y) ** 2, valid), reduction, y.shape[0])


def residual_condition(
    x: torch.Tensor, mean: torch.Tensor, *, hr_mean_conditioning: bool
) -> torch.Tensor:
    """Conditioning of the residual denoiser: ``[mean, x]`` along channels (or ``x`` alone).

    The regression mean comes first, then the inputs, as in the reference (so imported
    PhysicsNeMo weights see their channels in the order they were trained with).
    """
    if not hr_mean_conditioning:
        return x
    return torch.cat([mean.expand(x.shape[0], -1, -1, -1).to(x.dtype), x], dim=1)


def residual_loss(
    denoiser: ConditionalDenoiser,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    edm: EDMConfig,
    mean: torch.Tensor | None = None,
    regression: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    patch: Sequence[int] | None = None,
    origins: torch.Tensor | None = None,
    num_patches: int = 1,
    offsets: torch.Tensor | None = None,
    global_context: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """CorrDiff residual (denoising score-matching) loss.

    With ``r = y - mean`` the residual of the regression mean, ``sigma`` log-normal and
    ``eps`` standard normal, the loss is

    .. math:: \\lambda(\\sigma)\\, \\| D(r + \\sigma \\epsilon; \\sigma, [mean, x]) - r \\|^2,
        \\qquad \\lambda(\\sigma) = (\\sigma^2 + \\sigma_{data}^2) / (\\sigma \\sigma_{data})^2.

    Parameters
    ----------
    denoiser
        Called as ``denoiser(x_noisy, sigma, condition=..., offsets=...)`` with ``sigma`` of
        shape ``(n,)`` and ``offsets`` None or ``(n, 2)`` global origins of the rows, e.g.
        an :class:`EDMPrecond`.
    x, y
        Normalised inputs ``(B, C_in, H, W)`` and targets ``(B, C_out, H, W)``; NaN targets
        are missing values, which contribute nothing (the residual there is 0, the loss zero).
    edm
        The EDM settings: ``P_mean`` and ``P_std`` of the noise levels, ``sigma_data`` of the
        loss weight, and ``hr_mean_conditioning`` (condition on ``[mean, x]``, CorrDiff's
        way, rather than ``x`` alone; see :func:`residual_condition`).
    mean, regression
        The regression mean ``(B, C_out, H, W)``, or the regression network to compute it
        (under ``torch.no_grad``: the regression net is trained first and stays fixed).
        Give exactly one.
    sigma, noise
        Optional explicit noise levels ``(n,)`` and standard-normal noise (shape of the
        residual rows). Drawn from ``generator`` when missing: patch origins first, then
        sigma, then noise, as the reference draws them.
    patch
        Patch shape ``(h, w)`` for patch-based training; None trains on the whole domain.
    origins
        ``(P, 2)`` patch origins (the same for every sample); drawn with
        :func:`corrdiff_xr.patching.random_origins` when missing (``num_patches`` of them).
    offsets
        ``(B, 2)`` global ``(row, col)`` of each sample's top-left pixel when ``x`` and ``y``
        are crops of a larger grid; the denoiser then gets these (whole-domain) or these plus
        the patch origins (patched). None means the samples are the whole grid.
    global_context
        Append the inputs resized to the patch shape to every patch's condition (the
        reference's patched CorrDiff does this).
    reduction
        See the section comment above.

    Returns
    -------
    Tensor
        The reduced loss, or with ``reduction="none"`` the weighted elementwise loss of shape
        ``(B * P, C_out, h, w)`` (sample-major) or ``(B, C_out, H, W)``.
    """
    mean = _residual_mean(x, y, mean=mean, regression=regression, offsets=offsets)
    y, valid = _fill_missing(y)
    residual = (y - mean) * valid  # 0 where the target is missing: the denoiser sees noise
    condition = residual_condition(x, mean, hr_mean_conditioning=conditions_on_mean(edm))
    if patch is not None:
        if origins is None:
            origins = _patching.random_origins(
                y.shape[-2:], patch, num_patches, generator=generator, device=y.device
            )
        valid = _patching.take_patches(valid.to(y.dtype), origins, patch) > 0
        residual, condition, offsets = _patch_rows(
            residual,
            condition,
            x,
            patch=patch,
            origins=origins,
            offsets=offsets,
            global_context=global_context,
        )
    sigma, noise = _noise(residual, edm, sigma=sigma, noise=noise, generator=generator, like=y)
    s = sigma.reshape(-1, 1, 1, 1)
    denoised = denoiser(residual + s * noise, sigma, condition=condition, offsets=offsets)
    weight = loss_weight(s, sigma_data=edm.sigma_data, nu=edm.nu, flow=edm.flow)
    loss = weight * (denoised - residual) ** 2
    return _reduce(_masked(loss, valid), reduction, y.shape[0])


def _residual_mean(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mean: torch.Tensor | None,
    regression: Callable[[torch.Tensor], torch.Tensor] | None,
    offsets: torch.Tensor | None,
) -> torch.Tensor:
    """The checked, detached regression mean of :func:`residual_loss` (given or computed)."""
    _check_pair(x, y)
    if offsets is not None and tuple(offsets.shape) != (y.shape[0], 2):
        raise ValueError(f"offsets must have shape ({y.shape[0]}, 2), got {tuple(offsets.shape)}")
    if (mean is None) == (regression is None):
        raise ValueError("give exactly one of mean= (a tensor) and regression= (a callable)")
    if mean is None:
        assert regression is not None  # exactly one of the two, checked above
        with torch.no_grad():
            mean = regression(x)
    mean = mean.detach()
    if mean.shape[1:] != y.shape[1:]:
        raise ValueError(f"regression mean has shape {tuple(mean.shape)}, targets {tuple(y.shape)}")
    return mean


def _patch_rows(
    residual: torch.Tensor,
    condition: torch.Tensor,
    x: torch.Tensor,
    *,
    patch: Sequence[int],
    origins: torch.Tensor,
    offsets: torch.Tensor | None,
    global_context: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual, condition and global offsets of every (sample, patch) row, sample-major."""
    B, device = x.shape[0], residual.device
    residual = _patching.take_patches(residual, origins, patch)
    condition = _patching.take_patches(condition, origins, patch)
    P = origins.shape[0]
    if global_context:
        context = _patching.global_context(x, patch).repeat_interleave(P, dim=0)
        condition = torch.cat([condition, context.to(condition.dtype)], dim=1)
    patch_offsets = origins.to(device).repeat(B, 1)
    if offsets is not None:
        patch_offsets = patch_offsets + offsets.to(device).repeat_interleave(P, dim=0)
    return residual, condition, patch_offsets


def _noise(
    residual: torch.Tensor,
    edm: EDMConfig,
    *,
    sigma: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise levels ``(n,)`` and the noise of the rows, given or drawn (sigma first), in the
    dtype and on the device of the targets ``like``: standard normal, or with ``edm.nu``
    multivariate Student-t (the normal draw, then one chi-square scale per row)."""
    n, dtype, device = residual.shape[0], like.dtype, like.device
    if sigma is None:
        # the flow time-shift scales sigma: ln(1) = 0 leaves P_mean as is
        P_mean = edm.P_mean + math.log(edm.flow_shift)
        sigma = sample_sigma(
            n, P_mean=P_mean, P_std=edm.P_std, generator=generator, dtype=dtype, device=device
        )
    sigma = sigma.reshape(-1).to(dtype)
    if sigma.shape[0] != n:
        raise ValueError(f"sigma has {sigma.shape[0]} values, expected one per row ({n})")
    if noise is None:
        noise = torch.randn(residual.shape, generator=generator, dtype=dtype, device=device)
        if edm.nu is not None:
            scale = student_t_scale(generator, n, edm.nu, dtype=dtype, device=device)
            noise = noise * scale.reshape(-1, *[1] * (noise.ndim - 1))
    if noise.shape != residual.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(residual.shape)}")
    return sigma, noise
