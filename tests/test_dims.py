"""The layout's naming rules: which input goes with a target; geographic coordinate attributes."""

from __future__ import annotations

import cf_xarray  # noqa: F401  (registers ds.cf)
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.dims import LAT_ATTRS, LON_ATTRS, input_for
from corrdiff_xr.scoring.baselines import baseline_from_inputs


@pytest.mark.parametrize(
    "inputs,target,expected",
    [
        (["t2m", "t2m_coarse", "u10m"], "t2m", "t2m"),  # the same name first
        (["t2m_coarse", "t2m_era5", "u10m"], "t2m", "t2m_coarse"),  # then the layout's suffix
        (["u10m", "t2m_era5"], "t2m", "t2m_era5"),  # then the only target_*
        (["t2m_era5", "t2m_cmip6"], "t2m", None),  # two candidates: ambiguous
        (["t2mx", "tp"], "t2m", None),  # a longer name is not a match
        ([], "t2m", None),
    ],
)
def test_input_for_a_target(inputs, target, expected):
    assert input_for(target, inputs) == expected


def test_the_baseline_and_the_plots_pair_inputs_by_the_same_rule():
    from corrdiff_xr.plot.maps import _columns

    grid = np.zeros((1, 2, 2))
    inputs = xr.Dataset(
        {n: (("time", "y", "x"), grid + i) for i, n in enumerate(["t2m_coarse", "tp_a", "tp_b"])}
    )
    base = baseline_from_inputs(inputs, ("t2m",))
    np.testing.assert_array_equal(base["t2m"], inputs["t2m_coarse"])
    with pytest.raises(KeyError, match="no unique coarse input for target 'tp'"):
        baseline_from_inputs(inputs, ("tp",))
    forecast = xr.Dataset({"tp": (("member", "time", "y", "x"), grid[None])})
    # no input column when the only target's input is ambiguous, one when it is found
    assert "input" not in _columns(["tp"], forecast, None, inputs, 1, False, "member")
    assert "input" in _columns(["t2m"], forecast, None, inputs, 1, False, "member")


def test_geographic_attributes_are_cf_and_cannot_be_changed_in_place():
    assert LAT_ATTRS["units"] == "degrees_north" and LAT_ATTRS["standard_name"] == "latitude"
    assert LON_ATTRS["units"] == "degrees_east" and LON_ATTRS["standard_name"] == "longitude"
    with pytest.raises(TypeError):
        LAT_ATTRS["units"] = "degrees"  # type: ignore[index]
    ds = xr.Dataset(coords={"lat": ("y", [50.0], LAT_ATTRS), "lon": ("x", [8.0], LON_ATTRS)})
    ds["lat"].attrs["comment"] = "a copy"
    assert "comment" not in LAT_ATTRS
    # what cf-xarray (and so the archive adoption) reads as latitude and longitude
    assert ds.cf.coordinates == {"latitude": ["lat"], "longitude": ["lon"]}
