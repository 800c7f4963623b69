"""Dimension, coordinate and input names of the canonical downscaling layout.

Every module spells dimension names through these constants, so the layout is defined in one
place (see :mod:`corrdiff_xr.data.layout` for the full description); :func:`input_for` is the
one rule saying which input goes with a target.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

TIME = "time"
MEMBER = "member"
#: fine (target) grid
Y = "y"
X = "x"
LAT = "lat"
LON = "lon"
#: coarse (input) grid
Y_COARSE = "y_coarse"
X_COARSE = "x_coarse"
LAT_COARSE = "lat_coarse"
LON_COARSE = "lon_coarse"
#: normalisation statistics
STAT = "stat"
#: channel axis of tensors seen from xarray (codec)
CHANNEL = "channel"

FINE_DIMS = (Y, X)
COARSE_DIMS = (Y_COARSE, X_COARSE)

#: CF attributes of a geographic latitude / longitude coordinate, on any grid (read-only:
#: xarray copies them into each coordinate; extend with ``{**LAT_ATTRS, ...}``)
LAT_ATTRS = MappingProxyType(
    {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"}
)
LON_ATTRS = MappingProxyType(
    {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"}
)


def input_for(target: str, inputs: Iterable[str]) -> str | None:
    """The input that holds ``target`` at the coarse resolution, or None.

    An input named like the target, else ``{target}_coarse`` (how the layout names an input
    whose target has the same name), else the only input named ``{target}_*``; several such
    inputs are ambiguous, so none is chosen. ``inputs`` are names, e.g. ``ds.data_vars``.
    """
    names = [str(n) for n in inputs]
    for name in (target, f"{target}_coarse"):
        if name in names:
            return name
    matches = [n for n in names if n.startswith(f"{target}_")]
    return matches[0] if len(matches) == 1 else None
