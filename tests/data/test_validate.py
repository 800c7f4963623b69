"""validate / open_pair errors: one test per case, each naming the culprit."""

from __future__ import annotations

import numpy as np
import pytest

from corrdiff_xr.data import (
    CoordinateError,
    CoverageError,
    DataError,
    DimensionError,
    DTypeError,
    EmptySelectionError,
    MetadataError,
    MissingValueError,
    MissingVariableError,
    NameClashError,
    StatsError,
    StoreError,
    TimeAxisError,
    compute_stats,
    open_pair,
    synthetic_dataset,
    validate,
)


@pytest.fixture
def ds():
    return synthetic_dataset(ny=16, nx=16, nt=3, factor=4)


def test_a_valid_dataset_passes_and_is_returned_unchanged(ds):
    assert validate(ds) is ds


def test_every_error_is_a_value_error():
    import corrdiff_xr.data as data
    from corrdiff_xr.errors import CorrDiffError

    errors = [
        getattr(data, n)
        for n in data.__all__
        if isinstance(getattr(data, n), type) and issubclass(getattr(data, n), Exception)
    ]
    assert len(errors) >= 12 and DataError in errors and TimeAxisError in errors
    for err in errors:  # callers may catch the built-in type or the project's base
        assert issubclass(err, ValueError) and issubclass(err, CorrDiffError), err
    assert issubclass(TimeAxisError, CoordinateError)


def test_a_missing_variable_is_named_with_what_the_dataset_has(ds):
    with pytest.raises(
        MissingVariableError,
        match=r"target variable 'd2m' is not in the dataset.*'t2m'",
    ):
        validate(ds, targets=["d2m"])


def test_a_variable_with_unknown_dims_is_named_with_the_expected_dims(ds):
    bad = ds.assign(z500=(("time", "level"), np.zeros((3, 2)), {"units": "m", "long_name": "z"}))
    with pytest.raises(DimensionError, match=r"'z500' has dims \('time', 'level'\); expected"):
        validate(bad)


def test_transposed_dims_are_reported_with_a_hint(ds):
    bad = ds.assign(t2m=ds.t2m.transpose("time", "x", "y"))
    with pytest.raises(DimensionError, match=r"'t2m'.*wrong order"):
        validate(bad)


def test_a_variable_requested_in_the_wrong_role_is_named(ds):
    with pytest.raises(DimensionError, match=r"'msl' was requested as target.*input"):
        validate(ds, targets=["msl"])


def test_a_missing_dimension_is_named(ds):
    bad = ds.drop_vars(["orography", "lsm", "t2m", "u10", "v10", "tp", "lat", "lon", "y", "x"])
    with pytest.raises(DimensionError, match="dimension 'y' is missing"):
        validate(bad, require_targets=False)


def test_a_dimension_without_coordinate_is_named(ds):
    with pytest.raises(CoordinateError, match="dimension 'x_coarse' has no coordinate"):
        validate(ds.drop_vars("x_coarse"))


def test_mismatched_time_axes_name_the_differing_times(ds):
    from corrdiff_xr.data import combine

    inputs = ds[["msl", "tcwv"]]
    targets = ds[["t2m"]].isel(time=slice(1, 3))
    with pytest.raises(
        TimeAxisError,
        match=r"time axes.*coarse \(3 steps\).*fine \(2 steps\).*2020-01-01",
    ):
        combine(inputs, targets)


def test_time_that_is_not_datetime_is_an_error(ds):
    with pytest.raises(TimeAxisError, match="'time' has dtype int64"):
        validate(ds.assign_coords(time=np.arange(3)))


def test_duplicate_times_are_named(ds):
    times = ds.time.values.copy()
    times[2] = times[1]
    with pytest.raises(TimeAxisError, match=r"'time' repeats \[.*2020-01-01T01"):
        validate(ds.assign_coords(time=times))


def test_a_coarse_grid_that_does_not_cover_the_fine_domain_names_the_edge(ds):
    shifted = ds.assign_coords(x_coarse=ds.x_coarse + 0.2)
    with pytest.raises(CoverageError, match=r"west edge.*'lon'.*'x_coarse'"):
        validate(shifted)


