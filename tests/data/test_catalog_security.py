"""Hostile catalogs: nothing a catalog names is imported, no template reads the environment,
nothing is written outside the cache, and no secret reaches an error message.

Each import case names a real module on a temporary ``sys.path`` entry that creates a marker
file when imported; the refused cases must leave no marker, and the same catalog opened with
the user's opt-in must create it (so the check, not luck, is what stops it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import traceback
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from corrdiff_xr._redact import REDACTED, redact_options, redact_text, redact_url
from corrdiff_xr.data import StoreError, open_pair
from corrdiff_xr.data.catalog import (
    TRUST_ENV,
    CatalogError,
    materialise,
    open_catalog,
    open_entry,
)

REPO = Path(__file__).resolve().parents[2]
SIMPLE = "intake.readers.user_parameters:SimpleUserParameter"
PAIR_READER = "corrdiff_xr.data.catalog:ZarrPairReader"
CACHE_READER = "corrdiff_xr.data.catalog:CachedBuildReader"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

MARKER_MODULE = """
import pathlib
pathlib.Path(MARKER).write_text("imported")


class Thing:
    def __init__(self, *args, **kwargs):
        self.kwargs = kwargs
"""


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A module that creates ``marker`` when imported, importable as ``module``."""
    name = f"cdx_marker_{uuid.uuid4().hex[:10]}"
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = tmp_path / "marker"
    (mods / f"{name}.py").write_text(f"MARKER = {str(marker)!r}\n{MARKER_MODULE}")
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    yield SimpleNamespace(module=name, thing=f"{name}:Thing", marker=marker, dir=mods)
    sys.modules.pop(name, None)


def _param(default="", **extra) -> dict:
    return {"cls": SIMPLE, "dtype": "str", "default": default, "description": "", **extra}


def _entry(**over) -> dict:
    spec = {
        "reader": PAIR_READER,
        "kwargs": {"url": "{zarr_url}"},
        "user_parameters": {},
        "metadata": {},
        "output_instance": "corrdiff_xr.data:DownscalingData",
    }
    spec.update(over)
    return spec


def _cache_entry(name="demo_tiny", **kwargs) -> dict:
    kw = {
        "builder": "synthetic",
        "name": name,
        "cache": "{cache_dir}",
        "builder_kwargs": {"ny": 8, "nx": 8, "nt": 2, "factor": 4},
        **kwargs,
    }
    return _entry(reader=CACHE_READER, kwargs=kw)


