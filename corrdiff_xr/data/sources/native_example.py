"""Small archives in real-world conventions, for tests, notebooks and trying a pairing.

:func:`native_archives` returns three Datasets shaped like the archives users bring, not like
the canonical layout:

* ``coarse``, ERA5 conventions: dims ``time, latitude, longitude``, latitude descending,
  longitude 0..360 (global), hourly, ``2m_temperature`` packed as int16 (``scale_factor``/
  ``add_offset``, so xarray decodes it on opening) and ``10m_u_component_of_wind``;
* ``fine``, EURO-CORDEX conventions: a rotated-pole grid (``rlat, rlon`` in degrees,
  ``standard_name`` ``grid_latitude``/``grid_longitude``), 2-D ``lat``/``lon``, a scalar
  ``rotated_pole`` grid-mapping variable, bounds variables, a singleton ``height`` dim on
  ``tas``, every ``fine_step_hours`` hours; ``tas`` is NaN over the sea;
* ``orography``: ``orog`` on the same rotated grid extended by ``margin`` cells on each side.

The domain is centred on 2.5 W, so it crosses the Greenwich meridian, where a 0..360 archive
wraps. Fields are smooth analytic functions of position and time (a poleward gradient, a
diurnal cycle, a lapse rate on the orography, small-scale waves only the fine grid resolves),
so a model can learn the fine fields from the coarse ones; ``calendar`` gives cftime times.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from corrdiff_xr.data.sources.pp import rotated_to_geographic

__all__ = ["POLE", "native_archives"]

#: rotated north pole (latitude, longitude): grid centre at 50.75 N, 2.5 W
POLE = (39.25, 177.5)


def _orography(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    ridges = 700 * np.sin(np.deg2rad(lat) * 40) * np.cos(np.deg2rad(lon) * 30) + 500
    return np.clip(ridges, 0, None) * _land(lat, lon)


def _land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return (lon > -3.2 + 0.6 * np.sin(np.deg2rad(lat) * 60)).astype(np.float64)


def _temperature(
    lat: np.ndarray, lon: np.ndarray, hours: np.ndarray, orog: np.ndarray, *, fine: bool
) -> np.ndarray:
    t = hours[:, None, None]
    field = (
        288.0
        - 0.6 * (lat - 50.0)
        + 3.0 * np.sin(2 * np.pi * t / 24 + np.deg2rad(lon))
        + 2.0 * np.sin(np.deg2rad(lat) * 9) * np.cos(np.deg2rad(lon) * 6 + t / 40)
        - 0.0065 * orog
    )
    if fine:  # scales the coarse grid does not resolve
        field = field + 0.8 * np.sin(np.deg2rad(lat) * 150 + t / 7) * np.cos(np.deg2rad(lon) * 90)
    return field


def _wind(lat: np.ndarray, lon: np.ndarray, hours: np.ndarray, *, fine: bool) -> np.ndarray:
    t = hours[:, None, None]
    field = 6.0 + 4.0 * np.cos(np.deg2rad(lat) * 12 - t / 30) * np.sin(np.deg2rad(lon) * 5 + t / 50)
    if fine:
        field = field + 1.5 * np.cos(np.deg2rad(lon) * 120 - t / 5)
    return field


def _times(start: str, hours: np.ndarray, calendar: str | None) -> np.ndarray:
    if calendar is None:
        return np.datetime64(start, "ns") + (hours * 3600e9).astype("timedelta64[ns]")
    import cftime

    first = cftime.datetime(*map(int, start[:10].split("-")), calendar=calendar)
    return np.array([first + np.timedelta64(int(h), "h").item() for h in hours], dtype=object)


def _coarse(resolution: float, hours: np.ndarray, times: np.ndarray) -> xr.Dataset:
    lat = np.arange(90.0, -90.0 - 1e-9, -resolution)
    lon = np.arange(0.0, 360.0 - 1e-9, resolution)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    wlon = (glon + 180) % 360 - 180
    t2m = _temperature(glat, wlon, hours, _orography(glat, wlon), fine=False)
    scale, offset = 0.002, 270.0
    coarse = xr.Dataset(
        {
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                t2m.astype(np.float32),
                {"units": "K", "long_name": "2 metre temperature"},
            ),
            "10m_u_component_of_wind": (
                ("time", "latitude", "longitude"),
                _wind(glat, wlon, hours, fine=False).astype(np.float32),
                {"units": "m s**-1"},
            ),
        },  # fmt: skip
        coords={
            "time": ("time", times, {"standard_name": "time"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "long_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "long_name": "longitude"}),
        },
    )
    coarse["2m_temperature"].encoding = {
        "dtype": "int16", "scale_factor": scale, "add_offset": offset, "_FillValue": -32767,
    }  # fmt: skip
    return coarse


def _rotated_coords(ny: int, nx: int, resolution: float) -> dict:
    rlat = (np.arange(ny) - (ny - 1) / 2) * resolution
    rlon = (np.arange(nx) - (nx - 1) / 2) * resolution
    grlat, grlon = np.meshgrid(rlat, rlon, indexing="ij")
    lat, lon = rotated_to_geographic(grlat, grlon, pole_lat=POLE[0], pole_lon=POLE[1])
    geo = {"lat": ("degrees_north", "latitude"), "lon": ("degrees_east", "longitude")}
    return {
        "rlat": ("rlat", rlat, {"units": "degrees", "standard_name": "grid_latitude", "axis": "Y"}),
        "rlon": (
            "rlon",
            rlon,
            {"units": "degrees", "standard_name": "grid_longitude", "axis": "X"},
        ),
        **{
            name: (("rlat", "rlon"), value, {"units": geo[name][0], "standard_name": geo[name][1]})
            for name, value in (("lat", lat), ("lon", lon))
        },
    }


def native_archives(
    *,
    ny: int = 32,
    nx: int = 32,
    nt: int = 24,
    fine_step_hours: int = 3,
    resolution: float = 0.11,
    coarse_resolution: float = 1.0,
    margin: int = 8,
    calendar: str | None = None,
    start: str = "2001-02-27",
) -> dict[str, xr.Dataset]:
    """``{"coarse", "fine", "orography"}`` archives (see the module docstring), in memory.

    ``nt`` counts the coarse (hourly) steps; the fine archive has one step every
    ``fine_step_hours`` hours of the same period. ``calendar`` (``"noleap"``, ``"360_day"``
    ...) gives cftime times; None the standard calendar (datetime64).
    """
    hours = np.arange(nt, dtype=np.float64)
    fine_hours = hours[::fine_step_hours]
    pole = {
        "grid_mapping_name": "rotated_latitude_longitude",
        "grid_north_pole_latitude": POLE[0],
        "grid_north_pole_longitude": POLE[1],
    }
    coords = _rotated_coords(ny, nx, resolution)
    lat, lon = coords["lat"][1], coords["lon"][1]
    tas = _temperature(lat, lon, fine_hours, _orography(lat, lon), fine=True)
    tas = np.where(_land(lat, lon) > 0, tas, np.nan)[:, None]  # (time, height, rlat, rlon)
    fine_times = _times(start, fine_hours, calendar)
    fine = xr.Dataset(
        {
            "tas": (
                ("time", "height", "rlat", "rlon"),
                tas.astype(np.float32),
                {
                    "units": "K",
                    "standard_name": "air_temperature",
                    "long_name": "Near-Surface Air Temperature",
                    "grid_mapping": "rotated_pole",
                },
            ),
            "uas": (
                ("time", "rlat", "rlon"),
                _wind(lat, lon, fine_hours, fine=True).astype(np.float32),
                {
                    "units": "m s-1",
                    "standard_name": "eastward_wind",
                    "grid_mapping": "rotated_pole",
                },
            ),
            "time_bnds": (
                ("time", "bnds"),
                np.stack([fine_hours, fine_hours + fine_step_hours], axis=-1),
            ),
            "rotated_pole": ((), np.int32(0), pole),  # a data variable, as in CORDEX files
        },
        coords={
            **coords,
            "time": ("time", fine_times, {"standard_name": "time", "bounds": "time_bnds"}),
            "height": ("height", [2.0], {"units": "m", "standard_name": "height", "axis": "Z"}),
        },
    )
    big = _rotated_coords(ny + 2 * margin, nx + 2 * margin, resolution)
    orog = _orography(big["lat"][1], big["lon"][1]).astype(np.float32)
    orography = xr.Dataset(
        {"orog": (("rlat", "rlon"), orog, {"units": "m", "standard_name": "surface_altitude",
                                           "grid_mapping": "rotated_pole"}),
         "rotated_pole": ((), np.int32(0), pole)},
        coords=big,
    )  # fmt: skip
    return {"coarse": _coarse(coarse_resolution, hours, _times(start, hours, calendar)),
            "fine": fine, "orography": orography}  # fmt: skip
