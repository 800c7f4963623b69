"""The synthetic dataset: deterministic, lazy, physically plausible, canonical."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import synthetic_dataset, validate
from corrdiff_xr.data.sources.synthetic import SHARED, gaussian_random_field
from corrdiff_xr.testing import raise_if_dask_computes


def _radial_power(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = field.shape
    power = np.abs(np.fft.fft2(field)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(ny) * ny, np.fft.fftfreq(nx) * nx, indexing="ij"))
    kbin = np.rint(k).astype(int)
    sums = np.bincount(kbin.ravel(), power.ravel())
    counts = np.bincount(kbin.ravel())
    ks = np.arange(sums.size)
    return ks, sums / np.maximum(counts, 1)


@pytest.mark.parametrize("beta", [2.0, 3.5])
def test_random_field_spectrum_falls_with_the_requested_slope(beta):
    rng = np.random.default_rng(0)
    power = np.mean(
        [_radial_power(gaussian_random_field((128, 128), beta, rng))[1] for _ in range(4)],
        axis=0,
    )
    ks = np.arange(power.size)
    band = (ks >= 3) & (ks <= 40)
    slope = np.polyfit(np.log(ks[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.25)


def test_random_field_has_zero_mean_and_unit_variance():
    f = gaussian_random_field((64, 48), 3.0, np.random.default_rng(1))
    assert abs(f.mean()) < 1e-10
    assert f.std() == pytest.approx(1.0)


def test_building_the_dataset_computes_nothing_and_every_variable_is_dask():
    with raise_if_dask_computes():
        ds = synthetic_dataset(ny=512, nx=512, nt=2_000)  # ~20 GB if it were real
    assert all(isinstance(v.data, da.Array) for v in ds.data_vars.values())
    assert ds.t2m.chunks[0][0] == 1


def test_same_seed_gives_the_same_data_whatever_the_chunking():
    a = synthetic_dataset(ny=32, nx=32, nt=5, seed=7, chunks={"time": 1}).compute()
    b = synthetic_dataset(ny=32, nx=32, nt=5, seed=7, chunks={"time": 3, "y": 16, "x": 8}).compute()
    xr.testing.assert_identical(a, b)


def test_a_time_step_depends_only_on_its_own_time():
    a = synthetic_dataset(ny=16, nx=16, nt=6, seed=2, start="2021-03-01T00:00")
    b = synthetic_dataset(ny=16, nx=16, nt=2, seed=2, start="2021-03-01T04:00")
    xr.testing.assert_identical(a.isel(time=slice(4, 6)).compute(), b.compute())


def test_different_seeds_give_different_fields():
    a = synthetic_dataset(ny=16, nx=16, nt=2, seed=0).compute()
    b = synthetic_dataset(ny=16, nx=16, nt=2, seed=1).compute()
    for name in ("t2m", "u10", "orography", "msl"):
        assert not np.allclose(a[name], b[name]), name


def test_coarse_inputs_are_block_means_of_the_fine_targets(tiny_synthetic):
    ds = tiny_synthetic.compute()
    for fine, coarse in SHARED.items():
        expected = ds[fine].coarsen(y=4, x=4).mean().values
        np.testing.assert_allclose(ds[coarse].values, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.lat_coarse, ds.lat.coarsen(y=4, x=4).mean(), atol=1e-12)


def test_precipitation_is_non_negative_intermittent_and_heavy_tailed():
    tp = synthetic_dataset(ny=64, nx=64, nt=6, seed=5).tp.values.ravel()
    assert tp.min() >= 0
    wet = tp[tp > 0]
    assert 0.05 < wet.size / tp.size < 0.6
    kurtosis = np.mean((wet - wet.mean()) ** 4) / wet.var() ** 2
    assert kurtosis > 6  # a Gaussian has 3


def test_temperature_falls_with_altitude_near_the_standard_lapse_rate():
    ds = synthetic_dataset(ny=64, nx=64, nt=4, seed=4).compute()
    land = ds.lsm.values > 0
    t_mean = ds.t2m.mean("time").values[land]
    slope = np.polyfit(ds.orography.values[land], t_mean, 1)[0]
    assert -9e-3 < slope < -4e-3


def test_land_sea_mask_marks_the_ground_above_sea_level(tiny_synthetic):
    ds = tiny_synthetic[["orography", "lsm"]].compute()
    assert set(np.unique(ds.lsm.values)) <= {0.0, 1.0}
    assert (ds.orography.values[ds.lsm.values == 0] == 0).all()
    assert (ds.orography.values >= 0).all()


@pytest.mark.parametrize("grid", ["latlon", "projected"])
def test_both_grid_kinds_pass_validation_with_cf_attributes(grid):
    ds = synthetic_dataset(ny=16, nx=24, nt=2, grid=grid)
    validate(ds)
    for name, var in ds.data_vars.items():
        assert var.attrs["units"] and var.attrs["long_name"], name
    assert ds.time.dtype == np.dtype("datetime64[ns]")


def test_grid_sizes_must_be_multiples_of_the_factor():
    with pytest.raises(ValueError, match="nx=30"):
        synthetic_dataset(ny=32, nx=30, factor=4)
