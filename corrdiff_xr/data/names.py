"""Package variable names and where to find them in a user's archive.

CorrDiff packages name their inputs with short names (``t2m``, ``u10m``, ``msl``, ``tcwv``,
``z500``, ``t850`` ...); archives use their own: ERA5 as served by ARCO/WeatherBench2/the CDS
uses long names (``2m_temperature``, ``geopotential`` with a pressure ``level`` dim), cfgrib
reads ERA5 GRIB files as ``t2m``, ``u10``, ``z`` on ``isobaricInhPa``. A **selector** says where
one package variable is: an archive variable name (``"2m_temperature"``), or a mapping
``{"variable": "geopotential", "level": 500}`` (``level`` always in hPa; ``level_dim`` names
the archive's level dim when it has several). :func:`candidates` lists what to try for a
package name, in order: the selector given in a name map (alone), else the package name
itself, the ERA5/ARCO name (:data:`DEFAULT_NAME_MAP`), the cfgrib name
(:data:`GRIB_NAME_MAP`).

Level dims (:data:`LEVEL_DIMS`) are ``level``, ``pressure_level`` (CDS NetCDF),
``isobaricInhPa`` (cfgrib) in hPa and ``plev`` (CMIP) in Pa; a ``units`` attribute on the
level coordinate overrides the name (:func:`level_scale`). :func:`find_variable` and
:func:`on_time_lat_lon` give a package variable as a ``(time, lat, lon)`` DataArray of the
archive, lazily; :mod:`corrdiff_xr.data.package_pair` puts it on the package's grid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import (
    CoordinateError,
    DataError,
    DimensionError,
    MissingVariableError,
    TimeAxisError,
)
from corrdiff_xr.data.times import is_cftime
from corrdiff_xr.dims import TIME

__all__ = [
    "DEFAULT_NAME_MAP",
    "GRIB_NAME_MAP",
    "LEVEL_DIMS",
    "PACKAGE_UNITS",
    "PRESSURE_LEVELS",
    "Selector",
    "candidates",
    "describe",
    "find_variable",
    "level_scale",
    "long_name",
    "on_time_lat_lon",
    "parse_selector",
    "split_level",
    "units_of",
]

#: a package variable's place in an archive: a name, or {"variable", "level", "level_dim"}
Selector = str | Mapping[str, Any]

#: dims holding pressure levels, in the order they are looked for
LEVEL_DIMS = ("level", "pressure_level", "isobaricInhPa", "plev")
_PA_DIMS = {"plev"}  # in Pa unless their units say otherwise

#: ERA5's 37 pressure levels (hPa)
PRESSURE_LEVELS = (
    1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 125, 150, 175, 200, 225, 250, 300, 350, 400, 450,
    500, 550, 600, 650, 700, 750, 775, 800, 825, 850, 875, 900, 925, 950, 975, 1000,
)  # fmt: skip

# short name: (ERA5/ARCO name, cfgrib name, units, long name)
_SURFACE = {
    "t2m": ("2m_temperature", "t2m", "K", "2 metre temperature"),
    "d2m": ("2m_dewpoint_temperature", "d2m", "K", "2 metre dewpoint temperature"),
    "u10m": ("10m_u_component_of_wind", "u10", "m s-1", "10 metre U wind component"),
    "v10m": ("10m_v_component_of_wind", "v10", "m s-1", "10 metre V wind component"),
    "u100m": ("100m_u_component_of_wind", "u100", "m s-1", "100 metre U wind component"),
    "v100m": ("100m_v_component_of_wind", "v100", "m s-1", "100 metre V wind component"),
    "msl": ("mean_sea_level_pressure", "msl", "Pa", "Mean sea level pressure"),
    "sp": ("surface_pressure", "sp", "Pa", "Surface pressure"),
    "tcwv": ("total_column_water_vapour", "tcwv", "kg m-2", "Total column water vapour"),
    "tp": ("total_precipitation", "tp", "m", "Total precipitation"),
    "sst": ("sea_surface_temperature", "sst", "K", "Sea surface temperature"),
    "skt": ("skin_temperature", "skt", "K", "Skin temperature"),
    "lsm": ("land_sea_mask", "lsm", "1", "Land-sea mask"),
}
# level prefix: (ERA5/ARCO name, cfgrib name, units, long name)
_PRESSURE = {
    "z": ("geopotential", "z", "m2 s-2", "Geopotential"),
    "t": ("temperature", "t", "K", "Temperature"),
    "u": ("u_component_of_wind", "u", "m s-1", "U component of wind"),
    "v": ("v_component_of_wind", "v", "m s-1", "V component of wind"),
    "q": ("specific_humidity", "q", "kg kg-1", "Specific humidity"),
    "r": ("relative_humidity", "r", "%", "Relative humidity"),
    "w": ("vertical_velocity", "w", "Pa s-1", "Vertical velocity"),
}
_LEVELLED = re.compile(r"^([a-z])(\d{1,4})$")
_LAT_NAMES, _LON_NAMES = ("latitude", "lat"), ("longitude", "lon")
_NORTH = {"degrees_north", "degree_north", "degrees_n", "degree_n"}
_EAST = {"degrees_east", "degree_east", "degrees_e", "degree_e"}
_TIME_NAMES = ("time", "valid_time")


def _maps(column: int) -> dict[str, Selector]:
    out: dict[str, Selector] = {k: v[column] for k, v in _SURFACE.items()}
    for prefix, names in _PRESSURE.items():
        for level in PRESSURE_LEVELS:
            out[f"{prefix}{level}"] = {"variable": names[column], "level": level}
    return out


#: package short name -> ERA5/ARCO selector (surface fields, and {z,t,u,v,q,r,w} at ERA5's levels)
DEFAULT_NAME_MAP: dict[str, Selector] = _maps(0)
#: package short name -> cfgrib's ERA5 GRIB selector (the fallback)
GRIB_NAME_MAP: dict[str, Selector] = _maps(1)
#: package short name -> CF units of the quantity as ERA5 gives it
PACKAGE_UNITS: dict[str, str] = {
    **{k: v[2] for k, v in _SURFACE.items()},
    **{f"{p}{lev}": v[2] for p, v in _PRESSURE.items() for lev in PRESSURE_LEVELS},
}


def split_level(name: str) -> tuple[str, int] | None:
    """``("z", 500)`` for ``"z500"`` (a known level prefix and a number), else None."""
    found = _LEVELLED.match(name)
    if found is None or found[1] not in _PRESSURE:
        return None
    return found[1], int(found[2])


def units_of(name: str) -> str | None:
    """CF units of a package short name (any pressure level, not only ERA5's), or None."""
    if name in PACKAGE_UNITS:
        return PACKAGE_UNITS[name]
    levelled = split_level(name)
    return _PRESSURE[levelled[0]][2] if levelled else None


def long_name(name: str) -> str | None:
    """A descriptive name of a package short name (``"Temperature at 850 hPa"``), or None."""
    if name in _SURFACE:
        return _SURFACE[name][3]
    levelled = split_level(name)
    if levelled is None:
        return None
    return f"{_PRESSURE[levelled[0]][3]} at {levelled[1]} hPa"


def _levelled_selector(name: str, column: int) -> Selector | None:
    levelled = split_level(name)
    if levelled is None:
        return None
    return {"variable": _PRESSURE[levelled[0]][column], "level": levelled[1]}


def parse_selector(selector: Selector, *, name: str) -> dict[str, Any]:
    """``{"variable": str, "level": float | None, "level_dim": str | None}`` of a selector.

    Raises
    ------
    DataError
        For a selector that is neither a name nor a mapping with ``variable`` (and only
        ``level``/``level_dim`` besides), naming the package variable.
    """
    if isinstance(selector, str):
        return {"variable": selector, "level": None, "level_dim": None}
    if not isinstance(selector, Mapping):
        raise DataError(
            f"name_map['{name}'] is {selector!r}; give an archive variable name or "
            "{'variable': NAME, 'level': HPA}"
        )
    unknown = sorted(set(map(str, selector)) - {"variable", "level", "level_dim"})
    if unknown or not isinstance(selector.get("variable"), str):
        raise DataError(
            f"name_map['{name}'] = {dict(selector)!r}: expected keys 'variable' (a name), "
            f"'level' (hPa) and 'level_dim'{f'; unknown {unknown}' if unknown else ''}"
        )
    level = selector.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))):
        raise DataError(f"name_map['{name}']: level {level!r} is not a number of hPa")
    dim = selector.get("level_dim")
    return {
        "variable": selector["variable"],
        "level": None if level is None else float(level),
        "level_dim": None if dim is None else str(dim),
    }


