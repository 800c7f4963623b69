"""Hostile intake catalogs, each opened the way a user would: how many are refused.

Called by ``benchmarks/faults.py``: :func:`run` writes every hostile catalog of the trial under
``workdir`` (code execution through a class reference or template, reading the environment,
writing outside the cache, secrets in error messages), opens it with
:func:`corrdiff_xr.data.catalog.open_entry` (and once through ``corrdiff-xr train`` in a
subprocess) and reports, per case, whether it was refused. A case counts as refused only if
it raised :class:`~corrdiff_xr.data.catalog.CatalogError` *and* its marker module was not
imported *and* nothing appeared outside the cache directory *and* no error text carried the
secret; the one trusted case (an ``env`` URL the user opted into) counts as refused when its
error message does not carry the secret.

Issue 23's cases (:func:`_round3`): local files read through filesystem options or chained
URLs, a catalog's endpoint receiving the user's AWS key id (a local HTTP server records the
``Authorization`` header), a password and a token reaching ``generate``'s outputs and
``inspect``'s report, a YAML alias bomb, builders asking for a 32768^2 grid or 10**6 steps, and
entries referring to each other in a cycle. Those that could hang or exhaust memory run as
``corrdiff-xr`` in a subprocess, whose peak memory is reported as ``peak_mem_mb``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

SIMPLE = "intake.readers.user_parameters:SimpleUserParameter"
PAIR = "corrdiff_xr.data.catalog:ZarrPairReader"
CACHED = "corrdiff_xr.data.catalog:CachedBuildReader"
PAIR_ARCHIVES = "corrdiff_xr.data.catalog:ArchivePairReader"
SECRET_ENV = "CDX_FAULTS_FAKE_SECRET"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYFAULTSKEY"


def _param(default="", **extra) -> dict:
    return {"cls": SIMPLE, "dtype": "str", "default": default, **extra}


def _entry(**over) -> dict:
    spec = {"reader": PAIR, "kwargs": {"url": "{zarr_url}"}, "user_parameters": {},
            "metadata": {}, "output_instance": "corrdiff_xr.data:DownscalingData"}  # fmt: skip
    return {**spec, **over}


def _cached(name: str = "store", **kwargs) -> dict:
    kw = {"builder": "synthetic", "name": name, "cache": "{cache_dir}",
          "builder_kwargs": {"ny": 8, "nx": 8, "nt": 2, "factor": 4}, **kwargs}  # fmt: skip
    return _entry(reader=CACHED, kwargs=kw)


def _data(**over) -> dict:
    return {"datatype": "intake.readers.datatypes:Zarr", "kwargs": {}, "metadata": {},
            "user_parameters": {}, **over}  # fmt: skip


def _catalog(path: Path, *, entries=None, user_parameters=None, data=None) -> Path:
    params = {"zarr_url": _param("memory://absent.zarr"), "cache_dir": _param()}
    doc = {"version": 2, "metadata": {}, "user_parameters": {**params, **(user_parameters or {})},
           "data": data or {}, "aliases": {}, "entries": entries or {"e": _entry()}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def _cases(thing: str, tmp: Path) -> dict[str, dict]:
    """name -> catalog sections (and optionally ``entry``/``params``) of one hostile case."""
    mod = thing.split(":")[0]
    env = f"{{env({SECRET_ENV})}}"
    cases = {
        "import: reader": {"entries": {"e": _entry(reader=thing)}},
        "import: user parameter cls": {"user_parameters": {"p": _param(cls=thing)}},
        "import: entry user parameter cls": {
            "entries": {"e": _entry(user_parameters={"p": _param(cls=thing)})}},
        "import: output_instance": {"entries": {"e": _entry(output_instance=thing)}},
        "import: entry cls": {"entries": {"e": _entry(cls=thing)}},
        "import: data cls": {"data": {"d": _data(cls=thing)}},
        "import: datatype": {"data": {"d": _data(datatype=thing)},
                             "entries": {"e": _entry(kwargs={"url": "{data(d)}"})}},
        "import: func template": {"entries": {"e": _entry(kwargs={"url": f"{{func({thing})}}"})}},
        "import: import template": {"entries": {"e": _entry(kwargs={"url": f"{{import({mod})}}"})}},
        "dtype: eval": {"user_parameters": {"p": _param(dtype="eval")}},
        "env: braces": {"entries": {"e": _entry(kwargs={"url": env})}},
        "env: inside a URL": {"entries": {"e": _entry(kwargs={"url": f"http://127.0.0.1:9/{env}/x"})}},
        "env: bare parameter default": {"user_parameters": {"zarr_url": _param(f"env({SECRET_ENV})")}},
        "template: data reference": {"entries": {"e": _entry(kwargs={"url": "{data(other)}"})}},
        "template: pickle64": {"entries": {"e": _entry(kwargs={"url": "{pickle64(gASVAA==)}"})}},
        "template: jinja shell": {"entries": {"e": _entry(kwargs={"url": "{{ shell('id') }}"})}},
        "template: attribute field": {"entries": {"e": _entry(kwargs={"url": "{zarr_url.__class__}"})}},
        "path: entry name ../../x": {"entries": {"../../x": _entry()}, "entry": "../../x"},
        "path: cache name ../../x/pwn": {"entries": {"e": _cached("../../x/pwn")}},
        "path: cache name absolute": {"entries": {"e": _cached(str(tmp / "abs" / "pwn"))}},
        "path: cache name a/../../b": {"entries": {"e": _cached("a/../../b")}},
        "path: cache name from a parameter": {
            "user_parameters": {"cache_dir": _param(), "store": _param("ok")},
            "entries": {"e": _cached("{store}")}, "params": {"store": "../../x"}},
        "cache: catalog default cache_dir": {
            "user_parameters": {"cache_dir": _param(str(tmp / "elsewhere"))},
            "entries": {"e": _cached()}},
        "cache: literal cache argument": {"entries": {"e": _cached(cache=str(tmp / "elsewhere"))}},
        "cache: builder reads a file": {
            "entries": {"e": _cached(builder="uk_hires", builder_kwargs={"path": "/etc/passwd"})}},
        "cache: fsspec cache_storage": {"entries": {"e": _entry(kwargs={
            "url": "simplecache::{zarr_url}",
            "storage_options": {"simplecache": {"cache_storage": str(tmp / "elsewhere")}}})}},
        "local file: reference fo in a static archive": {"entries": {"e": _entry(
            reader=PAIR_ARCHIVES, kwargs={"coarse": {"url": "{zarr_url}"}, "fine": {"url": "{zarr_url}"},
            "static": [{"url": "reference://", "variables": {"orog": "orog"},
                        "storage_options": {"fo": {"orog/c/0/0": [str(tmp / "netrc"), 0, 64]}}}]})}},
        "local file: protocol option": {"entries": {"e": _entry(kwargs={
            "url": str(tmp / "netrc"), "storage_options": {"protocol": "file"}})}},
        "local file: chained URL": {"entries": {"e": _entry(kwargs={
            "url": f"simplecache::file://{tmp / 'netrc'}"})}},
        "credentials: token file option": {"entries": {"e": _entry(kwargs={
            "url": "gs://bucket/x.zarr", "storage_options": {"token": str(tmp / "netrc")}})}},
    }  # fmt: skip
    return cases


def _marker_module(where: Path) -> tuple[str, Path]:
    name = f"cdx_faults_{uuid.uuid4().hex[:10]}"
    marker = where / f"{name}.marker"
    (where / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n"
        "class Thing:\n    def __init__(self, *args, **kwargs):\n        pass\n"
    )
    return name, marker


def _outcome(tmp: Path, cache: Path, marker: Path, attempt: Callable[[], object]) -> bool:
    """Whether ``attempt`` was refused cleanly: CatalogError, no import, nothing written."""
    from corrdiff_xr.data.catalog import CatalogError

    before = {p for p in tmp.rglob("*") if cache not in p.parents}
    try:
        attempt()
        refused, shown = False, ""
    except CatalogError as err:
        refused, shown = True, "".join(traceback.format_exception(err))
    except Exception as err:  # noqa: BLE001 - anything else means the catalog got through
        refused, shown = False, "".join(traceback.format_exception(err))
    after = {p for p in tmp.rglob("*") if cache not in p.parents}
    return refused and not marker.exists() and after == before and SECRET not in shown


def _trusted_env_leak(tmp: Path) -> bool:
    """A trusted ``env`` URL that cannot be reached: its error must not show the secret."""
    from corrdiff_xr.data.catalog import open_entry

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{{env({SECRET_ENV})}}/x.zarr?token={{env({SECRET_ENV})}}"
    path = _catalog(tmp / "trusted_env.yaml", entries={"e": _entry(kwargs={"url": url})})
    try:
        open_entry(path, "e", trust=True)
    except Exception as err:  # noqa: BLE001 - the message is what is judged
        return SECRET not in "".join(traceback.format_exception(err))
    return False


def _train_command(tmp: Path, mods: Path) -> bool:
    """``corrdiff-xr train`` with a hostile reader: exit 2, one error line, no import."""
    name, marker = _marker_module(mods)
    path = _catalog(tmp / "train.yaml", entries={"e": _entry(reader=f"{name}:Thing")})
    drop = ("CORRDIFF_XR_TRUSTED_CATALOGS", "CORRDIFF_XR_DEBUG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(mods), root])
    cli = "import sys; from corrdiff_xr.cli import main; sys.exit(main())"  # corrdiff-xr
    command = [sys.executable, "-c", cli, "train", "--config", "regression_mini",
               f"data.source=catalog:{path}/e", "training.duration=1",
               f"training.output_dir={tmp / 'train_out'}"]  # fmt: skip
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    lines = proc.stderr.strip().splitlines()
    one_line = len(lines) == 1 and lines[0].startswith("corrdiff-xr train: error:")
    return proc.returncode == 2 and one_line and not marker.exists()


# -- issue 23: credentials, local files, secrets in outputs, unbounded work --------------------
FAKE_KEY_ID = "AKIACDXFAULTSKEYID01"
URL_SECRET = "pa55-CDXFAULTS-w0rd"
_RUNNER = """import re, sys
from corrdiff_xr.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exit_:
    rc = exit_.code
# VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec)
status = open("/proc/self/status").read()
print("peak_kb=" + re.search(r"VmHWM:\\s*(\\d+)", status)[1], file=sys.stderr)
sys.exit(rc)
"""


def _cli(argv: list[str], timeout: float = 300) -> tuple[int | None, str, str, float | None]:
    """``corrdiff-xr ARGV`` in a fresh process: status (None on timeout), out, err, peak MB."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORRDIFF_XR_TRUSTED_CATALOGS",
                                                            "CORRDIFF_XR_DEBUG")}  # fmt: skip
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    try:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, *argv], env=env, text=True,
                              capture_output=True, timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "", "timed out", None
    lines = proc.stderr.rstrip().splitlines()
    peak = None
    if lines and lines[-1].startswith("peak_kb="):
        peak = round(int(lines.pop()[8:]) / 1024, 1)
    return proc.returncode, proc.stdout, "\n".join(lines), peak


class _Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves a directory and records every Authorization header it is sent."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server name
        self.seen.append(self.headers.get("Authorization") or "")
        super().do_GET()

    def do_HEAD(self):  # noqa: N802
        self.seen.append(self.headers.get("Authorization") or "")
        super().do_HEAD()

    def log_message(self, *args):
        pass


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Recorder, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def _endpoint_leak(tmp: Path, host: str, nested: bool) -> bool:
    """An s3:// entry whose endpoint is the catalog's: refused, and no request carries the key."""
    from corrdiff_xr.data.catalog import CatalogError, open_entry

    endpoint = {"endpoint_url": f"http://{host}"}
    options = {"anon": False, **({"client_kwargs": endpoint} if nested else endpoint)}
    entry = _entry(kwargs={"url": "s3://bucket/data.zarr", "storage_options": options})
    path = _catalog(tmp / f"endpoint{int(nested)}.yaml", entries={"e": entry})
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY="fake-secret-value")
    _Recorder.seen = []
    try:
        open_entry(path, "e")
        refused = False
    except CatalogError:
        refused = True
    except Exception:  # noqa: BLE001 - it went through to the server
        refused = False
    finally:
        _restore(saved)
    return refused and not any(FAKE_KEY_ID in header for header in _Recorder.seen)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _bytes(path: Path) -> bytes:
    if not path.exists():
        return b""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return b"".join(p.read_bytes() for p in files)


