"""Package short names map to ERA5/ARCO and cfgrib names, with levels and units that are right."""

from __future__ import annotations

import pytest
from cf_xarray.units import units as ureg

from corrdiff_xr.data import names
from corrdiff_xr.data.layout import DataError


@pytest.mark.parametrize(
    ("name", "era5", "grib"),
    [
        ("t2m", "2m_temperature", "t2m"),
        ("u10m", "10m_u_component_of_wind", "u10"),
        ("v10m", "10m_v_component_of_wind", "v10"),
        ("u100m", "100m_u_component_of_wind", "u100"),
        ("msl", "mean_sea_level_pressure", "msl"),
        ("sp", "surface_pressure", "sp"),
        ("tcwv", "total_column_water_vapour", "tcwv"),
        ("z500", {"variable": "geopotential", "level": 500}, {"variable": "z", "level": 500}),
        ("t850", {"variable": "temperature", "level": 850}, {"variable": "t", "level": 850}),
        (
            "u500",
            {"variable": "u_component_of_wind", "level": 500},
            {"variable": "u", "level": 500},
        ),
        ("q700", {"variable": "specific_humidity", "level": 700}, {"variable": "q", "level": 700}),
        ("r850", {"variable": "relative_humidity", "level": 850}, {"variable": "r", "level": 850}),
        (
            "w1000",
            {"variable": "vertical_velocity", "level": 1000},
            {"variable": "w", "level": 1000},
        ),
    ],
)
def test_short_names_map_to_era5_and_grib_names(name, era5, grib):
    assert names.DEFAULT_NAME_MAP[name] == era5
    assert names.GRIB_NAME_MAP[name] == grib


def test_every_era5_pressure_level_is_in_the_map():
    for prefix in "ztuvqrw":
        for level in names.PRESSURE_LEVELS:
            assert names.DEFAULT_NAME_MAP[f"{prefix}{level}"]["level"] == level
    assert len(names.PRESSURE_LEVELS) == 37


def test_candidates_try_the_name_then_era5_then_grib_each_once():
    assert names.candidates("u10m") == [
        ("package name", "u10m"),
        ("ERA5/ARCO", "10m_u_component_of_wind"),
        ("GRIB", "u10"),
    ]
    # cfgrib's name for t2m is the package's own: tried once
    assert [label for label, _ in names.candidates("t2m")] == ["package name", "ERA5/ARCO"]
    # a level off ERA5's list still maps by its prefix
    assert names.candidates("z55")[1] == ("ERA5/ARCO", {"variable": "geopotential", "level": 55})
    assert names.candidates("mrr") == [("package name", "mrr")]


def test_a_name_map_entry_is_used_alone():
    assert names.candidates("t2m", {"t2m": "tas"}) == [("name_map", "tas")]
    assert names.candidates("u10m", {"t2m": "tas"})[0] == ("package name", "u10m")


@pytest.mark.parametrize(
    ("name", "units", "same_as"),
    [
        ("z500", "m2 s-2", "J kg-1"),
        ("t850", "K", "K"),
        ("u10m", "m s-1", "km h-1"),
        ("q700", "kg kg-1", "1"),
        ("r850", "%", "1"),
        ("tcwv", "kg m-2", "kg m-2"),
        ("msl", "Pa", "hPa"),
        ("sp", "Pa", "hPa"),
        ("w500", "Pa s-1", "hPa h-1"),
        ("z3", "m2 s-2", "J kg-1"),  # any level, not only ERA5's
    ],
)
def test_units_are_the_quantity_era5_gives(name, units, same_as):
    assert names.units_of(name) == units
    assert ureg(units).dimensionality == ureg(same_as).dimensionality


def test_every_listed_unit_is_readable_cf():
    for units in set(names.PACKAGE_UNITS.values()):
        ureg(units)  # raises on a misspelling
    assert names.units_of("mrr") is None


def test_long_names_say_the_level():
    assert names.long_name("t850") == "Temperature at 850 hPa"
    assert names.long_name("t2m") == "2 metre temperature"
    assert names.long_name("unknown") is None


@pytest.mark.parametrize(
    ("dim", "attrs", "scale"),
    [
        ("level", {}, 1.0),
        ("pressure_level", {"units": "hPa"}, 1.0),
        ("isobaricInhPa", {}, 1.0),
        ("plev", {}, 100.0),
        ("plev", {"units": "hPa"}, 1.0),
        ("level", {"units": "Pa"}, 100.0),
        ("level", {"units": "millibars"}, 1.0),
    ],
)
def test_level_units_come_from_the_coordinate_or_its_dim(dim, attrs, scale):
    assert names.level_scale(dim, attrs) == scale


def test_selectors_are_parsed_and_bad_ones_refused_in_one_line():
    assert names.parse_selector("tas", name="t2m") == {
        "variable": "tas",
        "level": None,
        "level_dim": None,
    }
    assert names.parse_selector({"variable": "ta", "level": 850, "level_dim": "plev"}, name="t850")[
        "level"
    ] == pytest.approx(850.0)
    for bad, words in [
        (3, "give an archive variable name"),
        ({"variable": "ta", "lev": 850}, "unknown ['lev']"),
        ({"level": 850}, "expected keys 'variable'"),
        ({"variable": "ta", "level": "850"}, "not a number of hPa"),
    ]:
        with pytest.raises(DataError, match="name_map\\['t850'\\]") as err:
            names.parse_selector(bad, name="t850")
        assert words in str(err.value) and "\n" not in str(err.value)
