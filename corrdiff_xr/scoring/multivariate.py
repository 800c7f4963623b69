"""Multivariate ensemble scores: energy score across variables, variogram score across space.

Neither is in ``scores`` (nor properscoring, nor xskillscore), so both are written here as
numpy kernels lifted with ``xr.apply_ufunc(..., dask="parallelized")``; the tests compare
them with brute-force double loops. Both need at least the ensemble (member) dimension in
one chunk, and the variogram score the spatial dims too; these are rechunked lazily.

* :func:`energy_score` (Gneiting et al. 2008, Test 17, 211) scores the vector of several
  variables at each point: does the ensemble get their joint distribution (e.g. wind
  direction from (u10, v10)) right, not only each margin?
* :func:`variogram_score` (Scheuerer and Hamill 2015, MWR 143, 1321) scores the spatial
  structure: the differences between nearby points, which the CRPS at each point ignores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from corrdiff_xr.dims import MEMBER, X, Y
from corrdiff_xr.scoring.common import (
    Data,
    DataT,
    Dims,
    _aggregate,
    _back,
    _mean_dims,
    _prepare,
    _single_chunk,
)

__all__ = ["energy_kernel", "energy_score", "variogram_kernel", "variogram_score"]

COMPONENT = "component"


def energy_kernel(
    observation: np.ndarray, forecasts: np.ndarray, *, fair: bool = False
) -> np.ndarray:
    r"""Energy score :math:`\frac1M\sum_i\|x_i-y\| - \frac{1}{2M^2}\sum_{ij}\|x_i-x_j\|`.

    ``observation`` is (..., V), ``forecasts`` (..., M, V). ``fair=True`` divides the pair
    term by :math:`2M(M-1)` (unbiased for the parent distribution). One member gives the
    Euclidean error. NaN if anything is NaN. The pair sum runs member by member, O(M) memory.
    """
    obs = np.asarray(observation, dtype=np.float64)
    fc = np.asarray(forecasts, dtype=np.float64)
    m = fc.shape[-2]
    if fair and m < 2:
        raise ValueError(f"the fair energy score needs at least 2 members, got {m}")
    skill = np.linalg.norm(fc - obs[..., None, :], axis=-1).mean(axis=-1)
    pairs = np.zeros(skill.shape)
    for i in range(m):
        pairs += np.linalg.norm(fc - fc[..., i : i + 1, :], axis=-1).sum(axis=-1)
    return skill - pairs / (2.0 * m * ((m - 1) if fair else m))


def _units_of(fc: xr.Dataset, names: Sequence[str]) -> str:
    units = {str(fc[n].attrs.get("units", "")) for n in names}
    if len(units) > 1:
        raise ValueError(
            f"energy_score adds up variables {list(names)} with different units {sorted(units)}; "
            "pass scale={name: typical size} (e.g. each one's standard deviation) to make them "
            "comparable, or choose variables= with the same units"
        )
    return units.pop()


def energy_score(
    forecast: Data,
    truth: Data,
    *,
    variables: Sequence[str] | None = None,
    scale: Mapping[str, float] | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    estimator: str = "properscoring",
) -> xr.Dataset:
    """Energy score of the vector of ``variables`` at each point, averaged over ``dim``.

    Parameters
    ----------
    variables : sequence of str, optional
        The vector's components (default: every forecast variable, at least two).
    scale : mapping of str to float, optional
        Divide each variable by this first; needed when their units differ.
    estimator : {"properscoring", "fair"}
        Empirical-distribution pair term (``2 M^2``) or the fair one (``2 M (M - 1)``), as
        for :func:`~corrdiff_xr.scoring.crps`, which this equals for one variable.

    Returns
    -------
    Dataset
        One variable named ``"+".join(variables)``, in their (scaled) units. Lower is better.
    """
    if estimator not in ("properscoring", "fair"):
        raise ValueError(f"estimator must be 'properscoring' or 'fair', got {estimator!r}")
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    names = list(variables) if variables is not None else [str(n) for n in fc.data_vars]
    missing = [n for n in names if n not in fc.data_vars]
    if missing or len(names) < 2:
        raise ValueError(
            f"energy_score needs at least two forecast variables, got {names}"
            + (f" ({missing} not in the forecast)" if missing else "")
        )
    if scale is None:
        units = _units_of(fc, names)
        factors = dict.fromkeys(names, 1.0)
    else:
        absent = [n for n in names if n not in scale]
        if absent:
            raise ValueError(f"energy_score scale= lacks {absent}; give a size for each variable")
        factors, units = {n: float(scale[n]) for n in names}, "1"

    def stacked(ds: xr.Dataset) -> xr.DataArray:
        parts = [ds[n] / factors[n] for n in names]
        return xr.concat(parts, dim=COMPONENT, coords="minimal", compat="override")

    members = _single_chunk(_single_chunk(stacked(fc), member_dim), COMPONENT)
    score = xr.apply_ufunc(
        energy_kernel,
        _single_chunk(stacked(tr), COMPONENT),
        members,
        input_core_dims=[[COMPONENT], [member_dim, COMPONENT]],
        kwargs={"fair": estimator == "fair"},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    label = "+".join(names)
    out = _aggregate(score.to_dataset(name=label), _mean_dims(fc, dim, member_dim), weights)
    out[label].attrs = {"long_name": f"energy score ({estimator}) of ({', '.join(names)})"}
    if units:
        out[label].attrs["units"] = units
    return out


def _half_plane_offsets(max_lag: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) within ``max_lag`` points, one of each +/- pair."""
    return [
        (dy, dx)
        for dy in range(0, max_lag + 1)
        for dx in range(-max_lag, max_lag + 1)
        if dy > 0 or dx > 0
    ]


