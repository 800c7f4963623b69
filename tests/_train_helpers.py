"""Small on-disk data for the loader/training tests (stand-in until the data layer lands)."""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from corrdiff_xr.dims import TIME, X, Y


@dataclasses.dataclass(frozen=True)
class StandInPair:
    dataset: xr.Dataset
    inputs: tuple[str, ...] = ("u_in", "v_in")
    targets: tuple[str, ...] = ("t2m", "tp")
    static: tuple[str, ...] = ("orography",)

    @property
    def inputs_on_fine(self) -> xr.Dataset:
        return self.dataset[list(self.inputs)]

    @property
    def static_fields(self) -> xr.Dataset:
        return self.dataset[list(self.static)]

    @property
    def fine(self) -> xr.Dataset:
        return self.dataset[list(self.targets)]

    def isel(self, **kw):
        return StandInPair(self.dataset.isel(**kw), self.inputs, self.targets, self.static)


@dataclasses.dataclass(frozen=True)
class StandInCodec:
    in_channels: tuple[str, ...]
    out_channels: tuple[str, ...]

    def _enc(self, ds, names):
        arrs = [np.broadcast_to(ds[n].values, (ds.sizes[TIME], ds.sizes[Y], ds.sizes[X])) for n in names]
        return (np.stack(arrs, axis=1) - 0.5).astype(np.float32)

    def encode_inputs(self, ds):
        return self._enc(ds, self.in_channels)

    def encode_targets(self, ds):
        return self._enc(ds, self.out_channels)


def write_store(path, *, nt=12, ny=16, nx=16, chunk=2, seed=0) -> str:
    rng = np.random.default_rng(seed)
    dims = (TIME, Y, X)
    ds = xr.Dataset(
        {name: (dims, rng.random((nt, ny, nx), dtype=np.float32)) for name in ("u_in", "v_in", "t2m", "tp")},
        coords={TIME: np.arange(nt).astype("datetime64[h]").astype("datetime64[ns]")},
    )
    ds["orography"] = ((Y, X), rng.random((ny, nx), dtype=np.float32))
    # time index encoded into t2m so tests can check which sample they got
    ds["t2m"] = ds["t2m"] * 0 + np.arange(nt, dtype=np.float32)[:, None, None]
    ds.chunk({TIME: chunk}).to_zarr(str(path), mode="w")
    return str(path)


def open_standin(path):
    ds = xr.open_zarr(path)
    pair = StandInPair(ds)
    return pair, StandInCodec(pair.inputs + pair.static, pair.targets)