def describe(selector: Selector) -> str:
    """``'geopotential' at 500 hPa`` / ``'t2m'``: a selector in words, for messages."""
    if isinstance(selector, str):
        return f"'{selector}'"
    text = f"'{selector.get('variable')}'"
    if selector.get("level") is not None:
        text += f" at {selector['level']:g} hPa"
    return text


def candidates(
    name: str, name_map: Mapping[str, Selector] | None = None
) -> list[tuple[str, Selector]]:
    """What to look for in an archive for the package variable ``name``, in order.

    ``(label, selector)`` pairs: a ``name_map`` entry alone (``"name_map"``) when there is
    one; else the name itself (``"package name"``), its ERA5/ARCO name (``"ERA5/ARCO"``) and
    its cfgrib name (``"GRIB"``), each once (the ERA5/GRIB ones only for known names).
    """
    if name_map and name in name_map:
        return [("name_map", name_map[name])]
    found: list[tuple[str, Selector]] = [("package name", name)]
    for label, table, column in (("ERA5/ARCO", DEFAULT_NAME_MAP, 0), ("GRIB", GRIB_NAME_MAP, 1)):
        selector = table.get(name) or _levelled_selector(name, column)
        if selector is not None and all(selector != s for _, s in found):
            found.append((label, selector))
    return found


