"""Fixture CorrDiff packages with random weights, in exactly the published layouts.

The networks are PhysicsNeMo 2.2.2's own classes (``UNet``, ``EDMPrecondSuperResolution``,
``EDMPrecondSR``, the ones Earth2Studio 0.19 loads), with every parameter randomised (fresh
reference networks start with near-zero output layers, so comparisons would pass trivially)
and written with PhysicsNeMo's own ``Module.save``. The rest of each package is written the way
Earth2Studio reads it:

* :func:`write_generic_package`: ``regression.mdlus``, ``diffusion.mdlus``, ``metadata.json``,
  ``stats.json``, ``output_latlon_grid.nc``, ``input_latlon_grid.nc`` (or ``latlon_res`` in
  the metadata), ``invariants.nc``; ERA5-like input names and realistic statistics;
  :func:`zip_package` packs a directory as a zip;
* :func:`write_taiwan_package`: NGC's ``corrdiff_inference_package.zip`` (checkpoints and a
  Zarr v2 dataset with ``XLAT``/``XLONG`` and 20-channel centres and scales); its networks run
  on 448 x 448 because Earth2Studio hard-codes that size, so they are kept tiny instead.

Shared with benchmarks: sizes are arguments. Needs PhysicsNeMo (:func:`physicsnemo_ref.physicsnemo`).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from physicsnemo_ref import physicsnemo, randomize_

__all__ = [
    "GENERIC_INPUTS",
    "GENERIC_INVARIANTS",
    "GENERIC_OUTPUTS",
    "STATS",
    "TAIWAN_INPUT_INDICES",
    "TAIWAN_OUTPUT_INDICES",
    "era5_archive",
    "write_generic_package",
    "write_taiwan_package",
    "zip_package",
]

GENERIC_INPUTS = ("t2m", "u10m", "v10m", "msl", "tcwv", "z500", "t850")
GENERIC_OUTPUTS = ("t2m", "u10m", "v10m", "tp")
GENERIC_INVARIANTS = ("orography", "lsm")

#: realistic (mean, std) of ERA5-like fields, by package name
STATS: dict[str, tuple[float, float]] = {
    "t2m": (281.3, 17.2),
    "u10m": (-0.12, 5.4),
    "v10m": (0.21, 4.7),
    "msl": (101_105.0, 1_080.0),
    "tcwv": (18.9, 13.6),
    "z500": (55_410.0, 3_020.0),
    "t850": (274.6, 14.1),
    "tp": (0.00011, 0.00042),
    "orography": (312.0, 540.0),
    "lsm": (0.37, 0.46),
}

INVARIANT_UNITS = {"orography": "m", "lsm": "1"}
TAIWAN_INPUT_INDICES = (0, 1, 2, 3, 4, 9, 10, 11, 12, 17, 18, 19)
TAIWAN_OUTPUT_INDICES = (0, 17, 18, 19)
TAIWAN_SHAPE = (448, 448)  # Earth2Studio's CorrDiffTaiwan builds its grid channels at 448


def _net_kwargs(model_channels: int, levels: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_channels": model_channels,
        "channel_mult": [1, 2, 2, 2][:levels],
        "num_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
        **extra,
    }


def _saved(net, path: Path, seed: int) -> Path:
    randomize_(net, seed=seed)
    net.save(str(path))
    return path


def _pn_classes():
    if physicsnemo() is None:
        raise RuntimeError("package fixtures need PhysicsNeMo (tests/physicsnemo_ref.py)")
    from physicsnemo.diffusion.preconditioners import EDMPrecondSR, EDMPrecondSuperResolution
    from physicsnemo.models.diffusion_unets import UNet

    return UNet, EDMPrecondSuperResolution, EDMPrecondSR


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def _stats_json(inputs, outputs, invariants, stats) -> dict[str, Any]:
    def block(names):
        return {n: {"mean": stats[n][0], "std": stats[n][1]} for n in names}

    out = {"input": block(inputs), "output": block(outputs)}
    if invariants:
        out["invariants"] = block(invariants)
    return out


def generic_metadata(
    inputs, outputs, invariants, hr_mean_conditioning: bool, extra: Mapping | None = None
) -> dict[str, Any]:
    """A generic package's ``metadata.json``, the fixtures' sampler settings, ``extra`` on top."""
    return {
        "input_variables": list(inputs),
        "output_variables": list(outputs),
        "invariant_variables": list(invariants),
        "number_of_samples": 2,
        "number_of_steps": 6,
        "solver": "euler",
        "sampler_type": "stochastic",
        "inference_mode": "both",
        "hr_mean_conditioning": hr_mean_conditioning,
        "seed": 1234,
        **(extra or {}),
    }


def _output_grid(grid: tuple[int, int], curvilinear: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 0.25 degree grid over central Europe, increasing; optionally slightly rotated (2-D)."""
    h, w = grid
    lat = 44.0 + 0.25 * np.arange(h)
    lon = 5.0 + 0.25 * np.arange(w)
    if not curvilinear:
        return lat, lon
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    return lat[:, None] + 0.01 * jj + 0 * ii, lon[None, :] - 0.01 * ii + 0 * jj


