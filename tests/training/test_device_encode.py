"""Device encoding equals the CPU codec, on an ERA5 -> km-scale pair of real-world layout."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair
from corrdiff_xr.data.layout import MissingValueError
from corrdiff_xr.features import FEATURES
from corrdiff_xr.training.device_encode import feature_coefficients
from corrdiff_xr.training.loader import ChunkShuffleLoader
from corrdiff_xr.transforms import TransformDomainError

FEATS = ("cos_zenith", "hour_of_day")
TRANSFORMS = {"tp": {"kind": "log_eps", "eps": 1e-4}, "tp_era5": {"kind": "log_eps", "eps": 1e-4}}
PATCH = (12, 16)


def _latlon(name: str, values: np.ndarray, dim: str) -> xr.DataArray:
    kind = ("latitude", "degrees_north") if "lat" in name else ("longitude", "degrees_east")
    return xr.DataArray(values, dims=dim, attrs={"standard_name": kind[0], "units": kind[1]})


def era5_to_taiwan(nt: int = 8, *, ny: int = 24, nx: int = 32, seed: int = 0) -> xr.Dataset:
    """ERA5 on its 0.25 degree grid (latitude descending, longitudes 0..360) over a 2 km-ish
    Taiwan grid: coarse ``msl`` (Pa), ``t850`` (K), ``u10_era5``, ``tp_era5`` (m), fine ``t2m``
    with NaN over the sea, ``u10``, ``tp`` and two static fields, chunked by 4 time steps."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(21.9, 25.3, ny)
    lon = np.linspace(118.1, 122.0, nx)
    clat, clon = np.arange(25.75, 21.49, -0.25), np.arange(117.75, 122.51, 0.25)
    time = pd.date_range("2021-06-30T18:00", periods=nt, freq="3h")
    coarse = ("time", "y_coarse", "x_coarse")
    cdims = coarse[1:]
    cshape = (nt, clat.size, clon.size)

    def field(mean, std, shape):
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    t2m = field(300.0, 4.0, (nt, ny, nx))
    t2m[:, :3, :5] = np.nan  # sea: missing targets
    ds = xr.Dataset(
        {
            "msl": (coarse, field(100_800.0, 600.0, cshape), {"units": "Pa"}),
            "t850": (coarse, field(288.0, 3.0, cshape), {"units": "K"}),
            "u10_era5": (coarse, field(2.0, 5.0, cshape), {"units": "m s-1"}),
            "tp_era5": (coarse, rng.gamma(0.3, 2e-3, cshape).astype(np.float32), {"units": "m"}),
            "t2m": (("time", "y", "x"), t2m, {"units": "K"}),
            "u10": (("time", "y", "x"), field(2.0, 5.0, (nt, ny, nx)), {"units": "m s-1"}),
            "tp": (
                ("time", "y", "x"),
                rng.gamma(0.3, 2.0, (nt, ny, nx)).astype(np.float32),
                {"units": "mm"},
            ),  # fmt: skip
            "orography": (("y", "x"), field(500.0, 400.0, (ny, nx)), {"units": "m"}),
            "lsm": (("y", "x"), (rng.random((ny, nx)) > 0.4).astype(np.float32), {"units": "1"}),
        },
        coords={
            "time": time,
            "y": _latlon("lat", lat, "y"),
            "x": _latlon("lon", lon, "x"),
            "lat": (("y", "x"), np.repeat(lat[:, None], nx, 1), {"units": "degrees_north"}),
            "lon": (("y", "x"), np.repeat(lon[None, :], ny, 0), {"units": "degrees_east"}),
            "y_coarse": _latlon("lat", clat, "y_coarse"),
            "x_coarse": _latlon("lon", clon, "x_coarse"),
            "lat_coarse": (
                cdims,
                np.repeat(clat[:, None], clon.size, 1),
                {"units": "degrees_north"},
            ),
            "lon_coarse": (
                cdims,
                np.repeat(clon[None, :], clat.size, 0),
                {"units": "degrees_east"},
            ),
        },
    )
    for name, var in ds.variables.items():
        var.attrs.setdefault("long_name", str(name))
    return ds.chunk({"time": 4})


@pytest.fixture(scope="module")
def pair():
    return open_pair(era5_to_taiwan())


@pytest.fixture(scope="module")
def codec(pair):
    return Codec.from_pair(pair, transforms=TRANSFORMS, features=FEATS)


def _stream(pair, codec, **kw):
    loader = ChunkShuffleLoader(pair, codec, batch_size=3, epochs=1, seed=5, **kw)
    return list(loader)


def _float64_inputs(pair, codec) -> np.ndarray:
    """The inputs encoded in float64 with the codec's float32 statistics (the exact answer
    both paths round)."""
    w, out = pair.regrid_weights, []
    feats = codec.feature_fields(pair.fine.time.values, pair.fine.lat.values, pair.fine.lon.values)
    nt = pair.fine.sizes["time"]
    for name in codec.in_channels:
        if name in codec.inputs:
            v = w.apply(pair.dataset[name].values.astype(np.float64))
        elif name in codec.static:
            v = np.broadcast_to(pair.dataset[name].values, (nt,) + w.fine_shape).astype(np.float64)
        else:
            v = feats[name].astype(np.float64)
        if name in codec.transforms:
            v = codec.transforms[name](v, name=name)
        mean, std = codec.stats[name]
        out.append((v - np.float64(np.float32(mean))) * np.float64(np.float32(1.0 / std)))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("patch", [None, PATCH])
