"""Units: data in other units than the model's is converted where safe, refused otherwise."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.testing import raise_if_dask_computes, tiny_corrdiff
from corrdiff_xr.units import (
    UnitsError,
    check_pair,
    check_spelling,
    conversion,
    same_units,
    to_model_units,
)

FAST = {"steps": 2, "patch": 8, "overlap": 2, "members": 2, "seed": 4}


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=2, chunks={"time": 1})
    codec = Codec.from_pair(open_pair(ds))
    model = tiny_corrdiff(codec, (16, 16))
    reference = downscale(ds, model, **FAST).compute(scheduler="sync")
    return ds, codec, model, reference


def _relabel(ds, name, units, scale=1.0, offset=0.0):
    var = ds[name]
    return ds.assign({name: (var * scale + offset).assign_attrs({**var.attrs, "units": units})})


def _close(a, b, name):
    """Equal to float32 rounding (of the converted inputs, carried through the network)."""
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * np.abs(b).max(), err_msg=name)


def test_the_codec_records_the_units_of_the_training_data(setup):
    ds, codec, _, _ = setup
    assert codec.units == {n: ds[n].attrs["units"] for n in codec.in_channels + codec.targets}
    assert Codec.from_dict(codec.to_dict()).units == codec.units


@pytest.mark.parametrize(
    ("data", "model", "scale", "offset"),
    [
        ("degC", "K", 1.0, 273.15),
        ("K", "degC", 1.0, -273.15),
        ("hPa", "Pa", 100.0, 0.0),
        ("%", "1", 0.01, 0.0),
        ("km", "m", 1000.0, 0.0),
        ("mm", "kg m-2", 1.0, 0.0),  # a depth of liquid water
        ("m", "kg m-2", 1000.0, 0.0),
        ("kg m-2 s-1", "mm h-1", 3600.0, 0.0),
    ],
)
def test_simple_conversions_are_the_physical_ones(data, model, scale, offset):
    got = conversion(data, model)
    assert got == pytest.approx((scale, offset), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize(
    ("data", "model"),
    [
        ("m", "K"),
        ("degrees", "1"),
        ("kg m-2", "kg m-2 s-1"),
        ("dB", "1"),
        ("bananas", "m"),
    ],
)
def test_unsafe_or_impossible_conversions_are_refused_naming_both_units(data, model):
    with pytest.raises(
        UnitsError, match=f"'v' is in units '{data}' but the model expects '{model}'"
    ):
        conversion(data, model, name="v")


@pytest.mark.parametrize("spelling", ["m s-1", "m/s", "m s**-1", "meter / second"])
def test_unit_spellings_agree(spelling):
    assert conversion(spelling, "m s-1") == (1.0, 0.0)
    assert same_units(spelling, "m/s")
    assert not same_units("mm", "kg m-2")  # converts one to one, but is another unit
    assert not same_units("m", "K")


def test_a_celsius_copy_of_the_inputs_gives_the_same_members_as_kelvin(setup):
    ds, _, model, reference = setup
    other = _relabel(ds, "t2m_coarse", "degC", offset=-273.15)
    other = _relabel(other, "msl", "hPa", scale=0.01)
    other = _relabel(other, "orography", "km", scale=1e-3)  # a static field
    with raise_if_dask_computes():  # the conversion is lazy
        out = downscale(other, model, **FAST)
    out = out.compute(scheduler="sync")
    for name in reference.data_vars:
        _close(out[name].values, reference[name].values, name)
    # the tolerance tells the units apart: Celsius values labelled Kelvin give other members
    wrong = downscale(_relabel(ds, "t2m_coarse", "K", offset=-273.15), model, **FAST)
    with pytest.raises(AssertionError):
        _close(wrong.t2m.values, reference.t2m.values, "t2m")


def test_re_spelt_units_give_identical_members(setup):
    ds, _, model, reference = setup
    out = downscale(_relabel(ds, "u10_coarse", "m/s"), model, **FAST).compute(scheduler="sync")
    for name in reference.data_vars:
        np.testing.assert_array_equal(out[name].values, reference[name].values)


def test_an_incompatible_unit_is_refused_naming_the_variable(setup):
    ds, _, model, _ = setup
    with pytest.raises(UnitsError, match=r"'t2m_coarse' is in units 'm' but the model expects 'K'"):
        downscale(_relabel(ds, "t2m_coarse", "m"), model, **FAST)
    with pytest.raises(UnitsError, match=r"'lsm' is in units 'K' but the model expects '1'"):
        downscale(_relabel(ds, "lsm", "K"), model, **FAST)


def test_outputs_are_labelled_with_the_models_units(setup):
    ds, codec, model, _ = setup
    # targets present in degC (as truth data might be) must not relabel the model's Kelvin
    truth = _relabel(ds, "t2m", "degC", offset=-273.15)
    for output in ("ensemble", "mean"):
        out = downscale(truth, model, output=output, **FAST)
        assert {n: out[n].attrs["units"] for n in out.data_vars} == {
            n: codec.units[n] for n in codec.targets
        }
    decoded = codec.decode_targets(np.zeros((2, len(codec.targets), 16, 16)), truth)
    assert decoded["t2m"].attrs["units"] == "K"
    assert decoded["t2m"].attrs["long_name"] == truth["t2m"].attrs["long_name"]


def test_data_without_units_is_refused_and_a_codec_without_units_warns(setup):
    ds, codec, _, _ = setup
    bare = ds.assign(msl=ds.msl.copy().assign_attrs(units=""))
    with pytest.raises(UnitsError, match=r"'msl' has no 'units' attribute.*= 'Pa'"):
        to_model_units(bare, codec)
    attrs = {
        n: {k: v for k, v in a.items() if not (n == "msl" and k == "units")}
        for n, a in codec.attrs.items()
    }
    old = dataclasses.replace(codec, attrs=attrs)
    with pytest.warns(UserWarning, match=r"no units for \['msl'\]"):
        converted = to_model_units(_relabel(ds, "msl", "hPa"), old)
    assert converted.msl.attrs["units"] == "hPa"  # used as it is


def test_check_pair_refuses_other_units_and_accepts_other_spellings(setup):
    ds, codec, _, _ = setup
    check_pair(open_pair(ds), codec)
    check_pair(open_pair(_relabel(ds, "u10", "m/s")), codec)
    with pytest.raises(
        UnitsError, match=r"'t2m' is in units 'degC' but the model was trained in 'K'"
    ):
        check_pair(open_pair(_relabel(ds, "t2m", "degC", offset=-273.15)), codec)
    with pytest.raises(UnitsError, match=r"'orography' is in units 'K'.*convert"):
        check_pair(open_pair(_relabel(ds, "orography", "K")), codec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matching units: nothing to warn about
        check_pair(open_pair(ds), codec)


@pytest.mark.parametrize(
    ("units", "why"),
    [
        ("10**10**10", "it raises a power to a power"),  # pint would evaluate 10**(10**10)
        ("10^10^10", "it raises a power to a power"),
        ("10**(10**10)", "it raises a power to a power"),
        ("(km**10)**10", "it raises a power to a power"),
        ("(km)**10", "it raises a bracketed group to a power"),
        ("m**1000000000", "its exponent 1000000000 exceeds 100"),
        ("km-1000", "its exponent -1000 exceeds 100"),
        ("m " * 51, "it is 102 characters long, more than the 100 read"),
    ],
)
def test_hostile_units_strings_are_refused_before_pint_evaluates_them(units, why):
    shown = units if len(units) <= 100 else units[:40] + "..."
    with pytest.raises(
        UnitsError, match=f"^variable 't2m' has units '{re.escape(shown)}', and {why}"
    ):
        conversion(units, "K", name="t2m")
    with pytest.raises(UnitsError, match="^the model's variable 't2m' has units"):
        conversion("K", units, name="t2m")  # a checkpoint's units are read the same way
    assert not same_units(units, "K")


@pytest.mark.parametrize(
    "units",
    ["kg m-2 s-1", "m**2 s**-2", "W m^-2", "1e-3 kg kg-1", "1e20 m-3", "degrees_north", "m2 s-2"],
)
def test_ordinary_cf_spellings_pass_the_spelling_check(units):
    check_spelling(units)  # no error; whether pint can read them is conversion's to say


def test_a_hostile_units_attribute_is_refused_by_downscale_naming_the_variable(setup):
    ds, _, model, _ = setup
    with pytest.raises(UnitsError, match="^variable 't2m_coarse' has units '10\\*\\*10\\*\\*10'"):
        downscale(_relabel(ds, "t2m_coarse", "10**10**10"), model, **FAST)
