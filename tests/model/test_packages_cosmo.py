"""CorrDiff COSMO-ERA5 packages: read as Earth2Studio 0.19 reads them, run with its numbers.

The fixture (tests/package_fixtures_cosmo.py) is in the published layout with PhysicsNeMo's own
DiT networks (random weights). Earth2Studio's ``CorrDiffCosmoEra5`` refuses to load without
NATTEN: its module imports ``natten`` first in the one ``try`` that also imports PhysicsNeMo's
``DiT``, ``EDMPreconditioner``, ``EDMNoiseScheduler``, ``sample`` and ``cos_zenith_angle``, so
on this machine those names stay unbound and ``load_model`` / the constructor raise
``OptionalDependencyError``. The reference here (:func:`earth2studio`) is its own code all the
same: ``load_model`` and the constructor undecorated (``__wrapped__``), those five names bound
to the very PhysicsNeMo objects it would have imported. It reads the fixture's files, builds
the conditioning (``preprocess_input``) and post-processes (``postprocess_output``) with its own
code. Its network calls are the one part that cannot run: they pass ``attn_kwargs={"latent_hw":
...}``, which only NATTEN attention takes (PhysicsNeMo's global ``timm`` attention refuses the
keyword), so the reference runs the same PhysicsNeMo calls without that keyword
(:func:`_reference_mean`, :func:`_reference_member`; the mean at ``t = 0``, members with
``EDMNoiseScheduler`` + ``sample`` in float64 from ``torch.randn`` of a generator seeded
``seed + i``).
"""

from __future__ import annotations

import datetime
import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from package_fixtures_cosmo import COSMO_OUTPUTS, metadata, write_cosmo_package
from physicsnemo_ref import physicsnemo, requires_physicsnemo

from corrdiff_xr.data.regrid import regrid
from corrdiff_xr.model.packages import (
    LAYOUTS,
    PackageError,
    PackageFiles,
    member_seeds,
    open_package,
)
from corrdiff_xr.model.packages.cosmo import network_order
from corrdiff_xr.model.packages.cosmo_meta import cosmo_settings, transform_of
from corrdiff_xr.sampling import make_generators

pytestmark = requires_physicsnemo

#: network outputs in units of each output's std (float32 networks on the same inputs)
ATOL = 1e-5
#: dawn over the fixture's domain: the solar gate is 0 in the west and ramps in the east
DAWN = datetime.datetime(2021, 7, 14, 3, 35)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_cosmo_package(tmp_path_factory.mktemp("cosmo"))


