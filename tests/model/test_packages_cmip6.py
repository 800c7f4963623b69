"""The CorrDiff CMIP6 -> ERA5 package layout: reading it, its quirks, and the user's road."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from package_fixtures_cmip6 import CMIP6_STATS, cmip6_archive, write_cmip6_package

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.data.package_windows import window_inputs
from corrdiff_xr.errors import TimeAxisError
from corrdiff_xr.features import cos_zenith
from corrdiff_xr.inference import downscale
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.model.packages import PackageError, open_package
from corrdiff_xr.model.packages.cmip6 import FEATURES, network_order, sai_cover
from corrdiff_xr.sampling import make_generators
from corrdiff_xr.testing import raise_if_dask_computes


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    return write_cmip6_package(tmp_path_factory.mktemp("cmip6"))


@pytest.fixture(scope="module")
def package(package_dir):
    return open_package(package_dir)


def test_a_cmip6_package_opens_with_windowed_inputs_and_the_coslat_quirk(package, package_dir):
    assert package.layout == "cmip6"
    codec = package.model.codec
    assert codec.inputs[:4] == ("t2m_m24h", "t2m_0h", "t2m_p24h", "u10m_m24h")
    assert len(codec.inputs) == 18 and codec.stats["msl_p24h"] == CMIP6_STATS["msl"]
    # coslat is not a static field: its channel holds the hour of day, with coslat's statistics
    assert codec.static == ("z", "lsm") and codec.features == FEATURES
    assert codec.stats["hour_of_day_in_coslat"] == CMIP6_STATS["coslat"]
    assert codec.stats["hour_of_day"] == CMIP6_STATS["hod"]
    assert codec.stats["cos_zenith"] == CMIP6_STATS["sza"]
    assert codec.bounds == {"t2m": (0.0, None), "d2m": (0.0, None)}  # tp, u10m may be < 0
    assert package.model.img_shape == (25, 48)
    sampler = package.sampler
    assert (sampler.sigma_min, sampler.sigma_max, sampler.num_steps) == (1.0, 400.0, 6)
    stored = xr.open_dataset(package_dir / "invariants.nc")["z"].values  # north first
    np.testing.assert_array_equal(package.invariants["z"].values, stored[::-1])
    assert package.output_grid["lat"].values[0, 0] == -90.0


def test_the_network_sees_inputs_sza_invariants_coslat_slot_then_hod():
    # codec: 6 inputs, 2 static, cos_zenith, hour_of_day_in_coslat, hour_of_day
    assert network_order(6, 3) == [0, 1, 2, 3, 4, 5, 8, 6, 7, 9, 10]


def _inputs(package, n: int = 1) -> torch.Tensor:
    shape = (n, len(package.model.codec.in_channels), 25, 48)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def test_the_framed_model_survives_a_checkpoint_round_trip(package, tmp_path):
    path = package.model.save(tmp_path / "cmip6.safetensors")
    loaded = CorrDiff.load(path).eval()  # as the inference cache loads it
    assert loaded.regression_config.arch == "framed" and loaded.sample_domain == "padded"
    assert loaded.config_dict()["format_version"] == 4
    x = _inputs(package)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.predict_mean(x), package.model.predict_mean(x), atol=0, rtol=0
        )
        members = [
            m.sample(x, generators=make_generators([7]), sampler=SamplerConfig(num_steps=2))
            for m in (loaded, package.model)
        ]
    torch.testing.assert_close(*members, atol=0, rtol=0)


def test_padded_members_depend_on_their_own_generator_only(package):
    """Noise keyed per member: a member is the same alone or batched with others, and
    sampling inside the frame differs from sampling on the grid (the option acts)."""
    model, x = package.model, _inputs(package)
    sampler = SamplerConfig(num_steps=3)
    with torch.no_grad():
        both = model.sample(
            x.repeat(2, 1, 1, 1), generators=make_generators([5, 6]), sampler=sampler
        )
        alone = [model.sample(x, generators=make_generators([s]), sampler=sampler) for s in (5, 6)]
        model.sample_domain = "grid"
        try:
            on_grid = model.sample(x, generators=make_generators([5]), sampler=sampler)
        finally:
            model.sample_domain = "padded"
    # same latents and churn noise: only float32 rounding of batched convolutions differs
    # (from sigma 400 down); another member's noise would differ by O(1)
    torch.testing.assert_close(both, torch.cat(alone), atol=2e-4, rtol=0)
    assert (both[0] - both[1]).abs().mean() > 0.05
    assert (on_grid - alone[0]).abs().mean() > 0.05


def test_a_member_group_runs_the_padded_regression_once_not_once_per_member(package):
    """The residual is conditioned on the uncropped mean: for a group of rows that repeat one
    input, the inner regression runs on one row; rows that differ each get their own."""
    model, x = package.model, _inputs(package, n=2)
    inner = model.regression.net.inner
    rows: list[int] = []
    hook = inner.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    sampler, mean = SamplerConfig(num_steps=1), torch.zeros(3, 4, 25, 48)
    try:
        with torch.no_grad():
            group = model.sample(
                x[:1].repeat(3, 1, 1, 1), generators=make_generators([1, 2, 3]),
                sampler=sampler, mean=mean,
            )  # fmt: skip
            assert rows == [1]
            model.sample(x, generators=make_generators([1, 2]), sampler=sampler, mean=mean[:2])
            assert rows == [1, 2]
            alone = model.sample(x[:1], generators=make_generators([2]), sampler=sampler,
                                 mean=mean[:1])  # fmt: skip
    finally:
        hook.remove()
    torch.testing.assert_close(group[1:2], alone, atol=2e-4, rtol=0)


def test_padded_sampling_needs_alike_framed_networks_and_refuses_patches(package):
    from corrdiff_xr.config import NetworkConfig

    model = package.model
    with pytest.raises(ValueError, match=r"both networks need arch='framed'"):
        CorrDiff(
            model.codec,
            img_shape=(25, 48),
            regression_network=NetworkConfig(),
            residual_network=model.residual_config,
            edm=model.edm_config,
            sample_domain="padded",
        )
    other = NetworkConfig(arch="framed", options={**model.residual_config.options, "flip_y": False})
    with pytest.raises(ValueError, match=r"framed alike"):
        CorrDiff(
            model.codec,
            img_shape=(25, 48),
            regression_network=model.regression_config,
            residual_network=other,
            edm=model.edm_config,
            sample_domain="padded",
        )
    with pytest.raises(ValueError, match=r"samples its whole grid, not patches"):
        model.sample(
            _inputs(package),
            generators=make_generators([1]),
            mean=torch.zeros(1, len(package.outputs), 25, 48),  # the patch's, say
            offsets=torch.tensor([[0, 8]]),
        )


def _sai_by_hand(siconc: np.ndarray, snc: np.ndarray) -> np.ndarray:
    cover = np.clip(np.nan_to_num(siconc) + np.nan_to_num(snc), 0, 100)
    h, w = cover.shape
    out = np.zeros_like(cover, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            rows = [min(max(r, 0), h - 1) for r in (i - 1, i, i + 1)]  # replicated
            cols = [(j + d) % w for d in (-1, 0, 1)]  # wrapped
            out[i, j] = np.mean([cover[r, c] for r in rows for c in cols])
    return out


def test_sea_ice_and_snow_cover_is_summed_clipped_and_smoothed_with_wrapped_longitudes():
    rng = np.random.default_rng(1)
    siconc = rng.uniform(-10, 90, (5, 7)).astype(np.float32)
    siconc[1:3, 2] = np.nan  # land
    snc = rng.uniform(0, 60, (5, 7)).astype(np.float32)
    dims = ("y_coarse", "x_coarse")
    got = sai_cover(xr.DataArray(siconc, dims=dims), xr.DataArray(snc, dims=dims))
    np.testing.assert_allclose(got.values, _sai_by_hand(siconc, snc), rtol=1e-6)
    assert got.dtype == np.float32


def test_the_pair_takes_inputs_at_minus_24_0_plus_24_hours_of_each_anchor(package):
    archive = cmip6_archive(4)
    with raise_if_dask_computes():
        pair = package.pair(archive, lead_times=[-12, 5])
    valid = ["2037-09-06T00", "2037-09-06T17", "2037-09-07T00", "2037-09-07T17"]
    np.testing.assert_array_equal(pair.dataset.time.values, np.array(valid, "datetime64[ns]"))
    ds = pair.dataset
    t2m = archive["t2m"].values  # the package's input grid is the archive's
    np.testing.assert_array_equal(ds["t2m_m24h"].values[1], t2m[0])
    np.testing.assert_array_equal(ds["t2m_0h"].values[2], t2m[2])
    np.testing.assert_array_equal(ds["t2m_p24h"].values[3], t2m[3])
    sai = _sai_by_hand(archive["siconc"].values[2], archive["snc"].values[2])
    np.testing.assert_allclose(ds["siconc_p24h"].values[0], sai, rtol=1e-6)
    # time features at the valid times, on the package's fine grid
    codec = package.model.codec
    x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]).compute())
    lat, lon = package.output_grid["lat"].values, package.output_grid["lon"].values
    mean, std = codec.stats["cos_zenith"]
    want = (cos_zenith(ds.time.values, lat, lon) - mean) / std
    np.testing.assert_allclose(x[:, -3], want, atol=1e-5)
    mean, std = CMIP6_STATS["coslat"]
    np.testing.assert_allclose(x[:, -2, 0, 0], (np.array([0, 17, 0, 17]) - mean) / std, rtol=1e-6)


def test_downscaling_a_cmip6_archive_is_lazy_and_gives_finite_clipped_outputs(package):
    with raise_if_dask_computes():
        out = downscale(package.pair(cmip6_archive(3)), package, members=2, steps=2)
    assert dict(out.sizes) == {"member": 2, "time": 1, "y": 25, "x": 48}
    out = out.compute(scheduler="sync")
    assert out.time.values[0] == np.datetime64("2037-09-06T00", "ns")
    assert all(np.isfinite(out[n].values).all() for n in package.outputs)
    assert (out["t2m"].values >= 0).all()


def test_bad_lead_times_windows_and_network_sizes_are_refused_in_one_line(package, tmp_path):
    with pytest.raises(PackageError, match=r"whole hours in \[-12, 11\], got \[12\]"):
        package.pair(cmip6_archive(3), lead_times=[12])
    with pytest.raises(TimeAxisError, match=r"steps at \[-24, 0, 24\] hours"):
        package.pair(cmip6_archive(2))
    daily = xr.Dataset({"a": ("time", np.arange(3.0))}, coords={"time": cmip6_archive(3).time})
    shifted = {"a_0h": ("a", np.timedelta64(0, "h"))}
    with pytest.raises(TimeAxisError, match="same valid time"):
        window_inputs(daily, shifted, [np.timedelta64(-12, "h"), np.timedelta64(12, "h")])
    path = write_cmip6_package(tmp_path / "small", padded=(64, 128))
    with pytest.raises(PackageError, match=r"run on 64 x 128 but the output grid 25 x 48 padded"):
        open_package(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pad": [1, 2, 3]}, r"options.pad must be \[top, bottom, left, right\]"),
        ({"order": [0, 0, 1]}, r"options.order must be a permutation"),
        ({"modes": ["reflect", "mirror"]}, r"options.modes must be two of"),
        ({"inner": {"arch": "framed"}}, r"options.inner must be a network config of another"),
    ],
)
def test_a_bad_frame_in_a_header_is_refused_naming_the_option(package, change, message):
    from corrdiff_xr.config import ConfigError, NetworkConfig
    from corrdiff_xr.nn.backbones import check_shape

    options = {**package.model.regression_config.options, **change}
    cfg = NetworkConfig(arch="framed", options=options)
    with pytest.raises(ConfigError, match=message) as err:
        check_shape(cfg, (25, 48), "grid", key="regression_network")
    assert "\n" not in str(err.value)


def test_truth_at_the_valid_times_becomes_the_pair_targets(package):
    lat, lon = package.output_grid["lat"].values[:, 0], package.output_grid["lon"].values[0]
    hours = np.datetime64("2037-09-05T18", "ns") + np.arange(30) * np.timedelta64(1, "h")
    rng = np.random.default_rng(3)
    truth = xr.Dataset(
        {
            n: (
                ("time", "lat", "lon"),
                rng.standard_normal((30, lat.size, lon.size)),
                package.model.codec.attrs[n],
            )
            for n in package.outputs
        },
        coords={"time": hours, "lat": lat, "lon": lon},
    )
    pair = package.pair(cmip6_archive(3), truth=truth, lead_times=[-12, 5])
    assert pair.targets == package.outputs
    valid = np.array(["2037-09-06T00", "2037-09-06T17"], "datetime64[ns]")
    np.testing.assert_array_equal(pair.dataset.time.values, valid)
    np.testing.assert_array_equal(pair.fine["tp"].values[1], truth["tp"].values[23])


def test_networks_that_do_not_take_the_listed_channels_are_refused_naming_the_recipe(tmp_path):
    import json

    path = write_cmip6_package(tmp_path / "cmip6")
    meta = json.loads((path / "metadata.json").read_text())
    meta["input_variables"] = meta["input_variables"][:-1]  # one variable (3 channels) short
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="3 channels per input variable") as err:
        open_package(path)
    assert "\n" not in str(err.value)


def test_regression_mode_runs_the_framed_mean_only_without_the_diffusion_file(package, tmp_path):
    path = write_cmip6_package(tmp_path / "reg", metadata={"inference_mode": "regression"})
    (path / "diffusion.mdlus").unlink()
    mean_only = open_package(path)
    assert mean_only.model.residual is None and mean_only.sampler is None
    x = _inputs(package)
    with torch.no_grad():  # the same regression.mdlus (fixture seed): the same framed mean
        torch.testing.assert_close(
            mean_only.model.predict_mean(x), package.model.predict_mean(x), atol=0, rtol=0
        )
    path = write_cmip6_package(tmp_path / "dif", metadata={"inference_mode": "diffusion"})
    with pytest.raises(PackageError, match=r"inference_mode 'diffusion': the CMIP6 model runs"):
        open_package(path)


def test_a_bad_sample_domain_in_a_header_is_refused_naming_the_key(package):
    from corrdiff_xr.model import CheckpointError

    header = {**package.model.config_dict(), "sample_domain": "sphere"}
    with pytest.raises(CheckpointError, match=r"x.st: sample_domain must be one of \['grid', "):
        CorrDiff.from_config_dict(header, source="x.st")
    rebuilt = CorrDiff.from_config_dict(package.model.config_dict())
    assert rebuilt.sample_domain == "padded"
