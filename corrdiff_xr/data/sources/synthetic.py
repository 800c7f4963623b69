"""A lazily generated, physically plausible synthetic downscaling dataset.

Every field comes from Gaussian random fields (GRFs) whose radially averaged power spectrum
falls as ``k**-beta`` (:func:`gaussian_random_field`), coupled by simple physics:

* static **orography** (a steep-spectrum GRF, zero over the sea) and **land-sea mask**;
* **t2m**: a standard-atmosphere lapse rate (-6.5 K/km) on the orography, a poleward gradient,
  a diurnal cycle in local solar time (larger over land) and GRF weather noise;
* **u10/v10**: the curl of a smooth streamfunction plus a mean westerly; the component that
  runs up steep slopes is removed, so flow is deflected around mountains, and wind is slowed
  over land;
* **tp**: intermittent, non-negative and heavy-tailed (log-normal tail): a GRF plus the
  orographic uplift ``(u, v) . grad(h)`` is thresholded and exponentiated;
* coarse inputs are exact block means (``factor x factor``) of the fine fields, plus
  coarse-only ``msl`` (geostrophically consistent with the streamfunction) and ``tcwv``
  (Clausius-Clapeyron scaled with t2m).

Weather evolves smoothly in time: GRFs are drawn at "anchor" times every ``anchor_hours`` from
a generator seeded by ``(seed, field, anchor index)`` and blended with weights
``cos, sin`` (which keeps unit variance). A time step therefore depends only on its own time,
never on its neighbours or on chunking, so each time chunk is one independent dask task and
the dataset can stand in for an archive of any size. Spatial chunking is applied after
generation (the FFT needs the whole field); fields are periodic in space.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from corrdiff_xr.dims import (
    LAT,
    LAT_ATTRS,
    LAT_COARSE,
    LON,
    LON_ATTRS,
    LON_COARSE,
    TIME,
    X_COARSE,
    Y_COARSE,
    X,
    Y,
)

__all__ = [
    "INPUTS",
    "MAX_BUILD_STEPS",
    "MAX_BUILD_VALUES",
    "MAX_CELLS",
    "STATIC",
    "TARGETS",
    "gaussian_random_field",
    "synthetic_builder",
    "synthetic_dataset",
]

TARGETS = ("t2m", "u10", "v10", "tp")
INPUTS = ("t2m_coarse", "u10_coarse", "v10_coarse", "tp_coarse", "msl", "tcwv")
STATIC = ("orography", "lsm")
#: fine target -> its block-mean coarse input
SHARED = dict(zip(TARGETS, INPUTS[:4]))

_ATTRS = {
    "t2m": ("K", "2 metre temperature", "air_temperature"),
    "u10": ("m s-1", "10 metre eastward wind", "eastward_wind"),
    "v10": ("m s-1", "10 metre northward wind", "northward_wind"),
    "tp": (
        "kg m-2",
        "total precipitation (hourly accumulation)",
        "precipitation_amount",
    ),
    "msl": ("Pa", "mean sea level pressure", "air_pressure_at_mean_sea_level"),
    "tcwv": (
        "kg m-2",
        "total column water vapour",
        "atmosphere_mass_content_of_water_vapor",
    ),
    "orography": ("m", "surface altitude", "surface_altitude"),
    "lsm": ("1", "land-sea mask (1 = land)", "land_binary_mask"),
}
# field keys for the seeded generators
_KEY_PSI, _KEY_T, _KEY_P, _KEY_Q, _KEY_OROG = 1, 2, 3, 4, 100
_HOUR = np.timedelta64(1, "h")
#: largest fine grid (ny * nx): coordinates and static fields are computed eagerly, about
#: 0.3 GB at the limit (a 32768^2 grid would take 8 GiB before any time step)
MAX_CELLS = 4096 * 4096
#: largest dataset a catalog may build into the cache: time steps, and fine values per target
#: (nt * ny * nx; 0.5 GB of float32 each). Larger data belongs in a store of its own.
MAX_BUILD_STEPS = 10_000
MAX_BUILD_VALUES = 2**27


@functools.lru_cache(maxsize=16)
def _spectral_filter(shape: tuple[int, int], beta: float) -> np.ndarray:
    """``k**(-beta / 2)`` on the rfft2 grid, zero at k = 0 (read-only, cached)."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny) * ny
    kx = np.fft.rfftfreq(nx) * nx
    k = np.hypot(ky[:, None], kx[None, :])
    k[0, 0] = np.inf  # drop the mean
    filt = (k ** (-beta / 2.0)).astype(np.float32)
    filt.setflags(write=False)
    return filt