@pytest.fixture(scope="module")
def earth2studio(root, tmp_path_factory):
    """Earth2Studio's ``CorrDiffCosmoEra5.load_model`` for a mode (see the module docstring)."""
    assert physicsnemo() is not None
    import earth2studio.models.dx.corrdiff_cosmo_era5 as e2s
    from earth2studio.models.auto import Package
    from earth2studio.utils.imports import OptionalDependencyError
    from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler
    from physicsnemo.diffusion.preconditioners import EDMPreconditioner
    from physicsnemo.diffusion.samplers import sample
    from physicsnemo.models.dit import DiT
    from physicsnemo.utils.zenith_angle import cos_zenith_angle

    cls = e2s.CorrDiffCosmoEra5
    with pytest.raises(OptionalDependencyError):  # the refusal this harness steps around
        cls.load_model(Package(str(root)), mode="mean")
    bound = dict(
        DiT=DiT,
        EDMPreconditioner=EDMPreconditioner,
        EDMNoiseScheduler=EDMNoiseScheduler,
        sample=sample,
        cos_zenith_angle=cos_zenith_angle,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARTH2STUDIO_CACHE", str(tmp_path_factory.mktemp("e2s_cache")))
        for name, value in bound.items():
            mp.setattr(e2s, name, value, raising=False)
        mp.setattr(cls, "__init__", cls.__init__.__wrapped__)
        load = cls.load_model.__func__.__wrapped__
        yield lambda mode, path=root: load(cls, Package(str(path)), mode=mode, resolution="rea6")


def _era5(package, rng) -> np.ndarray:
    """Physical ERA5 fields (C, lat, lon) on the package's input grid."""
    codec, grid = package.model.codec, package.input_grid
    shape = (grid.sizes["lat"], grid.sizes["lon"])
    rows = [
        codec.stats[n][0] + codec.stats[n][1] * rng.standard_normal(shape) for n in codec.inputs
    ]
    return np.stack(rows).astype(np.float32)


def _encoded(package, era5: np.ndarray, when: datetime.datetime) -> torch.Tensor:
    """Our encoding: regrid (float64), invariants, the time feature from ``when``."""
    grid, fine = package.input_grid, package.output_grid
    ds = xr.Dataset(
        {
            n: (("time", "y_coarse", "x_coarse"), era5[None, i].astype(np.float64))
            for i, n in enumerate(package.inputs)
        },
        coords={
            "time": np.array([np.datetime64(when, "ns")]),
            "y_coarse": ("y_coarse", grid["lat"].values, {"standard_name": "latitude"}),
            "x_coarse": ("x_coarse", grid["lon"].values, {"standard_name": "longitude"}),
            **fine.coords,
        },
    )
    on_fine = regrid(ds).compute()
    for n in package.inputs:
        on_fine[n].attrs["units"] = package.model.codec.attrs[n]["units"]
    return torch.from_numpy(
        package.model.codec.encode_inputs(xr.merge([on_fine, package.invariants]))
    )


def _decoded(package, out: torch.Tensor, when, ref=None) -> np.ndarray:
    """Our decoding to physical (member, C, y, x); with ``ref``, in Earth2Studio's units
    (its ``CosmoLexicon`` rescales some outputs: CLCT % -> tcc fraction ...)."""
    template = package.output_grid.assign_coords(time=[np.datetime64(when, "ns")])
    ds = package.model.codec.decode_targets(out[:, None], template)
    values = np.stack([ds[n].values[:, 0] for n in package.outputs], axis=1)
    for c, scale in ref._output_unit_scale if ref is not None else ():
        values[:, c] *= np.float32(scale)
    return values


def _network_order(package) -> list[int]:
    """Each of our input channels' place in the network's conditioning."""
    settings = cosmo_settings(metadata("rea6"), "rea6", "mean", "metadata.json")
    static = {n: n.removesuffix("_norm") for n in settings.pre + settings.post}
    return network_order(settings, static, package.model.codec)


def _background(ref, era5: np.ndarray, when) -> torch.Tensor:
    return ref.preprocess_input(
        torch.from_numpy(era5), when, ref.lat_output_grid, ref.lon_output_grid
    )


def _reference_mean(ref, bg: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # _regression_forward's call, without NATTEN's latent_hw
        return ref.regression_model(bg, bg.new_zeros(bg.shape[0]), condition=None).float()


def _reference_member(ref, bg: torch.Tensor, seed: int) -> torch.Tensor:
    from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler
    from physicsnemo.diffusion.samplers import sample

    net, (h, w) = ref.diffusion_model, bg.shape[-2:]
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, len(ref.output_variables), h, w), generator=gen)
    scheduler = EDMNoiseScheduler(sigma_min=ref.sigma_min, sigma_max=ref.sigma_max, rho=ref.rho)

    def x0(x, t):  # _denoise's predictor, without NATTEN's latent_hw
        return net(x.float(), t.float().reshape(-1), condition=bg).double()

    with torch.no_grad():
        denoiser = scheduler.get_denoiser(x0_predictor=x0)
        out = sample(
            denoiser, latents.double() * ref.sigma_max, scheduler,
            num_steps=ref.number_of_steps, solver=ref.solver,
        )  # fmt: skip
    return out.float()


def _post(ref, out: torch.Tensor, when) -> np.ndarray:
    return ref.postprocess_output(
        out.clone(), when, ref.lat_output_numpy, ref.lon_output_numpy
    ).numpy()


