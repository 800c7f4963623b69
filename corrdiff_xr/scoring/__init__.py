"""Scores of ensembles and deterministic forecasts against truth, lazily over Dask chunks.

Every score is a row of one table, :data:`METRIC_TABLE` (:mod:`~corrdiff_xr.scoring.table`),
which :func:`summary`, ``corrdiff-xr score`` and the ``ds.corrdiff`` accessor read. The scores
live in :mod:`~corrdiff_xr.scoring.metrics` (CRPS, ensemble-mean MAE and RMSE, spread,
spread-skill, rank histograms), :mod:`~corrdiff_xr.scoring.spectra` (radially averaged power
spectra, log-spectral distance), :mod:`~corrdiff_xr.scoring.neighbourhood` (fractions skill score),
:mod:`~corrdiff_xr.scoring.probabilistic` (fair Brier score, CORP reliability, ROC,
threshold-weighted CRPS, PIT histogram) and :mod:`~corrdiff_xr.scoring.multivariate`
(energy and variogram scores). Each scores one chunk with a numpy kernel or the ``scores``
library and aggregates separately (:mod:`~corrdiff_xr.scoring.common`), so any chunking
gives the same numbers. :mod:`~corrdiff_xr.scoring.baselines` gives the bilinear
interpolation a downscaling must beat, :mod:`~corrdiff_xr.scoring.bootstrap` block-bootstrap
intervals over time for any score and for the difference of two forecasts' scores.
"""

from __future__ import annotations

from corrdiff_xr.scoring.baselines import bilinear_baseline
from corrdiff_xr.scoring.metrics import (
    area_weights,
    crps,
    mae,
    pointwise_crps,
    power_spectrum,
    rank_histogram,
    rmse,
    spread,
    spread_skill,
)
from corrdiff_xr.scoring.multivariate import energy_score, variogram_score
from corrdiff_xr.scoring.neighbourhood import fss
from corrdiff_xr.scoring.probabilistic import (
    brier,
    pit_histogram,
    reliability,
    roc,
    roc_auc,
    twcrps,
)
from corrdiff_xr.scoring.spectra import log_spectral_distance
from corrdiff_xr.scoring.table import METRIC_TABLE, METRICS, Metric, summary

__all__ = [
    "METRICS",
    "METRIC_TABLE",
    "Metric",
    "area_weights",
    "bilinear_baseline",
    "brier",
    "crps",
    "energy_score",
    "fss",
    "log_spectral_distance",
    "mae",
    "pit_histogram",
    "pointwise_crps",
    "power_spectrum",
    "rank_histogram",
    "reliability",
    "rmse",
    "roc",
    "roc_auc",
    "spread",
    "spread_skill",
    "summary",
    "twcrps",
    "variogram_score",
]
