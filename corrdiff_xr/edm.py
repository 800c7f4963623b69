"""EDM: the preconditioned denoiser, training losses and noise-level sampling.

Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
Table 1. The denoiser wraps a raw network ``F`` as

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

so that both the network's input and its training target have unit variance at every noise
level. In CorrDiff (Mardani et al. 2023) ``x`` is the *residual* (target minus regression
mean) and ``F`` also sees condition channels (the regression mean and the regridded coarse
inputs) concatenated after the latent: the network input is ``[c_in x, condition]``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EDMPrecond"]


class EDMPrecond(nn.Module):
    """EDM-preconditioned super-resolution denoiser ``D(x; sigma, condition)``.

    Parameters
    ----------
    net : nn.Module
        Raw network called as ``net(inputs, c_noise, offsets=..., lead_time=...)`` whose input
        channels are the latent's followed by the condition's.
    sigma_data : float
        Expected standard deviation of the (normalised) data.
    scale_condition : bool
        Also multiply the condition by ``c_in`` (the reference's deprecated ``EDMPrecondSR``).
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5, scale_condition: bool = False):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.scale_condition = scale_condition

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
        # Karras et al. (2022), Table 1, "EDM" column:
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1.0 / (sigma**2 + sd2).sqrt()
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