def test_each_variant_reads_the_files_as_earth2studio_does(root, earth2studio):
    for mode in ("mean", "diffusion"):
        ref, ours = earth2studio(mode), open_package(root, variant=f"rea6/{mode}")
        codec = ours.model.codec
        assert ours.layout == "cosmo" and ours.members == ref.number_of_samples == 2
        np.testing.assert_array_equal(ours.output_grid["lat"], ref.lat_output_numpy)
        np.testing.assert_array_equal(ours.input_grid["lon"], ref.lon_input_numpy)
        # stored invariants: physical here, normalised by the codec = Earth2Studio's buffers
        for i, name in enumerate(ref._static_names):
            ours_name = name.removesuffix("_norm")
            mean, std = codec.stats[ours_name]
            got = (ours.invariants[ours_name].values - np.float32(mean)) * np.float32(1 / std)
            np.testing.assert_allclose(got, ref.static_invariants[i].numpy(), rtol=0, atol=2e-6)
        scale = torch.tensor([codec.stats[n][1] for n in ours.outputs])
        torch.testing.assert_close(scale.float(), ref.out_scale.flatten())
        sampler = ours.model.sampler_config
        assert (sampler.solver, sampler.num_steps, sampler.sigma_max, sampler.rho) == (
            ref.solver, ref.number_of_steps, ref.sigma_max, ref.rho,
        )  # fmt: skip
        assert ours.inference_mode == {"mean": "regression", "diffusion": "diffusion"}[mode]
        assert (ours.model.residual is None) == (mode == "mean")
        assert ours.model.edm_config.objective == ("residual" if mode == "mean" else "direct")
        assert bool(codec.transforms) == (mode == "diffusion")
        assert codec.in_channels[-1] == "cos_zenith_max_1h"  # after z0_lu: permuted network
        assert ours.metadata["min_domain_cells"] == 6


def test_the_conditioning_equals_earth2studios_background_channel_for_channel(root, earth2studio):
    ref, ours = earth2studio("mean"), open_package(root)
    era5 = _era5(ours, np.random.default_rng(0))
    bg = _background(ref, era5, DAWN)[0]
    encoded = _encoded(ours, era5, DAWN)[0]
    to_ref = dict(zip(ours.model.codec.in_channels, _network_order(ours), strict=True))
    assert ref.background_variables[to_ref["cos_zenith_max_1h"]] == "cos_zenith"
    for k, name in enumerate(ours.model.codec.in_channels):
        torch.testing.assert_close(encoded[k], bg[to_ref[name]], atol=2e-5, rtol=0, msg=name)
    zenith = encoded[-1]
    assert zenith.min() < -0.03 < 0 < zenith.max()  # dawn: both gates are partly open


def test_mean_equals_earth2studio_before_and_after_postprocessing(root, earth2studio):
    ref, ours = earth2studio("mean"), open_package(root, variant="rea6/mean")
    era5 = _era5(ours, np.random.default_rng(1))
    ref_out = _reference_mean(ref, _background(ref, era5, DAWN))
    with torch.no_grad():
        mean = ours.model.predict_mean(_encoded(ours, era5, DAWN))
    assert mean.abs().mean() > 0.1  # random weights: not trivially zero
    torch.testing.assert_close(mean, ref_out, atol=ATOL, rtol=0)
    got, want = _decoded(ours, mean, DAWN, ref), _post(ref, ref_out, DAWN)
    scale = np.array([ours.model.codec.stats[n][1] for n in ours.outputs]).reshape(1, -1, 1, 1)
    for c, factor in ref._output_unit_scale:
        scale[:, c] *= factor
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=ATOL)
    sw = got[:, ours.outputs.index("ASWDIR_S")]
    assert (sw == 0).any() and (sw > 0).any()  # the solar gate cut the west, not the east


