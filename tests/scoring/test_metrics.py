"""Tests for corrdiff_xr.scoring: known answers, brute force, calibration, laziness, weights."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import xarray as xr

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr import scoring
from corrdiff_xr.dims import LAT, LON, MEMBER, TIME, X, Y
from corrdiff_xr.scoring import kernels
from corrdiff_xr.testing import raise_if_dask_computes


def make_ensemble(*, members=4, nt=3, ny=8, nx=10, seed=0, spread=1.0):
    """Forecast (member, time, y, x) and truth (time, y, x) with units and 2-D lat/lon."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(nt, ny, nx))
    coords = {
        TIME: np.array("2024-01-01", dtype="datetime64[ns]")
        + np.arange(nt) * np.timedelta64(1, "h"),
        Y: (Y, np.arange(ny) * 2000.0, {"units": "m"}),
        X: (X, np.arange(nx) * 2000.0, {"units": "m"}),
    }
    lat = np.linspace(30, 60, ny)[:, None] + np.zeros((1, nx))
    coords[LAT] = ((Y, X), lat)
    coords[LON] = ((Y, X), np.zeros((ny, nx)) + np.linspace(0, 10, nx))

    def field(shape):
        return centre + spread * rng.normal(size=shape)

    fc = xr.Dataset(
        {
            "t2m": ((MEMBER, TIME, Y, X), 280 + field((members, nt, ny, nx)), {"units": "K"}),
            "tp": (
                (MEMBER, TIME, Y, X),
                np.maximum(field((members, nt, ny, nx)), 0.0),
                {"units": "mm"},
            ),
        },
        coords=coords,
    )
    truth = xr.Dataset(
        {
            "t2m": ((TIME, Y, X), 280 + field((nt, ny, nx)), {"units": "K"}),
            "tp": ((TIME, Y, X), np.maximum(field((nt, ny, nx)), 0.0), {"units": "mm"}),
        },
        coords=coords,
    )
    return fc, truth


def test_properscoring_uses_its_numba_gufunc():
    from properscoring import _gufuncs

    assert kernels.properscoring_uses_numba()
    assert properscoring._crps._crps_ensemble_core is _gufuncs._crps_ensemble_gufunc


def test_pointwise_crps_matches_properscoring_and_brute_force():
    fc, truth = make_ensemble()
    got = scoring.crps(fc, truth, dim=[])
    for name in ("t2m", "tp"):
        obs = truth[name].values
        members = np.moveaxis(fc[name].values, 0, -1)
        expected = properscoring.crps_ensemble(obs, members)
        np.testing.assert_allclose(got[name].transpose(TIME, Y, X).values, expected, rtol=1e-12)
        np.testing.assert_allclose(expected, kernels.crps_pairwise(obs, members), rtol=1e-10)


def test_dataarrays_in_give_dataarrays_out():
    fc, truth = make_ensemble()
    got = scoring.crps(fc["tp"], truth["tp"])
    assert isinstance(got, xr.DataArray)
    assert float(got) == pytest.approx(float(scoring.crps(fc, truth)["tp"]))
    assert got.attrs["units"] == "mm"


def test_fair_crps_matches_the_pairwise_m_minus_one_formula():
    fc, truth = make_ensemble(members=3)
    got = scoring.crps(fc, truth, dim=[], estimator="fair")["t2m"].transpose(TIME, Y, X)
    members = np.moveaxis(fc["t2m"].values, 0, -1)
    expected = kernels.crps_pairwise(truth["t2m"].values, members, fair=True)
    np.testing.assert_allclose(got.values, expected, rtol=1e-10)


def test_fair_crps_is_lower_by_the_pair_term_over_m_squared_m_minus_one():
    m = 3
    fc, truth = make_ensemble(members=m)
    standard = scoring.crps(fc, truth, dim=[])["t2m"]
    fair = scoring.crps(fc, truth, dim=[], estimator="fair")["t2m"]
    x = fc["t2m"]
    pair_sum = abs(x - x.rename({MEMBER: "other"})).sum([MEMBER, "other"])
    xr.testing.assert_allclose(standard - fair, pair_sum / (2 * m**2 * (m - 1)))
    assert float((standard - fair).min()) > 0


def test_one_member_ensemble_crps_equals_mae():
    fc, truth = make_ensemble(members=1)
    got = scoring.crps(fc, truth)
    want = scoring.mae(fc, truth)
    xr.testing.assert_allclose(got, want)
    expected = float(abs(fc["t2m"].isel(member=0) - truth["t2m"]).mean())
    assert float(got["t2m"]) == pytest.approx(expected)


