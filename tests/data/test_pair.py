"""open_pair and DownscalingData: lazy, validated, from paths and fsspec URLs."""

from __future__ import annotations

import uuid

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr.data import (
    DownscalingData,
    EmptySelectionError,
    StatsError,
    compute_stats,
    open_pair,
    write_stats,
)
from corrdiff_xr.testing import raise_if_dask_computes


def test_opening_a_store_reads_no_array_data(tiny_store):
    with raise_if_dask_computes():
        pair = open_pair(tiny_store)
        on_fine = pair.inputs_on_fine
        stats = pair.stats
        sub = pair.isel(time=slice(1, 3), y=slice(0, 16))
        _ = sub.inputs_on_fine
    assert isinstance(on_fine["msl"].data, da.Array)
    assert isinstance(stats["t2m"].data, da.Array)
    assert isinstance(pair.fine["t2m"].data, da.Array)


def test_roles_are_found_from_dims(tiny_store, tiny_synthetic):
    pair = open_pair(tiny_store)
    assert isinstance(pair, DownscalingData)
    assert set(pair.inputs) == {
        "t2m_coarse",
        "u10_coarse",
        "v10_coarse",
        "tp_coarse",
        "msl",
        "tcwv",
    }
    assert set(pair.targets) == {"t2m", "u10", "v10", "tp"}
    assert set(pair.static) == {"orography", "lsm"}
    assert pair.coarse["msl"].dims == ("time", "y_coarse", "x_coarse")
    assert pair.static_fields["lsm"].dims == ("y", "x")
    xr.testing.assert_identical(pair.fine.t2m.compute(), tiny_synthetic.t2m.compute())


def test_explicit_names_select_variables_in_the_order_given(tiny_synthetic):
    pair = open_pair(tiny_synthetic, inputs=["tcwv", "msl"], targets="t2m", static=["lsm"])
    assert pair.inputs == ("tcwv", "msl") and pair.targets == ("t2m",) and pair.static == ("lsm",)
    assert set(pair.dataset.data_vars) == {"tcwv", "msl", "t2m", "lsm"}


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_stores_open_from_fsspec_urls(tmp_path, tiny_synthetic, scheme):
    if scheme == "file":
        url = f"file://{tmp_path}/a.zarr"
    else:
        url = f"memory://{uuid.uuid4().hex}/a.zarr"
    tiny_synthetic.to_zarr(
        url,
        mode="w",
        consolidated=False,
        storage_options={"auto_mkdir": True} if scheme == "file" else None,
    )
    pair = open_pair(url)
    np.testing.assert_array_equal(pair.fine.tp.values, tiny_synthetic.tp.values)


def test_stored_statistics_are_read_back_and_used(tiny_store):
    pair = open_pair(tiny_store)
    assert pair.stored_stats is None
    computed = pair.stats.compute()
    write_stats(tiny_store, pair.stats)
    again = open_pair(tiny_store)
    assert again.stored_stats is not None
    xr.testing.assert_allclose(again.stats, computed)
    assert again.stats["t2m"].chunks is None  # read, not recomputed


def test_given_statistics_missing_a_variable_are_an_error_naming_it(tiny_synthetic):
    stats = compute_stats(tiny_synthetic, ["t2m"])
    with pytest.raises(StatsError, match="'msl'"):
        open_pair(tiny_synthetic, stats=stats)


def test_selections_keep_the_layout_the_statistics_and_the_weights(tiny_synthetic):
    pair = open_pair(tiny_synthetic)
    one = pair.isel(time=2)
    assert one.fine.sizes["time"] == 1
    full = pair.stats.compute()
    xr.testing.assert_identical(one.stats.compute(), full)  # of the full data, not of the slice
    assert float(compute_stats(one.fine)["t2m"][0]) != float(full["t2m"][0])
    by_label = pair.sel(time="2020-01-01T02:00")
    xr.testing.assert_identical(by_label.fine.compute(), one.fine.compute())


