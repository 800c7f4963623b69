"""The diffusion objectives of ``edm``: Student-t noise (t-EDM, ``edm.nu``) and EDM on the
target directly (``edm.objective: direct``), against known answers, plus their default-off
headers and identities, byte for byte.

Known answer for t-EDM: for data ``x0 ~ N(mu, s^2)`` per element and multivariate Student-t
noise ``x = x0 + sigma z sqrt(w)``, ``w = nu / k``, ``k ~ chi2(nu)`` shared by a sample's ``d``
elements, ``x`` given ``w`` is Gaussian, so the exact denoiser is the posterior average over
``k`` of the Gaussian one, ``mu + s^2 / (s^2 + sigma^2 w) (x - mu)``, weighted by
``p(k) N(x; mu, (s^2 + sigma^2 w) I)`` (a 1-D quadrature in ``log k``).
"""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from _train_helpers import synthetic_store, tiny_config
from scipy import stats

from corrdiff_xr import sampling
from corrdiff_xr.config import ConfigError, EDMConfig, SamplerConfig, TrainRunConfig, from_dict
from corrdiff_xr.edm import EDMPrecond, edm_dict, residual_loss
from corrdiff_xr.model import CorrDiff, read_checkpoint_header
from corrdiff_xr.noise import FieldNoise, patch_generator

MU, S = 0.7, 0.4


def _kurtosis(x: torch.Tensor) -> float:
    x = x.double().reshape(-1)
    c = x - x.mean()
    return float((c**4).mean() / (c**2).mean() ** 2)


# -- defaults stay byte-identical ------------------------------------------------------------

DEFAULT_EDM_JSON = (
    '{"sigma_data": 0.5, "P_mean": 0.0, "P_std": 1.2, "hr_mean_conditioning": true, '
    '"scale_condition": false}'
)


def test_the_default_edm_header_and_identity_are_byte_identical(tmp_path):
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.model import shipped_model_path
    from corrdiff_xr.training.identity import run_identity

    assert json.dumps(edm_dict(EDMConfig())) == DEFAULT_EDM_JSON
    path = shipped_model_path()
    assert CorrDiff.load(path).config_dict()["edm"] == read_checkpoint_header(path)["edm"]
    store = synthetic_store(tmp_path / "s.zarr", nt=4)
    cfg = from_dict(TrainRunConfig, tiny_config(store, tmp_path / "run"))
    assert json.dumps(run_identity(cfg, open_pair(store))["edm"]) == DEFAULT_EDM_JSON
    set_ = edm_dict(EDMConfig(objective="direct", nu=5))
    assert (set_["objective"], set_["nu"]) == ("direct", 5.0)


# -- Student-t noise ---------------------------------------------------------------------------


def test_t_latents_have_the_moments_of_a_multivariate_student_t():
    nu, n = 12.0, 20_000
    gens = sampling.make_generators(range(n))
    t = sampling.draw_latents(gens, (4,), dtype=torch.float64, nu=nu)
    g = sampling.draw_latents(sampling.make_generators(range(n)), (4,), dtype=torch.float64)
    assert abs(float(t.var()) - nu / (nu - 2)) < 0.03  # 1.2; Gaussian: 1
    assert abs(_kurtosis(t) - (3 + 6 / (nu - 4))) < 0.25  # 3.75
    assert abs(_kurtosis(g) - 3) < 0.1
    # one chi-square per sample: its elements' squares are correlated (not in a Gaussian)
    corr = np.corrcoef(t[:, 0].numpy() ** 2, t[:, 1].numpy() ** 2)[0, 1]
    assert corr > 0.05 and abs(np.corrcoef(g[:, 0] ** 2, g[:, 1] ** 2)[0, 1]) < 0.03
    # the normal part is the Gaussian draw of the same generator, scaled
    ratio = t / g
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_training_noise_is_student_t_with_one_chi_square_per_row():
    nu, rows = 5.0, 400
    seen = []

    def record(x_noisy, sigma, *, condition, offsets):
        seen.append(x_noisy.clone())
        return x_noisy

    y = torch.zeros(rows, 1, 64, 64)
    edm = EDMConfig(nu=nu)
    gen = torch.Generator().manual_seed(0)
    residual_loss(record, y, y, edm=edm, mean=y, sigma=torch.ones(rows), generator=gen)
    k = nu / seen[0].pow(2).mean(dim=(1, 2, 3))  # the row's chi-square, to ~2 %
    assert stats.kstest(k.numpy(), stats.chi2(nu).cdf).pvalue > 0.01
    seen.clear()
    residual_loss(record, y, y, edm=EDMConfig(), mean=y, sigma=torch.ones(rows), generator=gen)
    k = nu / seen[0].pow(2).mean(dim=(1, 2, 3))
    assert stats.kstest(k.numpy(), stats.chi2(nu).cdf).pvalue < 1e-10  # Gaussian: k = nu


