"""A published-layout CorrDiff package run by us and by Earth2Studio 0.19, side by side.

One generic CorrDiff package (Earth2Studio's layout: ``regression.mdlus``, ``diffusion.mdlus``,
``metadata.json``, ``stats.json``, grids, invariants) at CorrDiff-Mini size (64 channels,
``channel_mult`` [1, 2, 2], 4 blocks per level, attention at 16; random weights, written by
PhysicsNeMo 2.2.2's own ``Module.save``) on a 128 x 128 curvilinear output grid (Earth2Studio
0.19 cannot run a rectilinear one), 7 ERA5 inputs + 2 invariants -> 4 outputs. The coarse data is
a global 1-degree archive in ERA5/ARCO conventions (latitude descending, longitudes 0..360,
``geopotential`` on a ``level`` dim) that the package's input grid is cut from.

Measured in one process, interleaved, medians of ``--repeat`` runs after one warm-up each:

* ``members_per_s_vs_earth2studio``: members per second of ``downscale(archive, package,
  members=8)`` (one network call for the 8 members of a step) over Earth2Studio's
  ``CorrDiff`` wrapper (``number_of_samples=8``, members one by one), same sampler (its
  "stochastic" sampler = EDM Heun without churn, ``--steps`` steps) and threads;
* ``members_per_s_ours_cpu_batch_vs_earth2studio``: the same, equal settings, with
  ``batch_size=--cpu-batch`` members per network call: on a CPU, 8 members of 128 x 128 in one
  call overflow the caches and run slower per member than 2 (a GPU wants the 8);
* ``members_per_s_bf16_vs_earth2studio_bf16``: equal settings in bf16: ours with
  ``sampler={"precision": "bf16"}`` at ``--cpu-batch`` (``--batch`` on a GPU) against
  Earth2Studio with its residual network under the same bf16 autocast. PhysicsNeMo 2.2.2
  refuses autocast on the CPU (its layers want ``amp_mode=True``, which Earth2Studio never
  sets, and its wrappers ask ``torch.is_autocast_enabled()``, which asks about CUDA only):
  :func:`_e2s_bf16` lifts both for its calls. Both regressions stay float32;
* ``members_per_s_ours_bf16_vs_earth2studio``: ours in bf16 against Earth2Studio as it ships
  (float32: it has no precision setting);
* ``bf16_members_rms_change_over_spread``: RMS of (bf16 - fp32) members of the same seeds
  and batch, over the fp32 ensemble's mean spread (the accuracy the bf16 rows pay);
* ``members_per_s_ours_dpmpp_2m``: ours with DPM-Solver++(2M) at ``--fast-steps`` (not equal
  settings: what the project's calibrated samplers buy on top);
* ``regression_mean_max_abs_diff``: our regression mean vs Earth2Studio's
  (``inference_mode="regression"``) on the same time, in each output's units and normalised;
* ``export_roundtrip_max_abs_diff``: the opened package exported again
  (``corrdiff-xr export``'s library function) and reopened: its ensemble vs the original's.

Usage::

    python benchmarks/packages.py --json benchmarks/results/packages.json
    python benchmarks/packages.py --quick      # 1 repeat, 2 steps: a smoke run
    python benchmarks/packages.py --device cuda --batch 8   # on a GPU (gpu_check.py runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from package_fixtures import ARCO, era5_archive, write_generic_package  # noqa: E402
from physicsnemo_ref import physicsnemo  # noqa: E402

MINI = {"num_blocks": 4, "attn_resolutions": [16]}


def _median(times: list[float]) -> float:
    return statistics.median(times)


def _earth2studio(directory: Path, device: str = "cpu"):
    physicsnemo()  # registers the torchvision op schemas PhysicsNeMo needs on this CPU torch
    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiff

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CorrDiff.load_model(Package(str(directory)), device=device)


@contextlib.contextmanager
def _e2s_bf16(model, device: str):
    """Earth2Studio's residual network under bf16 autocast, its regression in float32.

    PhysicsNeMo 2.2.2's layers refuse autocast unless ``amp_mode`` is set, and its wrappers
    test ``torch.is_autocast_enabled()``, which on this torch asks about CUDA alone, so on the
    CPU they refuse it too: both are lifted until the block ends.
    """
    nets = [m for m in model.residual_model.modules() if _has_amp_mode(m)]
    regression, forward = model.regression_model, model.regression_model.forward
    asked = torch.is_autocast_enabled

    def float32_regression(*args, **kwargs):
        with torch.autocast(device, enabled=False):
            return forward(*args, **kwargs)

    for net in nets:
        net.amp_mode = True
    regression.forward = float32_regression
    torch.is_autocast_enabled = lambda *a: asked(*a) if a else asked(device)
    try:
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    finally:
        torch.is_autocast_enabled = asked
        del regression.forward
        for net in nets:
            net.amp_mode = False


def _has_amp_mode(module: torch.nn.Module) -> bool:
    return isinstance(getattr(type(module), "amp_mode", None), property)


def _rms_over_spread(test: xr.Dataset, base: xr.Dataset) -> float:
    """RMS of ``test - base`` over the mean member spread of ``base``, worst variable."""
    return max(
        float(np.sqrt(np.nanmean((test[n].values - base[n].values) ** 2)))
        / float(np.nanmean(base[n].std("member", ddof=1).values))
        for n in base.data_vars
    )


def _e2s_input(model, archive: xr.Dataset, t: int) -> tuple[torch.Tensor, OrderedDict]:
    """The archive at the model's input grid, in its variable order, as Earth2Studio takes it."""
    lat, lon = model.lat_input_numpy, model.lon_input_numpy
    fields = []
    for name in model.input_variables:
        var, level, _ = ARCO[name]
        v = archive[var].isel(time=t)
        v = v.sel(level=level) if level is not None else v
        fields.append(v.sel(latitude=lat, longitude=lon % 360).values)
    x = torch.as_tensor(np.stack(fields)[None], dtype=torch.float32)
    coords = OrderedDict(
        batch=np.array([0]), variable=np.array(model.input_variables), lat=lat, lon=lon
    )
    return x, coords


