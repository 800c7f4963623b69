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


TINY_NET = {"model_channels": 8, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": [],
            "dropout": 0.0, "channels_last": False}


def synthetic_store(path, *, nt=8, n=16, chunk=2, lead_time=False) -> str:
    """The data layer's synthetic dataset on a 16x16 grid, written to Zarr."""
    from corrdiff_xr.data import synthetic_dataset

    ds = synthetic_dataset(ny=n, nx=n, nt=nt, factor=4, chunks={TIME: chunk})
    if lead_time:
        ds = ds.assign_coords(lead_time=(TIME, np.arange(nt, dtype=np.int64) % 3))
    ds.to_zarr(str(path), mode="w")
    return str(path)


def tiny_config(source, out, *, task="regression", **training) -> dict:
    """Plain-data TrainRunConfig for a few steps of a tiny network."""
    net = dict(TINY_NET, embedding_type="zero" if task == "regression" else "positional")
    train = {"duration": 8, "total_batch_size": 4, "lr": 1e-3, "output_dir": str(out),
             "checkpoint_every": 4, "log_every": 4, "validate_every": 8, "validation_batches": 1,
             "validation_members": 2, "progress": False, "deterministic": True}
    train.update(training)
    return {"task": task, "data": {"source": str(source)}, "network": net, "training": train,
            "sampler": {"num_steps": 2}}
