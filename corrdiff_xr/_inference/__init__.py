"""Private building blocks of :mod:`corrdiff_xr.inference` (noise keys, block plans, the
worker model cache, per-block evaluation and resumable writers)."""
