"""Noise schedules and EDM samplers, one signature for every sampler.

Every sampler is a plain function ``sampler(denoise, x, sigmas, *, generators=None,
config=None)`` (the k-diffusion convention): ``denoise(x, sigma)`` returns the denoised
estimate :math:`D(x; \\sigma)` for a batch ``x`` of shape ``(N, ...)`` and ``sigma`` of shape
``(N,)``; ``x`` is the *already noised* starting point (``latents * sigmas[0]``); ``sigmas`` is
a decreasing schedule ending in 0, e.g. from :func:`karras_sigmas`; ``config`` (a
:class:`~corrdiff_xr.config.SamplerConfig`) gives the churn settings, whose defaults live
there alone. Conditioning (coarse inputs, the regression mean, positional offsets,
patching) lives inside the ``denoise`` closure, so the samplers know nothing about CorrDiff.
The interfaces are the :class:`~corrdiff_xr.protocols.Denoiser` and
:class:`~corrdiff_xr.protocols.Sampler` protocols. :data:`SOLVERS` is the one solver table: a
new solver is a function here and one row there (with its name in
:data:`~corrdiff_xr.config_sampling.SolverName`, which configs are checked against).

Randomness is drawn from one :class:`torch.Generator` per sample (EDM's
``StackedRandomGenerator`` idea): the latents first (:func:`draw_latents`), then the churn
noise of each step, always per sample. An ensemble member therefore depends only on its own
seed, never on how members were batched, and any ensemble size works.

Differences from the reference (PhysicsNeMo 2.2.2 ``deterministic_sampler`` /
``stochastic_sampler``): churn (``S_churn``, ``S_min``, ``S_max``, ``S_noise``) is exposed for
both solvers (the reference's CorrDiff generation hard-wires it to 0), the per-step churn is
capped at ``sqrt(2) - 1`` as in EDM (the reference's stochastic sampler does not cap it), and
noise is only drawn on steps that use it. With ``S_churn = 0`` the Heun sampler is
Algorithm 1 of Karras et al. (2022) and matches the reference's deterministic sampler.

Student-t noise (t-EDM, ``nu``; see :mod:`corrdiff_xr.edm`): the latents and the churn noise
are multivariate Student-t with the model's ``nu`` (one chi-square per sample and draw, from
the sample's generator). The probability-flow ODE ``dx/dsigma = (x - D) / sigma`` holds for
any noise law of ``x = y + sigma n`` (its velocity is ``E[n | x]``), so ``heun``, ``euler``
and ``dpmpp_2m`` stay exact; churn with Student-t noise is a heuristic as in t-EDM (a sum of
Student-t draws is not Student-t). ``dpmpp_2m_sde``'s noise term is the Gaussian transition
of the reverse SDE, which has no Student-t form: it is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.config_sampling import GAUSSIAN_ONLY, SolverName
from corrdiff_xr.noise import student_t_scale
from corrdiff_xr.protocols import Denoiser, NoiseSource, RandomSource, Sampler

__all__ = [
    "SOLVERS",
    "Denoiser",
    "Solver",
    "check_solver",
    "distilled",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "draw_latents",
    "euler",
    "heun",
    "karras_sigmas",
    "make_generators",
    "sample",
]


def karras_sigmas(
    config: SamplerConfig,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Noise levels of Karras et al. (2022), eq. 5, with a final 0 appended.

    .. math::
        \\sigma_i = \\left(\\sigma_{max}^{1/\\rho} + \\tfrac{i}{N-1}
        (\\sigma_{min}^{1/\\rho} - \\sigma_{max}^{1/\\rho})\\right)^{\\rho},
        \\quad i = 0..N-1, \\qquad \\sigma_N = 0

    Parameters
    ----------
    config
        Its ``num_steps`` (N >= 1; with one step the schedule is ``[sigma_max, 0]``),
        ``sigma_min``, ``sigma_max`` and ``rho`` (range and curvature of the schedule),
        already checked when the config was built.
    dtype, device
        Of the returned tensor (float64 by default, as in EDM).

    Returns
    -------
    Tensor
        Shape ``(num_steps + 1,)``, strictly decreasing, last element 0.
    """
    if not isinstance(config, SamplerConfig):  # e.g. the former karras_sigmas(num_steps)
        raise TypeError(
            f"karras_sigmas takes a SamplerConfig (e.g. SamplerConfig(num_steps=18)), "
            f"got {type(config).__name__} {config!r:.100}"
        )
    num_steps, sigma_min, sigma_max, rho = (
        config.num_steps,
        config.sigma_min,
        config.sigma_max,
        config.rho,
    )
    if num_steps == 1:
        steps = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        steps = (hi + ramp * (lo - hi)) ** rho
    sigmas = torch.cat([steps, steps.new_zeros(1)])
    return sigmas.to(dtype=dtype, device=device)