def variogram_kernel(
    observation: np.ndarray, forecasts: np.ndarray, *, p: float, max_lag: int
) -> np.ndarray:
    r"""Each point's share of the variogram score: over the pairs (s, s + h), ``h`` in the
    half-plane within ``max_lag`` points, :math:`\sum_h w_h (|y_s - y_{s+h}|^p -
    \frac1M\sum_m |x_{m,s} - x_{m,s+h}|^p)^2` with :math:`w_h = 1 / |h|`.

    ``observation`` is (..., ny, nx), ``forecasts`` (..., M, ny, nx). Pairs with a NaN are
    left out; NaN where the point itself is missing.
    """
    obs = np.asarray(observation, dtype=np.float64)
    fc = np.asarray(forecasts, dtype=np.float64)
    ny, nx = obs.shape[-2:]
    out = np.zeros(obs.shape)
    for dy, dx in _half_plane_offsets(max_lag):
        if dy >= ny or abs(dx) >= nx:
            continue
        here = (slice(0, ny - dy), slice(max(0, -dx), nx - max(0, dx)))
        there = (slice(dy, ny), slice(max(0, dx), nx + min(0, dx)))
        v_obs = np.abs(obs[(..., *here)] - obs[(..., *there)]) ** p
        v_fc = (np.abs(fc[(..., *here)] - fc[(..., *there)]) ** p).mean(axis=-3)
        term = (v_obs - v_fc) ** 2 / np.hypot(dy, dx)
        out[(..., *here)] += np.nan_to_num(term, nan=0.0)
    missing = np.isnan(obs) | np.isnan(fc).any(axis=-3)
    return np.where(missing, np.nan, out)


def variogram_score(
    forecast: DataT,
    truth: Data,
    *,
    p: float = 0.5,
    max_lag: int = 2,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    spatial_dims: tuple[str, str] = (Y, X),
) -> DataT:
    """Variogram score of order ``p`` across space, per point then averaged over ``dim``.

    Pairs of points up to ``max_lag`` grid points apart in y and x (inverse-distance
    weights, as Scheuerer and Hamill recommend); ``p = 0.5`` is their choice, robust to
    outliers. Each pair counts once, at its first point, so the spatial mean is the score
    of the field divided by its number of points and area ``weights`` apply as for the
    other scores. Lower is better; units are ``(units)^(2p)``.
    """
    if int(max_lag) < 1 or p <= 0:
        raise ValueError(f"variogram_score needs max_lag >= 1 and p > 0, got {max_lag}, {p}")
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    out = {}
    for name, var in fc.data_vars.items():
        if not set(spatial_dims) <= set(var.dims):
            raise ValueError(f"variogram_score needs {spatial_dims} in {name!r}, dims {var.dims}")
        obs = tr[name]
        for d in spatial_dims:
            var, obs = _single_chunk(var, d), _single_chunk(obs, d)
        out[name] = xr.apply_ufunc(
            variogram_kernel,
            obs,
            _single_chunk(var, member_dim),
            input_core_dims=[list(spatial_dims), [member_dim, *spatial_dims]],
            output_core_dims=[list(spatial_dims)],
            kwargs={"p": float(p), "max_lag": int(max_lag)},
            dask="parallelized",
            output_dtypes=[np.float64],
        )
    score = _aggregate(xr.Dataset(out), _mean_dims(fc, dim, member_dim), weights)
    for name, v in score.data_vars.items():
        units = fc[name].attrs.get("units")
        v.attrs = {"long_name": f"variogram score (p={p:g}) of {name}"}
        if units:
            v.attrs["units"] = f"({units})^{2 * p:g}"
    return _back(score, forecast)
