"""Writers of the reference implementation's dataset layouts (HRRR-Mini NetCDF), for tests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

NT, NY, NX, F = 3, 16, 12, 4
PARENT = (24, 20)
OFFSET = (5, 3)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _write_hrrr_mini(path, coords, seed=0):
    """A HRRR-Mini NetCDF in the reference schema: dims sample, y_lr, x_lr, y_hr, x_hr, coord;
    root time (seconds since 1970) and coord; groups input, output, invariant (parent grid)."""
    import netCDF4

    rng = _rng(seed)
    n = len(coords)
    times = pd.date_range("2020-02-01", periods=n, freq="h")
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        for dim, size in [
            ("sample", None),
            ("y_lr", NY // F),
            ("x_lr", NX // F),
            ("y_hr", NY),
            ("x_hr", NX),
            ("y_grid", PARENT[0]),
            ("x_grid", PARENT[1]),
            ("coord", 2),
        ]:
            nc.createDimension(dim, size)
        tv = nc.createVariable("time", "i8", ("sample",))
        tv.units, tv.calendar = "seconds since 1970-01-01 00:00:00", "standard"
        tv[:] = times.values.astype("datetime64[s]").astype(np.int64)
        nc.createVariable("coord", "u2", ("sample", "coord"))[:] = np.array(coords)
        data = {}
        for group, dims, shape in [
            ("input", ("sample", "y_lr", "x_lr"), (n, NY // F, NX // F)),
            ("output", ("sample", "y_hr", "x_hr"), (n, NY, NX)),
        ]:
            grp = nc.createGroup(group)
            for v in HRRR_NAMES:
                data[group, v] = rng.normal(size=shape).astype("f4")
                grp.createVariable(v, "f4", dims)[:] = data[group, v]
        inv = nc.createGroup("invariant")
        ii, jj = np.meshgrid(np.arange(PARENT[0]), np.arange(PARENT[1]), indexing="ij")
        fields = {
            "latitude": 30.0 + 0.03 * ii,
            "longitude": -100.0 + 0.03 * jj,
            "elev_mean": ii * 100.0 + jj,
            "lsm_mean": (jj % 2) * 1.0,
        }
        for v, values in fields.items():
            inv.createVariable(v, "f4", ("y_grid", "x_grid"))[:] = values
            data["invariant", v] = values.astype("f4")
    stats = {
        g: {v: {"mean": float(i), "std": 1.0 + i} for i, v in enumerate(HRRR_NAMES)}
        for g in ("input", "output")
    }
    stats["invariant"] = {
        "elev_mean": {"mean": 300.0, "std": 200.0},
        "lsm_mean": {"mean": 0.5, "std": 0.5},
    }
    (path.parent / "stats.json").write_text(json.dumps(stats))
    return data, times


HRRR_NAMES = ["10u", "10v", "2t", "tp"]
