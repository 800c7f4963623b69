"""Absent chunks, ghost arrays, decompression bombs and oversized declarations, on real
Zarr stores on disk: each is refused (or warned of) by name before it is read as data."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import warnings

import numpy as np
import pytest
import zarr
from numcodecs import Blosc

from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.data.integrity import (
    ABSENT_KEY,
    MISSING_CHUNKS_ENV,
    ChunkSizeError,
    IntegrityWarning,
    MissingChunkError,
    ReadBudgetError,
)
from corrdiff_xr.data.pair import open_dataset


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    """A canonical store (one chunk per time step), copied afresh by ``damaged``."""
    path = tmp_path_factory.mktemp("integrity") / "good.zarr"
    synthetic_dataset(ny=16, nx=16, nt=4, factor=4, seed=1).to_zarr(path, consolidated=False)
    return path


@pytest.fixture
def damaged(canonical, tmp_path):
    def copy(*delete: str):
        path = tmp_path / "damaged.zarr"
        shutil.copytree(canonical, path)
        for key in delete:
            os.remove(path / key)
        return path

    return copy


@pytest.mark.parametrize(
    ("key", "kind"),
    [("msl/c/2/0/0", "input"), ("orography/c/0/0", "static"), ("lat/c/0/0", "coordinate")],
)
def test_an_absent_chunk_where_nan_is_refused_names_variable_chunk_and_time(damaged, key, kind):
    name = key.split("/")[0]
    with pytest.raises(MissingChunkError, match=f"'{name}' of store") as err:
        open_pair(damaged(key))
    text = str(err.value)
    assert "1 of" in text and MISSING_CHUNKS_ENV in text
    if kind == "input":
        assert "the first (2, 0, 0)" in text and "time 2020-01-01T02:00" in text


def _set_fill(path, name, fill):
    """Rewrite an array's fill value, as a store written by another tool would have it."""
    meta_path = path / name / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["fill_value"] = fill
    meta["attributes"].pop("_FillValue", None)
    meta_path.write_text(json.dumps(meta))


def test_an_absent_target_chunk_that_reads_as_zero_is_refused(damaged):
    path = damaged("t2m/c/1/0/0")
    _set_fill(path, "t2m", 0.0)
    with pytest.raises(
        MissingChunkError, match=r"variable 't2m'.*time 2020-01-01T01:00.*read as 0.0"
    ):
        open_pair(path)


def test_an_absent_target_chunk_that_reads_as_nan_is_accepted_with_a_warning(damaged):
    with pytest.warns(IntegrityWarning, match=r"'t2m'.*1 of 4 chunks are absent.*01:00"):
        pair = open_pair(damaged("t2m/c/1/0/0"))
    count, total, first, fill = pair.dataset["t2m"].encoding[ABSENT_KEY]
    assert (count, total, first) == (1, 4, "2020-01-01T01:00") and np.isnan(fill)
    assert np.isnan(pair.dataset["t2m"].isel(time=1).values).all()


def test_the_opt_out_reads_absent_chunks_as_the_fill_value(damaged, monkeypatch):
    path = damaged("msl/c/2/0/0")
    assert np.isnan(open_dataset(path, missing_chunks="fill")["msl"].isel(time=2).values).all()
    monkeypatch.setenv(MISSING_CHUNKS_ENV, "fill")
    assert "msl" in open_pair(path).inputs
    monkeypatch.setenv(MISSING_CHUNKS_ENV, "maybe")
    with pytest.raises(MissingChunkError, match=f"{MISSING_CHUNKS_ENV}.*'maybe'"):
        open_pair(path)


def test_a_one_step_store_whose_time_chunk_equals_the_fill_opens_quietly(tmp_path):
    # xarray encodes the only time as 0 (units since it) and omits the chunk, as zarr's fill
    path = tmp_path / "one.zarr"
    synthetic_dataset(ny=16, nx=16, nt=1, factor=4).to_zarr(path, consolidated=False)
    assert not (path / "time" / "c").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrityWarning)
        pair = open_pair(path)
    assert str(pair.dataset.time.values[0]).startswith("2020-01-01")


