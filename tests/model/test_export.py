"""Exported generic CorrDiff packages: Earth2Studio 0.19 loads and runs them like our model.

The data mimic real archives: ERA5 variable names, a 0.25 degree coarse grid with descending
latitudes and 0..360 longitudes, a fine grid at -180..180 longitudes (rectilinear, or
curvilinear like a Lambert grid). The networks get random O(1) weights so any mismatch shows.
Outputs are compared in normalised units (divided by each target's std): in kelvin, float32
itself rounds 280 K to 3e-5.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from physicsnemo_ref import physicsnemo, randomize_

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import EDMConfig, SamplerConfig
from corrdiff_xr.data import open_source
from corrdiff_xr.inference.downscaling import downscale
from corrdiff_xr.model import CorrDiff, import_mdlus
from corrdiff_xr.model.mdlus_write import write_regression, write_residual
from corrdiff_xr.model.packages.export import ExportError, export_package
from corrdiff_xr.sampling import make_generators
from corrdiff_xr.testing import TINY_NETWORK

N = 16
FILES = {
    "regression.mdlus", "diffusion.mdlus", "metadata.json", "stats.json",
    "output_latlon_grid.nc", "input_latlon_grid.nc", "invariants.nc",
}  # fmt: skip


def era5_like(*, curvilinear: bool = False, lat_step: float = 0.1) -> xr.Dataset:
    """Canonical data: coarse ERA5-like inputs around a 16 x 16 fine grid inside them."""
    rng = np.random.default_rng(0)
    if curvilinear:  # a rotated 5 km grid: lat/lon vary along both axes
        axis = np.arange(N) * 5000.0
        yy, xx = np.meshgrid(axis, axis, indexing="ij")
        lat, lon = 50.1 + yy / 111e3 + 0.02 * xx / 5e3, -3.4 + xx / 70e3 - 0.03 * yy / 5e3
        y = ("y", axis, {"standard_name": "projection_y_coordinate", "units": "m"})
        x = ("x", axis, {"standard_name": "projection_x_coordinate", "units": "m"})
    else:
        y1 = 50.05 + lat_step * np.arange(N) if lat_step > 0 else 51.55 + lat_step * np.arange(N)
        x1 = -3.45 + 0.1 * np.arange(N)
        lat, lon = np.meshgrid(y1, x1, indexing="ij")
        y = ("y", y1, {"standard_name": "latitude", "units": "degrees_north"})
        x = ("x", x1, {"standard_name": "longitude", "units": "degrees_east"})
    latc, lonc = np.arange(52.0, 49.49, -0.25), np.arange(356.0, 359.01, 0.25)

    def field(dims, scale, offset=0.0):
        shape = [{"time": 2, "y": N, "x": N, "y_coarse": latc.size, "x_coarse": lonc.size}[d]
                 for d in dims]  # fmt: skip
        return (offset + scale * rng.standard_normal(shape)).astype("float32")

    coarse, fine = ("time", "y_coarse", "x_coarse"), ("time", "y", "x")
    variables = {
        "2m_temperature": (coarse, field(coarse, 5, 280), {"units": "K"}),
        "10m_u_component_of_wind": (coarse, field(coarse, 3), {"units": "m s-1"}),
        "t2m": (fine, field(fine, 5, 280), {"units": "K"}),
        "u10": (fine, field(fine, 3), {"units": "m s-1"}),
        "orography": (("y", "x"), np.abs(field(("y", "x"), 300)), {"units": "m"}),
        "lsm": (("y", "x"), (field(("y", "x"), 1) > 0).astype("float32"), {"units": "1"}),
    }
    for name, (_, _, attrs) in variables.items():
        attrs["long_name"] = name.replace("_", " ")
    latc2, lonc2 = np.meshgrid(latc, lonc, indexing="ij")
    coords = {
        "time": pd.date_range("2021-01-01", periods=2, freq="6h").values,
        "y": y, "x": x, "lat": (("y", "x"), lat), "lon": (("y", "x"), lon),
        "y_coarse": ("y_coarse", latc, {"standard_name": "latitude", "units": "degrees_north"}),
        "x_coarse": ("x_coarse", lonc, {"standard_name": "longitude", "units": "degrees_east"}),
        "lat_coarse": (("y_coarse", "x_coarse"), latc2),
        "lon_coarse": (("y_coarse", "x_coarse"), lonc2),
    }  # fmt: skip
    return xr.Dataset(variables, coords=coords)


def tiny_model(data: xr.Dataset, *, residual: bool = True, hr_mean: bool = True, **sampler):
    """A tiny model with random O(1) weights, the data's codec and the given sampler defaults."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CorrDiff(
            Codec.from_pair(open_source(data)),
            img_shape=(N, N),
            regression_network=dataclasses.replace(TINY_NETWORK, embedding_type="zero"),
            residual_network=TINY_NETWORK if residual else None,
            edm=EDMConfig(hr_mean_conditioning=hr_mean),
            sampler=SamplerConfig(**sampler) if sampler else None,
        )
    return randomize_(model).eval()


