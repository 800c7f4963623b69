"""Parity with Earth2Studio 0.19 on the same packages: same inputs -> same means and members.

Fixture packages (tests/package_fixtures.py: PhysicsNeMo 2.2.2 networks with random weights,
saved by PhysicsNeMo, in exactly the published layouts) are loaded by Earth2Studio's
``CorrDiff`` / ``CorrDiffTaiwan`` on the CPU and by :func:`open_package`. Both get the same
physical inputs on the package's input grid. Ours interpolates them with our regrid
(:mod:`corrdiff_xr.data.regrid`) and encodes them with the package's codec; outputs are
compared in normalised units (a float32 output of 55000 has a rounding step of 0.004, so
physical units would compare rounding, not models), to 1e-5. Members: Earth2Studio seeds
member ``i`` with ``seed + i`` (generic) or with seeds drawn from the package seed (Taiwan);
the same seeds through :func:`corrdiff_xr.sampling.make_generators` give the same latents, so
the members must agree too. The user's road (an archive paired by ``Package.pair``, then
``downscale(output="mean")``) is compared for the mean.

Earth2Studio is a test dependency: when it cannot be imported these tests fail, never skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from package_fixtures import write_generic_package, write_taiwan_package
from physicsnemo_ref import physicsnemo

from corrdiff_xr.data.regrid import regrid
from corrdiff_xr.model.packages import LAYOUTS, open_package
from corrdiff_xr.sampling import make_generators

#: in units of each output's std (a float32 value of ~280 K rounds at ~3e-5). Members start
#: at sigma 800: with Earth2Studio's default 18 steps they agree to 1e-5; with 6 large steps
#: PhysicsNeMo's float64 sigmas and its float32 operation order differ from ours by up to 2e-5
ATOL = 1e-5


def _earth2studio():
    if physicsnemo() is None:  # registers the torchvision schemas Earth2Studio's import needs
        pytest.fail("PhysicsNeMo cannot be imported, so Earth2Studio cannot either")
    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiff, CorrDiffTaiwan

    return Package, CorrDiff, CorrDiffTaiwan


@pytest.fixture(scope="module")
def e2s(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # any cache Earth2Studio keeps stays in tmp
        mp.setenv("EARTH2STUDIO_CACHE", str(tmp_path_factory.mktemp("e2s_cache")))
        yield _earth2studio()


def _coarse_inputs(package, values: np.ndarray) -> xr.Dataset:
    """``values`` (C, lat, lon) on the package's 1-D input grid, in the canonical layout with
    the package's fine grid (float64, so our regrid interpolates in float64 as E2S does)."""
    grid, fine = package.input_grid, package.output_grid
    coarse = {
        name: (("time", "y_coarse", "x_coarse"), values[None, i].astype(np.float64))
        for i, name in enumerate(package.inputs)
    }
    ds = xr.Dataset(
        coarse,
        coords={
            "time": np.array(["2024-01-01"], dtype="datetime64[ns]"),
            "y_coarse": ("y_coarse", grid["lat"].values, {"standard_name": "latitude"}),
            "x_coarse": ("x_coarse", grid["lon"].values, {"standard_name": "longitude"}),
            **fine.coords,
        },
    )
    on_fine = regrid(ds).compute()
    for name in package.inputs:
        on_fine[name].attrs["units"] = package.model.codec.attrs.get(name, {}).get("units", "1")
    return xr.merge([on_fine, package.invariants])


