"""Sampler parity with PhysicsNeMo 2.2.2 (fp32, atol 1e-5): same latents, same outputs.

The reference samplers take the network and do the conditioning themselves; ours take a
``denoise(x, sigma)`` closure. Each comparison runs the reference sampler on the reference
network and ours on (a) the reference network behind a closure (the sampler arithmetic
alone) and (b) our network with copied weights (the whole path, through
``CorrDiff.sample`` where it applies).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from patch_reference import patched_denoiser
from physicsnemo_ref import (
    copy_reference_weights,
    randomize_,
    reference_regression,
    reference_residual,
    requires_physicsnemo,
)

from corrdiff_xr.config import EDMConfig, NetworkConfig, SamplerConfig
from corrdiff_xr.edm import EDMPrecond, residual_condition
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.nn import SongUNet
from corrdiff_xr.patching import PatchGrid, global_context
from corrdiff_xr.sampling import draw_latents, karras_sigmas, make_generators, sample
from corrdiff_xr.testing import TINY_NETWORK as TINY

pytestmark = requires_physicsnemo

# Random O(1) weights make the networks very sensitive: a 1-ulp difference in a network input
# can grow to ~1e-5 over a few *large* steps. With 10 or more steps (and the reference's own
# 18) ours and the reference agree to ~1e-6, so the cases below keep at least 10 steps.

ATOL = 1e-5
CIN, COUT = 3, 2


def _models(edm: EDMConfig, shape, *, extra_cond: int = 0, net: NetworkConfig = None):
    reg_cfg = dataclasses.replace(TINY, embedding_type="zero")
    res_cfg = net or TINY
    cond = CIN + (COUT if edm.hr_mean_conditioning else 0) + extra_cond
    ours = CorrDiff(
        img_shape=shape,
        in_channels=CIN,
        out_channels=COUT,
        regression_network=reg_cfg,
        residual_network=res_cfg,
        edm=edm,
    )
    if extra_cond:  # e.g. the global-context channels of patch-based models
        unet = SongUNet(res_cfg, in_channels=COUT + cond, out_channels=COUT, img_shape=shape)
        ours.residual = EDMPrecond(unet, edm=edm)
    ref_reg = randomize_(
        reference_regression(reg_cfg, in_channels=CIN, out_channels=COUT, img_shape=shape), seed=1
    )
    ref_res = randomize_(
        reference_residual(res_cfg, edm, cond_channels=cond, out_channels=COUT, img_shape=shape),
        seed=2,
    )
    copy_reference_weights(ref_reg, ours.regression, target_prefix="net.")
    copy_reference_weights(ref_res, ours.residual, target_prefix="net.")
    return ours.eval(), ref_reg.eval(), ref_res.eval()


@pytest.fixture
def reference_samplers(monkeypatch):
    """The reference's samplers, with its torch.compile'd patching wrappers run eagerly.

    Compiling them costs minutes on CPU and changes nothing they compute.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.samplers import legacy_deterministic_sampler as det
        from physicsnemo.diffusion.samplers import legacy_stochastic_sampler as sto

    def apply(patching, input, additional_input=None):
        return patching.apply(input=input, additional_input=additional_input)

    def fuse(patching, input, batch_size):
        return patching.fuse(input=input, batch_size=batch_size)

    for module in (det, sto):
        for name in (
            "_apply_wrapper_Cin_channels",
            "_apply_wrapper_Cout_channels_no_grad",
            "_apply_wrapper_Cout_channels_grad",
        ):
            monkeypatch.setattr(module, name, apply)
        monkeypatch.setattr(module, "_fuse_wrapper", fuse)
    return det.deterministic_sampler, sto.stochastic_sampler


def _inputs(shape, seeds):
    x = torch.randn(len(seeds), CIN, *shape, generator=torch.Generator().manual_seed(21))
    latents = draw_latents(make_generators(seeds), (COUT, *shape))
    return x, latents


DETERMINISTIC = {  # name: (sampler config, EDM settings, fine grid)
    "heun_18_defaults": (SamplerConfig(), EDMConfig(), (16, 16)),
    "heun_non_square_short_schedule": (
        SamplerConfig(num_steps=10, sigma_max=80.0, rho=5.0),
        EDMConfig(),
        (16, 24),
    ),
    "euler_no_mean_conditioning": (
        SamplerConfig(solver="euler", num_steps=12),
        EDMConfig(hr_mean_conditioning=False),
        (16, 16),
    ),
}


