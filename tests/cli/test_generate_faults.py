"""``corrdiff-xr generate`` under faults: a kill at every file write, resuming another request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference.store import progress, progress_dir
from corrdiff_xr.testing import tiny_corrdiff

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "_faults_generate.py"


def test_a_kill_at_every_file_write_leaves_what_the_rerun_completes_to_a_clean_run(tmp_path):
    # a fresh interpreter forks the crashing children: this test process has threads (zarr,
    # dask) that a forked child could not use
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "--small",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text())
    details = result["details"]
    writes = result["writes"]["fresh"]
    assert writes > 40 and [d["index"] for d in details] == list(range(1, writes + 1))  # every one
    assert all(d["crashed"] for d in details), [d for d in details if not d["crashed"]]
    events = " ".join(d["event"] for d in details)
    for where in (
        ".out.zarr.tmp-",
        "os.rename .out.zarr.tmp-",
        "out.zarr.progress.tmp-",
        "out.zarr/t2m/c/",
        "out.zarr.progress/.member",
        "open out.zarr/zarr.",
    ):
        assert where in events, (
            f"no crash point at {where!r}"
        )  # init, blocks, records, consolidation
    broken = [d for d in details if not d["repaired"]]
    assert not broken, json.dumps(broken[:5], indent=1)
    assert result["generate_crash_points_repaired"] == result["generate_crash_points"] == writes
    assert proc.returncode == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    for name, seed in (("data.zarr", 2), ("other.zarr", 7)):  # same times, other values
        synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=seed).to_zarr(
            root / name, consolidated=False
        )
    codec = Codec.from_pair(open_pair(str(root / "data.zarr")))
    tiny_corrdiff(codec, (16, 16), seed=0).save(root / "model.safetensors")
    tiny_corrdiff(codec, (16, 16), seed=1).save(root / "another.safetensors")
    return root


def _args(root, model, out, *extra, data="data.zarr"):
    return [
        "generate",
        "--data",
        str(root / data),
        "--checkpoint",
        str(model),
        "--steps",
        "1",
        "--members",
        "2",
        "--zarr",
        str(out),
        "--torch-threads",
        "1",
        *extra,
    ]


def _interrupted(setup, tmp_path):
    """A store that a run left with half of its blocks recorded, and its model file.

    Deleting completion records gives exactly the state a kill leaves (a block without a
    record is computed again on resume), without timing a kill.
    """
    model = tmp_path / "model.safetensors"
    shutil.copy(setup / "model.safetensors", model)
    out = tmp_path / "out.zarr"
    assert main(_args(setup, model, out)) == 0
    records = sorted(progress(out))
    assert len(records) == 2  # two times, each block one group of both members
    for name in records[:1]:
        (progress_dir(out) / name).unlink()
    return model, out


def _snapshot(out):
    ds = xr.open_zarr(out, consolidated=False)
    return sorted(progress(out)), {n: ds[n].values.copy() for n in ds.variables}, dict(ds.attrs)


CHANGES = [
    ("another checkpoint of the same name", "request.checkpoint.blake2b", ()),
    ("another data store with the same times", "request.data.data", ()),
    ("sampler settings", "request.sampling.sampler.S_churn", ("--sampler", "S_churn=0.5")),
    ("sampler steps", "request.sampling.sampler.num_steps", ("--steps", "2")),
    ("batch size", "request.sampling.batch_size", ("--batch-size", "4")),
    ("output chunks", "request.sampling.chunks.time", ("--chunks", "time=2")),
    ("output kind", "request.sampling.output", ("--output-kind", "residual")),
    ("members", "request.sampling.members", ("--members", "3")),
    ("seed", "request.sampling.seed", ("--seed", "1")),
]


@pytest.mark.parametrize(("change", "field", "extra"), CHANGES, ids=[c[0] for c in CHANGES])
def test_resuming_with_a_different_request_is_refused_naming_the_field(
    setup, tmp_path, capsys, change, field, extra
):
    model, out = _interrupted(setup, tmp_path)
    before = _snapshot(out)
    if change.startswith("another checkpoint"):
        shutil.copy(setup / "another.safetensors", model)  # same path and name, other weights
    data = "other.zarr" if change.startswith("another data") else "data.zarr"
    capsys.readouterr()
    rc = main(_args(setup, model, out, *extra, data=data))
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert (
        "different request" in lines[0] and f"{field}:" in lines[0] and "--overwrite" in lines[0]
    ), lines[0]
    after = _snapshot(out)
    assert after[0] == before[0] and after[2] == before[2]  # no block computed, no record added
    for name, values in before[1].items():
        np.testing.assert_array_equal(after[1][name], values, err_msg=name)


def test_the_same_request_resumes_and_ends_equal_to_an_uninterrupted_run(setup, tmp_path, capsys):
    model, out = _interrupted(setup, tmp_path)
    clean = tmp_path / "clean.zarr"
    assert main(_args(setup, model, clean)) == 0
    capsys.readouterr()
    assert main(_args(setup, model, out)) == 0
    assert "1 block(s) written, 1 already complete of 2" in capsys.readouterr().err
    a, b = xr.open_zarr(clean, consolidated=True), xr.open_zarr(out, consolidated=True)
    assert a.attrs == b.attrs and set(a.variables) == set(b.variables)
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