def test_a_mean_with_the_conv_head_detokenizer_equals_earth2studio(earth2studio, tmp_path):
    """The published mean network's ``proj_reshape_2d_conv`` detokenizer (random conv head);
    the reference gets the background in channels-last memory, as Earth2Studio's mean path
    hands it over."""
    pkg = write_cosmo_package(tmp_path / "conv", conv_head=True)
    ref, ours = earth2studio("mean", pkg), open_package(pkg, variant="rea6/mean")
    assert type(ref.regression_model.detokenizer).__name__ == "ConvDetokenizer"
    assert ours.model.regression_config.options["conv_head_layers"] == 2
    era5 = _era5(ours, np.random.default_rng(8))
    background = _background(ref, era5, DAWN).to(memory_format=torch.channels_last)
    ref_out = _reference_mean(ref, background)
    with torch.no_grad():
        mean = ours.model.predict_mean(_encoded(ours, era5, DAWN))
        ref.regression_model.detokenizer.conv_head[-1].weight.zero_()
        plain = _reference_mean(ref, background)
    assert (ref_out - plain).abs().mean() > 1e-3  # the head's share is in the comparison
    torch.testing.assert_close(mean, ref_out, atol=ATOL, rtol=0)


def test_mean_through_pair_and_downscale_equals_earth2studio(root, earth2studio):
    """The user's road: an ERA5 archive as published (latitude descending, longitude
    0..360) paired by :meth:`Package.pair` and downscaled lazily; the time feature and the
    solar gate follow from each block's own times."""
    from corrdiff_xr.data.names import units_of
    from corrdiff_xr.inference.downscaling import downscale

    ref, ours = earth2studio("mean"), open_package(root)
    rng = np.random.default_rng(4)
    times = [DAWN, datetime.datetime(2021, 7, 14, 12)]
    era5 = [_era5(ours, rng) for _ in times]
    grid = ours.input_grid
    archive = xr.Dataset(
        {
            n: (
                ("time", "lat", "lon"),
                np.stack([e[i, ::-1] for e in era5]),
                {"units": units_of(n)},
            )
            for i, n in enumerate(ours.input_names.values())
        },
        coords={
            "time": np.array([np.datetime64(t, "ns") for t in times]),
            "lat": grid["lat"].values[::-1],
            "lon": grid["lon"].values % 360.0,
        },
    )
    out = downscale(ours.pair(archive), ours, output="mean").compute()
    scale = np.array([ours.model.codec.stats[n][1] for n in ours.outputs])
    for c, factor in ref._output_unit_scale:
        scale[c] *= factor
    for k, when in enumerate(times):
        want = _post(ref, _reference_mean(ref, _background(ref, era5[k], when)), when)[0]
        got = np.stack([out[n].values[k] for n in ours.outputs])
        for c, factor in ref._output_unit_scale:
            got[c] *= np.float32(factor)
        np.testing.assert_allclose(
            got / scale[:, None, None], want / scale[:, None, None], atol=ATOL
        )


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_diffusion_members_equal_earth2studio_seeded_the_same_way(
    root, earth2studio, tmp_path, solver
):
    if solver != "heun":
        root = _spoil(root, tmp_path, lambda m: m["sampler"].update(solver=solver))
    ref, ours = earth2studio("diffusion", root), open_package(root, variant="rea6/diffusion")
    assert ref.solver == ours.sampler.solver == solver
    era5 = _era5(ours, np.random.default_rng(2))
    bg = _background(ref, era5, DAWN)
    seeds = member_seeds(ours, seed=2024)
    assert seeds == [2024, 2025]
    ref_members = torch.cat([_reference_member(ref, bg, s) for s in seeds])
    encoded = _encoded(ours, era5, DAWN).expand(len(seeds), -1, -1, -1)
    with torch.no_grad():
        members = ours.model.sample(encoded, generators=make_generators(seeds))
    assert (members[0] - members[1]).abs().mean() > 0.1
    # float32 sampling here, float64 bookkeeping there: a few rounding steps of 800 sigma
    torch.testing.assert_close(members, ref_members, atol=ATOL, rtol=0)
    got, want = _decoded(ours, members, DAWN, ref), _post(ref, ref_members, DAWN)
    for c, name in enumerate(ours.outputs):
        np.testing.assert_allclose(got[:, c], want[:, c], rtol=1e-3, atol=1e-3, err_msg=name)
    assert (got[:, ours.outputs.index("TOT_PRECIP")] >= 0).all()
    assert (got[:, ours.outputs.index("ASWDIFD_S")] == 0).any()


