"""Time axes of any CF calendar: exact integer keys, validation, parsing, pairing."""

from __future__ import annotations

import datetime

import cftime
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data.layout import TimeAxisError
from corrdiff_xr.data.times import (
    align,
    calendar_of,
    check_time_axis,
    parse_times,
    to_ns,
)

DAY = 86_400 * 10**9


def _cf(calendar, start="2001-02-27", periods=4, freq="1D"):
    return xr.date_range(
        start, periods=periods, freq=freq, calendar=calendar, use_cftime=True
    ).values


def test_standard_cftime_and_datetime64_give_the_same_keys():
    std = np.array(["1969-12-31T18", "2001-03-01T06"], dtype="datetime64[ns]")
    cf = np.array(
        [
            cftime.datetime(1969, 12, 31, 18, calendar="proleptic_gregorian"),
            cftime.datetime(2001, 3, 1, 6, calendar="proleptic_gregorian"),
        ]
    )
    np.testing.assert_array_equal(to_ns(cf), std.astype(np.int64))
    assert to_ns(std)[0] == -6 * 3600 * 10**9


def test_keys_count_days_in_the_axis_calendar():
    # 360_day: 31 years of 360 days, then 2 months of 30 days
    assert (
        to_ns(np.array([cftime.datetime(2001, 3, 1, calendar="360_day")]))[0]
        == (31 * 360 + 60) * DAY
    )
    # noleap: 31 years of 365 days + Jan + Feb(28)
    assert (
        to_ns(np.array([cftime.datetime(2001, 3, 1, calendar="noleap")]))[0]
        == (31 * 365 + 59) * DAY
    )
    days = np.diff(to_ns(_cf("360_day", "2001-02-29"))) // DAY
    assert days.tolist() == [1, 1, 1]  # 29, 30 Feb then 1 Mar exist in 360_day


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "all_leap", "julian"])
def test_climate_calendars_pass_validation(calendar):
    check_time_axis(_cf(calendar))
    assert calendar_of(_cf(calendar)) == calendar


def test_bad_time_axes_are_refused_naming_the_problem():
    cal = _cf("noleap")
    with pytest.raises(TimeAxisError, match="expected datetimes"):
        check_time_axis(np.arange(3.0))
    with pytest.raises(TimeAxisError, match="repeats"):
        check_time_axis(np.concatenate([cal, cal[:1]]))
    with pytest.raises(TimeAxisError, match="not increasing"):
        check_time_axis(cal[::-1])
    with pytest.raises(TimeAxisError, match="mixes calendars"):
        check_time_axis(np.concatenate([cal[:1], _cf("360_day", "2003-01-01")[:1]]))
    with pytest.raises(TimeAxisError, match="NaT"):
        check_time_axis(np.array(["2000-01-01", "NaT"], dtype="datetime64[ns]"))


def test_parse_times_follows_the_axis_calendar():
    got = parse_times(["2001-02-30T06"], like=_cf("360_day"))
    assert got[0] == cftime.datetime(2001, 2, 30, 6, calendar="360_day")
    with pytest.raises(TimeAxisError, match="noleap"):
        parse_times(["2000-02-29"], like=_cf("noleap"))
    std = parse_times(["2020-01-01T03"], like=np.array(["2020-01-01"], dtype="datetime64[ns]"))
    assert std.dtype == np.dtype("datetime64[ns]") and str(std[0]).startswith("2020-01-01T03")


def test_exact_alignment_keeps_common_times_and_reports_the_rest():
    coarse = np.arange(
        "2020-01-01T00", "2020-01-02T00", np.timedelta64(1, "h"), dtype="datetime64[ns]"
    )
    fine = coarse[::3][2:] + np.timedelta64(0, "h")
    fine = np.concatenate([fine, [np.datetime64("2021-01-01", "ns")]])
    a = align(coarse, fine)
    np.testing.assert_array_equal(coarse[a.coarse_index], fine[a.fine_index])
    assert (a.dropped_coarse, a.dropped_fine) == (24 - 6, 1)
    assert "dropped 18 coarse and 1 fine" in a.report


def test_nearest_alignment_respects_the_tolerance_and_pairs_each_coarse_time_once():
    coarse = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
    fine = np.array(
        ["2019-12-31T23:50", "2020-01-01T00:10", "2020-01-01T03", "2020-01-01T06:20"],
        dtype="datetime64[ns]",
    )
    a = align(coarse, fine, match="nearest", tolerance="15min")
    assert a.coarse_index.tolist() == [0] and a.fine_index.tolist() == [
        0
    ]  # 23:50 and 00:10 tie: first
    b = align(coarse, fine, match="nearest", tolerance="30min")
    assert b.coarse_index.tolist() == [0, 1] and b.fine_index.tolist() == [0, 3]
    with pytest.raises(TimeAxisError, match="needs a tolerance"):
        align(coarse, fine, match="nearest")
    with pytest.raises(TimeAxisError, match="no fine time matches"):
        align(coarse, fine + np.timedelta64(365, "D"))


@pytest.mark.parametrize(
    ("tolerance", "problem"),
    [("30", "has no unit"), (30, "has no unit"), (0.5, "has no unit"), ("NaT", "is NaT"),
     (np.timedelta64("NaT"), "is NaT"), ("-10min", "is negative"), ("soon", "not a duration")],
)  # fmt: skip
def test_a_tolerance_is_a_duration_with_a_unit(tolerance, problem):
    times = np.array(["2020-01-01T00", "2020-01-01T01"], dtype="datetime64[ns]")
    with pytest.raises(
        TimeAxisError, match=f"time tolerance .*{problem}.*; give a duration"
    ) as err:
        align(times, times + np.timedelta64(10, "m"), match="nearest", tolerance=tolerance)
    assert repr(tolerance) in str(err.value)
    with pytest.raises(TimeAxisError, match="has no unit"):  # even where exact matching ignores it
        align(times, times, tolerance="30")


@pytest.mark.parametrize(
    "tolerance", ["15min", np.timedelta64(15, "m"), datetime.timedelta(minutes=15)]
)
def test_a_tolerance_with_a_unit_pairs_within_it(tolerance):
    coarse = np.array(["2020-01-01T00", "2020-01-01T01"], dtype="datetime64[ns]")
    found = align(coarse, coarse + np.timedelta64(10, "m"), match="nearest", tolerance=tolerance)
    assert found.fine_index.tolist() == [0, 1]


def test_pairing_two_calendars_is_refused():
    with pytest.raises(TimeAxisError, match="share a calendar"):
        align(_cf("noleap"), _cf("360_day"))
