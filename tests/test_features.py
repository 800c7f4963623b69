"""Fine-grid time features: known answers, PhysicsNeMo's zenith angle, and every encode path."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch
import xarray as xr
from _train_helpers import synthetic_store, tiny_config
from physicsnemo_ref import physicsnemo, requires_physicsnemo

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.errors import TimeAxisError
from corrdiff_xr.features import FEATURES, FeatureError, cos_zenith, hour_of_day, valid_times
from corrdiff_xr.inference import downscale
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.testing import tiny_corrdiff
from corrdiff_xr.training import train
from corrdiff_xr.training.loader import ChunkShuffleLoader

FEATS = ("cos_zenith", "hour_of_day")


@requires_physicsnemo
def test_cos_zenith_equals_physicsnemo_on_a_global_grid_with_descending_latitude():
    physicsnemo()
    from physicsnemo.utils.zenith_angle import cos_zenith_angle

    lat = np.linspace(90.0, -90.0, 181)  # ERA5 order: north first
    lon = np.arange(0.0, 360.0, 1.0)
    lon2, lat2 = np.meshgrid(lon, lat)
    times = np.array(
        ["1979-01-01T00", "2000-01-01T12", "2016-06-21T06", "2037-09-06T12", "2060-12-31T23"],
        dtype="datetime64[ns]",
    )
    ours = cos_zenith(times, lat2, lon2)
    assert ours.dtype == np.float32 and ours.shape == (len(times), 181, 360)
    for t, got in zip(times, ours):
        when = datetime.datetime.fromisoformat(str(t)[:19]).replace(tzinfo=datetime.UTC)
        ref = cos_zenith_angle(when, lon2, lat2).astype(np.float32)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=str(t))
    # the sun is up over half of the globe, and overhead somewhere at noon UT on an equinox
    assert 0.45 < (ours > 0).mean() < 0.55 and ours.max() > 0.999


def test_hour_of_day_is_the_utc_hour_constant_in_space_and_cftime_dates_convert():
    import cftime

    times = np.array(["2020-01-01T00:59", "2020-01-01T13:30", "2020-02-29T23:00"], "datetime64[ns]")
    hours = hour_of_day(times, np.zeros((2, 3)), np.zeros((2, 3)))
    assert hours.shape == (3, 2, 3) and hours.dtype == np.float32
    np.testing.assert_array_equal(hours[:, 0, 0], [0, 13, 23])
    assert (hours == hours[:, :1, :1]).all()
    noleap = [cftime.DatetimeNoLeap(2037, 9, 6, 12), cftime.DatetimeNoLeap(2037, 12, 31, 18)]
    np.testing.assert_array_equal(
        valid_times(np.array(noleap)),
        np.array(["2037-09-06T12", "2037-12-31T18"], "datetime64[ns]"),
    )
    with pytest.raises(TimeAxisError, match="not a Gregorian date"):
        valid_times(np.array([cftime.Datetime360Day(2001, 2, 30)]))


def test_a_codec_dict_without_features_loads_as_before_and_features_round_trip():
    stats = {"a": (1.0, 2.0), "s": (0.0, 1.0), "t": (3.0, 4.0)}
    old = Codec(("a",), ("t",), ("s",), stats).to_dict()
    assert "features" not in old  # old checkpoints stay byte-identical
    codec = Codec.from_dict(old)
    assert codec.features == () and codec.in_channels == ("a", "s")
    new = Codec(("a",), ("t",), ("s",), stats, features=FEATS)
    assert new.in_channels == ("a", "s", "cos_zenith", "hour_of_day")
    assert new.stats["cos_zenith"] == (0.0, 1.0)
    assert new.attrs["hour_of_day"]["units"] == FEATURES["hour_of_day"].units
    assert Codec.from_dict(new.to_dict()) == new
    given = Codec(("a",), ("t",), ("s",), {**stats, "hour_of_day": (11.5, 6.9)}, features=FEATS)
    assert given.stats["hour_of_day"] == (11.5, 6.9)


def test_an_unknown_feature_or_a_grid_without_lat_lon_is_refused_in_one_line():
    with pytest.raises(FeatureError, match=r"unknown time feature\(s\) \['sza'\]; known"):
        Codec(("a",), ("t",), stats={"a": (0, 1), "t": (0, 1)}, features=("sza",))
    codec = Codec(("a",), ("t",), stats={"a": (0, 1), "t": (0, 1)}, features=("cos_zenith",))
    ds = xr.Dataset(
        {"a": (("time", "y", "x"), np.zeros((1, 2, 2), np.float32))},
        coords={"time": np.array(["2020-01-01"], "datetime64[ns]")},
    )
    with pytest.raises(FeatureError, match=r"'lat\(y, x\)' coordinate"):
        codec.encode_inputs(ds)


@pytest.fixture(scope="module")
def pair():
    ds = synthetic_dataset(ny=16, nx=16, nt=6, factor=4, seed=2, chunks={"time": 3})
    return open_pair(ds)


def test_encoded_features_follow_the_sample_times_and_patches_in_the_loader(pair):
    codec = Codec.from_pair(pair, features=FEATS)
    x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]).compute())
    lat, lon = pair.fine["lat"].values, pair.fine["lon"].values
    times = pair.fine["time"].values
    expected = np.stack([cos_zenith(times, lat, lon), hour_of_day(times, lat, lon)], axis=1)
    np.testing.assert_allclose(x[:, -2:], expected, rtol=0, atol=1e-7)
    assert expected[:, 1, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]  # hourly synthetic times
    loader = ChunkShuffleLoader(pair, codec, batch_size=3, seed=4, patch_shape=(8, 8), epochs=1)
    seen = 0
    for batch in loader:
        for inp, t, (r, c) in zip(batch.inputs.numpy(), batch.time_index, batch.offsets):
            np.testing.assert_allclose(inp[-2:], expected[t, :, r : r + 8, c : c + 8], atol=1e-7)
            np.testing.assert_allclose(inp, x[t, :, r : r + 8, c : c + 8], atol=2e-6)
            seen += 1
    assert seen == 6


def test_downscaling_encodes_features_per_block_as_the_codec_does(pair):
    codec = Codec.from_pair(pair, features=FEATS)
    model = tiny_corrdiff(codec, (16, 16), residual=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained network's output barely depends on its inputs
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    got = downscale(pair, model, output="mean", chunks={"time": 2, "y": 8, "x": 8})
    got = got.compute(scheduler="sync")
    x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]).compute())
    with torch.no_grad():
        mean = model.predict_mean(torch.from_numpy(x), offsets=torch.zeros(6, 2, dtype=torch.int64))
    want = codec.decode_targets(mean.numpy(), pair.fine)
    for name in codec.targets:
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=1e-6, atol=1e-6)
    # the features matter: the same network fed other times gives another mean
    shifted = pair.dataset.assign_coords(time=pair.dataset["time"] + np.timedelta64(6, "h"))
    other = downscale(open_pair(shifted), model, output="mean").compute(scheduler="sync")
    assert np.abs(other["t2m"].values - got["t2m"].values).max() > 1e-2


def test_a_model_with_features_trains_one_step_and_downscales(tmp_path):
    store = synthetic_store(tmp_path / "syn.zarr", nt=8, chunk=4)
    data = tiny_config(store, tmp_path / "run", duration=4)
    data["data"]["features"] = list(FEATS)
    result = train(from_dict(TrainRunConfig, data), max_steps=1)
    assert result.steps == 1 and np.isfinite(result.loss)
    model = CorrDiff.load(tmp_path / "run" / "model.safetensors")
    assert model.codec.features == FEATS and model.codec.in_channels[-2:] == FEATS
    out = downscale(xr.open_zarr(store), model, output="mean").compute(scheduler="sync")
    assert all(np.isfinite(out[n].values).all() for n in model.codec.targets)


def test_a_model_with_features_is_not_exported_as_a_generic_package(pair, tmp_path):
    from corrdiff_xr.model.packages import ExportError, export_package

    model = tiny_corrdiff(Codec.from_pair(pair, features=FEATS), (16, 16))
    with pytest.raises(ExportError, match=r"time features \['cos_zenith', 'hour_of_day'\]"):
        export_package(model, pair.dataset, tmp_path / "out")
    assert not (tmp_path / "out").exists()
