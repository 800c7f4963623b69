"""What a map shows and how (private): variable kinds, display units, colour maps and norms."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.colors import Colormap, Normalize

from corrdiff_xr.dims import X_COARSE, Y_COARSE, X, Y

_PRECIP_WORDS = ("precip", "rain", "snowfall")
_PRECIP_NAMES = {"tp", "pr", "prcp", "precip", "precipitation", "rainfall", "tprate"}
_WIND_NAMES = {"u10", "v10", "u", "v", "10u", "10v", "u10m", "v10m", "u100", "v100"}
_TEMPERATURE_NAMES = {"t2m", "2t", "t2", "tas", "temperature_2m", "d2m", "2d"}

#: colour maps by variable kind; winds diverge round zero, precipitation is log-scaled
CMAPS = {"precip": "YlGnBu", "wind": "RdBu_r", "temperature": "RdYlBu_r", "other": "viridis"}
ERROR_CMAP = "RdBu_r"
SPREAD_CMAP = "Purples"

#: (kind, data units) -> (display units, scale, offset): value * scale + offset
_DISPLAY = {
    ("temperature", "K"): ("degC", 1.0, -273.15),
    ("precip", "m"): ("mm", 1000.0, 0.0),
    ("precip", "kg m-2"): ("mm", 1.0, 0.0),
    ("precip", "kg m**-2"): ("mm", 1.0, 0.0),
    ("precip", "kg m-2 s-1"): ("mm h-1", 3600.0, 0.0),
    ("precip", "m s-1"): ("mm h-1", 3.6e6, 0.0),
}
#: precipitation below this (display units) is drawn as dry: a log scale needs a floor
PRECIP_FLOOR = 0.1


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (unless one is chosen already)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def kind_of(name: str, var: xr.DataArray) -> str:
    """``precip``, ``wind``, ``temperature`` or ``other``, from the name or standard name."""
    standard = str(var.attrs.get("standard_name", "")).lower()
    lname = str(name).lower()
    if lname in _PRECIP_NAMES or any(w in standard for w in _PRECIP_WORDS):
        return "precip"
    if "wind" in standard or lname in _WIND_NAMES:
        return "wind"
    if "temperature" in standard or lname in _TEMPERATURE_NAMES:
        return "temperature"
    return "other"


def display(var: xr.DataArray, kind: str, *, difference: bool = False) -> xr.DataArray:
    """``var`` in the units a forecaster reads (K -> degC, m of rain -> mm), ``units`` set.

    A ``difference`` (error, spread) is scaled but not offset."""
    units = str(var.attrs.get("units", "")).strip()
    found = _DISPLAY.get((kind, units))
    if found is None:
        return var
    shown, scale, offset = found
    out = var * scale + (0.0 if difference else offset)
    return out.assign_attrs({**var.attrs, "units": shown})


def label(var: xr.DataArray, name: str | None = None) -> str:
    """``long name [units]``."""
    long_name = var.attrs.get("long_name", name or var.name or "")
    units = var.attrs.get("units")
    return f"{long_name} [{units}]" if units else str(long_name)


def limits(kind: str, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """Shared colour limits of a row: robust percentiles; winds symmetric round zero."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99.5])
    if kind == "precip":
        lo = 0.0
    elif kind == "wind":
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def colours(kind: str, arrays: Sequence[np.ndarray]) -> tuple[Colormap, Normalize]:
    """``(cmap, norm)`` of a row of panels: log-scaled for precipitation (dry points, below
    :data:`PRECIP_FLOOR`, in the colour map's 'under' colour), linear otherwise."""
    import matplotlib as mpl
    from matplotlib.colors import LogNorm, Normalize

    lo, hi = limits(kind, arrays)
    cmap = mpl.colormaps[CMAPS[kind]].copy()
    if kind == "precip":
        cmap = cmap.with_extremes(under="white")
        floor = PRECIP_FLOOR if hi > 10 * PRECIP_FLOOR else max(hi / 100.0, 1e-6)
        return cmap, LogNorm(vmin=floor, vmax=max(hi, 10 * floor), clip=False)
    return cmap, Normalize(vmin=lo, vmax=hi)


def symmetric(arrays: Sequence[np.ndarray]) -> tuple[str, Normalize]:
    """``(cmap, norm)`` of differences: diverging, centred on zero."""
    from matplotlib.colors import Normalize

    _, hi = limits("wind", arrays)
    return ERROR_CMAP, Normalize(vmin=-hi, vmax=hi)


def grid_dims(var: xr.DataArray) -> tuple[str, str]:
    """``(y, x)`` or ``(y_coarse, x_coarse)``, whichever grid ``var`` is on."""
    if Y in var.dims and X in var.dims:
        return Y, X
    if Y_COARSE in var.dims and X_COARSE in var.dims:
        return Y_COARSE, X_COARSE
    raise ValueError(f"variable {var.name!r} has no (y, x) grid dims: {var.dims}")
