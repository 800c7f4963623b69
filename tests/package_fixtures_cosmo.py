"""A fixture CorrDiff COSMO-ERA5 package, in exactly the layout Earth2Studio 0.19 reads.

:func:`write_cosmo_package` writes ``config.json`` and, per resolution, ``<res>/metadata.json``
(modes, channel transforms, bounds and the solar gate, sampler, checkpoints, patch and kernel
sizes, the invariants entry), ``stats.json`` (ERA5, the mean's physical and the diffusion's
transformed output statistics), ``grids.nc`` (a 0.25 degree ERA5 crop and a rotated-pole
native grid over central Europe), the extended physical invariants with their normalisation
file, and the two networks: PhysicsNeMo 2.2.2's own ``DiT`` (mean) and
``EDMPreconditioner(ConcatConditionWrapper(DiT))`` (diffusion) with random weights, saved by
``Module.save`` (:mod:`package_fixtures_dit`). The real networks use NATTEN neighbourhood
attention with rotary positions, which does not run here: these use global attention and
learned positions, built for the native grid. ``conv_head=True`` writes the mean network with
the published one's ``proj_reshape_2d_conv`` detokenizer (a residual conv head).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from package_fixtures_dit import CONV_DETOKENIZER, small_dit_kwargs, write_dit_mdlus

__all__ = [
    "COSMO_ERA5",
    "COSMO_OUTPUTS",
    "COSMO_POST",
    "COSMO_PRE",
    "EXTENDED",
    "NATIVE",
    "OFFSET",
    "rotated_pole_grid",
    "write_cosmo_package",
]

COSMO_ERA5 = ("u10m", "v10m", "t2m", "msl", "tcwv")
COSMO_OUTPUTS = ("U_10M", "T_2M", "TOT_PRECIP", "CLCT", "ASWDIR_S", "ASWDIFD_S", "ASHFL_S")
COSMO_PRE = ("sin_lat", "cos_lat", "sin_lon", "cos_lon", "elevation_norm", "land_fraction")
COSMO_POST = ("z0_lu_norm",)
NATIVE, EXTENDED, OFFSET = (16, 16), (20, 22), (2, 3)
ERA5_STATS = {
    "u10m": (-0.1, 5.4),
    "v10m": (0.2, 4.7),
    "t2m": (283.1, 8.9),
    "msl": (101_480.0, 1_020.0),
    "tcwv": (17.3, 8.6),
}
#: the mean's outputs are physical; the diffusion's in the transformed space
OUTPUT_STATS = {
    "U_10M": (0.4, 3.8),
    "T_2M": (282.5, 8.1),
    "TOT_PRECIP": (0.09, 0.45),
    "CLCT": (62.0, 36.0),
    "ASWDIR_S": (71.0, 140.0),
    "ASWDIFD_S": (48.0, 62.0),
    "ASHFL_S": (-11.0, 42.0),
}
TRANSFORMED_STATS = {
    "U_10M": (0.4, 3.8),
    "T_2M": (282.5, 8.1),
    "TOT_PRECIP": (1.3, 3.9),
    "CLCT": (1.1, 3.2),
    "ASWDIR_S": (2.1, 2.4),
    "ASWDIFD_S": (2.6, 2.0),
    "ASHFL_S": (-0.4, 1.6),
}
CHANNEL_TRANSFORMS = {
    "TOT_PRECIP": {"transform": "log_eps", "eps": 1e-5},
    "CLCT": {"transform": "logit_eps_percent", "eps": 0.01, "scale": 100.0},
    "ASWDIR_S": {"transform": "log_eps", "eps": 1.0},
    "ASWDIFD_S": {"transform": "log_eps", "eps": 1.0},
    "ASHFL_S": {"transform": "asinh", "eps": 10.0},
}
CONSTRAINTS = {
    "bounds": {
        "TOT_PRECIP": {"min": 0.0, "max": None},
        "CLCT": {"min": 0.0, "max": 100.0, "mode": "clamp"},
        "T_2M": {"min": 0.0, "max": None},
        "ASWDIR_S": {"min": 0.0, "max": None},
    },
    "sza_gate": {
        "half_width": 0.05,
        "channels": {"ASWDIR_S": {"threshold": 0.03}, "ASWDIFD_S": {"half_width": 0.04}},
    },
}
NORM = {
    "elevation": {"method": "zscore", "mean": 452.0, "std": 381.0},
    "land_fraction": {"method": "identity"},
    "z0_lu": {"method": "zscore", "mean": 0.31, "std": 0.42},
}


def rotated_pole_grid(
    shape: tuple[int, int], *, pole: tuple[float, float] = (39.25, -162.0), step: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Geographic lat/lon ``(y, x)`` of a regular rotated-pole grid (COSMO-REA6's pole),
    centred near 50.5 N 10 E."""
    plat, plon = np.deg2rad(pole[0]), pole[1]
    h, w = shape
    rlat = np.deg2rad(-0.3 + step * (np.arange(h) - h / 2))
    rlon = np.deg2rad(-5.3 + step * (np.arange(w) - w / 2))
    rlat, rlon = np.meshgrid(rlat, rlon, indexing="ij")
    lat = np.arcsin(np.sin(rlat) * np.sin(plat) + np.cos(rlat) * np.cos(rlon) * np.cos(plat))
    x = np.sin(plat) * np.cos(rlat) * np.cos(rlon) - np.cos(plat) * np.sin(rlat)
    lon = plon + 180.0 + np.rad2deg(np.arctan2(np.cos(rlat) * np.sin(rlon), x))
    return np.rad2deg(lat), (lon + 180.0) % 360.0 - 180.0


