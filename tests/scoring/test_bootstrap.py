"""Tests for the block bootstrap: resample structure and coverage at the nominal rate."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr import scoring
from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.scoring import bootstrap


def test_block_indices_are_runs_of_consecutive_times_wrapping_round():
    idx = bootstrap.block_indices(10, block_length=4, resamples=50, seed=3)
    assert idx.shape == (50, 10)
    runs = idx.reshape(50, -1)[:, :8].reshape(50, 2, 4)  # two whole blocks per resample
    assert np.all(np.diff(runs, axis=-1) % 10 == 1)
    assert np.array_equal(idx, bootstrap.block_indices(10, block_length=4, resamples=50, seed=3))
    assert not np.array_equal(idx, bootstrap.block_indices(10, block_length=4, resamples=50))
    with pytest.raises(ValueError, match="block_length and resamples >= 1"):
        bootstrap.block_indices(10, block_length=0, resamples=5)


def ar1(rng, n, shape, phi):
    """Unit-variance AR(1) series along the first axis."""
    out = np.empty((n, *shape))
    out[0] = rng.normal(size=shape)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=shape)
    return out


def paired_crps(seed, n=240, phi=0.8):
    """Per-time CRPS of two deterministic forecasts with persistent, shared errors."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 3, 3))
    shared, own = ar1(rng, n, (3, 3), phi), ar1(rng, n, (3, 3), phi)
    dims = (TIME, Y, X)
    coords = {TIME: np.arange(n)}
    obs = xr.Dataset({"v": (dims, truth)}, coords=coords)
    a = obs + xr.Dataset({"v": (dims, shared)}, coords=coords)
    b = obs + xr.Dataset({"v": (dims, 1.2 * shared + 0.5 * own)}, coords=coords)
    return [scoring.crps(f, obs, dim=[Y, X])["v"] for f in (a, b)]


def test_block_bootstrap_interval_covers_the_true_difference_at_its_nominal_rate():
    # error sd 1 and sqrt(1.2^2 + 0.5^2) = 1.3; the CRPS of a Gaussian error is sd sqrt(2/pi)
    true_difference = (1.0 - 1.3) * np.sqrt(2 / np.pi)
    seeds, hits = 200, {24: 0, 1: 0}
    for seed in range(seeds):
        a, b = paired_crps(seed)
        for block_length in hits:
            bounds = bootstrap.difference_interval(
                a, b, block_length=block_length, resamples=400, confidence=0.9, seed=seed
            )
            lower, upper = bounds.sel(bound="lower"), bounds.sel(bound="upper")
            hits[block_length] += bool(lower <= true_difference <= upper)
    # 200 seeds: a 90 % interval's coverage has sd 0.021 around its true rate
    assert 0.80 <= hits[24] / seeds <= 0.96
    assert hits[1] / seeds < 0.70  # resampling single times ignores the persistence


def test_intervals_of_a_summary_table_bracket_its_time_mean():
    a, b = paired_crps(0)
    table = xr.concat([a, b], dim="forecast")
    bounds = bootstrap.interval(table, block_length=5, resamples=300)
    mean = table.mean(TIME)
    assert bool((bounds.sel(bound="lower") < mean).all())
    assert bool((mean < bounds.sel(bound="upper")).all())
    same = bootstrap.difference_interval(a, a, block_length=5, resamples=100)
    assert np.all(same.values == 0.0)
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        bootstrap.interval(a, confidence=95)


def test_score_command_compares_two_forecasts_with_the_interval_of_their_difference(
    tmp_path, capsys
):
    from test_metrics import make_ensemble

    from corrdiff_xr import cli

    fc, truth = make_ensemble(members=3, nt=12)
    worse = fc + xr.DataArray(np.linspace(0.2, 0.6, 12), dims=TIME)  # a growing bias
    for name, ds in (("a", fc), ("b", worse), ("truth", truth)):
        ds.to_zarr(tmp_path / f"{name}.zarr")
    out = tmp_path / "scores.nc"
    argv = ["score", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]
    argv += ["--truth", str(tmp_path / "truth.zarr"), "-o", str(out), "--metrics", "crps,rmse"]
    assert cli.main([*argv, "--confidence", "0.9", "--block-length", "3"]) == 0
    got = xr.open_dataset(out)
    assert got["forecast"].values.tolist() == ["prediction", "compared"]
    assert got.attrs["block_length"] == 3 and got.attrs["confidence"] == 0.9
    kw = {"block_length": 3, "resamples": 1000, "confidence": 0.9}
    tables = [scoring.summary(f, truth, metrics=["crps", "rmse"]).compute() for f in (fc, worse)]
    want = bootstrap.interval(tables[1]["score"], **kw)
    got_b = got["interval"].sel(forecast="compared").transpose(*want.dims)
    np.testing.assert_allclose(got_b.values, want.values, rtol=1e-6)
    diff = got["difference_interval"].sel(forecast="compared", bound="lower")
    assert bool((diff > 0).all())  # the biased forecast is worse, beyond the noise
    want = bootstrap.difference_interval(tables[1]["score"], tables[0]["score"], **kw)
    np.testing.assert_allclose(
        got["difference_interval"].sel(forecast="compared").transpose(*want.dims).values,
        want.values,
        rtol=1e-6,
    )
    printed = capsys.readouterr().out
    assert "90 % interval of the difference with prediction" in printed and "compared" in printed
