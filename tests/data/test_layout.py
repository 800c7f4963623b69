"""The canonical layout: roles from dims, combining parts."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import (
    DimensionError,
    NameClashError,
    TimeAxisError,
    combine,
    layout,
    roles,
    synthetic_dataset,
    validate,
)
from corrdiff_xr.data.layout import role_of


def test_roles_follow_from_dims_sorted_whatever_the_dataset_order():
    ds = synthetic_dataset(ny=8, nx=8, nt=1)
    r = roles(ds)
    assert r.inputs == ("msl", "t2m_coarse", "tcwv", "tp_coarse", "u10_coarse", "v10_coarse")
    assert r.targets == ("t2m", "tp", "u10", "v10")
    assert r.static == ("lsm", "orography")
    # the order a store lists its variables in (filesystem, hash seed) must not matter
    names = list(ds.data_vars)
    assert names != sorted(names)
    for order in (names[::-1], sorted(names), names[3:] + names[:3]):
        assert roles(ds[order]) == r


def test_given_names_keep_their_order_and_the_rest_are_sorted():
    from corrdiff_xr.data import select_roles

    ds = synthetic_dataset(ny=8, nx=8, nt=1)
    sel = select_roles(ds[list(ds.data_vars)[::-1]], targets=["v10", "t2m"])
    assert sel.targets == ("v10", "t2m")
    assert sel.inputs == tuple(sorted(sel.inputs)) and len(sel.inputs) == 6
    assert sel.static == ("lsm", "orography")


@pytest.mark.parametrize(
    "dims, role",
    [
        (("time", "y_coarse", "x_coarse"), "input"),
        (("time", "y", "x"), "target"),
        (("y", "x"), "static"),
    ],
)
def test_each_role_has_exactly_one_dims_signature(dims, role):
    var = xr.DataArray(np.zeros((1,) * len(dims)), dims=dims, name="v")
    assert role_of(var) == role


def test_dims_that_fit_no_role_are_an_error_listing_the_roles():
    var = xr.DataArray(np.zeros((2, 2)), dims=("time", "y"), name="half")
    with pytest.raises(DimensionError, match=r"'half'.*\('time', 'y', 'x'\) \(target\)"):
        role_of(var)


def test_separate_coarse_fine_and_static_parts_combine_into_a_valid_dataset():
    ds = synthetic_dataset(ny=8, nx=8, nt=2)
    coarse = ds[["msl", "tcwv"]]
    fine = ds[["t2m"]]
    static = ds[["lsm"]]
    merged = combine(coarse, fine, static)
    validate(merged)
    assert roles(merged) == layout.Roles(("msl", "tcwv"), ("t2m",), ("lsm",))


def test_combining_parts_with_different_times_is_an_error():
    ds = synthetic_dataset(ny=8, nx=8, nt=3)
    with pytest.raises(TimeAxisError, match=r"only in coarse \['2020-01-01 02:00"):
        combine(ds[["msl"]], ds[["t2m"]].isel(time=slice(0, 2)))


def test_combining_parts_that_share_a_name_is_a_clash():
    ds = synthetic_dataset(ny=8, nx=8, nt=1)
    fine = ds[["t2m"]]
    clash = fine.rename(t2m="msl")
    with pytest.raises(NameClashError, match="'msl'"):
        combine(ds[["msl"]], clash)


def test_the_layout_docstring_describes_every_dim_and_the_stats_group():
    doc = layout.__doc__
    for word in (
        "time",
        "y_coarse",
        "x_coarse",
        "lat_coarse",
        "standard_name",
        "units",
        "long_name",
        layout.STATS_GROUP,
        "Chunking",
    ):
        assert word in doc, word
