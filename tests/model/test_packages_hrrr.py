"""The ERA5-HRRR package (Earth2Studio 0.19 ``CorrDiffEra5Hrrr``, ``x_pred/`` layout) opens as
a direct rectified-flow model whose numbers are those of the pieces Earth2Studio's wrapper runs.

The wrapper itself cannot be built here: its module imports ``natten`` (not installed) and
PhysicsNeMo's ``RectifiedFlowNoiseScheduler`` (added in 2.3.0; 2.2.2 is installed), so its
``load_model`` raises ``OptionalDependencyError``. What it runs is compared instead:
PhysicsNeMo's ``DiT.from_checkpoint`` of the package's file behind ``ConcatConditionWrapper``
with its ``cond_concat`` / ``cond_vec`` TensorDict, Earth2Studio's own ``_scalar_conditions``
(called on a stand-in object: it reads three attributes), and PhysicsNeMo's ``sample`` with the
x-prediction velocity and shifted time grid of ``CorrDiffEra5Hrrr._sample_one`` (the time grid
``linspace(t_max, 0, N + 1)`` is ``RectifiedFlowNoiseScheduler.timesteps`` as documented).
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from package_fixtures_dit import HRRR_ERA5, HRRR_FLAGS, HRRR_OUTPUTS, write_hrrr_package
from physicsnemo_ref import physicsnemo, requires_physicsnemo

from corrdiff_xr import sampling
from corrdiff_xr.features import FEATURES
from corrdiff_xr.model.packages import PackageError, open_package

pytestmark = requires_physicsnemo

ATOL = 1e-5


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("hrrr")
    pieces = write_hrrr_package(root, seed=3)
    return root, pieces, open_package(root)


def _conditions(pieces, n=2, seed=0):
    """Normalised ERA5 on the window, cos zenith, day-of-year sin/cos (as constant fields)."""
    g = torch.Generator().manual_seed(seed)
    shape = pieces["hrrr_lat"].shape
    era5 = torch.randn(n, len(HRRR_ERA5), *shape, generator=g)
    zenith = torch.rand(n, 1, *shape, generator=g)
    sin_cos = torch.randn(n, 2, generator=g)
    inv = torch.from_numpy(pieces["invariants"])[None].expand(n, -1, -1, -1)
    return era5, zenith, inv, sin_cos


def _earth2studio_network(root):
    assert physicsnemo() is not None
    from physicsnemo.diffusion.utils.model_wrappers import ConcatConditionWrapper
    from physicsnemo.models.dit import DiT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConcatConditionWrapper(DiT.from_checkpoint(str(root / "x_pred" / "model.mdlus")))


def _theirs(network, era5, zenith, inv, sin_cos):
    """The x0-predictor ``net(x_t, t)`` as ``CorrDiffEra5Hrrr`` calls it (time_scale 999)."""
    from tensordict import TensorDict

    n = era5.shape[0]
    vec = torch.cat([sin_cos, torch.ones(n, len(HRRR_FLAGS))], dim=1)  # flags: present
    cond = TensorDict(
        {"cond_concat": torch.cat([era5, zenith, inv], 1), "cond_vec": vec}, batch_size=[n]
    )
    return lambda x_t, t: network(x_t, t * 999.0, condition=cond)


def _ours(model, era5, zenith, inv, sin_cos):
    """Our denoiser ``D(x; sigma)`` with the codec's channel order."""
    fields = sin_cos[:, :, None, None].expand(-1, -1, *era5.shape[-2:])
    cond = torch.cat([era5, inv, zenith, fields], 1)  # inputs | static | features
    return lambda x, sigma: model.residual(x, sigma, condition=cond)


