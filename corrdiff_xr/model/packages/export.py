"""Export a model trained here as a generic CorrDiff package (Earth2Studio's layout).

:func:`export_package` writes a directory that Earth2Studio 0.19's generic
``CorrDiff.load_model(Package(directory))`` loads (and that
:func:`~corrdiff_xr.model.packages.open_package` reads back):

``regression.mdlus``, ``diffusion.mdlus``
    The networks in PhysicsNeMo 2.2.2's format (:mod:`corrdiff_xr.model.mdlus_write`). A
    regression-only model gets a small all-zero denoiser, which Earth2Studio loads but never
    runs, since ``inference_mode`` is then ``"regression"``.
``metadata.json``
    Variables (``input_variables`` = the codec's inputs, ``invariant_variables`` = its static
    fields, ``output_variables`` = its targets), the sampler (from the model's sampler
    defaults: our Heun = Earth2Studio's ``"stochastic"`` EDM sampler, our Euler = its
    ``"deterministic"`` one; a sampler it cannot run is written as the closest one it can,
    with a warning), ``hr_mean_conditioning``, ``sigma_min``/``sigma_max``, ``inference_mode``.
``stats.json``
    ``{"input" | "output" | "invariants": {name: {"mean", "std"}}}``, the codec's statistics.
``output_latlon_grid.nc``, ``input_latlon_grid.nc``, ``invariants.nc``
    The fine grid (1-D increasing ``lat``/``lon`` when rectilinear, else 2-D), the coarse
    grid (1-D, increasing, regular) and the static fields on the fine grid, all taken from
    ``data``. Longitudes are written in one convention (the fine ones moved into the coarse
    grid's range), since Earth2Studio interpolates by coordinate value.

Earth2Studio interpolates the coarse inputs bilinearly in latitude/longitude, which matches
our regridding only where the fine grid lies within the coarse grid's points: grids it cannot
represent that way are refused in one line, as are packages it would compute differently.
The directory is built beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from corrdiff_xr.dims import LAT, LAT_ATTRS, LAT_COARSE, LON, LON_ATTRS, LON_COARSE, X, Y
from corrdiff_xr.model.mdlus_write import (
    ExportError,
    write_regression,
    write_residual,
)

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.model.core import CorrDiff

__all__ = ["ExportError", "export_package"]

#: Earth2Studio's own tolerances (relative grid spacing; rectilinear test)
_SPACING_RTOL = 1e-5
_RECTILINEAR_TOL = 1e-5


# -- grids --------------------------------------------------------------------------------
def _regular(values: np.ndarray) -> bool:
    steps = np.diff(values)
    return values.size > 1 and bool(np.allclose(steps, steps[0], rtol=_SPACING_RTOL))


def _coarse_axes(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The coarse grid as 1-D increasing, regular latitudes and (unwrapped) longitudes."""
    if LAT_COARSE not in ds.coords or LON_COARSE not in ds.coords:
        raise ExportError(
            f"the data's coarse grid has no '{LAT_COARSE}'/'{LON_COARSE}' coordinates; "
            "the package's input grid needs them"
        )
    lat = np.asarray(ds[LAT_COARSE].values, np.float64)
    lon = np.asarray(ds[LON_COARSE].values, np.float64)
    if lat.ndim != 2 or not (
        np.allclose(lat, lat[:, :1], atol=_RECTILINEAR_TOL)
        and np.allclose(lon, lon[:1, :], atol=_RECTILINEAR_TOL)
    ):
        raise ExportError(
            "the data's coarse grid is not a latitude/longitude grid (lat_coarse varies along "
            "x_coarse or lon_coarse along y_coarse); a generic package needs a regular one"
        )
    lat1, lon1 = lat[:, 0], np.unwrap(lon[0, :], period=360.0)
    lat1 = lat1[::-1] if lat1[0] > lat1[-1] else lat1  # same points, Earth2Studio's order
    lon1 = lon1[::-1] if lon1[0] > lon1[-1] else lon1
    for name, axis in (("latitude", lat1), ("longitude", lon1)):
        if not _regular(axis):
            raise ExportError(
                f"the data's coarse {name}s are not evenly spaced ({axis[:3].round(4).tolist()} "
                f"...); a generic package needs a regular latitude/longitude input grid"
            )
    return lat1, lon1