def write_catalog(path: Path, *, entries=None, user_parameters=None, data=None, metadata=None):
    """A complete intake 2 catalog YAML file; by default one harmless entry ``e``."""
    doc = {
        "version": 2,
        "metadata": metadata or {},
        "user_parameters": {"zarr_url": _param("memory://absent.zarr"), "cache_dir": _param()}
        if user_parameters is None
        else user_parameters,
        "data": data or {},
        "aliases": {},
        "entries": entries or {"e": _entry()},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _data(**over) -> dict:
    return {
        "datatype": "intake.readers.datatypes:Zarr",
        "kwargs": {"url": "memory://x"},
        "metadata": {},
        "user_parameters": {},
        **over,
    }


def import_cases(thing: str) -> dict[str, dict]:
    """Every place intake 2.0.9 imports a class a catalog names, pointed at ``thing``."""
    mod = thing.split(":")[0]
    return {
        "reader": {"entries": {"e": _entry(reader=thing)}},
        "user parameter cls": {"user_parameters": {"zarr_url": _param(), "p": _param(cls=thing)}},
        "entry user parameter cls": {
            "entries": {"e": _entry(user_parameters={"p": _param(cls=thing)})}
        },
        "output_instance": {"entries": {"e": _entry(output_instance=thing)}},
        "entry cls": {"entries": {"e": _entry(cls=thing)}},
        "data cls": {"data": {"d": _data(cls=thing)}},
        "datatype": {
            "data": {"d": _data(datatype=thing)},
            "entries": {"e": _entry(kwargs={"url": "{data(d)}"})},
        },
        "func template": {"entries": {"e": _entry(kwargs={"url": f"{{func({thing})}}"})}},
        "import template": {"entries": {"e": _entry(kwargs={"url": f"{{import({mod})}}"})}},
    }


CASES = list(import_cases("m:Thing"))


# -- class references --------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_a_class_reference_outside_the_allow_list_is_refused_before_import(case, hostile, tmp_path):
    path = write_catalog(tmp_path / "hostile.yaml", **import_cases(hostile.thing)[case])
    with pytest.raises(CatalogError) as info:
        open_entry(path, "e", cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert str(path) in message and hostile.module in message
    assert not hostile.marker.exists()
    assert hostile.module not in sys.modules


# intake 2.0.9 registers import(...) wrongly (calling it raises TypeError before importing),
# and imports output_instance only on introspection (next test); both are refused all the same
@pytest.mark.parametrize(
    "case", [c for c in CASES if c not in ("output_instance", "import template")]
)
def test_the_same_catalog_trusted_by_the_user_runs_what_it_names(case, hostile, tmp_path):
    path = write_catalog(tmp_path / "hostile.yaml", **import_cases(hostile.thing)[case])
    with contextlib.suppress(Exception):  # what the hostile class does afterwards is no matter
        open_entry(path, "e", trust=True)
    assert hostile.marker.read_text() == "imported"


def test_a_trusted_output_instance_is_imported_on_introspection(hostile, tmp_path):
    path = write_catalog(
        tmp_path / "hostile.yaml", **import_cases(hostile.thing)["output_instance"]
    )
    reader = open_catalog(path, trust=True)["e"]
    assert not hostile.marker.exists()
    dir(reader)  # intake lists the output type's methods: it imports output_instance
    assert hostile.marker.exists()


def test_the_trust_variable_lists_catalog_files_compared_resolved(hostile, tmp_path, monkeypatch):
    path = write_catalog(tmp_path / "hostile.yaml", **import_cases(hostile.thing)["reader"])
    other = tmp_path / "other.yaml"
    monkeypatch.setenv(TRUST_ENV, str(other))
    with pytest.raises(CatalogError, match=TRUST_ENV):
        open_entry(path, "e")
    assert not hostile.marker.exists()
    spelled = tmp_path / "mods" / ".." / "hostile.yaml"
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([str(other), str(spelled)]))
    with contextlib.suppress(Exception):
        open_entry(path, "e")
    assert hostile.marker.exists()


def test_a_catalog_cannot_trust_itself(hostile, tmp_path):
    params = {"zarr_url": _param(), "trust": {"cls": SIMPLE, "dtype": "bool", "default": True}}
    path = write_catalog(
        tmp_path / "self.yaml",
        metadata={"trust": True, "trusted": True},
        user_parameters=params,
        entries={"e": _entry(reader=hostile.thing)},
    )
    with pytest.raises(CatalogError, match="is not an allowed class"):
        open_entry(path, "e")
    assert not hostile.marker.exists()


@pytest.mark.parametrize("value", ["false", "1", 1])
def test_trust_must_be_a_bool_so_a_command_line_string_cannot_opt_in(value, hostile, tmp_path):
    path = write_catalog(tmp_path / "hostile.yaml", **import_cases(hostile.thing)["reader"])
    with pytest.raises(CatalogError, match=r"trust must be True or False, got"):
        open_entry(path, "e", trust=value)
    assert not hostile.marker.exists()


def test_a_catalog_object_made_elsewhere_needs_trust(tmp_path):
    from intake.readers.entry import Catalog

    cat = Catalog.from_dict(yaml.safe_load(write_catalog(tmp_path / "c.yaml").read_text()))
    with pytest.raises(CatalogError, match="not opened with open_catalog"):
        open_entry(cat, "e")


@pytest.mark.parametrize("dtype", ["eval", "exec", "open", "__import__"])
def test_a_user_parameter_dtype_must_be_a_plain_builtin_type(dtype, tmp_path):
    params = {"zarr_url": _param(), "p": _param(dtype=dtype)}
    path = write_catalog(tmp_path / "dtype.yaml", user_parameters=params)
    with pytest.raises(CatalogError, match=rf"user parameter 'p': dtype '{dtype}' is not allowed"):
        open_catalog(path)


def test_the_bundled_catalogs_need_no_trust():
    from corrdiff_xr.data.catalog import list_catalogs

    for name in list_catalogs():
        assert open_catalog(name).entries


def test_the_train_command_refuses_a_hostile_reader_in_one_line(hostile, tmp_path):
    path = write_catalog(tmp_path / "hostile.yaml", entries={"e": _entry(reader=hostile.thing)})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hostile.dir), str(REPO)]))
    env.pop(TRUST_ENV, None)
    env.pop("CORRDIFF_XR_DEBUG", None)
    command = Path(sys.executable).parent / "corrdiff-xr"
    proc = subprocess.run(
        [str(command), "train", "--config", "regression_mini", f"data.source=catalog:{path}/e",
         "training.duration=1", f"training.output_dir={tmp_path / 'out'}"],
        env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("corrdiff-xr train: error: catalog "), lines
    assert hostile.thing in lines[0] and TRUST_ENV in lines[0]
    assert not hostile.marker.exists()


def test_a_training_config_cannot_opt_a_catalog_in(hostile, tmp_path):
    from _train_helpers import tiny_config

    from corrdiff_xr.config import ConfigError, TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    path = write_catalog(tmp_path / "hostile.yaml", entries={"e": _entry(reader=hostile.thing)})
    cfg = tiny_config(f"catalog:{path}/e", tmp_path / "out")
    cfg["data"]["catalog_params"] = {"trust": True}
    with pytest.raises(ConfigError, match=rf"catalog_params.trust: .*\${TRUST_ENV}"):
        train(from_dict(TrainRunConfig, cfg))
    assert not hostile.marker.exists()


# -- templates ---------------------------------------------------------------------------------
TEMPLATES = {
    "env in braces": "{env(CDX_FAKE_SECRET)}",
    "env inside a URL": "http://127.0.0.1:9/{env(CDX_FAKE_SECRET)}/x.zarr",
    "client_env": "{client_env(CDX_FAKE_SECRET)}",
    "jinja env": "{{ env('CDX_FAKE_SECRET') }}",
    "jinja shell": "{{ shell('touch pwned') }}",
    "data reference": "{data(other)}",
    "pickle": "{pickle64(gASVAAAAAAAAAAA=)}",
    "attribute field": "{zarr_url.__class__.__mro__}",
    "index field": "{zarr_url[0]}",
    "format spec": "{zarr_url!r}",
    "undeclared field": "{HOME}",
}


@pytest.mark.parametrize("case", TEMPLATES)
def test_templates_other_than_declared_parameters_are_refused(case, tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_FAKE_SECRET", SECRET)
    path = write_catalog(
        tmp_path / "t.yaml", entries={"e": _entry(kwargs={"url": TEMPLATES[case]})}
    )
    with pytest.raises(CatalogError, match=r"entry 'e': template") as info:
        open_entry(path, "e")
    assert SECRET not in str(info.value)


def test_a_bare_env_default_of_a_user_parameter_is_refused(tmp_path, monkeypatch):
    # intake expands a default that *starts* with env(...), braces or not
    monkeypatch.setenv("CDX_FAKE_SECRET", SECRET)
    path = write_catalog(
        tmp_path / "t.yaml", user_parameters={"zarr_url": _param("env(CDX_FAKE_SECRET)")}
    )
    with pytest.raises(CatalogError, match=r"user parameter 'zarr_url': template env"):
        open_catalog(path)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_trusted_env_template_never_reaches_an_error_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_FAKE_SECRET", SECRET)
    url = f"http://127.0.0.1:{_closed_port()}/{{env(CDX_FAKE_SECRET)}}/data.zarr?token={{env(CDX_FAKE_SECRET)}}"
    path = write_catalog(tmp_path / "t.yaml", entries={"e": _entry(kwargs={"url": url})})
    with pytest.raises(StoreError, match="cannot read Zarr store") as info:
        open_entry(path, "e", trust=True)
    shown = "".join(traceback.format_exception(info.value))  # what --debug would print
    assert "127.0.0.1" in shown and REDACTED in shown
    assert SECRET not in shown and "wJalrXUtnFEMI" not in shown


# -- the cache directory -----------------------------------------------------------------------
def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("name", ["../../x/pwn", "/abs/pwn", "a/../../b", ".hidden", ""])
@pytest.mark.parametrize("trust", [False, True])
def test_cache_names_cannot_leave_the_cache_directory(name, trust, tmp_path):
    name = str(tmp_path / "abs" / "pwn") if name == "/abs/pwn" else name
    cache = tmp_path / "a" / "b" / "cache"
    path = write_catalog(tmp_path / "t.yaml", entries={"e": _cache_entry(name)})
    before = _tree(tmp_path)
    with pytest.raises(CatalogError, match=r"cache store name .* is not a plain name"):
        open_entry(path, "e", trust=trust, cache_dir=str(cache))
    assert _tree(tmp_path) == before


def test_a_cache_name_from_a_parameter_is_checked_too(tmp_path):
    params = {"zarr_url": _param(), "cache_dir": _param(), "store": _param("ok")}
    path = write_catalog(
        tmp_path / "t.yaml", user_parameters=params, entries={"e": _cache_entry("{store}")}
    )
    before = _tree(tmp_path)
    with pytest.raises(CatalogError, match=r"'\.\./\.\./x' is not a plain name"):
        open_entry(path, "e", cache_dir=str(tmp_path / "cache"), store="../../x")
    assert _tree(tmp_path) == before
    open_entry(path, "e", cache_dir=str(tmp_path / "cache"))
    assert [p.name[:3] for p in (tmp_path / "cache").iterdir()] == ["ok-"]


@pytest.mark.parametrize("builder", ["../synthetic", "/synthetic"])
def test_a_builder_name_must_be_plain(builder, tmp_path):
    with pytest.raises(CatalogError, match="builder .* is not a plain name"):
        materialise(builder, "x", cache_dir=tmp_path)


def test_entry_and_catalog_names_must_be_plain(tmp_path):
    path = write_catalog(tmp_path / "t.yaml", entries={"../../x": _entry()})
    with pytest.raises(CatalogError, match=r"entry name '\.\./\.\./x' is not a plain name"):
        open_catalog(path)
    with pytest.raises(CatalogError, match=r"entry name '\.\./e' is not a plain name"):
        open_entry(write_catalog(tmp_path / "u.yaml"), "../e")
    with pytest.raises(CatalogError, match=r"catalog name '\.\.' is not a plain name"):
        open_catalog("..")


def test_a_link_in_the_cache_that_points_outside_is_refused(tmp_path):
    kwargs = {"ny": 8, "nx": 8, "nt": 2, "factor": 4}
    store = materialise("synthetic", "s", cache_dir=tmp_path / "one", builder_kwargs=kwargs)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / store.name).symlink_to(outside, target_is_directory=True)
    with pytest.raises(CatalogError, match="outside the cache directory"):
        materialise("synthetic", "s", cache_dir=tmp_path / "two", builder_kwargs=kwargs)
    assert not any(outside.iterdir())


def test_an_untrusted_catalog_cannot_choose_the_cache_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    chosen_default = {"zarr_url": _param(), "cache_dir": _param(str(elsewhere))}
    cases = {
        "default": write_catalog(
            tmp_path / "a.yaml", user_parameters=chosen_default, entries={"e": _cache_entry()}
        ),
        "literal": write_catalog(
            tmp_path / "b.yaml", entries={"e": _cache_entry(cache=str(elsewhere))}
        ),
    }
    for case, path in cases.items():
        for params in ({}, {"cache_dir": str(tmp_path / "mine")}):
            with pytest.raises(CatalogError, match="the cache directory is the user's choice"):
                open_entry(path, "e", **params)
        assert not elsewhere.exists() and not (tmp_path / "mine").exists(), case
    # the user's choice, with a catalog that leaves it to them; a trusted default is honoured
    open_entry(write_catalog(tmp_path / "c.yaml", entries={"e": _cache_entry()}), "e",
               cache_dir=str(tmp_path / "mine"))  # fmt: skip
    assert len(list((tmp_path / "mine").iterdir())) == 1
    open_entry(cases["default"], "e", trust=True)
    assert len(list(elsewhere.iterdir())) == 1


def test_builder_arguments_that_read_files_are_refused(tmp_path):
    entry = _cache_entry(builder="uk_hires", builder_kwargs={"path": "/etc/passwd"})
    path = write_catalog(tmp_path / "t.yaml", entries={"e": entry})
    with pytest.raises(CatalogError, match=r"builder argument\(s\) \['path'\] read files"):
        open_entry(path, "e", cache_dir=str(tmp_path / "cache"))


def test_fsspec_cache_storage_options_are_refused(tmp_path):
    options = {"simplecache": {"cache_storage": str(tmp_path / "elsewhere")}}
    entry = _entry(kwargs={"url": "simplecache::{zarr_url}", "storage_options": options})
    path = write_catalog(tmp_path / "t.yaml", entries={"e": entry})
    with pytest.raises(CatalogError, match="cache_storage"):
        open_catalog(path)


# -- redaction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "kept", "gone"),
    [
        (
            "s3://AKIAEXAMPLE:s3cr3tvalue@host/b/x.zarr",
            "@host/b/x.zarr",
            ["AKIAEXAMPLE", "s3cr3tvalue"],
        ),
        ("https://ghp_tokenvalue@github.com/o/r", "@github.com/o/r", ["ghp_tokenvalue"]),
        (
            "https://h/x.zarr?X-Amz-Date=20240101&X-Amz-Signature=abc123&X-Amz-Credential=AKIA%2F1",
            "X-Amz-Date=20240101",
            ["abc123", "AKIA%2F1"],
        ),
        (
            "https://acct.blob.core.windows.net/c/x?sv=2022&sig=SASsignature",
            "sv=2022",
            ["SASsignature"],
        ),
        ("https://h/cb#access_token=fragtoken&state=1", "state=1", ["fragtoken"]),
        (
            "simplecache::s3://key:secretpart@bucket/x?token=tok123",
            "simplecache::s3://",
            ["secretpart", "tok123"],
        ),
        ("gs://bucket/plain/x.zarr", "gs://bucket/plain/x.zarr", []),
    ],
)
def test_redact_url_removes_credentials_and_keeps_the_rest(url, kept, gone):
    out = redact_url(url)
    assert kept in out
    for secret in gone:
        assert secret not in out
    assert (REDACTED in out) == bool(gone)