@pytest.mark.parametrize(
    ("spec", "forward"),
    [
        ({"transform": "log_eps", "eps": 1e-5}, lambda x: np.log1p(x / 1e-5)),
        ({"transform": "asinh", "eps": 10.0}, lambda x: np.arcsinh(x / 10.0)),
        ({"transform": "logit_eps", "eps": 0.01, "scale": 2.0},
         lambda x: _logit(0.01 + 0.98 * x / 2.0)),
        ({"transform": "logit_eps_percent", "eps": 0.02},
         lambda x: _logit(0.02 + 0.96 * x / 100.0)),
    ],
)  # fmt: skip
def test_each_channel_transform_is_earth2studios_formula(spec, forward):
    transform, clamp = transform_of(spec, "channel_transforms.X", "metadata.json")
    hi = {"log_eps": 1e-3, "asinh": 500.0}.get(spec["transform"], 2.0)
    hi = 100.0 if spec["transform"].endswith("percent") else hi
    x = np.linspace(0.0 if "log" in spec["transform"] else -hi, hi, 101)
    np.testing.assert_allclose(transform(x, name="X"), forward(x), rtol=1e-9, atol=1e-9)
    back = transform.inverse(transform(x, name="X"))
    np.testing.assert_allclose(back, x, rtol=1e-9, atol=1e-9 * hi)
    assert clamp == {"asinh": None, "log_eps": (0.0, None)}.get(spec["transform"], (0.0, x[-1]))


def _logit(p):
    return np.log(p / (1 - p))


def test_the_solar_gate_zeroes_shortwave_at_night_and_passes_it_at_noon(root):
    ours = open_package(root, variant="rea6/mean")
    out = torch.full((1, len(COSMO_OUTPUTS), 16, 16), 1.0)
    noon = _decoded(ours, out, datetime.datetime(2021, 7, 14, 11))
    night = _decoded(ours, out, datetime.datetime(2021, 1, 1, 0))
    for name in ("ASWDIR_S", "ASWDIFD_S"):
        c = ours.outputs.index(name)
        assert (noon[:, c] > 0).all() and (night[:, c] == 0).all()
    c = ours.outputs.index("T_2M")
    np.testing.assert_array_equal(noon[:, c], night[:, c])