def test_mae_and_rmse_score_the_ensemble_mean():
    fc, truth = make_ensemble()
    err = fc["tp"].mean(MEMBER) - truth["tp"]
    assert float(scoring.mae(fc, truth)["tp"]) == pytest.approx(float(abs(err).mean()))
    assert float(scoring.rmse(fc, truth)["tp"]) == pytest.approx(float(np.sqrt((err**2).mean())))
    per_time = scoring.rmse(fc, truth, dim=[Y, X])["tp"]
    assert per_time.dims == (TIME,)
    np.testing.assert_allclose(per_time, np.sqrt((err**2).mean([Y, X])))


def test_spread_skill_is_one_for_a_calibrated_ensemble():
    # truth and members drawn from the same distribution at every point
    fc, truth = make_ensemble(members=5, nt=40, ny=25, nx=25, seed=1)
    ratio = scoring.spread_skill(fc, truth)
    assert float(ratio["t2m"]) == pytest.approx(1.0, abs=0.04)
    uncorrected = float(scoring.spread(fc)["t2m"] / scoring.rmse(fc, truth)["t2m"])
    assert uncorrected == pytest.approx(np.sqrt(5 / 6), abs=0.04)


def test_spread_skill_detects_an_underdispersed_ensemble():
    fc, truth = make_ensemble(members=5, nt=40, ny=25, nx=25, seed=2)
    centre = fc["t2m"].mean(MEMBER)
    narrow = fc.assign(t2m=centre + 0.5 * (fc["t2m"] - centre))
    assert float(scoring.spread_skill(narrow, truth)["t2m"]) < 0.7


def test_rank_histogram_is_flat_for_a_calibrated_ensemble():
    m = 4
    fc, truth = make_ensemble(members=m, nt=50, ny=20, nx=20, seed=3)
    hist = scoring.rank_histogram(fc, truth)["t2m"]
    assert hist.dims == ("rank",)
    assert hist["rank"].values.tolist() == list(range(m + 1))
    total = 50 * 20 * 20
    assert float(hist.sum()) == total
    np.testing.assert_allclose(hist.values, total / (m + 1), rtol=0.08)


def test_rank_histogram_breaks_ties_randomly_and_independently_of_chunks():
    fc, truth = make_ensemble(members=3, nt=20, ny=16, nx=16)
    zeros_fc = xr.zeros_like(fc["tp"]).to_dataset(name="tp")
    zeros_truth = xr.zeros_like(truth["tp"]).to_dataset(name="tp")
    hist = scoring.rank_histogram(zeros_fc, zeros_truth, normalize=True)["tp"]
    np.testing.assert_allclose(hist.values, 0.25, atol=0.03)  # all-tied: uniform over ranks
    chunked = scoring.rank_histogram(
        zeros_fc.chunk({TIME: 7, Y: 5, MEMBER: 1}), zeros_truth.chunk({TIME: 3}), normalize=True
    )["tp"]
    np.testing.assert_array_equal(chunked.values, hist.values)
    other_seed = scoring.rank_histogram(zeros_fc, zeros_truth, seed=1, normalize=True)["tp"]
    assert not np.array_equal(other_seed.values, hist.values)


def test_power_spectrum_sums_to_the_field_variance():
    _, truth = make_ensemble(ny=12, nx=16)
    spec = scoring.power_spectrum(truth, dim=[])["t2m"]
    dk = float(spec["wavenumber"][0])
    assert spec["wavenumber"].attrs["units"] == "cycles per km"
    assert dk == pytest.approx(1 / (12 * 2.0))  # coarser fundamental of a 2 km grid
    np.testing.assert_allclose(
        (spec * dk).sum("wavenumber").values, truth["t2m"].var([Y, X]).values, rtol=1e-10
    )


def test_power_spectrum_of_a_gappy_field_keeps_its_variance_and_an_empty_field_is_nan():
    _, truth = make_ensemble(nt=2, ny=12, nx=16)
    gappy = truth["t2m"].where(truth[X] > 4000.0)  # first two columns missing
    spec = scoring.power_spectrum(gappy, dim=[])
    dk = float(spec["wavenumber"][0])
    np.testing.assert_allclose((spec * dk).sum("wavenumber"), gappy.var([Y, X]), rtol=1e-10)
    empty = scoring.power_spectrum(xr.full_like(gappy, np.nan), dim=[])
    assert bool(empty.isnull().all())


