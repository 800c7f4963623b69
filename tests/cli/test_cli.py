"""The ``corrdiff-xr`` dispatcher: a user mistake ends in one line and exit 2, never a traceback;
an operating-system failure (file-size limit, full disk, read-only file system, a parent that
is a file) in one line naming the output, exit 1, with nothing partial left behind.

The OS failures are real: RLIMIT_FSIZE in a child process (SIGXFSZ ignored, so writes fail
with EFBIG), and a tiny or read-only tmpfs mounted in a private mount namespace
(``unshare -m``, root only; skipped where that is unavailable).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reference_layouts import OFFSET, _write_hrrr_mini
from test_score_cli import make_pair

import corrdiff_xr
from corrdiff_xr import cli
from corrdiff_xr.cli import score as score_cli
from corrdiff_xr.dims import LAT, LON
from corrdiff_xr.errors import InputNotFoundError

ROOT = Path(corrdiff_xr.__file__).resolve().parents[1]
CLI = "import sys; from corrdiff_xr.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs for the table: stores, files that are not data, a user's directory."""
    d = tmp_path_factory.mktemp("cli_inputs")
    pred, truth = make_pair()
    pred.to_zarr(d / "pred.zarr")
    truth.to_zarr(d / "truth.zarr")
    truth.t2m.mean(["y", "x"]).to_dataset(name="series").to_zarr(d / "series.zarr")
    pred.drop_vars([LAT, LON]).to_zarr(d / "nolat.zarr")
    (d / "text.txt").write_text("not data")
    (d / "text.nc").write_text("not a NetCDF file")
    (d / "user").mkdir()
    (d / "user" / "notes.txt").write_text("precious")
    (d / "hrrr").mkdir()
    _write_hrrr_mini(d / "hrrr" / "hrrr_mini_train.nc", [OFFSET, OFFSET])
    (d / "bad_stats.json").write_text("{not json")
    (d / "thin_stats.json").write_text(json.dumps({"input": {}, "output": {}}))
    return d


SCORE = ["score", "{d}/pred.zarr", "--truth", "{d}/truth.zarr"]
DEMO = ["demo", "--out", "{d}/demo_out"]
HRRR = ["convert", "hrrr-mini", "{d}/hrrr/hrrr_mini_train.nc", "{d}/out.zarr"]

