"""Opening published CorrDiff packages: one model wherever the package lies, clear refusals.

Fixture packages come from tests/package_fixtures.py (PhysicsNeMo networks with random
weights, saved by PhysicsNeMo, in the published layouts). Numbers against Earth2Studio are in
tests/parity/test_parity_earth2studio.py.
"""

from __future__ import annotations

import json
import shutil
import uuid
import zipfile

import fsspec
import numpy as np
import pytest
import torch
import xarray as xr
from package_fixtures import write_generic_package, write_taiwan_package, zip_package
from physicsnemo_ref import requires_physicsnemo

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.model.packages import LAYOUTS, PackageError, member_seeds, open_package
from corrdiff_xr.model.packages.taiwan import INPUTS, OUTPUTS

pytestmark = requires_physicsnemo


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    return write_generic_package(tmp_path_factory.mktemp("generic"), grid=(16, 16))


@pytest.fixture
def copy(generic, tmp_path):
    """A fresh copy of the generic package, to spoil."""
    return shutil.copytree(generic, tmp_path / "pkg")


def _same_model(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.model.codec == b.model.codec
    assert a.sampler == b.sampler
    xr.testing.assert_identical(a.output_grid, b.output_grid)
    xr.testing.assert_identical(a.input_grid, b.input_grid)
    xr.testing.assert_identical(a.invariants, b.invariants)
    assert (a.members, a.seed, a.inference_mode) == (b.members, b.seed, b.inference_mode)


def test_directory_zip_and_memory_urls_open_the_same_model_bit_for_bit(generic, tmp_path):
    from_dir = open_package(generic)
    zipped = zip_package(generic, tmp_path / "pkg.zip")
    fs, name = fsspec.filesystem("memory"), f"/pkg-{uuid.uuid4().hex}"
    fs.put(str(generic), name, recursive=True)
    fs.pipe(f"{name}.zip", zipped.read_bytes())
    try:
        for other in (zipped, f"memory://{name}", f"memory://{name}.zip", f"file://{generic}"):
            _same_model(from_dir, open_package(other))
    finally:
        fs.rm(name, recursive=True)
        fs.rm(f"{name}.zip")
    assert from_dir.layout == "generic"


def test_generic_package_fields_follow_its_files(generic):
    pkg = open_package(generic)
    meta = json.loads((generic / "metadata.json").read_text())
    stats = json.loads((generic / "stats.json").read_text())
    # inputs named like outputs take the canonical layout's _coarse suffix
    assert pkg.input_names["t2m_coarse"] == "t2m" and pkg.input_names["z500"] == "z500"
    assert list(pkg.input_names.values()) == meta["input_variables"]
    assert pkg.outputs == tuple(meta["output_variables"])
    assert pkg.model.codec.static == tuple(meta["invariant_variables"])
    assert pkg.model.codec.stats["t2m_coarse"] == (
        stats["input"]["t2m"]["mean"],
        stats["input"]["t2m"]["std"],
    )
    assert pkg.model.codec.attrs["t2m_coarse"]["units"] == "K"
    assert pkg.model.codec.stats["lsm"] == tuple(stats["invariants"]["lsm"].values())
    assert (pkg.members, pkg.seed) == (meta["number_of_samples"], meta["seed"])
    # stochastic_sampler is EDM Heun without churn, at its sigma defaults
    assert pkg.sampler == SamplerConfig(solver="heun", num_steps=6)
    assert pkg.model.sampler_config == pkg.sampler
    assert LAYOUTS["generic"].member_seeds(1234, 3) == [1234, 1235, 1236]
    assert member_seeds(pkg) == [1234, 1235] and member_seeds(pkg, 3, seed=7) == [7, 8, 9]
    grid = xr.open_dataset(generic / "output_latlon_grid.nc")
    np.testing.assert_array_equal(pkg.output_grid["y"], grid["lat"])
    np.testing.assert_array_equal(pkg.output_grid["lon"][0], grid["lon"])
    assert pkg.output_grid["y"].attrs["standard_name"] == "latitude"
    inv = xr.open_dataset(generic / "invariants.nc")
    np.testing.assert_array_equal(pkg.invariants["orography"], inv["orography"])


def test_deterministic_sampler_and_latlon_res_input_grid(tmp_path):
    path = write_generic_package(
        tmp_path,
        grid=(16, 16),
        model_channels=8,
        hr_mean_conditioning=False,
        input_grid_file=False,
        metadata={"sampler_type": "deterministic", "solver": "heun", "sigma_max": 100.0},
    )
    pkg = open_package(path)
    assert pkg.sampler == SamplerConfig(solver="heun", num_steps=6, sigma_max=100.0)
    assert not pkg.model.edm_config.hr_mean_conditioning
    # Earth2Studio's rule: whole multiples of latlon_res, one step past the output grid
    np.testing.assert_array_equal(pkg.input_grid["lat"], np.arange(43.0, 50.0))  # out 44..47.75
    np.testing.assert_array_equal(pkg.input_grid["lon"], np.arange(4.0, 11.0))  # out 5..8.75


def _spoil_json(path, name, change):
    data = json.loads((path / name).read_text())
    change(data)
    (path / name).write_text(json.dumps(data))


def _refusal(path, *words):
    with pytest.raises(PackageError) as info:
        open_package(path)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    "spoil,words",
    [
        (lambda p: (p / "stats.json").unlink(), ("stats.json", "has no")),
        (lambda p: (p / "diffusion.mdlus").unlink(), ("diffusion.mdlus",)),
        (
            lambda p: _spoil_json(p, "metadata.json", lambda m: m.pop("input_variables")),
            ("metadata.json", "input_variables"),
        ),
        (
            lambda p: _spoil_json(p, "metadata.json", lambda m: m.update(S_churn=1, patch=2)),
            ("metadata.json", "unknown key", "S_churn", "patch"),
        ),
        (
            lambda p: _spoil_json(p, "metadata.json", lambda m: m.update(number_of_steps=0)),
            ("metadata.json", "number_of_steps"),
        ),
        (
            lambda p: _spoil_json(p, "metadata.json", lambda m: m.update(solver="dpm")),
            ("metadata.json", "solver"),
        ),
        (
            lambda p: _spoil_json(p, "stats.json", lambda s: s["input"].pop("z500")),
            ("stats.json", "input.z500"),
        ),
        (
            lambda p: _spoil_json(p, "stats.json", lambda s: s["invariants"]["lsm"].pop("std")),
            ("stats.json", "invariants.lsm"),
        ),
        (
            lambda p: (p / "invariants.nc").unlink(),
            ("invariants.nc", "invariant_variables", "orography"),
        ),
        (
            lambda p: _spoil_json(
                p, "metadata.json", lambda m: m.update(invariant_variables=["orography", "soil"])
            ),
            ("invariants.nc", "soil"),
        ),
        (
            lambda p: _spoil_json(
                p, "metadata.json", lambda m: m.update(input_variables=["t2m", "u10m"])
            ),
            ("regression.mdlus takes 9 channels", "metadata.json gives 4", "input_variables"),
        ),
        (
            lambda p: (p / "input_latlon_grid.nc").unlink(),
            ("input_latlon_grid.nc", "latlon_res"),
        ),
        (
            lambda p: _spoil_json(
                p, "metadata.json", lambda m: m.update(hr_mean_conditioning=False)
            ),
            ("diffusion.mdlus is conditioned on 13", "gives 9", "hr_mean_conditioning=False"),
        ),
    ],
    ids=[
        "missing_stats",
        "missing_diffusion",
        "missing_key",
        "unknown_keys",
        "bad_steps",
        "bad_solver",
        "stats_lack_input",
        "stats_lack_std",
        "missing_invariants",
        "unknown_invariant",
        "inputs_do_not_fit",
        "no_input_grid",
        "no_mean_conditioning",
    ],
)
def test_broken_packages_are_refused_in_one_line_naming_file_and_key(copy, spoil, words):
    spoil(copy)
    _refusal(copy, *words)


