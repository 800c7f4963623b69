"""Numpy kernels that score one chunk; :mod:`corrdiff_xr.scoring` lifts them onto xarray.

Every kernel takes plain arrays with the ensemble (member) axis last, so it can be handed to
``xr.apply_ufunc(..., dask="parallelized")`` unchanged. The brute-force references that tests
compare against live here too, next to the fast paths they check.
"""

from __future__ import annotations

import numpy as np
import properscoring
from properscoring import _crps as _properscoring_crps

__all__ = [
    "block_flat_index",
    "crps_fair",
    "crps_pairwise",
    "crps_properscoring",
    "ensemble_ranks",
    "properscoring_uses_numba",
    "radial_bins",
    "radial_spectrum",
]


def properscoring_uses_numba() -> bool:
    """True when properscoring's CRPS core is its compiled numba gufunc (O(M log M) per point).

    properscoring silently falls back to an O(M^2) numpy version when numba cannot be
    imported; that fallback is correct but far slower and holds M^2 temporaries in memory.
    """
    core = getattr(_properscoring_crps, "_crps_ensemble_core", None)
    return type(core).__module__.split(".")[0] == "numba"


def crps_properscoring(observation: np.ndarray, forecasts: np.ndarray) -> np.ndarray:
    """properscoring's ensemble CRPS, the integral of (F_M(z) - H(z - y))^2 over z.

    Equals ``mean_i |x_i - y| - 1/(2 M^2) sum_ij |x_i - x_j|``; NaN members are ignored.
    """
    return properscoring.crps_ensemble(
        np.asarray(observation, dtype=np.float64), np.asarray(forecasts, dtype=np.float64)
    )


def crps_fair(observation: np.ndarray, forecasts: np.ndarray) -> np.ndarray:
    """The "fair" ensemble CRPS (Ferro 2014), unbiased for the CRPS of the parent distribution.

    ``mean_i |x_i - y| - 1/(2 M (M - 1)) sum_ij |x_i - x_j|``. The pair sum is computed from
    the sorted members as ``2 sum_k (2k - M + 1) x_(k)`` (k from 0), so this is O(M log M).
    Any NaN member makes the score NaN.
    """
    obs = np.asarray(observation, dtype=np.float64)
    fc = np.asarray(forecasts, dtype=np.float64)
    m = fc.shape[-1]
    if m < 2:
        raise ValueError(f"the fair CRPS needs at least 2 ensemble members, got {m}")
    skill = np.mean(np.abs(fc - obs[..., None]), axis=-1)
    coef = 2.0 * np.arange(m) - m + 1.0
    pair_sum = 2.0 * np.sum(coef * np.sort(fc, axis=-1), axis=-1)
    return skill - pair_sum / (2.0 * m * (m - 1))


def crps_pairwise(
    observation: np.ndarray, forecasts: np.ndarray, *, fair: bool = False
) -> np.ndarray:
    """Brute-force O(M^2) CRPS from the pairwise formula; a reference for tests."""
    obs = np.asarray(observation, dtype=np.float64)
    fc = np.asarray(forecasts, dtype=np.float64)
    m = fc.shape[-1]
    skill = np.mean(np.abs(fc - obs[..., None]), axis=-1)
    pairs = np.abs(fc[..., :, None] - fc[..., None, :]).sum(axis=(-2, -1))
    return skill - pairs / (2.0 * m * ((m - 1) if fair else m))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of each integer (wrapping arithmetic)."""
    z = x.astype(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform_from_key(key: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per integer key, the same whatever chunk the key sits in."""
    with np.errstate(over="ignore"):
        mixed = _splitmix64(
            np.asarray(key, dtype=np.uint64) ^ _splitmix64(np.asarray(seed, dtype=np.uint64))
        )
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def ensemble_ranks(
    observation: np.ndarray, forecasts: np.ndarray, key: np.ndarray, *, seed: int
) -> np.ndarray:
    """Rank of each observation among its M members, 0..M; -1 where anything is NaN.

    Ties (an observation equal to k members, common for zero precipitation) are broken by
    a uniform draw over the k + 1 tied positions, keyed by ``key`` (the point's global flat
    index) and ``seed``, so the histogram does not depend on chunking or scheduling.
    """
    obs = np.asarray(observation)[..., None]
    fc = np.asarray(forecasts)
    below = np.sum(fc < obs, axis=-1)
    ties = np.sum(fc == obs, axis=-1)
    draw = np.floor(_uniform_from_key(key, seed) * (ties + 1)).astype(np.int64)
    ranks = below + draw
    invalid = np.isnan(obs[..., 0]) | np.isnan(fc).any(axis=-1)
    return np.where(invalid, -1, ranks)