def test_a_spatial_window_regrids_like_the_window_of_the_full_field(tiny_synthetic):
    pair = open_pair(tiny_synthetic)
    window = pair.isel(y=slice(8, 24), x=slice(4, 20))
    assert window.weights is not None  # sliced, not recomputed
    expected = pair.inputs_on_fine.isel(y=slice(8, 24), x=slice(4, 20))
    xr.testing.assert_allclose(window.inputs_on_fine.compute(), expected.compute())


def test_an_empty_selection_is_an_error_naming_the_dim(tiny_synthetic):
    pair = open_pair(tiny_synthetic)
    with pytest.raises(EmptySelectionError, match="'time'"):
        pair.isel(time=slice(10, 20))
    with pytest.raises(EmptySelectionError, match="'level'"):
        pair.isel(level=0)


def test_inference_data_without_targets_opens_when_targets_are_not_required(
    tiny_synthetic,
):
    ds = tiny_synthetic.drop_vars(["t2m", "u10", "v10", "tp"])
    pair = open_pair(ds, require_targets=False)
    assert pair.targets == () and len(pair.inputs) == 6


def test_the_accessor_forwards_to_open_pair(tiny_synthetic):
    pair = tiny_synthetic.corrdiff.pair(targets=["tp"])
    assert pair.targets == ("tp",)
    assert tiny_synthetic.corrdiff.validate() is tiny_synthetic


def test_statistics_and_regridding_compute_the_same_on_a_distributed_cluster(
    tiny_store,
):
    from distributed import Client, LocalCluster

    pair = open_pair(tiny_store)
    expected_stats = pair.stats.compute(scheduler="sync")
    expected_fine = pair.inputs_on_fine.compute(scheduler="sync")
    # worker processes: the graphs (generation, regridding, moments) must pickle
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster),
    ):
        stats = pair.stats.compute()
        fine = pair.inputs_on_fine.compute()
    xr.testing.assert_identical(stats, expected_stats)
    xr.testing.assert_identical(fine, expected_fine)


def test_a_selection_with_its_own_statistics_ignores_the_times_left_out(tiny_store):
    pair = open_pair(tiny_store)
    write_stats(tiny_store, pair.stats)  # stored statistics of all four times
    pair = open_pair(tiny_store)
    assert pair.stored_stats is not None
    first = pair.isel(time=slice(0, 2), stats="selection")
    expected = compute_stats(pair.dataset.isel(time=slice(0, 2)), pair.names).compute()
    xr.testing.assert_allclose(first.stats.compute(), expected)
    assert float(first.stats["t2m"][0]) != float(pair.stats["t2m"][0])
    # selecting every time (in any order) describes the same data: stored statistics kept
    assert pair.isel(time=[3, 1, 0, 2], stats="selection").stored_stats is pair.stats
    assert pair.sel(time=slice(None), stats="selection").stored_stats is pair.stats
    with pytest.raises(ValueError, match="stats must be 'keep' or 'selection'"):
        pair.isel(time=0, stats="train")


def test_inputs_alone_keep_the_fine_grid_and_regrid_to_it(tiny_synthetic):
    # no target or static variable lies on the fine dims; the fine grid must survive anyway
    fine = ("y", "x", "lat", "lon")
    inputs = [n for n, v in tiny_synthetic.data_vars.items() if "y_coarse" in v.dims]
    ds = tiny_synthetic[inputs].assign_coords({c: tiny_synthetic[c] for c in fine})
    pair = open_pair(ds, require_targets=False)
    on_fine = pair.inputs_on_fine
    assert on_fine.sizes["y"] == tiny_synthetic.sizes["y"]
    np.testing.assert_array_equal(on_fine["lat"].values, tiny_synthetic["lat"].values)
    expected = open_pair(tiny_synthetic).inputs_on_fine[inputs[0]]
    np.testing.assert_array_equal(on_fine[inputs[0]].values, expected.values)