def test_power_spectrum_peaks_at_a_plane_wave_wavenumber_in_cycles_per_pixel():
    n = 32
    xx = np.broadcast_to(np.arange(n), (n, n))
    wave = xr.DataArray(np.sin(2 * np.pi * 4 * xx / n), dims=(Y, X), name="w")
    spec = scoring.power_spectrum(wave)
    assert spec["wavenumber"].attrs["units"] == "cycles per pixel"
    assert float(spec["wavenumber"][int(np.argmax(spec.values))]) == pytest.approx(4 / n)
    assert float((spec * (1 / n)).sum()) == pytest.approx(0.5)


def test_power_spectrum_reads_spacing_from_degree_coordinates():
    n = 16
    field = xr.DataArray(
        np.random.default_rng(0).normal(size=(n, n)),
        dims=(Y, X),
        coords={
            Y: (Y, 60 + 0.01 * np.arange(n), {"units": "degrees_north"}),
            X: (X, 0.02 * np.arange(n), {"units": "degrees_east"}),
        },
        name="f",
    )
    spec = scoring.power_spectrum(field)
    dx_km = 0.02 * 111.195 * np.cos(np.deg2rad(60.075))  # longitude step shrinks with lat
    dy_km = 0.01 * 111.195
    assert spec["wavenumber"].attrs["units"] == "cycles per km"
    expected_dk = max(1 / (n * dx_km), 1 / (n * dy_km))
    assert float(spec["wavenumber"][0]) == pytest.approx(expected_dk, rel=1e-6)


def test_power_spectrum_keeps_members_and_averages_time_by_default():
    fc, _ = make_ensemble(members=3)
    spec = scoring.power_spectrum(fc)
    assert set(spec["t2m"].dims) == {MEMBER, "wavenumber"}
    explicit = scoring.power_spectrum(fc, spacing=2.0)
    xr.testing.assert_allclose(spec, explicit)


def test_scores_stay_lazy_and_match_eager_results_whatever_the_chunks():
    fc, truth = make_ensemble(members=4)
    lazy_fc = fc.chunk({MEMBER: 1, TIME: 1, Y: 4})  # member split: rechunked automatically
    lazy_truth = truth.chunk({TIME: 2})
    calls = {
        "crps": lambda f, t: scoring.crps(f, t),
        "fair": lambda f, t: scoring.crps(f, t, estimator="fair", dim=[Y, X]),
        "mae": lambda f, t: scoring.mae(f, t),
        "rmse": lambda f, t: scoring.rmse(f, t),
        "spread": lambda f, t: scoring.spread(f),
        "ssr": lambda f, t: scoring.spread_skill(f, t),
        "rank": lambda f, t: scoring.rank_histogram(f, t),
        "spectrum": lambda f, t: scoring.power_spectrum(f),
        "summary": lambda f, t: scoring.summary(f, t),
        "weighted": lambda f, t: scoring.rmse(f, t, weights=scoring.area_weights(f)),
    }
    for name, call in calls.items():
        with raise_if_dask_computes():
            lazy = call(lazy_fc, lazy_truth)
        assert all(v.chunks is not None for v in lazy.data_vars.values()), name
        xr.testing.assert_allclose(lazy.compute(), call(fc, truth), rtol=1e-10)


def test_weights_give_the_weighted_average():
    fc, truth = make_ensemble()
    half = xr.DataArray((np.arange(10) < 5).astype(float), dims=X)
    weighted = scoring.crps(fc, truth, weights=half)
    subset = scoring.crps(fc.isel(x=slice(0, 5)), truth.isel(x=slice(0, 5)))
    xr.testing.assert_allclose(weighted, subset)
    w = scoring.area_weights(truth)
    assert w.dims == (Y, X)
    assert float(w.mean()) == pytest.approx(1.0)
    cos_weighted = scoring.rmse(fc, truth, weights=w)["t2m"]
    sq = (fc["t2m"].mean(MEMBER) - truth["t2m"]) ** 2
    expected = np.sqrt(float((sq * w).sum() / (w.sum() * sq.sizes[TIME])))
    assert float(cos_weighted) == pytest.approx(expected)


def test_truth_is_matched_to_the_forecasts_times_and_float32_grid():
    fc, truth = make_ensemble(nt=3)
    subset = fc.isel(time=[0, 2])
    float32_grid = truth.assign_coords(y=truth[Y].astype("f4"), x=truth[X].astype("f4"))
    got = scoring.crps(subset, float32_grid, dim=[Y, X])
    want = scoring.crps(subset, truth.isel(time=[0, 2]), dim=[Y, X])
    xr.testing.assert_allclose(got, want)


def test_summary_is_a_metric_by_variable_by_time_table():
    fc, truth = make_ensemble()
    table = scoring.summary(fc, truth)["score"]
    assert table.dims == ("metric", "variable", TIME)
    assert table["metric"].values.tolist() == list(scoring.METRICS)
    assert table["units"].values.tolist() == ["K", "mm"]
    crps_t2m = scoring.crps(fc, truth, dim=[Y, X])["t2m"]
    np.testing.assert_allclose(table.sel(metric="crps", variable="t2m"), crps_t2m)