def block_flat_index(shape: tuple[int, ...], block_info: dict | None = None) -> np.ndarray:
    """Global C-order flat index of every element of a block (``da.map_blocks`` helper)."""
    if block_info is None:  # a plain numpy call: the block is the whole array
        return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    info = block_info[None]
    ranges = [np.arange(start, stop) for start, stop in info["array-location"]]
    grids = np.meshgrid(*ranges, indexing="ij")
    return np.ravel_multi_index(grids, info["shape"]).astype(np.int64)


def radial_bins(
    ny: int, nx: int, *, dy: float = 1.0, dx: float = 1.0
) -> tuple[np.ndarray, float, int]:
    """Annulus index of every 2-D FFT mode, the bin width and the number of bins.

    Wavenumber ``k = sqrt(ky^2 + kx^2)`` in cycles per unit of ``dy``/``dx``; the bin width
    is the coarser of the two fundamental wavenumbers, bins are centred on its multiples and
    bin 0 holds only the mean (k = 0). Corner modes beyond the axis Nyquist are kept so the
    spectrum still sums to the field's variance.
    """
    ky = np.fft.fftfreq(ny, d=dy)
    kx = np.fft.fftfreq(nx, d=dx)
    k = np.hypot(ky[:, None], kx[None, :])
    dk = max(1.0 / (ny * dy), 1.0 / (nx * dx))
    index = np.rint(k / dk).astype(np.int64)
    return index.ravel(), dk, int(index.max())


def radial_spectrum(
    field: np.ndarray, *, bin_index: np.ndarray, dk: float, nbins: int
) -> np.ndarray:
    """Isotropic power spectral density E(k) of fields over their last two axes.

    ``E(k) = sum over modes in the annulus of |F|^2 / (ny nx)^2 / dk``, with the mean removed,
    so that ``sum_k E(k) dk`` equals the variance of each field (Parseval). Non-finite points
    are set to zero anomaly and the power divided by the valid fraction (an approximation
    for gappy fields; an all-NaN field gives NaN). Output has the leading axes of ``field``
    and a last axis of ``nbins`` wavenumbers (k = dk, 2 dk, ...).
    """
    arr = np.asarray(field, dtype=np.float64)
    ny, nx = arr.shape[-2:]
    valid = np.isfinite(arr)
    count = valid.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, arr, 0.0).sum(axis=(-2, -1), keepdims=True) / count
        # gaps (e.g. an input's unfilled edge) become zero anomaly; dividing by the valid
        # fraction keeps the total equal to the variance of the valid points
        anomaly = np.where(valid, arr - mean, 0.0)
        fraction = count / float(ny * nx)
        power = np.abs(np.fft.fft2(anomaly)) ** 2 / float(ny * nx) ** 2 / fraction
    rows = power.reshape(-1, ny * nx)
    out = np.empty((rows.shape[0], nbins), dtype=np.float64)
    for i, row in enumerate(rows):
        out[i] = np.bincount(bin_index, weights=row, minlength=nbins + 1)[1:] / dk
    return out.reshape(arr.shape[:-2] + (nbins,))
