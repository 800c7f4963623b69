"""A ``downscale`` result written by a library call is the same identified, resumable store as
``corrdiff-xr generate`` writes; stores written by the previous version still resume."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, open_source, synthetic_dataset
from corrdiff_xr.inference import downscale, write_zarr
from corrdiff_xr.inference.request import SETTINGS_ATTR, request_identity
from corrdiff_xr.inference.store import (
    IDENTITY_ATTR,
    RequestMismatchError,
    progress,
    progress_dir,
)
from corrdiff_xr.testing import tiny_corrdiff

NT = 3  # time steps: one block each (two members in one group, the whole 16 x 16 domain)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("request")
    for name, seed in (("data.zarr", 2), ("other.zarr", 3)):
        synthetic_dataset(ny=16, nx=16, nt=NT, factor=4, seed=seed).to_zarr(
            root / name, consolidated=False
        )
    codec = Codec.from_pair(open_pair(str(root / "data.zarr")))
    tiny_corrdiff(codec, (16, 16)).save(root / "model.safetensors")
    tiny_corrdiff(codec, (16, 16), seed=1).save(root / "another.safetensors")  # other weights
    return root


def _generate(root, model, out, *extra):
    argv = ["generate", "--data", str(root / "data.zarr"), "--checkpoint", str(model)]
    argv += ["--members", "2", "--steps", "2", "--patch", "8", "--overlap", "2"]
    return main([*argv, "--zarr", str(out), "--torch-threads", "1", *extra])


def _downscale(root, model, **changes):
    """The library call of the same request as :func:`_generate`."""
    pair = open_source(str(root / "data.zarr"))
    settings = dict(members=2, steps=2, patch=8, overlap=2, chunks={"time": 1}, threads=1)
    return pair, downscale(pair, str(model), **{**settings, **changes})


def _write(root, model, out, data="data.zarr", **changes):
    pair, ds = _downscale(root, model, **changes)
    request = request_identity(ds, data=str(root / data))
    inputs = pair.dataset[list(pair.inputs + pair.static)]
    return write_zarr(ds, out, request=request, inputs=inputs)


def _record(store):
    return zarr.open_group(str(store), mode="r").attrs[IDENTITY_ATTR]


def _values(store):
    ds = xr.open_zarr(store, consolidated=False)
    return {n: ds[n].values for n in ds.data_vars}


def test_a_library_written_store_is_the_one_generate_writes_and_each_resumes_the_other(
    setup, tmp_path, capsys
):
    model = setup / "model.safetensors"
    by_cli, by_lib = tmp_path / "cli.zarr", tmp_path / "lib.zarr"
    assert _generate(setup, model, by_cli) == 0
    assert _write(setup, model, by_lib) == {"blocks": NT, "written": NT, "skipped": 0}
    record = _record(by_lib)
    assert record == _record(by_cli)
    assert record["request"]["data"] == {"data": str(setup / "data.zarr")}
    assert record["request"]["sampling"]["patch"] == [8, 8]
    # the settings attribute is the request's: not a store attribute nor part of its layout
    assert SETTINGS_ATTR not in record["store"]["attrs"]
    assert SETTINGS_ATTR not in zarr.open_group(str(by_lib), mode="r").attrs
    cli_values, lib_values = _values(by_cli), _values(by_lib)
    assert cli_values.keys() == lib_values.keys()
    for name, values in cli_values.items():
        np.testing.assert_array_equal(values, lib_values[name], err_msg=name)
    capsys.readouterr()
    assert _generate(setup, model, by_lib) == 0  # generate keeps the library's store
    assert f"0 block(s) written, {NT} already complete" in capsys.readouterr().err
    assert _write(setup, model, by_cli) == {"blocks": NT, "written": 0, "skipped": NT}


def test_a_library_written_store_resumes_after_an_interruption(setup, tmp_path):
    model, out = setup / "model.safetensors", tmp_path / "out.zarr"
    _write(setup, model, out)
    complete = _values(out)
    # the state a kill leaves: blocks without a completion record, their chunks unwritten
    lost = sorted(progress(out))[1:]
    group = zarr.open_group(str(out), mode="r+")
    for name in lost:
        (progress_dir(out) / name).unlink()
        t = int(name.split("_")[1].removeprefix("time").split("-")[0])
        for var in complete:
            group[var][:, t] = np.nan
    assert np.isnan(_values(out)["t2m"]).any()
    assert _write(setup, model, out) == {"blocks": NT, "written": len(lost), "skipped": 1}
    for name, values in _values(out).items():
        np.testing.assert_array_equal(values, complete[name], err_msg=name)


CHANGES = [
    ("seed", {"seed": 1}, "request.sampling.seed: stored 0, requested 1"),
    ("steps", {"steps": 3}, "request.sampling.sampler.num_steps: stored 2, requested 3"),
    (
        "precision",
        {"sampler": {"precision": "bf16"}},
        'request.sampling.sampler.precision: stored nothing, requested "bf16"',
    ),  # fmt: skip
    ("default precision", {"sampler": {"precision": "fp32"}}, None),  # fp32 is left unlabelled
    ("nothing", {"patch": (8, 8), "overlap": 2}, None),  # the same request, spelled otherwise
    ("data", {"data": "other.zarr"}, "request.data.data: stored"),
    ("checkpoint", {"model": "another.safetensors"}, "request.checkpoint.blake2b: stored"),
]


@pytest.mark.parametrize(("change", "given", "field"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_library_write_of_another_request_is_refused_naming_the_field(
    setup, tmp_path, change, given, field
):
    model, out = tmp_path / "model.safetensors", tmp_path / "out.zarr"
    shutil.copy(setup / "model.safetensors", model)
    _write(setup, model, out)
    before = (sorted(progress(out)), _record(out))
    given = dict(given)
    if "model" in given:  # same path and name, other weights
        shutil.copy(setup / given.pop("model"), model)
    if field is None:
        assert _write(setup, model, out, **given)["written"] == 0
        return
    with pytest.raises(RequestMismatchError, match="different request") as err:
        _write(setup, model, out, **given)
    assert field in str(err.value) and "pass overwrite=True to start again" in str(err.value)
    assert (sorted(progress(out)), _record(out)) == before  # nothing was touched


def test_write_zarr_without_a_request_records_the_one_the_dataset_describes(setup, tmp_path):
    model = setup / "model.safetensors"
    _, ds = _downscale(setup, model)
    write_zarr(ds, tmp_path / "out.zarr")
    request = _record(tmp_path / "out.zarr")["request"]
    assert request == request_identity(ds)
    assert request["data"] == {"data": None} and request["checkpoint"]["name"] == model.name
    with pytest.raises(ValueError, match=f"no readable '{SETTINGS_ATTR}' attribute"):
        request_identity(ds.drop_attrs())


def _previous_request(root, store) -> dict:
    """The request record as the previous version's ``generate`` wrote it (its format, built
    here by hand: blake2b of the checkpoint's bytes and of the times' nanoseconds)."""
    weights = (root / "model.safetensors").read_bytes()
    written = xr.open_zarr(store, consolidated=False)
    times = written.time.values.astype("datetime64[ns]")
    sampler = json.loads(written.attrs["corrdiff_sampler"])
    sampler = {k: str(v) if v in (float("inf"), float("-inf")) else v for k, v in sampler.items()}
    return {
        "checkpoint": {
            "name": "model.safetensors",
            "bytes": len(weights),
            "blake2b": hashlib.blake2b(weights, digest_size=16).hexdigest(),
        },
        "data": {"data": str(root / "data.zarr")},
        "times": {
            "count": NT,
            "first": str(times[0]),
            "last": str(times[-1]),
            "blake2b": hashlib.blake2b(
                times.astype(np.int64).tobytes(), digest_size=16
            ).hexdigest(),
        },
        "sampling": {
            "output": "ensemble",
            "members": 2,
            "seed": 0,
            "sampler": sampler,
            "patch": [8, 8],
            "overlap": 2,
            "boundary": 0,
            "weights": "ramp",
            "noise": "shared",
            "mean": "whole",
            "batch_size": 8,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "chunks": {"member": 2, "time": 1, "y": 16, "x": 16},
        },
    }


def test_a_store_written_by_the_previous_version_resumes(setup, tmp_path, capsys):
    model, out = setup / "model.safetensors", tmp_path / "old.zarr"
    assert _generate(setup, model, out) == 0
    group = zarr.open_group(str(out), mode="r+")
    record = dict(group.attrs[IDENTITY_ATTR])
    record["request"] = _previous_request(setup, out)
    group.attrs[IDENTITY_ATTR] = record  # the request exactly as the previous version wrote it
    for name in sorted(progress(out))[1:]:  # interrupted after its first block
        (progress_dir(out) / name).unlink()
    capsys.readouterr()
    assert _generate(setup, model, out) == 0
    assert f"{NT - 1} block(s) written, 1 already complete" in capsys.readouterr().err
    assert _write(setup, model, out) == {"blocks": NT, "written": 0, "skipped": NT}
    assert _record(out) == record