def test_the_preconditioner_gives_the_network_unit_variance_under_student_t_noise():
    nu, sd = 12.0, 0.5
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, noise, offsets=None, lead_time=None):
            seen.append(x)
            return torch.zeros_like(x)

    gens = sampling.make_generators(range(4000))
    n = sampling.draw_latents(gens, (1, 8, 8), dtype=torch.float64, nu=nu)
    y = sd * torch.randn(n.shape, generator=torch.Generator().manual_seed(1), dtype=n.dtype)
    for edm, want in ((EDMConfig(nu=nu), 1.0), (EDMConfig(), None)):
        seen.clear()
        for sigma in (0.2, 2.0, 20.0):
            EDMPrecond(Spy(), edm=edm)(y + sigma * n, sigma)
        stds = [float(v.std()) for v in seen]
        if want is not None:
            np.testing.assert_allclose(stds, want, atol=0.02)
        else:  # the Gaussian preconditioning misses the t noise's variance nu / (nu - 2)
            assert stds[-1] > 1.08


def _t_denoiser(nu: float):
    """The exact denoiser of N(MU, S^2) data under multivariate Student-t noise."""
    u = torch.linspace(math.log(1e-3), math.log(200.0), 400, dtype=torch.float64)
    k = u.exp()
    log_prior = nu / 2 * u - k / 2  # chi2(nu) density in log k (with the Jacobian k)
    w = nu / k

    def denoise(x, sigma):
        v = S**2 + sigma.reshape(-1, 1) ** 2 * w  # (N, K) variance of x given k
        r2 = ((x - MU) ** 2).sum(dim=1, keepdim=True)
        post = torch.softmax(log_prior - x.shape[1] / 2 * v.log() - r2 / (2 * v), dim=1)
        return MU + (post * S**2 / v).sum(dim=1, keepdim=True) * (x - MU)

    return denoise


@pytest.mark.parametrize(
    ("solver", "steps", "tol"), [("heun", 40, 0.01), ("euler", 80, 0.02), ("dpmpp_2m", 48, 0.01)]
)
def test_the_t_edm_ode_solvers_reproduce_the_data_distribution(solver, steps, tol):
    # heavy tails make the ODE harder than in the Gaussian case: the spread's error falls
    # at the solver's order (measured for heun: +0.059, +0.012, +0.002 at 12, 24, 48 steps);
    # the sampling errors of 16,000 values are ~0.002 (std) and ~0.04 (kurtosis)
    nu, n, d = 5.0, 2000, 8
    cfg = SamplerConfig(solver=solver, num_steps=steps, sigma_max=80.0)
    denoise = _t_denoiser(nu)
    gens = sampling.make_generators(range(n))
    latents = sampling.draw_latents(gens, (d,), dtype=torch.float64, nu=nu)
    assert _kurtosis(latents) > 6  # heavy-tailed latents ...
    x = sampling.sample(denoise, latents, config=cfg, generators=gens, nu=nu)
    assert abs(float(x.mean()) - MU) < 0.01  # ... Gaussian data
    assert abs(float(x.std()) - S) < tol
    assert abs(_kurtosis(x) - 3) < 0.15
    # Gaussian latents through the same (t) denoiser land off (measured kurtosis 2.62)
    gauss = sampling.draw_latents(sampling.make_generators(range(n)), (d,), dtype=torch.float64)
    assert _kurtosis(sampling.sample(denoise, gauss, config=cfg, nu=nu)) < 2.8


