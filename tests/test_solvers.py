"""The solvers against a known answer: Gaussian data, whose exact denoiser and exact
probability-flow ODE solution are known in closed form.

For data ``x0 ~ N(mu, s^2)`` (per element), ``x = x0 + sigma eps`` has the posterior mean
``D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and the ODE ``dx/dsigma = (x - D) / sigma``
carries ``x`` from ``sigma_a`` to ``sigma_b`` as ``mu + (x - mu) sqrt((s^2 + sigma_b^2) /
(s^2 + sigma_a^2))``. A solver of order ``p`` has a global error falling as ``N^-p`` with the
number of steps ``N``; a sampler of the reverse SDE has the data distribution at ``sigma = 0``.
"""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from corrdiff_xr import sampling
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.config_sampling import GAUSSIAN_ONLY, SolverName

MU, S = 0.7, 0.4


def _denoise(x, sigma):
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return MU + S**2 / (S**2 + s2) * (x - MU)


def _exact(x, sigma_a, sigma_b):
    return MU + (x - MU) * math.sqrt((S**2 + sigma_b**2) / (S**2 + sigma_a**2))


def _error(solver: str, steps: int) -> float:
    cfg = SamplerConfig(solver=solver, num_steps=steps, sigma_max=80.0, sigma_min=0.01)
    # stop at sigma_min: the final jump to 0 is first order by construction for every solver
    sigmas = sampling.karras_sigmas(cfg)[:-1]
    x0 = torch.linspace(-3.0, 3.0, 64, dtype=torch.float64).reshape(64, 1) * 80.0
    got = sampling.SOLVERS[solver].run(_denoise, x0.clone(), sigmas, config=cfg)
    want = _exact(x0, float(sigmas[0]), float(sigmas[-1]))
    return float((got - want).abs().max())


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_the_error_falls_at_the_solvers_order(solver, order):
    errors = [_error(solver, n) for n in (16, 32, 64, 128)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(e > 0 for e in errors)
    assert abs(np.mean(rates[1:]) - order) < 0.35, (errors, rates)


def test_dpmpp_2m_beats_heun_at_equal_network_calls():
    # 9 Heun steps cost 17 calls; 17 DPM-Solver++(2M) steps cost 17 as well
    table = sampling.SOLVERS
    assert table["heun"].calls(9) == table["dpmpp_2m"].calls(17) == 17
    assert _error("dpmpp_2m", 17) < _error("heun", 9)


def test_the_solver_table_holds_exactly_the_names_configs_accept():
    assert set(sampling.SOLVERS) == set(typing.get_args(SolverName))
    assert GAUSSIAN_ONLY <= set(sampling.SOLVERS)


@pytest.mark.parametrize("solver", typing.get_args(SolverName))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_each_solver_makes_the_network_calls_its_table_row_counts(solver, steps):
    calls = []

    def counting(x, sigma):
        calls.append(x.shape[0])
        return _denoise(x, sigma)

    cfg = SamplerConfig(solver=solver, num_steps=steps, sigma_max=80.0)
    gens = sampling.make_generators(range(3))
    latents = sampling.draw_latents(gens, (2,), dtype=torch.float64)
    sampling.sample(counting, latents, config=cfg, generators=gens)
    assert len(calls) == sampling.SOLVERS[solver].calls(steps)
    assert set(calls) == {3}  # every call denoises the whole batch


@pytest.mark.parametrize("solver", typing.get_args(SolverName))
def test_student_t_noise_is_refused_exactly_by_the_gaussian_only_solvers(solver):
    cfg = SamplerConfig(solver=solver, num_steps=3, sigma_max=80.0, S_churn=1.0)
    gens = sampling.make_generators(range(2))
    latents = sampling.draw_latents(gens, (2,), dtype=torch.float64, nu=5.0)
    if solver in GAUSSIAN_ONLY:
        with pytest.raises(ValueError, match=f"solver='{solver}' needs Gaussian noise"):
            sampling.sample(_denoise, latents, config=cfg, generators=gens, nu=5.0)
    else:
        out = sampling.sample(_denoise, latents, config=cfg, generators=gens, nu=5.0)
        assert out.shape == latents.shape and torch.isfinite(out).all()


def test_to_sigma_zero_dpmpp_2m_lands_on_the_posterior_of_its_last_step():
    cfg = SamplerConfig(solver="dpmpp_2m", num_steps=40, sigma_max=80.0)
    sigmas = sampling.karras_sigmas(cfg)
    x0 = torch.full((4, 1), 10.0, dtype=torch.float64)
    got = sampling.dpmpp_2m(_denoise, x0, sigmas, config=cfg)
    # the ODE maps x(80) = 10 to mu + (10 - mu) * s / sqrt(s^2 + 80^2) at sigma 0
    np.testing.assert_allclose(got.numpy(), _exact(10.0, 80.0, 0.0), rtol=2e-3)


def _sde_samples(steps: int, eta: float, n: int = 40_000, seed: int = 0) -> torch.Tensor:
    cfg = SamplerConfig(solver="dpmpp_2m_sde", num_steps=steps, sigma_max=80.0, eta=eta)
    gens = sampling.make_generators(range(seed, seed + 8))
    latents = sampling.draw_latents(gens, (n // 8,), dtype=torch.float64)
    return sampling.sample(_denoise, latents, config=cfg, generators=gens)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_the_stochastic_solver_converges_to_the_data_distribution(eta):
    # the spread's discretisation error falls with the steps (measured: 4.4 %, 1.1 %, 0.2 %
    # at 32, 64, 128 steps for eta = 1), the sampling error of 80,000 draws is ~0.25 %
    std_error = {n: abs(float(_sde_samples(n, eta, n=80_000).std()) - S) for n in (32, 128)}
    x = _sde_samples(128, eta, n=80_000)
    assert abs(float(x.mean()) - MU) < 0.01
    assert std_error[128] < 0.006 and std_error[128] < std_error[32] / 3, std_error


def test_the_stochastic_solver_is_reproducible_per_generator_and_noisier_than_the_ode():
    a, b = _sde_samples(12, 1.0, n=800), _sde_samples(12, 1.0, n=800)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    cfg = SamplerConfig(solver="dpmpp_2m_sde", num_steps=12, sigma_max=80.0, eta=0.0)
    gens = sampling.make_generators(range(8))
    latents = sampling.draw_latents(gens, (100,), dtype=torch.float64)
    ode = sampling.sample(_denoise, latents, config=cfg, generators=gens)
    plain = sampling.sample(
        _denoise, latents, config=SamplerConfig(solver="dpmpp_2m", num_steps=12, sigma_max=80.0)
    )
    torch.testing.assert_close(ode, plain, rtol=0, atol=0)  # eta = 0 is the ODE solver
    assert not torch.equal(a[:, :100], ode)


def test_the_stochastic_solver_needs_generators():
    cfg = SamplerConfig(solver="dpmpp_2m_sde", num_steps=4)
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        sampling.dpmpp_2m_sde(_denoise, torch.zeros(2, 3), sampling.karras_sigmas(cfg), config=cfg)
