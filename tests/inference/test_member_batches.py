"""Member groups: trajectories batched by ``[g B, (g + 1) B) & [0, N)``, bit-identical whatever
the chunking, the scheduler or the workers.

The shipped demo model is used where bits matter: unlike the tiny test networks, its CPU
kernels round differently for calls of different row counts, so equal bits across chunkings
show that every call held the same rows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.block import member_groups
from corrdiff_xr.inference.cache import load_model, token_for
from corrdiff_xr.inference.calibrate import network_calls
from corrdiff_xr.model import shipped_model_path
from corrdiff_xr.noise import patch_generator
from corrdiff_xr.testing import tiny_corrdiff

PATCHED = {"steps": 2, "patch": 32, "overlap": 8}
WHOLE = {"steps": 2}


@pytest.fixture(scope="module")
def demo():
    """The shipped model (64 x 64) and a two-step synthetic pair on its grid."""
    ds = synthetic_dataset(ny=64, nx=64, nt=2, factor=4, seed=1, chunks={"time": 1})
    return open_pair(ds), str(shipped_model_path())


def _equal(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        assert np.array_equal(a[name].values, b[name].values), name


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to rounding, which two sampler steps from sigma_max = 800 amplify (values
    ~1e3; with the demo's 12 steps from 80 the members differ by a few float32 ulps)."""
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()


def _run(pair, model, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "chunks\\['member'\\]", UserWarning)
        return downscale(pair, model, seed=7, **kwargs).compute(scheduler="sync")


def test_member_groups_are_slices_of_the_ensemble_that_hold_the_blocks_members():
    assert member_groups(range(5), 2, 5) == [range(0, 2), range(2, 4), range(4, 5)]
    assert member_groups((3,), 2, 5) == [range(2, 4)]
    assert member_groups((2, 3, 4), 8, 5) == [range(0, 5)]
    assert member_groups((0, 1), 1, 2) == [range(0, 1), range(1, 2)]
    with pytest.raises(ValueError, match="ensemble of 5"):
        member_groups((5,), 2, 5)


def test_the_demo_models_members_depend_on_the_rows_of_their_call(demo):
    # what makes the bitwise tests below meaningful: another grouping changes the bits
    pair, model = demo
    one = _run(pair.isel(time=[0]), model, members=2, batch_size=1, **PATCHED)
    two = _run(pair.isel(time=[0]), model, members=2, batch_size=2, **PATCHED)
    assert not np.array_equal(one.t2m.values, two.t2m.values)
    _close(one.t2m.values, two.t2m.values)


@pytest.mark.parametrize("sampling", [PATCHED, WHOLE], ids=["patched", "whole_domain"])
def test_members_are_bit_identical_whatever_the_member_time_and_spatial_chunks(demo, sampling):
    pair, model = demo
    layouts = [
        {},  # defaults: member chunks of one group (2, 2, 1), one time per block
        {"member": 1, "time": 2},
        {"member": 5, "time": 1},
        {"member": 3, "time": 2},  # splits the group [2, 4)
    ]
    if sampling is PATCHED:  # blocks that share patches, one of them in thin columns
        layouts[1:3] = [{"member": 4, "y": 24, "x": 40}, {"member": 1, "time": 2, "x": 17}]
    runs = [_run(pair, model, members=5, batch_size=2, chunks=c, **sampling) for c in layouts]
    for run in runs[1:]:
        _equal(run, runs[0])


def test_a_two_worker_cluster_gives_the_bits_of_the_sync_scheduler(demo, cluster):
    distributed = pytest.importorskip("distributed")
    pair, model = demo
    ds = downscale(pair, model, members=3, seed=7, batch_size=2, threads=1, **PATCHED)
    local = ds.compute(scheduler="sync")
    with distributed.Client(cluster):
        remote = ds.compute()
    _equal(remote, local)


def test_a_member_group_is_one_direct_call_of_its_members(demo):
    # whole domain, members 0 and 1 in one call of two rows, member 2 alone
    pair, model = demo
    out = _run(pair.isel(time=[1]), model, members=3, batch_size=2, **WHOLE)
    net = load_model(token_for(model))
    codec = net.codec
    src = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).isel(time=[1])
    src = src.compute()
    x = torch.from_numpy(codec.encode_inputs(src))
    t = src.time.values[0]
    off = torch.zeros(1, 2, dtype=torch.long)
    with torch.no_grad():
        mu = net.predict_mean(x, offsets=off)  # means are one row per call on the CPU
        direct = []
        for group in ([0, 1], [2]):
            n = len(group)
            direct.append(
                net.sample(
                    x.repeat(n, 1, 1, 1),
                    generators=[patch_generator(7, t, m, (0, 0)) for m in group],
                    sampler=SamplerConfig(num_steps=2),
                    mean=mu.repeat(n, 1, 1, 1),
                    offsets=off.repeat(n, 1),
                )
            )
    decoded = codec.decode_targets(torch.cat(direct)[:, None], src, dims=("member", "time"))
    for name in codec.targets:
        assert np.array_equal(out[name].values, decoded[name].values), name


