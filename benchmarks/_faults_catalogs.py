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
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

SIMPLE = "intake.readers.user_parameters:SimpleUserParameter"
PAIR = "corrdiff_xr.data.catalog:ZarrPairReader"
CACHED = "corrdiff_xr.data.catalog:CachedBuildReader"
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
    finally:
        sys.path.remove(str(mods))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {
        "hostile_catalogs": len(results),
        "hostile_catalogs_refused": sum(r["refused"] for r in results),
        "cases": results,
    }


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=1))
