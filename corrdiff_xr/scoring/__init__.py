"""Scores of ensembles and deterministic forecasts against truth, lazily over Dask chunks.

The public functions live in :mod:`~corrdiff_xr.scoring.metrics` (CRPS, ensemble-mean MAE and
RMSE, spread, spread-skill, rank histograms, summaries) and
:mod:`~corrdiff_xr.scoring.spectra` (radially averaged power spectra); both score one chunk
with the numpy kernels of :mod:`~corrdiff_xr.scoring.kernels` and aggregate separately
(:mod:`~corrdiff_xr.scoring.common`), so any chunking gives the same numbers.
:mod:`~corrdiff_xr.scoring.baselines` gives the bilinear interpolation a downscaling must beat.
"""

from __future__ import annotations

from corrdiff_xr.scoring.baselines import bilinear_baseline
from corrdiff_xr.scoring.metrics import (
    METRICS,
    area_weights,
    crps,
    mae,
    pointwise_crps,
    power_spectrum,
    rank_histogram,
    rmse,
    spread,
    spread_skill,
    summary,
)

__all__ = [
    "METRICS",
    "area_weights",
    "bilinear_baseline",
    "crps",
    "mae",
    "pointwise_crps",
    "power_spectrum",
    "rank_histogram",
    "rmse",
    "spread",
    "spread_skill",
    "summary",
]
