"""The UK 1.5 km sample in the canonical layout."""

from __future__ import annotations

import numpy as np
import pytest

from corrdiff_xr.data.sources.pp import open_pp
from corrdiff_xr.data.sources.ukhires import sample_path, uk_hires_dataset
from corrdiff_xr.testing import raise_if_dask_computes

pytest.importorskip("iris_sample_data")


@pytest.fixture(scope="module")
def ds():
    return uk_hires_dataset(target_levels=(1, 4), input_levels=(1, 7), factor=4)


def test_dims_roles_and_attrs_follow_the_canonical_layout(ds):
    assert ds.sizes == {"time": 3, "y": 204, "x": 184, "y_coarse": 51, "x_coarse": 46}
    assert ds["theta_l1"].dims == ("time", "y", "x")
    assert ds["theta_l7_coarse"].dims == ("time", "y_coarse", "x_coarse")
    assert ds["orography"].dims == ds["lsm"].dims == ("y", "x")
    assert ds["lat"].dims == ("y", "x") and ds["lat_coarse"].dims == ("y_coarse", "x_coarse")
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    for name, var in ds.data_vars.items():
        assert var.attrs["units"] and var.attrs["long_name"], name
    for dim in ("y", "x", "y_coarse", "x_coarse"):
        assert np.all(np.diff(ds[dim].values) > 0), dim


def test_building_the_dataset_leaves_data_lazy_and_chunked_by_time(ds):
    assert ds["theta_l1"].chunks[0] == (1, 1, 1)
    with raise_if_dask_computes():
        ds.isel(time=0)["theta_l1_coarse"].mean()  # building a graph computes nothing


def test_coarse_inputs_are_block_means_of_the_fine_field():
    ds = uk_hires_dataset(target_levels=(1,), factor=4)
    fine = ds["theta_l1"].values.astype(np.float64)
    coarse = ds["theta_l1_coarse"].values.astype(np.float64)
    # conservation: equal blocks => domain means agree; one block by hand
    assert np.allclose(fine.mean(axis=(1, 2)), coarse.mean(axis=(1, 2)), rtol=0, atol=1e-4)
    assert coarse[2, 5, 7] == pytest.approx(fine[2, 20:24, 28:32].mean(), abs=1e-4)


def test_targets_match_the_pp_file_on_the_cropped_grid(ds):
    src = open_pp(sample_path())
    theta = src["air_potential_temperature"].sel(model_level_number=4)
    np.testing.assert_array_equal(ds["theta_l4"].values, theta.values[:, :, :184])
    np.testing.assert_array_equal(ds["orography"].values, src["surface_altitude"].values[:, :184])


def test_coarse_coordinates_sit_at_the_centres_of_their_fine_blocks(ds):
    assert np.allclose(ds["y_coarse"], ds["y"].values.reshape(-1, 4).mean(1))
    lat_block = ds["lat"].values.reshape(51, 4, 46, 4).mean(axis=(1, 3))
    lon_block = ds["lon"].values.reshape(51, 4, 46, 4).mean(axis=(1, 3))
    # the transform is smooth: block centre of lat/lon ~ lat/lon of the block centre
    assert np.abs(ds["lat_coarse"].values - lat_block).max() < 1e-4
    assert np.abs(ds["lon_coarse"].values - lon_block).max() < 1e-4


def test_land_sea_mask_is_land_where_orography_is_nonzero(ds):
    orog, lsm = ds["orography"].values, ds["lsm"].values
    assert set(np.unique(lsm)) == {0.0, 1.0}
    assert np.array_equal(lsm == 1.0, orog != 0.0)
    assert 0.3 < lsm.mean() < 0.7  # the Irish Sea and the land around it


def test_unknown_level_is_refused_listing_the_available_ones():
    with pytest.raises(ValueError, match=r"model level 2 .*\[1, 4, 7, 10, 13, 16, 19\]"):
        uk_hires_dataset(target_levels=(2,))


def test_open_pair_accepts_the_sample_and_regrids_inputs_back_to_the_fine_grid(ds):
    from corrdiff_xr.data import open_pair

    pair = open_pair(ds)
    assert pair.targets == ("theta_l1", "theta_l4") and pair.static == ("lsm", "orography")
    regridded = pair.inputs_on_fine["theta_l1_coarse"].values
    fine = ds["theta_l1"].values
    # a bilinear field from 4x block means stays within a couple of K of the 1.5 km truth
    assert regridded.shape == fine.shape
    assert np.sqrt(np.mean((regridded - fine) ** 2)) < 2.0
