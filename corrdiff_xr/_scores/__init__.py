"""Private numpy kernels behind :mod:`corrdiff_xr.scoring` (one chunk in, one chunk out)."""
