"""Every metric of the one table is reachable from summary, the accessor and ``score``."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import xarray as xr
from test_metrics import make_ensemble

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr import cli, scoring
from corrdiff_xr.dims import TIME
from corrdiff_xr.scoring.table import AGGREGATIONS

#: options that make each metric runnable on make_ensemble's (t2m [K], tp [mm])
OPTIONS = {
    "brier": {"thresholds": [0.5]},
    "reliability": {"thresholds": [0.5]},
    "roc": {"thresholds": [0.5]},
    "roc_auc": {"thresholds": [0.5]},
    "twcrps": {"thresholds": [0.5]},
    "fss": {"windows": [1, 3]},
    "energy_score": {"scale": {"t2m": 1.0, "tp": 1.0}},
}


def test_every_metric_row_is_well_formed():
    for name, metric in scoring.METRIC_TABLE.items():
        assert metric.name == name and callable(metric.function)
        assert metric.aggregation in AGGREGATIONS, name
        assert metric.higher_is_better in (True, False, None)
        params = inspect.signature(metric.function).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for option in metric.options:
            assert option in params or takes_any, (name, option)
        for common in ("dim", "weights", "member_dim"):
            assert common in params or takes_any, (name, common)
    assert set(scoring.METRICS) <= set(scoring.METRIC_TABLE)


def test_every_metric_is_reachable_from_summary_and_the_accessor():
    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    table = scoring.summary(fc, truth, metrics=list(scoring.METRIC_TABLE), options=OPTIONS)
    labels = [str(m) for m in table["metric"].values]
    for name, metric in scoring.METRIC_TABLE.items():
        rows = [m for m in labels if m == name or m.startswith(f"{name}[")]
        assert rows, name
        direct = metric(fc, truth, **OPTIONS.get(name, {}))
        via_accessor = fc.corrdiff.score(name, truth, **OPTIONS.get(name, {}))
        xr.testing.assert_identical(via_accessor, direct)
        assert bool(table["score"].sel(metric=rows).notnull().any()), name
    crps = table["score"].sel(metric="crps", variable="t2m")
    np.testing.assert_allclose(crps, scoring.crps(fc, truth, dim=["y", "x"])["t2m"])
    fss = table["score"].sel(metric="fss[percentile=90,window=3]", variable="tp")
    want = scoring.fss(fc, truth, windows=[1, 3], dim=["y", "x"])["tp"].sel(window=3)
    np.testing.assert_allclose(fss, want.squeeze("percentile"))


def test_summary_and_accessor_say_what_is_wrong():
    fc, truth = make_ensemble()
    with pytest.raises(ValueError, match="unknown metric.*'fs'.*choose from"):
        scoring.summary(fc, truth, metrics=["fs"])
    with pytest.raises(ValueError, match="unknown metric 'fs'"):
        fc.corrdiff.score("fs", truth)
    with pytest.raises(TypeError, match=r"'crps' takes no option\(s\) \['windows'\]"):
        fc.corrdiff.score("crps", truth, windows=[3])
    with pytest.raises(ValueError, match="'fss' needs the truth"):
        fc.corrdiff.score("fss")


def test_score_command_reaches_every_metric(tmp_path, capsys):
    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    fc.to_zarr(tmp_path / "pred.zarr")
    truth.to_zarr(tmp_path / "truth.zarr")
    out = tmp_path / "scores.nc"
    argv = ["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]
    metrics = ",".join(m for m in scoring.METRIC_TABLE if m != "energy_score")
    extra = ["--thresholds", "0.5", "--windows", "1,3", "--percentiles", "75,90"]
    assert cli.main([*argv, "-o", str(out), "--metrics", metrics, *extra]) == 0
    got = xr.open_dataset(out)
    labels = [str(m) for m in got["metric"].values]
    for name in scoring.METRIC_TABLE:
        if name != "energy_score":  # t2m and tp differ in units: checked on wind below
            assert any(m == name or m.startswith(f"{name}[") for m in labels), name
    want = scoring.summary(
        fc, truth, metrics=["fss"], options={"fss": {"windows": [1, 3], "percentiles": [75, 90]}}
    ).compute()
    np.testing.assert_allclose(
        got["score"].sel(metric=want["metric"].values), want["score"].values, rtol=1e-6
    )
    assert "brier[threshold=0.5]" in capsys.readouterr().out
    wind = xr.Dataset({"u10": fc["t2m"] - 280, "v10": fc["tp"]}).assign_attrs(fc.attrs)
    for name in ("u10", "v10"):
        wind[name].attrs["units"] = "m s-1"
    wind_truth = xr.Dataset({"u10": truth["t2m"] - 280, "v10": truth["tp"]})
    wind.to_zarr(tmp_path / "wind.zarr")
    wind_truth.to_zarr(tmp_path / "wind_truth.zarr")
    argv = ["score", str(tmp_path / "wind.zarr"), "--truth", str(tmp_path / "wind_truth.zarr")]
    assert cli.main([*argv, "-o", str(tmp_path / "w.nc"), "--metrics", "energy_score"]) == 0
    energy = xr.open_dataset(tmp_path / "w.nc")["score"].sel(metric="energy_score")
    want = scoring.energy_score(wind, wind_truth, dim=["y", "x"])["u10+v10"]
    np.testing.assert_allclose(energy.sel(variable="u10+v10"), want.transpose(TIME), rtol=1e-6)


def test_score_command_refuses_an_unknown_metric_naming_the_table(capsys):
    assert cli.main(["score", "x.zarr", "--metrics", "crps,fs"]) == 2
    assert "unknown metric(s) fs; choose from crps,mae" in capsys.readouterr().err


def test_a_summary_of_every_metric_stays_lazy_and_does_not_depend_on_chunks():
    from corrdiff_xr.dims import MEMBER, Y
    from corrdiff_xr.testing import raise_if_dask_computes

    fc, truth = make_ensemble(members=3, ny=9, nx=10)
    truth = truth.where(truth["x"] > 2000.0)  # missing truth: skipped everywhere
    kw = {"metrics": list(scoring.METRIC_TABLE), "options": OPTIONS}
    weights = scoring.area_weights(fc)
    with raise_if_dask_computes():
        lazy = scoring.summary(
            fc.chunk({MEMBER: 1, TIME: 1, Y: 4}), truth.chunk({TIME: 2}), weights=weights, **kw
        )
    assert lazy["score"].chunks is not None
    xr.testing.assert_allclose(
        lazy.compute(), scoring.summary(fc, truth, weights=weights, **kw), rtol=1e-10
    )
