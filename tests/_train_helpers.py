"""Small on-disk data and tiny configs for the loader and training tests."""

from __future__ import annotations

import numpy as np

from corrdiff_xr.dims import TIME
from corrdiff_xr.testing import tiny_network_dict


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
    net = tiny_network_dict(embedding_type="zero" if task == "regression" else "positional")
    train = {
        "duration": 8,
        "total_batch_size": 4,
        "lr": 1e-3,
        "output_dir": str(out),
        "checkpoint_every": 4,
        "log_every": 4,
        "validate_every": 8,
        "validation_batches": 1,
        "validation_members": 2,
        "progress": False,
        "deterministic": True,
    }
    train.update(training)
    return {
        "task": task,
        "data": {"source": str(source)},
        "network": net,
        "training": train,
        "sampler": {"num_steps": 2},
    }
