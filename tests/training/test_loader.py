from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from _train_helpers import synthetic_store

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair
from corrdiff_xr.testing import raise_if_dask_computes
from corrdiff_xr.training.loader import ChunkShuffleLoader, block_bounds, rank_blocks


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("loader") / "pair.zarr", nt=12, chunk=2)


def open_real(path):
    """The data layer's lazy pair of the store, and its codec."""
    pair = open_pair(path)
    return pair, Codec.from_pair(pair)


def _collect(loader, n=None):
    out = []
    for i, batch in enumerate(loader):
        out.append(batch)
        if n is not None and i + 1 == n:
            break
    return out


def test_blocks_are_whole_chunks_merged_up_to_block_size():
    assert block_bounds((2, 2, 2, 1)) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert block_bounds((2, 2, 2, 1), block_size=3) == [(0, 4), (4, 7)]
    with pytest.raises(ValueError, match="block_size"):
        block_bounds((2,), block_size=0)


def test_one_epoch_reads_every_sample_exactly_once(store):
    pair, codec = open_real(store)
    loader = ChunkShuffleLoader(pair, codec, batch_size=5, epochs=1, seed=3)
    batches = _collect(loader)
    times = torch.cat([b.time_index for b in batches]).numpy()
    assert sorted(times) == list(range(12))
    assert not np.array_equal(times, np.arange(12))  # shuffled
    assert [len(b) for b in batches] == [5, 5, 2]


def test_batches_hold_the_encoded_sample_of_their_time_index(store):
    pair, codec = open_real(store)
    loader = ChunkShuffleLoader(pair, codec, batch_size=4, epochs=1, seed=1)
    expected_x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]).load())
    expected_y = codec.encode_targets(pair.fine.load())
    for batch in loader:
        t = batch.time_index.numpy()
        np.testing.assert_allclose(batch.inputs.numpy(), expected_x[t], rtol=1e-6)
        np.testing.assert_array_equal(batch.targets.numpy(), expected_y[t])
        assert batch.inputs.dtype == torch.float32


def test_order_depends_on_seed_and_epoch_but_not_on_worker_count(store):
    pair, codec = open_real(store)
    orders = {}
    for workers in (0, 2):
        loader = ChunkShuffleLoader(
            pair, codec, batch_size=3, epochs=2, seed=7, num_workers=workers
        )
        orders[workers] = torch.cat([b.time_index for b in loader]).numpy()
    np.testing.assert_array_equal(orders[0], orders[2])
    assert not np.array_equal(orders[0][:12], orders[0][12:])  # epochs differ
    other = ChunkShuffleLoader(pair, codec, batch_size=3, epochs=1, seed=8)
    assert not np.array_equal(torch.cat([b.time_index for b in other]).numpy(), orders[0][:12])


def test_ranks_read_disjoint_whole_blocks_covering_the_data(store):
    pair, codec = open_real(store)
    seen = []
    for rank in range(2):
        loader = ChunkShuffleLoader(pair, codec, batch_size=2, epochs=1, rank=rank, world_size=2)
        times = torch.cat([b.time_index for b in loader]).numpy()
        assert all(set(times) >= set(range(s, e)) for s, e in loader.epoch_blocks(0))
        seen.append(set(times))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(12))


def test_step_samples_do_not_depend_on_world_size_when_batches_hold_whole_blocks(store):
    pair, codec = open_real(store)
    single = ChunkShuffleLoader(pair, codec, batch_size=4, epochs=1, seed=5)
    ranks = [
        ChunkShuffleLoader(pair, codec, batch_size=2, epochs=1, seed=5, rank=r, world_size=2)
        for r in range(2)
    ]
    for big, *parts in zip(single, *ranks):
        assert set(big.time_index.tolist()) == set(
            torch.cat([p.time_index for p in parts]).tolist()
        )


def test_resuming_from_the_state_continues_the_same_stream(store):
    pair, codec = open_real(store)
    reference = torch.cat(
        [b.time_index for b in _collect(ChunkShuffleLoader(pair, codec, batch_size=5, seed=2), 7)]
    )
    first = ChunkShuffleLoader(pair, codec, batch_size=5, seed=2)
    head = _collect(first, 3)
    state = first.state_dict()
    assert state == {"epoch": 1, "position": 3}
    resumed = ChunkShuffleLoader(pair, codec, batch_size=5, seed=2)
    resumed.load_state_dict(state)
    tail = _collect(resumed, 4)
    np.testing.assert_array_equal(
        torch.cat([b.time_index for b in head + tail]).numpy(), reference.numpy()
    )


def test_random_patches_crop_inputs_and_targets_at_their_offsets(store):
    pytest.importorskip("corrdiff_xr.patching")
    pair, codec = open_real(store)
    loader = ChunkShuffleLoader(pair, codec, batch_size=4, epochs=1, patch_shape=(8, 6))
    full = codec.encode_targets(pair.fine.load())
    offsets = []
    for batch in loader:
        assert batch.targets.shape[-2:] == (8, 6)
        for y, t, (r, c) in zip(
            batch.targets.numpy(), batch.time_index.numpy(), batch.offsets.numpy()
        ):
            np.testing.assert_array_equal(y, full[t, :, r : r + 8, c : c + 6])
            offsets.append((r, c))
    assert len(set(offsets)) > 1