def earth2studio():
    """Earth2Studio's generic CorrDiff and Package (PhysicsNeMo made importable first)."""
    assert physicsnemo() is not None, "physicsnemo cannot be imported: the parity cannot run"
    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiff

    return CorrDiff, Package


def e2s_load(directory):
    corrdiff, package = earth2studio()
    return corrdiff.load_model(package(str(directory)), device="cpu")


def e2s_run(e2s, data: xr.Dataset):
    """Earth2Studio's output (sample, variable, H, W) on the first time's coarse inputs."""
    coarse = data[list(e2s.input_variables)].isel(time=0).to_array().values
    coarse = coarse[:, ::-1, :].copy()  # the package's input grid runs south to north
    coords = OrderedDict(
        batch=np.array([0]),
        variable=np.array(e2s.input_variables),
        lat=e2s.lat_input_numpy,
        lon=e2s.lon_input_numpy,
    )
    out, _ = e2s(torch.as_tensor(coarse)[None], coords)
    return out[0].numpy()


def normalised_gap(e2s_out: np.ndarray, ours: np.ndarray, codec: Codec) -> float:
    std = np.array([codec.stats[v][1] for v in codec.targets])[:, None, None]
    return float(np.abs((e2s_out - ours) / std).max())


def our_mean(model, data: xr.Dataset) -> np.ndarray:
    mean = downscale(data.isel(time=[0]), model, output="mean").compute()
    return np.stack([mean[v].isel(time=0).values for v in model.codec.targets])