def test_device_encoding_equals_the_cpu_codec_within_float32_rounding(pair, codec, patch):
    cpu = _stream(pair, codec, patch_shape=patch)
    dev = _stream(pair, codec, patch_shape=patch, encode_device="cpu")
    exact = _float64_inputs(pair, codec)
    h, w = patch or pair.regrid_weights.fine_shape
    # float32 spacing of each untransformed input's raw values, in units of its std
    raw_ulp = [
        float(np.spacing(np.float32(np.abs(pair.dataset[n].values).max()))) / codec.stats[n][1]
        if n in codec.inputs and n not in codec.transforms
        else 0.0
        for n in codec.in_channels
    ]
    assert len(cpu) == len(dev) == 3
    for a, b in zip(cpu, dev):
        assert torch.equal(a.time_index, b.time_index) and torch.equal(a.offsets, b.offsets)
        ref = np.stack(
            [exact[t, :, r : r + h, c : c + w] for t, (r, c) in zip(a.time_index, a.offsets)]
        )
        np.testing.assert_allclose(b.inputs.numpy(), ref, rtol=0, atol=1e-6)
        gap = (a.inputs - b.inputs).abs().amax(dim=(0, 2, 3)).numpy()
        # the CPU path rounds the raw values (two matrix products, then the mean): up to
        # three float32 spacings of msl near 1e5 Pa are ~4e-5 of its std
        assert (gap <= 1e-6 + 3 * np.array(raw_ulp)).all(), dict(zip(codec.in_channels, gap))
        # untransformed targets are bitwise the same, NaN (sea) included; tp through log
        for c, name in enumerate(codec.targets):
            ya, yb = a.targets[:, c].numpy(), b.targets[:, c].numpy()
            if name in codec.transforms:
                np.testing.assert_allclose(yb, ya, rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(yb, ya)
    assert np.isnan(np.concatenate([b.targets.numpy() for b in dev])).any() or patch is not None


@pytest.mark.parametrize("patch", [None, PATCH])
def test_device_encoding_resumes_bit_identically_and_ignores_workers(pair, codec, patch):
    whole = _stream(pair, codec, patch_shape=patch, encode_device="cpu")
    loader = ChunkShuffleLoader(
        pair, codec, batch_size=3, epochs=1, seed=5, patch_shape=patch, encode_device="cpu",
        num_workers=1,
    )  # fmt: skip
    stream = iter(loader)
    first = next(stream)
    stream.close()
    assert pickle.loads(pickle.dumps(loader))._encoder is None  # workers get no device tensors
    resumed = ChunkShuffleLoader(
        pair, codec, batch_size=3, epochs=1, seed=5, patch_shape=patch, encode_device="cpu"
    )
    resumed.load_state_dict(loader.state_dict())
    for a, b in zip(whole, [first, *resumed], strict=True):
        for field in ("inputs", "targets", "offsets", "time_index"):
            assert torch.equal(getattr(a, field).nan_to_num(), getattr(b, field).nan_to_num())
    assert list(loader)[0].time_index.tolist() == whole[1].time_index.tolist()  # workers again


def test_bad_values_are_named_in_one_line_by_the_cpu_codec(codec):
    ds = era5_to_taiwan(4)
    ds["u10"][2, 5, 6] = np.inf
    with pytest.raises(MissingValueError, match="'u10' holds 1 inf"):
        _stream(open_pair(ds), codec, encode_device="cpu")
    ds = era5_to_taiwan(4)
    ds["t850"][1, 3, 3] = np.nan
    with pytest.raises(MissingValueError, match=r"'t850' holds 1 NaN/inf value\(s\) at time"):
        _stream(open_pair(ds), codec, encode_device="cpu")
    ds = era5_to_taiwan(4)
    ds["tp"][0, 7, 7] = -1.0  # outside the log transform's domain
    with pytest.raises(TransformDomainError, match="'tp' has values outside"):
        _stream(open_pair(ds), codec, encode_device="cpu")


def test_feature_coefficients_give_every_feature_on_a_descending_global_grid():
    lat = np.repeat(np.arange(90.0, -90.1, -7.5)[:, None], 48, 1)
    lon = np.repeat(np.arange(0.0, 360.0, 7.5)[None, :], lat.shape[0], 0)
    times = np.array(["2021-03-20T09:37", "2021-12-21T23:10", "1999-07-01T00:00"], "datetime64[ns]")
    lr, nr = np.deg2rad(lat), np.deg2rad(lon)
    basis = np.stack([np.sin(lr), np.cos(lr) * np.cos(nr), np.cos(lr) * np.sin(nr), lr * 0 + 1])
    covered = 0
    for name, feature in FEATURES.items():
        coef = feature_coefficients(name, times)
        if coef is None:
            continue
        got = np.einsum("tgk,kyx->tgyx", coef, basis).max(axis=1).astype(np.float32)
        np.testing.assert_allclose(got, feature.compute(times, lat, lon), rtol=0, atol=2e-7)
        covered += 1
    assert covered == len(FEATURES)  # every feature runs as a device op
