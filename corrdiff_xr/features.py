"""Fine-grid time features: fields computed from each sample's valid time and fine lat/lon.

Some networks take, besides the regridded inputs and static fields, channels that no archive
holds because they follow from *when* and *where* a pixel is: the cosine of the solar zenith
angle, the hour of day. :data:`FEATURES` names each such field once; a
:class:`~corrdiff_xr.codec.Codec` lists the ones its network takes (``features=``) and they
become its last input channels, computed at encode time from the block's time labels and its
fine ``lat(y, x)``/``lon(y, x)`` in every path that encodes inputs (the training loader, a
downscaling's block tasks), so a model sees the same feature values in training and inference.

A feature's ``compute(valid_time, lat, lon)`` takes ``datetime64[ns]`` times ``(T,)`` and
latitude/longitude in degrees on ``(y, x)`` and returns float32 ``(T, y, x)``.
:func:`valid_times` turns a cftime axis into such times where its dates are real Gregorian dates
(standard, proleptic_gregorian, noleap and all_leap calendars; a 360_day date like 02-30 is
refused: the sun's position has no meaning for it).

Solar position: the low-precision formulas of Meeus, *Astronomical Algorithms* (2nd ed.,
ch. 25), with Greenwich mean sidereal time from Vallado et al., "Revisiting Spacetrack Report
#3" (AIAA 2006-6753), the same published formulas as PhysicsNeMo's
``physicsnemo.utils.zenith_angle.cos_zenith_angle`` (equal to it within 1e-6, tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from corrdiff_xr.dims import LAT, LON, TIME, X, Y
from corrdiff_xr.errors import CorrDiffError, TimeAxisError

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "FEATURES",
    "Feature",
    "FeatureError",
    "check_names",
    "compute",
    "cos_zenith",
    "fine_lat_lon",
    "hour_of_day",
    "lazy_fields",
    "valid_times",
]

_J2000 = np.datetime64("2000-01-01T12:00:00", "ns")  # epoch of Julian centuries (UT)
_NS_PER_DAY = 86_400 * 10**9


class FeatureError(CorrDiffError, ValueError):
    """A time feature that is unknown or cannot be computed for the data given."""


@dataclass(frozen=True)
class Feature:
    """One fine-grid time feature.

    Attributes
    ----------
    name, units, long_name
        The channel's name and its CF attributes.
    compute
        ``compute(valid_time (T,) datetime64[ns], lat (y, x), lon (y, x)) -> float32 (T, y, x)``
        with latitude/longitude in degrees.
    """

    name: str
    units: str
    long_name: str
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _julian_centuries(valid_time: np.ndarray) -> np.ndarray:
    """Julian centuries (float64) of UT ``valid_time`` since J2000.0."""
    ns = (np.asarray(valid_time, dtype="datetime64[ns]") - _J2000).astype(np.int64)
    return ns / _NS_PER_DAY / 36525.0


def _sun(jc: float) -> tuple[float, float, float]:
    """Greenwich mean sidereal time, right ascension and declination (radians) at ``jc``."""
    # GMST in seconds of time (Vallado 2006, eq. 1); 240 s of time per degree
    gmst_s = 67310.54841 + jc * (876600 * 3600 + 8640184.812866 + jc * (0.093104 - jc * 6.2e-6))
    gmst = np.deg2rad((gmst_s / 240.0) % 360.0)
    # the sun's mean anomaly and mean longitude, the equation of centre (Meeus 25.2-25.4)
    anomaly = np.deg2rad(357.52910 + jc * (35999.05030 - jc * (0.0001559 + jc * 0.00000048)))
    mean_longitude = 280.46645 + jc * (36000.76983 + jc * 0.0003032)
    centre = (
        (1.914600 - jc * (0.004817 + jc * 0.000014)) * np.sin(anomaly)
        + (0.019993 - 0.000101 * jc) * np.sin(2 * anomaly)
        + 0.000290 * np.sin(3 * anomaly)
    )
    ecliptic = np.deg2rad(mean_longitude + centre)
    # obliquity of the ecliptic, 23 deg 26' 21.406" minus the fifth-order secular term
    drift = jc * (46.836769 - jc * (0.0001831 - jc * (0.00200340 - jc * (0.576e-6 + jc * 4.34e-8))))
    obliquity = np.deg2rad(23.0 + 26.0 / 60 + (21.406 - drift) / 3600.0)
    right_ascension = np.arctan2(np.cos(obliquity) * np.sin(ecliptic), np.cos(ecliptic))
    declination = np.arcsin(np.sin(obliquity) * np.sin(ecliptic))
    return float(gmst), float(right_ascension), float(declination)


def cos_zenith(valid_time: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Cosine of the solar zenith angle, float32 ``(T, y, x)``.

    ``cos z = sin(lat) sin(dec) + cos(lat) cos(dec) cos(h)`` with the local hour angle
    ``h = GMST + lon - RA`` (negative at night: the sun below the horizon).
    """
    lat_r, lon_r = np.deg2rad(np.asarray(lat, np.float64)), np.deg2rad(np.asarray(lon, np.float64))
    sin_lat, cos_lat = np.sin(lat_r), np.cos(lat_r)
    jc = _julian_centuries(valid_time)
    out = np.empty((len(jc),) + np.broadcast_shapes(lat_r.shape, lon_r.shape), np.float32)
    for t, c in enumerate(jc):  # one time at a time: no (T, y, x) float64 temporaries
        gmst, ra, dec = _sun(float(c))
        out[t] = sin_lat * np.sin(dec) + cos_lat * np.cos(dec) * np.cos(gmst + lon_r - ra)
    return out


