"""``corrdiff-xr export CHECKPOINT DIR --data SOURCE``: writes the package, refuses to clobber."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.data import open_source
from corrdiff_xr.model import import_mdlus
from corrdiff_xr.testing import tiny_corrdiff

FILES = {
    "regression.mdlus", "diffusion.mdlus", "metadata.json", "stats.json",
    "output_latlon_grid.nc", "input_latlon_grid.nc", "invariants.nc",
}  # fmt: skip


def era5_store(path) -> str:
    """A canonical Zarr store: ERA5-like coarse inputs (descending latitude, 0..360) around a
    16 x 16 fine grid at -180..180 longitudes."""
    rng = np.random.default_rng(1)
    lat, lon = 50.05 + 0.1 * np.arange(16), -3.45 + 0.1 * np.arange(16)
    latc, lonc = np.arange(52.0, 49.49, -0.25), np.arange(356.0, 359.01, 0.25)
    coarse, fine = (2, latc.size, lonc.size), (2, 16, 16)
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "y_coarse", "x_coarse"),
                               (280 + 5 * rng.standard_normal(coarse)).astype("f4"),
                               {"units": "K", "long_name": "2 metre temperature"}),
            "t2m": (("time", "y", "x"), (280 + 5 * rng.standard_normal(fine)).astype("f4"),
                    {"units": "K", "long_name": "2 metre temperature"}),
            "orography": (("y", "x"), (300 * rng.random((16, 16))).astype("f4"),
                          {"units": "m", "long_name": "orography"}),
        },
        coords={
            "time": pd.date_range("2021-01-01", periods=2, freq="6h").values,
            "y": ("y", lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "x": ("x", lon, {"standard_name": "longitude", "units": "degrees_east"}),
            "lat": (("y", "x"), np.repeat(lat[:, None], 16, 1)),
            "lon": (("y", "x"), np.repeat(lon[None, :], 16, 0)),
            "y_coarse": ("y_coarse", latc, {"standard_name": "latitude", "units": "degrees_north"}),
            "x_coarse": ("x_coarse", lonc, {"standard_name": "longitude", "units": "degrees_east"}),
            "lat_coarse": (("y_coarse", "x_coarse"), np.repeat(latc[:, None], lonc.size, 1)),
            "lon_coarse": (("y_coarse", "x_coarse"), np.repeat(lonc[None, :], latc.size, 0)),
        },
    )  # fmt: skip
    ds.to_zarr(str(path), mode="w")
    return str(path)


def test_export_writes_a_package_and_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    store = era5_store(tmp_path / "data.zarr")
    model = tiny_corrdiff(Codec.from_pair(open_source(store)), (16, 16))
    ckpt = model.save(tmp_path / "model.safetensors")
    out = tmp_path / "pkg"

    assert main(["export", str(ckpt), str(out), "--data", store]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == FILES
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["input_variables"], meta["output_variables"]) == (["2m_temperature"], ["t2m"])
    back = import_mdlus(out / "regression.mdlus", out / "diffusion.mdlus", codec=model.codec)
    assert all(
        np.array_equal(v.numpy(), back.state_dict()[k].numpy())
        for k, v in model.state_dict().items()
    )

    before = (out / "metadata.json").stat().st_mtime_ns
    assert main(["export", str(ckpt), str(out), "--data", store]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overwrite" in err and str(out) in err
    assert (out / "metadata.json").stat().st_mtime_ns == before

    assert main(["export", str(ckpt), str(out), "--data", store, "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == FILES
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".pkg.tmp")]


def test_export_warns_in_one_line_about_a_sampler_earth2studio_cannot_run(tmp_path, capsys):
    store = era5_store(tmp_path / "data.zarr")
    model = tiny_corrdiff(Codec.from_pair(open_source(store)), (16, 16))
    model.sampler_config = SamplerConfig(solver="dpmpp_2m", num_steps=10)
    ckpt = model.save(tmp_path / "model.safetensors")
    assert main(["export", str(ckpt), str(tmp_path / "pkg"), "--data", store]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dpmpp_2m" in err[0] and "'stochastic'" in err[0]
    meta = json.loads((tmp_path / "pkg" / "metadata.json").read_text())
    assert (meta["sampler_type"], meta["number_of_steps"]) == ("stochastic", 10)