def _spoil(root, tmp_path, change) -> str:
    pkg = shutil.copytree(root, tmp_path / "pkg")
    path = pkg / "rea6" / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    return pkg


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.pop("era5_variables"), "lacks the key 'era5_variables'"),
        (lambda m: m["channel_transforms"].update(CLCT="logit_eps"), "bare string (diffusion)"),
        (lambda m: m["channel_transforms"]["CLCT"].update(transform="sqrt"), "'sqrt' (diffusion)"),
        (lambda m: m["constraints"]["bounds"]["CLCT"].update(mode="sigmoid"), "sigmoid"),
        (lambda m: m["constraints"]["sza_gate"].update(half_width=0.0), "half_width must be > 0"),
        (lambda m: m["constraints"]["sza_gate"]["channels"].pop("ASWDIFD_S"), "['ASWDIFD_S']"),
        (lambda m: m["modes"].pop("mean"), "'modes' block without 'mean'"),
        (lambda m: m["checkpoints"].pop("rea6_mean"), "no file for 'rea6_mean'"),
        (lambda m: m["sampler"].update(num_steps=1), "sampler.num_steps"),
        (lambda m: m["sampler"].update(S_churn=1), "unknown key(s) ['S_churn']"),
        (lambda m: m["invariants"].update(native_shape=[16, 15]), "native_shape [16, 15]"),
        (lambda m: m["invariants"].update(native_offset=[2, 2]), "is not grids.nc's lat_output"),
        (lambda m: m["regression"].update(patch_size=4), "patch_size 2 but metadata.json says 4"),
        (lambda m: m["pre_invariant_variables"].append("orography_norm"), "'orography'"),
        (lambda m: m["era5_variables"].append("z500"), "era5.z500"),
    ],
)
def test_broken_metadata_is_refused_in_one_line_naming_the_key(root, tmp_path, change, words):
    # the mean's outputs are not transformed: only the diffusion reads channel_transforms
    words, diffusion = words.removesuffix(" (diffusion)"), words.endswith(" (diffusion)")
    variant = "rea6/diffusion" if diffusion else None
    with pytest.raises(PackageError) as err:
        open_package(_spoil(root, tmp_path, change), variant=variant)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_variants_and_detection(root):
    assert LAYOUTS["cosmo"].detect(PackageFiles("p", {"rea2/metadata.json": 1}, opener=open))
    assert not LAYOUTS["cosmo"].detect(PackageFiles("p", {"metadata.json": 1}, opener=open))
    with pytest.raises(PackageError, match=r"variant 'rea6/both' is not one of the cosmo"):
        open_package(root, variant="rea6/both")
    with pytest.raises(PackageError, match="has no rea2/metadata.json"):
        open_package(root, variant="rea2/mean")
    assert open_package(root, layout="cosmo").metadata["variant"] == "rea6/mean"


def test_a_zipped_package_opens_to_the_same_model(root, tmp_path):
    from package_fixtures import zip_package

    a = open_package(root, variant="rea6/diffusion")
    b = open_package(zip_package(root, tmp_path / "cosmo.zip"), variant="rea6/diffusion")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.model.codec == b.model.codec
    xr.testing.assert_identical(a.invariants, b.invariants)


def test_the_older_prenormalised_invariants_file_gives_the_same_inputs(root, tmp_path):
    """Without an ``invariants`` entry, ``invariants.nc`` holds the normalised channels
    under the metadata's names, as Earth2Studio's fallback reads them."""
    new = open_package(root)
    codec = new.model.codec
    pkg = _spoil(root, tmp_path, lambda m: m.pop("invariants"))
    fields = {}
    for name in ("elevation_norm", "land_fraction", "z0_lu_norm"):
        phys = name.removesuffix("_norm")
        mean, std = codec.stats[phys]
        values = (new.invariants[phys].values - np.float32(mean)) * np.float32(1 / std)
        fields[name] = (("y", "x"), values)
    xr.Dataset(fields).to_netcdf(pkg / "rea6" / "invariants.nc")
    old = open_package(pkg)
    assert old.model.codec.static[-3:] == ("elevation_norm", "land_fraction", "z0_lu_norm")
    era5 = _era5(new, np.random.default_rng(6))
    torch.testing.assert_close(_encoded(old, era5, DAWN), _encoded(new, era5, DAWN))


