"""Secrets never reach outputs: a password in a data URL or a token among catalog parameters
is redacted in the Zarr store's metadata, the NetCDF attributes, ``inspect``'s report and a
training run's files; a digest stands for it, so two sources that differ only in their secret
are still different requests (and equal ones still resume)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr._redact import REDACTED, redact_record
from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference.store import IDENTITY_ATTR
from corrdiff_xr.testing import tiny_corrdiff

PASSWORD = "pa55w0rd-Secret"
TOKEN = "tok-9f8e7d6c5b4a"


def _quiet(handler):
    handler.log_message = lambda *args: None
    return handler


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A canonical store behind a local HTTP server (which ignores the URL's credentials)."""
    root = tmp_path_factory.mktemp("served")
    synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=3).to_zarr(root / "data.zarr")
    codec = Codec.from_pair(open_pair(str(root / "data.zarr")))
    tiny_corrdiff(codec, (16, 16)).save(root / "model.safetensors")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _quiet(handler))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _every_byte(path: Path) -> bytes:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return b"".join(p.read_bytes() for p in files)


def _generate(root: Path, out: Path, *source: str) -> int:
    return main(["generate", *source, "--checkpoint", str(root / "model.safetensors"),
                 "--steps", "1", "--zarr", str(out), "--netcdf", str(out.with_suffix(".nc")),
                 "--torch-threads", "1"])  # fmt: skip


def test_a_password_in_the_data_url_is_redacted_in_every_output(served, tmp_path, capsys):
    root, host = served
    url = f"http://reader:{PASSWORD}@{host}/data.zarr"
    out = tmp_path / "out.zarr"
    assert _generate(root, out, "--data", url) == 0
    for output in (out, out.with_suffix(".nc")):
        assert PASSWORD.encode() not in _every_byte(output), output
    record = json.loads((out / "zarr.json").read_text())["attributes"][IDENTITY_ATTR]
    data = record["request"]["data"]
    assert data["data"] == f"http://{REDACTED}@{host}/data.zarr"
    assert data["redacted_digest"].startswith("pbkdf2:")
    assert PASSWORD not in capsys.readouterr().err
    # the same source resumes; another password is another request
    assert _generate(root, out, "--data", url) == 0
    assert _generate(root, out, "--data", url.replace(PASSWORD, "other-pass")) == 2
    err = capsys.readouterr().err
    assert "redacted_digest" in err and PASSWORD not in err and "other-pass" not in err


def test_catalog_parameters_holding_secrets_are_redacted(served, tmp_path, capsys):
    root, host = served
    out = tmp_path / "cat.zarr"
    source = ["--catalog", "cloud", "--entry", "zarr", "--param",
              f"zarr_url=http://{host}/data.zarr",
              f"zarr_storage_options.headers.X-Api-Key={TOKEN}"]  # fmt: skip
    assert _generate(root, out, *source) == 0
    for output in (out, out.with_suffix(".nc")):
        assert TOKEN.encode() not in _every_byte(output), output
    data = json.loads((out / "zarr.json").read_text())["attributes"][IDENTITY_ATTR]
    params = data["request"]["data"]["params"]
    assert params == {
        "zarr_url": f"http://{host}/data.zarr",
        "zarr_storage_options": {"headers": {"X-Api-Key": REDACTED}},
    }
    # an unknown parameter is refused without printing its value
    assert _generate(root, out, *source, f"api_token={TOKEN}") == 2
    assert TOKEN not in capsys.readouterr().err


def test_redact_record_keeps_records_without_secrets_and_separates_secrets():
    plain = {"catalog": "demo", "entry": "e", "params": {"seed": 1}}
    assert redact_record(plain) is plain  # old stores of such sources resume unchanged
    one = redact_record({"data": "s3://k:one@h/x", "params": {"token": TOKEN}})
    two = redact_record({"data": "s3://k:two@h/x", "params": {"token": TOKEN}})
    assert one["data"] == two["data"] and one["params"] == {"token": REDACTED}
    assert one["redacted_digest"] != two["redacted_digest"]
    assert one == redact_record({"data": "s3://k:one@h/x", "params": {"token": TOKEN}})


def test_inspect_does_not_print_the_password(served, capsys):
    root, host = served
    assert main(["inspect", f"http://reader:{PASSWORD}@{host}/data.zarr"]) == 0
    shown = capsys.readouterr().out
    assert f"http://{REDACTED}@{host}/data.zarr" in shown and PASSWORD not in shown


def test_a_training_run_saves_no_secret(served, tmp_path):
    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    root, host = served
    synthetic_store(root / "train.zarr", nt=4)
    source = f"http://reader:{PASSWORD}@{host}/train.zarr"
    cfg = tiny_config(source, tmp_path / "run", duration=4, checkpoint_every=4, validate_every=4)
    cfg["data"]["storage_options"] = {"headers": {"X-Api-Key": TOKEN}}
    train(from_dict(TrainRunConfig, cfg))
    saved = _every_byte(tmp_path / "run")
    assert PASSWORD.encode() not in saved and TOKEN.encode() not in saved
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"http://{REDACTED}@{host}/train.zarr" in config and "X-Api-Key: '***'" in config
