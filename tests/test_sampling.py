"""Schedules and EDM samplers: known answers, per-sample randomness, churn settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.sampling import (
    draw_latents,
    euler,
    heun,
    karras_sigmas,
    make_generators,
    sample,
)

DATA_STD = 0.7


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Ideal denoiser for data ~ N(0, DATA_STD^2): E[x0 | x] = x * s^2 / (s^2 + sigma^2)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x * DATA_STD**2 / (DATA_STD**2 + s**2)


def exact_ode_solution(latents: torch.Tensor, sigma_max: float) -> torch.Tensor:
    # The probability-flow ODE for Gaussian data keeps x / sqrt(s^2 + sigma^2) constant.
    return latents * sigma_max * DATA_STD / math.sqrt(DATA_STD**2 + sigma_max**2)


def test_karras_sigmas_follow_the_edm_formula_and_end_at_zero():
    sig = karras_sigmas(SamplerConfig(num_steps=18, sigma_min=0.002, sigma_max=800.0, rho=7.0))
    i = np.arange(18)
    expected = (800 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 800 ** (1 / 7))) ** 7
    assert sig.shape == (19,) and sig.dtype == torch.float64
    np.testing.assert_allclose(sig[:-1].numpy(), expected, rtol=1e-12)
    assert sig[-1] == 0.0
    assert math.isclose(sig[0].item(), 800.0, rel_tol=1e-12)
    assert math.isclose(sig[-2].item(), 0.002, rel_tol=1e-12)
    assert torch.all(sig[1:] < sig[:-1])


def test_karras_sigmas_with_one_step_go_straight_from_sigma_max_to_zero():
    assert karras_sigmas(SamplerConfig(num_steps=1, sigma_max=5.0)).tolist() == [5.0, 0.0]


def test_karras_sigmas_follow_every_setting_of_the_config():
    config = SamplerConfig(num_steps=5, sigma_min=0.5, sigma_max=40.0, rho=3.0)
    sig = karras_sigmas(config, dtype=torch.float32)
    lo, hi = 0.5 ** (1 / 3), 40.0 ** (1 / 3)
    expected = [(hi + i / 4 * (lo - hi)) ** 3 for i in range(5)] + [0.0]
    assert sig.dtype == torch.float32
    np.testing.assert_allclose(sig.numpy(), expected, rtol=1e-6)


def _ode_error(solver, num_steps: int) -> float:
    latents = torch.ones(1, 1, dtype=torch.float64)
    sig = karras_sigmas(SamplerConfig(num_steps=num_steps, sigma_min=0.002, sigma_max=80.0))
    out = solver(gaussian_denoiser, latents * sig[0], sig)
    return abs((out - exact_ode_solution(latents, 80.0)).item())


def test_heun_converges_to_the_exact_ode_solution_at_second_order():
    assert _ode_error(heun, 256) < 2e-4
    assert 3.5 < _ode_error(heun, 32) / _ode_error(heun, 64) < 4.5


def test_euler_converges_at_first_order_and_heun_beats_it():
    assert 1.8 < _ode_error(euler, 32) / _ode_error(euler, 64) < 2.2
    assert _ode_error(heun, 16) < 0.5 * _ode_error(euler, 16)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_a_member_does_not_depend_on_how_members_are_batched(solver):
    config = SamplerConfig(solver=solver, num_steps=6, sigma_max=20.0, S_churn=2.0)
    seeds = [11, 12, 13]  # an ensemble size that is no multiple of any batch size
    together = sample(
        gaussian_denoiser,
        draw_latents(gens := make_generators(seeds), (2, 5, 3)),
        config=config,
        generators=gens,
    )
    for n, seed in enumerate(seeds):
        gens = make_generators([seed])
        alone = sample(
            gaussian_denoiser, draw_latents(gens, (2, 5, 3)), config=config, generators=gens
        )
        torch.testing.assert_close(alone[0], together[n], rtol=0, atol=0)


def test_churn_noise_comes_from_each_members_own_seed():
    config = SamplerConfig(num_steps=5, sigma_max=20.0, S_churn=3.0)
    latents = torch.ones(2, 3, 3)
    a = sample(gaussian_denoiser, latents, config=config, generators=make_generators([1, 2]))
    b = sample(gaussian_denoiser, latents, config=config, generators=make_generators([1, 5]))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert not torch.allclose(a[1], b[1])


def test_deterministic_sampler_draws_no_noise():
    gens = make_generators([4, 5])
    states = [g.get_state() for g in gens]
    latents = torch.randn(2, 1, 4, 4)
    out = sample(gaussian_denoiser, latents, config=SamplerConfig(num_steps=4), generators=gens)
    assert all(torch.equal(s, g.get_state()) for s, g in zip(states, gens))
    torch.testing.assert_close(
        out, sample(gaussian_denoiser, latents, config=SamplerConfig(num_steps=4))
    )


def test_churn_outside_the_s_min_s_max_window_changes_nothing():
    latents = torch.randn(2, 4)
    plain = sample(gaussian_denoiser, latents, config=SamplerConfig(num_steps=5))
    windowed = sample(
        gaussian_denoiser,
        latents,
        config=SamplerConfig(num_steps=5, S_churn=5.0, S_min=1e4),
        generators=make_generators([0, 1]),
    )
    torch.testing.assert_close(windowed, plain, rtol=0, atol=0)


def test_churn_is_capped_as_in_edm():
    # gamma = min(S_churn / N, sqrt(2) - 1): a huge S_churn equals the cap exactly.
    latents = torch.randn(1, 6)
    cfg = {"num_steps": 4, "sigma_max": 10.0}
    capped = sample(
        gaussian_denoiser,
        latents,
        config=SamplerConfig(S_churn=1e6, **cfg),
        generators=make_generators([9]),
    )
    at_cap = sample(
        gaussian_denoiser,
        latents,
        config=SamplerConfig(S_churn=4 * (math.sqrt(2) - 1), **cfg),
        generators=make_generators([9]),
    )
    torch.testing.assert_close(capped, at_cap)


def test_sample_runs_the_configured_solver_from_sigma_max():
    latents = torch.randn(3, 2, 2, dtype=torch.float64)
    sig = karras_sigmas(SamplerConfig(num_steps=7, sigma_max=30.0))
    manual = euler(gaussian_denoiser, latents * sig[0], sig)
    out = sample(
        gaussian_denoiser,
        latents,
        config=SamplerConfig(solver="euler", num_steps=7, sigma_max=30.0),
    )
    torch.testing.assert_close(out, manual, rtol=0, atol=0)


def test_denoiser_sees_one_sigma_per_sample_in_the_samples_dtype():
    seen = []

    def denoise(x, sigma):
        seen.append((sigma.shape, sigma.dtype))
        return gaussian_denoiser(x, sigma)

    heun(denoise, torch.randn(4, 3), karras_sigmas(SamplerConfig(num_steps=3)))
    assert seen and all(s == ((4,), torch.float32) for s in seen)
    assert len(seen) == 2 * 3 - 1  # Heun: two calls per step, one on the last step


def test_churn_without_generators_raises_a_clear_error():
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        heun(
            gaussian_denoiser,
            torch.randn(2, 3),
            karras_sigmas(SamplerConfig(num_steps=3)),
            config=SamplerConfig(S_churn=1.0),
        )


def test_bad_schedules_and_configs_are_rejected():
    with pytest.raises(ValueError, match="decrease"):
        heun(gaussian_denoiser, torch.randn(1, 2), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=0)
    with pytest.raises(TypeError, match="takes a SamplerConfig"):
        karras_sigmas(18)
    with pytest.raises(ValueError, match="sigma_min"):
        SamplerConfig(sigma_min=0.0)


def test_student_t_latents_of_a_shared_field_agree_where_patches_overlap():
    """A NoiseSource stands where a generator stands, Student-t scale included: the scale is
    the field's (one chi-square per field draw), so overlapping patches still agree."""
    from corrdiff_xr.noise import FieldNoise
    from corrdiff_xr.protocols import NoiseSource

    whole_source, patch_source = FieldNoise(0, 11, 2, (0, 0)), FieldNoise(0, 11, 2, (8, 16))
    assert isinstance(whole_source, NoiseSource) and not isinstance(torch.Generator(), NoiseSource)
    whole = draw_latents([whole_source], (1, 32, 32), nu=5.0)[0]
    patch = draw_latents([patch_source], (1, 16, 16), nu=5.0)[0]
    torch.testing.assert_close(patch, whole[:, 8:24, 16:32], rtol=0, atol=0)
    gaussian = FieldNoise(0, 11, 2, (0, 0)).randn((1, 32, 32))
    scale = whole / gaussian  # one factor sqrt(nu / chi2) for the whole field
    torch.testing.assert_close(scale, torch.full_like(scale, float(scale.flatten()[0])))
    assert float(scale.flatten()[0]) != 1.0
