"""``calibrate`` and ``convert`` never replace a file they did not create, nor another run's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.testing import tiny_corrdiff
from tests._lock_helpers import hold_lock, release


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("convert") / "data.zarr"
    synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=2).to_zarr(path)
    return path


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def _calibrate(tmp_path, *extra):
    return ["calibrate", "--checkpoint", str(tmp_path / "model.safetensors"),
            "--data", str(tmp_path / "data.zarr"), *extra]  # fmt: skip


def test_calibrate_refuses_an_existing_json_file_unless_overwrite(tmp_path, capsys):
    table = tmp_path / "table.json"
    table.write_text("the user's notes")
    argv = _calibrate(tmp_path, "--out", str(tmp_path / "new.safetensors"), "--json", str(table))
    assert main(argv) == 2
    assert f"--json {table} exists; pass --overwrite" in _error(capsys)
    assert table.read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]  # no lock file left


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_calibrate_never_writes_through_a_link_even_a_dangling_one(tmp_path, capsys, option):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    out = str(link) if option == "--out" else str(tmp_path / "new.safetensors")
    argv = _calibrate(tmp_path, "--out", out, "--json", str(link), "--overwrite")
    assert main(argv) == 2
    assert f"{option} {link} exists" in _error(capsys)
    assert os.readlink(link) == str(tmp_path / "nowhere") and not (tmp_path / "nowhere").exists()


def test_calibrate_overwrite_replaces_a_plain_json_file_and_cleans_a_killed_runs_copy(
    tmp_path, capsys
):
    data = synthetic_dataset(ny=8, nx=8, nt=1, factor=4, chunks={"time": 1})
    data.to_zarr(tmp_path / "data.zarr")
    tiny_corrdiff(Codec.from_pair(open_pair(data)), (8, 8)).save(tmp_path / "model.safetensors")
    (tmp_path / "table.json").write_text("old table")
    (tmp_path / ".new.safetensors.tmp-0123abcd").write_bytes(b"half")  # a killed run's
    out = tmp_path / "new.safetensors"
    argv = _calibrate(tmp_path, "--members", "2", "--out", str(out), "--json",
                      str(tmp_path / "table.json"), "--overwrite")  # fmt: skip
    assert main(argv) == 0
    assert json.loads((tmp_path / "table.json").read_text())["table"]
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_convert_refuses_a_destination_another_run_is_writing(source, tmp_path, capsys):
    dest = tmp_path / "copy.zarr"
    holder = hold_lock(dest)
    try:
        assert main(["convert", "source", str(source), str(dest), "--overwrite"]) == 2
        assert f"is being written by another run (pid {holder.pid} on " in _error(capsys)
        assert not dest.exists()
    finally:
        release(holder)


def test_convert_removes_what_a_killed_convert_left_and_only_that(source, tmp_path):
    dest = tmp_path / "copy.zarr"
    (tmp_path / ".copy.zarr.tmp-0123abcd").mkdir()  # a killed run's partial copy
    (tmp_path / ".copy.zarr.tmp-0123abcd" / "zarr.json").write_text("{}")
    (tmp_path / ".other.zarr.tmp-0123abcd").mkdir()  # another destination's: maybe live
    assert main(["convert", "source", str(source), str(dest)]) == 0
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".other.zarr.tmp-0123abcd"]


def test_of_two_concurrent_converts_without_overwrite_one_fails(source, tmp_path):
    dest = tmp_path / "copy.zarr"
    argv = [sys.executable, "-m", "corrdiff_xr.cli", "convert", "source", str(source), str(dest)]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is being written by another run" in refused or "exists" in refused, refused
