"""Rectified flow (``edm.flow: x | v``, ``edm.flow_shift``) written as EDM on ``x_t / (1 - t)``:
the variable mapping, the losses, the time-shift and the samplers against known answers, a
tiny training run through ``downscale``, and the default headers byte for byte.

Known answer: for data ``y ~ N(MU, S^2)`` per element the exact clean-sample estimate at
``x = y + sigma eps`` is ``MU + S^2 / (S^2 + sigma^2) (x - MU)``; an "oracle" network returns
it (or the matching velocity) from ``x_t`` and ``c_noise`` alone, as a trained flow net would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr import sampling
from corrdiff_xr.config import EDMConfig, SamplerConfig, TrainRunConfig, from_dict
from corrdiff_xr.edm import EDMPrecond, edm_dict, residual_loss

MU, S = 0.7, 0.4
DEFAULT_EDM_JSON = (
    '{"sigma_data": 0.5, "P_mean": 0.0, "P_std": 1.2, "hr_mean_conditioning": true, '
    '"scale_condition": false}'
)


def _t(sigma):
    return sigma / (1 + sigma)


class Oracle(torch.nn.Module):
    """The exact flow network for Gaussian data: sees ``x_t`` and ``c_noise = ln(sigma)/4``,
    returns the clean sample (``x``) or the velocity ``eps - y`` (``v``)."""

    def __init__(self, prediction: str):
        super().__init__()
        self.prediction = prediction

    def forward(self, x_t, c_noise, offsets=None, lead_time=None):
        sigma = (4 * c_noise).exp().reshape(-1, *[1] * (x_t.ndim - 1))
        t = _t(sigma)
        y_hat = MU + S**2 / (S**2 + sigma**2) * (x_t / (1 - t) - MU)
        return y_hat if self.prediction == "x" else (x_t - y_hat) / t


class Spy(torch.nn.Module):
    """Records its input and returns ``answer`` (set by the test)."""

    def forward(self, x_t, c_noise, offsets=None, lead_time=None):
        self.seen, self.c_noise = x_t, c_noise
        return self.answer


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_the_network_sees_x_t_and_its_prediction_maps_back_to_the_clean_sample(prediction):
    g = torch.Generator().manual_seed(0)
    y, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    sigma = torch.tensor([0.05, 1.0, 30.0])
    t = _t(sigma).reshape(-1, 1, 1, 1)
    x_t = (1 - t) * y + t * eps
    spy = Spy()
    spy.answer = y if prediction == "x" else eps - y  # the exact prediction
    denoised = EDMPrecond(spy, edm=EDMConfig(flow=prediction))(
        y + sigma.reshape(-1, 1, 1, 1) * eps, sigma
    )
    torch.testing.assert_close(spy.seen, x_t)  # EDM variable -> x_t
    torch.testing.assert_close(denoised, y)  # prediction -> clean sample, in the EDM variable
    torch.testing.assert_close(spy.c_noise, (t / (1 - t)).log().reshape(-1) / 4)  # logit(t) / 4


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_the_flow_loss_is_the_squared_error_of_the_prediction(prediction):
    g = torch.Generator().manual_seed(1)
    y, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    delta = 0.1 * torch.randn(4, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 0.5, 2.0, 9.0])
    spy = Spy()
    spy.answer = (y if prediction == "x" else eps - y) + delta
    precond = EDMPrecond(spy, edm=EDMConfig(flow=prediction))

    def denoiser(x_noisy, s, *, condition, offsets):
        return precond(x_noisy, s)

    edm = EDMConfig(flow=prediction, hr_mean_conditioning=False)
    zero = torch.zeros_like(y)
    loss = residual_loss(
        denoiser, zero, y, edm=edm, mean=zero, sigma=sigma, noise=eps, reduction="none"
    )
    torch.testing.assert_close(loss, delta**2)  # ||F - target||^2, weight 1 in its own space


def test_the_time_shift_scales_sigma_in_training_and_sampling():
    s = 3.0
    tt = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    shifted = s * tt / (1 + (s - 1) * tt)  # the resolution time-shift of flow models
    torch.testing.assert_close(shifted / (1 - shifted), s * tt / (1 - tt))  # sigma' = s sigma

    drawn = []

    def record(x_noisy, sigma, *, condition, offsets):
        drawn.append(sigma)
        return x_noisy

    y = torch.zeros(64, 1, 4, 4)
    for edm in (EDMConfig(flow="x"), EDMConfig(flow="x", flow_shift=s)):
        residual_loss(record, y, y, edm=edm, mean=y, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(drawn[1], s * drawn[0])

    levels = []

    def denoise(x, sigma):
        levels.append(float(sigma[0]))
        return torch.zeros_like(x)

    cfg = SamplerConfig(solver="euler", num_steps=5)
    sampling.sample(denoise, torch.zeros(1, 2, dtype=torch.float64), config=cfg)
    sampling.sample(denoise, torch.zeros(1, 2, dtype=torch.float64), config=cfg, shift=s)
    np.testing.assert_allclose(levels[5:], s * np.array(levels[:5]), rtol=1e-12)


def _gaussian_denoiser(x, sigma):
    """The exact EDM denoiser of N(MU, S^2) data."""
    return MU + S**2 / (S**2 + sigma.reshape(-1, 1, 1, 1) ** 2) * (x - MU)


@pytest.mark.parametrize("prediction", ["x", "v"])
@pytest.mark.parametrize("solver", ["heun", "euler", "dpmpp_2m", "dpmpp_2m_sde"])
def test_flow_sampling_reproduces_gaussian_data(prediction, solver):
    n, d, shift = 2000, 8, 2.0
    precond = EDMPrecond(Oracle(prediction), edm=EDMConfig(flow=prediction, flow_shift=shift))
    steps = 256 if solver == "euler" else 64  # first order: std off by 0.022 at 64 steps
    cfg = SamplerConfig(solver=solver, num_steps=steps, sigma_max=80.0)
    gens = sampling.make_generators(range(n))
    latents = sampling.draw_latents(gens, (1, 1, d), dtype=torch.float64)  # EDMPrecond: 4-D
    x = sampling.sample(
        lambda x, s: precond(x, s), latents, config=cfg, generators=gens, shift=shift
    )
    # the flow network, mapped back, is the exact EDM denoiser: the same samples
    gens = sampling.make_generators(range(n))
    latents = sampling.draw_latents(gens, (1, 1, d), dtype=torch.float64)  # again: churn next
    plain = sampling.sample(_gaussian_denoiser, latents, config=cfg, generators=gens, shift=shift)
    torch.testing.assert_close(x, plain, rtol=1e-10, atol=1e-10)
    # the data's law: 16,000 values, sampling errors ~0.003 (mean) and ~0.002 (std)
    assert abs(float(x.mean()) - MU) < 0.01 and abs(float(x.std()) - S) < 0.01
    if solver != "dpmpp_2m_sde":
        # the exact ODE maps x = MU + sqrt(S^2 + sigma^2) z to MU + S z, per sample; the
        # error is the solver's (heun: 0.034 at 32 steps, 0.0079 at 64)
        start = shift * cfg.sigma_max
        exact = MU + S * (start * latents - MU) / (S**2 + start**2) ** 0.5
        assert float((x - exact).abs().max()) < (0.03 if solver == "euler" else 0.01)


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_euler_in_sigma_is_euler_in_t_on_the_flow_ode(prediction):
    # Euler on dx/dsigma = (x - D) / sigma and on dx_t/dt = v are the same step (both are
    # exact for a constant D), so the flow's own Euler in t lands on the same samples
    net = Oracle(prediction)
    precond = EDMPrecond(net, edm=EDMConfig(flow=prediction))
    cfg = SamplerConfig(solver="euler", num_steps=7, sigma_max=80.0)
    latents = torch.randn(
        16, 1, 1, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    ours = sampling.sample(lambda x, s: precond(x, s), latents, config=cfg)

    sigmas = sampling.karras_sigmas(cfg)
    ts = _t(sigmas)
    x_t = ts[0] * latents  # (1 - t) 0 + t eps, with the EDM start sigma_max eps
    for t0, t1, s0 in zip(ts[:-1], ts[1:], sigmas[:-1], strict=True):
        f = net(x_t, (s0.log() / 4).expand(x_t.shape[0]))
        v = (x_t - f) / t0 if prediction == "x" else f
        x_t = x_t + (t1 - t0) * v
    torch.testing.assert_close(ours, x_t, rtol=1e-10, atol=1e-10)


def test_flow_with_student_t_noise_or_a_stray_shift_is_refused_in_one_line():
    for kw, need in (
        ({"flow": "x", "nu": 5.0}, "Gaussian"),
        ({"flow_shift": 2.0}, "set flow to x or v"),
    ):
        with pytest.raises(ValueError, match=need) as info:
            EDMConfig(**kw)
        assert "\n" not in str(info.value)


def test_defaults_are_byte_identical_and_flow_is_recorded():
    assert json.dumps(edm_dict(EDMConfig())) == DEFAULT_EDM_JSON
    assert json.dumps(edm_dict(EDMConfig(flow="v", flow_shift=2.0))) == (
        DEFAULT_EDM_JSON[:-1] + ', "flow": "v", "flow_shift": 2.0}'
    )
    assert "flow_shift" not in edm_dict(EDMConfig(flow="x"))


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_a_flow_run_trains_saves_reloads_and_downscales(tmp_path, prediction):
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.model import CorrDiff, read_checkpoint_header
    from corrdiff_xr.training import train

    store = synthetic_store(tmp_path / "syn.zarr")
    data = tiny_config(store, tmp_path / "run", duration=4, task="diffusion")
    data["edm"] = {"objective": "direct", "flow": prediction, "flow_shift": 2.0}
    result = train(from_dict(TrainRunConfig, data))
    assert result.completed and np.isfinite(result.loss)
    path = result.output_dir / "model.safetensors"
    header = read_checkpoint_header(path)
    record = json.loads((result.output_dir / "identity.json").read_text())["identity"]
    assert header["edm"]["flow"] == record["edm"]["flow"] == prediction
    assert header["edm"]["flow_shift"] == 2.0
    model = CorrDiff.load(path)
    assert (model.edm_config.flow, model.edm_config.flow_shift) == (prediction, 2.0)
    pair = open_pair(store).isel(time=[1])
    for solver in ("heun", "dpmpp_2m_sde"):
        out = downscale(pair, str(path), members=2, seed=3, steps=2, sampler=solver)
        out = out.compute(scheduler="sync")
        for var in out.data_vars:
            assert np.isfinite(out[var].values).all()
        # members differ (barely, for an untrained x-prediction net: 4e-4 K)
        assert (out.t2m.values[0] != out.t2m.values[1]).any()
