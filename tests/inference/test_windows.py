"""Blocks and input fingerprints are computed a window at a time, from graphs built key by key."""

from __future__ import annotations

import json
import operator

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.highlevelgraph import HighLevelGraph

from corrdiff_xr.inference import _submit
from corrdiff_xr.inference.fingerprint import InputChangedError, _digest, input_fingerprints
from corrdiff_xr.inference.store import block_ids, progress, progress_dir, write_zarr


def _inputs() -> xr.Dataset:
    rng = np.random.default_rng(0)
    times = pd.date_range("2000-01-01", periods=10, freq="h")
    coarse = rng.normal(size=(10, 5, 4)).astype("float32")
    return xr.Dataset(
        {
            # uneven time chunks and split spatial chunks: a slice spans several input chunks
            "a": (("time", "y", "x"), da.from_array(coarse, chunks=((3, 4, 3), (2, 3), (4,)))),
            "b": (("time", "y", "x"), coarse * 2),  # held in memory
            "static": (("yf", "xf"), da.from_array(np.arange(12.0).reshape(3, 4), chunks=2)),
        },
        coords={"time": times},
    )


def test_fingerprints_equal_the_digests_of_the_values_each_slice_read():
    # equal to digests of the sliced values, as earlier versions recorded them: their stores resume
    ds = _inputs()
    slices = [(0, 2), (2, 5), (5, 9), (9, 10)]
    found = input_fingerprints(ds)
    for sl, got in zip(slices, found.compute(slices)):
        want = {n: _digest(ds[n].isel(time=slice(*sl)).values) for n in ("a", "b")}
        assert got == {**want, "static": _digest(ds["static"].values)}
    # one task per slice asked for and one per static field, reading only the chunks it needs
    layer, needs, keys = found.tasks([(2, 5)])
    assert len(layer) == 2 and len(keys) == 1
    assert {k[1] for k in needs if k[0] == ds["a"].data.name} == {0, 1}  # time chunks 0-2, 3-6


def test_run_windows_returns_every_key_in_order_and_runs_a_window_at_a_time(monkeypatch):
    runs = []

    def leaf(i):
        runs.append(i)
        return i * i

    base = HighLevelGraph({"x": {("x", i): i for i in range(10)}}, {"x": set()})
    built = []

    def build(items):  # the tasks of a window, built when the window is reached
        built.append(list(items))
        return (
            {("sq", i): (leaf, ("x", i)) for i in items},
            {("x", i) for i in items},
            [("sq", i) for i in items],
        )

    seen = []
    real = dask.compute
    monkeypatch.setattr(dask, "compute", lambda *a, **k: seen.append(len(a[0].dask)) or real(*a))
    monkeypatch.setattr(_submit, "WINDOW", 4)
    got = _submit.run_windows(base, list(range(10)), build, name="w")
    assert got == [i * i for i in range(10)]
    assert sorted(runs) == list(range(10)) and built == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert seen == [9, 9, 5]  # each window's graph: its inputs, its tasks and the gathering one


def _lazy_output(nt: int = 8) -> xr.Dataset:
    data = da.from_array(np.arange(nt * 8, dtype="float32").reshape(nt, 2, 4), chunks=(1, 2, 4))
    lat = xr.DataArray(da.from_array(np.linspace(40, 41, 8).reshape(2, 4)), dims=("y", "x"))
    times = pd.date_range("2000-01-01", periods=nt, freq="h")
    return xr.Dataset(
        {"t2m": (("time", "y", "x"), data), "tp": (("time", "y", "x"), data + 1)},
        coords={"time": times, "y": [0.5, 1.5], "x": np.arange(4.0), "lat": lat},
        attrs={"title": "t"},
    )


