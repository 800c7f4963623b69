"""Where an untrusted catalog may send the user's credentials and which files it may read,
and how much work it may ask for: protocols, filesystem chains, endpoints and credential
options are the user's to choose; YAML aliases, builder sizes and entry references are bounded.

Each refused case is also opened the way the user would opt in (a parameter value, or trust),
so that the check, not a failure elsewhere, is what stops it.
"""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_catalog_security import _cache_entry, _entry, _param, write_catalog

from corrdiff_xr.data import synthetic_dataset
from corrdiff_xr.data._catalog_trust import MAX_NODES
from corrdiff_xr.data.catalog import TRUST_ENV, CatalogError, open_catalog, open_entry
from corrdiff_xr.data.sources.synthetic import MAX_BUILD_STEPS, MAX_BUILD_VALUES, MAX_CELLS

ARCHIVE = "corrdiff_xr.data.catalog:ArchiveReader"
PAIR = "corrdiff_xr.data.catalog:ArchivePairReader"
FAKE_KEY_ID = "AKIACDXFAKEKEYID0001"


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("locations") / "canon.zarr"
    synthetic_dataset(ny=8, nx=8, nt=2, factor=4).to_zarr(path, consolidated=False)
    return path


def _options_entry(url: str, options) -> dict:
    return _entry(kwargs={"url": url, "storage_options": options})


# -- filesystems and local files -----------------------------------------------------------
def test_a_catalog_cannot_chain_filesystems_but_the_user_can(store, tmp_path):
    url = f"simplecache::file://{store}"
    path = write_catalog(tmp_path / "c.yaml", entries={"e": _entry(kwargs={"url": url})})
    with pytest.raises(CatalogError, match=r"entry 'e': url 'simplecache::file://.*chains") as info:
        open_entry(path, "e")
    assert TRUST_ENV in str(info.value) and "user parameter" in str(info.value)
    assert open_entry(path, "e", trust=True).fine.sizes["y"] == 8  # it would have worked
    # the same URL passed by the user, to a catalog that leaves it to them
    mine = write_catalog(tmp_path / "mine.yaml")
    assert open_entry(mine, "e", zarr_url=url).fine.sizes["y"] == 8


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("fo", {"fo": "~/.netrc", "target_protocol": "file"}),
        ("protocol", {"protocol": "file"}),
        ("target_protocol", {"target_protocol": "file", "target_options": {}}),
        ("remote_protocol", {"remote_protocol": "file"}),
    ],
)
def test_storage_options_choosing_a_filesystem_are_refused(key, options, tmp_path):
    entry = _options_entry("{zarr_url}", options)
    path = write_catalog(tmp_path / "c.yaml", entries={"e": entry})
    with pytest.raises(CatalogError, match=rf"storage option {key}=.* another filesystem"):
        open_catalog(path)


