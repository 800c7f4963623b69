"""Statistics: lazy one-pass mean/std, exact against numpy, stored in the 'stats' group."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import (
    StatsError,
    check_stats,
    compute_stats,
    read_stats,
    write_stats,
)
from corrdiff_xr.data.stats import stats_to_dict
from corrdiff_xr.testing import raise_if_dask_computes


def test_statistics_are_lazy_and_match_numpy(tiny_synthetic):
    with raise_if_dask_computes():
        stats = compute_stats(tiny_synthetic)
    assert list(stats["stat"].values) == ["mean", "std"]
    assert isinstance(stats["t2m"].data, da.Array)
    stats = stats.compute()
    for name in tiny_synthetic.data_vars:
        values = tiny_synthetic[name].values.astype(np.float64)
        # float32 data: deviations are formed in float32, sums in float64
        np.testing.assert_allclose(stats[name].values, [values.mean(), values.std()], rtol=1e-7)
        assert stats[name].attrs["units"] == tiny_synthetic[name].attrs["units"]


def test_statistics_do_not_depend_on_chunking_and_skip_nans():
    rng = np.random.default_rng(0)
    values = rng.normal(280.0, 3.0, size=(12, 10, 14))
    values[3, 2, 2] = np.nan
    ds = xr.Dataset({"a": (("time", "y", "x"), values)})
    a = compute_stats(ds.chunk({"time": 1, "y": 3, "x": 5})).compute()
    b = compute_stats(ds.chunk({"time": 12})).compute()
    xr.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a["a"].values, [np.nanmean(values), np.nanstd(values)], rtol=1e-12)


def test_a_large_mean_does_not_cost_precision():
    # naive sums of squares lose all digits of a 1e-3 spread around 1e8
    rng = np.random.default_rng(1)
    values = 1e8 + 1e-3 * rng.standard_normal(20_000)
    stats = compute_stats(xr.Dataset({"a": ("t", da.from_array(values, chunks=1000))})).compute()
    assert stats["a"].values[1] == pytest.approx(values.std(), rel=1e-6)


def test_each_chunk_is_read_once_for_mean_and_std_of_all_variables():
    calls = []
    data = da.ones((6, 4, 4), chunks=(1, 4, 4)).map_blocks(
        lambda b: calls.append(b.size) or b, dtype=float
    )
    ds = xr.Dataset({"a": (("time", "y", "x"), data), "b": (("time", "y", "x"), data * 2)})
    stats = compute_stats(ds).compute()
    assert [n for n in calls if n] == [16] * 6  # (size-0 calls are dask probing the meta)
    np.testing.assert_allclose(stats["b"].values, [2.0, 0.0])


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("consolidated", [False, True])
def test_statistics_round_trip_through_the_stats_group(tmp_path, tiny_synthetic, consolidated):
    tiny_store = str(tmp_path / "s.zarr")
    tiny_synthetic.to_zarr(tiny_store, consolidated=consolidated)
    ds = xr.open_zarr(tiny_store, consolidated=consolidated)
    stats = compute_stats(ds, ["t2m", "lsm"])
    assert read_stats(tiny_store) is None
    write_stats(tiny_store, stats)
    back = read_stats(tiny_store)
    xr.testing.assert_allclose(back, stats.compute())
    # the data in the store is untouched and a rewrite replaces the group
    xr.testing.assert_identical(
        xr.open_zarr(tiny_store, consolidated=consolidated).t2m.compute(),
        ds.t2m.compute(),
    )
    write_stats(tiny_store, compute_stats(ds, ["tp"]))
    assert set(read_stats(tiny_store).data_vars) == {"tp"}


def test_stats_to_dict_gives_plain_floats(tiny_synthetic):
    d = stats_to_dict(compute_stats(tiny_synthetic, ["u10"]))
    assert set(d) == {"u10"} and all(isinstance(v, float) for v in d["u10"])


def test_a_constant_field_has_unusable_statistics_named_in_the_error():
    ds = xr.Dataset({"lsm": (("y", "x"), np.ones((4, 4)))})
    with pytest.raises(StatsError, match="'lsm'.*constant"):
        check_stats(compute_stats(ds).compute())


def test_statistics_missing_a_requested_variable_are_an_error_naming_it(tiny_synthetic):
    with pytest.raises(StatsError, match="'tp'"):
        check_stats(compute_stats(tiny_synthetic, ["t2m"]), ["t2m", "tp"])


def _float16_orography():
    # metres up to 3000: every square overflows float16 (max 65504), the values do not
    rng = np.random.default_rng(2)
    values = (3000.0 * rng.random((24, 20))).astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(np.square(values)).any() and np.isfinite(values).all()
    return values


@pytest.mark.parametrize("chunks", [None, {"y": 5, "x": 7}])
def test_float16_fields_are_accumulated_in_float64(chunks):
    values = _float16_orography()
    ds = xr.Dataset({"orography": (("y", "x"), values)})
    ds = ds.chunk(chunks) if chunks else ds
    got = compute_stats(ds).compute()["orography"].values
    exact = values.astype(np.float64)
    np.testing.assert_allclose(got, [exact.mean(), exact.std()], rtol=1e-12)
    assert got.dtype == np.float64


def test_packed_int16_and_float16_stores_give_numpy_float64_statistics(tmp_path):
    # on disk: t2m packed as int16 with scale_factor/add_offset (decoded on read), orography
    # as float16; the statistics are those of the decoded values in float64
    rng = np.random.default_rng(3)
    t2m = 280.0 + 10.0 * rng.standard_normal((6, 24, 20))
    orog = _float16_orography()
    ds = xr.Dataset({"t2m": (("time", "y", "x"), t2m), "orography": (("y", "x"), orog)})
    encoding = {
        "t2m": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32768}
    }
    ds.to_zarr(tmp_path / "packed.zarr", encoding=encoding, consolidated=False)
    back = xr.open_zarr(tmp_path / "packed.zarr", consolidated=False)
    assert back["orography"].dtype == np.float16
    stats = compute_stats(back).compute()
    for name in ("t2m", "orography"):
        exact = back[name].values.astype(np.float64)
        np.testing.assert_allclose(stats[name].values, [exact.mean(), exact.std()], rtol=1e-9)
        assert check_stats(stats[[name]]) is not None  # finite, positive std


def test_statistics_of_a_declared_huge_target_are_refused_before_any_read(monkeypatch):
    from corrdiff_xr.data.integrity import READ_BUDGET_ENV, ReadBudgetError

    huge = xr.Dataset(
        {"t": (("time", "y", "x"), da.zeros((10**6, 1000, 1000), dtype="f4", chunks=(1000,) * 3))}
    )  # 10**12 values: 4 TB
    with (
        raise_if_dask_computes(),
        pytest.raises(
            ReadBudgetError,
            match=rf"largest 't'.* 4.0 TB, more than .* 256.0 GB.*{READ_BUDGET_ENV}",
        ),
    ):
        compute_stats(huge)
    monkeypatch.setenv(READ_BUDGET_ENV, "5000")
    assert compute_stats(huge)["t"].chunks is not None  # allowed, and still lazy
    with pytest.raises(ReadBudgetError, match="budget of 1.0 GB"):
        compute_stats(huge, budget_gb=1)