# (argv, what the error line must name); every case must end with exit status 2
CASES = [
    # the dispatcher
    (["bogus"], ["unknown command 'bogus'", "score"]),
    # score: inputs
    (["score", "{d}/nope.zarr"], ["prediction {d}/nope.zarr does not exist"]),
    (["score", "{d}/nope.nc"], ["{d}/nope.nc", "does not exist"]),
    (["score", "{d}/text.txt"], ["prediction {d}/text.txt", "Zarr store"]),
    (["score", "{d}/text.nc"], ["{d}/text.nc", "not a readable NetCDF"]),
    (["score", "{d}/pred.zarr", "--format", "reference-netcdf"], ["{d}/pred.zarr", "NetCDF"]),
    (
        ["score", "{d}/series.zarr", "--truth", "{d}/truth.zarr"],
        ["{d}/series.zarr", "'member' dimension or the fine grid's (y, x)", "series"],
    ),
    ([*SCORE, "--baseline", "bilinear"], ["--baseline bilinear needs the coarse inputs"]),
    (["score", "{d}/pred.zarr", "--truth", "{d}/nope.zarr"], ["--truth {d}/nope.zarr"]),
    (["score", "{d}/pred.zarr", "--truth", "{d}/text.txt"], ["--truth {d}/text.txt"]),
    (["score", "{d}/pred.zarr", "--truth", "{d}/pred.zarr"], ["truth", "'member'"]),
    (["score", "{d}/pred.zarr"], ["no truth group 'truth'", "--truth"]),
    (["score", "{d}/pred.zarr", "--truth-group", "nope"], ["no truth group 'nope'"]),
    (["score", "{d}/pred.zarr", "--prediction-group", "nope"], ["{d}/pred.zarr", "'nope'"]),
    (["score"], ["required", "prediction"]),
    # score: options
    ([*SCORE, "--storage-options", "{{bad"], ["--storage-options", "not valid JSON", "{{bad"]),
    ([*SCORE, "--storage-options", "[1]"], ["--storage-options", "JSON object", "[1]"]),
    ([*SCORE, "--metrics", "crps,bogus"], ["--metrics", "bogus", "spread_skill"]),
    ([*SCORE, "--metrics", ","], ["--metrics", "','"]),
    ([*SCORE, "--variables", "zz"], ["--variables zz", "t2m, tp"]),
    ([*SCORE, "--variables", ","], ["--variables", "','"]),
    ([*SCORE, "--workers", "0"], ["--workers", "'0'", ">= 1"]),
    ([*SCORE, "--workers", "two"], ["--workers", "'two'", "integer"]),
    ([*SCORE, "--estimator", "exact"], ["--estimator", "'exact'"]),
    ([*SCORE, "--format", "grib"], ["--format", "'grib'"]),
    (
        ["score", "{d}/nolat.zarr", "--truth", "{d}/truth.zarr", "--area-weighted"],
        ["--area-weighted", "'lat'", "{d}/nolat.zarr"],
    ),
    # score: outputs
    ([*SCORE, "-o", "s3://bucket/scores.zarr"], ["-o/--output", "s3://bucket/scores.zarr"]),
    ([*SCORE, "-o", "{d}/text.txt"], ["{d}/text.txt", "did not write"]),
    ([*SCORE, "-o", "{d}/user", "--overwrite"], ["{d}/user", "did not write"]),
    ([*SCORE, "--plots", "{d}/user", "--overwrite"], ["--plots", "{d}/user", "did not write"]),
    ([*SCORE, "-o", "{d}/p", "--plots", "{d}/p"], ["-o and --plots", "{d}/p"]),
    # demo (all refused before the data are built)
    (["demo"], ["required", "--out"]),
    ([*DEMO, "--members", "0"], ["--members", "'0'", ">= 1"]),
    ([*DEMO, "--times", "0"], ["--times", "'0'", ">= 1 and <= 72"]),
    ([*DEMO, "--times", "73"], ["--times", "'73'", "<= 72"]),
    ([*DEMO, "--steps", "-3"], ["--steps", "'-3'", ">= 1"]),
    ([*DEMO, "--steps", "many"], ["--steps", "'many'"]),
    ([*DEMO, "--sigma-max", "0"], ["--sigma-max", "'0'", "> 0"]),
    ([*DEMO, "--sigma-max", "nan"], ["--sigma-max", "'nan'", "> 0"]),
    ([*DEMO, "--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    ([*DEMO, "--model", "{d}/nope.safetensors"], ["--model {d}/nope.safetensors"]),
    ([*DEMO, "--model", "{d}/text.txt"], ["{d}/text.txt", "not a safetensors checkpoint"]),
    (["demo", "--out", "{d}/text.txt"], ["--out {d}/text.txt", "a file"]),
    (["demo", "--out", "{d}/user", "--overwrite"], ["--out {d}/user", "did not write"]),
    # convert
    (["convert", "grib", "{d}/x", "{d}/y"], ["layout", "'grib'"]),
    (["convert", "hrrr-mini", "{d}/nope.nc", "{d}/out.zarr"], ["{d}/nope.nc", "not found"]),
    (["convert", "hrrr-mini", "{d}/text.nc", "{d}/out.zarr"], ["{d}/text.nc", "NetCDF"]),
    (["convert", "hrrr-mini", "{d}/pred.zarr", "{d}/out.zarr"], ["{d}/pred.zarr", "'cwb'"]),
    (["convert", "cwb", "{d}/nope.zarr", "{d}/out.zarr"], ["{d}/nope.zarr", "not found"]),
    (["convert", "cwb", "{d}/text.txt", "{d}/out.zarr"], ["{d}/text.txt", "Zarr"]),
    (["convert", "cwb", "{d}/pred.zarr", "{d}/out.zarr"], ["{d}/pred.zarr", "CWB layout"]),
    ([*HRRR, "--stats", "{d}/nope.json"], ["{d}/nope.json", "--stats"]),
    ([*HRRR, "--stats", "{d}/bad_stats.json"], ["{d}/bad_stats.json", "not valid JSON"]),
    ([*HRRR, "--stats", "{d}/thin_stats.json"], ["{d}/thin_stats.json", "no mean/std for"]),
    ([*HRRR, "--window", "a,b"], ["--window", "'a,b'"]),
    ([*HRRR, "--window", "9,9"], ["(9, 9)"]),
    ([*HRRR, "--time-chunk", "0"], ["--time-chunk", "'0'", ">= 1"]),
    ([*HRRR, "--keep-invalid"], ["--keep-invalid", "'hrrr-mini'"]),
    (["convert", "cwb", "{d}/pred.zarr", "{d}/o.zarr", "--window", "1,1"], ["--window", "cwb"]),
    (["convert", "cwb", "{d}/pred.zarr", "s3://b/o.zarr"], ["s3://b/o.zarr", "local"]),
    ([*HRRR[:3], "{d}/user", "--overwrite"], ["destination {d}/user", "did not write"]),
    ([*HRRR[:3], "{d}/pred.zarr", "--overwrite"], ["destination {d}/pred.zarr"]),
]


def _fill(argv: list[str], d: Path) -> list[str]:
    return [a.format(d=d) for a in argv]


@pytest.mark.parametrize(("argv", "culprits"), CASES, ids=[" ".join(argv[:4]) for argv, _ in CASES])
def test_a_user_mistake_ends_in_one_line_naming_it_and_exit_2(files, capsys, argv, culprits):
    rc = cli.main(_fill(argv, files))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err
    # our errors are one line; argparse's error line comes after its usage lines
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    assert lines[-1].startswith("corrdiff-xr") and "error:" in lines[-1]
    for culprit in _fill(culprits, files):
        assert culprit in lines[-1]
    assert (files / "user" / "notes.txt").read_text() == "precious"
    assert not (files / "demo_out").exists() and not (files / "out.zarr").exists()


def test_the_dispatcher_prints_usage_and_help(capsys):
    assert cli.main([]) == 2
    assert "usage: corrdiff-xr" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
    assert cli.main(["score", "--help"]) == 0  # argparse's exit is a return status
    assert "--overwrite" in capsys.readouterr().out


def test_debug_before_or_after_the_command_or_in_the_environment_shows_the_traceback(
    files, monkeypatch
):
    missing = str(files / "nope.zarr")
    for argv in (["--debug", "score", missing], ["score", missing, "--debug"]):
        with pytest.raises(InputNotFoundError, match="nope.zarr"):
            cli.main(argv)
    monkeypatch.setenv("CORRDIFF_XR_DEBUG", "1")
    with pytest.raises(InputNotFoundError):
        cli.main(["score", missing])
    with pytest.raises(OSError, match="text.txt"):  # an OS error too
        cli.main([*_fill(SCORE, files), "-o", str(files / "text.txt" / "s.nc")])


def test_an_interrupt_ends_in_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(score_cli, "run", interrupted)
    assert cli.main(["score", "x.zarr"]) == 130
    assert capsys.readouterr().err.strip() == "corrdiff-xr score: interrupted"


# -- real operating-system failures --------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def _one_error_line(stderr: str) -> str:
    """The command's last line: its one error line (library warnings may come before it)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert [line for line in lines if line.startswith("corrdiff-xr")] == lines[-1:], stderr
    return lines[-1]


@pytest.mark.parametrize("name", ["a path under a file", "a parent that is a file"])
def test_an_output_under_a_file_ends_in_one_line_exit_1(files, capsys, name):
    below = "sub/s.nc" if name == "a path under a file" else "s.nc"
    target = files / "text.txt" / below
    assert cli.main([*_fill(SCORE, files), "-o", str(target)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(target) in line and "a parent" in line and "is a file" in line
    assert (files / "text.txt").read_text() == "not data"


def _limited(nbytes: int):
    def limit() -> None:  # in the child: writes past nbytes fail with EFBIG, not a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


@pytest.mark.parametrize("output", ["scores.nc", "scores.zarr", "convert"])
def test_a_file_size_limit_ends_in_one_line_and_leaves_nothing(files, tmp_path, output):
    out = tmp_path / "out"
    out.mkdir()
    if output == "convert":
        target = out / "canonical.zarr"
        argv = [*_fill(HRRR[:3], files), str(target)]
    else:
        target = out / output
        argv = [*_fill(SCORE, files), "-o", str(target)]
    run = subprocess.run(
        [sys.executable, "-c", CLI, *argv],
        preexec_fn=_limited(256),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    line = _one_error_line(run.stderr)
    assert str(target) in line and "File too large" in line and "ulimit -f" in line
    assert os.listdir(out) == []  # no half-written output, no hidden temporary


def _private_tmpfs(mnt: Path) -> bool:
    """Whether a tmpfs can be mounted at ``mnt`` in a private mount namespace here."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mnt}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


def _in_private_tmpfs(mnt: Path, setup: str, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run the CLI with a fresh tmpfs at ``mnt`` (after ``setup``); its status, stderr and
    what the tmpfs holds afterwards (the mount vanishes with the namespace)."""
    command = " ".join(f"'{a}'" for a in [sys.executable, "-c", CLI, *argv])
    script = f'{setup}\n{command}\necho "rc=$?"\nls -A1 {mnt}\n'
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = run.stdout.strip().splitlines()
    rc_line = next(line for line in lines if line.startswith("rc="))
    listing = lines[lines.index(rc_line) + 1 :]
    return int(rc_line[3:]), run.stderr, listing


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _private_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs in a private mount namespace (needs root, unshare)")
    return mnt


def test_a_full_disk_ends_score_in_one_line_and_keeps_the_earlier_output(files, tmpfs):
    target = tmpfs / "scores.zarr"
    setup = (
        f"mount -t tmpfs -o size=128k tmpfs {tmpfs} || exit 9\n"
        f"{sys.executable} -c '{CLI}' {' '.join(_fill(SCORE, files))} -o {target} "
        "--metrics crps >/dev/null || exit 8\n"
        f"head -c 200000 /dev/zero > {tmpfs}/fill 2>/dev/null\n"
    )
    argv = [*_fill(SCORE, files), "-o", str(target), "--overwrite"]
    rc, stderr, listing = _in_private_tmpfs(tmpfs, setup, argv)
    assert rc == 1, stderr
    line = _one_error_line(stderr)
    assert str(target) in line and "No space left on device" in line and "free space" in line
    assert listing == ["fill", "scores.zarr"]  # the earlier output, and no hidden temporary


@pytest.mark.parametrize("command", ["score", "convert"])
def test_a_read_only_file_system_ends_in_one_line(files, tmpfs, command):
    target = tmpfs / ("scores.nc" if command == "score" else "canonical.zarr")
    argv = (
        [*_fill(SCORE, files), "-o", str(target)]
        if command == "score"
        else [*_fill(HRRR[:3], files), str(target)]
    )
    rc, stderr, listing = _in_private_tmpfs(tmpfs, f"mount -t tmpfs -o ro tmpfs {tmpfs}", argv)
    assert rc == 1, stderr
    line = _one_error_line(stderr)
    assert str(target) in line and "Read-only file system" in line and "writable" in line
    assert listing == []