def test_the_package_opens_as_a_direct_rectified_flow_model(package):
    root, pieces, pkg = package
    model, codec = pkg.model, pkg.model.codec
    assert pkg.layout == "hrrr" and pkg.inference_mode == "diffusion" and pkg.members == 2
    assert codec.inputs == ("u10m_coarse", "v10m_coarse", "t2m_coarse", "tcwv", "msl")
    assert codec.targets == HRRR_OUTPUTS and codec.static == ("invariant_0", "invariant_1")
    assert codec.features == ("cos_zenith", "day_of_year_sin", "day_of_year_cos")
    assert codec.stats["t2m_coarse"] == pytest.approx(
        tuple(pieces["stats"]["era5"]["t2m"].values())
    )
    edm = model.edm_config
    assert (edm.objective, edm.flow, edm.flow_shift) == ("direct", "x", 32.0)
    assert pkg.sampler.solver == "heun" and pkg.sampler.num_steps == 8
    assert pkg.sampler.sigma_max == pytest.approx(99.0)  # t_max 0.99 -> sigma 0.99 / 0.01
    assert np.all(np.diff(pkg.input_grid["lat"].values) > 0)
    assert pkg.output_grid["x"].values[0] == pytest.approx(-2697520.1425 + 900 * 3000.0)
    np.testing.assert_array_equal(pkg.output_grid["lat"].values, pieces["hrrr_lat"])
    np.testing.assert_array_equal(pkg.invariants["invariant_1"].values, pieces["invariants"][1])


def test_the_denoiser_equals_earth2studios_network_call(package):
    """``D(x; sigma)`` = the x0 the PhysicsNeMo network predicts at ``x_t = x / (1 + sigma)``,
    ``t = sigma / (1 + sigma)``, with conditions in Earth2Studio's order and vector."""
    root, pieces, pkg = package
    conds = _conditions(pieces)
    theirs = _theirs(_earth2studio_network(root), *conds)
    ours = _ours(pkg.model, *conds)
    g = torch.Generator().manual_seed(1)
    for sigma in (0.05, 1.0, 99.0 * 32):
        x = torch.randn(2, len(HRRR_OUTPUTS), *pieces["hrrr_lat"].shape, generator=g) * sigma
        t = torch.full((2,), sigma / (1 + sigma))
        with torch.no_grad():
            want = theirs(x / (1 + sigma), t)
            got = ours(x, torch.full((2,), sigma))
        assert want.abs().mean() > 0.1
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


def _their_sample(flow_net, latents, *, steps, shift, solver, t_max=0.99, clip=0.05):
    """``CorrDiffEra5Hrrr._sample_one``'s flow branch with PhysicsNeMo 2.2.2's ``sample``."""
    from physicsnemo.diffusion.samplers import sample

    t = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)
    t = (shift * t / (1 + (shift - 1) * t)).float()

    def flow(x, tt):
        return (x - flow_net(x, tt)) / torch.clamp(tt, min=clip).view(-1, 1, 1, 1)

    return sample(flow, t[0] * latents, None, num_steps=steps, solver=solver, time_steps=t), t


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampling_on_earth2studios_time_grid(package, solver):
    """An Euler step in ``x_t`` over ``t`` is the same step in ``x = x_t / (1 - t)`` over
    ``sigma = t / (1 - t)``, so Euler samples agree; Heun's second slope is averaged in a
    different variable, so Heun samples differ by the solvers' error (reported, bounded)."""
    root, pieces, pkg = package
    conds = _conditions(pieces, seed=4)
    latents = torch.randn(2, len(HRRR_OUTPUTS), *pieces["hrrr_lat"].shape)
    with torch.no_grad():
        want, t = _their_sample(
            _theirs(_earth2studio_network(root), *conds),
            latents,
            steps=6,
            shift=32.0,
            solver=solver,
        )
        sigmas = (t.double() / (1 - t.double())).float()
        got = getattr(sampling, solver)(_ours(pkg.model, *conds), latents * sigmas[0], sigmas)
    assert want.abs().mean() > 0.1
    if solver == "euler":
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    else:
        assert (got - want).abs().max() < 1e-2 * want.abs().max()  # measured 2e-4 (6 steps)


def test_day_of_year_features_equal_earth2studios_scalar_conditions():
    from earth2studio.models.dx.corrdiff_era5_hrrr import CorrDiffEra5Hrrr

    stand_in = SimpleNamespace(day_of_year=True, presence_flags=(), invariants=torch.zeros(1))
    times = ["2024-02-29T12:00", "2023-12-31T23:00", "2025-01-01T00:00", "2026-07-04T06:30"]
    lat, lon = np.zeros((2, 3)), np.zeros((2, 3))
    for text in times:
        when = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        want = CorrDiffEra5Hrrr._scalar_conditions(stand_in, when).numpy()
        t = np.array([text], dtype="datetime64[ns]")
        got = [FEATURES[f"day_of_year_{k}"].compute(t, lat, lon) for k in ("sin", "cos")]
        np.testing.assert_allclose([g[0, 1, 2] for g in got], want, atol=1e-6)


