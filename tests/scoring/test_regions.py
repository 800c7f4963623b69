"""Scores by region equal the scores of each region's points cut out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr import cli, scoring
from corrdiff_xr.dims import LAT, LON, MEMBER, TIME, X, Y
from corrdiff_xr.scoring import regions

NY, NX = 12, 14
OPTIONS = {
    "fss": {"windows": [1, 3], "thresholds": [0.5]},
    "brier": {"thresholds": [0.5]},
    "variogram_score": {"max_lag": 2},
}


def era5_like(*, members=4, nt=3, seed=0):
    """An ensemble on an ERA5-like grid: descending latitude, 0..360 longitudes across 0°E,
    a land-sea fraction ``lsm`` and a truth with a few missing points."""
    rng = np.random.default_rng(seed)
    lat1 = np.linspace(58.0, 47.0, NY)
    lon1 = (352.0 + 1.25 * np.arange(NX)) % 360.0  # 352 .. 8.25, through 0
    coords = {
        TIME: np.array("2010-03-11T00", dtype="datetime64[ns]")
        + np.arange(nt) * np.timedelta64(6, "h"),
        Y: (Y, lat1, {"units": "degrees_north"}),
        X: (X, np.arange(NX) * 1.0, {"units": "1"}),
        LAT: ((Y, X), np.repeat(lat1[:, None], NX, 1)),
        LON: ((Y, X), np.repeat(lon1[None, :], NY, 0)),
    }
    centre = rng.normal(size=(nt, NY, NX))
    truth = xr.Dataset(
        {
            "t2m": ((TIME, Y, X), 280 + centre + rng.normal(size=(nt, NY, NX)), {"units": "K"}),
            "tp": (
                (TIME, Y, X),
                np.maximum(centre + rng.normal(size=(nt, NY, NX)), 0),
                {"units": "mm"},
            ),
        },
        coords=coords,
    )
    shape = (members, nt, NY, NX)
    fc = xr.Dataset(
        {
            "t2m": ((MEMBER, TIME, Y, X), 280 + centre + rng.normal(size=shape), {"units": "K"}),
            "tp": (
                (MEMBER, TIME, Y, X),
                np.maximum(centre + rng.normal(size=shape), 0),
                {"units": "mm"},
            ),
        },
        coords=coords,
    )
    truth["t2m"][0, 1, 2] = np.nan
    yy, xx = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
    lsm = xr.DataArray(np.clip((xx + 0.5 * yy - 7) / 3.0, 0, 1), dims=(Y, X), name="lsm")
    return fc, truth, lsm.assign_coords({Y: truth[Y], X: truth[X]})


def test_a_lat_lon_box_compares_longitudes_modulo_360():
    fc, _, _ = era5_like()
    mask = regions.box(fc, lat=(50, 55), lon=(-5, 3))  # given in -180..180, grid in 0..360
    lon = (fc[LON].values + 180) % 360 - 180
    want = (fc[LAT].values >= 50) & (fc[LAT].values <= 55) & (lon >= -5) & (lon <= 3)
    np.testing.assert_array_equal(mask.values, want)
    assert 0 < want.sum() < want.size


def test_a_box_region_scores_exactly_as_the_box_cut_out_by_hand():
    fc, truth, _ = era5_like()
    mask = regions.box(fc, lat=(49, 56), lon=(355, 4))
    masks = regions.region_masks(box=mask)
    rows, cols = np.flatnonzero(mask.values.any(1)), np.flatnonzero(mask.values.any(0))
    cut = {Y: slice(rows[0], rows[-1] + 1), X: slice(cols[0], cols[-1] + 1)}
    metrics = [
        "crps",
        "rmse",
        "spread_skill",
        "fss",
        "brier",
        "variogram_score",
        "log_spectral_distance",
    ]
    weights = scoring.area_weights(fc)
    kw = {"metrics": metrics, "options": OPTIONS}
    by_region = scoring.summary(fc, truth, regions=masks, weights=weights, **kw)
    by_hand = scoring.summary(fc.isel(cut), truth.isel(cut), weights=weights.isel(cut), **kw)
    assert by_region["score"].dims[0] == regions.REGION
    xr.testing.assert_allclose(by_region["score"].sel(region="box", drop=True), by_hand["score"])
    assert int(by_region["region_points"].sel(region="box")) == int(mask.sum())


def test_land_and_sea_score_as_their_own_points_alone():
    fc, truth, lsm = era5_like()
    masks = regions.region_masks(**regions.land_sea(lsm))
    metrics = ["crps", "mae", "rmse", "brier", "spread_skill", "rank_histogram"]
    kw = {"metrics": metrics, "options": OPTIONS, "dim": [Y, X]}
    table = scoring.summary(fc, truth, regions=masks, **kw)["score"]
    assert list(table[regions.REGION].values) == ["land", "sea"]
    for name, mask in (("land", lsm > 0.5), ("sea", lsm <= 0.5)):
        points = mask.stack(point=(Y, X))
        points = points["point"][points.values]

        def alone(ds, points=points):
            stacked = ds.stack(point=(Y, X)).sel(point=points.values)
            return stacked.drop_vars(["point", Y, X, LAT, LON]).assign_coords(
                point=np.arange(points.size)
            )

        want = scoring.summary(alone(fc), alone(truth), **{**kw, "dim": ["point"]})["score"]
        got = table.sel(region=name, drop=True)
        # rank histograms break ties (tp = 0) at random by position: compare t2m's only
        ties = want["metric"].str.startswith("rank_histogram") & (want["variable"] == "tp")
        xr.testing.assert_allclose(got.where(~ties), want.where(~ties))
    # land and sea differ: the split is real, not the whole domain twice
    assert not np.allclose(table.sel(region="land"), table.sel(region="sea"), equal_nan=True)


def test_a_nan_mask_region_is_where_a_field_is_known():
    fc, truth, _ = era5_like()
    coverage = truth["t2m"].isel({TIME: 0}).where(truth[LAT] > 52)
    mask = regions.valid(coverage)
    np.testing.assert_array_equal(mask.values, np.isfinite(coverage.values))
    table = scoring.summary(fc, truth, metrics=["mae"], regions={"covered": mask}, dim=[TIME, Y, X])
    inside = truth.where(mask)
    want = abs(fc.mean(MEMBER) - inside).mean()
    np.testing.assert_allclose(
        table["score"].sel(region="covered").values.ravel(), [want["t2m"], want["tp"]]
    )


def test_bad_masks_are_one_clear_line():
    fc, truth, lsm = era5_like()
    with pytest.raises(ValueError, match="region 'nowhere' holds no grid point"):
        regions.region_masks(nowhere=lsm > 5)
    with pytest.raises(ValueError, match="land fraction in \\[0, 1\\]"):
        regions.land_sea(lsm * 100)
    small = regions.region_masks(part=(lsm > 0.5).isel({Y: slice(0, 6)}))
    with pytest.raises(ValueError, match="make the masks on the forecast's grid"):
        scoring.summary(fc, truth, regions=small)


def test_score_command_takes_regions(tmp_path, capsys):
    fc, truth, lsm = era5_like()
    fc.to_zarr(tmp_path / "pred.zarr")
    truth.assign(lsm=lsm).to_zarr(tmp_path / "truth.zarr")
    out = tmp_path / "scores.nc"
    argv = ["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]
    regions_arg = ["--regions", "land", "sea", "north=53:59,350:10", "-o", str(out)]
    assert cli.main([*argv, *regions_arg, "--metrics", "crps,mae"]) == 0
    scores = xr.open_dataset(out)
    assert list(scores[regions.REGION].values) == ["land", "sea", "north"]
    masks = regions.region_masks(
        **regions.land_sea(lsm), north=regions.box(fc, lat=(53, 59), lon=(350, 10))
    )
    want = scoring.summary(fc, truth, metrics=["crps", "mae"], regions=masks)
    xr.testing.assert_allclose(scores["score"], want["score"].compute())
    assert "region land" in capsys.readouterr().out
    assert cli.main([*argv, "--regions", "north=53:59", "-o", str(tmp_path / "x.nc")]) == 2
    assert "--regions north=53:59" in capsys.readouterr().err


def test_score_takes_the_land_sea_mask_from_a_file_or_says_where_to_give_it(tmp_path, capsys):
    fc, truth, lsm = era5_like()
    fc.to_zarr(tmp_path / "pred.zarr")
    truth.to_zarr(tmp_path / "truth.zarr")  # no lsm in it
    lsm.rename("land_fraction").to_netcdf(tmp_path / "lsm.nc")
    argv = ["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]
    argv += ["--metrics", "mae", "--regions", "land", "sea"]
    assert cli.main(argv) == 2
    assert "pass --land-sea-mask FILE[:VAR]" in capsys.readouterr().err
    out = tmp_path / "scores.nc"
    given = ["--land-sea-mask", f"{tmp_path / 'lsm.nc'}:land_fraction", "-o", str(out)]
    assert cli.main([*argv, *given]) == 0
    want = scoring.summary(fc, truth, metrics=["mae"], regions=regions.land_sea(lsm))
    xr.testing.assert_allclose(xr.open_dataset(out)["score"], want["score"].compute())


def test_land_and_sea_of_a_catalog_truth_come_from_its_static_lsm(tmp_path, capsys):
    from corrdiff_xr.data import open_source

    cache = tmp_path / "cache"
    pair = open_source("catalog:demo/demo_tiny", params={"cache_dir": str(cache)})
    truth = pair.fine.isel({TIME: [1, 2]}).compute()
    rng = np.random.default_rng(0)
    fc = xr.concat([truth + rng.normal(0, 0.5, truth["t2m"].shape) for _ in range(3)], MEMBER)
    fc.to_zarr(tmp_path / "pred.zarr")
    out = tmp_path / "scores.nc"
    argv = ["score", str(tmp_path / "pred.zarr"), "--truth", "catalog:demo/demo_tiny"]
    argv += ["--truth-param", f"cache_dir={cache}", "--metrics", "crps", "--regions", "land"]
    assert cli.main([*argv, "-o", str(out)]) == 0
    land = pair.dataset["lsm"] > 0.5
    assert 0 < int(land.sum()) < land.size
    want = scoring.summary(fc, truth, metrics=["crps"], regions={"land": land})
    xr.testing.assert_allclose(xr.open_dataset(out)["score"], want["score"].compute())


def test_data_arrays_score_by_region_as_their_one_variable_datasets():
    fc, truth, lsm = era5_like()
    masks = regions.region_masks(**regions.land_sea(lsm))
    kw = {"metrics": ["crps", "mae"], "regions": masks, "dim": [TIME, Y, X]}
    got = scoring.summary(fc["t2m"], truth["t2m"], **kw)
    want = scoring.summary(fc[["t2m"]], truth[["t2m"]], **kw)
    xr.testing.assert_identical(got, want)
