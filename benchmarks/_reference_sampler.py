"""PhysicsNeMo's CorrDiff sampler on *our* model's weights, for the sampling benchmark.

:func:`reference_ensemble` copies a loaded :class:`~corrdiff_xr.CorrDiff`'s two networks into
PhysicsNeMo 2.2.2's ``UNet`` and ``EDMPrecondSuperResolution`` and generates the ensemble the
way the reference's ``generate`` does: the regression mean once per time, then
``deterministic_sampler`` (Heun or Euler, its float64 state) per member, from the very latents
our whole-domain sampler draws (:func:`corrdiff_xr.noise.patch_generator` at origin (0, 0)).
So its members should equal ours up to float rounding, and its members per second, measured
in the same run, are the baseline of ``members_per_s_speedup_equal_crps``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from physicsnemo_ref import (  # noqa: E402
    copy_weights_to_reference,
    physicsnemo,
    reference_regression,
    reference_residual,
)


def reference_networks(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference's regression UNet and residual preconditioner with ``model``'s weights."""
    cin, cout, shape = model.in_channels, model.out_channels, model.img_shape
    rr = reference_regression(
        model.regression_config, in_channels=cin, out_channels=cout, img_shape=shape
    )
    hr = model.edm_config.hr_mean_conditioning
    rd = reference_residual(
        model.residual_config,
        model.edm_config,
        cond_channels=cin + (cout if hr else 0),
        out_channels=cout,
        img_shape=shape,
    )
    copy_weights_to_reference(model.regression, rr, target_prefix="net.")
    copy_weights_to_reference(model.residual, rd, target_prefix="net.")
    return rr.eval(), rd.eval()


def reference_ensemble(
    model, pair, *, members: int, sampler, seed_batch: int = 1, device: str = "cpu"
) -> tuple[xr.Dataset, float]:
    """The reference's ensemble ``(member, time, y, x)`` of ``pair`` and its wall time (s).

    ``sampler`` is a :class:`~corrdiff_xr.config.SamplerConfig` with a solver the reference
    has (``heun`` or ``euler``). The wall time covers what the reference's generation does
    per time: the regression mean, the members' trajectories and the decoding to physical
    units (our encoding of the inputs is done before the clock starts). ``seed_batch`` is
    the reference generate's ``seed_batch_size``: members per sampler call (its default 1).
    On ``device`` "cuda" the latents are still drawn on the CPU (then moved), so the members
    are our CPU members; the clock then also covers the copies to and from the GPU.
    """
    if physicsnemo() is None:
        raise RuntimeError("physicsnemo (the reference) cannot be imported")
    from physicsnemo.diffusion.samplers import deterministic_sampler

    from corrdiff_xr.dims import MEMBER
    from corrdiff_xr.noise import patch_generator
    from corrdiff_xr.sampling import draw_latents

    codec = model.codec
    rr, rd = (net.to(device) for net in reference_networks(model))
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).compute()
    x = torch.from_numpy(codec.encode_inputs(sources)).to(device)
    times = sources.time.values
    shape = (model.out_channels, *model.img_shape)
    hr = model.edm_config.hr_mean_conditioning
    outs = []
    start = time.perf_counter()
    with torch.no_grad():
        for t in range(len(times)):
            xt = x[t : t + 1]
            mean = rr(torch.zeros(1, *shape, device=device), xt)
            rows = []
            for m0 in range(0, members, seed_batch):
                ms = range(m0, min(m0 + seed_batch, members))
                gens = [patch_generator(0, times[t], m, (0, 0)) for m in ms]
                lat = draw_latents(gens, shape).to(device)
                n = len(ms)
                res = deterministic_sampler(
                    rd,
                    lat,
                    xt.expand(n, -1, -1, -1),
                    mean_hr=mean.expand(n, -1, -1, -1) if hr else None,
                    num_steps=sampler.num_steps,
                    sigma_min=sampler.sigma_min,
                    sigma_max=sampler.sigma_max,
                    rho=sampler.rho,
                    solver=sampler.solver,
                )
                rows.extend(mean + res.float())
            outs.append(torch.stack(rows).cpu())
    ens = np.stack([o.numpy() for o in outs], axis=1)  # (member, time, C, y, x)
    ds = codec.decode_targets(ens, sources, dims=(MEMBER, "time"))
    return ds, time.perf_counter() - start
