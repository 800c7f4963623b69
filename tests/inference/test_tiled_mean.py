"""The whole-domain regression mean in overlapping tiles: geometry, parity with a direct call
per window, the measured error against the single call, chunk and worker independence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import corrdiff_xr.inference.tiled_mean as tiled_mean
from corrdiff_xr.codec import Codec
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.block import BlockTask, compute_mean_field
from corrdiff_xr.inference.cache import load_model, token_for
from corrdiff_xr.inference.tiled_mean import (
    DEMO_TOLERANCE,
    axis_windows,
    mean_tiles,
    windows,
)
from corrdiff_xr.model import shipped_model_path
from corrdiff_xr.patching import PatchGrid
from corrdiff_xr.testing import tiny_corrdiff

# the setup of tests/inference/test_downscaling.py (its fixtures are module-local)
FAST = {"steps": 2, "patch": 8, "overlap": 2}
SONGUNET = {"channel_mult": [1, 2, 2, 2, 2]}  # a header's five-level regression network


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(ny=16, nx=16, nt=3, factor=4, seed=1, chunks={"time": 1})
    pair = open_pair(ds)
    codec = Codec.from_pair(pair)
    return pair, tiny_corrdiff(codec, (16, 16))


def _sources(pair, codec) -> xr.Dataset:
    fine = pair.inputs_on_fine[list(codec.inputs)]
    static = pair.static_fields[list(codec.static)]
    return xr.merge([fine, static], compat="override").compute()


def _mean_task(model, src, tiles) -> BlockTask:
    times = tuple(int(t) for t in src.time.values.astype("datetime64[ns]").astype("int64"))
    return BlockTask(
        token=token_for(model),
        grid=PatchGrid.build(model.img_shape),
        seed=0,
        sampler=SamplerConfig(num_steps=2),
        batch_size=1,
        threads=None,
        kinds=("mean",),
        whole_mean=True,
        mean_tiles=tiles,
        times=times,
    )


@pytest.mark.parametrize(
    ("n", "core", "halo"),
    [(16, 4, 2), (17, 4, 2), (1056, 256, 64), (1792, 256, 64), (300, 256, 16)],
)
def test_tile_cores_cover_the_axis_once_inside_windows_halo_wide(n, core, halo):
    spans = axis_windows(n, core, halo)
    covered = np.zeros(n, dtype=int)
    for (c0, c1), (w0, w1) in spans:
        covered[c0:c1] += 1
        assert 0 <= w0 <= c0 < c1 <= w1 <= n
        assert w0 == max(0, c0 - halo) and w1 == min(n, c1 + halo)
        assert c0 % core == 0  # window origins stay on the network's lattice when core is
    assert (covered == 1).all()


def test_a_domain_within_one_window_keeps_the_single_call():
    assert axis_windows(256, 128, 64) == [((0, 256), (0, 256))]
    assert windows((16, 16), None) == [((0, 16), (0, 16), (0, 16), (0, 16))]
    assert mean_tiles(SONGUNET, (256, 256)) is None  # fits one 128 + 2 * 64 window
    assert mean_tiles(SONGUNET, (1056, 1792)) == (128, 64)
    assert mean_tiles(SONGUNET, (200, 257)) == (128, 64)  # tiled along x only
    # rounded up to the downsampling factor (16 for five levels), so windows stay aligned
    assert mean_tiles(SONGUNET, (1056, 1792), core=100, halo=10) == (112, 16)
    # global attention (the DiT backbones): no finite halo, one call whatever the domain
    assert mean_tiles({"arch": "dit", "options": {}}, (1056, 1792)) is None
    assert mean_tiles(None, (1056, 1792)) is None


def test_each_tile_keeps_the_core_of_one_network_call_on_its_window(setup):
    pair, model = setup
    src = _sources(pair, model.codec)
    tiles = (4, 2)
    got = compute_mean_field(src, _mean_task(model, src, tiles))
    x = torch.from_numpy(np.asarray(model.codec.encode_inputs(src), dtype=np.float32))
    want = np.full(got.shape, np.nan, dtype=np.float32)
    for (r0, r1), (c0, c1), (wr0, wr1), (wc0, wc1) in windows((16, 16), tiles):
        for t in range(len(x)):  # one row per call, at the window's global origin
            with torch.no_grad():
                out = model.predict_mean(
                    x[t : t + 1, :, wr0:wr1, wc0:wc1].contiguous(),
                    offsets=torch.tensor([[wr0, wc0]]),
                )
            want[t, :, r0:r1, c0:c1] = out[0, :, r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]
    np.testing.assert_array_equal(got, want)
    # and the single call is the network on the whole grid at offset (0, 0), as before
    single = compute_mean_field(src, _mean_task(model, src, None))
    with torch.no_grad():
        whole = model.predict_mean(x[:1], offsets=torch.zeros(1, 2, dtype=torch.long))
    np.testing.assert_array_equal(single[:1], whole.numpy())
    assert not np.array_equal(got, single)  # group norms and attention see the window only


def test_the_demo_models_tiled_mean_is_within_the_stated_tolerance_of_the_single_call():
    model = load_model(token_for(str(shipped_model_path())))
    pair = open_pair(synthetic_dataset(ny=64, nx=64, nt=2, factor=4, seed=0))
    src = _sources(pair, model.codec)
    single = compute_mean_field(src, _mean_task(model, src, None))
    rms = {}
    for halo, (rms_tol, max_tol) in DEMO_TOLERANCE.items():
        tiled = compute_mean_field(src, _mean_task(model, src, (16, halo)))
        diff = np.abs(tiled - single)
        rms[halo] = float(np.sqrt((diff**2).mean()))
        assert rms[halo] <= rms_tol and diff.max() <= max_tol, (halo, rms[halo], diff.max())
    errors = [rms[h] for h in sorted(rms)]
    assert errors == sorted(errors, reverse=True)  # more context, closer to the single call


def _tiny_tiles(monkeypatch) -> None:
    """Tiles small enough for the 16 x 16 fixture: 4-pixel cores with 2 pixels of context."""
    monkeypatch.setattr(tiled_mean, "MEAN_CORE", 4)
    monkeypatch.setattr(tiled_mean, "MEAN_HALO", 2)


def _equal(a: xr.Dataset, b: xr.Dataset) -> None:
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_tiled_downscaling_does_not_depend_on_chunking_or_workers(setup, cluster, monkeypatch):
    distributed = pytest.importorskip("distributed")
    pair, model = setup
    untiled = downscale(pair, model, members=2, seed=5, **FAST).compute(scheduler="sync")
    _tiny_tiles(monkeypatch)
    reference = downscale(pair, model, members=2, seed=5, **FAST).compute(scheduler="sync")
    assert not np.array_equal(reference.t2m.values, untiled.t2m.values)  # tiles were used
    layouts = [
        ({"chunks": {"time": 3, "y": 16, "x": 16, "member": 2}}, "sync"),
        ({"chunks": {"time": 2, "y": 9, "x": 11}, "threads": 1}, "threads"),
    ]
    for kwargs, scheduler in layouts:
        out = downscale(pair, model, members=2, seed=5, **FAST, **kwargs)
        _equal(out.compute(scheduler=scheduler, num_workers=2), reference)
    # the tiles travel in the block tasks: workers (other processes) compute the same
    with distributed.Client(cluster):
        out = downscale(pair, model, members=2, seed=5, **FAST, chunks={"time": 1, "x": 5})
        _equal(out.compute(), reference)


def test_only_an_untiled_whole_domain_mean_warns_about_a_large_domain(setup, monkeypatch):
    from corrdiff_xr.inference import downscaling

    pair, model = setup
    monkeypatch.setattr(downscaling, "LARGE_DOMAIN", 100)
    with pytest.warns(UserWarning, match="no finite halo"):  # 16 x 16 fits one window
        downscale(pair, model, **FAST)
    _tiny_tiles(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        downscale(pair, model, **FAST)


def test_mean_single_keeps_one_exact_call_and_the_store_labels_tell_them_apart(setup, monkeypatch):
    """Tiles change the mean by a tolerance: ``mean="single"`` keeps the exact call on any
    domain, and the output's patching label says which was used, so a store of one never
    resumes as the other."""
    import json

    from corrdiff_xr.config import PatchConfig

    pair, model = setup
    untiled = downscale(pair, model, members=2, seed=5, **FAST).compute(scheduler="sync")
    _tiny_tiles(monkeypatch)
    single_cfg = PatchConfig(shape=(FAST["patch"],) * 2, overlap=FAST["overlap"], mean="single")
    single = downscale(pair, model, members=2, seed=5, steps=FAST["steps"], patch=single_cfg)
    tiled = downscale(pair, model, members=2, seed=5, **FAST)
    _equal(single.compute(scheduler="sync"), untiled)
    label = {n: json.loads(ds.attrs["corrdiff_patching"])["mean"] for n, ds in
             (("single", single), ("tiled", tiled))}  # fmt: skip
    assert label == {"single": "whole", "tiled": "tiles"}