@pytest.mark.parametrize(("batch_size", "members"), [(2, 5), (1, 3), (8, 3)])
def test_a_block_makes_one_sampling_call_per_member_group_patch_and_step(batch_size, members):
    ds = synthetic_dataset(ny=16, nx=16, nt=1, factor=4, seed=1)
    pair = open_pair(ds)
    model = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    lazy = downscale(
        pair, model, members=members, batch_size=batch_size, chunks={"member": members},
        steps=2, patch=8, overlap=2,
    )  # fmt: skip
    assert lazy.t2m.data.npartitions == 1
    rows = []
    net = load_model(token_for(model))
    hook = net.residual.register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        lazy.compute(scheduler="sync")
    finally:
        hook.remove()
    patches = 9  # 16 x 16 in patches of 8 overlapping by 2: 3 x 3
    nfe = network_calls(SamplerConfig(num_steps=2))
    groups = math.ceil(members / batch_size)
    assert len(rows) == groups * patches * nfe
    sizes = [len(g) for g in member_groups(range(members), batch_size, members)]
    assert sorted(rows) == sorted(sizes * patches * nfe)


def test_the_output_records_its_member_group_size(demo):
    pair, model = demo
    for size in (1, 3):
        out = downscale(pair, model, members=4, batch_size=size, **PATCHED)
        assert out.attrs["corrdiff_batch_size"] == size


def test_members_of_a_complete_group_do_not_depend_on_the_ensemble_size(demo):
    pair, model = demo
    one = pair.isel(time=[0])
    runs = {n: _run(one, model, members=n, batch_size=2, **PATCHED) for n in (2, 3, 4)}
    for n in (3, 4):  # members 0 and 1 fill their group [0, 2) whatever N
        _equal(runs[n].isel(member=[0, 1]), runs[2])
    # member 2 shares its call with member 3 when N = 4, is alone when N = 3: the same
    # member up to rounding
    for name in runs[2].data_vars:
        _close(runs[3][name].values[2], runs[4][name].values[2])
    # one trajectory per call: members do not depend on N at all
    alone = {n: _run(one, model, members=n, batch_size=1, **PATCHED) for n in (1, 3)}
    _equal(alone[3].isel(member=[0]), alone[1])


def test_the_default_member_chunk_holds_whole_groups_and_a_splitting_one_warns():
    ds = synthetic_dataset(ny=16, nx=16, nt=1, factor=4, seed=1)
    pair = open_pair(ds)
    model = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    expect = {(20, 8): (8, 8, 4), (3, 8): (3,), (5, 2): (2, 2, 1), (4, 1): (1, 1, 1, 1)}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for (members, batch_size), chunks in expect.items():
            out = downscale(pair, model, members=members, batch_size=batch_size, patch=8)
            assert out.t2m.chunks[0] == chunks
        for size in (4, 5, 7):  # multiples of the group, or the whole ensemble
            downscale(pair, model, members=5, batch_size=2, patch=8, chunks={"member": size})
        downscale(pair, model, members=5, output="mean", chunks={"member": 1})  # no samples
    assert not [w for w in seen if "splits" in str(w.message)]
    with pytest.warns(UserWarning, match=r"chunks\['member'\]=3 splits .* batch_size=2"):
        downscale(pair, model, members=5, batch_size=2, patch=8, chunks={"member": 3})


@pytest.mark.parametrize("noise", ["shared", "independent"])
def test_every_row_of_a_group_draws_the_noise_of_its_own_member(demo, noise):
    from corrdiff_xr.config import PatchConfig

    pair, model = demo
    patch = PatchConfig(shape=(32, 32), overlap=8, noise=noise)
    one = pair.isel(time=[0])
    together = _run(one, model, members=2, batch_size=2, steps=2, patch=patch)
    alone = _run(one, model, members=2, batch_size=1, steps=2, patch=patch)
    assert not np.allclose(together.t2m.values[0], together.t2m.values[1])
    _close(together.t2m.values, alone.t2m.values)
