"""One block task: a typed, frozen BlockTask that computes its block and tokenises stably."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from dask.base import tokenize

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import PatchConfig, SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.block import (
    BlockTask,
    compute_block,
    compute_mean_field,
    plan_blocks,
)
from corrdiff_xr.inference.cache import ModelToken, token_for
from corrdiff_xr.patching import PatchGrid
from corrdiff_xr.testing import tiny_corrdiff

GRID = PatchGrid.build((16, 16), (8, 8), overlap=2, weights="ramp")
TASK = BlockTask(
    token=ModelToken("/models/m.safetensors", 17, None),
    grid=GRID,
    seed=5,
    sampler=SamplerConfig(num_steps=2),
    batch_size=8,
    threads=None,
    kinds=("sample",),
)
# the code of TASK, for a fresh interpreter
TASK_CODE = (
    "from corrdiff_xr.config import SamplerConfig\n"
    "from corrdiff_xr.inference.block import BlockTask, plan_blocks\n"
    "from corrdiff_xr.inference.cache import ModelToken\n"
    "from corrdiff_xr.patching import PatchGrid\n"
    "grid = PatchGrid.build((16, 16), (8, 8), overlap=2, weights='ramp')\n"
    "task = BlockTask(token=ModelToken('/models/m.safetensors', 17, None), grid=grid, seed=5,\n"
    "                 sampler=SamplerConfig(num_steps=2), batch_size=8, threads=None, kinds=('sample',))\n"
)


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(ny=16, nx=16, nt=2, factor=4, seed=2, chunks={"time": 1})
    pair = open_pair(ds)
    return pair, tiny_corrdiff(Codec.from_pair(pair), (16, 16))


@pytest.mark.parametrize("mean_from", ["whole", "patches"])
def test_a_block_task_computes_its_block_of_the_downscaling(setup, mean_from):
    pair, model = setup
    patch = PatchConfig(shape=(8, 8), overlap=2, mean=mean_from)
    full = downscale(
        pair,
        model,
        members=2,
        seed=5,
        output="residual",
        steps=2,
        patch=patch,
        chunks={"y": 6, "time": 2, "member": 2},
    ).compute(scheduler="sync")
    mean = downscale(pair, model, output="mean", steps=2, patch=patch).compute(scheduler="sync")
    plan = plan_blocks(GRID, (6, 6, 4), (16,))[1][0]
    times = pair.dataset.time.values.astype("datetime64[ns]").astype(np.int64)
    request = dataclasses.replace(
        TASK,
        token=token_for(model),
        kinds=("sample", "mean"),
        shared_noise=True,
        whole_mean=mean_from == "whole",
        ensemble=2,
    )
    inputs = xr.merge([pair.inputs_on_fine[list(model.codec.inputs)], pair.static_fields])
    window = {"y": slice(*plan.halo_rows), "x": slice(*plan.halo_cols)}
    field = None
    if mean_from == "whole":  # what the graph's mean task computes, cut to the halo
        whole = compute_mean_field(inputs.compute(), dataclasses.replace(request, times=times))
        field = whole[:, :, window["y"], window["x"]]
    out = compute_block(inputs.isel(window).compute(), request.at(plan, times, (0, 1)), field)
    assert out["sample"].shape == (len(model.codec.out_channels), 2, 2, 6, 16)
    for c, name in enumerate(model.codec.out_channels):
        block = {"y": slice(6, 12)}
        np.testing.assert_array_equal(out["mean"][c], mean[name].isel(block).values)
        # the residual is member minus mean, both from this block's task
        np.testing.assert_array_equal(
            out["sample"][c] - out["mean"][c][None], full[name].isel(block).values
        )


def test_a_whole_mean_block_task_refuses_a_missing_or_misshapen_mean_field(setup):
    pair, model = setup
    plan = plan_blocks(GRID, (8, 8), (16,))[0][0]
    task = dataclasses.replace(TASK, token=token_for(model), whole_mean=True, ensemble=2)
    task = task.at(plan, np.array([0], dtype=np.int64), (0,))
    inputs = xr.merge([pair.inputs_on_fine[list(model.codec.inputs)], pair.static_fields])
    halo = inputs.isel(time=[0], y=slice(*plan.halo_rows), x=slice(*plan.halo_cols)).compute()
    with pytest.raises(ValueError, match="needs the whole-domain mean_field"):
        compute_block(halo, task)
    with pytest.raises(ValueError, match=r"mean_field has shape \(1, 4, 16, 16\), expected"):
        compute_block(halo, task, np.zeros((1, 4, 16, 16), np.float32))


def test_a_block_task_is_the_template_plus_its_block():
    plan = plan_blocks(GRID, (8, 8), (16,))[0][0]
    block = TASK.at(plan, np.array([10, 20], dtype=np.int64), range(2, 4))
    assert (block.plan, block.times, block.members) == (plan, (10, 20), (2, 3))
    assert all(type(v) is int for v in block.times + block.members)
    assert dataclasses.replace(block, plan=None, times=(), members=()) == TASK
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.seed = 6
    assert pickle.loads(pickle.dumps(block)) == block


def test_compute_block_refuses_a_task_without_a_block():
    with pytest.raises(ValueError, match=r"BlockTask.at\(plan, times, members\)"):
        compute_block(xr.Dataset(), TASK)


@pytest.mark.parametrize("kinds", [(), ("samples",), ("mean", "median")])
def test_a_block_task_refuses_unknown_kinds(kinds):
    with pytest.raises(
        ValueError, match=r"kinds must be a non-empty selection of \('mean', 'sample'\)"
    ):
        dataclasses.replace(TASK, kinds=kinds)


def test_a_block_task_tokenises_the_same_in_every_process():
    plan_code = "plan = plan_blocks(grid, (8, 8), (16,))[1][0]\n"
    code = (
        TASK_CODE
        + plan_code
        + (
            "from dask.base import tokenize\n"
            "print(tokenize(task), tokenize(task.at(plan, (10, 20), (0, 1))))\n"
        )
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.split()
        for seed in ("1", "2")
    ]
    plan = plan_blocks(GRID, (8, 8), (16,))[1][0]
    here = [tokenize(TASK), tokenize(TASK.at(plan, (10, 20), (0, 1)))]
    assert runs[0] == runs[1] == here


def test_a_block_tasks_token_changes_with_every_setting():
    plan = plan_blocks(GRID, (8, 8), (16,))[0][0]
    changes = {
        "token": ModelToken("/models/m.safetensors", 18, None),
        "seed": 6,
        "grid": PatchGrid.build((16, 16), (8, 8), overlap=2),
        "sampler": SamplerConfig(num_steps=3),
        "batch_size": 4,
        "threads": 1,
        "kinds": ("mean",),
        "shared_noise": True,
        "whole_mean": True,
        "mean_tiles": (4, 2),
        "ensemble": 3,
        "plan": plan,
        "times": (1,),
        "members": (0,),
    }
    assert set(changes) == {f.name for f in dataclasses.fields(BlockTask)}
    tokens = {tokenize(dataclasses.replace(TASK, **{k: v})) for k, v in changes.items()}
    tokens.add(tokenize(TASK))
    assert len(tokens) == len(changes) + 1
