"""The pieces of a :class:`~corrdiff_xr.model.packages.Package` that every layout builds alike.

Grids: the output (fine) grid as ``lat(y, x)``/``lon(y, x)`` with 1-D ``y``/``x`` (for a
rectilinear grid ``y``/``x`` are the latitudes/longitudes themselves, with CF standard names,
so the grid pairs with archives by geography); the input (coarse) grid as 1-D ``lat``/``lon``
or 2-D ones on ``(y_coarse, x_coarse)``. The codec names the package's variables with its
statistics; the sampler defaults translate the package's solver settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from corrdiff_xr.config import SamplerConfig, SolverName
from corrdiff_xr.dims import LAT_ATTRS, LON_ATTRS
from corrdiff_xr.model.packages._files import PackageError, PackageFiles

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec

__all__ = [
    "check_bounds",
    "check_regular",
    "codec_for",
    "input_grid",
    "invariants_dataset",
    "output_grid",
    "sampler_for",
]


def _lat_lon(files: PackageFiles, name: str) -> tuple[np.ndarray, np.ndarray]:
    ds = files.netcdf(name)
    where = files.where(name)
    missing = [v for v in ("lat", "lon") if v not in ds.variables]
    if missing:
        raise PackageError(f"{where} lacks {missing}; it holds {sorted(map(str, ds.variables))}")
    lat, lon = np.asarray(ds["lat"].values), np.asarray(ds["lon"].values)
    if lat.ndim != lon.ndim or lat.ndim not in (1, 2) or (lat.ndim == 2 and lat.shape != lon.shape):
        raise PackageError(
            f"{where}: lat {lat.shape} and lon {lon.shape} must both be 1-D or the same 2-D shape"
        )
    if lat.ndim == 1:
        for axis, values in (("lat", lat), ("lon", lon)):
            if values.size < 2 or not np.all(np.diff(values) > 0):
                raise PackageError(
                    f"{where}: 1-D {axis} must be strictly increasing (as Earth2Studio requires)"
                )
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise PackageError(f"{where}: lat/lon hold non-finite values")
    return lat, lon


def fine_grid(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """The output grid Dataset of 1-D (rectilinear) or 2-D ``lat``/``lon``."""
    coords: dict[str, Any]  # xarray coordinate specs
    if lat.ndim == 1:
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
        coords = {"y": ("y", lat, LAT_ATTRS), "x": ("x", lon, LON_ATTRS)}
    else:
        lat2, lon2 = lat, lon
        coords = {"y": np.arange(lat.shape[0]), "x": np.arange(lat.shape[1])}
    return xr.Dataset(
        coords={
            **coords,
            "lat": (("y", "x"), lat2, LAT_ATTRS),
            "lon": (("y", "x"), lon2, LON_ATTRS),
        }
    )


def coarse_grid(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """The input grid Dataset of 1-D or 2-D ``lat``/``lon``."""
    if lat.ndim == 1:
        return xr.Dataset(coords={"lat": ("lat", lat, LAT_ATTRS), "lon": ("lon", lon, LON_ATTRS)})
    dims = ("y_coarse", "x_coarse")
    return xr.Dataset(coords={"lat": (dims, lat, LAT_ATTRS), "lon": (dims, lon, LON_ATTRS)})


def output_grid(files: PackageFiles, name: str) -> xr.Dataset:
    return fine_grid(*_lat_lon(files, name))


def input_grid(files: PackageFiles, name: str) -> xr.Dataset:
    return coarse_grid(*_lat_lon(files, name))


def check_regular(coarse: xr.Dataset, tolerance: float, where: str) -> None:
    """A 1-D input grid must be evenly spaced within ``tolerance`` (relative)."""
    if coarse["lat"].ndim != 1:
        return
    for axis in ("lat", "lon"):
        steps = np.diff(coarse[axis].values)
        if not np.allclose(steps, steps[0], rtol=tolerance, atol=1e-8):
            raise PackageError(
                f"{where}: {axis} is not evenly spaced (steps {steps.min():g}..{steps.max():g}, "
                f"metadata.json grid_spacing_tolerance={tolerance:g})"
            )


def check_bounds(coarse: xr.Dataset, fine: xr.Dataset, margin: float, source: str) -> None:
    """The output grid must lie inside the input grid, widened by ``margin`` of its range."""
    for axis in ("lat", "lon"):
        c, f = coarse[axis].values, fine[axis].values
        pad = margin * (c.max() - c.min())
        if f.min() < c.min() - pad or f.max() > c.max() + pad:
            raise PackageError(
                f"{source}: the output grid's {axis} [{f.min():g}, {f.max():g}] leaves the input "
                f"grid [{c.min():g}, {c.max():g}] (metadata.json grid_bounds_margin={margin:g})"
            )


def codec_for(
    inputs: Sequence[str],
    outputs: Sequence[str],
    invariants: Sequence[str],
    stats: Mapping[tuple[str, str], tuple[float, float]],
    units: Mapping[str, str] | None = None,
) -> tuple[Codec, dict[str, str]]:
    """The package's codec and ``{codec input name: package input name}``.

    ``stats`` is keyed ``("input"|"output"|"invariants", name)``. An input named like an
    output or invariant is renamed ``<name>_coarse`` (codec names are unique). Units are
    ``units`` (e.g. an invariants file's own) or those of known package names.
    """
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data.names import long_name, units_of

    taken = set(outputs) | set(invariants)
    input_names = {(f"{n}_coarse" if n in taken else n): n for n in inputs}
    names = [
        *((c, "input", n) for c, n in input_names.items()),
        *((n, "output", n) for n in outputs),
        *((n, "invariants", n) for n in invariants),
    ]
    attrs = {}
    for codec_name, section, name in names:
        given = (units or {}).get(name) if section == "invariants" else None
        known = {"units": given or units_of(name), "long_name": long_name(name)}
        attrs[codec_name] = {k: v for k, v in known.items() if v}
    try:
        codec = Codec(
            tuple(input_names),
            tuple(outputs),
            tuple(invariants),
            {c: stats[section, n] for c, section, n in names},
            attrs,
        )
    except ValueError as err:
        raise PackageError(f"statistics or names of the package: {err}") from err
    return codec, input_names


def sampler_for(
    sampler_type: str,
    solver: SolverName,
    steps: int,
    sigmas: tuple[float | None, float | None],
    residual_args: Mapping[str, Any],
) -> SamplerConfig:
    """Our :class:`~corrdiff_xr.config.SamplerConfig` for PhysicsNeMo's sampler settings.

    ``stochastic`` (``stochastic_sampler``, EDM Heun; no churn is passed) -> ``heun``;
    ``deterministic`` -> ``solver``. Sigma defaults are the samplers' (0.002..800 and
    0.002..80), clipped to the residual network's ``sigma_min``/``sigma_max`` as they do.
    """
    stochastic = sampler_type == "stochastic"
    lo = sigmas[0] if sigmas[0] is not None else 0.002
    hi = sigmas[1] if sigmas[1] is not None else (800.0 if stochastic else 80.0)
    net_lo, net_hi = residual_args.get("sigma_min", 0.0), residual_args.get("sigma_max", math.inf)
    try:
        lo, hi = max(float(lo), float(net_lo)), min(float(hi), float(net_hi))
        return SamplerConfig(
            solver="heun" if stochastic else solver, num_steps=steps, sigma_min=lo, sigma_max=hi
        )
    except (TypeError, ValueError) as err:
        raise PackageError(
            f"the sampler settings (metadata.json sigma_min/sigma_max, the residual network's "
            f"sigma_min={net_lo!r}/sigma_max={net_hi!r}) are unusable: {err}"
        ) from err


def invariants_dataset(
    ds: xr.Dataset | None, names: Sequence[str], fine: xr.Dataset, where: str
) -> xr.Dataset:
    """The invariants ``names`` of ``ds`` as ``(y, x)`` fields on the output grid."""
    shape = (fine.sizes["y"], fine.sizes["x"])
    fields = {}
    if names and ds is None:
        raise PackageError(f"{where}: the package has no invariants file for {list(names)}")
    for name in names:
        assert ds is not None
        values = np.asarray(ds[name].values)
        if values.shape != shape:
            raise PackageError(
                f"{where}: invariant {name!r} is {values.shape}, the output grid {shape}"
            )
        if not np.all(np.isfinite(values)):
            raise PackageError(f"{where}: invariant {name!r} holds NaN or infinite values")
        fields[name] = (("y", "x"), values, dict(ds[name].attrs))
    return xr.Dataset(fields, coords=fine.coords)
