"""Time axes in any CF calendar: ``datetime64`` (the standard calendar) or cftime objects.

Climate-model archives use ``noleap``, ``360_day``, ``all_leap`` or ``julian`` calendars,
which xarray decodes to cftime objects (a ``CFTimeIndex``); reanalyses and observations use
the standard calendar, decoded to ``datetime64[ns]``. Everything in corrdiff_xr that needs a
time as a number goes through :func:`to_ns`: nanoseconds since 1970-01-01 00:00 *counted in
the axis' own calendar* (so 2001-03-01 of a 360_day axis is 31 * 360 + 60 days after 1970).
It is exact (integer arithmetic on days, seconds and microseconds), agrees with
``datetime64[ns]`` for standard and proleptic-Gregorian axes, and is a stable key for noise
(the same valid time gives the same members in any selection or chunking).

:func:`check_time_axis` is the one validation of a time coordinate; :func:`parse_times`
turns ISO strings (command-line options, config periods) into values of a given axis'
calendar; :func:`align` matches the times of two archives exactly or to the nearest within a
tolerance and reports what it dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from corrdiff_xr.data.layout import TimeAxisError
from corrdiff_xr.timekeys import calendar_of, is_cftime, to_ns

__all__ = [
    "Alignment",
    "align",
    "calendar_of",
    "check_time_axis",
    "is_cftime",
    "parse_times",
    "to_ns",
    "tolerance_ns",
]

_STANDARD = ("standard", "gregorian", "proleptic_gregorian")
#: how coarse times are matched to fine ones
TimeMatch: TypeAlias = Literal["exact", "nearest"]


def check_time_axis(values: npt.ArrayLike, *, name: str = "time") -> None:
    """Refuse a time coordinate that is not datetimes of one calendar, unique and increasing.

    Raises
    ------
    TimeAxisError
        Naming the coordinate and what is wrong (dtype, missing times, mixed calendars,
        repeats, order) with the fix.
    """
    arr = np.asarray(getattr(values, "values", values))
    if np.issubdtype(arr.dtype, np.datetime64):
        if np.isnat(arr).any():
            raise TimeAxisError(f"coordinate '{name}' holds NaT (missing times)")
    elif is_cftime(arr):
        if any(v is None for v in arr.flat):
            raise TimeAxisError(f"coordinate '{name}' holds missing times")
        calendars = {getattr(v, "calendar", None) for v in arr.flat}
        if len(calendars) > 1:
            raise TimeAxisError(
                f"coordinate '{name}' mixes calendars {sorted(map(str, calendars))}; use one"
            )
    else:
        raise TimeAxisError(
            f"coordinate '{name}' has dtype {arr.dtype}; expected datetimes (datetime64, or "
            "cftime objects for noleap/360_day/all_leap/julian calendars: open the store with "
            "xarray's time decoding on, e.g. xr.open_zarr(..., decode_times=True))"
        )
    ns = to_ns(arr)
    uniq, counts = np.unique(ns, return_counts=True)
    if (counts > 1).any():
        rep = arr[np.isin(ns, uniq[counts > 1])][:3]
        raise TimeAxisError(
            f"coordinate '{name}' repeats {[str(t) for t in rep]}; times must be unique"
        )
    if ns.size > 1 and not (np.diff(ns) > 0).all():
        raise TimeAxisError(
            f"coordinate '{name}' is not increasing; sort it with ds.sortby('{name}')"
        )


def parse_times(texts: Sequence[str], like: npt.ArrayLike) -> np.ndarray:
    """ISO 8601 strings as times of ``like``'s calendar (datetime64[ns] or cftime objects).

    Raises
    ------
    TimeAxisError
        A string that is not a time, or a date the calendar does not have (30 February in a
        standard calendar, 31 March in a 360_day one).
    """
    calendar = calendar_of(like)
    out = []
    for text in texts:
        try:
            stamp = (
                pd.Timestamp(str(text)) if calendar in _STANDARD or not is_cftime(like) else None
            )
            if stamp is not None:
                out.append(np.datetime64(stamp.to_datetime64(), "ns"))
                continue
            import cftime

            parts = _iso_parts(str(text))
            out.append(cftime.datetime(*parts, calendar=calendar))
        except (ValueError, TypeError) as err:
            raise TimeAxisError(
                f"{text!r} is not a time of the {calendar} calendar ({err})"
            ) from None
    if calendar in _STANDARD and not is_cftime(like):
        return np.asarray(out, dtype="datetime64[ns]")
    return np.asarray(out, dtype=object)


def _iso_parts(text: str) -> tuple[int, ...]:
    """(year, month, day, hour, minute, second) of ``YYYY-MM-DD[THH[:MM[:SS]]]``."""
    date, _, clock = text.replace(" ", "T").partition("T")
    ymd = [int(p) for p in date.split("-")]
    if len(ymd) != 3:
        raise ValueError("expected YYYY-MM-DD[THH[:MM[:SS]]]")
    hms = [int(float(p)) for p in clock.split(":")] if clock else []
    return (*ymd, *(hms + [0, 0, 0])[:3])


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Matched positions of two time axes and what was dropped from each."""

    coarse_index: np.ndarray
    fine_index: np.ndarray
    dropped_coarse: int
    dropped_fine: int
    report: str


