"""Dimension and coordinate names of the canonical downscaling layout.

Every module spells dimension names through these constants, so the layout is defined in one
place (see :mod:`corrdiff_xr.data.layout` for the full description).
"""

from __future__ import annotations

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