def test_a_grid_that_does_not_match_the_networks_is_refused(copy):
    with xr.open_dataset(copy / "output_latlon_grid.nc") as ds:
        grid = ds.load()
    grid.isel(lat=slice(0, 12)).to_netcdf(copy / "output_latlon_grid.nc")
    _refusal(copy, "output_latlon_grid.nc", "12 x 16", "16 x 16", "img_resolution")


def test_a_decreasing_output_latitude_is_refused(copy):
    with xr.open_dataset(copy / "output_latlon_grid.nc") as ds:
        grid = ds.load()
    grid.isel(lat=slice(None, None, -1)).to_netcdf(copy / "output_latlon_grid.nc")
    _refusal(copy, "output_latlon_grid.nc", "lat", "increasing")


@pytest.mark.parametrize("bad", ["../escape.json", "/etc/passwd", "a/../../b"])
def test_hostile_zip_member_names_are_refused(generic, tmp_path, bad):
    path = zip_package(generic, tmp_path / "pkg.zip")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(bad, b"{}")
    _refusal(path, "pkg.zip", "refused")


def test_an_oversized_json_member_is_refused_before_it_is_read(copy, tmp_path):
    (copy / "metadata.json").write_text(" " * (2 << 20) + "{}")  # deflates to a few KB
    _refusal(zip_package(copy, tmp_path / "pkg.zip"), "metadata.json", "more than")