# -- Earth2Studio parity ------------------------------------------------------------------
def test_earth2studio_regression_equals_our_mean_on_a_curvilinear_grid(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    out = export_package(model, data, tmp_path / "pkg")
    assert {p.name for p in out.iterdir()} == FILES
    e2s = e2s_load(out)
    e2s.inference_mode = "regression"
    ours = our_mean(model, data)
    assert np.abs(ours).max() > 1.0  # not a trivially small output
    assert normalised_gap(e2s_run(e2s, data)[0], ours, model.codec) <= 1e-5


@pytest.mark.parametrize(
    ("sampler", "hr_mean", "kind"),
    [
        ({}, True, "stochastic"),  # the reference's 18 Heun steps: few large ones amplify ulps
        ({"solver": "euler", "num_steps": 18}, False, "deterministic"),
    ],
)
def test_earth2studio_members_equal_our_samples_from_seed_plus_member(
    tmp_path, sampler, hr_mean, kind
):
    data = era5_like(curvilinear=True)
    model = tiny_model(data, hr_mean=hr_mean, **sampler)
    e2s = e2s_load(export_package(model, data, tmp_path / "pkg"))
    assert (e2s.number_of_steps, e2s.sampler_type) == (18, kind)
    e2s.seed, e2s.number_of_samples = 11, 2
    theirs = e2s_run(e2s, data)
    coarse = data[list(model.codec.inputs)].isel(time=0).to_array().values[:, ::-1, :].copy()
    x = e2s.preprocess_input(torch.as_tensor(coarse)).float()
    with torch.no_grad():  # member i of Earth2Studio draws from seed + i
        members = [model.sample(x, generators=make_generators([11 + i])) for i in range(2)]
    ours = e2s.postprocess_output(torch.cat(members)).numpy()
    gap = max(normalised_gap(theirs[i], ours[i], model.codec) for i in range(2))
    assert gap <= 1e-5
    assert normalised_gap(theirs[0], theirs[1], model.codec) > 0.1  # members differ


def test_rectilinear_grid_is_written_1d_increasing_and_runs_on_its_meshgrid(tmp_path):
    data = era5_like()
    model = tiny_model(data)
    out = export_package(model, data, tmp_path / "pkg")
    with xr.open_dataset(out / "output_latlon_grid.nc") as grid:
        assert grid["lat"].dims == ("lat",) and np.all(np.diff(grid["lat"].values) > 0)
        lon = grid["lon"].values
    np.testing.assert_allclose(lon, 356.55 + 0.1 * np.arange(N))  # in the coarse convention
    with xr.open_dataset(out / "input_latlon_grid.nc") as grid:
        np.testing.assert_allclose(grid["lat"].values, np.arange(49.5, 52.01, 0.25))
    e2s = e2s_load(out)
    # Earth2Studio 0.19 loads a 1-D output grid but interpolates only onto 2-D coordinates
    lat2, lon2 = torch.meshgrid(e2s.lat_output_grid, e2s.lon_output_grid, indexing="ij")
    e2s.lat_output_grid, e2s.lon_output_grid = lat2, lon2
    e2s.inference_mode = "regression"
    assert normalised_gap(e2s_run(e2s, data)[0], our_mean(model, data), model.codec) <= 1e-5


def test_regression_only_model_runs_in_regression_mode(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data, residual=False)
    out = export_package(model, data, tmp_path / "pkg")
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["inference_mode"], meta["hr_mean_conditioning"]) == ("regression", False)
    e2s = e2s_load(out)
    assert normalised_gap(e2s_run(e2s, data)[0], our_mean(model, data), model.codec) <= 1e-5