def level_scale(dim: str, attrs: Mapping[str, Any]) -> float:
    """Level-coordinate values per hPa: 100 for a coordinate in Pa, else 1."""
    units = str(attrs.get("units", "")).strip().lower()
    if units in ("pa", "pascal", "pascals"):
        return 100.0
    if units in ("hpa", "mbar", "millibars", "millibar", "mb"):
        return 1.0
    return 100.0 if dim in _PA_DIMS else 1.0


# -- a package variable in an archive ---------------------------------------------------------
def find_variable(
    coarse: xr.Dataset, name: str, name_map: Mapping[str, Any] | None
) -> tuple[xr.DataArray, dict[str, Any]]:
    """The archive variable of package input ``name`` and its parsed selector.

    The first of :func:`candidates` the archive holds (only its variable name is checked
    here: a level it lacks is refused by :func:`on_time_lat_lon`, not skipped).

    Raises
    ------
    MissingVariableError
        When none is there, naming every name tried and the ``name_map`` fix.
    """
    tried = []
    for label, selector in candidates(name, name_map):
        sel = parse_selector(selector, name=name)
        if sel["variable"] in coarse.data_vars:
            return coarse[sel["variable"]], sel
        tried.append(f"no {describe(selector)} ({label})")
    hint = (
        f"fix name_map['{name}']"
        if name_map and name in name_map
        else f"pass name_map={{'{name}': ARCHIVE_NAME}} (or {{'variable': NAME, 'level': HPA}})"
    )
    raise MissingVariableError(
        f"package input '{name}': archive has {', '.join(tried)}; {hint} (archive variables: "
        f"{sorted(map(str, coarse.data_vars))[:12]})"
    )


def _axis_dim(var: xr.DataArray, names: tuple[str, ...], units: set[str], kind: str) -> str:
    for dim in var.dims:
        coord = var.coords.get(dim)
        attrs = coord.attrs if coord is not None else {}
        unit = str(attrs.get("units", "")).lower().replace(" ", "_")
        if dim in names or attrs.get("standard_name") == kind or unit in units:
            return str(dim)
    raise DimensionError(
        f"no {kind} dim (dims {tuple(map(str, var.dims))}); the archive must be on a regular "
        f"latitude/longitude grid with a 1-D '{names[0]}' coordinate"
    )


def _is_time(coord: xr.DataArray) -> bool:
    return np.issubdtype(coord.dtype, np.datetime64) or is_cftime(np.ravel(coord.values)[:1])