def test_a_directory_file_linking_outside_is_refused(copy, tmp_path):
    (tmp_path / "outside.json").write_text("{}")
    (copy / "extra.json").symlink_to(tmp_path / "outside.json")
    _refusal(copy, "extra.json", "outside")


def test_something_else_is_no_package(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _refusal(tmp_path, "known layout")
    _refusal(tmp_path / "nowhere", "does not exist")
    _refusal(tmp_path / "notes.txt", "zip")


@pytest.fixture(scope="module")
def taiwan(tmp_path_factory):
    return write_taiwan_package(tmp_path_factory.mktemp("taiwan"))


def _earth2studio_grid_channels(n: int) -> np.ndarray:
    # the published code's formula: sin/cos of linspace(0, 2 pi, n) on both axes, stacked
    # (sin along columns, sin along rows, cos along columns, cos along rows)
    s, c = np.sin(np.linspace(0, 2 * np.pi, n)), np.cos(np.linspace(0, 2 * np.pi, n))
    return np.stack([*np.meshgrid(s, s), *np.meshgrid(c, c)]).astype(np.float32)


def test_taiwan_opens_as_zip_folder_or_unpacked_with_its_fixed_settings(taiwan, tmp_path):
    pkg = open_package(taiwan)
    assert pkg.layout == "taiwan"
    _same_model(pkg, open_package(taiwan.parent))
    with zipfile.ZipFile(taiwan) as z:
        z.extractall(tmp_path)
    _same_model(pkg, open_package(tmp_path))
    _same_model(pkg, open_package(tmp_path / "corrdiff_inference_package"))
    assert tuple(pkg.input_names.values()) == INPUTS and pkg.outputs == OUTPUTS
    assert pkg.sampler == SamplerConfig(solver="euler", num_steps=8, sigma_max=80.0)
    assert pkg.model.edm_config.hr_mean_conditioning and pkg.model.edm_config.scale_condition
    assert pkg.output_grid.sizes == {"y": 448, "x": 448}
    assert pkg.input_grid.sizes == {"lat": 36, "lon": 40}
    np.testing.assert_allclose(pkg.input_grid["lon"][[0, -1]], [116.0, 125.75])
    assert len(set(LAYOUTS["taiwan"].member_seeds(7, 4))) == 4


def test_taiwan_regression_grid_channels_are_the_packages_sin_cos_channels(taiwan):
    pkg = open_package(taiwan)
    net = pkg.model.regression.net
    assert (net.grid.gridtype, net.grid.channels) == ("sinusoidal", 4)
    ours = net.grid(None, (448, 448), 1)[0].numpy()
    np.testing.assert_array_equal(ours, _earth2studio_grid_channels(448))


def test_taiwan_xlat_one_pixel_too_small_is_refused(taiwan, tmp_path):
    import zarr

    with zipfile.ZipFile(taiwan) as z:
        z.extractall(tmp_path)
    store = tmp_path / "corrdiff_inference_package/dataset/2023-01-24-cwb-4years_5times.zarr"
    group = zarr.open_group(str(store), mode="a")
    for name in ("XLAT", "XLONG"):
        data = group[name][...][:-1, :-1]
        del group[name]
        group.create_array(name, data=data)
    _refusal(tmp_path, "XLAT", "447 x 447", "448 x 448")
