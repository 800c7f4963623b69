"""Forecast layouts (cfgrib's) put on one valid-time axis, keeping the lead time.

cfgrib opens a forecast as ``step`` (standard_name ``forecast_period``) with a ``valid_time``
coordinate (standard_name ``time``), or as ``time`` (``forecast_reference_time``) and
``step`` with a 2-D ``valid_time``. Which coordinate is which comes from CF standard names
(cf-xarray), never from these names. :func:`on_valid_time` makes the valid time the one time
axis: a 1-D valid time becomes its dim's index; (reference time, lead) are flattened into one
axis. Two forecasts valid at one time are refused with the fix (choose one lead). The lead
becomes the integer coordinate ``lead_time`` (whole hours, or minutes when a lead is not a
whole hour) along the time axis, the labels a lead-time-aware config reads
(``data.lead_time: lead_time``).
"""

from __future__ import annotations

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import DimensionError, TimeAxisError

__all__ = ["LEAD_TIME", "check_leads", "lead_time_labels", "on_valid_time"]

#: the adopted dataset's lead-time coordinate, along ``time``
LEAD_TIME = "lead_time"
_FLAT = "__forecast"


def _valid_time(ds: xr.Dataset, what: str, notes: list[str]) -> tuple[xr.Dataset, str | None]:
    """``ds`` with a valid-time coordinate (standard_name ``time``, not already an axis) and
    its name; computed as reference time + lead when only those two are given."""
    names = ds.cf.standard_names
    valid = [n for n in names.get("time", []) if n not in ds.dims]
    if valid:
        return ds, valid[0]
    reference, period = names.get("forecast_reference_time"), names.get("forecast_period")
    if not (reference and period) or not any(n in ds.dims for n in reference + period):
        return ds, None
    name = "valid_time" if "valid_time" not in ds.variables else "valid_time_"
    value = (ds[reference[0]] + ds[period[0]]).assign_attrs(standard_name="time")
    notes.append(f"{what}: valid time computed as '{reference[0]}' + '{period[0]}'")
    return ds.assign_coords({name: value}), name


def _refuse_duplicates(valid: xr.DataArray, period: str | None, what: str) -> None:
    values, counts = np.unique(valid.values, return_counts=True)
    twice = values[counts > 1]
    if twice.size == 0:
        return
    hours = [0.0] if period is None else _hours(valid[period].values)
    leads = "" if period is None else f" (leads {', '.join(f'{h:g} h' for h in hours)})"
    raise TimeAxisError(
        f"{what}: {twice.size} valid time(s) are given by more than one forecast{leads}, "
        f"first {np.datetime_as_string(twice[0], unit='m')}; choose one lead with "
        f"select={{'{period or 'step'}': '{hours[-1]:g}h'}} (or one reference time), so each "
        "valid time occurs once"
    )


def _hours(values: np.ndarray) -> list[float]:
    return (np.unique(values.astype("timedelta64[m]").astype(np.int64)) / 60).tolist()


def on_valid_time(ds: xr.Dataset, *, what: str, notes: list[str]) -> xr.Dataset:
    """``ds`` with its valid time as the time axis (see the module docstring); other
    datasets are returned as they are.

    Raises
    ------
    TimeAxisError
        Two forecasts give one valid time (naming the ``select`` that picks one lead).
    DimensionError
        The valid time spans more than two dims.
    """
    ds, name = _valid_time(ds, what, notes)
    if name is None or ds[name].ndim == 0:
        return ds
    valid = ds[name]
    periods = [p for p in ds.cf.standard_names.get("forecast_period", []) if p != name]
    period = periods[0] if periods else None
    if valid.ndim > 2:
        raise DimensionError(
            f"{what}: valid time '{name}' spans {valid.dims}; select one value of all but "
            f"two of them (select={{'{valid.dims[0]}': ...}})"
        )
    if valid.ndim == 2:
        ds = ds.stack({_FLAT: valid.dims}, create_index=False)
        notes.append(f"{what}: forecasts {valid.dims} flattened into one valid-time axis")
        dim = _FLAT
    else:
        dim = str(valid.dims[0])
    _refuse_duplicates(ds[name], period, what)
    ds = ds.swap_dims({dim: name})
    if not ds.indexes[name].is_monotonic_increasing:
        ds = ds.sortby(name)
        notes.append(f"{what}: sorted by valid time")
    notes.append(f"{what}: time axis is the valid time '{name}'")
    return ds


def lead_time_labels(ds: xr.Dataset, time_dim: str, n: int) -> tuple | None:
    """``(values, attrs)`` of the integer ``lead_time`` along ``time_dim`` (``n`` long), from
    the forecast-period coordinate; None for an analysis (no lead, or one zero lead)."""
    periods = ds.cf.standard_names.get("forecast_period", [])
    if not periods:
        return None
    lead = ds[periods[0]]
    if lead.dims not in ((), (time_dim,)) or not np.issubdtype(lead.dtype, np.timedelta64):
        return None
    minutes = np.broadcast_to(lead.values.astype("timedelta64[m]").astype(np.int64), (n,))
    if lead.ndim == 0 and minutes[0] == 0:
        return None
    hourly = bool(np.all(minutes % 60 == 0))
    attrs = {
        "long_name": f"lead time of the forecast ('{periods[0]}')",
        "units": "hours" if hourly else "minutes",
    }
    return (minutes // 60 if hourly else minutes).astype(np.int64), attrs


def check_leads(coarse: xr.Dataset, fine: xr.Dataset, what: str) -> None:
    """Refuse a coarse and a fine forecast whose leads differ at their paired valid times:
    the pair has one ``lead_time``."""
    if LEAD_TIME not in coarse.coords or LEAD_TIME not in fine.coords:
        return
    differ = coarse[LEAD_TIME].values != fine[LEAD_TIME].values
    if differ.any():
        i = int(np.argmax(differ))
        raise TimeAxisError(
            f"{what} and the fine archive are forecasts with different leads at valid time "
            f"{np.datetime_as_string(fine['time'].values[i], unit='m')} "
            f"({coarse[LEAD_TIME].values[i]} vs {fine[LEAD_TIME].values[i]} "
            f"{fine[LEAD_TIME].attrs.get('units', '')}); the pair has one lead time: give the "
            "fine archive one lead (select={'step': '0h'}) or use its analysis"
        )