def _fine_latlon(ds: xr.Dataset, img_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if LAT not in ds.coords or LON not in ds.coords:
        raise ExportError(
            f"the data has no 2-D '{LAT}'/'{LON}' coordinates of its fine grid; the package "
            "needs them"
        )
    lat = np.asarray(ds[LAT].transpose(Y, X).values, np.float64)
    lon = np.asarray(ds[LON].transpose(Y, X).values, np.float64)
    if lat.shape != tuple(img_shape):
        raise ExportError(
            f"the data's fine grid is {lat.shape[0]} x {lat.shape[1]}, the model's "
            f"{img_shape[0]} x {img_shape[1]}; export with the data the model was trained on"
        )
    return lat, lon


def _output_grid(lat: np.ndarray, lon: np.ndarray) -> tuple[xr.Dataset, tuple[str, str]]:
    """``output_latlon_grid.nc`` and the dims of fields on it."""
    rectilinear = np.allclose(lat, lat[:, :1], atol=_RECTILINEAR_TOL) and np.allclose(
        lon, lon[:1, :], atol=_RECTILINEAR_TOL
    )
    if not rectilinear:
        dims = (Y, X)
        grid = xr.Dataset({LAT: (dims, lat), LON: (dims, lon)})
    else:
        lat1, lon1 = lat[:, 0], lon[0, :]
        for name, axis, along in (("latitude", lat1, "y"), ("longitude", lon1, "x")):
            if axis.size > 1 and not np.all(np.diff(axis) > 0):
                raise ExportError(
                    f"the fine grid's {name} decreases along {along}; a generic package needs "
                    f"it increasing and the networks cannot be flipped (retrain on data with "
                    f"increasing {name})"
                )
        dims = (LAT, LON)
        grid = xr.Dataset(coords={LAT: (LAT, lat1), LON: (LON, lon1)})
    grid[LAT].attrs.update(LAT_ATTRS)
    grid[LON].attrs.update(LON_ATTRS)
    return grid, dims


def _check_inside(lat: np.ndarray, lon: np.ndarray, lat_in: np.ndarray, lon_in: np.ndarray):
    for name, fine, coarse in (("latitude", lat, lat_in), ("longitude", lon, lon_in)):
        if fine.min() < coarse.min() or fine.max() > coarse.max():
            raise ExportError(
                f"the fine grid's {name}s [{fine.min():.4f}, {fine.max():.4f}] reach beyond the "
                f"coarse grid's points [{coarse.min():.4f}, {coarse.max():.4f}]; Earth2Studio "
                "interpolates only between them (export with a coarse grid that covers the "
                "fine one)"
            )


# -- files --------------------------------------------------------------------------------
def _invariants(
    pair: DownscalingData, codec: Codec, dims: tuple[str, str], grid: xr.Dataset
) -> xr.Dataset:
    """The static fields on the output grid, in the model's units."""
    from corrdiff_xr.units import conversion

    fields = {}
    for name in codec.static:
        da = pair.dataset[name].transpose(Y, X)
        values = np.asarray(da.values, np.float64)
        have, want = da.attrs.get("units"), codec.units.get(name)
        if have and want:
            scale, offset = conversion(have, want, name=name)
            values = values * scale + offset
        attrs = {k: v for k, v in {"units": want or have}.items() if v}
        fields[name] = (dims, values.astype(np.float32), attrs)
    coords = {k: grid[k] for k in dims if k in grid.coords}
    return xr.Dataset(fields, coords=coords)


def _stats(codec: Codec) -> dict[str, dict[str, dict[str, float]]]:
    def block(names):
        return {n: {"mean": codec.stats[n][0], "std": codec.stats[n][1]} for n in names}

    return {
        "input": block(codec.inputs),
        "output": block(codec.targets),
        "invariants": block(codec.static),
    }


def _sampler(model: CorrDiff) -> dict[str, Any]:
    """Sampler and mode keys of ``metadata.json``: Earth2Studio's nearest to the model's."""
    from corrdiff_xr.config import SamplerConfig

    if model.residual is None:  # no sampler runs: Earth2Studio's defaults, no warnings
        return {"inference_mode": "regression", "hr_mean_conditioning": False}
    s = model.sampler_config or SamplerConfig()
    hr_mean = model.edm_config.hr_mean_conditioning
    deterministic = s.solver == "euler" and not hr_mean
    if s.solver not in ("heun", "euler") or (s.solver == "euler" and hr_mean):
        why = "with hr_mean_conditioning" if s.solver == "euler" else "at all"
        _warn(
            f"Earth2Studio cannot run the model's {s.solver} sampler {why}; the package uses its "
            f"EDM Heun sampler ('stochastic') with {s.num_steps} steps"
        )
    dropped = {
        k: v
        for k, v in (("rho", s.rho), ("S_churn", s.S_churn), ("S_noise", s.S_noise))
        if v != getattr(SamplerConfig(), k)
    }
    if dropped:
        _warn(f"Earth2Studio's sampler has fixed {sorted(dropped)}; the package drops {dropped}")
    return {
        "number_of_steps": s.num_steps,
        "sampler_type": "deterministic" if deterministic else "stochastic",
        "solver": "euler" if deterministic else "heun",
        "sigma_min": s.sigma_min,
        "sigma_max": s.sigma_max,
        "hr_mean_conditioning": bool(hr_mean),
        "inference_mode": "both",
    }


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _metadata(model: CorrDiff) -> dict[str, Any]:
    codec = model.codec
    assert codec is not None  # export_package refuses a model without one
    return {
        "input_variables": list(codec.inputs),
        "output_variables": list(codec.targets),
        "invariant_variables": list(codec.static),
        "number_of_samples": 1,
        **_sampler(model),
    }


def _placeholder_residual(model: CorrDiff, path: Path) -> None:
    """A zero 1-level denoiser of the right channel counts (never run: regression mode)."""
    import dataclasses

    import torch

    from corrdiff_xr.model.core import DEFAULT_RESIDUAL, CorrDiff

    cfg = dataclasses.replace(
        DEFAULT_RESIDUAL, model_channels=8, channel_mult=(1,), num_blocks=1,
        attn_resolutions=(), dropout=0.0, gridtype="none", N_grid_channels=0,
    )  # fmt: skip
    h, w = model.img_shape
    small = CorrDiff(
        None, img_shape=(h, w), regression_network=cfg, residual_network=cfg,
        in_channels=model.in_channels, out_channels=model.out_channels,
        edm=dataclasses.replace(model.edm_config, hr_mean_conditioning=False),
    )  # fmt: skip
    assert small.residual is not None  # built with a residual network
    with torch.no_grad():
        for p in small.residual.parameters():
            p.zero_()
    write_residual(small, path)


def _write_all(model: CorrDiff, pair: DownscalingData, staged: Path) -> None:
    codec = model.codec
    assert codec is not None  # export_package refuses a model without one
    lat_in, lon_in = _coarse_axes(pair.dataset)
    lat, lon = _fine_latlon(pair.dataset, model.img_shape)
    lon = lon_in[0] + np.mod(lon - lon_in[0], 360.0)  # the coarse grid's convention
    _check_inside(lat, lon, lat_in, lon_in)
    grid, dims = _output_grid(lat, lon)
    coarse = xr.Dataset(coords={LAT: (LAT, lat_in), LON: (LON, lon_in)})
    coarse[LAT].attrs.update(LAT_ATTRS)
    coarse[LON].attrs.update(LON_ATTRS)
    invariants = _invariants(pair, codec, dims, grid)
    metadata = _metadata(model)  # warns before anything is written

    write_regression(model, staged / "regression.mdlus")
    if model.residual is not None:
        write_residual(model, staged / "diffusion.mdlus")
    else:
        _placeholder_residual(model, staged / "diffusion.mdlus")
    (staged / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (staged / "stats.json").write_text(json.dumps(_stats(codec), indent=2))
    grid.to_netcdf(staged / "output_latlon_grid.nc")
    coarse.to_netcdf(staged / "input_latlon_grid.nc")
    if codec.static:
        invariants.to_netcdf(staged / "invariants.nc")


def _check_target(directory: Path, overwrite: bool) -> None:
    """Refuse a link or file, a non-empty directory without ``overwrite``, and (even with
    it) a non-empty directory that is not a package: overwriting replaces the whole tree."""
    if not os.path.lexists(directory):
        return
    if directory.is_symlink() or not directory.is_dir():
        raise ExportError(f"{directory} exists and is not a directory; choose another path")
    entries = {p.name for p in directory.iterdir()}
    if entries and not overwrite:
        raise ExportError(
            f"{directory} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    if entries and not {"metadata.json", "regression.mdlus"} <= entries:
        raise ExportError(
            f"{directory} is not a CorrDiff package (no metadata.json and regression.mdlus); "
            "refusing to replace it, choose another path"
        )


def _load(model: CorrDiff | str | os.PathLike[str]) -> CorrDiff:
    from corrdiff_xr.model.core import CorrDiff

    if isinstance(model, CorrDiff):
        return model
    if isinstance(model, (str, os.PathLike)):
        return CorrDiff.load(model)
    raise ExportError(
        f"export_package needs a CorrDiff model or a checkpoint path, got {type(model).__name__}"
    )


def export_package(
    model: CorrDiff | str | os.PathLike[str],
    data: str | os.PathLike[str] | xr.Dataset | DownscalingData,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    params: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` with ``data``'s grids as a generic CorrDiff package directory.

    Parameters
    ----------
    model : CorrDiff or path
        A model trained here, or its checkpoint (:meth:`CorrDiff.save`); it needs a codec.
    data
        Anything :func:`~corrdiff_xr.data.open_source` opens (a canonical Zarr store,
        ``catalog:NAME/ENTRY``, a Dataset ...) on the model's fine grid: it gives the fine and
        coarse grids and the static fields. Targets are not needed.
    directory : path
        The package directory to create.
    overwrite : bool
        Replace an existing package in ``directory`` (a non-empty directory is refused
        otherwise, and a directory that is not a package always).
    params : dict, optional
        User parameters of a ``catalog:`` source.

    Returns
    -------
    Path
        ``directory``, complete (built beside it, then renamed into place).

    Raises
    ------
    ExportError
        A model or grid the package cannot represent, or an existing ``directory``.
    """
    from corrdiff_xr._atomic import atomic_path
    from corrdiff_xr.data import open_source

    directory = Path(directory)
    _check_target(directory, overwrite)
    model = _load(model)
    if model.codec is None:
        raise ExportError(
            "the model has no codec (variable names and statistics); export a model trained "
            "with corrdiff_xr"
        )
    shaped = sorted(
        set(getattr(model.codec, "transforms", {})) | set(getattr(model.codec, "bounds", {}))
    )
    if shaped:  # its statistics are of transformed values, which the layout cannot say
        raise ExportError(
            f"the model transforms or bounds {shaped} (data.transforms/bounds); the generic "
            "package layout normalises raw values only, so it cannot be exported as one"
        )
    if model.codec.features:  # Earth2Studio's CorrDiff computes no time features
        raise ExportError(
            f"the model takes time features {list(model.codec.features)} (data.features); the "
            "generic package layout has none, so it cannot be exported as one"
        )
    edm = model.edm_config
    objective = (getattr(edm, "objective", "residual"), getattr(edm, "nu", None))
    if objective != ("residual", None) or getattr(edm, "flow", None) is not None:
        raise ExportError(
            f"the model's objective is edm.objective={objective[0]!r}, edm.nu={objective[1]!r}, "
            f"edm.flow={getattr(edm, 'flow', None)!r}; a generic package holds a residual EDM "
            "model with Gaussian noise only"
        )
    if model.target_mask is not None:
        _warn("the model masks its targets; Earth2Studio writes every pixel (no NaN mask)")
    pair = open_source(data, params=params, static=list(model.codec.static) or None,
                       require_targets=False, what="data")  # fmt: skip
    with atomic_path(directory, replace=overwrite) as staged:
        staged.mkdir()
        _write_all(model, pair, staged)
    return directory
