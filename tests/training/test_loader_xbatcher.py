"""The loader's blocks are xbatcher's selections, read through its torch dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import xbatcher
from xbatcher.loaders.torch import MapDataset

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair
from corrdiff_xr.training.chunkread import Pieces, block_pieces
from corrdiff_xr.training.loader import ChunkShuffleLoader
from corrdiff_xr.training.xbatcher_blocks import BlockDataset, block_bounds

NT, CHUNK = 11, 4  # time chunks (4, 4, 3): an uneven final chunk


def _coord(values, dims, lat: bool):
    name, units = ("latitude", "degrees_north") if lat else ("longitude", "degrees_east")
    return dims, values, {"standard_name": name, "units": units, "long_name": name}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """ERA5-like coarse grid (latitude descending, longitudes in 0..360) around a fine
    lat/lon grid; one target holds NaN (a masked corner every time, and one missing value)."""
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(30.0, 33.0, 12), np.linspace(240.0, 244.0, 16)
    clat, clon = 34.0 - 0.5 * np.arange(9), 239.0 + 0.5 * np.arange(12)
    cdims, fdims = ("time", "y_coarse", "x_coarse"), ("time", "y", "x")
    field = lambda shape: (280.0 + 10.0 * rng.standard_normal(shape)).astype(np.float32)
    attrs = lambda name: {"units": "K", "long_name": name}
    data = {f"era5_{k}": (cdims, field((NT, 9, 12)), attrs(f"era5_{k}")) for k in range(3)}
    data |= {f"target_{k}": (fdims, field((NT, 12, 16)), attrs(f"t{k}")) for k in range(2)}
    data["target_1"][1][:, :3, :4] = np.nan
    data["target_1"][1][5, 7, 9] = np.nan
    coords = {
        "time": ("time", pd.date_range("2021-03-01", periods=NT, freq="6h"), {"long_name": "time"}),
        "y": _coord(lat, "y", True),
        "x": _coord(lon, "x", False),
        "lat": _coord(np.repeat(lat[:, None], 16, 1), ("y", "x"), True),
        "lon": _coord(np.repeat(lon[None, :], 12, 0), ("y", "x"), False),
        "y_coarse": _coord(clat, "y_coarse", True),
        "x_coarse": _coord(clon, "x_coarse", False),
        "lat_coarse": _coord(np.repeat(clat[:, None], 12, 1), cdims[1:], True),
        "lon_coarse": _coord(np.repeat(clon[None, :], 9, 0), cdims[1:], False),
    }
    ds = xr.Dataset(data, coords=coords, attrs={"Conventions": "CF-1.8"})
    path = tmp_path_factory.mktemp("xbatcher") / "era5_like.zarr"
    ds.chunk({"time": CHUNK}).to_zarr(path, mode="w")
    return str(path)


def _generator(ds: xr.Dataset, window: int):
    grid = {d: n for d, n in ds.sizes.items() if d != "time"}
    return xbatcher.BatchGenerator(
        ds, input_dims=grid, batch_dims={"time": window}, preload_batch=False
    )


def _assert_block_is(block: dict, expected: xr.Dataset) -> None:
    assert sorted(block) == sorted(expected.data_vars)
    for name, values in block.items():
        np.testing.assert_array_equal(values, expected[name].values)  # NaN where NaN


def test_blocks_are_the_batch_generators_selections_and_the_partial_final_window(store):
    pair = open_pair(store)
    dataset = BlockDataset(pair)
    assert isinstance(dataset, MapDataset)
    fine, coarse = _generator(pair.fine, CHUNK), _generator(pair.coarse, CHUNK)
    assert len(fine) == NT // CHUNK  # upstream drops the last, partial window
    assert dataset.blocks == [(0, 4), (4, 8), (8, 11)]
    # read through torch's DataLoader, as a map-style dataset
    blocks = list(torch.utils.data.DataLoader(dataset, batch_size=None))
    assert len(blocks) == len(dataset) == len(fine) + 1
    for k in range(len(fine)):
        _assert_block_is(blocks[k].targets, fine[k].load())
        _assert_block_is(blocks[k].coarse, coarse[k].load())
        assert (blocks[k].start, blocks[k].stop) == dataset.blocks[k]
    tail = pair.dataset.isel(time=slice(8, None)).load()
    _assert_block_is(blocks[-1].targets, tail[list(pair.targets)])
    _assert_block_is(blocks[-1].coarse, tail[list(pair.inputs)])
    assert np.isnan(blocks[1].targets["target_1"][1, 7, 9])  # the missing value, as stored


def test_a_period_starting_inside_a_chunk_reads_its_head_then_generator_windows(store):
    pair = open_pair(store).isel(time=slice(1, None))  # time chunks (3, 4, 3)
    dataset = BlockDataset(pair, block_size=4)
    assert dataset.blocks == [(0, 3), (3, 7), (7, 10)]
    body = _generator(pair.fine.isel(time=slice(3, None)), CHUNK)
    assert len(body) == 1  # upstream's windows start at 0 and drop partial ones
    _assert_block_is(dataset[1].targets, body[0].load())
    _assert_block_is(dataset[0].targets, pair.fine.isel(time=slice(0, 3)).load())
    for start, stop in dataset.blocks:  # every block is whole chunks: read without slicing
        for name in pair.targets:
            assert isinstance(block_pieces(dataset._targets[name], start, stop), Pieces)
    merged = BlockDataset(pair, block_size=5)  # two chunks per window: all after the head
    assert merged.blocks == [(0, 3), (3, 10)]


def _merged_chunks(chunks, block_size):
    """The geometry before xbatcher: whole chunks merged until a block holds block_size."""
    bounds, start, stop = [], 0, 0
    for size in chunks:
        stop += size
        if stop - start >= (block_size or 1):
            bounds.append((start, stop))
            start = stop
    return bounds + ([(start, stop)] if stop > start else [])


@pytest.mark.parametrize("block_size", [None, 1, 2, 3, 5, 8, 40])
def test_generator_windows_equal_whole_chunks_merged_on_regular_stores(block_size):
    for chunk in (1, 2, 3, 4):
        for n in range(1, 14):
            chunks = (chunk,) * (n // chunk) + ((n % chunk,) if n % chunk else ())
            assert block_bounds(chunks, block_size=block_size) == _merged_chunks(
                chunks, block_size
            ), (chunks, block_size)


@pytest.mark.parametrize("encode_device", [None, "cpu"])
def test_loader_samples_are_the_encoded_generator_selections_with_nan_kept(store, encode_device):
    pair = open_pair(store)
    codec = Codec.from_pair(pair)
    loader = ChunkShuffleLoader(
        pair, codec, batch_size=3, epochs=1, seed=4, encode_device=encode_device
    )
    windows = _generator(pair.fine, CHUNK)
    expected = {}
    for k in range(len(windows)):  # each sample as xbatcher selects it, encoded by the codec
        sel = windows[k].load()
        for i, t in enumerate(range(*loader.blocks[k])):
            expected[t] = codec.encode_targets(sel.isel(time=[i]))[0]
    tail = pair.fine.isel(time=slice(8, None)).load()
    expected |= {8 + i: y for i, y in enumerate(codec.encode_targets(tail))}
    seen = []
    for batch in loader:
        for y, t in zip(batch.targets.numpy(), batch.time_index.tolist()):
            np.testing.assert_allclose(y, expected[t], rtol=1e-6, atol=1e-6)
            assert np.isnan(y[1, :3, :4]).all() and not np.isnan(y[0]).any()
            seen.append(t)
    assert sorted(seen) == list(range(NT))