def test_the_conditioning_equals_earth2studios_preprocessing(package):
    """An ARCO-ERA5-like archive paired with the package and encoded by its codec gives the
    channels ``CorrDiffEra5Hrrr.preprocess_input`` builds: its own ``_interpolate`` (bilinear
    onto the HRRR points) then its statistics; PhysicsNeMo's cosine zenith; the invariants."""
    import pandas as pd
    import xarray as xr
    from earth2studio.models.dx.corrdiff_era5_hrrr import CorrDiffEra5Hrrr
    from package_fixtures import era5_archive
    from physicsnemo.utils.zenith_angle import cos_zenith_angle

    _, pieces, pkg = package
    pair = pkg.pair(era5_archive(times=1).isel(level=0), regrid="bilinear")
    ours = pkg.model.codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]))[0]
    era5 = np.stack([pair.coarse[n].isel(time=0).values for n in pkg.input_names])
    stand_in = SimpleNamespace(
        _lat_descending=True,  # the package's footprint; the archive is put on it ascending
        lat_input_grid=torch.from_numpy(pieces["era5_lat"]).float(),
        lon_input_grid=torch.from_numpy(pieces["era5_lon"]).float(),
        lat_output_grid=torch.from_numpy(pieces["hrrr_lat"]),
        lon_output_grid=torch.from_numpy(pieces["hrrr_lon"]),
    )
    fields = CorrDiffEra5Hrrr._interpolate(stand_in, torch.from_numpy(era5[:, ::-1].copy()))
    stats = pieces["stats"]["era5"]
    mean, std = (np.array([stats[v][k] for v in HRRR_ERA5])[:, None, None] for k in ("mean", "std"))
    n = len(HRRR_ERA5)
    np.testing.assert_allclose(ours[:n], (fields.numpy() - mean) / std, atol=1e-4)
    when = pd.Timestamp(pair.inputs_on_fine.time.values[0]).to_pydatetime()
    zenith = cos_zenith_angle(
        when.replace(tzinfo=timezone.utc), pieces["hrrr_lon"], pieces["hrrr_lat"]
    )
    np.testing.assert_allclose(ours[n + 2], zenith, atol=1e-6)
    np.testing.assert_array_equal(ours[n : n + 2], pieces["invariants"])


def test_the_package_model_saves_loads_and_downscales_an_archive(package, tmp_path):
    """The frame and the DiT's import options live in the checkpoint header: a saved package
    model loads with the same numbers; it downscales an archive end to end (features
    computed at encode time)."""
    from package_fixtures import era5_archive

    from corrdiff_xr.inference import downscale
    from corrdiff_xr.model import CorrDiff

    _, pieces, pkg = package
    back = CorrDiff.load(pkg.model.save(tmp_path / "hrrr.pt"))
    era5, zenith, inv, sin_cos = _conditions(pieces, n=1, seed=2)
    x = torch.cat([era5, inv, zenith, sin_cos[:, :, None, None].expand(-1, -1, 16, 24)], 1)
    with torch.no_grad():
        want = pkg.model.sample(x, generators=sampling.make_generators([7]))
        got = back.sample(x, generators=sampling.make_generators([7]))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    out = downscale(pkg.pair(era5_archive(times=2), regrid="bilinear"), back, steps=2).compute()
    assert set(out.data_vars) == set(HRRR_OUTPUTS) and out.sizes["time"] == 2
    assert all(np.isfinite(out[v].values).all() for v in HRRR_OUTPUTS)


def _edit(root, change):
    path = root / "x_pred" / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_what_does_not_fit_is_refused_in_one_line(tmp_path):
    cases = {
        "flags": (lambda m: m["scalar_conditions"].update(presence_flags=[]), "condition_dim"),
        "kind": (lambda m: m["network"].update(kind="ddpm"), "network.kind='ddpm'"),
        "window": (lambda m: m["hrrr_window"].update(rows=[500, 520]), "hrrr_window"),
        "checkpoint": (lambda m: m.update(checkpoint="missing.mdlus"), "missing.mdlus"),
        "steps": (lambda m: m["sampler"].update(num_steps="many"), "sampler.num_steps"),
    }
    for name, (change, needle) in cases.items():
        root = tmp_path / name
        write_hrrr_package(root)
        _edit(root, change)
        with pytest.raises(PackageError) as excinfo:
            open_package(root)
        assert needle in str(excinfo.value) and "\n" not in str(excinfo.value), excinfo.value
