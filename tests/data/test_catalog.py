"""Intake 2 catalogs: bundled entries, the Zarr cache, parameters and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.data.catalog import (
    CatalogError,
    catalog_dir,
    list_catalogs,
    open_catalog,
    open_entry,
)
from corrdiff_xr.data.write import write_dataset
from corrdiff_xr.testing import raise_if_dask_computes


def test_bundled_catalogs_are_found_next_to_the_package():
    assert {"demo", "samples", "cloud"} <= set(list_catalogs())
    cat = open_catalog("demo")
    assert {"demo", "demo_tiny"} <= set(cat.entries)
    assert {"cache_dir", "seed", "nt"} <= set(cat.user_parameters)


def test_demo_entry_is_built_once_into_the_cache_then_opened_lazily(tmp_path):
    first = open_entry("demo", "demo_tiny", cache_dir=str(tmp_path), seed=5)
    (store,) = os.listdir(tmp_path)
    assert store.startswith("demo_tiny-") and store.endswith(".zarr")
    mtime = os.stat(tmp_path / store).st_mtime_ns
    with raise_if_dask_computes():  # stats are stored, coords loaded: no array is read
        again = open_entry("demo", "demo_tiny", cache_dir=str(tmp_path), seed=5)
        stats = again.stats
    assert os.stat(tmp_path / store).st_mtime_ns == mtime  # not rebuilt
    # the cache holds exactly what the builder makes (a round trip through Zarr)
    expected = synthetic_dataset(ny=16, nx=16, nt=4, factor=4, seed=5)
    xr.testing.assert_allclose(again.dataset["t2m"].compute(), expected["t2m"].compute())
    assert set(first.targets) == {"t2m", "u10", "v10", "tp"}
    assert float(stats["t2m"].sel(stat="mean")) == pytest.approx(
        float(expected["t2m"].mean()), rel=1e-5
    )


def test_parameters_reach_the_builder_and_key_the_cache(tmp_path):
    a = open_entry("demo", "demo_tiny", cache_dir=str(tmp_path), seed=1)
    b = open_entry("demo", "demo_tiny", cache_dir=str(tmp_path), seed=2)
    assert len(os.listdir(tmp_path)) == 2
    assert not np.array_equal(a.fine["t2m"].values, b.fine["t2m"].values)


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRDIFF_XR_CACHE", str(tmp_path / "envcache"))
    open_entry("demo", "demo_tiny")
    assert len(os.listdir(tmp_path / "envcache")) == 1


def test_samples_entry_builds_the_uk_sample(tmp_path):
    pytest.importorskip("iris_sample_data")
    pair = open_entry("samples", "uk_hires", cache_dir=str(tmp_path))
    assert pair.targets == ("theta_l1",)
    assert set(pair.inputs) == {"theta_l1_coarse", "theta_l4_coarse", "theta_l7_coarse"}
    assert pair.dataset.sizes["y_coarse"] * 4 == pair.dataset.sizes["y"]


def test_cloud_zarr_entry_opens_a_local_store_by_file_url(tmp_path):
    ds = synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=0)
    path = write_dataset(ds, tmp_path / "local.zarr", kind="convert")
    with raise_if_dask_computes():
        pair = open_entry("cloud", "zarr", zarr_url=f"file://{path}")
    assert pair.fine["u10"].shape == (2, 16, 16)
    assert open_pair(path).targets == pair.targets


def test_unknown_entry_lists_the_entries():
    with pytest.raises(CatalogError, match=r"no entry 'nope'.*\['demo', 'demo_tiny'\]"):
        open_entry("demo", "nope")


def test_unknown_parameter_lists_the_declared_ones():
    with pytest.raises(CatalogError, match=r"unknown parameter\(s\) \['sede'\].*'seed'"):
        open_entry("demo", "demo_tiny", sede=1)


def test_unknown_bundled_catalog_lists_the_available_ones():
    with pytest.raises(CatalogError, match=r"no bundled catalog 'dmeo'.*'demo'"):
        open_catalog("dmeo")


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 2\nmetadata: {}\nentries:\n  a: [1, 2\n  b: 3\n")
    with pytest.raises(CatalogError, match=r"bad.yaml, line 5"):
        open_catalog(path)


def test_missing_section_is_named(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("version: 2\nmetadata: {}\nuser_parameters: {}\nentries: {}\n")
    with pytest.raises(
        CatalogError, match=r"partial.yaml: missing section\(s\) \['data', 'aliases'\]"
    ):
        open_catalog(path)


def test_incomplete_entry_is_named_with_its_line(tmp_path):
    path = tmp_path / "entry.yaml"
    path.write_text(
        "version: 2\nmetadata: {}\nuser_parameters: {}\ndata: {}\naliases: {}\nentries:\n"
        "  ok_one:\n    reader: x\n    kwargs: {}\n    user_parameters: {}\n    metadata: {}\n"
        "    output_instance: y\n  broken:\n    reader: x\n"
    )
    with pytest.raises(CatalogError, match=r"line 13: entry 'broken' lacks \['kwargs'"):
        open_catalog(path)


def test_missing_catalogs_directory_is_explained(tmp_path, monkeypatch):
    import importlib.metadata

    from corrdiff_xr.data import catalog

    # the package sits where no catalogs/ directory is, and the install lists no
    # share/corrdiff_xr/catalogs data files (a wheel does: tests/test_packaging.py)
    monkeypatch.setattr(catalog, "_SOURCE_ROOT", tmp_path / "site")
    monkeypatch.setattr(importlib.metadata, "files", lambda name: [])
    with pytest.raises(
        CatalogError, match=r"no bundled catalogs: neither .*site.*catalogs nor installed"
    ):
        catalog_dir()
    # a catalog given by path still opens
    repo_catalogs = Path(__file__).resolve().parents[2] / "catalogs"
    assert "demo" in open_catalog(repo_catalogs / "demo.yaml").entries


def test_uk_sample_from_the_catalog_encodes_to_unit_scale_tensors(tmp_path):
    pytest.importorskip("iris_sample_data")
    from corrdiff_xr.codec import Codec

    pair = open_entry("samples", "uk_hires", cache_dir=str(tmp_path))
    codec = Codec.from_pair(pair)
    assert codec.in_channels == (*pair.inputs, *pair.static)
    x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]))
    y = codec.encode_targets(pair.fine)
    assert x.shape == (3, len(codec.in_channels), 204, 184) and y.shape == (3, 1, 204, 184)
    # normalised with the stored statistics: the targets have mean 0 and std 1 exactly
    assert abs(float(y.mean())) < 1e-4 and float(y.std()) == pytest.approx(1.0, abs=1e-4)
    back = codec.decode_targets(y, pair.fine)
    np.testing.assert_allclose(back["theta_l1"].values, pair.fine["theta_l1"].values, atol=1e-3)
