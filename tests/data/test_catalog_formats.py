"""Catalog entries of archives in any format: ``engine`` and ``backend_kwargs`` under the
catalog trust rules, and a model trained from a catalog pair of GRIB, kerchunk and Icechunk.

What an untrusted catalog may not choose: ``backend_kwargs`` that pick a filesystem (checked
like storage options), and a *local* kerchunk reference (its targets could be any local
file); each refusal is also opened the way a user opts in, so the check is what stops it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import yaml
from _train_helpers import tiny_config
from test_catalog_security import SIMPLE
from test_formats import files, write_grib  # noqa: F401  (the module fixture, reused)

from corrdiff_xr.data import StoreError
from corrdiff_xr.data.catalog import TRUST_ENV, CatalogError, open_catalog, open_entry

ARCHIVE = "corrdiff_xr.data.catalog:ArchiveReader"
PAIR = "corrdiff_xr.data.catalog:ArchivePairReader"


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def _archive(**kwargs) -> dict:
    return {"reader": ARCHIVE, "kwargs": kwargs, "user_parameters": {}, "metadata": {},
            "output_instance": "xarray:Dataset"}  # fmt: skip


def _grib(short: str) -> dict:
    return _archive(url="{grib_url}", backend_kwargs={"filter_by_keys": {"shortName": short}})


def catalog(path, refs_default: str = "", **over) -> str:
    """GRIB coarse fields, a km-scale kerchunk reference and an Icechunk orography, paired."""
    params = {
        name: {"cls": SIMPLE, "dtype": "str", "default": default, "description": ""}
        for name, default in (("grib_url", ""), ("refs_url", refs_default), ("ice_url", ""))
    }
    entries = {
        "t2m": _grib("2t"),
        "u10": _grib("10u"),
        "km": _archive(url="{refs_url}", engine="kerchunk"),
        "orog": _archive(url="{ice_url}", engine="icechunk", backend_kwargs={"branch": "main"}),
        "pair": {
            "reader": PAIR,
            "kwargs": {
                "coarse": [
                    {"entry": "t2m", "variables": {"t2m": "tas_coarse"}},
                    {"entry": "u10", "variables": {"u10": "uas_coarse"}},
                ],
                "fine": {"entry": "km"},
                "static": {"entry": "orog"},
            },  # fmt: skip
            "user_parameters": {},
            "metadata": {},
            "output_instance": "corrdiff_xr.data:DownscalingData",
        },
        **over,
    }
    doc = {"version": 2, "metadata": {}, "user_parameters": params, "data": {}, "aliases": {},
           "entries": entries}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _params(files) -> dict:  # noqa: F811
    return {"grib_url": files["grib"], "refs_url": files["refs"], "ice_url": files["ice"]}


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kw)


def test_catalog_entries_open_each_format_and_pair_them(files, tmp_path):  # noqa: F811
    path = catalog(tmp_path / "c.yaml")
    cat = open_catalog(path)  # untrusted: engines and their backend kwargs are allowed
    t2m = cat(grib_url=files["grib"])["t2m"].read()
    assert list(t2m.data_vars) == ["t2m"] and t2m["t2m"].chunks is not None
    pair = _quiet(open_entry, path, "pair", **_params(files))
    assert (pair.inputs, pair.targets, pair.static) == (
        ("tas_coarse", "uas_coarse"), ("tas", "uas"), ("orog",),
    )  # fmt: skip
    written = files["arch"]["fine"]["tas"].isel(height=0).values
    np.testing.assert_array_equal(pair.dataset["tas"].values, written)


def test_an_untrusted_catalog_may_not_choose_a_local_reference(files, tmp_path):  # noqa: F811
    path = catalog(tmp_path / "c.yaml", refs_default=files["refs"])
    with pytest.raises(CatalogError, match=r"entry 'km': url .*fine.json' is a local kerchunk"):
        open_catalog(path)
    # the user may pass it (test above), or trust the catalog
    pair = _quiet(
        open_entry, path, "pair", trust=True, grib_url=files["grib"], ice_url=files["ice"]
    )
    assert pair.targets == ("tas", "uas")
    # nor through a pair's override of an archive entry
    sneaky = {"reader": PAIR, "kwargs": {"coarse": {"entry": "t2m"}, "fine": {
        "entry": "orog", "engine": "kerchunk", "url": files["refs"]}},
        "user_parameters": {}, "metadata": {}, "output_instance": "corrdiff_xr.data:DownscalingData"}  # fmt: skip
    path = catalog(tmp_path / "d.yaml", sneaky=sneaky)
    with pytest.raises(CatalogError, match=r"entry 'sneaky': url .* local kerchunk"):
        open_catalog(path)
    # a remote reference may be named (its targets are checked when read)
    open_catalog(catalog(tmp_path / "e.yaml", refs_default="s3://bucket/refs.json"))


@pytest.mark.parametrize(
    ("backend_kwargs", "problem"),
    [
        ({"storage_options": {"fo": "~/.netrc"}}, "backend_kwargs.storage_options"),
        ({"remote_protocol": "file"}, "backend_kwargs.remote_protocol"),
        (
            {"filter_by_keys": {"endpoint_url": "http://evil"}},
            "backend_kwargs.filter_by_keys.endpoint_url",
        ),
    ],
)
def test_backend_kwargs_may_not_choose_a_filesystem(files, tmp_path, backend_kwargs, problem):  # noqa: F811
    bad = _archive(url="{grib_url}", backend_kwargs=backend_kwargs)
    path = catalog(tmp_path / "c.yaml", bad=bad)
    with pytest.raises(CatalogError, match=f"entry 'bad': storage option {problem}="):
        open_catalog(path)
    if "filter_by_keys" in backend_kwargs:
        return
    # trusted, the format's own list of backend kwargs still refuses them
    with pytest.raises(StoreError, match=r"backend_kwargs of engine 'cfgrib': unknown key"):
        open_entry(path, "bad", trust=True, grib_url=files["grib"])


def test_an_unknown_engine_is_refused_when_read_naming_the_known_ones(files, tmp_path):  # noqa: F811
    path = catalog(tmp_path / "c.yaml", odd=_archive(url="{grib_url}", engine="pygrib"))
    with pytest.raises(StoreError, match=r"unknown engine 'pygrib'; the known engines are \["):
        open_entry(path, "odd", grib_url=files["grib"])


def test_train_a_few_steps_from_a_catalog_pair_of_grib_kerchunk_and_icechunk(files, tmp_path):  # noqa: F811
    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    path = catalog(tmp_path / "c.yaml")
    config = tiny_config(f"catalog:{path}/pair", tmp_path / "run", duration=4)
    config["data"].update(
        catalog_params=_params(files), valid_period=["2001-02-27T09", "2001-02-27T09"]
    )
    result = _quiet(train, from_dict(TrainRunConfig, config))
    assert result.completed and math.isfinite(result.loss)
