"""Tests for the threshold and spatial scores: FSS, Brier, reliability, ROC, twCRPS, PIT.

Each is checked against the ``scores`` library where it has the score, a brute-force
reference otherwise, and a known answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_metrics import make_ensemble

from corrdiff_xr import scoring
from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.scoring import kernels
from corrdiff_xr.testing import raise_if_dask_computes


def brute_force_fss(obs, members, weight, threshold, n):
    """FSS over every interior n x n window by loops: NEP of the members, truth fractions,
    area-weighted, windows touching missing truth skipped; components summed over fields."""
    sums = np.zeros(3)
    for t in range(obs.shape[0]):
        parts, total = np.zeros(3), 0.0
        for i in range(obs.shape[1] - n + 1):
            for j in range(obs.shape[2] - n + 1):
                o = obs[t, i : i + n, j : j + n]
                if np.isnan(o).any():
                    continue
                w = weight[i : i + n, j : j + n]
                po = (w * (o >= threshold)).sum() / w.sum()
                pf = np.mean(
                    [(w * (m[t, i : i + n, j : j + n] >= threshold)).sum() for m in members]
                )
                pf /= w.sum()
                parts += w.sum() * np.array([(pf - po) ** 2, pf**2, po**2])
                total += w.sum()
        sums += parts / total
    return 1 - sums[0] / (sums[1] + sums[2])


def test_fss_matches_the_scores_library_for_one_member():
    from scores.spatial import fss_2d

    fc, truth = make_ensemble(members=1, nt=3, ny=12, nx=14)
    got = scoring.fss(fc, truth, thresholds=[0.3, 1.0], windows=[1, 3, 5])["tp"]
    for t in (0.3, 1.0):
        for n in (1, 3, 5):
            want = fss_2d(
                fc["tp"].isel(member=0),
                truth["tp"],
                event_threshold=t,
                window_size=(n, n),
                spatial_dims=(Y, X),
                threshold_operator=np.greater_equal,
                reduce_dims=[TIME, Y, X],
            )
            assert float(got.sel(threshold=t, window=n)) == pytest.approx(float(want), rel=1e-12)


def test_fss_of_an_ensemble_with_gaps_and_weights_matches_brute_force():
    fc, truth = make_ensemble(members=3, nt=2, ny=9, nx=10)
    truth = truth.where((truth[X] != 2000.0 * 4) | (truth[Y] > 2000.0 * 3))  # a few holes
    w = scoring.area_weights(truth)
    got = scoring.fss(fc, truth, thresholds=[0.5], windows=[1, 3], weights=w)["tp"]
    members = fc["tp"].transpose(MEMBER, TIME, Y, X).values
    for n in (1, 3):
        want = brute_force_fss(truth["tp"].values, members, w.values, 0.5, n)
        assert float(got.sel(threshold=0.5, window=n)) == pytest.approx(want, rel=1e-10)


def test_fss_is_one_for_a_perfect_forecast_and_percentiles_remove_a_bias():
    fc, truth = make_ensemble(members=2, nt=2)
    perfect = truth.expand_dims({MEMBER: 2})
    assert np.allclose(scoring.fss(perfect, truth, windows=[1, 3])["t2m"], 1.0)
    biased = truth + 0.7
    assert np.allclose(scoring.fss(biased, truth, percentiles=[75, 90])["t2m"], 1.0)
    fixed = scoring.fss(biased, truth, thresholds=[280.5], windows=[1])["t2m"]
    assert float(fixed.squeeze()) < 0.9
    wide = scoring.fss(fc, truth, thresholds=[0.5], windows=[1, 3, 7])["tp"]
    assert bool((wide.diff("window") > 0).all())  # smoother fields agree more


def test_fair_brier_matches_the_formula_and_is_unbiased_for_a_reliable_forecast():
    rng = np.random.default_rng(4)
    m, n = 4, 200_000
    p = rng.uniform(size=n)
    members = (rng.uniform(size=(m, n)) < p).astype(float)
    obs = (rng.uniform(size=n) < p).astype(float)
    fc = xr.Dataset({"e": ((MEMBER, "case"), members)})
    truth = xr.Dataset({"e": (("case",), obs)})
    fair = scoring.brier(fc, truth, thresholds=[0.5], dim=[])["e"].sel(threshold=0.5).values
    i = members.sum(0)
    np.testing.assert_allclose(fair, (i / m - obs) ** 2 - i * (m - i) / (m**2 * (m - 1)))
    # E[fair score] is the Brier score of the true probabilities, E[p (1 - p)] = 1/6
    assert fair.mean() == pytest.approx(1 / 6, abs=3e-3)
    plain = float(scoring.brier(fc, truth, thresholds=[0.5], fair=False)["e"].squeeze())
    assert plain == pytest.approx(1 / 6 + (1 / 6) / m, abs=3e-3)
    # given i of m members, the event's frequency is E[p | i] = (i + 1) / (m + 2) (a Beta
    # posterior): a finite ensemble of a reliable distribution is itself not reliable
    rel = scoring.reliability(fc, truth, thresholds=[0.5])["e"].sel(threshold=0.5)
    expected = (np.arange(m + 1) + 1) / (m + 2)
    np.testing.assert_allclose(rel.sel(statistic="corp"), expected, atol=0.01)
    np.testing.assert_allclose(rel.sel(statistic="observed"), expected, atol=0.01)
    assert float(rel.sel(statistic="fraction").sum()) == pytest.approx(1.0)


def event_probabilities(fc, truth, name, threshold):
    prob = (fc[name] >= threshold).mean(MEMBER).values.ravel()
    event = (truth[name] >= threshold).values.ravel().astype(float)
    return prob, event


def test_corp_reliability_and_roc_auc_match_the_scores_library():
    from scores.probability import roc_auc
    from scores.processing import isotonic_fit

    fc, truth = make_ensemble(members=5, nt=6, ny=10, nx=10, seed=5)
    prob, event = event_probabilities(fc, truth, "tp", 0.5)
    rel = scoring.reliability(fc, truth, thresholds=[0.5])["tp"].sel(threshold=0.5)
    fit = isotonic_fit(prob, event, functional=None, solver=np.mean)
    levels = rel["probability"].values
    want = [fit["regression_values"][np.argmax(fit["fcst_sorted"] == q)] for q in levels]
    np.testing.assert_allclose(rel.sel(statistic="corp").values, want, rtol=1e-12)
    auc = scoring.roc_auc(fc, truth, thresholds=[0.5])["tp"]
    reference = roc_auc(xr.DataArray(prob, dims="c"), xr.DataArray(event, dims="c"))
    assert float(auc.squeeze()) == pytest.approx(float(reference), rel=1e-12)
    curve = scoring.roc(fc, truth, thresholds=[0.5])["tp"].sel(threshold=0.5)
    assert float(curve.sel(statistic="pod", probability=0.0)) == 1.0
    assert bool((curve.sel(statistic="pofd").diff("probability") <= 0).all())


def test_twcrps_with_an_all_ones_weight_is_the_crps_and_otherwise_the_chained_crps():
    fc, truth = make_ensemble(members=4)
    for estimator in ("properscoring", "fair"):
        tw = scoring.twcrps(fc, truth, thresholds=[-np.inf], estimator=estimator)
        want = scoring.crps(fc, truth, estimator=estimator)
        xr.testing.assert_allclose(tw.sel(threshold=-np.inf, drop=True), want)
    got = scoring.twcrps(fc, truth, thresholds=[0.5], dim=[])["tp"].sel(threshold=0.5)
    chained = np.maximum(np.moveaxis(fc["tp"].values, 0, -1), 0.5)
    want = kernels.crps_pairwise(np.maximum(truth["tp"].values, 0.5), chained)
    np.testing.assert_allclose(got.transpose(TIME, Y, X).values, want, rtol=1e-12)


def test_pit_histogram_matches_the_scores_library_and_is_discrete_uniform_when_calibrated():
    from scores.probability import Pit

    fc, truth = make_ensemble(members=4, nt=3, ny=6, nx=6)
    got = scoring.pit_histogram(fc, truth.where(truth[X] > 0), bins=8)["tp"]
    tied = fc[["tp"]].where(fc["tp"] > 0.3, 0.0)  # ties with a zero truth: PIT spread out
    got_tied = scoring.pit_histogram(tied, truth, bins=8)["tp"]
    for forecast, obs, hist in ((fc, truth.where(truth[X] > 0), got), (tied, truth, got_tied)):
        want = Pit(forecast["tp"], obs["tp"], ensemble_member_dim=MEMBER).hist_values(8)
        np.testing.assert_allclose(hist.values, want.values, atol=1e-12)
    m = 4
    calibrated, truth = make_ensemble(members=m, nt=40, ny=20, nx=20, seed=6)
    hist = scoring.pit_histogram(calibrated, truth, bins=m)["t2m"]  # bins (0, 1/4], ...
    np.testing.assert_allclose(hist.values, [2 / 5, 1 / 5, 1 / 5, 1 / 5], atol=0.01)


def test_new_threshold_scores_stay_lazy_and_do_not_depend_on_chunks():
    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    truth = truth.where(truth[X] > 2000.0)
    lazy_fc, lazy_truth = fc.chunk({MEMBER: 1, TIME: 1, Y: 4}), truth.chunk({TIME: 2})
    w = scoring.area_weights(fc)
    calls = {
        "fss": lambda f, t: scoring.fss(f, t, windows=[1, 3], weights=w),
        "brier": lambda f, t: scoring.brier(f, t, thresholds=[0.5, 1.0], weights=w),
        "reliability": lambda f, t: scoring.reliability(f, t, thresholds=[0.5], weights=w),
        "roc": lambda f, t: scoring.roc(f, t, thresholds=[0.5]),
        "roc_auc": lambda f, t: scoring.roc_auc(f, t, thresholds={"tp": [0.5]}),
        "twcrps": lambda f, t: scoring.twcrps(f, t, thresholds=[0.5], weights=w),
        "pit": lambda f, t: scoring.pit_histogram(f, t, weights=w),
    }
    for name, call in calls.items():
        with raise_if_dask_computes():
            lazy = call(lazy_fc, lazy_truth)
        assert all(v.chunks is not None for v in lazy.data_vars.values()), name
        xr.testing.assert_allclose(lazy.compute(), call(fc, truth), rtol=1e-10)
        assert bool(lazy.to_dataarray().notnull().any()), name


def test_threshold_scores_without_thresholds_say_how_to_give_them():
    fc, truth = make_ensemble()
    with pytest.raises(ValueError, match="brier needs event thresholds.*--thresholds tp=1,10"):
        scoring.brier(fc, truth)
    with pytest.raises(ValueError, match="must be increasing"):
        scoring.roc(fc, truth, thresholds=[2.0, 1.0])
    with pytest.raises(ValueError, match=r"fss windows \[40\] do not fit"):
        scoring.fss(fc, truth, windows=[40])