@pytest.mark.parametrize("case", sorted(DETERMINISTIC))
@torch.no_grad()
def test_deterministic_sampler_matches_reference_for_the_same_latents(case, reference_samplers):
    deterministic_sampler, _ = reference_samplers
    config, edm, shape = DETERMINISTIC[case]
    ours, ref_reg, ref_res = _models(edm, shape)
    seeds = [3, 4]
    x, latents = _inputs(shape, seeds)
    mean = ref_reg(torch.zeros_like(latents), x)
    ref = deterministic_sampler(
        ref_res,
        latents,
        x,
        mean_hr=mean if edm.hr_mean_conditioning else None,
        num_steps=config.num_steps,
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        rho=config.rho,
        solver=config.solver,
    ).float()
    assert ref.abs().mean() > 1e-2
    cond = residual_condition(x, mean, hr_mean_conditioning=edm.hr_mean_conditioning)
    alone = sample(lambda v, s: ref_res(v, cond, s), latents, config=config)
    torch.testing.assert_close(alone, ref, atol=ATOL, rtol=0)
    whole = sample(lambda v, s: ours.residual(v, s, condition=cond), latents, config=config)
    torch.testing.assert_close(whole, ref, atol=ATOL, rtol=0)
    # CorrDiff.sample is this same road: mean + the sampler on its residual denoiser
    member = ours.sample(x, generators=make_generators(seeds), sampler=config, mean=mean)
    torch.testing.assert_close(member - mean, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("S_churn,S_min,S_max", [(2.0, 0.0, float("inf")), (1.0, 0.05, 50.0)])
@torch.no_grad()
def test_stochastic_sampler_matches_reference_with_churn(S_churn, S_min, S_max, reference_samplers):
    _, stochastic_sampler = reference_samplers
    edm, shape = EDMConfig(), (16, 16)
    ours, ref_reg, ref_res = _models(edm, shape)
    config = SamplerConfig(num_steps=10, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=1.003)
    x, latents = _inputs(shape, [0, 1])
    mean = ref_reg(torch.zeros_like(latents), x)
    sigmas = karras_sigmas(config)
    churned = [S_min <= s <= S_max for s in sigmas[:-1].tolist()]
    assert any(churned) and (S_min == 0 or not all(churned))
    # The reference draws a batch of noise at every step (multiplied by 0 where churn is off);
    # ours draws per member, only where churn applies. Feed the reference the same stream:
    # one generator, batch-at-once draws on churned steps (member sizes are multiples of 16,
    # so a batch draw equals consecutive per-member draws).
    ref_gen, calls = torch.Generator().manual_seed(17), []

    def ref_randn_like(t):
        step = len(calls)
        calls.append(step)
        return torch.randn(t.shape, generator=ref_gen) if churned[step] else torch.zeros_like(t)

    ref = stochastic_sampler(
        ref_res,
        latents,
        x,
        mean_hr=mean,
        num_steps=config.num_steps,
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        rho=config.rho,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=config.S_noise,
        randn_like=ref_randn_like,
    )
    assert len(calls) == config.num_steps
    shared = torch.Generator().manual_seed(17)
    cond = residual_condition(x, mean, hr_mean_conditioning=True)
    got = sample(
        lambda v, s: ours.residual(v, s, condition=cond),
        latents,
        config=config,
        generators=[shared, shared],
    )
    deterministic = sample(
        lambda v, s: ours.residual(v, s, condition=cond),
        latents,
        config=SamplerConfig(num_steps=config.num_steps),
    )
    assert (got - deterministic).abs().mean() > 1e-2  # churn really changed the sample
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


NO_GRID = dataclasses.replace(TINY, gridtype="none", N_grid_channels=0)


@pytest.mark.parametrize(
    "patch,overlap,boundary,net,steps",
    [
        ((8, 8), 0, 0, TINY, 10),
        ((8, 12), 0, 0, TINY, 10),
        ((8, 8), 2, 0, NO_GRID, 10),
        ((8, 8), 2, 1, NO_GRID, 10),
        ((8, 8), 2, 1, TINY, 10),
    ],
    ids=["exact_tiling", "non_square_patch", "overlap", "overlap_boundary", "overlap_positions"],
)
@torch.no_grad()
def test_patched_sampling_matches_reference_grid_patching(
    patch, overlap, boundary, net, steps, reference_samplers
):
    from physicsnemo.diffusion.multi_diffusion import GridPatching2D

    deterministic_sampler, _ = reference_samplers
    edm, shape = EDMConfig(), (16, 24)
    ours, ref_reg, ref_res = _models(edm, shape, extra_cond=CIN, net=net)
    config = SamplerConfig(num_steps=steps)
    seeds = [8]
    x, latents = _inputs(shape, seeds)
    mean = ref_reg(torch.zeros_like(latents), x)
    patching = GridPatching2D(
        img_shape=shape, patch_shape=patch, overlap_pix=overlap, boundary_pix=boundary
    )
    ref = deterministic_sampler(
        ref_res,
        latents,
        x,
        mean_hr=mean,
        patching=patching,
        num_steps=config.num_steps,
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        rho=config.rho,
    ).float()
    grid = PatchGrid.build(shape, patch, overlap=overlap, boundary=boundary, layout="physicsnemo")
    assert grid.num_patches == patching.patch_num
    cond = residual_condition(x, mean, hr_mean_conditioning=True)
    denoise = patched_denoiser(
        ours.residual,
        grid,
        condition=cond,
        context=global_context(x, patch),
        batch_size=5,
    )
    got = sample(denoise, latents, config=config)
    assert ref.abs().mean() > 1e-2
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