def test_student_t_churn_noise_is_keyed_and_shared_by_overlapping_patches():
    nu, time = 5.0, np.datetime64("2020-01-01T06")
    a, b = FieldNoise(3, time, 1, (0, 0)), FieldNoise(3, time, 1, (8, 4))
    for _ in range(3):  # latents, then two churn draws: each with its own field-wide scale
        za = sampling.draw_latents([a], (2, 24, 24), nu=nu)[0]
        zb = sampling.draw_latents([b], (2, 24, 24), nu=nu)[0]
        torch.testing.assert_close(za[:, 8:, 4:], zb[:, :16, :20], rtol=0, atol=0)
    g = sampling.draw_latents([FieldNoise(3, time, 1, (0, 0))], (2, 24, 24))[0]
    fresh = sampling.draw_latents([FieldNoise(3, time, 1, (0, 0))], (2, 24, 24), nu=nu)[0]
    ratio = fresh / g
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0, 0])))


def test_solvers_that_need_gaussian_noise_are_refused_in_one_line():
    cfg = SamplerConfig(solver="dpmpp_2m_sde", num_steps=2)
    with pytest.raises(ValueError, match=r"edm.nu=5.*heun, euler or dpmpp_2m") as info:
        sampling.sample(_t_denoiser(5.0), torch.zeros(1, 2), config=cfg, nu=5.0)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"nu: 2.0 is not a finite number > 2") as info:
        EDMConfig(nu=2.0)
    assert "\n" not in str(info.value)


# -- EDM on the target directly ------------------------------------------------------------


def test_a_direct_model_has_no_regression_and_a_zero_mean():
    from corrdiff_xr.testing import TINY_NETWORK

    with pytest.raises(ValueError, match="regression_network=None") as info:
        CorrDiff(img_shape=(8, 8), in_channels=2, out_channels=1, edm=EDMConfig(objective="direct"))
    assert "\n" not in str(info.value)
    model = CorrDiff(
        img_shape=(8, 8),
        in_channels=2,
        out_channels=1,
        regression_network=None,
        residual_network=TINY_NETWORK,
        edm=EDMConfig(objective="direct"),
    )
    assert not any(k.startswith("regression.") for k in model.state_dict())
    assert model.residual.net.in_channels == 1 + 2  # latent + inputs: no mean channels
    x = torch.randn(3, 2, 8, 8)
    torch.testing.assert_close(model.predict_mean(x), torch.zeros(3, 1, 8, 8))
    header = model.config_dict()
    assert header["regression_network"] is None and header["edm"]["objective"] == "direct"
    rebuilt = CorrDiff.from_config_dict(header)
    assert rebuilt.edm_config == model.edm_config and rebuilt.regression_config is None


def test_a_direct_run_refuses_a_regression_checkpoint(tmp_path):
    data = tiny_config("x.zarr", tmp_path, task="diffusion", regression_checkpoint="r.st")
    data["edm"] = {"objective": "direct"}
    with pytest.raises(ConfigError, match="edm.objective='direct'") as info:
        from_dict(TrainRunConfig, data)
    assert "\n" not in str(info.value)