def _secrets_in_outputs(tmp: Path, host: str) -> list[dict]:
    """generate from a password URL / a catalog token, and inspect: no secret in any output."""
    model = ["--checkpoint", str(tmp / "model.safetensors"), "--steps", "1",
             "--torch-threads", "1"]  # fmt: skip
    sources = {
        "secret: password in the --data URL (generate outputs)":
            ["--data", f"http://reader:{URL_SECRET}@{host}/data.zarr"],
        "secret: token in a catalog parameter (generate outputs)":
            ["--catalog", "cloud", "--entry", "zarr", "--param", f"zarr_url=http://{host}/data.zarr",
             f"zarr_storage_options.headers.X-Api-Key={URL_SECRET}"],
    }  # fmt: skip
    results = []
    for i, (name, source) in enumerate(sources.items()):
        out = tmp / f"out{i}.zarr"
        argv = ["generate", *source, *model, "--zarr", str(out), "--netcdf", f"{out}.nc"]
        rc, stdout, stderr, peak = _cli(argv)
        shown = _bytes(out) + _bytes(Path(f"{out}.nc")) + (stdout + stderr).encode()
        ok = rc == 0 and URL_SECRET.encode() not in shown
        results.append({"name": name, "refused": ok, "peak_mem_mb": peak})
    rc, stdout, stderr, peak = _cli(["inspect", f"http://reader:{URL_SECRET}@{host}/data.zarr"])
    ok = rc == 0 and URL_SECRET not in stdout + stderr and "source: http://***@" in stdout
    results.append({"name": "secret: password in the inspect report", "refused": ok,
                    "peak_mem_mb": peak})  # fmt: skip
    return results