def test_blocks_are_written_a_window_at_a_time_in_time_order(tmp_path, monkeypatch):
    ds = _lazy_output()
    monkeypatch.setattr(_submit, "WINDOW", 2)
    calls = []
    real = _submit._write_block
    monkeypatch.setattr(
        _submit,
        "_write_block",
        lambda *a, **k: calls.append(k["block"]["time"].start) or real(*a, **k),
    )
    store = tmp_path / "out.zarr"
    # a failure in the third window: the first two windows' blocks are complete and recorded
    bad = ds.copy()
    bad["tp"] = bad["tp"].copy(data=bad["tp"].data.map_blocks(_fail_at_4, dtype="float32"))
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="block 4"):
        write_zarr(bad, store, inputs=None)
    # windows in time order: the first two complete, then the failing one's other block at most
    assert sorted(calls[:4]) == [0, 1, 2, 3] and set(calls[4:]) <= {5}
    assert len(progress(store)) == (done := len(calls))
    # the resume writes the rest; the store equals the Dataset, coordinates included
    assert write_zarr(ds, store) == {"blocks": 8, "written": 8 - done, "skipped": done}
    out = xr.open_zarr(store)
    xr.testing.assert_identical(out.compute().drop_attrs(), ds.compute().drop_attrs())
    assert json.loads(json.dumps(out.attrs["corrdiff_request"]))["store"]["attrs"] == ds.attrs
    assert all(progress_dir(store).joinpath(b).exists() for b in progress(store))


def test_block_ids_name_the_records_so_a_reader_finds_the_blocks_a_crash_left(tmp_path):
    ds = _lazy_output()
    store = tmp_path / "out.zarr"
    bad = ds.copy()
    bad["tp"] = bad["tp"].copy(data=bad["tp"].data.map_blocks(_fail_at_4, dtype="float32"))
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="block 4"):
        write_zarr(bad, store)
    ids = block_ids(xr.open_zarr(store))  # read back: the store's chunks are the blocks
    assert ids == block_ids(ds) and len(ids) == 8 and ids[4] == "time4-5_y0-2_x0-4"
    assert progress(store) < set(ids) and ids[4] not in progress(store)
    write_zarr(ds, store)
    assert progress(store) == set(ids)
    with pytest.raises(ValueError, match="'tp' is not chunked like"):
        block_ids(ds.assign(tp=ds["tp"].chunk({"time": 2})))
    with pytest.raises(ValueError, match="not chunked"):
        block_ids(ds.compute())


def _fail_at_4(block, block_info=None):
    if block_info[None]["chunk-location"][0] == 4:
        raise RuntimeError("block 4")
    return block


def _inputs_of(nt: int, bump_at: int | None = None) -> xr.Dataset:
    values = np.arange(nt * 6, dtype="float32").reshape(nt, 2, 3)
    if bump_at is not None:
        values[bump_at] += 1
    times = pd.date_range("2000-01-01", periods=nt, freq="h")
    return xr.Dataset(
        {"a": (("time", "yc", "xc"), da.from_array(values, chunks=(3, 2, 3)))},
        coords={"time": times},
    )


def test_records_without_fingerprints_resume_and_recorded_ones_are_checked(tmp_path):
    ds, store = _lazy_output(), tmp_path / "out.zarr"
    write_zarr(ds, store, inputs=_inputs_of(8))
    records = progress_dir(store)
    names = sorted(progress(store), key=lambda b: int(b.split("-")[0][4:]))
    assert json.loads(records.joinpath(names[4]).read_bytes())["inputs"]["a"]
    for name in names[:4]:  # as an earlier version wrote them: empty
        records.joinpath(name).write_bytes(b"")
    for name in names[5:]:  # not written yet
        records.joinpath(name).unlink()
    with pytest.raises(InputChangedError, match="'a'.*2000-01-01T04"):
        write_zarr(ds, store, inputs=_inputs_of(8, bump_at=4))  # a fingerprinted block read it
    stats = write_zarr(ds, store, inputs=_inputs_of(8, bump_at=0))  # nothing recorded to check
    assert stats == {"blocks": 8, "written": 3, "skipped": 5}


def test_a_client_gets_every_window_in_order_with_two_in_flight(cluster, monkeypatch):
    distributed = pytest.importorskip("distributed")
    base = HighLevelGraph({"x": {("x", i): i for i in range(7)}}, {"x": set()})

    def build(items):
        layer = {("neg", i): (operator.neg, ("x", i)) for i in items}
        return layer, {("x", i) for i in items}, [("neg", i) for i in items]

    monkeypatch.setattr(_submit, "WINDOW", 2)
    with distributed.Client(cluster.scheduler_address) as client:
        got = _submit.run_windows(base, list(range(7)), build, client, name="c")
    assert got == [-i for i in range(7)]