def _extended_invariants(path: Path, seed: int) -> None:
    lat, lon = rotated_pole_grid(EXTENDED)
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(np.cumsum(rng.normal(size=EXTENDED), 0), 1)
    elevation = np.clip(450.0 + 60.0 * (smooth - smooth.mean()), 0.0, None)
    fields = {
        "elevation": (elevation, {"units": "m", "long_name": "surface height"}),
        "land_fraction": (rng.uniform(0.0, 1.0, EXTENDED), {"units": "1"}),
        "z0_lu": (rng.gamma(2.0, 0.15, EXTENDED), {"units": "m"}),
    }
    ds = xr.Dataset(
        {k: (("y", "x"), v.astype(np.float32), a) for k, (v, a) in fields.items()},
        coords={"lat": (("y", "x"), lat), "lon": (("y", "x"), lon)},
    )
    ds.to_netcdf(path)


def _grids(path: Path) -> None:
    lat, lon = rotated_pole_grid(EXTENDED)
    i0, j0 = OFFSET
    lat, lon = (
        lat[i0 : i0 + NATIVE[0], j0 : j0 + NATIVE[1]],
        lon[i0 : i0 + NATIVE[0], j0 : j0 + NATIVE[1]],
    )
    lat_in = np.arange(np.floor(lat.min()) - 1.0, np.ceil(lat.max()) + 1.0 + 0.125, 0.25)
    lon_in = np.arange(np.floor(lon.min()) - 1.0, np.ceil(lon.max()) + 1.0 + 0.125, 0.25)
    xr.Dataset(
        {
            "lat_input": (("lat_input",), lat_in),
            "lon_input": (("lon_input",), lon_in),
            "lat_output": (("y", "x"), lat),
            "lon_output": (("y", "x"), lon),
        }
    ).to_netcdf(path)


def metadata(resolution: str, **changes: Any) -> dict[str, Any]:
    """The fixture's ``metadata.json`` of ``resolution``, with top-level ``changes``."""
    meta = {
        "era5_variables": list(COSMO_ERA5),
        "output_variables": list(COSMO_OUTPUTS),
        "pre_invariant_variables": list(COSMO_PRE),
        "post_invariant_variables": list(COSMO_POST),
        "modes": {
            "mean": {"stats": "output", "channel_transforms": False},
            "diffusion": {"stats": "output_transformed", "channel_transforms": True},
        },
        "channel_transforms": CHANNEL_TRANSFORMS,
        "constraints": CONSTRAINTS,
        "number_of_samples": 2,
        "sampler": {"num_steps": 18, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0},
        "checkpoints": {
            f"{resolution}_mean": f"{resolution}_mean.mdlus",
            f"{resolution}_diffusion": f"{resolution}_diffusion.mdlus",
        },
        "regression": {"patch_size": 2, "attn_kernel_size": 3},
        "diffusion": {"patch_size": 2, "attn_kernel_size": 3},
        "invariants": {
            "file": "invariants_extended.nc",
            "native_offset": list(OFFSET),
            "native_shape": list(NATIVE),
            "norm_stats_file": "invariants_norm.json",
        },
        "description": "fixture: random weights",
    }
    meta.update(changes)
    return meta


def write_cosmo_package(
    directory: str | os.PathLike,
    *,
    resolutions: tuple[str, ...] = ("rea6",),
    seed: int = 0,
    conv_head: bool = False,
) -> Path:
    """Write the fixture package under ``directory``; returns it. ``conv_head``: the mean
    network's detokenizer is ``proj_reshape_2d_conv`` (:data:`CONV_DETOKENIZER`)."""
    root = Path(directory)
    (root / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"name": "corrdiff-cosmo-era5 fixture"}))
    n_bg = len(COSMO_ERA5) + len(COSMO_PRE) + 1 + len(COSMO_POST)
    n_out = len(COSMO_OUTPUTS)
    for k, res in enumerate(resolutions):
        folder = root / res
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metadata.json").write_text(json.dumps(metadata(res), indent=2))
        block = lambda stats: {n: {"mean": m, "std": s} for n, (m, s) in stats.items()}  # noqa: E731
        stats = {
            "era5": block(ERA5_STATS),
            "output": block(OUTPUT_STATS),
            "output_transformed": block(TRANSFORMED_STATS),
        }
        (folder / "stats.json").write_text(json.dumps(stats, indent=2))
        (folder / "invariants_norm.json").write_text(json.dumps({"channels": NORM}))
        _grids(folder / "grids.nc")
        _extended_invariants(folder / "invariants_extended.nc", seed + k)
        mean_kwargs = small_dit_kwargs(
            n_bg,
            n_out,
            NATIVE,
            patch_size=2,
            hidden_size=16,
            **(CONV_DETOKENIZER if conv_head else {}),
        )
        write_dit_mdlus(folder / f"{res}_mean.mdlus", mean_kwargs, seed=seed + 10 * k + 1)
        diffusion_kwargs = small_dit_kwargs(
            n_out + n_bg, n_out, NATIVE, patch_size=2, hidden_size=16
        )
        write_dit_mdlus(
            folder / f"{res}_diffusion.mdlus",
            diffusion_kwargs,
            layout="EDMPreconditioner",
            seed=seed + 10 * k + 2,
        )
    return root