def run(args: argparse.Namespace) -> dict:
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.model.packages import open_package
    from corrdiff_xr.model.packages.export import export_package

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="corrdiff_xr_packages_"))
    members, grid, device = args.members, (args.size, args.size), args.device
    directory = write_generic_package(
        work / "package",
        grid=grid,
        model_channels=64,
        levels=3,
        curvilinear=True,
        network=MINI,
        metadata={"number_of_samples": members, "number_of_steps": args.steps, "seed": 0},
    )
    archive = era5_archive().chunk({"time": 1})
    e2s = _earth2studio(directory, device)
    package = open_package(directory)
    one = archive.isel(time=[0])
    x, coords = _e2s_input(e2s, archive, 0)
    x = x.to(device)
    small = args.batch or (args.cpu_batch if device == "cpu" else members)

    def ours(sampler=None, batch_size=members):
        return downscale(one, package, members=members, batch_size=batch_size, seed=0,
                         sampler=sampler, device=device).compute()  # fmt: skip

    def theirs():
        with torch.inference_mode():
            out = e2s(x, coords)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    def theirs_bf16():
        with _e2s_bf16(e2s, device):
            return theirs()

    fast = {"solver": "dpmpp_2m", "num_steps": args.fast_steps}
    rows = {
        "ours": ours,
        "theirs": theirs,
        "fast": lambda: ours(fast),
        "small": lambda: ours(batch_size=small),
        "bf16": lambda: ours({"precision": "bf16"}, batch_size=small),
        "theirs_bf16": theirs_bf16,
    }
    last = {k: fn() for k, fn in rows.items()}  # warm-ups (model cache, oneDNN primitives)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeat):  # interleaved, so drifts in the machine's load hit all rows
        for k, fn in rows.items():
            start = time.perf_counter()
            last[k] = fn()
            times[k].append(time.perf_counter() - start)
    bf16_change = _rms_over_spread(last["bf16"], last["small"])

    # regression mean, same input time
    e2s.inference_mode = "regression"
    e2s.number_of_samples = 1
    with torch.inference_mode():
        ref_mean = e2s(x, coords)[0].cpu().numpy()[0, 0]  # (variable, lat, lon)
    mean = downscale(one, package, output="mean", device=device).compute()
    diffs, norm = [], []
    for c, name in enumerate(e2s.output_variables):
        d = np.abs(mean[name].values[0] - ref_mean[c])
        diffs.append(float(np.nanmax(d)))
        norm.append(float(np.nanmax(d)) / package.model.codec.stats[name][1])

    # export and reopen: the same ensemble, bit for bit
    pair = package.pair(one)
    exported = export_package(package.model, pair, work / "exported")
    again = downscale(pair, open_package(exported), members=2, seed=3, device=device).compute()
    first = downscale(pair, package, members=2, seed=3, device=device).compute()
    roundtrip = max(float(np.nanmax(np.abs(again[n].values - first[n].values))) for n in first)

    mps = {k: members / _median(v) for k, v in times.items()}
    return {
        "members_per_s_vs_earth2studio": mps["ours"] / mps["theirs"],
        "members_per_s_ours": mps["ours"],
        "members_per_s_earth2studio": mps["theirs"],
        "members_per_s_ours_dpmpp_2m": mps["fast"],
        "members_per_s_ours_dpmpp_2m_vs_earth2studio": mps["fast"] / mps["theirs"],
        "members_per_s_ours_cpu_batch": mps["small"],
        "members_per_s_ours_cpu_batch_vs_earth2studio": mps["small"] / mps["theirs"],
        "members_per_s_ours_bf16": mps["bf16"],
        "members_per_s_earth2studio_bf16": mps["theirs_bf16"],
        "members_per_s_bf16_vs_earth2studio_bf16": mps["bf16"] / mps["theirs_bf16"],
        "members_per_s_ours_bf16_vs_earth2studio": mps["bf16"] / mps["theirs"],
        "bf16_members_rms_change_over_spread": bf16_change,
        **{f"seconds_{k}": v for k, v in times.items()},
        "regression_mean_max_abs_diff": max(diffs),
        "regression_mean_max_abs_diff_by_output": dict(zip(e2s.output_variables, diffs)),
        "regression_mean_max_abs_diff_normalised": max(norm),
        "export_roundtrip_max_abs_diff": roundtrip,
        "settings": {
            "device": device,
            "grid": list(grid),
            "members": members,
            "sampler": f"EDM Heun without churn (Earth2Studio 'stochastic'), {args.steps} steps",
            "fast_sampler": fast,
            "network": "CorrDiff-Mini: 64 channels, channel_mult [1, 2, 2], 4 blocks, attention at 16",
            "inputs": 7,
            "invariants": 2,
            "outputs": 4,
            "batch_of_small_and_bf16_rows": small,
            "repeat": args.repeat,
            "threads": torch.get_num_threads(),
        },
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``gpu_check.py`` builds its run with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="Heun steps of both sides")
    parser.add_argument("--fast-steps", type=int, default=6, help="DPM-Solver++(2M) steps")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument(
        "--cpu-batch", type=int, default=2, help="members per network call of the CPU row"
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="members per call of the bf16 row (default: --cpu-batch "
        "on the CPU, --members on a GPU)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of both sides")
    parser.add_argument("--size", type=int, default=128, help="output grid side")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 steps, 64 x 64")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.steps, args.fast_steps, args.size = 1, 2, 2, 64
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load_before = os.getloadavg()
    results = run(args)
    results["load_average_start"] = load_before
    results["load_average_end"] = os.getloadavg()
    results["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
