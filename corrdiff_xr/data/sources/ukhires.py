"""The UK 1.5 km sample (iris-sample-data ``uk_hires.pp``) in the canonical layout.

The file holds Met Office UKV potential temperature on 7 model levels at 3 hourly validity
times, plus surface altitude, on a rotated-pole grid of 204 x 187 points (0.0135 deg, about
1.5 km) over northern England and Wales. We turn it into a small, real downscaling problem:

* targets ``(time, y, x)``: theta on the chosen model levels, ``theta_l{level}``;
* inputs ``(time, y_coarse, x_coarse)``: theta on the chosen levels block-averaged by
  ``factor`` (``theta_l{level}_coarse``), standing in for a coarse driving model;
* static ``(y, x)``: ``orography`` and a land-sea mask ``lsm`` derived from it (the UM sets
  orography to exactly zero over sea).

The fine grid is cropped to a multiple of ``factor``. ``y``/``x`` are the rotated grid's
latitude/longitude (``grid_latitude``/``grid_longitude``, longitudes shifted to (-180, 180]);
the coarse ones are the block means of the fine ones, and the 2-D geographic ``lat``/``lon``
of both grids come from the rotated-pole transform. Three times is enough to exercise code
paths, not to train a useful model.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr.data.sources.pp import open_pp, rotated_to_geographic
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

__all__ = ["sample_path", "uk_hires_dataset"]

_THETA = "air_potential_temperature"
_OROG = "surface_altitude"


def sample_path() -> str:
    """Path of ``uk_hires.pp`` in the installed iris-sample-data package."""
    try:
        import iris_sample_data
    except ImportError as err:  # optional dependency: say how to get it
        raise ImportError(
            "the UK 1.5 km sample needs the 'iris-sample-data' package: "
            "pip install 'corrdiff_xr[samples]'"
        ) from err
    path = os.path.join(iris_sample_data.path, "uk_hires.pp")
    if not os.path.exists(path):
        raise FileNotFoundError(f"uk_hires.pp is missing from iris-sample-data at {path}")
    return path


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor x factor`` blocks of the last two axes."""
    *lead, ny, nx = arr.shape
    blocks = arr.reshape(*lead, ny // factor, factor, nx // factor, factor)
    return blocks.mean(axis=(-3, -1))


def uk_hires_dataset(
    path: str | os.PathLike | None = None,
    *,
    target_levels: tuple[int, ...] = (1,),
    input_levels: tuple[int, ...] | None = None,
    factor: int = 4,
    chunks: dict[str, int] | None = None,
) -> xr.Dataset:
    """The UK 1.5 km sample as a canonical downscaling Dataset.

    Parameters
    ----------
    path
        PP file; default: ``uk_hires.pp`` from iris-sample-data.
    target_levels
        Model level numbers (``LBLEV``: 1, 4, 7, 10, 13, 16, 19) of the theta targets.
    input_levels
        Model levels given as coarse inputs; default: the target levels.
    factor
        Coarsening factor of the inputs (block mean); the fine grid is cropped to a multiple.
    chunks
        Dask chunks; default one time step per chunk.

    Returns
    -------
    xarray.Dataset
        Dask-backed, canonical layout (see :mod:`corrdiff_xr.data.layout`).
    """
    if int(factor) < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    src = open_pp(sample_path() if path is None else path)
    input_levels = _check_levels(src, target_levels, input_levels)
    src = _crop(src, factor)
    grid = _RotatedGrid.of(src, factor)
    data_vars = {
        **_theta_vars(src[_THETA], target_levels, input_levels, factor),
        **_static_vars(src[_OROG].values.astype(np.float32)),
    }
    ds = xr.Dataset(
        data_vars,
        coords=grid.coords(src["time"].values.astype("datetime64[ns]")),
        attrs={
            **grid.pole,
            "title": "UK 1.5 km potential temperature sample (iris-sample-data uk_hires.pp)",
            "source": "Met Office UKV via iris-sample-data",
            "coarsening_factor": int(factor),
        },
    )
    # chunk the data variables only; the small coordinates stay in memory
    chunks = {TIME: 1, **(chunks or {})}
    return ds.assign(
        {
            name: var.copy(data=da.from_array(var.values, chunks=_chunks_for(var, chunks)))
            for name, var in ds.data_vars.items()
        }
    )


def _check_levels(
    src: xr.Dataset,
    target_levels: tuple[int, ...],
    input_levels: tuple[int, ...] | None,
) -> tuple[int, ...]:
    """Refuse a file without theta/orography or levels it lacks; the input levels."""
    for name in (_THETA, _OROG):
        if name not in src:
            raise ValueError(f"{src.attrs.get('source')}: no {name} field in the PP file")
    available = [int(v) for v in src[_THETA]["model_level_number"].values]
    input_levels = tuple(target_levels if input_levels is None else input_levels)
    for level in (*target_levels, *input_levels):
        if level not in available:
            raise ValueError(f"model level {level} not in the file; available: {available}")
    if not target_levels:
        raise ValueError("target_levels is empty; give at least one model level")
    return input_levels


def _crop(src: xr.Dataset, factor: int) -> xr.Dataset:
    """The largest top-left part of the grid whose sides are multiples of ``factor``."""
    ny = src.sizes["grid_latitude"] // factor * factor
    nx = src.sizes["grid_longitude"] // factor * factor
    if ny == 0 or nx == 0:
        raise ValueError(f"factor {factor} is larger than the grid {dict(src.sizes)}")
    return src.isel(grid_latitude=slice(0, ny), grid_longitude=slice(0, nx))


_ROT_Y = {"units": "degrees", "standard_name": "grid_latitude", "axis": "Y"}
_ROT_X = {"units": "degrees", "standard_name": "grid_longitude", "axis": "X"}


class _RotatedGrid(NamedTuple):
    """Rotated-pole axes of the fine and coarse grids and their geographic lat/lon."""

    ry: np.ndarray
    rx: np.ndarray
    ryc: np.ndarray
    rxc: np.ndarray
    pole: dict[str, float]

    @classmethod
    def of(cls, src: xr.Dataset, factor: int) -> _RotatedGrid:
        """The grid of ``src``; longitudes in (-180, 180], coarse axes the block means."""
        ry = src["grid_latitude"].values
        rx = src["grid_longitude"].values
        rx = np.where(rx > 180.0, rx - 360.0, rx)
        pole = {
            k: float(src.attrs[k])
            for k in ("grid_north_pole_latitude", "grid_north_pole_longitude")
        }
        ryc = ry.reshape(-1, factor).mean(axis=1)
        rxc = rx.reshape(-1, factor).mean(axis=1)
        return cls(ry, rx, ryc, rxc, pole)

    def _geographic(self, ry: np.ndarray, rx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rotated_to_geographic(
            ry[:, None],
            rx[None, :],
            pole_lat=self.pole["grid_north_pole_latitude"],
            pole_lon=self.pole["grid_north_pole_longitude"],
        )

    def coords(self, times: np.ndarray) -> dict[str, tuple]:
        """The canonical coordinates at ``times``."""
        lat, lon = self._geographic(self.ry, self.rx)
        latc, lonc = self._geographic(self.ryc, self.rxc)
        return {
            TIME: (TIME, times),
            Y: (Y, self.ry, _ROT_Y),
            X: (X, self.rx, _ROT_X),
            Y_COARSE: (Y_COARSE, self.ryc, _ROT_Y),
            X_COARSE: (X_COARSE, self.rxc, _ROT_X),
            LAT: ((Y, X), lat, LAT_ATTRS),
            LON: ((Y, X), lon, LON_ATTRS),
            LAT_COARSE: ((Y_COARSE, X_COARSE), latc, LAT_ATTRS),
            LON_COARSE: ((Y_COARSE, X_COARSE), lonc, LON_ATTRS),
        }


def _theta_vars(
    theta: xr.DataArray,
    target_levels: tuple[int, ...],
    input_levels: tuple[int, ...],
    factor: int,
) -> dict[str, tuple]:
    """Fine theta targets and block-mean coarse theta inputs, one per model level."""
    data_vars: dict[str, tuple] = {}
    for level in target_levels:
        field = theta.sel(model_level_number=level)
        data_vars[f"theta_l{level}"] = (
            (TIME, Y, X),
            field.values.astype(np.float32),
            _attrs(level, field, "fine"),
        )
    for level in input_levels:
        field = theta.sel(model_level_number=level)
        data_vars[f"theta_l{level}_coarse"] = (
            (TIME, Y_COARSE, X_COARSE),
            # averaged in float64, stored as float32
            _block_mean(field.values.astype(np.float64), factor).astype(np.float32),
            _attrs(level, field, f"block mean over {factor}x{factor} fine cells"),
        )
    return data_vars


def _static_vars(orog: np.ndarray) -> dict[str, tuple]:
    """Orography and the land-sea mask derived from it (the UM's orography is 0 over sea)."""
    return {
        "orography": (
            (Y, X),
            orog,
            {
                "units": "m",
                "long_name": "surface altitude",
                "standard_name": "surface_altitude",
            },
        ),
        "lsm": (
            (Y, X),
            (orog != 0.0).astype(np.float32),
            {
                "units": "1",
                "long_name": "land-sea mask (1 = land), orography != 0",
                "standard_name": "land_binary_mask",
            },
        ),
    }


def _chunks_for(var: xr.DataArray, chunks: dict[str, int]) -> tuple[int, ...]:
    return tuple(
        min(int(chunks.get(d, -1)), n) if chunks.get(d, -1) != -1 else n
        for d, n in zip(map(str, var.dims), var.shape)
    )


def _attrs(level: int, field: xr.DataArray, grid: str) -> dict:
    height = float(field["level_height"])
    return {
        "units": "K",
        "long_name": f"potential temperature, model level {level} (~{height:.0f} m), {grid}",
        "standard_name": "air_potential_temperature",
        "model_level_number": int(level),
    }
