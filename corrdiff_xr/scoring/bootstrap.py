"""Confidence intervals for scores by a moving-block bootstrap over time.

Scores of consecutive valid times are correlated (weather persists), so resampling single
times would make intervals too narrow. The circular moving-block bootstrap (Künsch 1989;
Wilks 2011, ch. 5) resamples runs of ``block_length`` consecutive times instead: each
resample strings together ``ceil(n / block_length)`` blocks that start at uniformly drawn
times (wrapping round the end) and keeps the first ``n``. The interval is the percentile
interval of the statistic over the resamples.

The statistic is the time mean of per-time scores, the number ``corrdiff-xr score``
prints, so one mechanism gives an interval to every row of a :func:`summary` table
(histogram bins, FSS per window, ...). Two forecasts are compared on the same resampled
times (a paired bootstrap), which keeps their shared weather out of the difference's
interval. ``scores.processing.block_bootstrap`` does the same resampling but draws from
numpy's global random state; here every draw comes from one generator per ``seed``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from corrdiff_xr.dims import TIME

__all__ = ["block_indices", "difference_interval", "interval"]

BOUND = "bound"


def block_indices(n: int, *, block_length: int, resamples: int, seed: int = 0) -> np.ndarray:
    """Time indices of ``resamples`` circular moving-block resamples of ``n`` times,
    shape (resamples, n)."""
    if n < 1 or block_length < 1 or resamples < 1:
        raise ValueError(
            f"block bootstrap needs n, block_length and resamples >= 1, got "
            f"{n}, {block_length}, {resamples}"
        )
    rng = np.random.default_rng(seed)
    blocks = -(-n // block_length)
    starts = rng.integers(0, n, size=(resamples, blocks, 1))
    runs = (starts + np.arange(block_length)) % n
    return runs.reshape(resamples, -1)[:, :n]


def _resampled_means(per_time: xr.DataArray, indices: np.ndarray, dim: str) -> xr.DataArray:
    """Mean over ``dim`` of each resample (NaN times skipped), dim ``resample`` first."""
    values = per_time.transpose(dim, ...).values
    taken = values[indices]  # (resamples, n, ...)
    with np.errstate(invalid="ignore"):
        means = np.nanmean(taken, axis=1) if np.isnan(taken).any() else taken.mean(axis=1)
    others = [d for d in per_time.dims if d != dim]
    coords = {k: v for k, v in per_time.coords.items() if dim not in v.dims}
    return xr.DataArray(means, dims=("resample", *others), coords=coords)


def _bounds(samples: xr.DataArray, confidence: float) -> xr.DataArray:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = (1.0 - confidence) / 2.0
    q = samples.quantile([tail, 1.0 - tail], dim="resample").rename(quantile=BOUND)
    return q.assign_coords({BOUND: ["lower", "upper"]})


def interval(
    per_time: xr.DataArray,
    *,
    dim: str = TIME,
    block_length: int = 1,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataArray:
    """Percentile interval of the time mean of ``per_time``: dim ``bound`` (lower, upper).

    ``per_time`` is eager (e.g. a computed :func:`~corrdiff_xr.scoring.summary` table, dims
    (metric, variable, time)); every other dim keeps its own interval.
    """
    if dim not in per_time.dims:
        raise ValueError(f"the bootstrap resamples {dim!r}, which {per_time.dims} lack")
    idx = block_indices(
        per_time.sizes[dim], block_length=block_length, resamples=resamples, seed=seed
    )
    return _bounds(_resampled_means(per_time, idx, dim), confidence)


def difference_interval(
    per_time_a: xr.DataArray,
    per_time_b: xr.DataArray,
    *,
    dim: str = TIME,
    block_length: int = 1,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataArray:
    """Interval of ``mean(a) - mean(b)`` over ``dim``, both resampled on the same times.

    An interval entirely above 0 says ``a``'s score is larger than ``b``'s at this
    confidence (worse, for a score where lower is better).
    """
    a, b = xr.align(per_time_a, per_time_b, join="exact")
    return interval(
        a - b,
        dim=dim,
        block_length=block_length,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
