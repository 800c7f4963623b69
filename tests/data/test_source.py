"""open_source: every form of a source opens the same lazy pair; bad sources name the culprit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xarray as xr
import yaml

from corrdiff_xr.data import (
    DataError,
    DownscalingData,
    EmptySelectionError,
    SourceError,
    catalog_spec,
    open_dataset,
    open_source,
)
from corrdiff_xr.data.catalog import TRUST_ENV, catalog_dir
from corrdiff_xr.testing import raise_if_dask_computes

ENTRY = "catalog:demo/demo_tiny"


@pytest.fixture
def cached(tmp_path):
    """(cache dir, the demo_tiny store in it), built once outside any laziness check."""
    cache = tmp_path / "cache"
    open_source(ENTRY, params={"cache_dir": str(cache)})
    (store,) = cache.iterdir()
    return cache, store


def _catalog(path: Path, data: dict, entries: dict) -> Path:
    """A catalog YAML whose entries read intake datatypes (only a trusted catalog may)."""
    path.write_text(
        yaml.safe_dump(
            {
                "version": 2,
                "metadata": {},
                "user_parameters": {},
                "aliases": {},
                "data": data,
                "entries": {
                    name: {
                        "reader": reader,
                        "kwargs": {"args": [f"{{data({source})}}"]},
                        "user_parameters": {},
                        "metadata": {},
                        "output_instance": out,
                    }
                    for name, (reader, source, out) in entries.items()
                },
            }
        )
    )
    return path


def test_every_form_opens_the_same_pair_reading_no_array_data(cached):
    cache, store = cached
    params = {"cache_dir": str(cache)}
    with raise_if_dask_computes() as counter:
        reference = open_source(ENTRY, params=params)
        forms = {
            "bundled catalog": reference,
            "catalog YAML path": open_source(
                f"catalog:{catalog_dir() / 'demo.yaml'}/demo_tiny", params=params
            ),
            "Zarr path": open_source(str(store)),
            "path object": open_source(store),
            "fsspec URL": open_source(f"file://{store}", storage_options={"auto_mkdir": False}),
            "DownscalingData": open_source(reference),
            "Dataset": open_source(open_dataset(store)),
        }
        stored = {name: pair.stats for name, pair in forms.items() if name != "Dataset"}
    assert counter.total_computes == 0
    assert forms["DownscalingData"] is reference  # nothing to re-select: returned as it is
    for name, pair in forms.items():
        assert isinstance(pair, DownscalingData), name
        assert (pair.inputs, pair.targets, pair.static) == (
            reference.inputs,
            reference.targets,
            reference.static,
        ), name
        xr.testing.assert_identical(pair.dataset, reference.dataset)
        # the Dataset form has no stored statistics: computed, they match the stored ones
        stats = stored.get(name, pair.stats)
        xr.testing.assert_allclose(stats.compute(), reference.stats.compute(), rtol=1e-5)
    assert forms["Dataset"].stored_stats is None and forms["Zarr path"].stored_stats is not None


def test_names_reselect_a_catalog_entry_or_a_pair_keeping_its_stored_stats(cached):
    cache, _ = cached
    whole = open_source(ENTRY, params={"cache_dir": str(cache)})
    names = {"inputs": ["msl", "tcwv"], "targets": ["t2m"], "static": ["orography"]}
    with raise_if_dask_computes():
        picked = [
            open_source(ENTRY, params={"cache_dir": str(cache)}, **names),
            open_source(whole, **names),
        ]
    for pair in picked:
        assert (pair.inputs, pair.targets, pair.static) == (
            ("msl", "tcwv"),
            ("t2m",),
            ("orography",),
        )
        assert list(pair.dataset.data_vars) == ["msl", "tcwv", "t2m", "orography"]
        assert pair.stored_stats is not None
        xr.testing.assert_identical(pair.stats, whole.stats[list(pair.names)])


def test_inference_data_may_lack_targets_only_when_asked(tiny_synthetic):
    inputs_only = tiny_synthetic.drop_vars(["t2m", "tp", "u10", "v10"])
    pair = open_source(inputs_only, require_targets=False)
    assert pair.targets == () and pair.inputs
    with pytest.raises(EmptySelectionError, match=r"^--data: no target variables"):
        open_source(inputs_only, what="--data")
    with pytest.raises(EmptySelectionError, match=r"^source: no target variables"):
        open_source(pair)  # an open pair without targets is checked as well


def test_a_store_that_fails_the_layout_checks_is_named(tmp_path, tiny_synthetic):
    store = tmp_path / "no_units.zarr"
    ds = tiny_synthetic.copy()
    ds["t2m"].attrs.pop("units")
    ds.to_zarr(store, consolidated=False)
    with pytest.raises(DataError, match=rf"^data.source '{store}': .*'t2m'.*units") as info:
        open_source(str(store), what="data.source")
    assert type(info.value) is not DataError  # the specific layout error keeps its type


MALFORMED = ["catalog:demo", "catalog:demo/", "catalog:/demo_tiny", "catalog:"]


@pytest.mark.parametrize("source", MALFORMED)
def test_a_malformed_catalog_spec_names_the_source_and_the_form(source):
    with pytest.raises(SourceError, match="not of the form catalog:NAME/ENTRY") as info:
        open_source(source, what="--data")
    message = str(info.value)
    assert message.startswith(f"--data {source!r}") and "demo" in message  # bundled catalogs
    with pytest.raises(SourceError):
        catalog_spec(source)


def test_catalog_spec_splits_at_the_last_slash_and_ignores_other_sources():
    assert catalog_spec("catalog:/data/my catalogs/x.yaml/e1") == ("/data/my catalogs/x.yaml", "e1")
    assert catalog_spec("catalog:demo/demo_tiny") == ("demo", "demo_tiny")
    assert catalog_spec("s3://bucket/catalog:x/y.zarr") is None
    assert catalog_spec(Path("catalog:demo/demo_tiny")) is None  # a path, never a spec


def test_params_for_a_store_say_how_to_fix_it(cached):
    _, store = cached
    with pytest.raises(SourceError) as info:
        open_source(str(store), params={"seed": 1, "nt": 2}, what="--data", params_what="--param")
    message = str(info.value)
    assert f"--data '{store}'" in message and "['nt', 'seed']" in message
    assert "catalog:NAME/ENTRY" in message and "remove --param" in message
    with pytest.raises(SourceError, match=r"source is open data \(Dataset\); remove params"):
        open_source(open_dataset(store), params={"seed": 1})


def test_params_never_trust_a_catalog(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(SourceError, match=rf"^params.trust: source '{ENTRY}': .*\${TRUST_ENV}"):
        open_source(ENTRY, params={"cache_dir": str(cache), "trust": True})
    assert not cache.exists()  # refused before the entry was read


def test_storage_options_that_do_not_apply_are_refused(cached):
    cache, store = cached
    with pytest.raises(
        SourceError,
        match=r"storage options \['anon'\] do not apply to source "
        rf"'{ENTRY}'.*pass them in params",
    ):
        open_source(ENTRY, params={"cache_dir": str(cache)}, storage_options={"anon": True})
    with pytest.raises(SourceError, match=r"\['anon'\] only apply to a Zarr path or URL"):
        open_source(open_dataset(store), storage_options={"anon": True})


def test_a_source_of_another_kind_is_refused_naming_its_type():
    with pytest.raises(SourceError, match="data.source must be catalog:NAME/ENTRY.*got int"):
        open_source(42, what="data.source")


def test_credentials_in_a_source_url_never_reach_the_message():
    url = "s3://AKIAEXAMPLE:s3cr3t-value@minio.local/bucket/x.zarr?token=t0ken-value"
    with pytest.raises(SourceError) as info:
        open_source(url, params={"seed": 1})
    message = str(info.value)
    assert "s3cr3t-value" not in message and "t0ken-value" not in message
    assert "minio.local/bucket/x.zarr" in message and "***" in message


def test_what_a_trusted_entry_reads_goes_through_the_same_last_step(tmp_path, cached, monkeypatch):
    _, store = cached
    (tmp_path / "note.txt").write_text("not a dataset")
    path = _catalog(
        tmp_path / "trusted.yaml",
        data={
            "store": {
                "datatype": "intake.readers.datatypes:Zarr",
                "metadata": {},
                "kwargs": {"url": str(store)},
                "user_parameters": {},
            },
            "note": {
                "datatype": "intake.readers.datatypes:Text",
                "metadata": {},
                "kwargs": {"url": "{CATALOG_DIR}/note.txt"},
                "user_parameters": {},
            },
        },
        entries={
            "dataset": ("intake.readers.readers:XArrayDatasetReader", "store", "xarray:Dataset"),
            "bytes": ("intake.readers.readers:FileByteReader", "note", "builtins:bytes"),
        },
    )
    monkeypatch.setenv(TRUST_ENV, os.fspath(path))
    # an entry yielding a canonical Dataset is validated like one passed in
    pair = open_source(f"catalog:{path}/dataset", targets=["t2m"])
    assert isinstance(pair, DownscalingData) and pair.targets == ("t2m",)
    xr.testing.assert_equal(pair.fine, open_source(store).fine[["t2m"]])
    with pytest.raises(
        SourceError,
        match=rf"source 'catalog:{path}/bytes' gave a bytes, not a "
        "DownscalingData",
    ):
        open_source(f"catalog:{path}/bytes")