def make_generators(
    seeds: Sequence[int], *, device: torch.device | str | None = None
) -> list[torch.Generator]:
    """One seeded :class:`torch.Generator` per seed, on ``device`` (CPU by default)."""
    return [torch.Generator(device=device or "cpu").manual_seed(int(s)) for s in seeds]


def _randn_per_sample(
    generators: Sequence[RandomSource] | None,
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
    nu: float | None = None,
) -> Tensor:
    # One draw per generator, so sample n's numbers depend only on generators[n]; a noise
    # source with its own randn (corrdiff_xr.noise.FieldNoise) stands in for a generator
    if generators is None:  # callers check the count first; this is for the type checker
        raise ValueError("drawing noise needs one torch.Generator per sample (generators=...)")
    draws = []
    for g in generators:
        if isinstance(g, NoiseSource):
            z = g.randn(tuple(shape), dtype=dtype, device=device)
        else:
            z = torch.randn(tuple(shape), generator=g, dtype=dtype, device=device)
        if nu is not None:  # multivariate Student-t: one chi-square per sample and draw
            z = z * student_t_scale(g, 1, nu, dtype=dtype, device=z.device)
        draws.append(z)
    return torch.stack(draws)


def check_solver(solver: str, nu: float | None) -> None:
    """Refuse a solver whose maths needs Gaussian noise when the model's is Student-t."""
    if nu is not None and solver in GAUSSIAN_ONLY:
        raise ValueError(
            f"sampler.solver={solver!r} needs Gaussian noise but the model's is Student-t "
            f"(edm.nu={nu:g}): use heun, euler or dpmpp_2m"
        )


def draw_latents(
    generators: Sequence[RandomSource],
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    nu: float | None = None,
) -> Tensor:
    """Standard-normal latents of shape ``(len(generators), *shape)``, one generator each
    (multivariate Student-t with ``nu`` degrees of freedom when ``nu`` is given).

    Draw these before sampling: the samplers then take churn noise from the same generators.
    A generator may also be any noise source with ``randn(shape, dtype=, device=)`` (the
    shared field of patched inference, :class:`corrdiff_xr.noise.FieldNoise`).
    """
    if len(generators) == 0:
        raise ValueError("draw_latents needs at least one generator")
    return _randn_per_sample(generators, shape, dtype=dtype, device=device, nu=nu)


def _churn(
    x: Tensor,
    sigma: float,
    *,
    num_steps: int,
    generators: Sequence[RandomSource] | None,
    config: SamplerConfig,
    nu: float | None = None,
) -> tuple[Tensor, float]:
    """Raise the noise level from ``sigma`` to ``sigma_hat`` (EDM Algorithm 2, lines 5-7)."""
    in_window = config.S_min <= sigma <= config.S_max
    gamma = min(config.S_churn / num_steps, math.sqrt(2.0) - 1.0) if in_window else 0.0
    if gamma <= 0.0:
        return x, sigma
    if generators is None or len(generators) != x.shape[0]:
        got = "none" if generators is None else len(generators)
        raise ValueError(
            f"S_churn > 0 needs one torch.Generator per sample (generators=...): "
            f"batch has {x.shape[0]} samples, got {got} generators"
        )
    sigma_hat = sigma * (1.0 + gamma)
    eps = _randn_per_sample(generators, x.shape[1:], dtype=x.dtype, device=x.device, nu=nu)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * config.S_noise * eps, sigma_hat