def test_a_non_monotonic_coordinate_is_named_with_where_it_breaks(ds):
    y = ds.y.values.copy()
    y[[5, 6]] = y[[6, 5]]
    with pytest.raises(CoordinateError, match=r"'y' is not strictly monotonic \(breaks at index"):
        validate(ds.assign_coords(y=y))


def test_a_non_numeric_variable_is_named_with_its_dtype(ds):
    bad = ds.assign(lsm=ds.lsm.astype(str).assign_attrs(units="1", long_name="mask"))
    with pytest.raises(DTypeError, match=r"'lsm' has dtype <U.*numeric"):
        validate(bad)


def test_nans_in_a_static_field_are_counted_and_named(ds):
    oro = ds.orography.values.copy()
    oro[3, :2] = np.nan
    bad = ds.assign(orography=(("y", "x"), oro, ds.orography.attrs))
    with pytest.raises(MissingValueError, match=r"static field 'orography' holds 2 NaN"):
        validate(bad)


def test_nans_in_a_2d_coordinate_are_named(ds):
    lat = ds.lat.values.copy()
    lat[0, 0] = np.nan
    with pytest.raises(CoordinateError, match=r"'lat' holds 1 NaN"):
        validate(ds.assign_coords(lat=(("y", "x"), lat)))


def test_a_2d_lat_with_the_wrong_shape_is_named_with_the_expected_shape(ds):
    bad = ds.assign_coords(lat_coarse=(("y", "x"), ds.lat.values))
    with pytest.raises(
        CoordinateError,
        match=r"'lat_coarse' has dims \('y', 'x'\).*expected dims \('y_coarse', 'x_coarse'\)",
    ):
        validate(bad)


def test_a_missing_units_attribute_is_named(ds):
    bad = ds.copy()
    bad["tcwv"].attrs = {"long_name": "column water"}
    with pytest.raises(MetadataError, match=r"'tcwv' lacks the CF attribute\(s\) \['units'\]"):
        validate(bad)


def test_an_empty_time_selection_is_an_error(ds):
    with pytest.raises(EmptySelectionError, match="dimension 'time' is empty"):
        validate(ds.isel(time=slice(0, 0)))


def test_no_targets_is_an_error_unless_not_required(ds):
    inputs_only = ds.drop_vars(["t2m", "u10", "v10", "tp"])
    with pytest.raises(EmptySelectionError, match="no target variables"):
        validate(inputs_only)
    validate(inputs_only, require_targets=False)


def test_the_same_name_as_input_and_target_is_a_clash(ds):
    with pytest.raises(NameClashError, match="'t2m' is selected as both input and target"):
        validate(ds, inputs=["t2m"], targets=["t2m"])


def test_an_unknown_url_protocol_lists_the_supported_ones():
    with pytest.raises(
        StoreError, match=r"unknown protocol 'ftp'.*file://.*memory://.*s3://.*gs://"
    ):
        open_pair("ftp://example.org/data.zarr")


def test_a_missing_store_is_named(tmp_path):
    with pytest.raises(StoreError, match=r"'.*nowhere\.zarr' does not exist"):
        open_pair(tmp_path / "nowhere.zarr")


def test_a_corrupted_store_is_named(tmp_path, ds):
    path = tmp_path / "broken.zarr"
    ds.to_zarr(path, consolidated=False)
    (path / "zarr.json").write_text("{ this is not json")
    with pytest.raises(StoreError, match=r"cannot read Zarr store '.*broken\.zarr'"):
        open_pair(path)


def test_a_directory_that_is_not_a_zarr_store_is_named(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"cannot read Zarr store '.*plain'"):
        open_pair(tmp_path / "plain")


def test_missing_statistics_for_a_variable_are_named(ds):
    with pytest.raises(StatsError, match="statistics are missing for variable 'lsm'"):
        open_pair(
            ds,
            stats=compute_stats(
                ds,
                [
                    "t2m_coarse",
                    "u10_coarse",
                    "v10_coarse",
                    "tp_coarse",
                    "msl",
                    "tcwv",
                    "t2m",
                    "u10",
                    "v10",
                    "tp",
                    "orography",
                ],
            ),
        )


def test_open_pair_can_check_static_values_on_request(ds):
    bad = ds.assign(lsm=ds.lsm.where(ds.x < ds.x[10]))
    open_pair(bad)  # reads nothing by default
    with pytest.raises(MissingValueError, match="'lsm'"):
        open_pair(bad, check_values=True)