def _encoded(package, values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(package.model.codec.encode_inputs(_coarse_inputs(package, values)))


def _physical_inputs(package, rng) -> np.ndarray:
    codec, grid = package.model.codec, package.input_grid
    shape = (grid.sizes["lat"], grid.sizes["lon"])
    rows = [
        codec.stats[n][0] + codec.stats[n][1] * rng.standard_normal(shape) for n in codec.inputs
    ]
    return np.stack(rows).astype(np.float32)


def _normalised(package, out: torch.Tensor) -> torch.Tensor:
    mean, std = (
        torch.tensor([package.model.codec.stats[n][k] for n in package.outputs]).view(-1, 1, 1)
        for k in (0, 1)
    )
    return ((out.double() - mean) / std).float()


@pytest.fixture(scope="module")
def generic_dir(tmp_path_factory):
    # 2-D (curvilinear) output grid: Earth2Studio 0.19 accepts a 1-D one when loading but its
    # interpolation (latlon_interpolation_regular) then fails, wanting 2-D output lat/lon
    # 18 steps, Earth2Studio's default: a few large steps would amplify float32 rounding
    return write_generic_package(
        tmp_path_factory.mktemp("generic"),
        grid=(32, 32),
        curvilinear=True,
        metadata={"number_of_steps": 18},
    )


def test_generic_regression_mean_and_members_equal_earth2studio(e2s, generic_dir):
    Package, CorrDiff, _ = e2s
    ref = CorrDiff.load_model(Package(str(generic_dir)), device="cpu")
    ours = open_package(generic_dir)
    x = _physical_inputs(ours, np.random.default_rng(3))
    ref.inference_mode, ref.number_of_samples = "regression", 1
    ref_mean = ref._forward(torch.from_numpy(x))[0]
    ref.inference_mode, ref.number_of_samples = "both", ours.members
    ref_members = ref._forward(torch.from_numpy(x))

    encoded = _encoded(ours, x)
    with torch.no_grad():
        mean = ours.model.predict_mean(encoded)
        seeds = LAYOUTS["generic"].member_seeds(ours.seed, ours.members)
        members = ours.model.sample(
            encoded.expand(ours.members, -1, -1, -1),
            generators=make_generators(seeds),
            mean=mean.expand(ours.members, -1, -1, -1),
        )
    assert seeds == [ours.seed, ours.seed + 1]
    assert mean.abs().mean() > 0.1 and (members - mean).abs().mean() > 0.1  # not trivial
    torch.testing.assert_close(mean[0], _normalised(ours, ref_mean), atol=ATOL, rtol=0)
    torch.testing.assert_close(members, _normalised(ours, ref_members), atol=ATOL, rtol=0)


def test_generic_mean_through_pair_and_downscale_equals_earth2studio(e2s, generic_dir):
    """The user's road: an archive in the package's names on its input grid, paired by
    :meth:`Package.pair` and downscaled lazily (``output="mean"``)."""
    from corrdiff_xr.data.names import units_of
    from corrdiff_xr.inference.downscaling import downscale

    Package, CorrDiff, _ = e2s
    ref = CorrDiff.load_model(Package(str(generic_dir)), device="cpu")
    ours = open_package(generic_dir)
    x = _physical_inputs(ours, np.random.default_rng(4))
    ref.inference_mode, ref.number_of_samples = "regression", 1
    ref_mean = ref._forward(torch.from_numpy(x))[0]
    grid = ours.input_grid
    archive = xr.Dataset(
        {
            name: (("time", "lat", "lon"), x[None, i], {"units": units_of(name)})
            for i, name in enumerate(ours.input_names.values())
        },
        coords={
            "time": np.array(["2024-01-01"], dtype="datetime64[ns]"),
            "lat": grid["lat"].values,
            "lon": grid["lon"].values,
        },
    )
    out = downscale(ours.pair(archive), ours, output="mean").compute()
    got = torch.from_numpy(np.stack([out[name].values[0] for name in ours.outputs]))
    np.testing.assert_array_equal(out["lat"], ours.output_grid["lat"])
    torch.testing.assert_close(
        _normalised(ours, got), _normalised(ours, ref_mean), atol=ATOL, rtol=0
    )


def test_taiwan_regression_mean_and_members_equal_earth2studio(e2s, tmp_path):
    Package, _, CorrDiffTaiwan = e2s
    path = write_taiwan_package(tmp_path)
    ours = open_package(path)  # the zip itself; Earth2Studio unpacks it beside the zip
    ref = CorrDiffTaiwan.load_model(Package(str(tmp_path)), device="cpu")
    ref.number_of_samples, ref.seed = 2, 20231124
    seen = {}
    regression = ref.unet_regression

    def recording(*args, **kwargs):  # Earth2Studio's own regression, its result kept
        seen["mean"] = regression(*args, **kwargs)
        return seen["mean"]

    ref.unet_regression = recording
    x = _physical_inputs(ours, np.random.default_rng(5))
    ref_members = ref._forward(torch.from_numpy(x))
    ref_mean = seen["mean"][0]  # normalised already

    encoded = _encoded(ours, x)
    seeds = LAYOUTS["taiwan"].member_seeds(ref.seed, 2)
    with torch.no_grad():
        mean = ours.model.predict_mean(encoded)
        members = ours.model.sample(
            encoded.expand(2, -1, -1, -1),
            generators=make_generators(seeds),
            mean=mean.expand(2, -1, -1, -1),
        )
    assert mean.abs().mean() > 0.1 and (members - mean).abs().mean() > 0.1
    torch.testing.assert_close(mean[0], ref_mean.float(), atol=ATOL, rtol=0)
    torch.testing.assert_close(members, _normalised(ours, ref_members), atol=ATOL, rtol=0)
