"""The ``.corrdiff`` accessor on DataArrays scores one variable as the Dataset accessor does."""

from __future__ import annotations

import pytest
import xarray as xr
from scoring.test_metrics import make_ensemble

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff, da.corrdiff)
from corrdiff_xr import scoring
from corrdiff_xr.accessors import CorrDiffAccessor, CorrDiffArrayAccessor
from corrdiff_xr.dims import Y

#: options that make each metric runnable on one variable of make_ensemble (energy_score
#: needs two variables, so it is a Dataset-only score)
OPTIONS = {
    "brier": {"thresholds": [280.5]},
    "reliability": {"thresholds": [280.5]},
    "roc": {"thresholds": [280.5]},
    "roc_auc": {"thresholds": [280.5]},
    "twcrps": {"thresholds": [280.5]},
    "fss": {"windows": [1, 3]},
}
ONE_VARIABLE = [m for m in scoring.METRIC_TABLE if m != "energy_score"]


def test_both_accessors_offer_the_same_scoring_methods():
    scoring_methods = {
        "crps", "mae", "rmse", "spread", "spread_skill", "rank_histogram", "score", "summary",
        "power_spectrum",
    }  # fmt: skip
    public = {n for n in dir(CorrDiffArrayAccessor) if not n.startswith("_")}
    assert public == scoring_methods
    assert public <= {n for n in dir(CorrDiffAccessor) if not n.startswith("_")}


def test_dataarray_scores_equal_the_datasets_variable():
    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    da, tr = fc["t2m"], truth["t2m"]
    for name in ("crps", "mae", "rmse", "spread_skill", "rank_histogram"):
        got = getattr(da.corrdiff, name)(tr, dim=[Y])
        assert isinstance(got, xr.DataArray), name
        want = getattr(fc.corrdiff, name)(truth, dim=[Y])["t2m"]
        xr.testing.assert_identical(got, want.rename(got.name))
    xr.testing.assert_identical(da.corrdiff.spread(), fc.corrdiff.spread()["t2m"])
    spectrum = da.corrdiff.power_spectrum()
    xr.testing.assert_identical(spectrum, fc.corrdiff.power_spectrum()["t2m"])


@pytest.mark.parametrize("metric", ONE_VARIABLE)
def test_every_one_variable_metric_is_reachable_from_a_dataarray(metric):
    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    options = OPTIONS.get(metric, {})
    got = fc["t2m"].corrdiff.score(metric, truth["t2m"], **options)
    direct = scoring.METRIC_TABLE[metric](fc["t2m"], truth["t2m"], **options)
    xr.testing.assert_identical(got, direct)
    via_dataset = fc[["t2m"]].corrdiff.score(metric, truth[["t2m"]], **options)["t2m"]
    xr.testing.assert_allclose(got, via_dataset.rename(got.name))


def test_dataarray_summary_is_the_datasets_row_of_that_variable():
    fc, truth = make_ensemble()
    got = fc["t2m"].corrdiff.summary(truth["t2m"])
    want = fc[["t2m"]].corrdiff.summary(truth[["t2m"]])
    xr.testing.assert_allclose(got["score"], want["score"])


def test_dataarray_accessor_names_an_unknown_metric():
    fc, truth = make_ensemble()
    with pytest.raises(ValueError, match="unknown metric 'fs'"):
        fc["t2m"].corrdiff.score("fs", truth["t2m"])
