"""Lazy downscaling: laziness, labels, exact determinism across chunkings, known answers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from patch_reference import map_patches

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import ConfigError, PatchConfig, SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.block import BlockTask, plan_blocks, touching_patches
from corrdiff_xr.noise import patch_generator, patch_seed
from corrdiff_xr.patching import PatchGrid
from corrdiff_xr.testing import raise_if_dask_computes, tiny_corrdiff

FAST = {"steps": 2, "patch": 8, "overlap": 2}


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(ny=16, nx=16, nt=3, factor=4, seed=1, chunks={"time": 1})
    pair = open_pair(ds)
    codec = Codec.from_pair(pair)
    model = tiny_corrdiff(codec, (16, 16))
    return ds, pair, codec, model


@pytest.fixture(scope="module")
def reference(setup):
    _, pair, _, model = setup
    return downscale(pair, model, members=2, seed=5, **FAST).compute(scheduler="sync")


def _equal(a: xr.Dataset, b: xr.Dataset) -> None:
    # same variables; their order is not kept by a Zarr round trip (zarr 3 lists arrays in
    # store order)
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_downscale_returns_a_lazy_labelled_dataset_without_computing(setup):
    ds, _pair, codec, model = setup
    with raise_if_dask_computes():
        out = downscale(ds, model, members=3, seed=1, **FAST)
    assert list(out.data_vars) == list(codec.targets)
    for name in codec.targets:
        var = out[name]
        assert var.dims == ("member", "time", "y", "x")
        assert var.chunks is not None
        assert var.attrs["units"] == ds[name].attrs["units"]
        assert var.attrs["long_name"] == ds[name].attrs["long_name"]
    np.testing.assert_array_equal(out.time.values, ds.time.values)
    for coord in ("y", "x", "lat", "lon"):
        np.testing.assert_array_equal(out[coord].values, ds[coord].values)
    assert out.sizes["member"] == 3
    assert out.attrs["corrdiff_seed"] == 1 and out.attrs["corrdiff_output"] == "ensemble"
    assert '"num_steps": 2' in out.attrs["corrdiff_sampler"]


def test_downscale_result_does_not_depend_on_chunking_or_scheduler(setup, reference):
    # (batch_size sets the member groups, so it may change members by rounding:
    # tests/inference/test_member_batches.py)
    _, pair, _, model = setup
    layouts = [
        ({"chunks": {"time": 3, "y": 16, "x": 16, "member": 2}}, "sync"),
        ({"chunks": {"time": 2, "y": 9, "x": 11}, "threads": 1}, "threads"),
        ({"chunks": {"time": 1, "y": 16, "x": 3, "member": 1}, "batch_size": 2}, "sync"),
    ]
    for kwargs, scheduler in layouts:
        out = downscale(pair, model, members=2, seed=5, **FAST, **kwargs)
        _equal(out.compute(scheduler=scheduler, num_workers=2), reference)


def test_downscale_result_does_not_depend_on_torch_threads(setup):
    _, pair, _, model = setup
    one = pair.isel(time=[0])
    runs = [downscale(one, model, steps=1, threads=n).compute(scheduler="sync") for n in (1, 2)]
    _equal(*runs)  # (conftest puts torch back on one thread afterwards)


def test_members_do_not_depend_on_ensemble_size_or_time_selection(setup, reference):
    _, pair, _, model = setup
    # batch_size=2: members 0 and 1 share a call of two rows, as in the reference
    more = downscale(
        pair.isel(time=[1, 2]), model, members=3, seed=5, batch_size=2, **FAST
    ).compute(scheduler="sync")
    _equal(more.isel(member=[0, 1]), reference.isel(time=[1, 2]))
    assert not np.array_equal(more.t2m[2].values, more.t2m[1].values)


def test_different_seeds_give_different_members(setup, reference):
    _, pair, _, model = setup
    other = downscale(pair.isel(time=[0]), model, members=1, seed=6, **FAST).compute(
        scheduler="sync"
    )
    assert not np.allclose(other.t2m[0].values, reference.t2m[0, :1].values)


def test_whole_domain_sampling_equals_a_direct_model_call(setup):
    _, pair, codec, model = setup
    out = downscale(  # batch_size=1: one trajectory per call, like the direct calls
        pair.isel(time=[1]), model, members=2, seed=3, steps=2, batch_size=1
    ).compute(scheduler="sync")
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).isel(time=[1])
    x = torch.from_numpy(codec.encode_inputs(sources.compute()))
    t = sources.time.values[0]
    for m in range(2):
        gen = patch_generator(3, t, m, (0, 0))
        direct = model.sample(
            x,
            generators=[gen],
            sampler=SamplerConfig(num_steps=2),
            offsets=torch.zeros(1, 2, dtype=torch.long),
        )
        decoded = codec.decode_targets(direct, sources)
        for name in codec.targets:
            np.testing.assert_array_equal(out[name].values[m], decoded[name].values)


def test_patched_downscaling_takes_the_whole_domain_mean_by_default(setup):
    # the regression is trained on the whole domain: patches of it would lack context
    _, pair, _, model = setup
    whole = downscale(pair, model, output="mean").compute(scheduler="sync")
    out = downscale(pair, model, output="mean", patch=8, overlap=2, chunks={"y": 6, "x": 5})
    assert json.loads(out.attrs["corrdiff_patching"])["mean"] == "whole"
    xr.testing.assert_identical(out.compute(scheduler="sync").t2m, whole.t2m)
    per_patch = downscale(
        pair, model, output="mean", patch=PatchConfig(shape=(8, 8), mean="patches")
    )
    assert not np.array_equal(per_patch.t2m.values, whole.t2m.values)  # patches differ


def test_patched_mean_of_patches_equals_the_reference_fusion_of_the_whole_domain(setup):
    _, pair, codec, model = setup
    patch = PatchConfig(shape=(8, 8), overlap=2, mean="patches")
    out = downscale(pair, model, output="mean", patch=patch, chunks={"y": 6, "x": 16})
    assert out.t2m.dims == ("time", "y", "x")
    out = out.compute(scheduler="sync")
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).compute()
    x = torch.from_numpy(codec.encode_inputs(sources))
    grid = PatchGrid.build((16, 16), (8, 8), overlap=2, weights="ramp")
    with torch.no_grad():
        fused = torch.cat(
            [
                map_patches(
                    lambda p, offsets: model.predict_mean(p, offsets=offsets),
                    x[t : t + 1],
                    grid=grid,
                    batch_size=1,
                )
                for t in range(x.shape[0])
            ]
        )
    expected = codec.decode_targets(fused, sources)
    for name in codec.targets:
        np.testing.assert_array_equal(out[name].values, expected[name].values)


def test_residual_is_member_minus_regression_mean(setup, reference):
    _, pair, _, model = setup
    res = downscale(pair, model, members=2, seed=5, output="residual", **FAST).compute(
        scheduler="sync"
    )
    mean = downscale(pair, model, output="mean", **FAST).compute(scheduler="sync")
    for name in res.data_vars:
        np.testing.assert_array_equal(res[name].values, reference[name].values - mean[name].values)
        assert "residual" in res[name].attrs["long_name"]


def test_checkpoint_path_and_accessor_give_the_same_ensemble(setup, reference, tmp_path):
    ds, _pair, _, model = setup
    path = model.save(tmp_path / "model.safetensors")
    out = ds.corrdiff.downscale(str(path), members=2, seed=5, **FAST).compute(scheduler="sync")
    _equal(out, reference)
    assert out.attrs["corrdiff_model"] == "model.safetensors"


def test_downscale_names_what_is_wrong_with_bad_input(setup):
    ds, pair, _codec, model = setup
    with pytest.raises(KeyError, match="orography"):
        downscale(ds.drop_vars("orography"), model)
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        downscale(synthetic_dataset(ny=24, nx=24, nt=1, factor=4), model)
    with pytest.raises(ValueError, match="output must be"):
        downscale(pair, model, output="median")
    with pytest.raises(ValueError, match="unknown dims"):
        downscale(pair, model, chunks={"lat": 3})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        downscale(pair, "/nonexistent/model.safetensors")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"members": 0}, "members: 0 is not an integer in [1, 100000]"),
        ({"members": 10**7}, "members: 10000000 is not an integer in [1, 100000]"),
        ({"members": 1.5}, "members: expected an integer, got 1.5"),
        ({"seed": -1}, "seed: -1 is not an integer >= 0"),
        ({"steps": 0}, "steps: 0 is not an integer in [1, 1000]"),
        ({"batch_size": 0}, "batch_size: 0 is not an integer in [1, 100000]"),
        ({"patch": 10**9}, "patch: (1000000000, 1000000000) is larger than the fine grid (16, 16)"),
        ({"patch": (8, 17)}, "patch: (8, 17) is larger than the fine grid (16, 16)"),
        (
            {"members": 10**5, "batch_size": 1},
            "members=100000, chunks['member']=1, chunks['time']=1: make 300000 block tasks "
            "(100000 member chunks x 3 time chunks x 1 spatial blocks), more than the 250000",
        ),
        ({"threads": 0}, "threads: 0 is not an integer >= 1"),
        ({"patch": (8, 0)}, "patch[1]: 0 is not an integer >= 1"),
        ({"patch": 8, "overlap": -1}, "overlap: -1 is not an integer >= 0"),
        ({"patch": 8, "boundary": -1}, "boundary: -1 is not an integer >= 0"),
        (
            {"patch": 8, "overlap": 6, "boundary": 1},
            "patch=(8, 8), overlap=6, boundary=1: the patch leaves no room",
        ),
        ({"chunks": {"time": 0}}, "chunks['time']: 0 is not an integer >= 1"),
        ({"sampler": {"rho": float("nan")}}, "sampler.rho: nan is not a finite number > 0"),
        (
            {"sampler": "rk4"},
            "sampler: 'rk4' is not one of ['heun', 'euler', 'dpmpp_2m', 'dpmpp_2m_sde', "
            "'distilled']",
        ),
    ],
)
def test_downscale_refuses_bad_arguments_naming_them_with_value_and_range(setup, kwargs, message):
    _ds, pair, _codec, model = setup
    with pytest.raises(ConfigError) as info:
        downscale(pair, model, **kwargs)
    assert str(info.value).startswith(message)


def _tasks(out: xr.Dataset) -> list[BlockTask]:
    """The block tasks in the graph of a downscaling (before anything is computed)."""
    layers = next(iter(out.data_vars.values())).data.dask.layers
    return [
        fn.keywords["task"]
        for name, layer in layers.items()
        if name.startswith("corrdiff-block-")
        for fn, *_deps in layer.values()
    ]


def test_patch_as_an_int_a_shape_or_a_patch_config_gives_the_same_result(setup, reference):
    _, pair, _, model = setup
    # the reference: patch=8, overlap=2, ramp weights
    for patch, kwargs in (
        ((8, 8), {"overlap": 2}),
        (PatchConfig(shape=(8, 8), overlap=2), {}),
        (PatchConfig(shape=(8, 8), overlap=5), {"overlap": 2}),
    ):
        out = downscale(pair, model, members=2, seed=5, steps=2, patch=patch, **kwargs)
        _equal(out.compute(scheduler="sync"), reference)


def test_patch_defaults_are_patch_configs_ramps_over_a_quarter_of_the_smaller_side(setup):
    _, pair, _, model = setup
    expected = PatchGrid.build((16, 16), (12, 16), overlap=3, weights="ramp")
    for patch in ((12, 16), PatchConfig(shape=(12, 16))):
        tasks = _tasks(downscale(pair, model, steps=1, patch=patch))
        assert tasks and all(t.grid == expected for t in tasks)
        assert all(t.plan is not None and t.kinds == ("sample",) for t in tasks)
    assert PatchGrid.from_config((16, 16), PatchConfig(shape=(12, 16))) == expected


def test_patch_arguments_replace_the_patch_configs_fields(setup):
    _, pair, _, model = setup
    given = PatchConfig(
        shape=(8, 8), overlap=3, boundary=1, weights="uniform", layout="physicsnemo"
    )
    grid = _tasks(downscale(pair, model, steps=1, patch=given, overlap=1, weights="ramp"))[0].grid
    assert grid == PatchGrid.build(
        (16, 16), (8, 8), overlap=1, boundary=1, weights="ramp", layout="physicsnemo"
    )
    assert _tasks(downscale(pair, model, steps=1, patch=given))[0].grid == PatchGrid.from_config(
        (16, 16), given
    )


def test_a_patch_config_without_a_shape_samples_the_whole_domain(setup):
    _, pair, _, model = setup
    out = downscale(pair, model, steps=1, patch=PatchConfig(overlap=4))
    assert out.attrs["corrdiff_patching"] == "none (whole domain)"
    assert {t.grid for t in _tasks(out)} == {PatchGrid.build((16, 16))}


def test_the_default_overlap_is_checked_against_the_boundary(setup):
    _, pair, _, model = setup
    with pytest.raises(
        ConfigError, match=r"^patch=\(8, 8\), overlap=None, boundary=3: .*a quarter"
    ):
        downscale(pair, model, patch=8, boundary=3)
    assert _tasks(downscale(pair, model, steps=1, patch=10, boundary=3))[0].grid == PatchGrid.build(
        (16, 16), (10, 10), overlap=2, boundary=3, weights="ramp"
    )


def test_patch_noise_seed_is_stable_across_processes():
    t = np.datetime64("2021-06-01T12:00", "ns")
    here = patch_seed(7, t, 3, (-2, 40))
    code = (
        "import numpy as np; from corrdiff_xr.noise import patch_seed; "
        "print(patch_seed(7, np.datetime64('2021-06-01T12:00', 'ns'), 3, (-2, 40)))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout.strip()
    assert int(there) == here
    assert len({patch_seed(7, t, m, (0, 0)) for m in range(50)}) == 50
    assert patch_seed(7, t, 0, (0, 8)) != patch_seed(7, t, 0, (8, 0))


def test_block_plans_read_every_pixel_their_patches_need():
    grid = PatchGrid.build((20, 13), (8, 6), overlap=3, weights="ramp")
    plans = plan_blocks(grid, (7, 7, 6), (5, 8))
    seen = set()
    for prow in plans:
        for plan in prow:
            assert plan.patches == tuple(sorted(plan.patches))
            for k in plan.patches:
                rows, cols = grid.indices(k)
                assert plan.halo_rows[0] <= rows.min() and rows.max() < plan.halo_rows[1]
                assert plan.halo_cols[0] <= cols.min() and cols.max() < plan.halo_cols[1]
            seen.update(plan.patches)
            # a patch left out must have no weighted pixel in the block
            for k in set(range(grid.num_patches)) - set(plan.patches):
                r0, c0 = grid.origins[k]
                w = np.zeros(grid.domain)
                rr, cc = np.arange(r0, r0 + 8), np.arange(c0, c0 + 6)
                w[np.ix_(rr, cc)] = grid.weight
                assert not w[slice(*plan.rows), slice(*plan.cols)].any()
    assert seen == set(range(grid.num_patches))
    assert touching_patches(grid, (0, 20), (0, 13)) == list(range(grid.num_patches))


def test_inference_only_data_with_chunked_coarse_inputs_gives_the_same_result(setup):
    ds, pair, codec, model = setup
    ref = downscale(pair, model, steps=1, patch=8).compute(scheduler="sync")
    bare = ds.drop_vars(list(codec.targets)).chunk(
        {"time": 2, "y_coarse": 2, "x_coarse": 3, "y": 5, "x": 7}
    )
    out = downscale(bare, model, steps=1, patch=8)
    assert out.t2m.chunks == ((1,), (2, 1), (5, 5, 5, 1), (7, 7, 2))  # follows the inputs
    assert out.t2m.attrs["units"] == codec.attrs["t2m"]["units"]
    _equal(out.compute(scheduler="sync"), ref)


def test_padded_batches_make_accelerator_results_independent_of_chunking(setup, monkeypatch):
    # Accelerators batch regression means in calls padded to exactly batch_size rows;
    # exercise that path on the CPU: a patch's value must not depend on which patches share
    # its call.
    from corrdiff_xr.inference import block

    _, pair, _, model = setup
    monkeypatch.setattr(block, "call_size", lambda device, batch_size: batch_size)
    runs = [
        downscale(pair, model, members=3, seed=2, batch_size=4, chunks=chunks, **FAST).compute(
            scheduler="sync"
        )
        for chunks in ({"member": 3, "time": 3}, {"member": 2, "time": 1, "y": 7})
    ]
    _equal(*runs)


def test_whole_domain_sampling_of_a_large_domain_warns_and_uses_one_spatial_chunk(
    setup, monkeypatch
):
    from corrdiff_xr.inference import downscaling as inference

    ds, _, _, model = setup
    monkeypatch.setattr(inference, "LARGE_DOMAIN", 100)
    with pytest.warns(UserWarning, match="pass patch="):
        out = downscale(ds.chunk({"y": 4, "x": 4}), model)
    assert out.t2m.chunks[2:] == ((16,), (16,))


def test_plain_to_zarr_streams_the_lazy_result(setup, reference, tmp_path):
    _, pair, _, model = setup
    out = downscale(pair, model, members=2, seed=5, chunks={"time": 1}, **FAST)
    out.to_zarr(tmp_path / "out.zarr", consolidated=False)
    written = xr.open_zarr(tmp_path / "out.zarr", consolidated=False)
    assert written.t2m.encoding["chunks"] == (2, 1, 16, 16)  # members: one whole group
    assert written.attrs["corrdiff_seed"] == 5
    _equal(written.compute(), reference)


def test_a_regression_only_model_gives_means_and_refuses_members(setup, tmp_path):
    ds, pair, codec, _ = setup
    regression_only = tiny_corrdiff(codec, (16, 16), residual=False)
    path = regression_only.save(tmp_path / "reg.safetensors")
    for source in (regression_only, path):
        for output in ("ensemble", "residual"):
            with pytest.raises(ConfigError, match=r"regression-only.*zero spread.*output='mean'"):
                downscale(ds, source, members=2, output=output)
    mean = downscale(pair, path, output="mean").isel(time=[1]).compute()
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).isel(time=[1])
    x = torch.from_numpy(codec.encode_inputs(sources.compute()))
    with torch.no_grad():
        want = codec.decode_targets(regression_only.predict_mean(x), mean)
    for name in codec.out_channels:
        np.testing.assert_allclose(mean[name].values, want[name].values, rtol=1e-5, atol=1e-5)


def test_a_patch_or_grid_the_network_cannot_halve_is_refused_before_any_task(setup):
    ds, pair, codec, _ = setup
    model = tiny_corrdiff(codec, (16, 16), padding="none")  # the default pads instead
    with pytest.raises(ConfigError, match=r"patch 7x8 \(y, x\) does not divide by 2.*6x8"):
        downscale(pair, model, members=1, patch=(7, 8), overlap=0)


def test_independent_patch_noise_is_chunk_independent_too_and_differs_from_shared(setup, reference):
    from corrdiff_xr.config import PatchConfig

    _, pair, _, model = setup
    own = PatchConfig(shape=(8, 8), overlap=2, noise="independent")
    runs = [
        downscale(pair, model, members=2, seed=5, steps=2, patch=own, chunks=chunks).compute(
            scheduler="sync"
        )
        for chunks in ({"y": 16, "x": 16}, {"y": 9, "x": 11, "member": 1})
    ]
    _equal(*runs)
    assert not np.allclose(runs[0].t2m.values, reference.t2m.values)  # the reference is shared
