"""Tests for the energy score, the variogram score and the log-spectral distance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from test_metrics import make_ensemble

from corrdiff_xr import scoring
from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.scoring import multivariate
from corrdiff_xr.testing import raise_if_dask_computes


def test_energy_score_of_one_member_is_the_euclidean_error():
    fc, truth = make_ensemble(members=1)
    got = scoring.energy_score(fc, truth, scale={"t2m": 1.0, "tp": 1.0}, dim=[])["t2m+tp"]
    error = np.hypot(fc["t2m"].isel(member=0) - truth["t2m"], fc["tp"].isel(member=0) - truth["tp"])
    np.testing.assert_allclose(got.values, error.values, rtol=1e-12)


def test_energy_score_matches_the_pairwise_formula_and_reduces_to_the_crps():
    rng = np.random.default_rng(0)
    obs, members = rng.normal(size=(5, 3)), rng.normal(size=(5, 4, 3))
    for fair, denom in ((False, 2 * 16), (True, 2 * 4 * 3)):
        skill = np.linalg.norm(members - obs[:, None], axis=-1).mean(-1)
        pairs = np.linalg.norm(members[:, :, None] - members[:, None], axis=-1).sum((-2, -1))
        got = multivariate.energy_kernel(obs, members, fair=fair)
        np.testing.assert_allclose(got, skill - pairs / denom, rtol=1e-12)
    fc, truth = make_ensemble(members=3)
    zero = {"t2m": fc["t2m"], "nil": 0 * fc["t2m"]}
    one_d = scoring.energy_score(xr.Dataset(zero), truth.assign(nil=0 * truth["t2m"]))
    assert float(one_d["t2m+nil"]) == pytest.approx(float(scoring.crps(fc, truth)["t2m"]))


def test_energy_score_refuses_mixed_units_without_a_scale():
    fc, truth = make_ensemble()
    with pytest.raises(ValueError, match=r"different units \['K', 'mm'\]; pass scale="):
        scoring.energy_score(fc, truth)


def brute_force_variogram(obs, members, p, max_lag):
    """Sum over every unordered pair of points within max_lag in y and x, per point."""
    ny, nx = obs.shape
    points = list(itertools.product(range(ny), range(nx)))
    total = 0.0
    for a, b in itertools.combinations(points, 2):
        dy, dx = b[0] - a[0], b[1] - a[1]
        if abs(dy) > max_lag or abs(dx) > max_lag:
            continue
        v_obs = abs(obs[a] - obs[b]) ** p
        v_fc = np.mean([abs(m[a] - m[b]) ** p for m in members])
        total += (v_obs - v_fc) ** 2 / np.hypot(dy, dx)
    return total / (ny * nx)


def test_variogram_score_matches_brute_force_and_is_zero_for_a_perfect_forecast():
    fc, truth = make_ensemble(members=3, nt=1, ny=5, nx=6)
    for p, lag in ((0.5, 2), (1.0, 1)):
        got = scoring.variogram_score(fc, truth, p=p, max_lag=lag)["tp"]
        members = fc["tp"].isel(time=0).values
        want = brute_force_variogram(truth["tp"].isel(time=0).values, members, p, lag)
        assert float(got) == pytest.approx(want, rel=1e-12)
    perfect = truth.expand_dims({MEMBER: 1})
    assert float(scoring.variogram_score(perfect, truth)["t2m"]) == 0.0
    shuffled = fc["t2m"].values.copy()  # right margins, spatial structure destroyed
    rng = np.random.default_rng(1)
    flat = shuffled.reshape(shuffled.shape[:2] + (-1,))
    for member in flat:
        rng.shuffle(member.T)
    smooth = truth.expand_dims({MEMBER: 3}) + 0.1 * (fc - fc.mean(MEMBER))
    rough = fc.copy(data={"t2m": shuffled, "tp": fc["tp"].values})
    assert float(scoring.variogram_score(smooth, truth)["t2m"]) < float(
        scoring.variogram_score(rough, truth)["t2m"]
    )


def test_log_spectral_distance_of_a_doubled_field_is_six_decibels():
    fc, truth = make_ensemble(members=2, ny=12, nx=16)
    doubled = (2 * truth).expand_dims({MEMBER: 2})
    got = scoring.log_spectral_distance(doubled, truth)
    np.testing.assert_allclose(got.to_dataarray().values, 10 * np.log10(4.0), rtol=1e-10)
    assert got["t2m"].attrs["units"] == "dB"
    assert float(scoring.log_spectral_distance(truth.expand_dims({MEMBER: 1}), truth)["t2m"]) == 0


def test_log_spectral_distance_matches_a_direct_computation():
    fc, truth = make_ensemble(members=2, ny=12, nx=16)
    got = scoring.log_spectral_distance(fc, truth)["tp"]
    spec_fc = scoring.power_spectrum(fc["tp"], dim=[TIME]).mean(MEMBER)
    spec_tr = scoring.power_spectrum(truth["tp"], dim=[TIME])
    k = spec_tr["wavenumber"]
    keep = k <= k.attrs["nyquist"]
    db = 10 * np.log10(spec_fc.values[keep] / spec_tr.values[keep])
    assert float(got) == pytest.approx(np.sqrt(np.mean(db**2)), rel=1e-12)


def test_multivariate_scores_stay_lazy_and_do_not_depend_on_chunks():
    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    truth = truth.where(truth[X] > 2000.0)
    lazy_fc, lazy_truth = fc.chunk({MEMBER: 1, TIME: 1, Y: 4}), truth.chunk({TIME: 2})
    w = scoring.area_weights(fc)
    scale = {"t2m": 2.0, "tp": 1.0}
    calls = {
        "energy": lambda f, t: scoring.energy_score(f, t, scale=scale, weights=w),
        "variogram": lambda f, t: scoring.variogram_score(f, t, weights=w, dim=[Y, X]),
        "lsd": lambda f, t: scoring.log_spectral_distance(f, t),
    }
    for name, call in calls.items():
        with raise_if_dask_computes():
            lazy = call(lazy_fc, lazy_truth)
        assert all(v.chunks is not None for v in lazy.data_vars.values()), name
        xr.testing.assert_allclose(lazy.compute(), call(fc, truth), rtol=1e-10)
        assert bool(lazy.to_dataarray().notnull().all()), name