# -- files --------------------------------------------------------------------------------
def test_mdlus_files_reimport_to_the_same_weights_bit_for_bit(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    out = export_package(model, data, tmp_path / "pkg")
    back = import_mdlus(out / "regression.mdlus", out / "diffusion.mdlus", codec=model.codec)
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with zipfile.ZipFile(out / "diffusion.mdlus") as archive:  # PhysicsNeMo's own layout
        assert archive.namelist() == ["model.pt", "args.json", "metadata.json"]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        assert json.loads(archive.read("args.json"))["__name__"] == "EDMPrecondSuperResolution"
    physicsnemo()
    from physicsnemo import Module

    for name in ("regression.mdlus", "diffusion.mdlus"):  # strict: every reference key is there
        Module.from_checkpoint(str(out / name), strict=True)


@pytest.mark.parametrize(
    "network",
    [
        {"gridtype": "none", "N_grid_channels": 0},  # written as model_type SongUNet
        {"gridtype": "learnable", "N_grid_channels": 6},
        {"gridtype": "sinusoidal_octave"},
        {"channel_mult_noise": 2, "resample_filter": (1, 3, 3, 1)},
    ],
)
@pytest.mark.parametrize("scale_condition", [False, True])  # EDMPrecondSR when scaled
def test_mdlus_files_load_strictly_in_physicsnemo_and_compute_the_same(
    tmp_path, network, scale_condition
):
    physicsnemo()
    from physicsnemo import Module

    net = dataclasses.replace(TINY_NETWORK, **network)
    codec = Codec(("a", "b"), ("t", "u"), ("s",), stats=dict.fromkeys("abtus", (0.0, 1.0)))
    model = CorrDiff(
        codec, img_shape=(N, N), residual_network=net,
        regression_network=dataclasses.replace(net, embedding_type="zero"),
        edm=EDMConfig(scale_condition=scale_condition),
    )  # fmt: skip
    model = randomize_(model).eval()
    reg = Module.from_checkpoint(str(write_regression(model, tmp_path / "r.mdlus")), strict=True)
    res = Module.from_checkpoint(str(write_residual(model, tmp_path / "d.mdlus")), strict=True)
    x, xt, sigma = torch.randn(1, 3, N, N), torch.randn(1, 2, N, N), torch.tensor([1.3])
    with torch.no_grad():
        mean = model.predict_mean(x)
        cond = torch.cat([x, mean], 1)
        torch.testing.assert_close(
            reg.eval()(x=torch.zeros(1, 2, N, N), img_lr=x), mean, atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            res.eval()(xt, cond, sigma),
            model.residual(xt, sigma, condition=cond),
            atol=1e-6,
            rtol=0,
        )
    back = import_mdlus(tmp_path / "r.mdlus", tmp_path / "d.mdlus", codec=codec).state_dict()
    assert all(torch.equal(v, back[k]) for k, v in model.state_dict().items())


def test_metadata_and_stats_describe_the_codec(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    out = export_package(model, data, tmp_path / "pkg")
    meta = json.loads((out / "metadata.json").read_text())
    codec = model.codec
    assert meta["input_variables"] == list(codec.inputs)
    assert meta["output_variables"] == list(codec.targets)
    assert meta["invariant_variables"] == list(codec.static) == ["lsm", "orography"]
    assert (meta["number_of_steps"], meta["sigma_min"], meta["sigma_max"]) == (18, 0.002, 800.0)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["invariants"]["orography"] == dict(zip(("mean", "std"), codec.stats["orography"]))
    with xr.open_dataset(out / "invariants.nc") as inv:
        np.testing.assert_array_equal(inv["lsm"].values, data["lsm"].values)


@pytest.mark.parametrize(
    ("sampler", "hr_mean", "kind", "warns"),
    [
        ({"solver": "euler", "num_steps": 8}, False, ("deterministic", "euler"), False),
        ({"solver": "euler", "num_steps": 8}, True, ("stochastic", "heun"), True),
        ({"solver": "dpmpp_2m", "num_steps": 8}, True, ("stochastic", "heun"), True),
        ({"solver": "heun", "S_churn": 0.5}, True, ("stochastic", "heun"), True),
    ],
)
def test_samplers_map_to_the_nearest_earth2studio_one(tmp_path, sampler, hr_mean, kind, warns):
    data = era5_like(curvilinear=True)
    model = tiny_model(data, hr_mean=hr_mean, **sampler)
    if warns:
        with pytest.warns(UserWarning, match="Earth2Studio"):
            out = export_package(model, data, tmp_path / "pkg")
    else:
        out = export_package(model, data, tmp_path / "pkg")
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["sampler_type"], meta["solver"]) == kind
    assert meta["hr_mean_conditioning"] is hr_mean


# -- refusals -----------------------------------------------------------------------------
def test_existing_directory_is_refused_unless_overwrite(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="overwrite"):
        export_package(model, data, target)
    with pytest.raises(ExportError, match="not a CorrDiff package"):  # never wipe a user's tree
        export_package(model, data, target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()
    export_package(model, data, target)  # an empty directory is fine
    export_package(model, data, target, overwrite=True)  # so is replacing a package
    assert {p.name for p in target.iterdir()} == FILES
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ExportError, match="not a directory"):
        export_package(model, data, link, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "pkg"]  # no leftovers


def test_a_model_with_transformed_targets_is_refused(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    codec = model.codec.to_dict()
    target = codec["targets"][0]
    model.codec = Codec.from_dict({**codec, "bounds": {target: [0.0, None]}})
    with pytest.raises(ExportError, match=rf"transforms or bounds \['{target}'\]"):
        export_package(model, data, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_a_student_t_model_is_refused(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    model.edm_config = dataclasses.replace(model.edm_config, nu=5.0)
    with pytest.raises(ExportError, match=r"edm.nu=5.0, edm.flow=None; a generic package holds"):
        export_package(model, data, tmp_path / "pkg")
    model.edm_config = dataclasses.replace(model.edm_config, nu=None, flow="v")
    with pytest.raises(ExportError, match=r"edm.flow='v'; a generic package holds"):
        export_package(model, data, tmp_path / "pkg")


def test_grids_the_package_cannot_represent_are_refused(tmp_path):
    model = tiny_model(era5_like(curvilinear=True))
    with pytest.raises(ExportError, match="latitude decreases along y"):
        export_package(model, era5_like(lat_step=-0.1), tmp_path / "a")
    outside = era5_like(curvilinear=True).assign_coords(
        lon=lambda d: d["lon"] + 1.4
    )  # within half a cell
    with pytest.raises(ExportError, match="reach beyond the coarse grid"):
        export_package(model, outside, tmp_path / "b")
    uneven = era5_like(curvilinear=True)
    lat_c = uneven["lat_coarse"].values.copy()
    lat_c[0] += 0.1
    with pytest.raises(ExportError, match="not evenly spaced"):
        export_package(model, uneven.assign_coords(lat_coarse=(uneven["lat_coarse"].dims, lat_c)),
                       tmp_path / "c")  # fmt: skip
    small = era5_like(curvilinear=True).isel(y=slice(0, 8))
    with pytest.raises(ExportError, match="8 x 16, the model's 16 x 16"):
        export_package(model, small, tmp_path / "d")
    assert not list(tmp_path.iterdir())


def test_models_the_reference_computes_differently_are_refused(tmp_path):
    data = era5_like(curvilinear=True)
    model = tiny_model(data)
    model.residual_config = dataclasses.replace(
        model.residual_config, eval_groupnorm_unbiased=False
    )
    with pytest.raises(ExportError, match="eval_groupnorm_unbiased"):
        export_package(model, data, tmp_path / "pkg")
    assert not list(tmp_path.iterdir())
    codec = Codec(("a",), ("t",), stats=dict.fromkeys("at", (0.0, 1.0)))
    odd = CorrDiff(codec, img_shape=(15, N), regression_network=TINY_NETWORK)
    with pytest.raises(ExportError, match="multiples of 2"):
        write_regression(odd, tmp_path / "r.mdlus")
    lead = dataclasses.replace(TINY_NETWORK, lead_time_channels=4)
    with pytest.raises(ExportError, match="lead-time"):
        write_regression(CorrDiff(codec, img_shape=(N, N), regression_network=lead), tmp_path / "r")


# -- round trip ---------------------------------------------------------------------------
def test_open_package_of_an_export_downscales_bit_for_bit_like_the_checkpoint(tmp_path):
    from corrdiff_xr.model.packages import open_package

    data = era5_like(curvilinear=True)
    model = tiny_model(data, num_steps=4)
    package = open_package(export_package(model, data, tmp_path / "pkg"))
    assert (package.layout, package.inference_mode) == ("generic", "both")
    assert package.model.codec.stats == model.codec.stats
    assert package.sampler == model.sampler_config
    ours, theirs = model.state_dict(), package.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    runs = [downscale(data, m, members=2, seed=5).compute() for m in (model, package.model)]
    for name in model.codec.targets:
        np.testing.assert_array_equal(runs[0][name].values, runs[1][name].values)