# -- a tiny training run per objective, through downscale ------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from corrdiff_xr.training import train

    out = tmp_path_factory.mktemp("objectives")
    store = synthetic_store(out / "syn.zarr")

    def run(name, edm, **kw):
        data = tiny_config(store, out / name, duration=4, **kw)
        data["edm"] = edm
        return train(from_dict(TrainRunConfig, data))

    reg = run("reg", {})
    reg_file = str(reg.output_dir / "model.safetensors")
    t_edm = run("t", {"nu": 5.0}, task="diffusion", regression_checkpoint=reg_file)
    direct = run("direct", {"objective": "direct"}, task="diffusion")
    return store, {"t": t_edm, "direct": direct}


@pytest.mark.parametrize("name", ["t", "direct"])
def test_each_objective_trains_saves_reloads_and_downscales_independent_of_chunks(runs, name):
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale

    store, results = runs
    result = results[name]
    assert result.completed and np.isfinite(result.loss)
    path = result.output_dir / "model.safetensors"
    header = read_checkpoint_header(path)
    record = json.loads((result.output_dir / "identity.json").read_text())["identity"]
    if name == "t":
        assert header["edm"]["nu"] == record["edm"]["nu"] == 5.0
        assert "objective" not in header["edm"]
    else:
        assert header["edm"]["objective"] == record["edm"]["objective"] == "direct"
        assert header["regression_network"] is None and record["regression_checkpoint"] is None
    model = CorrDiff.load(path)
    assert model.edm_config.nu == (5.0 if name == "t" else None)
    pair = open_pair(store).isel(time=[1, 2])
    kw = dict(members=2, seed=3, steps=2, batch_size=1, patch=8, overlap=2)
    whole = downscale(pair, str(path), chunks={"y": 16, "x": 16}, **kw).compute(scheduler="sync")
    tiles = downscale(pair, str(path), chunks={"y": 8, "x": 8, "time": 1}, **kw)
    tiles = tiles.compute(scheduler="sync")
    for var in whole.data_vars:
        np.testing.assert_array_equal(whole[var].values, tiles[var].values)
        assert np.isfinite(whole[var].values).all()
    assert not np.allclose(whole.t2m.values[0], whole.t2m.values[1])
    # whole-domain downscale is the model's own sample (its nu, its zero mean) per member
    one = downscale(pair.isel(time=[0]), str(path), members=2, seed=3, steps=2, batch_size=1)
    one = one.compute(scheduler="sync")
    codec = model.codec
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields])
    sources = sources.isel(time=[0]).compute()
    x = torch.from_numpy(codec.encode_inputs(sources))
    for m in range(2):
        alone = model.sample(
            x,
            generators=[patch_generator(3, sources.time.values[0], m, (0, 0))],
            sampler=SamplerConfig(num_steps=2),
            offsets=torch.zeros(1, 2, dtype=torch.long),
        )
        decoded = codec.decode_targets(alone, sources)
        for var in codec.targets:
            # up to float32 rounding, grown by the untrained 2-step trajectory to ~1e-5 of the
            # field's range (a default Gaussian SongUNet model differs as much: 0.05 K of 4000)
            want = decoded[var].values
            np.testing.assert_allclose(one[var].values[m], want, atol=1e-4 * np.abs(want).max())
    refused = pytest.raises(ValueError, match="dpmpp_2m_sde")
    with refused if name == "t" else contextlib.nullcontext():
        downscale(pair, str(path), sampler="dpmpp_2m_sde", **kw).compute(scheduler="sync")


@pytest.mark.parametrize(
    ("task", "edm", "sampler", "need"),
    [
        ("regression", {"objective": "direct"}, {}, "no regression stage"),
        ("diffusion", {"nu": 5.0}, {"solver": "dpmpp_2m_sde"}, "no SDE form"),
    ],
)
def test_training_configs_that_cannot_work_are_refused_in_one_line(task, edm, sampler, need):
    data = tiny_config("x.zarr", "out", task=task, regression_checkpoint="r.st")
    if task == "regression":
        del data["training"]["regression_checkpoint"]
    data["edm"], data["sampler"] = edm, sampler
    with pytest.raises(ConfigError, match=need) as info:
        from_dict(TrainRunConfig, data)
    assert "\n" not in str(info.value)