def test_redact_options_hides_secret_looking_keys_at_any_depth():
    options = {
        "key": "AKIA",
        "secret": "s",
        "token": "t",
        "anon": False,
        "endpoint_url": "http://h:9",
        "client_kwargs": {"aws_session_token": "st", "region_name": "eu"},
        "s3": {"password": "pw", "credentials": {"a": 1}},
        "profile": None,
    }
    out = redact_options(options)
    assert out["key"] == out["secret"] == out["token"] == REDACTED
    assert out["client_kwargs"] == {"aws_session_token": REDACTED, "region_name": "eu"}
    assert out["s3"] == {"password": REDACTED, "credentials": REDACTED}
    assert (out["anon"], out["endpoint_url"], out["profile"]) == (False, "http://h:9", None)
    assert options["key"] == "AKIA"  # a copy


def test_redact_text_hides_given_secrets_also_percent_encoded_and_secret_pairs():
    text = (
        f"GET /{SECRET.replace('/', '%2F').replace('+', '%2B')}/x failed for "
        f"{{'secret': 'abc', 'anon': True}} password=hunter2 and {SECRET}"
    )
    out = redact_text(text, [SECRET, None, "ab"])
    assert (
        SECRET not in out and "K7MDENG" not in out and "hunter2" not in out and "'abc'" not in out
    )
    assert "'anon': True" in out and "failed for" in out
    assert "ab" in redact_text("tab", ["ab"])  # too short to search for


def test_store_errors_do_not_print_url_credentials(tmp_path):
    url = f"http://user:pa55word@127.0.0.1:{_closed_port()}/x.zarr?token=t0ken"
    with pytest.raises(StoreError, match=r"http://\*\*\*@127\.0\.0\.1") as info:
        open_pair(url)
    shown = "".join(traceback.format_exception(info.value))
    assert "pa55word" not in shown and "t0ken" not in shown