def test_a_static_archive_of_a_pair_cannot_read_local_files_through_a_reference(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login me password hunter2\n")
    static = {"url": "reference://", "variables": {"orog": "orog"},
              "storage_options": {"fo": {"orog/c/0/0": [str(netrc), 0, 40]}}}  # fmt: skip
    pair = {"coarse": {"url": "{zarr_url}"}, "fine": {"url": "{zarr_url}"}, "static": [static]}
    entries = {"p": _entry(reader=PAIR, kwargs=pair)}
    path = write_catalog(tmp_path / "c.yaml", entries=entries)
    with pytest.raises(
        CatalogError, match=r"entry 'p': (url 'reference://'|storage option fo=)"
    ) as info:
        open_entry(path, "p")
    assert "hunter2" not in str(info.value)


def test_a_parameter_default_that_sets_options_is_the_catalogs_choice(tmp_path):
    params = {
        "zarr_url": _param("memory://x.zarr"),
        "opts": _param({"fo": "/etc/passwd"}, dtype="dict"),
    }
    entry = _options_entry("{zarr_url}", "{opts}")
    path = write_catalog(tmp_path / "c.yaml", user_parameters=params, entries={"e": entry})
    with pytest.raises(CatalogError, match=r"storage option fo='/etc/passwd'"):
        open_catalog(path)


# -- servers and credentials -----------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server name
        self.seen.append(self.headers.get("Authorization") or "")
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()


def _s3_catalog(tmp_path: Path, options: dict) -> Path:
    entry = _options_entry("s3://bucket/data.zarr", options)
    return write_catalog(tmp_path / "s3.yaml", entries={"e": entry})


@pytest.mark.parametrize("where", ["endpoint_url", "client_kwargs"])
def test_a_catalog_endpoint_never_receives_the_users_credentials(where, recorder, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    pytest.importorskip("s3fs")
    url, seen = recorder
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-key-value")
    endpoint = (
        {"endpoint_url": url}
        if where == "endpoint_url"
        else {"client_kwargs": {"endpoint_url": url}}
    )
    path = _s3_catalog(tmp_path, {"anon": False, **endpoint})
    with pytest.raises(CatalogError, match=r"endpoint_url=.* the server your credentials"):
        open_entry(path, "e")
    assert seen == []
    with pytest.raises(Exception):  # noqa: B017,PT011 - the recorder answers 404
        open_entry(path, "e", trust=True)
    assert any(FAKE_KEY_ID in header for header in seen)  # what the check prevents


@pytest.mark.parametrize(
    "options",
    [{"key": "AKIA", "secret": "s"}, {"token": "/home/me/creds.json"}, {"profile": "prod"},
     {"client_kwargs": {"aws_session_token": "x"}}, {"config_kwargs": {"proxies": {"https": "h"}}}],
)  # fmt: skip
def test_credential_and_proxy_options_are_refused_naming_the_key(options, tmp_path):
    path = _s3_catalog(tmp_path, options)
    with pytest.raises(CatalogError, match=r"storage option \S+=") as info:
        open_catalog(path)
    assert "AKIA" not in str(info.value) and "'s'" not in str(info.value)


def test_anonymous_access_and_unset_parameters_stay_allowed(tmp_path):
    params = {"zarr_url": _param(), "endpoint": _param(""), "anon": _param(True, dtype="bool")}
    options = {"anon": "{anon}", "endpoint_url": "{endpoint}", "token": "anon"}
    entry = _options_entry("s3://bucket/x.zarr", options)
    open_catalog(write_catalog(tmp_path / "c.yaml", user_parameters=params, entries={"e": entry}))
    params["endpoint"] = _param("http://catalog-chosen:9000")
    path = write_catalog(tmp_path / "d.yaml", user_parameters=params, entries={"e": entry})
    with pytest.raises(CatalogError, match=r"endpoint_url='http://catalog-chosen:9000'"):
        open_catalog(path)


def test_the_cloud_catalog_takes_a_user_endpoint(s3_server):
    """The bundled catalog's endpoint_url parameter: the user's value reaches s3fs."""
    fs = s3_server.filesystem()
    bucket = s3_server.new_bucket(public_read=True)
    synthetic_dataset(ny=8, nx=8, nt=2, factor=4).to_zarr(
        fs.get_mapper(f"{bucket}/d.zarr"), consolidated=False
    )
    pair = open_entry("cloud", "s3", s3_url=f"s3://{bucket}/d.zarr",
                      endpoint_url=s3_server.endpoint_url)  # fmt: skip
    assert pair.fine.sizes["x"] == 8


# -- bounded work ------------------------------------------------------------------------------
def _alias_bomb(path: Path, levels: int = 9) -> Path:
    lines = ['a0: &a0 ["xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    head = "version: 2\nmetadata: {}\nuser_parameters: {}\ndata: {}\naliases: {}\nentries: {}\n"
    path.write_text(head + "bomb:\n" + "".join(f"  {line}\n" for line in lines))
    return path


@pytest.mark.parametrize("trust", [False, True])
def test_a_yaml_alias_bomb_is_refused_at_once(trust, tmp_path):
    path = _alias_bomb(tmp_path / "bomb.yaml")
    assert path.stat().st_size < 1000  # 5 * 10**8 strings once expanded
    start = time.perf_counter()
    with pytest.raises(
        CatalogError, match=rf"line \d+: YAML aliases expand to more than {MAX_NODES}"
    ):
        open_catalog(path, trust=trust)
    assert time.perf_counter() - start < 1.0


def test_the_trust_check_is_linear_in_the_file_size(tmp_path):
    def seconds(n: int) -> float:
        entries = {f"e{i}": _entry() for i in range(n)}
        path = write_catalog(tmp_path / f"c{n}.yaml", entries=entries)
        start = time.perf_counter()
        open_catalog(path)
        return time.perf_counter() - start

    seconds(10)  # imports
    small, large = seconds(100), seconds(800)
    assert large < 8 * small * 3, (small, large)  # 8x the entries: not 64x the time


def test_a_yaml_alias_that_contains_itself_is_refused(tmp_path):
    path = write_catalog(tmp_path / "c.yaml")
    path.write_text(path.read_text().replace("    kwargs:\n", "    kwargs: &k\n      me: *k\n", 1))
    with pytest.raises(CatalogError, match="a YAML alias refers to a node that contains it"):
        open_catalog(path, trust=True)


@pytest.mark.parametrize("trust", [False, True])
def test_entries_referring_to_each_other_in_a_cycle_are_named(trust, tmp_path):
    arch = {"a": _entry(reader=ARCHIVE, kwargs={"url": "{zarr_url}", "entry": "p"},
                        output_instance="xarray:Dataset"),
            "p": _entry(reader=PAIR, kwargs={"coarse": {"entry": "a"}, "fine": {"entry": "a"}})}  # fmt: skip
    path = write_catalog(tmp_path / "c.yaml", entries=arch)
    with pytest.raises(CatalogError, match=r"in a cycle: a -> p -> a; break the cycle"):
        open_entry(path, "p", trust=trust)
    doc = yaml.safe_load(write_catalog(tmp_path / "d.yaml").read_text())
    data = {"datatype": "intake.readers.datatypes:Zarr", "metadata": {}, "user_parameters": {}}
    doc["data"] = {"d1": {**data, "kwargs": {"url": "{data(d2)}"}},
                   "d2": {**data, "kwargs": {"url": "{data(d1)}"}}}  # fmt: skip
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CatalogError, match=r"in a cycle: d1 -> d2 -> d1"):
        open_entry(tmp_path / "d.yaml", "e", trust=True)


@pytest.mark.parametrize(
    ("kwargs", "limit"),
    [({"ny": 32768, "nx": 32768, "nt": 1, "factor": 4}, MAX_BUILD_VALUES),
     ({"ny": 8, "nx": 8, "nt": 10**6, "factor": 4}, MAX_BUILD_STEPS),
     ({"ny": 2048, "nx": 2048, "nt": 64, "factor": 4}, MAX_BUILD_VALUES)],
)  # fmt: skip
def test_builder_sizes_are_bounded_with_the_limit_in_the_error(kwargs, limit, tmp_path):
    path = write_catalog(tmp_path / "c.yaml", entries={"e": _cache_entry(builder_kwargs=kwargs)})
    cache = tmp_path / "cache"
    start = time.perf_counter()
    with pytest.raises(CatalogError, match=rf"builder 'synthetic', .*limit of {limit} "):
        open_entry(path, "e", cache_dir=str(cache))
    assert time.perf_counter() - start < 2.0
    assert not cache.exists() or not any(cache.iterdir())


def test_a_synthetic_grid_is_bounded_before_anything_is_allocated():
    with pytest.raises(ValueError, match=rf"32768 \* 32768 exceeds the limit of {MAX_CELLS} grid"):
        synthetic_dataset(ny=32768, nx=32768, nt=1)


def test_a_yaml_nested_too_deeply_is_one_clear_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("version: 2\nmetadata: {x: " + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(CatalogError, match="malformed catalog YAML .*: nested too deeply"):
        open_catalog(path)


def test_long_hostile_strings_are_checked_and_redacted_in_linear_time(tmp_path):
    from corrdiff_xr._redact import redact_text

    doc = yaml.safe_load(write_catalog(tmp_path / "c.yaml").read_text())
    doc["metadata"] = {"a": "env(" * 50_000, "b": "data(" * 50_000, "c": "x" * 200_000}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc, width=10**9))
    start = time.perf_counter()
    open_catalog(tmp_path / "c.yaml")
    for text in ("x" * 200_000, "s3" * 100_000, "ab:" * 60_000):
        redact_text(text)
    assert time.perf_counter() - start < 3.0  # quadratic scans took minutes
