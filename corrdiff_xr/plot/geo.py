"""Geographic axes for maps: lat/lon (or km) ticks, coastlines and borders drawn offline.

A field with latitude/longitude coordinates (``lat``/``lon`` on the fine grid,
``lat_coarse``/``lon_coarse`` on the coarse one, or grid dims in degrees) is drawn on
longitude/latitude axes, so the coarse input and the fine fields share one frame whatever
their grids, and ticks read ``51°N``, ``2°W``; the page aspect is ``1 / cos(latitude)``.
Projected grids without lat/lon are drawn in km (never a ``1e6`` offset on the axis).

Coastlines and land borders come from :data:`LINES_FILE`, shipped with the package: Natural
Earth 1:110m admin-0 countries (public domain, naturalearthdata.com, v5.0.1), read from the
copy in the geopandas 0.14.4 wheel (``geopandas/datasets/naturalearth_lowres``). Coastlines
are the boundary of the union of all countries, borders the country boundaries that are not
coast; both are stored as float32 (lon, lat) polylines separated by NaN rows (62 kB). No
download happens at run time, unlike cartopy's Natural Earth features. At 1:110m small
islands are missing and coasts are accurate to some tens of km: a guide for the eye on
km-scale maps, not a land-sea mask.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.ticker import FuncFormatter

from corrdiff_xr.dims import LAT, LAT_COARSE, LON, LON_COARSE

__all__ = ["LINES_FILE", "MapFrame", "draw_coastlines", "frame_of", "lines", "style_axes"]

LINES_FILE = Path(__file__).with_name("naturalearth_110m_lines.npz")
_LATLON = {LAT: LON, LAT_COARSE: LON_COARSE}


@functools.cache
def lines(layer: str = "coastline") -> np.ndarray:
    """(n, 2) float32 lon/lat polylines of ``layer`` (``coastline`` or ``border``), NaN rows
    between lines, longitudes in -180..180."""
    with np.load(LINES_FILE) as data:
        if layer not in data:
            raise ValueError(f"no layer {layer!r} in {LINES_FILE.name}; choose from {list(data)}")
        return data[layer]


class MapFrame:
    """How one field is placed on the page: the arrays drawn on each axis and their labels."""

    def __init__(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        *,
        geographic: bool,
        xlabel: str,
        ylabel: str,
        lon360: bool = False,
    ) -> None:
        self.xs, self.ys = xs, ys
        self.geographic, self.lon360 = geographic, lon360
        self.xlabel, self.ylabel = xlabel, ylabel

    @property
    def aspect(self) -> float:
        """Data aspect keeping cells roughly square on the page."""
        if not self.geographic:
            return 1.0
        return 1.0 / max(np.cos(np.deg2rad(float(np.nanmean(self.ys)))), 0.1)

    @property
    def height_ratio(self) -> float:
        """Height / width of the field's extent on the page."""
        width = float(np.nanmax(self.xs) - np.nanmin(self.xs)) or 1.0
        height = float(np.nanmax(self.ys) - np.nanmin(self.ys)) or 1.0
        return height / width * self.aspect


def _coord_text(c: xr.DataArray, name: str, units: str | None = None) -> str:
    long_name = c.attrs.get("long_name", c.attrs.get("standard_name", name))
    units = units if units is not None else c.attrs.get("units")
    return f"{long_name} [{units}]" if units else str(long_name)


def _lon_convention(lon: np.ndarray) -> tuple[np.ndarray, bool]:
    """Longitudes in -180..180 or 0..360, whichever keeps the domain in one piece."""
    east = np.mod(lon, 360.0)
    centred = np.mod(lon + 180.0, 360.0) - 180.0
    if np.nanmax(east) - np.nanmin(east) < np.nanmax(centred) - np.nanmin(centred):
        return east, True
    return centred, False


def frame_of(field: xr.DataArray, ydim: str, xdim: str) -> MapFrame:
    """The :class:`MapFrame` of ``field`` on grid dims ``(ydim, xdim)``."""
    for lat, lon in _LATLON.items():
        if lat in field.coords and lon in field.coords:
            lat2, lon2 = xr.broadcast(field[lat], field[lon])
            la = lat2.transpose(ydim, xdim).values.astype(float)
            lo, lon360 = _lon_convention(lon2.transpose(ydim, xdim).values.astype(float))
            return MapFrame(lo, la, geographic=True, xlabel="longitude", ylabel="latitude",
                            lon360=lon360)  # fmt: skip
    units = {
        d: str(field[d].attrs.get("units", "")) if d in field.coords else "" for d in (ydim, xdim)
    }
    if all(u.startswith("degree") for u in units.values()):  # a regular lat/lon grid
        lo, lon360 = _lon_convention(field[xdim].values.astype(float))
        return MapFrame(lo, field[ydim].values.astype(float), geographic=True,
                        xlabel="longitude", ylabel="latitude", lon360=lon360)  # fmt: skip
    axes = []
    for d in (xdim, ydim):
        if d not in field.coords:
            axes.append((np.arange(field.sizes[d], dtype=float), f"{d} [grid point]"))
        elif units[d] in ("m", "metre", "meter", "metres", "meters"):  # km: no 1e6 offset
            axes.append((field[d].values / 1000.0, _coord_text(field[d], d, "km")))
        else:
            axes.append((field[d].values.astype(float), _coord_text(field[d], d)))
    (xs, xlabel), (ys, ylabel) = axes
    return MapFrame(xs, ys, geographic=False, xlabel=xlabel, ylabel=ylabel)


def _degrees(hemispheres: str) -> FuncFormatter:
    from matplotlib.ticker import FuncFormatter

    def text(value: float, _pos: int | None = None) -> str:
        if hemispheres == "EW":
            value = (value + 180.0) % 360.0 - 180.0
        letter = hemispheres[0] if value > 0 else hemispheres[1] if value < 0 else ""
        return f"{abs(value):g}°{letter}"

    return FuncFormatter(text)


def style_axes(ax: Axes, frame: MapFrame) -> None:
    """Aspect, tick format and labels of a map panel."""
    from matplotlib.ticker import MaxNLocator

    ax.set_aspect(frame.aspect)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    if frame.geographic:
        ax.xaxis.set_major_formatter(_degrees("EW"))
        ax.yaxis.set_major_formatter(_degrees("NS"))
    else:
        ax.ticklabel_format(useOffset=False, style="plain")


def draw_coastlines(ax: Axes, frame: MapFrame, *, borders: bool = True) -> None:
    """Coastlines (and land borders) on a geographic panel, clipped to its extent."""
    if not frame.geographic:
        return
    extent = ax.get_xlim(), ax.get_ylim()
    for layer, width in (("coastline", 0.7), ("border", 0.5)) if borders else (("coastline", 0.7),):
        lon, lat = lines(layer).T.astype(float)
        if frame.lon360:  # 0..360: shift, and break lines where they jump across 0°E
            lon = np.mod(lon, 360.0)
            jumps = np.abs(np.diff(lon, prepend=lon[0])) > 180.0
            lon, lat = np.where(jumps, np.nan, lon), np.where(jumps, np.nan, lat)
        style = "-" if layer == "coastline" else ":"
        ax.plot(lon, lat, style, color="0.15", lw=width, scalex=False, scaley=False)
    ax.set_xlim(*extent[0])
    ax.set_ylim(*extent[1])