def write_generic_package(
    directory: str | os.PathLike,
    *,
    grid: tuple[int, int] = (32, 32),
    model_channels: int = 16,
    levels: int = 2,
    inputs: Sequence[str] = GENERIC_INPUTS,
    outputs: Sequence[str] = GENERIC_OUTPUTS,
    invariants: Sequence[str] = GENERIC_INVARIANTS,
    hr_mean_conditioning: bool = True,
    input_grid_file: bool = True,
    curvilinear: bool = False,
    metadata: Mapping[str, Any] | None = None,
    stats: Mapping[str, tuple[float, float]] = STATS,
    seed: int = 0,
    network: Mapping[str, Any] | None = None,
) -> Path:
    """Write a generic Earth2Studio CorrDiff package into ``directory``; returns it.

    ``network`` entries replace SongUNet arguments of both networks (e.g. ``num_blocks``,
    ``attn_resolutions`` for CorrDiff-Mini's size).

    ``metadata`` entries are merged over the defaults (stochastic sampler, 6 steps, 2 members,
    seed 1234). With ``input_grid_file=False`` the input grid is given as ``latlon_res`` (1
    degree) instead of ``input_latlon_grid.nc``.
    """
    UNet, EDMPrecondSuperResolution, _ = _pn_classes()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    n_in, n_out = len(inputs) + len(invariants), len(outputs)
    grid_kw = {"gridtype": "sinusoidal", "N_grid_channels": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = UNet(
            img_resolution=list(grid),
            img_in_channels=n_in + 4,
            img_out_channels=n_out,
            model_type="SongUNetPosEmbd",
            **{
                **_net_kwargs(model_channels, levels, embedding_type="zero", **grid_kw),
                **(network or {}),
            },
        )
        res = EDMPrecondSuperResolution(
            img_resolution=list(grid),
            img_in_channels=n_in + (n_out if hr_mean_conditioning else 0) + 4,
            img_out_channels=n_out,
            model_type="SongUNetPosEmbd",
            **{
                **_net_kwargs(model_channels, levels, gridtype="learnable", N_grid_channels=4),
                **(network or {}),
            },
        )
    _saved(reg, out / "regression.mdlus", seed)
    _saved(res, out / "diffusion.mdlus", seed + 1)
    meta = generic_metadata(inputs, outputs, invariants, hr_mean_conditioning, metadata)
    lat, lon = _output_grid(grid, curvilinear)
    if not input_grid_file:
        meta.setdefault("latlon_res", 1.0)
    _write_json(out / "metadata.json", meta)
    _write_json(out / "stats.json", _stats_json(inputs, outputs, invariants, stats))
    dims = ("lat", "lon") if lat.ndim == 1 else ("y", "x")
    if lat.ndim == 1:
        xr.Dataset(coords={"lat": lat, "lon": lon}).to_netcdf(out / "output_latlon_grid.nc")
    else:
        xr.Dataset({"lat": (dims, lat), "lon": (dims, lon)}).to_netcdf(
            out / "output_latlon_grid.nc"
        )
    if input_grid_file:
        coarse = xr.Dataset(
            coords={
                "lat": np.arange(np.floor(lat.min()) - 1, np.ceil(lat.max()) + 1.5, 1.0),
                "lon": np.arange(np.floor(lon.min()) - 1, np.ceil(lon.max()) + 1.5, 1.0),
            }
        )
        coarse.to_netcdf(out / "input_latlon_grid.nc")
    if invariants:
        rng = np.random.default_rng(seed + 2)
        fields = {}
        for name in invariants:
            mean, std = stats[name]
            values = (mean + std * rng.standard_normal(grid)).astype(np.float32)
            fields[name] = (dims, values, {"units": INVARIANT_UNITS.get(name, "1")})
        coords = {"lat": lat, "lon": lon} if lat.ndim == 1 else {}
        xr.Dataset(fields, coords=coords).to_netcdf(out / "invariants.nc")
    return out


def zip_package(directory: str | os.PathLike, path: str | os.PathLike, *, prefix: str = "") -> Path:
    """Zip the files of ``directory`` (deflated, sorted names under ``prefix``) into ``path``."""
    src, path = Path(directory), Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for file in sorted(p for p in src.rglob("*") if p.is_file()):
            z.write(file, prefix + file.relative_to(src).as_posix())
    return path


def _taiwan_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A curvilinear ~2 km grid over Taiwan inside the fixed ERA5 input grid."""
    h, w = shape
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    lat = 20.2 + 6.6 * ii / (h - 1) + 0.05 * np.sin(jj / 40.0)
    lon = 116.4 + 8.9 * jj / (w - 1) + 0.04 * np.cos(ii / 50.0)
    return lat.astype(np.float32), lon.astype(np.float32)


def write_taiwan_package(
    directory: str | os.PathLike,
    *,
    model_channels: int = 8,
    levels: int = 2,
    seed: int = 0,
    extracted: bool = False,
) -> Path:
    """Write NGC's CorrDiff Taiwan package (``corrdiff_inference_package.zip``) into
    ``directory`` and return the zip's path (the extracted folder's with ``extracted=True``).

    The regression ``UNet`` is a plain ``SongUNet`` that receives 12 inputs + 4 sin/cos grid
    channels from the caller; the residual ``EDMPrecondSR`` (legacy condition scaling) has
    its own sinusoidal grid; the networks run on 448 x 448 and ``XLAT``/``XLONG`` are 450 x 450
    (Earth2Studio interpolates onto them and crops one pixel on each side).
    """
    UNet, _, EDMPrecondSR = _pn_classes()
    import zarr

    out = Path(directory)
    root = out / "corrdiff_inference_package"
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    n_in, n_out = len(TAIWAN_INPUT_INDICES), len(TAIWAN_OUTPUT_INDICES)
    # a tiny network's bottleneck is 224 x 224: global attention there is unaffordable
    no_attention = {"bottleneck_attention": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = UNet(
            img_resolution=list(TAIWAN_SHAPE),
            img_in_channels=n_in + 4,
            img_out_channels=n_out,
            model_type="SongUNet",
            **_net_kwargs(model_channels, levels, embedding_type="zero", **no_attention),
        )
        res = EDMPrecondSR(
            img_resolution=list(TAIWAN_SHAPE),
            img_channels=n_out,
            img_in_channels=n_in + n_out + 4,
            img_out_channels=n_out,
            model_type="SongUNetPosEmbd",
            scale_cond_input=True,
            **_net_kwargs(
                model_channels, levels, gridtype="sinusoidal", N_grid_channels=4, **no_attention
            ),
        )
    _saved(reg, root / "checkpoints" / "regression.mdlus", seed)
    _saved(res, root / "checkpoints" / "diffusion.mdlus", seed + 1)
    rng = np.random.default_rng(seed + 2)
    lat, lon = _taiwan_grid((TAIWAN_SHAPE[0] + 2, TAIWAN_SHAPE[1] + 2))
    group = zarr.open_group(
        str(root / "dataset" / "2023-01-24-cwb-4years_5times.zarr"), mode="w", zarr_format=2
    )
    group.create_array("XLAT", data=lat, chunks=(225, 225))
    group.create_array("XLONG", data=lon, chunks=(225, 225))
    for name, centre in (("era5", 100.0), ("cwb", 10.0)):
        group.create_array(f"{name}_center", data=centre * rng.standard_normal(20))
        group.create_array(f"{name}_scale", data=0.5 + 5.0 * rng.random(20))
    if extracted:
        return root
    path = zip_package(root, out / "corrdiff_inference_package.zip", prefix=root.name + "/")
    for file in sorted(root.rglob("*"), reverse=True):  # only the zip, as NGC ships it
        file.unlink() if file.is_file() else file.rmdir()
    root.rmdir()
    return path


#: ARCO-ERA5 names of :data:`GENERIC_INPUTS`: (variable, pressure level or None, units)
ARCO = {
    "t2m": ("2m_temperature", None, "K"),
    "u10m": ("10m_u_component_of_wind", None, "m s-1"),
    "v10m": ("10m_v_component_of_wind", None, "m s-1"),
    "msl": ("mean_sea_level_pressure", None, "Pa"),
    "tcwv": ("total_column_water_vapour", None, "kg m-2"),
    "z500": ("geopotential", 500, "m2 s-2"),
    "t850": ("temperature", 850, "K"),
}


def era5_archive(times: int = 2, *, seed: int = 0) -> xr.Dataset:
    """A global 1-degree archive in ARCO-ERA5 conventions holding :data:`GENERIC_INPUTS`:
    latitude descending, longitudes 0..360, ``geopotential``/``temperature`` on a ``level`` dim
    (hPa), six-hourly, float32, smooth fields of realistic size plus noise."""
    lat, lon, levels = np.arange(90.0, -90.5, -1.0), np.arange(0.0, 360.0, 1.0), [500, 850]
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    rng = np.random.default_rng(seed)

    def field(name: str) -> np.ndarray:
        mean, std = STATS[name]
        noise = 0.3 * rng.standard_normal((times, *phi.shape))
        return (mean + std * (np.cos(2 * phi) * np.sin(lam) + noise)).astype(np.float32)

    out = {}
    for name, (var, level, units) in ARCO.items():
        if level is None:
            out[var] = (("time", "latitude", "longitude"), field(name), {"units": units})
        else:  # every level holds a field; the package's level holds its own
            stack = np.stack([field(name) for _ in levels], axis=1)
            out[var] = (("time", "level", "latitude", "longitude"), stack, {"units": units})
    time = np.datetime64("2023-07-01T00", "ns") + np.arange(times) * np.timedelta64(6, "h")
    coords = {"time": time, "level": levels, "latitude": lat, "longitude": lon}
    return xr.Dataset(out, coords=coords)