def _check(x: Tensor, sigmas: Tensor) -> list[float]:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}"
        )
    values = [float(s) for s in sigmas]
    if any(b >= a for a, b in pairwise(values)) or values[-1] < 0:
        raise ValueError(f"sigmas must decrease strictly to a value >= 0, got {values}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    return values


def _denoise_at(denoise: Denoiser, x: Tensor, sigma: float) -> Tensor:
    out = denoise(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
    if out.shape != x.shape:
        raise ValueError(f"denoise returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    return out.to(x.dtype)


def euler(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generators: Sequence[RandomSource] | None = None,
    config: SamplerConfig | None = None,
    nu: float | None = None,
) -> Tensor:
    """First-order EDM sampler (Euler steps on the probability-flow ODE, optional churn).

    Parameters
    ----------
    denoise
        ``denoise(x, sigma) -> D(x; sigma)``, see :class:`~corrdiff_xr.protocols.Denoiser`.
    x
        Starting point at noise level ``sigmas[0]``, shape ``(N, ...)``; the sampler works
        in ``x.dtype``.
    sigmas
        Decreasing noise levels ending in 0 (see :func:`karras_sigmas`).
    generators
        One generator per sample for the churn noise; needed only when ``S_churn > 0``.
    config
        Its EDM stochasticity (the rest of it, the schedule, is ``sigmas``): at steps with
        ``S_min <= sigma <= S_max`` the noise level is raised by
        ``gamma = min(S_churn / num_steps, sqrt(2) - 1)`` with fresh noise scaled by
        ``S_noise``. ``S_churn = 0`` is deterministic; None means ``SamplerConfig()``.

    Returns
    -------
    Tensor
        The sample at noise level ``sigmas[-1]``, same shape and dtype as ``x``.
    """
    return _integrate(
        denoise, x, sigmas, second_order=False, generators=generators, config=config, nu=nu
    )


def heun(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generators: Sequence[RandomSource] | None = None,
    config: SamplerConfig | None = None,
    nu: float | None = None,
) -> Tensor:
    """Second-order EDM sampler (Karras et al. 2022, Algorithms 1 and 2).

    Same arguments as :func:`euler`. Each step takes an Euler step and corrects it with the
    slope at its end (Heun's method), except the last step to ``sigma = 0``, which stays
    Euler (the slope is undefined there).
    """
    return _integrate(
        denoise, x, sigmas, second_order=True, generators=generators, config=config, nu=nu
    )


def _integrate(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    second_order: bool,
    generators: Sequence[RandomSource] | None,
    config: SamplerConfig | None,
    nu: float | None = None,
) -> Tensor:
    config = config or SamplerConfig()
    values = _check(x, sigmas)
    num_steps = len(values) - 1
    for sigma, sigma_next in pairwise(values):
        x, sigma_hat = _churn(
            x, sigma, num_steps=num_steps, generators=generators, config=config, nu=nu
        )
        # dx/dsigma = (x - D(x; sigma)) / sigma  (EDM eq. 4 with s(t)=1, sigma(t)=t)
        d = (x - _denoise_at(denoise, x, sigma_hat)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if second_order and sigma_next > 0:
            d_next = (x_next - _denoise_at(denoise, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


def dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generators: Sequence[RandomSource] | None = None,
    config: SamplerConfig | None = None,
    nu: float | None = None,
) -> Tensor:
    """DPM-Solver++(2M): a second-order multistep solver, one network call per step.

    Same arguments as :func:`euler` (churn included). With ``lambda = -log(sigma)`` and
    ``h = lambda_next - lambda``, the probability-flow ODE ``dx/dsigma = (x - D) / sigma``
    has the exact solution ``x_next = (sigma_next / sigma) x + sigma_next int e^lambda D
    dlambda`` (Lu et al. 2022, "DPM-Solver++", eq. 9 in the data-prediction form). The
    integral is taken with ``D`` extrapolated linearly in ``lambda`` from the previous step's
    denoised estimate (their Algorithm 2)::

        r  = h_prev / h
        D' = (1 + 1 / (2 r)) D - D_prev / (2 r)
        x_next = e^{-h} x + (1 - e^{-h}) D'

    The first step (no history) and the last one (to ``sigma = 0``, where ``h`` is infinite
    and ``x_next = D``) are first order. So ``N`` steps cost ``N`` network calls, against
    ``2 N - 1`` for :func:`heun`, for the same order of accuracy.
    """
    return _multistep(denoise, x, sigmas, eta=0.0, generators=generators, config=config, nu=nu)


def dpmpp_2m_sde(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generators: Sequence[RandomSource] | None = None,
    config: SamplerConfig | None = None,
    nu: float | None = None,
) -> Tensor:
    """The stochastic DPM-Solver++(2M): the same multistep update for the reverse SDE.

    Same arguments as :func:`euler`; the noise strength is ``config.eta`` (0 gives
    :func:`dpmpp_2m`; 1 the reverse-time SDE of Lu et al. 2022, section 4). Each step keeps
    ``e^{-eta h}`` of the ODE's ``x`` term, takes ``1 - e^{-(1 + eta) h}`` of the denoised
    estimate and adds fresh noise of standard deviation ``sigma_next sqrt(1 - e^{-2 eta h})``
    from each sample's generator::

        x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D'
                 + sigma_next sqrt(1 - e^{-2 eta h}) eps
    """
    check_solver("dpmpp_2m_sde", nu)
    eta = (config or SamplerConfig()).eta
    return _multistep(denoise, x, sigmas, eta=eta, generators=generators, config=config)


def _multistep(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float,
    generators: Sequence[RandomSource] | None,
    config: SamplerConfig | None,
    nu: float | None = None,
) -> Tensor:
    config = config or SamplerConfig()
    values = _check(x, sigmas)
    num_steps = len(values) - 1
    if eta > 0 and (generators is None or len(generators) != x.shape[0]):
        got = "none" if generators is None else len(generators)
        raise ValueError(
            f"the stochastic solver needs one torch.Generator per sample (generators=...): "
            f"batch has {x.shape[0]} samples, got {got} generators"
        )
    previous = None  # (lambda, D) of the last evaluation
    for sigma, sigma_next in pairwise(values):
        x, sigma_hat = _churn(
            x, sigma, num_steps=num_steps, generators=generators, config=config, nu=nu
        )
        denoised = _denoise_at(denoise, x, sigma_hat)
        lam = -math.log(sigma_hat)
        if sigma_next == 0:
            x = denoised  # h is infinite: the solution is the denoised estimate
        else:
            h = -math.log(sigma_next) - lam
            target = denoised
            if previous is not None:
                r = (lam - previous[0]) / h
                target = denoised + (denoised - previous[1]) / (2.0 * r)
            decay = math.exp(-(1.0 + eta) * h)  # e^{-eta h} (sigma_next / sigma_hat)
            x = decay * x + (1.0 - decay) * target
            if eta > 0:
                eps = _randn_per_sample(generators, x.shape[1:], dtype=x.dtype, device=x.device)
                x = x + sigma_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * eps
        previous = (lam, denoised)
    return x


def distilled(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generators: Sequence[RandomSource] | None = None,
    config: SamplerConfig | None = None,
    nu: float | None = None,
) -> Tensor:
    """Multistep sampling of a distilled student (Song et al. 2023, arXiv 2303.01469, Alg. 1).

    ``denoise`` is a student (:mod:`corrdiff_xr.training.distil`) mapping ``x`` at level
    ``sigma`` to the *end* of the teacher's probability-flow trajectory through it, not to
    the posterior mean. The first call maps the latents (scaled by ``config.S_noise``, the
    noise scale) to a sample; each further level of ``sigmas`` re-noises that sample to
    ``sigma`` with fresh noise of each sample's generator (also times ``S_noise``) and maps it
    again. ``N`` steps cost ``N`` calls; the intermediate levels come from ``sigma_min`` and
    ``rho`` (with 2 steps the one intermediate level is ``sigma_min``). Churn is not used.
    """
    config = config or SamplerConfig()
    values = _check(x, sigmas)
    if len(values) > 2 and (generators is None or len(generators) != x.shape[0]):
        got = "none" if generators is None else len(generators)
        raise ValueError(
            f"multistep distilled sampling needs one torch.Generator per sample "
            f"(generators=...): batch has {x.shape[0]} samples, got {got} generators"
        )
    out = _denoise_at(denoise, x * config.S_noise, values[0])
    for sigma in values[1:-1]:
        eps = _randn_per_sample(generators, x.shape[1:], dtype=x.dtype, device=x.device, nu=nu)
        out = _denoise_at(denoise, out + sigma * config.S_noise * eps, sigma)
    return out


@dataclasses.dataclass(frozen=True)
class Solver:
    """One row of the solver table :data:`SOLVERS`.

    Attributes
    ----------
    run
        The sampler, with the one signature of :class:`~corrdiff_xr.protocols.Sampler`.
    calls
        Network calls per member for ``N`` steps.
    """

    run: Sampler
    calls: Callable[[int], int]


#: The solver table: every solver by the name :class:`~corrdiff_xr.config.SamplerConfig`
#: uses (:data:`~corrdiff_xr.config_sampling.SolverName` lists the same names, and
#: :data:`~corrdiff_xr.config_sampling.GAUSSIAN_ONLY` those refused with Student-t noise).
SOLVERS: dict[SolverName, Solver] = {
    "heun": Solver(heun, calls=lambda n: 2 * n - 1),
    "euler": Solver(euler, calls=lambda n: n),
    "dpmpp_2m": Solver(dpmpp_2m, calls=lambda n: n),
    "dpmpp_2m_sde": Solver(dpmpp_2m_sde, calls=lambda n: n),
    "distilled": Solver(distilled, calls=lambda n: n),
}


def sample(
    denoise: Denoiser,
    latents: Tensor,
    *,
    config: SamplerConfig | None = None,
    generators: Sequence[RandomSource] | None = None,
    nu: float | None = None,
    shift: float = 1.0,
) -> Tensor:
    """Run the sampler of ``config`` from standard-normal ``latents``.

    Builds the Karras schedule (times ``shift``), scales the latents by its first level and
    integrates to 0.

    Parameters
    ----------
    denoise
        ``denoise(x, sigma) -> D(x; sigma)``.
    latents
        Standard-normal noise ``(N, ...)``, e.g. from :func:`draw_latents` with the same
        ``generators``. The sampler works in ``latents.dtype``.
    config
        Solver, schedule and churn settings (``SamplerConfig()``, the reference's, if None).
    generators
        One per sample; required when ``config.S_churn > 0``.
    nu
        Student-t degrees of freedom of the model's noise (None: Gaussian): the churn noise
        is drawn so, and the latents should be too (:func:`draw_latents` with ``nu``).
    shift
        The rectified-flow time-shift ``s`` (``edm.flow_shift``): ``t' = s t / (1 + (s - 1) t)``
        is ``sigma' = s sigma``, so every level of the schedule is multiplied by it.
    """
    config = config or SamplerConfig()
    check_solver(config.solver, nu)
    sigmas = karras_sigmas(config, device=latents.device)
    if shift != 1.0:
        sigmas = sigmas * shift
    x = latents * sigmas[0].to(latents.dtype)
    run = SOLVERS[config.solver].run
    return run(denoise, x, sigmas, generators=generators, config=config, nu=nu)