def _time_dim(var: xr.DataArray, what: str) -> tuple[xr.DataArray, str]:
    """``var`` with a time dim (a scalar time made one) and that dim's name."""
    dims = [str(d) for d in var.dims if d in var.coords and _is_time(var[d])]
    if len(dims) == 1:
        return var, dims[0]
    if len(dims) > 1:
        raise TimeAxisError(f"{what}: several time dims {dims}; select one with .sel or .isel")
    for name in _TIME_NAMES:
        if name in var.coords and var[name].ndim == 0 and _is_time(var[name]):
            return var.expand_dims(name), name
    raise TimeAxisError(
        f"{what}: no time axis (dims {tuple(map(str, var.dims))}, no datetime coordinate "
        "'time' or 'valid_time'); open the archive with decode_times=True"
    )


def _level(var: xr.DataArray, sel: Mapping[str, Any], what: str) -> xr.DataArray:
    """``var`` at the selector's pressure level; a level dim left unselected is an error."""
    wanted = [sel["level_dim"]] if sel["level_dim"] else list(LEVEL_DIMS)
    dims = [d for d in wanted if d in var.dims]
    scalars = [d for d in wanted if d in var.coords and var[d].ndim == 0]
    if sel["level"] is None:
        if dims and var.sizes[dims[0]] > 1:
            first = float(var[dims[0]].values[0]) / level_scale(dims[0], var[dims[0]].attrs)
            raise DimensionError(
                f"{what} has {var.sizes[dims[0]]} levels on '{dims[0]}'; pick one: name_map="
                f"{{NAME: {{'variable': '{sel['variable']}', 'level': {first:g}}}}} (hPa)"
            )
        return var
    if not dims and not scalars:
        raise DimensionError(
            f"{what} has no level dim ({'/'.join(wanted)}; dims {tuple(map(str, var.dims))}) "
            f"to take {sel['level']:g} hPa from; name a variable holding levels"
        )
    dim = (dims or scalars)[0]
    scale = level_scale(dim, var[dim].attrs)
    values = np.atleast_1d(np.asarray(var[dim].values, np.float64)) / scale
    hits = np.flatnonzero(np.isclose(values, sel["level"], rtol=1e-6, atol=1e-6))
    if hits.size == 0:
        levels = ", ".join(f"{v:g}" for v in values[:40])
        raise DataError(
            f"{what} has no level {sel['level']:g} hPa on '{dim}' (it has {levels} hPa)"
        )
    return var.isel({dim: int(hits[0])}) if dim in dims else var


def on_time_lat_lon(var: xr.DataArray, sel: Mapping[str, Any], what: str) -> xr.DataArray:
    """The archive variable on ``(time, lat, lon)``, lazily, its other coordinates dropped.

    The selector's pressure level is picked, other length-1 dims squeezed, a scalar
    ``time``/``valid_time`` made the time dim; latitude/longitude dims are found by name
    (``latitude``/``lat``, ``longitude``/``lon``) or CF attributes. ``what`` starts every
    message.

    Raises
    ------
    DataError
        A subclass naming ``what``: a level absent or not chosen, no time axis, no
        latitude/longitude axis, or another dim longer than one.
    """
    var = _level(var, sel, what)
    var, tdim = _time_dim(var, what)
    try:
        ydim = _axis_dim(var, _LAT_NAMES, _NORTH, "latitude")
        xdim = _axis_dim(var, _LON_NAMES, _EAST, "longitude")
    except DimensionError as err:
        raise DimensionError(f"{what}: {err}") from None
    for dim in var.dims:
        if dim not in (tdim, ydim, xdim):
            if var.sizes[dim] > 1:
                raise DimensionError(
                    f"{what} has a dim '{dim}' of length {var.sizes[dim]} besides time and "
                    f"the grid; select one first: coarse.isel({dim}=0) or coarse.sel({dim}=...)"
                )
            var = var.isel({dim: 0})
    for dim in (ydim, xdim):
        if dim not in var.coords or var[dim].ndim != 1:
            raise CoordinateError(f"{what}: dim '{dim}' has no 1-D coordinate values")
    var = var.transpose(tdim, ydim, xdim).reset_coords(drop=True)  # e.g. a scalar 'time'
    return var.rename({tdim: TIME, ydim: "lat", xdim: "lon"})
