"""Times on the command line, in the data's own calendar.

Options hold ISO 8601 texts, checked when parsed: a time of *some* CF calendar (the standard
one, or 360_day for dates such as 2001-02-30), a range's END not before its START. They are
read in the data's calendar once the data are open (:func:`corrdiff_xr.data.times.parse_times`)
and matched by :func:`corrdiff_xr.data.times.to_ns`, so ``datetime64`` and cftime axes
(noleap, 360_day, all_leap, julian) select alike and a date the data's calendar lacks is
named as such.
"""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_xr.cli import ItemsAction

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TimeRange", "iso_time", "select_times"]

_NS_PER_US = 1000


def _parts(text: str) -> tuple[int, ...]:
    """(year, month, day, hour, minute, second, microsecond) of an ISO time, UTC if zoned."""
    import cftime
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
        if not pd.isna(stamp):
            stamp = stamp.tz_convert(None) if stamp.tzinfo is not None else stamp
            return tuple(stamp.to_pydatetime().timetuple()[:6]) + (stamp.microsecond,)
    except (ValueError, TypeError):
        pass
    from corrdiff_xr.data.times import TimeAxisError, parse_times

    try:  # 360_day holds every month-day any CF calendar has beyond the standard one's
        (t,) = parse_times([text], like=np.array([cftime.datetime(2000, 1, 1, calendar="360_day")]))
    except TimeAxisError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2020-01-01T06)"
        ) from None
    return (t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond)


def iso_time(text: str) -> str:
    """An argparse ``type=``: ``text`` when it is an ISO 8601 time of some CF calendar."""
    _parts(text)
    return text


class TimeRange(ItemsAction):
    """START END [STEP] -> (start, end, step or None), END not before START, STEP positive."""

    def convert(self, given: list[Any]) -> object:
        import pandas as pd

        if len(given) not in (2, 3):
            raise argparse.ArgumentTypeError(
                f"takes START END [STEP], got {len(given)} value(s): {given}"
            )
        start, end = (_parts(t) for t in given[:2])
        if end < start:  # field by field: the same order in every calendar
            raise argparse.ArgumentTypeError(f"END {given[1]} is before START {given[0]}")
        step = None
        if len(given) == 3:
            try:
                step = pd.Timedelta(given[2])
            except ValueError:
                step = pd.NaT
            if pd.isna(step) or step <= pd.Timedelta(0):
                raise argparse.ArgumentTypeError(
                    f"STEP must be a positive duration like 3h or 30min, got {given[2]!r}"
                )
        return (given[0], given[1], step)


def _show(ns: int, like: np.ndarray) -> str:
    """The time ``ns`` (see ``to_ns``) written in ``like``'s calendar."""
    import pandas as pd

    from corrdiff_xr.data.times import calendar_of, is_cftime

    if not is_cftime(like):
        return str(pd.Timestamp(int(ns)))
    import cftime

    epoch = cftime.datetime(1970, 1, 1, calendar=calendar_of(like))
    return str(epoch + datetime.timedelta(microseconds=int(ns) // _NS_PER_US))


def select_times(
    available: np.ndarray,
    times: list[str] | None,
    time_range: tuple[str, str, pd.Timedelta | None] | None,
    error: type[Exception],
) -> np.ndarray | None:
    """Positions in ``available`` of ``--times`` or ``--time-range`` (None: no selection).

    Raises
    ------
    error
        A time not in the data (or not of its calendar), or an empty selection; naming the
        times and what the data cover.
    """
    from corrdiff_xr.data.times import TimeAxisError, parse_times, to_ns

    available = np.asarray(available)
    have = to_ns(available)
    covers = f"{_show(have[0], available)} .. {_show(have[-1], available)}, {have.size} steps"
    try:
        if times:
            wanted = to_ns(parse_times(times, like=available))
        elif time_range:
            start, end = to_ns(parse_times(time_range[:2], like=available))
            step = time_range[2]
            keep = (have >= start) & (have <= end)
            wanted = have[keep] if step is None else np.arange(start, end + 1, int(step.value))
        else:
            return None
    except TimeAxisError as err:
        raise error(f"{err}; the dataset covers {covers}") from None
    position = {int(t): i for i, t in enumerate(have)}
    missing = [_show(t, available) for t in wanted if int(t) not in position]
    if missing:
        raise error(f"time(s) {missing[:5]} not in the dataset (it covers {covers})")
    if len(wanted) == 0:
        raise error(f"the time selection is empty (the dataset covers {covers})")
    return np.asarray([position[int(t)] for t in wanted], dtype=np.intp)
