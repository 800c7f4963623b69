"""A fixture CorrDiff CMIP6 -> ERA5 package with random weights, in exactly the published layout.

:func:`write_cmip6_package` writes the generic files (tests/package_fixtures.py's writers'
conventions: PhysicsNeMo 2.2.2 ``UNet`` / ``EDMPrecondSuperResolution`` with every parameter
randomised, saved by PhysicsNeMo's ``Module.save``) plus ``config.json``, the way Earth2Studio
0.19's ``CorrDiffCMIP6`` reads them: inputs taken at -24/0/+24 h (3 channels each), invariants
whose last is ``coslat``, ``stats.json`` with ``input.sza``/``input.hod``, the networks on the
output grid padded by 23 + 24 rows and 48 + 48 columns, ``invariants.nc`` stored north first.
The default grid is global and small (25 x 48 at 7.5 degrees, inputs 8 x 16 at 22.5 degrees),
the smallest on which the fixed padding works (reflection needs more than 24 rows) and the
padded image (72 x 144) halves. :func:`cmip6_archive` is a daily archive in the package's
names on its input grid.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from package_fixtures import (
    STATS,
    _net_kwargs,
    _pn_classes,
    _saved,
    _stats_json,
    generic_metadata,
)

__all__ = [
    "CMIP6_INPUTS",
    "CMIP6_INVARIANTS",
    "CMIP6_OUTPUTS",
    "cmip6_archive",
    "write_cmip6_package",
]

CMIP6_INPUTS = ("t2m", "u10m", "msl", "sst", "siconc", "snc")
CMIP6_OUTPUTS = ("t2m", "u10m", "tp", "d2m")
CMIP6_INVARIANTS = ("z", "lsm", "coslat")
PAD = (23, 24, 48, 48)
#: realistic (mean, std), by package name
CMIP6_STATS: dict[str, tuple[float, float]] = {
    **STATS,
    "sst": (286.0, 11.0),
    "siconc": (12.0, 29.0),
    "snc": (18.0, 34.0),
    "d2m": (276.0, 16.0),
    "z": (3_750.0, 8_100.0),
    "coslat": (0.64, 0.31),
    "sza": (0.0, 0.45),
    "hod": (11.5, 6.92),
}
UNITS = {"t2m": "K", "u10m": "m s-1", "msl": "Pa", "sst": "K", "siconc": "%", "snc": "%"}


def grids(grid: tuple[int, int], input_grid: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Output lat/lon (a global grid with both poles) and input lat/lon (cell centres), all
    increasing, longitudes 0..360."""
    (h, w), (hi, wi) = grid, input_grid
    lat, lon = np.linspace(-90.0, 90.0, h), np.arange(w) * (360.0 / w)
    lat_in = -90.0 + (np.arange(hi) + 0.5) * (180.0 / hi)
    return lat, lon, lat_in, np.arange(wi) * (360.0 / wi)


def write_cmip6_package(
    directory: str | os.PathLike,
    *,
    grid: tuple[int, int] = (25, 48),
    input_grid: tuple[int, int] = (8, 16),
    model_channels: int = 8,
    levels: int = 2,
    inputs: Sequence[str] = CMIP6_INPUTS,
    outputs: Sequence[str] = CMIP6_OUTPUTS,
    invariants: Sequence[str] = CMIP6_INVARIANTS,
    metadata: Mapping[str, Any] | None = None,
    padded: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a CMIP6 -> ERA5 package into ``directory``; returns it.

    ``padded`` overrides the networks' image (default: ``grid`` padded as the model is).
    ``metadata`` entries are merged over the defaults (stochastic sampler, 6 steps, 2
    members, seed 1234; no sigma range, so the CMIP6 defaults 1..400 apply).
    """
    UNet, EDMPrecondSuperResolution, _ = _pn_classes()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    size = padded or (grid[0] + PAD[0] + PAD[1], grid[1] + PAD[2] + PAD[3])
    n_in, n_out = 3 * len(inputs) + len(invariants) + 2, len(outputs)
    no_attention = {"bottleneck_attention": False}  # fast on 2 CPU cores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = UNet(
            img_resolution=list(size),
            img_in_channels=n_in + 4,
            img_out_channels=n_out,
            model_type="SongUNetPosEmbd",
            **_net_kwargs(
                model_channels, levels, embedding_type="zero", gridtype="sinusoidal",
                N_grid_channels=4, **no_attention,
            ),
        )  # fmt: skip
        res = EDMPrecondSuperResolution(
            img_resolution=list(size),
            img_in_channels=n_in + n_out + 4,
            img_out_channels=n_out,
            model_type="SongUNetPosEmbd",
            **_net_kwargs(
                model_channels, levels, gridtype="learnable", N_grid_channels=4, **no_attention
            ),
        )
    _saved(reg, out / "regression.mdlus", seed)
    _saved(res, out / "diffusion.mdlus", seed + 1)
    meta = generic_metadata(inputs, outputs, invariants, True, metadata)
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    stats = _stats_json(inputs, outputs, invariants, CMIP6_STATS)
    stats["input"].update(_stats_json(("sza", "hod"), (), (), CMIP6_STATS)["input"])
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "config.json").write_text(json.dumps({"model": "corrdiff-cmip6-era5 fixture"}))
    lat, lon, lat_in, lon_in = grids(grid, input_grid)
    xr.Dataset(coords={"lat": lat, "lon": lon}).to_netcdf(out / "output_latlon_grid.nc")
    xr.Dataset(coords={"lat": lat_in, "lon": lon_in}).to_netcdf(out / "input_latlon_grid.nc")
    rng = np.random.default_rng(seed + 2)
    fields = {}
    for name in invariants:  # north first, as the published file (Earth2Studio flips it)
        mean, std = CMIP6_STATS[name]
        values = (mean + std * rng.standard_normal(grid)).astype(np.float32)
        fields[name] = (("lat", "lon"), values[::-1], {"units": "1"})
    xr.Dataset(fields, coords={"lat": lat[::-1], "lon": lon}).to_netcdf(out / "invariants.nc")
    return out


def cmip6_archive(
    days: int = 3,
    *,
    grid: tuple[int, int] = (25, 48),
    input_grid: tuple[int, int] = (8, 16),
    inputs: Sequence[str] = CMIP6_INPUTS,
    seed: int = 0,
) -> xr.Dataset:
    """Daily fields at 12:00 UTC from 2037-09-05 on the package's input grid (CMIP6 style:
    latitude increasing, longitudes 0..360), float32, with sea ice missing (NaN) over a
    block of cells as over land."""
    _, _, lat, lon = grids(grid, input_grid)
    rng = np.random.default_rng(seed)
    out = {}
    for name in inputs:
        mean, std = CMIP6_STATS[name]
        values = (mean + std * rng.standard_normal((days, lat.size, lon.size))).astype(np.float32)
        if name in ("siconc", "snc"):
            values = np.clip(values, 0.0, 100.0)
        if name == "siconc":
            values[:, 2:4, 3:6] = np.nan
        out[name] = (("time", "lat", "lon"), values, {"units": UNITS[name]})
    time = np.datetime64("2037-09-05T12", "ns") + np.arange(days) * np.timedelta64(1, "D")
    return xr.Dataset(out, coords={"time": time, "lat": lat, "lon": lon})
