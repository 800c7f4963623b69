"""Times as numbers, below every layer: cftime detection, the calendar, nanosecond keys.

:func:`to_ns` is the one conversion of a time to a number: nanoseconds since 1970-01-01 00:00
*counted in the axis' own calendar* (2001-03-01 of a 360_day axis is 31 * 360 + 60 days after
1970), exact, equal to ``datetime64[ns]`` on standard axes. Noise keys
(:mod:`corrdiff_xr.noise`) and the data layer (:mod:`corrdiff_xr.data.times`) both use it, so
it lives under both.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from corrdiff_xr.errors import TimeAxisError

__all__ = ["calendar_of", "is_cftime", "to_ns"]

_NS_PER_DAY = 86_400 * 10**9


def is_cftime(values: ArrayLike) -> bool:
    """Whether ``values`` (array, index or scalar) holds cftime datetimes."""
    arr = np.asarray(getattr(values, "values", values))
    if arr.dtype != object or arr.size == 0:
        return False
    first = arr.flat[0]
    return hasattr(first, "calendar") and hasattr(first, "timetuple")


def calendar_of(values: ArrayLike) -> str:
    """The CF calendar of a time axis: the cftime objects' calendar, else ``"standard"``."""
    if is_cftime(values):
        return str(np.asarray(getattr(values, "values", values)).flat[0].calendar)
    return "standard"


def to_ns(values: ArrayLike) -> np.ndarray:
    """int64 nanoseconds since 1970-01-01 00:00 in the axis' own calendar (see module doc)."""
    arr = np.asarray(getattr(values, "values", values))
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ns]").astype(np.int64)
    if not is_cftime(arr):
        raise TimeAxisError(f"times of dtype {arr.dtype} are neither datetime64 nor cftime")
    import cftime

    epochs: dict[str, Any] = {}
    out = np.empty(arr.shape, dtype=np.int64)
    for i, t in enumerate(arr.flat):
        cal = t.calendar
        epoch = epochs.get(cal) or epochs.setdefault(cal, cftime.datetime(1970, 1, 1, calendar=cal))
        d: datetime.timedelta = t - epoch
        out.flat[i] = d.days * _NS_PER_DAY + d.seconds * 10**9 + d.microseconds * 1000
    return out