def test_patch_larger_than_the_domain_is_refused(store):
    pair, codec = open_real(store)
    with pytest.raises(ValueError, match="larger than the domain"):
        ChunkShuffleLoader(pair, codec, batch_size=2, patch_shape=(32, 8))


def test_more_ranks_than_blocks_is_refused(store):
    pair, codec = open_real(store)
    with pytest.raises(ValueError, match="fewer than the 8 ranks"):
        ChunkShuffleLoader(pair, codec, batch_size=2, block_size=4, world_size=8)


def test_building_the_loader_reads_no_data(store):
    pair, codec = open_real(store)
    with raise_if_dask_computes():
        ChunkShuffleLoader(pair, codec, batch_size=2, world_size=2, rank=1)


def test_rank_blocks_are_a_partition_of_each_epoch():
    parts = [rank_blocks(7, seed=0, epoch=3, rank=r, world_size=3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))


def test_real_pair_batches_are_the_codec_encoding_of_regridded_inputs_and_lead_times(tmp_path):
    import xarray as xr
    from _train_helpers import synthetic_store

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair

    pair = open_pair(synthetic_store(tmp_path / "syn.zarr", nt=6, chunk=2, lead_time=True))
    codec = Codec.from_pair(pair)
    loader = ChunkShuffleLoader(
        pair, codec, batch_size=4, epochs=1, lead_time="lead_time", num_workers=2
    )
    expected_x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]).load())
    expected_y = codec.encode_targets(pair.fine.load())
    seen = []
    for batch in loader:
        t = batch.time_index.numpy()
        np.testing.assert_allclose(batch.inputs.numpy(), expected_x[t], rtol=1e-6)
        np.testing.assert_array_equal(batch.targets.numpy(), expected_y[t])
        np.testing.assert_array_equal(batch.lead_time.numpy(), t % 3)
        seen += t.tolist()
    assert sorted(seen) == list(range(6))


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_spatially_chunked_and_misaligned_inputs_give_the_same_batches(tmp_path, scheduler):
    # targets split in y (chunks stitched per block) and coarse inputs chunked 3 in time
    # (not aligned with the 2-step blocks: read by slicing instead) must not change a sample
    import dask

    from corrdiff_xr.data import synthetic_dataset

    ds = synthetic_dataset(ny=16, nx=16, nt=6, factor=4).load()
    coarse = [n for n, v in ds.data_vars.items() if "y_coarse" in v.dims]
    ds = ds.chunk({"time": 2, "y": 8})
    ds = ds.assign({n: ds[n].chunk({"time": 3}) for n in coarse})
    ds.to_zarr(tmp_path / "odd.zarr", mode="w")
    pair = open_pair(str(tmp_path / "odd.zarr"))
    codec = Codec.from_pair(pair)
    expected_x = codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]).load())
    expected_y = codec.encode_targets(pair.fine.load())
    loader = ChunkShuffleLoader(pair, codec, batch_size=3, epochs=1, seed=2)
    seen = []
    with dask.config.set(scheduler=scheduler):
        for batch in loader:
            t = batch.time_index.numpy()
            np.testing.assert_allclose(batch.inputs.numpy(), expected_x[t], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(batch.targets.numpy(), expected_y[t])
            seen.extend(t.tolist())
    assert sorted(seen) == list(range(6))


@pytest.mark.parametrize("workers", [0, 2])
def test_nan_in_an_input_is_one_line_naming_it_and_its_time_from_the_main_process(
    tmp_path, workers
):
    from corrdiff_xr.data import MissingValueError, synthetic_dataset

    ds = synthetic_dataset(ny=16, nx=16, nt=6, factor=4).load()
    clean = open_pair(ds)
    t2m, tp = ds["t2m_coarse"].values.copy(), ds["tp"].values.copy()
    t2m[3, 1, 2] = np.nan  # a gap in an input: refused
    tp[:, :4, :4] = np.nan  # a masked target (NaN every time): trained around, not refused
    ds.assign(t2m_coarse=ds["t2m_coarse"].copy(data=t2m), tp=ds["tp"].copy(data=tp)).chunk(
        {"time": 2}
    ).to_zarr(tmp_path / "gap.zarr", mode="w")
    pair = open_pair(str(tmp_path / "gap.zarr"), stats=clean.stats)
    loader = ChunkShuffleLoader(
        pair, Codec.from_pair(pair), batch_size=2, epochs=1, shuffle=False, num_workers=workers
    )
    with pytest.raises(MissingValueError) as err:
        for batch in loader:
            assert np.isnan(batch.targets.numpy()).any()  # the mask passes through
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message  # not a worker's traceback
    assert "'t2m_coarse' holds 1 NaN/inf value(s) at time(s) ['2020-01-01T03:00" in message