def gaussian_random_field(
    shape: tuple[int, int], beta: float, rng: np.random.Generator
) -> np.ndarray:
    """A zero-mean, unit-variance periodic GRF whose power spectrum falls as ``k**-beta``.

    Complex white noise on the ``rfft2`` grid is filtered by ``k**(-beta / 2)`` (``k`` the
    radial wavenumber in cycles per domain; the mean is removed) and transformed back, so the
    radially *averaged* 2-D power spectrum is proportional to ``k**-beta``. Drawing the noise in
    Fourier space saves the forward FFT.

    Parameters
    ----------
    shape
        ``(ny, nx)``.
    beta
        Spectral slope; larger is smoother (2-4 is typical of atmospheric fields).
    rng
        Source of the white noise.

    Returns
    -------
    numpy.ndarray
        float32 ``(ny, nx)``.
    """
    ny, nx = shape
    noise = rng.standard_normal((ny, nx // 2 + 1, 2), dtype=np.float32).view(np.complex64)[..., 0]
    field = np.fft.irfft2(noise * _spectral_filter((ny, nx), float(beta)), s=shape)
    return (field / field.std()).astype(np.float32, copy=False)


def _rng(seed: int, key: int, index: int) -> np.random.Generator:
    # SeedSequence needs non-negative entries; anchors before 1970 are shifted up
    return np.random.default_rng([seed, key, int(index) + 2**40])


def _anchor_weights(hours: float, anchor_hours: float) -> tuple[int, float, float]:
    """Index of the anchor before ``hours`` and the blend weights (cos, sin) of it and the next."""
    pos = hours / anchor_hours
    a = int(np.floor(pos))
    w = (pos - a) * np.pi / 2.0
    return a, float(np.cos(w)), float(np.sin(w))


_Cache = dict[tuple[int, int], tuple[np.ndarray, ...]]


def _anchor(
    shape: tuple[int, int],
    beta: float,
    seed: int,
    key: int,
    index: int,
    cache: _Cache,
    *,
    grad: bool = False,
) -> tuple[np.ndarray, ...]:
    """The GRF of anchor ``index`` as float32 (and its gradient, scaled to unit mean speed)."""
    if (key, index) not in cache:
        field = gaussian_random_field(shape, beta, _rng(seed, key, index))
        parts: tuple[np.ndarray, ...] = (field,)
        if grad:
            gy, gx = np.gradient(field)
            scale = 1.0 / max(float(np.hypot(gy, gx).std()), 1e-12)
            parts = (field, gy * scale, gx * scale)
        cache[(key, index)] = tuple(p.astype(np.float32) for p in parts)
    return cache[(key, index)]


def _anchored(
    shape: tuple[int, int],
    beta: float,
    seed: int,
    key: int,
    hours: float,
    anchor_hours: float,
    cache: _Cache,
    *,
    grad: bool = False,
) -> tuple[np.ndarray, ...]:
    """``(GRF,)`` (``(GRF, d/dy, d/dx)`` with ``grad``) at ``hours`` since 1970, blended
    from its two anchors."""
    a, c, s = _anchor_weights(hours, anchor_hours)
    lo = _anchor(shape, beta, seed, key, a, cache, grad=grad)
    hi = _anchor(shape, beta, seed, key, a + 1, cache, grad=grad)
    out = tuple(np.float32(c) * x + np.float32(s) * y for x, y in zip(lo, hi))
    return out


def _static_fields(
    shape: tuple[int, int], seed: int, lat: np.ndarray, lon: np.ndarray
) -> np.ndarray:
    """Stack of orography (m), land-sea mask, lat, lon, each (ny, nx)."""
    raw = gaussian_random_field(shape, 3.5, _rng(seed, _KEY_OROG, 0))
    land = raw > -0.3  # about 60 % land
    orog = 400.0 * np.clip(raw + 0.3, 0.0, None) ** 1.5
    return np.stack([orog, land.astype(np.float64), lat, lon])


def _fields_block(
    hours: np.ndarray, static: np.ndarray, *, seed: int, anchor_hours: float
) -> np.ndarray:
    """All six fine fields for the time steps ``hours``: (t, 6, ny, nx) float32."""
    orog, lsm, lat, lon = (np.asarray(a, dtype=np.float32) for a in static)
    shape = orog.shape
    f32 = np.float32
    # everything that does not change in time, once per block
    dhdy, dhdx = np.gradient(orog)
    grad2 = dhdy**2 + dhdx**2
    steep = np.sqrt(grad2) / (np.sqrt(grad2) + f32(20.0))  # 0 on flat ground -> 1 on cliffs
    upslope = steep / np.maximum(grad2, f32(1e-12))
    damp = f32(1.0) - f32(0.3) * lsm  # surface friction over land
    t_base = f32(283.0) - f32(6.5e-3) * orog - f32(0.6) * (lat - f32(lat.mean()))
    amp = f32(2.0) + f32(4.0) * lsm  # diurnal amplitude, larger over land
    phase = 2 * np.pi * (lon.astype(np.float64) / 15.0 - 15.0) / 24.0  # local solar time
    amp_cos, amp_sin = (
        (amp * np.cos(phase)).astype(f32),
        (amp * np.sin(phase)).astype(f32),
    )
    out = np.empty((hours.size, 6) + shape, dtype=f32)
    cache: dict = {}
    for i, h in enumerate(hours):
        t2m, u, v, tp, msl, tcwv = out[i]
        psi, gy, gx = _anchored(shape, 4.5, seed, _KEY_PSI, h, anchor_hours, cache, grad=True)
        u[...] = f32(-6.0) * gy + f32(4.0)
        v[...] = f32(6.0) * gx
        # remove the upslope component where terrain is steep: flow goes around mountains
        along = upslope * (u * dhdx + v * dhdy)
        u -= along * dhdx
        v -= along * dhdy
        u *= damp
        v *= damp
        wt = 2 * np.pi * (h % 24.0) / 24.0  # cos(wt + phase) by the angle-sum identity
        t2m[...] = t_base + f32(np.cos(wt)) * amp_cos - f32(np.sin(wt)) * amp_sin
        t2m += f32(1.5) * _anchored(shape, 3.0, seed, _KEY_T, h, anchor_hours, cache)[0]
        uplift = u * dhdx + v * dhdy
        (g,) = _anchored(shape, 3.0, seed, _KEY_P, h, anchor_hours, cache)
        g += f32(0.5 / max(float(uplift.std()), 1e-12)) * uplift
        wet = g > 1.0
        tp[...] = 0.0
        tp[wet] = f32(0.4) * np.expm1(f32(1.5) * (g[wet] - f32(1.0)))
        msl[...] = f32(101325.0) + f32(1200.0) * psi
        (q,) = _anchored(shape, 3.5, seed, _KEY_Q, h, anchor_hours, cache)
        tcwv[...] = f32(20.0) * np.exp(f32(0.07) * (t2m - f32(283.0)) + f32(0.25) * q)
    return out


def _block_mean(block: np.ndarray, factor: int) -> np.ndarray:
    t, c, ny, nx = block.shape
    return block.reshape(t, c, ny // factor, factor, nx // factor, factor).mean(axis=(3, 5))


def _axis(n: int, spacing: float, centre: float) -> np.ndarray:
    return centre + (np.arange(n) - (n - 1) / 2.0) * spacing


class _Grid(NamedTuple):
    """The fine grid: 1-D ``y``/``x`` axes, 2-D ``lat``/``lon`` and the axes' CF attributes."""

    y: np.ndarray
    x: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    y_attrs: Mapping[str, str]
    x_attrs: Mapping[str, str]


_LAT0, _LON0 = 52.0, -1.5  # centre of the domain (central England)
_PROJ_Y = {"units": "m", "standard_name": "projection_y_coordinate", "long_name": "y"}
_PROJ_X = {"units": "m", "standard_name": "projection_x_coordinate", "long_name": "x"}


def _fine_grid(ny: int, nx: int, *, grid: str, resolution: float) -> _Grid:
    """The fine grid of ``grid`` kind, ``resolution`` metres apart, centred on the domain."""
    if grid == "latlon":
        deg = resolution / 111_000.0
        y1, x1 = _axis(ny, deg, _LAT0), _axis(nx, deg, _LON0)
        lat2, lon2 = np.meshgrid(y1, x1, indexing="ij")
        return _Grid(y1, x1, lat2, lon2, LAT_ATTRS, LON_ATTRS)
    if grid == "projected":
        y1, x1 = _axis(ny, resolution, 0.0), _axis(nx, resolution, 0.0)
        yy, xx = np.meshgrid(y1, x1, indexing="ij")
        lat2 = _LAT0 + yy / 111_000.0
        lon2 = _LON0 + xx / (111_000.0 * np.cos(np.deg2rad(lat2)))
        return _Grid(y1, x1, lat2, lon2, _PROJ_Y, _PROJ_X)
    raise ValueError(f"grid={grid!r} is not one of 'latlon', 'projected'")


def _check_arguments(
    *, ny: int, nx: int, nt: int, factor: int, chunks: Mapping[str, int] | None
) -> dict[str, int]:
    """Refuse sizes that do not coarsen evenly and unknown chunk keys; the chunks as a dict."""
    for name, n in (("ny", ny), ("nx", nx)):
        if n < factor or n % factor:
            raise ValueError(f"{name}={n} must be a positive multiple of factor={factor}")
    if nt < 1:
        raise ValueError(f"nt={nt} must be at least 1")
    if ny * nx > MAX_CELLS:
        raise ValueError(f"ny * nx = {ny} * {nx} exceeds the limit of {MAX_CELLS} grid cells")
    chunks = dict(chunks or {})
    unknown = set(chunks) - {TIME, Y, X}
    if unknown:
        raise ValueError(f"chunks keys {sorted(unknown)} are not among ('time', 'y', 'x')")
    return chunks


def _lazy_fields(
    hours: np.ndarray,
    grid: _Grid,
    *,
    seed: int,
    factor: int,
    time_chunk: int,
    anchor_hours: float,
) -> tuple[da.Array, da.Array, da.Array]:
    """Dask arrays of the fine fields (t, 6, y, x), their block means and the static stack.

    One task per time chunk generates all six fields from the (shared) static fields; the
    block means are taken per task, so the coarse inputs never need the fine ones gathered.
    """
    ny, nx = shape = grid.lat.shape
    lat2, lon2 = grid.lat, grid.lon
    static = da.from_delayed(
        dask.delayed(_static_fields, pure=True)(shape, seed, lat2, lon2),
        shape=(4, ny, nx),
        dtype=np.float64,
        name=f"synthetic-static-{dask.base.tokenize(shape, seed, lat2, lon2)}",
    )
    t = da.from_array(hours, chunks=(time_chunk,), name=False)
    fields = da.blockwise(
        _fields_block,
        "tvyx",
        t,
        "t",
        static,
        "syx",
        new_axes={"v": 6},
        dtype=np.float32,
        concatenate=True,
        seed=seed,
        anchor_hours=anchor_hours,
    )
    coarse = fields.map_blocks(
        _block_mean,
        factor,
        dtype=np.float32,
        chunks=(fields.chunks[0], (6,), (ny // factor,), (nx // factor,)),
    )
    return fields, coarse, static


def _cf_attrs(name: str, factor: int) -> dict[str, str]:
    units, long_name, standard_name = _ATTRS[name.removesuffix("_coarse")]
    attrs = {"units": units, "long_name": long_name, "standard_name": standard_name}
    if name.endswith("_coarse"):
        attrs["long_name"] += f" (block mean over {factor}x{factor} fine cells)"
    return attrs


def _data_vars(
    fields: da.Array,
    coarse: da.Array,
    static: da.Array,
    *,
    factor: int,
    fine_chunks: tuple[tuple[int, ...], int, int],
) -> dict[str, tuple[tuple[str, ...], da.Array, dict[str, str]]]:
    """Targets, inputs and static fields as ``{name: (dims, dask array, attrs)}``."""
    data_vars: dict[str, tuple[tuple[str, ...], da.Array, dict[str, str]]] = {}
    for j, name in enumerate(TARGETS):
        data_vars[name] = (
            (TIME, Y, X),
            fields[:, j].rechunk(fine_chunks),
            _cf_attrs(name, factor),
        )
    for j, name in enumerate(INPUTS):
        data_vars[name] = (
            (TIME, Y_COARSE, X_COARSE),
            coarse[:, j],
            _cf_attrs(name, factor),
        )
    for j, name in enumerate(STATIC):
        fine = static[j].astype(np.float32).rechunk(fine_chunks[1:])
        data_vars[name] = ((Y, X), fine, _cf_attrs(name, factor))
    return data_vars


def _coords(times: np.ndarray, grid: _Grid, factor: int) -> dict[str, tuple]:
    """Fine and coarse coordinates; the coarse ones are block means of the fine ones."""

    def block_2d(values: np.ndarray) -> np.ndarray:
        ny, nx = values.shape
        return values.reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))

    return {
        TIME: (TIME, times, {"long_name": "time", "standard_name": "time"}),
        Y: (Y, grid.y, grid.y_attrs),
        X: (X, grid.x, grid.x_attrs),
        LAT: ((Y, X), grid.lat, LAT_ATTRS),
        LON: ((Y, X), grid.lon, LON_ATTRS),
        Y_COARSE: (Y_COARSE, grid.y.reshape(-1, factor).mean(axis=1), grid.y_attrs),
        X_COARSE: (X_COARSE, grid.x.reshape(-1, factor).mean(axis=1), grid.x_attrs),
        LAT_COARSE: ((Y_COARSE, X_COARSE), block_2d(grid.lat), LAT_ATTRS),
        LON_COARSE: ((Y_COARSE, X_COARSE), block_2d(grid.lon), LON_ATTRS),
    }


def synthetic_dataset(
    *,
    ny: int = 64,
    nx: int = 64,
    nt: int = 8,
    factor: int = 4,
    seed: int = 0,
    chunks: dict[str, int] | None = None,
    start: str = "2020-01-01T00:00",
    freq: str = "1h",
    grid: Literal["latlon", "projected"] = "latlon",
    resolution: float = 2000.0,
    anchor_hours: float = 6.0,
) -> xr.Dataset:
    """A lazy canonical downscaling Dataset, deterministic per ``seed``.

    Parameters
    ----------
    ny, nx
        Fine grid size; both must be multiples of ``factor``.
    nt
        Number of time steps from ``start`` every ``freq``.
    factor
        Coarsening factor: each coarse cell is the mean of ``factor x factor`` fine pixels.
    seed
        Seed of every random field; equal seeds give equal datasets whatever the chunking.
    chunks
        ``{"time": n}`` sets the generation chunk (default 1); ``"y"``/``"x"`` rechunk the fine
        fields afterwards.
    grid
        ``"latlon"``: ``y``/``x`` are latitude/longitude degrees (regridding by lat/lon);
        ``"projected"``: ``y``/``x`` are metres on a local projection, with the coarse grid in
        the same projection (regridding by y/x).
    resolution
        Fine grid spacing in metres (about 1/111 km per degree on the lat/lon grid).
    anchor_hours
        Spacing of the independent random anchors in time.

    Returns
    -------
    xarray.Dataset
        Targets ``t2m, u10, v10, tp`` on ``(time, y, x)``; inputs ``t2m_coarse, u10_coarse,
        v10_coarse, tp_coarse, msl, tcwv`` on ``(time, y_coarse, x_coarse)``; static
        ``orography, lsm`` on ``(y, x)``; all float32 and dask-backed.
    """
    chunks = _check_arguments(ny=ny, nx=nx, nt=nt, factor=factor, chunks=chunks)
    times = pd.date_range(start, periods=nt, freq=freq).values.astype("datetime64[ns]")
    hours = (times - np.datetime64("1970-01-01", "ns")) / _HOUR
    fine_grid = _fine_grid(ny, nx, grid=grid, resolution=resolution)
    fields, coarse, static = _lazy_fields(
        hours,
        fine_grid,
        seed=seed,
        factor=factor,
        time_chunk=chunks.get(TIME, 1),
        anchor_hours=anchor_hours,
    )
    # spatial chunks are applied after generation: the FFT needs the whole field
    fine_chunks = (fields.chunks[0], chunks.get(Y, ny), chunks.get(X, nx))
    data_vars = _data_vars(fields, coarse, static, factor=factor, fine_chunks=fine_chunks)
    attrs = {
        "title": "corrdiff_xr synthetic downscaling dataset",
        "source": f"corrdiff_xr.data.synthetic_dataset(seed={seed}, factor={factor}, grid={grid!r})",
        "Conventions": "CF-1.8",
    }
    return xr.Dataset(data_vars, coords=_coords(times, fine_grid, factor), attrs=attrs)


def synthetic_builder(*, ny: int = 64, nx: int = 64, nt: int = 8, **kwargs: Any) -> xr.Dataset:
    """:func:`synthetic_dataset` as a catalog builds it into the cache: sizes bounded.

    Raises
    ------
    ValueError
        More than :data:`MAX_BUILD_STEPS` time steps or :data:`MAX_BUILD_VALUES` fine values
        per target (a catalog must not fill the cache disk), or a size that is not an integer.
    """
    for name, n in (("ny", ny), ("nx", nx), ("nt", nt)):
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"{name}={n!r} must be an integer")
    if nt > MAX_BUILD_STEPS:
        raise ValueError(f"nt={nt} exceeds the limit of {MAX_BUILD_STEPS} time steps")
    if nt * ny * nx > MAX_BUILD_VALUES:
        raise ValueError(
            f"nt * ny * nx = {nt} * {ny} * {nx} exceeds the limit of {MAX_BUILD_VALUES} values "
            "per variable a catalog may build; write larger data to a store of its own"
        )
    return synthetic_dataset(ny=ny, nx=nx, nt=nt, **kwargs)