def cos_zenith_max_1h(valid_time: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The larger :func:`cos_zenith` of the valid time and one hour before, float32 ``(T, y, x)``:
    CorrDiff COSMO-ERA5's input channel and solar gate for its hourly-mean targets."""
    t = np.asarray(valid_time, dtype="datetime64[ns]")
    return np.maximum(cos_zenith(t - np.timedelta64(1, "h"), lat, lon), cos_zenith(t, lat, lon))


def hour_of_day(valid_time: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The UTC hour of the valid time (whole hours 0-23, minutes dropped), float32 ``(T, y, x)``
    constant in space, as the published CorrDiff CMIP6 model was trained with."""
    t = np.asarray(valid_time, dtype="datetime64[ns]")
    hours = ((t - t.astype("datetime64[D]")) // np.timedelta64(1, "h")).astype(np.float32)
    shape = np.broadcast_shapes(np.shape(lat), np.shape(lon))
    return np.ascontiguousarray(np.broadcast_to(hours[:, None, None], (len(t),) + shape))


def _year_phase(valid_time: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``2 pi (time since 1 January 00:00 UTC of its year) / 365.25 days``, float64 ``(T, y, x)``
    constant in space: Earth2Studio's CorrDiff ERA5-HRRR day-of-year phase."""
    t = np.asarray(valid_time, dtype="datetime64[ns]")
    start = t.astype("datetime64[Y]").astype("datetime64[ns]")
    phase = 2 * np.pi * ((t - start) / np.timedelta64(1, "s")) / (8766.0 * 3600.0)
    shape = np.broadcast_shapes(np.shape(lat), np.shape(lon))
    return np.broadcast_to(phase[:, None, None], (len(t),) + shape)


def day_of_year_sin(valid_time: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Sine of the day-of-year phase (:func:`_year_phase`), float32 ``(T, y, x)``."""
    return np.sin(_year_phase(valid_time, lat, lon)).astype(np.float32)


def day_of_year_cos(valid_time: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Cosine of the day-of-year phase (:func:`_year_phase`), float32 ``(T, y, x)``."""
    return np.cos(_year_phase(valid_time, lat, lon)).astype(np.float32)


#: every time feature a codec can name
FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("cos_zenith", "1", "cosine of the solar zenith angle", cos_zenith),
        Feature("hour_of_day", "h", "hour of day (UTC)", hour_of_day),
        Feature("day_of_year_sin", "1", "sine of the day-of-year phase", day_of_year_sin),
        Feature("day_of_year_cos", "1", "cosine of the day-of-year phase", day_of_year_cos),
        Feature(
            "cos_zenith_max_1h",
            "1",
            "larger cosine of the solar zenith angle of the valid time and the hour before",
            cos_zenith_max_1h,
        ),
        # The published CorrDiff CMIP6 -> ERA5 network was trained with hour-of-day values in
        # the channel meant for cos(latitude), normalised with that field's statistics; a
        # channel of its own reproduces it (corrdiff_xr.model.packages.cmip6).
        Feature(
            "hour_of_day_in_coslat",
            "h",
            "hour of day (UTC), in the cos(latitude) channel of the CMIP6 -> ERA5 model",
            hour_of_day,
        ),
    )
}


def check_names(names: Sequence[str], what: str = "features") -> tuple[str, ...]:
    """``names`` as a tuple, each a key of :data:`FEATURES` (one line naming any other)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise FeatureError(f"{what}: unknown time feature(s) {unknown}; known: {sorted(FEATURES)}")
    return names


def valid_times(values: ArrayLike) -> np.ndarray:
    """``datetime64[ns]`` of a time axis (datetime64, or cftime dates that exist in the
    Gregorian calendar); one line naming the first date that does not."""
    arr = np.asarray(getattr(values, "values", values))
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ns]")
    out = np.empty(arr.shape, dtype="datetime64[ns]")
    for i, t in enumerate(arr.flat):
        try:
            day = np.datetime64(f"{t.year:04d}-{t.month:02d}-{t.day:02d}", "ns")
            out.flat[i] = day + np.timedelta64(
                ((t.hour * 60 + t.minute) * 60 + t.second) * 10**6 + t.microsecond, "us"
            )
        except (AttributeError, ValueError):
            raise TimeAxisError(
                f"time features need real dates, and time {t!r} is not a Gregorian date; "
                "give a time axis in a standard, noleap or all_leap calendar"
            ) from None
    return out


def fine_lat_lon(ds: xr.Dataset | xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """The fine grid's ``lat(y, x)``/``lon(y, x)`` in degrees (one line when absent)."""
    for name in (LAT, LON):
        if name not in ds.coords or set(ds[name].dims) != {Y, X}:
            raise FeatureError(
                f"time features need the fine grid's 2-D '{name}({Y}, {X})' coordinate, which "
                "the dataset lacks; give lat/lon of every fine pixel"
            )
    return (
        np.asarray(ds[LAT].transpose(Y, X).values, np.float64),
        np.asarray(ds[LON].transpose(Y, X).values, np.float64),
    )


def compute(
    names: Sequence[str], valid_time: ArrayLike, lat: np.ndarray, lon: np.ndarray
) -> dict[str, np.ndarray]:
    """``{name: float32 (T, y, x)}`` of features ``names`` at ``valid_time`` on ``lat``/``lon``."""
    times = valid_times(valid_time)
    return {n: FEATURES[n].compute(times, lat, lon) for n in check_names(names)}


def lazy_fields(names: Sequence[str], like: xr.Dataset, chunks_of: str) -> dict[str, xr.DataArray]:
    """Features ``names`` as lazy ``(time, y, x)`` DataArrays over ``like``'s time axis and
    fine lat/lon, chunked as ``like[chunks_of]`` (a downscaling's sources: each block's
    task then computes the features of its own halo and times)."""
    import xarray as xr

    names = check_names(names)
    lat, lon = fine_lat_lon(like)
    ref = like[chunks_of]
    chunks = dict(zip(ref.dims, ref.chunks)) if ref.chunks is not None else {}
    times = like[TIME].chunk({TIME: chunks.get(TIME, -1)})
    grid = {Y: chunks.get(Y, -1), X: chunks.get(X, -1)}
    lat_da = xr.DataArray(lat, dims=(Y, X)).chunk(grid)
    lon_da = xr.DataArray(lon, dims=(Y, X)).chunk(grid)
    out = {}
    for name in names:
        feature = FEATURES[name]

        def block(t: np.ndarray, la: np.ndarray, lo: np.ndarray, feature=feature) -> np.ndarray:
            # apply_ufunc hands time as (T, 1, 1) and lat/lon as (y, x)
            return feature.compute(
                valid_times(t.ravel()), la.reshape(la.shape[-2:]), lo.reshape(lo.shape[-2:])
            )

        field = xr.apply_ufunc(
            block, times, lat_da, lon_da, dask="parallelized", output_dtypes=[np.float32]
        )
        out[name] = (
            field.transpose(TIME, Y, X)
            .drop_vars([c for c in field.coords if c != TIME])
            .assign_attrs(units=feature.units, long_name=feature.long_name)
        )
    return out
