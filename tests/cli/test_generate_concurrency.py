"""``generate`` never mixes two inputs or two runs in one store: fingerprints and the lock."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference.store import progress, progress_dir
from corrdiff_xr.testing import tiny_corrdiff
from tests._lock_helpers import hold_lock, release


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate-inputs")
    synthetic_dataset(ny=16, nx=16, nt=4, factor=4, seed=2).to_zarr(root / "data.zarr")
    tiny_corrdiff(Codec.from_pair(open_pair(str(root / "data.zarr"))), (16, 16)).save(
        root / "model.safetensors"
    )
    return root


def _argv(model, data, out, *extra):
    return [
        "generate",
        *("--data", str(data), "--checkpoint", str(model / "model.safetensors")),
        *("--steps", "2", "--zarr", str(out), "--torch-threads", "1", *extra),
    ]


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def _interrupt(out, keep: int) -> set[str]:
    """The store as a run killed after ``keep`` blocks leaves it: later records gone."""
    records = sorted(progress(out))
    for name in records[keep:]:
        (progress_dir(out) / name).unlink()
    return set(records[:keep])


@pytest.mark.parametrize(
    ("variable", "change", "named"),
    [
        ("orography", lambda a: a * 1.5, "orography"),  # a static field rewritten in place
        ("t2m_coarse", lambda a: a + 1.0, "t2m_coarse"),  # one input, at every time
    ],
)
def test_a_resume_refuses_inputs_changed_since_the_store_was_started(
    model, tmp_path, capsys, variable, change, named
):
    data = tmp_path / "data.zarr"
    shutil.copytree(model / "data.zarr", data)
    out = tmp_path / "out.zarr"
    assert main(_argv(model, data, out)) == 0
    kept = _interrupt(out, keep=2)
    before = xr.open_zarr(out).load()
    array = zarr.open_array(str(data / variable), mode="r+")
    array[...] = change(array[...])

    assert main(_argv(model, data, out)) == 2
    line = _error(capsys)
    assert f"input variable {named!r} changed since --zarr store" in line
    assert "time 2020-01-01T00:00:00" in line and "--overwrite" in line
    assert progress(out) == kept  # nothing completed from the new input
    xr.testing.assert_identical(xr.open_zarr(out).load(), before)

    # --overwrite starts again: the store is then that of a fresh run on the new input
    assert main(_argv(model, data, out, "--overwrite")) == 0
    assert main(_argv(model, data, tmp_path / "fresh.zarr")) == 0
    got, fresh = xr.open_zarr(out).load(), xr.open_zarr(tmp_path / "fresh.zarr").load()
    np.testing.assert_array_equal(got["t2m"].values, fresh["t2m"].values)
    assert len(progress(out)) == 4


def test_an_unchanged_input_resumes_to_equal_an_uninterrupted_run(model, tmp_path):
    out = tmp_path / "out.zarr"
    assert main(_argv(model, model / "data.zarr", out)) == 0
    whole = xr.open_zarr(out).load()
    _interrupt(out, keep=1)
    assert main(_argv(model, model / "data.zarr", out)) == 0
    xr.testing.assert_identical(xr.open_zarr(out).load(), whole)


def test_a_second_generate_fails_fast_naming_the_first_even_with_overwrite(model, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(_argv(model, model / "data.zarr", out)) == 0
    before = xr.open_zarr(out).load()
    holder = hold_lock(out)  # a live run writing the store
    try:
        assert main(_argv(model, model / "data.zarr", out, "--seed", "1", "--overwrite")) == 2
        line = _error(capsys)
        assert f"is being written by another run (pid {holder.pid} on " in line
        xr.testing.assert_identical(xr.open_zarr(out).load(), before)
    finally:
        release(holder)