def _alias_bomb(path: Path, levels: int = 9) -> Path:
    """~800 bytes that expand to 10**9 strings wherever the YAML is walked as a tree."""
    lines = [
        'a0: &a0 ["xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx",'
        ' "xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx"]'
    ]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    doc = yaml.safe_load(_catalog(path).read_text())
    doc["metadata"] = {"bomb": "BOMB"}
    text = yaml.safe_dump(doc).replace("bomb: BOMB", f"bomb: *a{levels - 1}")
    path.write_text("defs:\n" + "".join(f"  {line}\n" for line in lines) + text)
    return path


def _unbounded(tmp: Path) -> list[dict]:
    """An alias bomb and oversized builders, opened by ``corrdiff-xr inspect`` in a subprocess."""
    results = []
    bomb = _alias_bomb(tmp / "bomb.yaml")
    start = time.perf_counter()
    rc, _, err, peak = _cli(["inspect", f"catalog:{bomb}/e"], timeout=120)
    ok = rc == 2 and "alias" in err and len(err.splitlines()) == 1
    results.append({"name": f"bounds: YAML alias bomb ({bomb.stat().st_size} bytes)", "refused": ok,
                    "peak_mem_mb": peak, "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
    for name, kwargs in (("bounds: builder grid 32768^2", {"ny": 32768, "nx": 32768, "nt": 1}),
                         ("bounds: builder 10**6 time steps", {"ny": 64, "nx": 64, "nt": 10**6})):  # fmt: skip
        cache = tmp / f"cache_{kwargs['nt']}"
        path = _catalog(tmp / f"builder_{kwargs['nt']}.yaml",
                        entries={"e": _cached(builder_kwargs={**kwargs, "factor": 4})})  # fmt: skip
        rc, _, err, peak = _cli(["inspect", f"catalog:{path}/e", "--param",
                                 f"cache_dir={cache}"], timeout=300)  # fmt: skip
        empty = not cache.exists() or not any(cache.iterdir())
        ok = rc == 2 and "exceeds the limit" in err and empty
        results.append({"name": name, "refused": ok, "peak_mem_mb": peak})
    return results


def _cycles(tmp: Path) -> list[dict]:
    """Entries referring to each other: one CatalogError naming the cycle, trusted or not."""
    from corrdiff_xr.data.catalog import CatalogError, open_entry

    data = {"datatype": "intake.readers.datatypes:Zarr", "metadata": {}, "user_parameters": {}}
    trusted = _catalog(tmp / "cycle_data.yaml", entries={"e": _entry(kwargs={"url": "{data(d1)}"})},
                       data={"d1": {**data, "kwargs": {"url": "{data(d2)}"}},
                             "d2": {**data, "kwargs": {"url": "{data(d1)}"}}})  # fmt: skip
    archive = _entry(reader="corrdiff_xr.data.catalog:ArchiveReader", output_instance="xarray:Dataset",
                     kwargs={"url": "{zarr_url}", "entry": "p"})  # fmt: skip
    pair = _entry(reader=PAIR_ARCHIVES, kwargs={"coarse": {"entry": "a"}, "fine": {"entry": "a"}})
    untrusted = _catalog(tmp / "cycle_entries.yaml", entries={"a": archive, "p": pair})
    results = []
    for name, path, entry, trust in (
        ("cycle: data(...) templates, trusted catalog", trusted, "e", True),
        ("cycle: archive entry references", untrusted, "p", False),
    ):
        try:
            open_entry(path, entry, trust=trust)
            ok = False
        except CatalogError as err:
            ok = "in a cycle:" in str(err) and len(str(err).splitlines()) == 1
        except BaseException:  # noqa: BLE001 - RecursionError and the like: not a clear error
            ok = False
        results.append({"name": name, "refused": ok})
    return results


def _round3(tmp: Path) -> list[dict]:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.testing import tiny_corrdiff

    tmp.mkdir(parents=True, exist_ok=True)
    synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=3).to_zarr(tmp / "data.zarr")
    tiny_corrdiff(Codec.from_pair(open_pair(str(tmp / "data.zarr"))), (16, 16)).save(
        tmp / "model.safetensors"
    )
    server, host = _serve(tmp)
    try:
        results = [{"name": f"credentials: catalog {where} gets the AWS key id",
                    "refused": _endpoint_leak(tmp, host, nested)}
                   for where, nested in (("endpoint_url", False), ("client_kwargs.endpoint_url", True))]  # fmt: skip
        results += _secrets_in_outputs(tmp, host)
    finally:
        server.shutdown()
    return results + _unbounded(tmp) + _cycles(tmp)


def run(workdir: Path) -> dict:
    """Open every hostile catalog case under ``workdir``; count those refused.

    Returns
    -------
    dict
        ``{"hostile_catalogs": N, "hostile_catalogs_refused": M,
        "cases": [{"name": ..., "refused": bool}, ...]}``.
    """
    from corrdiff_xr.data.catalog import TRUST_ENV, open_catalog, open_entry

    workdir = Path(workdir)
    mods = workdir / "catalog_faults_modules"
    mods.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in (TRUST_ENV, SECRET_ENV)}
    os.environ.pop(TRUST_ENV, None)
    os.environ[SECRET_ENV] = SECRET
    sys.path.insert(0, str(mods))
    results = []
    try:
        for i, (name, spec) in enumerate(_cases("placeholder:Thing", workdir).items()):
            tmp = workdir / f"catalog_case_{i:02d}"
            tmp.mkdir(exist_ok=True)
            (tmp / "netrc").write_text(f"machine example.org login me password {SECRET}\n")
            module, marker = _marker_module(mods)
            spec = _cases(f"{module}:Thing", tmp)[name]
            entry, params = spec.pop("entry", "e"), spec.pop("params", {})
            path = _catalog(tmp / "hostile.yaml", **spec)
            cache = tmp / "cache"

            def attempt(path=path, entry=entry, params=params, cache=cache):
                return open_entry(path, entry, cache_dir=str(cache), **params)

            results.append({"name": name, "refused": _outcome(tmp, cache, marker, attempt)})
            sys.modules.pop(module, None)
        tmp = workdir / "catalog_case_names"
        tmp.mkdir(exist_ok=True)
        _, marker = _marker_module(mods)
        results.append({"name": "path: catalog name ..", "refused": _outcome(
            tmp, tmp / "cache", marker, lambda: open_catalog(".."))})  # fmt: skip
        results.append({"name": "secret: trusted env URL in an error message",
                        "refused": _trusted_env_leak(workdir)})  # fmt: skip
        results.append({"name": "command: corrdiff-xr train with a hostile reader",
                        "refused": _train_command(workdir, mods)})  # fmt: skip
        results.extend(_round3(workdir / "round3"))
    finally:
        sys.path.remove(str(mods))
        _restore(saved)
    peaks = [r["peak_mem_mb"] for r in results if r.get("peak_mem_mb") is not None]
    return {
        "hostile_catalogs": len(results),
        "hostile_catalogs_refused": sum(r["refused"] for r in results),
        "peak_mem_mb_worst": max(peaks, default=None),
        "cases": results,
    }


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=1))