def test_an_array_named_in_consolidated_metadata_but_absent_is_refused(tmp_path):
    path = tmp_path / "ghost.zarr"
    synthetic_dataset(ny=16, nx=16, nt=2, factor=4).to_zarr(path, consolidated=True)
    shutil.rmtree(path / "tp")
    with pytest.raises(MissingChunkError, match="array 'tp' is named in the consolidated"):
        open_dataset(path)


def test_coordinates_declaring_a_huge_grid_are_refused_at_once(tmp_path):
    path = tmp_path / "huge.zarr"
    group = zarr.open_group(path, mode="w")
    for name in ("lat", "lon"):
        group.create_array(name, shape=(30000, 30000), chunks=(1000, 1000), dtype="f8",
                           dimension_names=("y", "x"))  # fmt: skip
    group.create_array("t", shape=(2, 30000, 30000), chunks=(1, 1000, 1000), dtype="f4",
                       dimension_names=("time", "y", "x"), attributes={"coordinates": "lat lon"})  # fmt: skip
    start = time.perf_counter()
    with pytest.raises(ReadBudgetError, match=r"largest 'lat', shape \(30000, 30000\)"):
        open_dataset(path)
    assert time.perf_counter() - start < 5


def _zstd_rle_bomb(nbytes: int, *, stated: bool) -> bytes:
    """A Zstd frame of RLE blocks: 4 bytes per 128 KiB, content size stated or not."""
    header = b"\x28\xb5\x2f\xfd" + (
        b"\xe0" + nbytes.to_bytes(8, "little") if stated else b"\x00\x38"
    )
    block = ((131072 << 3) | 2).to_bytes(3, "little") + b"\x07"
    last = ((131072 << 3) | 3).to_bytes(3, "little") + b"\x07"
    return header + block * (nbytes // 131072 - 1) + last


BOMBS = {
    "blosc": (zarr.codecs.BloscCodec(), lambda n: Blosc().encode(np.zeros(n, np.uint8))),
    "zstd": (zarr.codecs.ZstdCodec(), lambda n: _zstd_rle_bomb(n, stated=True)),
    "zstd-unstated": (zarr.codecs.ZstdCodec(), lambda n: _zstd_rle_bomb(n, stated=False)),
    "gzip": (zarr.codecs.GzipCodec(), lambda n: gzip.compress(bytes(n))),
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_chunk_inflating_past_its_shape_is_refused_and_good_ones_decode(tmp_path, kind):
    codec, bomb = BOMBS[kind]
    ds = synthetic_dataset(ny=16, nx=16, nt=3, factor=4, seed=2)
    path = tmp_path / f"{kind}.zarr"
    ds.to_zarr(path, consolidated=False, encoding={"t2m": {"compressors": [codec]}})
    pair = open_pair(path)  # the guard stays with the arrays: reads happen after opening
    np.testing.assert_array_equal(pair.dataset["t2m"].values, ds["t2m"].values)
    (path / "t2m" / "c" / "1" / "0" / "0").write_bytes(bomb(8 * 2**20))  # 1 KiB chunk -> 8 MiB
    pair = open_pair(path)
    with pytest.raises(ChunkSizeError, match=r"chunk of shape \(1, 16, 16\) \(float32"):
        pair.dataset["t2m"].isel(time=1).load()
    np.testing.assert_array_equal(pair.dataset["t2m"].isel(time=0).values, ds["t2m"][0].values)


def test_a_store_that_cannot_be_listed_opens_with_a_warning(tmp_path):
    import functools
    import http.server
    import threading

    path = tmp_path / "web.zarr"
    synthetic_dataset(ny=16, nx=16, nt=2, factor=4).to_zarr(path, consolidated=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/web.zarr"
        with pytest.warns(IntegrityWarning, match="cannot be listed.*not detected"):
            pair = open_pair(url)
        assert pair.dataset["t2m"].shape == (2, 16, 16)
    finally:
        server.shutdown()