def test_a_dit_without_learned_positions_runs_on_the_whole_native_grid(root, tmp_path):
    """The published DiTs carry no learned positions and were built for a training crop:
    Earth2Studio runs them on the native grid by rebinding their latent grid; here they are
    built for it. Same numbers as PhysicsNeMo's DiT rebound to the grid."""
    from package_fixtures_cosmo import COSMO_ERA5, COSMO_POST, COSMO_PRE
    from package_fixtures_dit import small_dit_kwargs, write_dit_mdlus

    pkg = shutil.copytree(root, tmp_path / "pkg")
    n_bg = len(COSMO_ERA5) + len(COSMO_PRE) + 1 + len(COSMO_POST)
    kwargs = small_dit_kwargs(n_bg, len(COSMO_OUTPUTS), (8, 8), patch_size=2, hidden_size=16)
    kwargs["tokenizer_kwargs"] = {"pos_embed": "none"}
    net = write_dit_mdlus(pkg / "rea6" / "rea6_mean.mdlus", kwargs, seed=9)
    ours = open_package(pkg)
    assert ours.model.img_shape == (16, 16)
    net.detokenizer.h_patches, net.detokenizer.w_patches = 8, 8  # Earth2Studio's rebind
    encoded = _encoded(ours, _era5(ours, np.random.default_rng(7)), DAWN)
    background = torch.empty_like(encoded)
    background[:, _network_order(ours)] = encoded  # the network's channel order
    with torch.no_grad():
        want = net(background, torch.zeros(1), condition=None)
        got = ours.model.predict_mean(encoded)
    assert got.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_a_saved_package_model_keeps_its_transforms_bounds_gates_and_feature(root, tmp_path):
    from corrdiff_xr.model import CorrDiff

    ours = open_package(root, variant="rea6/diffusion")
    path = ours.model.save(tmp_path / "cosmo.safetensors")
    loaded = CorrDiff.load(path)
    assert loaded.codec == ours.model.codec and loaded.codec.gates == ours.model.codec.gates
    assert loaded.codec.features == ("cos_zenith_max_1h",)
    assert loaded.edm_config.objective == "direct" and loaded.sampler_config == ours.sampler
    x = torch.randn(
        1, len(loaded.codec.in_channels), 16, 16, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a = ours.model.sample(x, generators=make_generators([5]))
        b = loaded.sample(x, generators=make_generators([5]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_gate_ramps_from_zero_to_one_across_its_half_width():
    from corrdiff_xr.transforms import Gate

    gate = Gate("cos_zenith_max_1h", threshold=0.03, half_width=0.05)
    field = np.array([-0.5, -0.02, 0.005, 0.03, 0.055, 0.08, 0.9], np.float32)
    got = gate.apply(np.full(7, 10.0, np.float32), field)
    np.testing.assert_allclose(got, [0, 0, 2.5, 5, 7.5, 10, 10], rtol=1e-5, atol=1e-5)
    assert gate.apply(np.array([-3.0], np.float32), np.array([1.0], np.float32))[0] == 0


def test_each_resolution_folder_is_its_own_model(tmp_path):
    both = write_cosmo_package(tmp_path / "both", resolutions=("rea6", "rea2"))
    rea6, rea2 = (open_package(both, variant=f"{r}/mean") for r in ("rea6", "rea2"))
    assert (rea6.metadata["variant"], rea2.metadata["variant"]) == ("rea6/mean", "rea2/mean")
    w6, w2 = (p.model.state_dict()["regression.net.patch_embed.weight"] for p in (rea6, rea2))
    assert not torch.equal(w6, w2)  # rea2/ holds its own network, not rea6/'s
    assert not np.array_equal(rea6.invariants["elevation"], rea2.invariants["elevation"])


@pytest.mark.parametrize(
    ("gate", "words"),
    [
        ({"a": {"feature": "cos_zenith", "threshold": 0.0, "half_width": 0.1}}, "not targets"),
        ({"SW": {"feature": "cos_zen", "threshold": 0.0, "half_width": 0.1}}, "'cos_zen'"),
        ({"SW": {"feature": "cos_zenith", "threshold": 0.0, "half_width": 0}}, "half_width"),
        ({"SW": {"feature": "cos_zenith", "threshold": 0.0}}, "{feature, threshold, half_width}"),
    ],
)
def test_codec_gates_are_checked_and_travel_with_the_codec(gate, words):
    from corrdiff_xr.codec import Codec

    stats = {"a": (0.0, 1.0), "SW": (100.0, 50.0)}
    with pytest.raises(ValueError) as err:
        Codec(("a",), ("SW",), stats=stats, gates=gate)
    assert words in str(err.value) and "\n" not in str(err.value)
    good = {"SW": {"feature": "cos_zenith", "threshold": 0.0, "half_width": 0.1}}
    codec = Codec(("a",), ("SW",), stats=stats, gates=good)
    assert Codec.from_dict(codec.to_dict()) == codec and codec.to_dict()["gates"] == good
    assert "gates" not in Codec(("a",), ("SW",), stats=stats).to_dict()
