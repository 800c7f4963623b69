"""The codec: the one xarray <-> normalised-array boundary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import DimensionError, MissingValueError, StatsError, open_pair


@pytest.fixture
def pair(tiny_synthetic):
    return open_pair(tiny_synthetic)


@pytest.fixture
def codec(pair):
    return Codec.from_pair(pair)


def test_channels_are_inputs_then_static_and_outputs_are_targets(pair, codec):
    assert codec.in_channels == pair.inputs + pair.static
    assert codec.out_channels == pair.targets


def test_statistics_from_a_pair_match_numpy(pair, codec):
    for name in codec.in_channels + codec.out_channels:
        values = pair.dataset[name].values.astype(np.float64)
        mean, std = codec.stats[name]
        assert mean == pytest.approx(values.mean(), rel=1e-9, abs=1e-9)
        assert std == pytest.approx(values.std(), rel=1e-7)


def test_encoded_channels_are_the_normalised_variables_in_order(pair, codec):
    ds = xr.merge([pair.inputs_on_fine, pair.static_fields])
    x = codec.encode_inputs(ds)
    assert x.dtype == np.float32 and x.shape == (4, len(codec.in_channels), 32, 32)
    for c, name in enumerate(codec.in_channels):
        mean, std = codec.stats[name]
        expected = np.broadcast_to((ds[name].values - mean) / std, (4, 32, 32))
        np.testing.assert_allclose(x[:, c], expected, rtol=1e-5, atol=1e-5)


def test_encode_then_decode_targets_gives_back_the_dataset(pair, codec):
    fine = pair.fine.compute()
    y = codec.encode_targets(fine)
    back = codec.decode_targets(y, fine)
    for name in codec.targets:
        np.testing.assert_allclose(back[name].values, fine[name].values, rtol=1e-6, atol=1e-4)
        assert back[name].dims == ("time", "y", "x")
        assert back[name].attrs["units"] == fine[name].attrs["units"]
    xr.testing.assert_identical(back.lat, fine.lat)
    np.testing.assert_array_equal(back.time.values, fine.time.values)


def test_decoding_an_ensemble_adds_a_member_dim_and_keeps_cf_attrs(pair, codec):
    template = pair.fine.isel(time=slice(0, 2)).drop_vars(list(codec.targets))  # coords only
    array = np.zeros((3, 2, len(codec.targets), 32, 32), dtype=np.float32)
    out = codec.decode_targets(array, template)
    assert out["t2m"].dims == ("member", "time", "y", "x")
    np.testing.assert_allclose(out["t2m"].values, codec.stats["t2m"][0], rtol=1e-6)
    assert out["t2m"].attrs["units"] == "K" and out["t2m"].attrs["long_name"]


def test_decoding_accepts_a_torch_tensor(pair, codec):
    torch = pytest.importorskip("torch")
    y = codec.encode_targets(pair.fine)
    out = codec.decode_targets(torch.from_numpy(y), pair.fine)
    np.testing.assert_allclose(out.tp.values, pair.fine.tp.values, atol=1e-4)


def test_decoding_the_wrong_number_of_channels_names_the_expected_ones(codec, pair):
    with pytest.raises(DimensionError, match="t2m"):
        codec.decode_targets(np.zeros((2, 3, 32, 32)), pair.fine)


def test_nan_targets_are_kept_as_missing_and_inf_is_an_error_naming_the_time(pair, codec):
    fine = pair.fine.compute()
    fine["u10"][2, 5, 5] = np.nan
    y = codec.encode_targets(fine)
    c = codec.out_channels.index("u10")
    assert np.isnan(y[2, c, 5, 5]) and int(np.isnan(y).sum()) == 1
    fine["u10"][2, 5, 5] = np.inf
    with pytest.raises(MissingValueError, match=r"'u10' holds 1 inf.*2020-01-01T02.*not inf"):
        codec.encode_targets(fine)


def test_nan_in_an_input_is_an_error_naming_it_and_the_time(pair, codec):
    ds = xr.merge([pair.inputs_on_fine, pair.static_fields]).compute()
    name = codec.inputs[0]
    ds[name][1, 4, 4] = np.nan
    with pytest.raises(MissingValueError, match=rf"'{name}' holds 1 NaN.*2020-01-01T01.*complete"):
        codec.encode_inputs(ds)


def test_encoding_coarse_inputs_that_were_not_regridded_is_an_error(pair, codec):
    ds = xr.merge([pair.coarse, pair.static_fields])
    with pytest.raises(DimensionError, match="inputs_on_fine"):
        codec.encode_inputs(ds)


def test_codec_survives_a_json_round_trip(codec):
    again = Codec.from_dict(json.loads(json.dumps(codec.to_dict())))
    assert again == codec
    assert again.in_channels == codec.in_channels


def test_missing_or_zero_statistics_are_errors_naming_the_variable():
    with pytest.raises(StatsError, match="'b'"):
        Codec(("a",), ("b",), (), {"a": (0.0, 1.0)})
    with pytest.raises(StatsError, match="'a'"):
        Codec(("a",), ("b",), (), {"a": (0.0, 0.0), "b": (1.0, 2.0)})


def test_encoding_numpy_blocks_with_regridding_and_an_order_matches_the_dataset_path(pair, codec):
    # the loader's path: coarse inputs regridded straight into the batch, times reordered
    order = np.array([3, 0, 2, 1])
    ds = xr.merge([pair.inputs_on_fine, pair.static_fields]).isel(time=slice(0, 4)).compute()
    expected_x = codec.encode_inputs(ds)[order]
    expected_y = codec.encode_targets(pair.fine.isel(time=slice(0, 4)).compute())[order]
    arrays = {
        n: pair.dataset[n].values[:4] if "time" in pair.dataset[n].dims else pair.dataset[n].values
        for n in pair.names
    }
    x = codec.encode_arrays(arrays, role="inputs", order=order, weights=pair.regrid_weights)
    y = codec.encode_arrays(arrays, role="targets", order=order)
    assert x.dtype == y.dtype == np.float32
    # float32 spacing of msl near 1e5 Pa is ~1e-5 of its std after normalising
    np.testing.assert_allclose(x, expected_x, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)


def test_encoding_numpy_blocks_names_a_variable_holding_inf(pair, codec):
    arrays = {n: pair.dataset[n].values.astype(np.float32) for n in pair.targets}
    arrays["u10"][1, 2, 3] = np.nan  # missing: kept
    assert int(np.isnan(codec.encode_arrays(arrays, role="targets")).sum()) == 1
    arrays["u10"][1, 2, 3] = -np.inf
    with pytest.raises(MissingValueError, match="'u10' holds 1 inf"):
        codec.encode_arrays(arrays, role="targets")
    with pytest.raises(ValueError, match="order must index"):
        codec.encode_arrays(arrays, role="targets", order=[0, 99])