def align(
    coarse: npt.ArrayLike,
    fine: npt.ArrayLike,
    *,
    match: TimeMatch = "exact",
    tolerance: str | pd.Timedelta | None = None,
) -> Alignment:
    """Match the fine times to coarse times: equal (``"exact"``) or the nearest coarse time
    within ``tolerance`` (``"nearest"``); every fine time keeps at most one coarse partner.

    Raises
    ------
    TimeAxisError
        The axes use different calendars, no time matches, or ``tolerance`` is missing,
        negative or not a duration.
    """
    cal_c, cal_f = calendar_of(coarse), calendar_of(fine)
    if (cal_c in _STANDARD) != (cal_f in _STANDARD) or (cal_c not in _STANDARD and cal_c != cal_f):
        raise TimeAxisError(
            f"the coarse archive's calendar is {cal_c} but the fine archive's is {cal_f}; "
            "they must share a calendar to be paired"
        )
    tc, tf = to_ns(coarse), to_ns(fine)
    if tc.size == 0 or tf.size == 0:
        raise TimeAxisError("cannot pair an empty time axis")
    if tolerance is not None:  # checked even where unused: a bad one is a mistake either way
        tolerance_ns(tolerance)
    if match == "exact":
        ci = np.searchsorted(tc, tf).clip(0, len(tc) - 1)
        ok = tc[ci] == tf
    elif match == "nearest":
        tol = tolerance_ns(tolerance)
        right = np.searchsorted(tc, tf).clip(0, len(tc) - 1)
        left = (right - 1).clip(0)
        ci = np.where(np.abs(tc[left] - tf) <= np.abs(tc[right] - tf), left, right)
        ok = np.abs(tc[ci] - tf) <= tol
    else:
        raise TimeAxisError(f"time matching must be 'exact' or 'nearest', got {match!r}")
    fi = np.flatnonzero(ok)
    ci = ci[fi]
    if len(np.unique(ci)) != len(ci):  # two fine times on one coarse time: keep the closest
        keep: dict[np.intp, np.intp] = {}
        for c, f in zip(ci, fi):
            if c not in keep or abs(tc[c] - tf[f]) < abs(tc[c] - tf[keep[c]]):
                keep[c] = f
        ci = np.array(sorted(keep), dtype=np.intp)
        fi = np.array([keep[c] for c in ci], dtype=np.intp)
    if fi.size == 0:
        raise TimeAxisError(
            f"no fine time matches a coarse time ({match}"
            f"{'' if tolerance is None else f', tolerance {tolerance}'}): coarse covers "
            f"{_span(coarse)}, fine covers {_span(fine)}"
        )
    dropped_c, dropped_f = len(tc) - len(ci), len(tf) - len(fi)
    report = (
        f"paired {len(fi)} times ({match}"
        f"{'' if tolerance is None else f' within {tolerance}'}); dropped {dropped_c} coarse "
        f"and {dropped_f} fine time(s) without a partner"
    )
    return Alignment(np.asarray(ci, np.intp), np.asarray(fi, np.intp), dropped_c, dropped_f, report)


def tolerance_ns(tolerance: Any) -> int:  # Any: it checks what a user wrote
    """A time tolerance (``"30min"``, a timedelta) as int nanoseconds, >= 0.

    Raises
    ------
    TimeAxisError
        ``tolerance`` is missing, a bare number (its unit would be a guess: pandas reads
        ``30`` as nanoseconds), NaT, negative or not a duration.
    """
    fix = "give a duration with a unit, e.g. '30min' or '1h'"
    if tolerance is None:
        raise TimeAxisError(f"time matching 'nearest' needs a tolerance; {fix}")
    text = str(tolerance).strip()
    number = isinstance(tolerance, (int, float, np.number)) and not isinstance(
        tolerance,
        np.timedelta64,  # a numpy integer subclass, but it has a unit
    )
    if number or _is_number(text):
        raise TimeAxisError(f"time tolerance {tolerance!r} has no unit; {fix}")
    try:
        value = pd.Timedelta(tolerance)
    except (ValueError, TypeError) as err:
        raise TimeAxisError(
            f"time tolerance {tolerance!r} is not a duration ({err}); {fix}"
        ) from None
    if value is pd.NaT:
        raise TimeAxisError(f"time tolerance {tolerance!r} is NaT (not a time); {fix}")
    if value.value < 0:
        raise TimeAxisError(f"time tolerance {tolerance!r} is negative; {fix}")
    return int(value.value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _span(values: npt.ArrayLike) -> str:
    arr = np.asarray(getattr(values, "values", values))
    return f"{arr[0]} .. {arr[-1]} ({arr.size} steps)" if arr.size else "nothing"