def test_accessor_forwards_to_the_scores():
    fc, truth = make_ensemble()
    xr.testing.assert_identical(fc.corrdiff.crps(truth), scoring.crps(fc, truth))
    xr.testing.assert_identical(fc.corrdiff.spread(dim=[Y]), scoring.spread(fc, dim=[Y]))


def test_bad_inputs_raise_errors_that_name_the_problem():
    fc, truth = make_ensemble()
    with pytest.raises(ValueError, match="truth lacks forecast variable.*tp"):
        scoring.crps(fc, truth[["t2m"]])
    mixed = fc.assign(t2m=fc.t2m.isel(member=0))
    with pytest.raises(ValueError, match=r"'t2m' has no 'member' dimension.*\['tp'\] have one"):
        scoring.crps(mixed, truth)
    with pytest.raises(ValueError, match="cannot reduce over \\['lead'\\]"):
        scoring.mae(fc, truth, dim="lead")
    with pytest.raises(ValueError, match="estimator must be"):
        scoring.crps(fc, truth, estimator="crpss")
    with pytest.raises(ValueError, match="at least 2 members"):
        scoring.spread(fc.isel(member=[0]))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        scoring.rank_histogram(fc, truth, seed=-1)
    with pytest.raises(ValueError, match="truth coordinate 'time' does not cover"):
        scoring.rmse(fc, truth.assign_coords(time=truth.time + np.timedelta64(1, "D")))


def test_a_lazy_downscaled_ensemble_scores_against_its_truth_without_computing():
    pytest.importorskip("torch")
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.testing import tiny_corrdiff

    pair = open_pair(synthetic_dataset(ny=16, nx=16, nt=2, seed=3, chunks={"time": 1}))
    model = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    with raise_if_dask_computes():
        ensemble = downscale(pair, model, members=2, seed=0, steps=2, patch=8, overlap=2)
        table = scoring.summary(ensemble, pair.fine, weights=scoring.area_weights(ensemble))
    table = table.compute(scheduler="sync")
    assert table["score"].dims == ("metric", "variable", TIME)
    assert table["variable"].values.tolist() == list(pair.targets)
    assert bool(np.isfinite(table["score"]).all())
    assert bool((table["score"].sel(metric="spread") > 0).all())  # members differ


def test_a_deterministic_forecast_scores_as_one_member_crps_equal_to_mae():
    fc, truth = make_ensemble()
    det = fc.isel(member=0, drop=True)  # e.g. the regression mean: no member dimension
    expected = float(abs(det.t2m - truth.t2m).mean())
    assert float(scoring.crps(det, truth).t2m) == pytest.approx(expected, rel=1e-12)
    assert float(scoring.mae(det, truth).t2m) == pytest.approx(expected, rel=1e-12)
    rmse = float(np.sqrt(((det.tp - truth.tp) ** 2).mean()))
    assert float(scoring.rmse(det.tp, truth.tp)) == pytest.approx(rmse, rel=1e-12)
    table = scoring.summary(det, truth)
    assert list(table.metric.values) == ["crps", "mae", "rmse"]  # no spread for one member
    assert table.attrs["member_count"] == 1
    with pytest.raises(ValueError, match="at least 2 members"):
        scoring.spread(det)


def test_lat_lon_chunked_unlike_the_data_score_the_same(tmp_path):
    fc, truth = make_ensemble()
    fc.chunk({Y: 4, X: 5}).assign_coords(
        lat=fc.lat.chunk({Y: 3}), lon=fc.lon.chunk({Y: 3, X: 10})
    ).to_zarr(tmp_path / "fc.zarr")  # as a writer that chunks coordinates its own way
    lazy = xr.open_zarr(tmp_path / "fc.zarr")
    assert lazy.lat.chunks is not None and lazy.lat.chunks != lazy.t2m.chunks[2:]
    for name in ("crps", "mae", "spread_skill"):
        got, want = getattr(scoring, name)(lazy, truth), getattr(scoring, name)(fc, truth)
        xr.testing.assert_allclose(got.compute(), want, rtol=1e-12)
    ranks = scoring.rank_histogram(lazy, truth).compute()
    np.testing.assert_array_equal(ranks.t2m.values, scoring.rank_histogram(fc, truth).t2m.values)
    spectrum = scoring.power_spectrum(lazy.t2m).compute()
    np.testing.assert_allclose(spectrum.values, scoring.power_spectrum(fc.t2m).values)
