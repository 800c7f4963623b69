"""Where a :class:`~corrdiff_xr.model.CorrDiff` samples: the output grid or the padded image.

A sample is ``mean + residual``; :func:`sample_members` draws the residual with the sampler of
:mod:`corrdiff_xr.sampling` from latents taken from *that sample's* generator, so a member
never depends on how members were batched. The model's ``sample_domain`` says on which image:

* ``"grid"``: the latents, the sampler's states and the condition are on the grid the model
  outputs (or on a patch of it). Every network call sees that grid; a framed network
  (:mod:`corrdiff_xr.nn.framed`) pads it again on each call and crops its output.
* ``"padded"``: the networks are framed, and the sampler runs inside the frame, as
  published models trained on padded images are sampled (Earth2Studio's ``CorrDiffCMIP6``
  pads the inputs once, draws the latents on the padded image, conditions the residual on
  the regression mean *uncropped* and crops the sum at the end). The inputs are framed once
  (channel order, flipped rows, padding: :meth:`~corrdiff_xr.nn.framed.Framed.enter`), the
  inner networks run on the padded image, and the residual is cropped back
  (:meth:`~corrdiff_xr.nn.framed.Framed.leave`). A sample's latents are drawn on the padded
  image in the inner network's orientation, one ``(C_out, H + pad, W + pad)`` draw per
  generator, so the same generators give Earth2Studio's latents, and a member still depends
  on its own generator only. Whole grids only: patches (``offsets``) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from corrdiff_xr.config import EDMConfig, NetworkConfig, SamplerConfig
from corrdiff_xr.edm import EDMPrecond, conditions_on_mean, residual_condition
from corrdiff_xr.nn import RegressionUNet
from corrdiff_xr.protocols import RandomSource

if TYPE_CHECKING:
    from corrdiff_xr.nn.framed import Framed

__all__ = ["SampledModel", "check_sample_domain", "sample_members"]


class SampledModel(Protocol):
    """What :func:`sample_members` reads of a :class:`~corrdiff_xr.model.CorrDiff`."""

    regression: nn.Module
    residual: EDMPrecond | None
    edm_config: EDMConfig
    out_channels: int
    sample_domain: str


def check_sample_domain(
    domain: str, regression: NetworkConfig | None, residual: NetworkConfig | None
) -> None:
    """Refuse a ``"padded"`` domain unless the residual network is framed and the regression
    (if any) is framed alike: one framing of the inputs must serve both."""
    from corrdiff_xr.model.header import SAMPLE_DOMAINS

    if domain not in SAMPLE_DOMAINS:
        raise ValueError(f"sample_domain must be one of {list(SAMPLE_DOMAINS)}, got {domain!r}")
    if domain == "grid" or residual is None:
        return
    frames = [cfg for cfg in (regression, residual) if cfg is not None]
    if any(cfg.arch != "framed" for cfg in frames):
        raise ValueError(
            "sample_domain='padded' samples inside the networks' frame: both networks need "
            f"arch='framed', got {[cfg.arch for cfg in frames]}"
        )
    outer = [{k: v for k, v in cfg.options.items() if k != "inner"} for cfg in frames]
    if any(o != outer[0] for o in outer):
        raise ValueError(
            "sample_domain='padded' needs the regression and residual networks framed alike "
            f"(order, flip_y, pad, modes), got {outer}"
        )


def sample_members(
    model: SampledModel,
    x: torch.Tensor,
    *,
    generators: Sequence[RandomSource],
    sampler: SamplerConfig,
    mean: torch.Tensor,
    offsets: torch.Tensor | None,
    lead_time: torch.Tensor | None,
) -> torch.Tensor:
    """``mean + residual`` (N, C_out, h, w), one residual per generator, sampled on the
    model's ``sample_domain`` (the module docstring); ``mean`` is the regression mean on the
    grid and ``model.residual`` is not None."""
    from corrdiff_xr import sampling

    res = model.residual
    assert res is not None  # the caller returns the mean of a regression-only model
    edm = model.edm_config
    sampling.check_solver(sampler.solver, edm.nu)  # before any work
    frame: Framed | None = None
    cond_mean = mean
    if model.sample_domain == "padded":
        frame = _frame_of(res)
        if offsets is not None and bool(offsets.any()):
            raise ValueError(
                "a model with sample_domain='padded' samples its whole grid, not patches "
                f"(offsets {offsets.tolist()[:2]})"
            )
        x = frame.enter(x)
        if conditions_on_mean(edm):  # the regression mean as the inner network gives it
            mean_in = RegressionUNet(_frame_of(model.regression).inner)
            cond_mean = _once_per_input(mean_in, x, lead_time)
        res, offsets = EDMPrecond(frame.inner, edm=edm), None
    cond = residual_condition(x, cond_mean, hr_mean_conditioning=conditions_on_mean(edm))
    latents = sampling.draw_latents(
        generators, (model.out_channels, *x.shape[-2:]), dtype=x.dtype, device=x.device, nu=edm.nu
    )

    # the network alone in bf16: the preconditioner's skip term and the state stay float32
    autocast = torch.autocast(
        x.device.type, dtype=torch.bfloat16, enabled=sampler.precision == "bf16"
    )

    def denoise(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast:
            return res(xt, sigma, condition=cond, offsets=offsets, lead_time=lead_time)

    residual = sampling.sample(
        denoise,
        latents,
        config=sampler,
        generators=generators,
        nu=edm.nu,
        shift=float(edm.flow_shift),
    )
    if frame is not None:
        residual = frame.leave(residual)
    return mean + residual.to(mean.dtype)


def _once_per_input(
    regression: nn.Module, x: torch.Tensor, lead_time: torch.Tensor | None
) -> torch.Tensor:
    """``regression(x)``, computed once when every row repeats the first (a member group's
    rows are copies of one input: one regression pass, not one per member)."""
    same = all(torch.equal(x[0], row) for row in x[1:]) and (
        lead_time is None or bool((lead_time == lead_time[0]).all())
    )
    if not same:
        return regression(x, lead_time=lead_time)
    one = regression(x[:1], lead_time=None if lead_time is None else lead_time[:1])
    return one.expand(x.shape[0], *one.shape[1:])


def _frame_of(module: torch.nn.Module) -> Framed:
    """The framed network inside ``module`` (a preconditioner or a regression wrapper)."""
    from corrdiff_xr.nn.framed import Framed

    net = getattr(module, "net", None)
    if not isinstance(net, Framed):
        raise TypeError(f"sample_domain='padded' needs a framed network, got {type(net).__name__}")
    return net
