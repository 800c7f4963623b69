"""The ``demo`` command: the shipped tiny CorrDiff on held-out synthetic data, end to end.

``corrdiff-xr demo --out DIR`` needs no download. It

1. opens the ``demo`` entry of the bundled demo catalog (the synthetic dataset, built and
   cached as Zarr on first use) and keeps the *held-out* days: the shipped model was trained
   on the first 20 days of that store (see ``benchmarks/train_shipped_model.py``);
2. downscales an ensemble (deterministic Heun sampler, ``DEMO_STEPS`` steps from
   ``sigma_max = DEMO_SIGMA_MAX``) and the regression mean lazily with
   ``ds.corrdiff.downscale`` and writes them to ``DIR/ensemble.zarr`` and
   ``DIR/regression_mean.zarr`` (atomically) under a dask progress bar;
3. scores the ensemble (CRPS), the regression mean (MAE) and bilinear interpolation of the
   coarse input (MAE) against the truth, plus the ensemble's spread-skill ratio, and writes
   ``DIR/scores.json`` and a printed table;
4. draws ``DIR/maps.png``, ``DIR/spectra.png`` and ``DIR/rank_histogram.png``.

``DIR`` is the demo's own: it is marked as a ``demo`` output (a marker file, and the Zarr
stores carry the global attribute ``corrdiff_xr_product = "demo"``). It may be new or empty;
running the demo again into an earlier demo output needs ``--overwrite``, as for every
command (an earlier run may have been a long one). Any other non-empty directory, or a demo
directory that also holds files the demo did not write, is refused with or without
``--overwrite``; all of that is checked before anything is computed. The outputs are built in
a hidden folder inside ``DIR`` (which therefore stays the same directory, e.g. the working
directory) and moved into place together when the run succeeds, so a failed or interrupted
run leaves the earlier output (or the empty directory) as it was.

``scores.json`` holds four keys, ``crps``, ``mae_regression``, ``mae_bilinear`` and
``spread_skill``, each a mapping from target variable to its score (physical units; the
spread-skill ratio is dimensionless) plus ``"overall"``: the mean over variables of the score
divided by that variable's standard deviation in the dataset (for ``spread_skill``, the plain
mean of the ratios). CRPS is properscoring's estimator (the empirical ensemble's CRPS, which
for a small ensemble is higher than the "fair" estimate, so the comparison with MAE is
conservative); MAE is the mean absolute error over time, y and x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr._atomic import write_bytes
from corrdiff_xr.dims import MEMBER, TIME
from corrdiff_xr.errors import CorrDiffError, InputNotFoundError

__all__ = [
    "DEMO_FILES",
    "DEMO_SIGMA_MAX",
    "DEMO_STEPS",
    "HELD_OUT_START",
    "SCORE_KEYS",
    "DemoError",
    "DemoResult",
    "bilinear_baseline",
    "compute_scores",
    "configure_parser",
    "evaluate",
    "format_table",
    "open_demo_data",
    "run",
    "shipped_model_path",
]

#: hourly steps of the demo store the shipped model was built with (20 days + 3 held out)
DEMO_NT = 552
#: first held-out time: the shipped model never saw this day or later ones
HELD_OUT_START = "2020-01-21T00:00"
SCORE_KEYS = ("crps", "mae_regression", "mae_bilinear", "spread_skill")
#: the demo's sampler: deterministic Heun (EDM), 12 steps from sigma_max = 80; the tiny model
#: was trained with ln(sigma) ~ N(0, 1.2^2), so the reference's sigma_max = 800 only spends
#: the first of few steps far outside what it learnt (over-dispersed members)
DEMO_STEPS = 12
DEMO_SIGMA_MAX = 80.0
OVERALL = "overall"
#: held-out hourly steps (3 days)
HELD_OUT_TIMES = 72
#: what the demo writes into its output directory (the product kind is "demo")
DEMO_FILES = ("ensemble.zarr", "regression_mean.zarr", "scores.json", "maps.png",
              "spectra.png", "rank_histogram.png")
KIND = "demo"


class DemoError(CorrDiffError, ValueError):
    """The demo cannot run with the settings or model given."""


def shipped_model_path() -> Path:
    """Path of the shipped tiny CorrDiff checkpoint (fp16 tensors, loads as fp32)."""
    path = Path(__file__).parent / "weights" / "tiny_demo.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"the shipped model {path} is missing; reinstall corrdiff_xr or rebuild it with "
            "benchmarks/train_shipped_model.py --install"
        )
    return path


def open_demo_data(
    *, cache_dir: str | os.PathLike | None = None, times: int | None = None, seed: int = 0
):
    """The held-out part of the demo catalog entry as a lazy DownscalingData.

    Parameters
    ----------
    cache_dir
        Where the catalog caches the Zarr store (default ``$CORRDIFF_XR_CACHE`` or
        ``~/.cache/corrdiff_xr``).
    times
        Keep only the first ``times`` held-out time steps (default: all 72).
    seed
        Seed of the synthetic fields; the shipped model was trained on seed 0.
    """
    from corrdiff_xr.data.catalog import open_entry

    pair = open_entry("demo", "demo", cache_dir=os.fspath(cache_dir or ""), nt=DEMO_NT, seed=seed)
    held = pair.sel(time=slice(HELD_OUT_START, None))
    if times is not None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        held = held.isel(time=slice(0, int(times)))
    return held


def _input_for(target: str, inputs: xr.Dataset) -> str:
    """The coarse input holding ``target`` (same name, or ``target_*``)."""
    for name in (target, f"{target}_coarse"):
        if name in inputs:
            return name
    matches = sorted(n for n in inputs.data_vars if str(n).startswith(f"{target}_"))
    if len(matches) != 1:
        raise KeyError(
            f"no unique coarse input for target {target!r} (looked for {target!r}, "
            f"'{target}_coarse' or '{target}_*'); inputs are {sorted(map(str, inputs.data_vars))}"
        )
    return matches[0]


def bilinear_baseline(pair, targets: tuple[str, ...] | None = None) -> xr.Dataset:
    """The coarse inputs bilinearly regridded to the fine grid, named as the targets (lazy)."""
    targets = tuple(targets or pair.targets)
    fine = pair.inputs_on_fine
    out = {t: fine[_input_for(t, fine)].rename(t) for t in targets}
    return xr.Dataset(out).assign_attrs(title="bilinear interpolation of the coarse inputs")


def _with_member(ds: xr.Dataset) -> xr.Dataset:
    return ds.expand_dims({MEMBER: 1}) if MEMBER not in ds.dims else ds


def compute_scores(
    ensemble: xr.Dataset,
    mean: xr.Dataset,
    bilinear: xr.Dataset,
    truth: xr.Dataset,
    *,
    std: dict[str, float],
) -> dict[str, dict[str, float]]:
    """CRPS, MAE of the regression mean and of bilinear, spread-skill (see the module doc).

    ``std`` maps each variable to the standard deviation used for the ``"overall"`` entry.
    """
    from corrdiff_xr import scoring

    names = list(ensemble.data_vars)
    truth = truth[names]
    parts = {
        "crps": scoring.crps(ensemble, truth),
        "mae_regression": scoring.mae(_with_member(mean[names]), truth),
        "mae_bilinear": scoring.mae(_with_member(bilinear[names]), truth),
    }
    if ensemble.sizes[MEMBER] > 1:
        parts["spread_skill"] = scoring.spread_skill(ensemble, truth)
    import dask

    (computed,) = dask.compute(parts)
    scores: dict[str, dict[str, float]] = {}
    for key, ds in computed.items():
        per_var = {n: float(ds[n]) for n in names}
        if key == "spread_skill":
            overall = float(np.mean(list(per_var.values())))
        else:
            overall = float(np.mean([per_var[n] / std[n] for n in names]))
        scores[key] = {**per_var, OVERALL: overall}
    return scores


def format_table(scores: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per variable (and ``overall``), one column per score."""
    keys = [k for k in SCORE_KEYS if k in scores]
    rows = list(next(iter(scores.values())))
    head = f"{'variable':<10}" + "".join(f"{k:>16}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r:<10}" + "".join(f"{scores[k][r]:>16.4f}" for k in keys))
    return "\n".join(lines)


@dataclasses.dataclass
class DemoResult:
    """What :func:`evaluate` produced: datasets (computed or Zarr-backed) and scores."""

    ensemble: xr.Dataset
    mean: xr.Dataset
    bilinear: xr.Dataset
    truth: xr.Dataset
    scores: dict[str, dict[str, float]]


def _write_zarr(ds: xr.Dataset, path: Path) -> xr.Dataset:
    from corrdiff_xr.data.convert import write_atomic

    # replaces only an earlier demo store (see corrdiff_xr._outputs.check_output)
    write_atomic(ds, path, overwrite=True, kind=KIND)
    return xr.open_zarr(path)


def evaluate(
    pair,
    model: Any,
    *,
    members: int = 8,
    steps: int | None = None,
    sampler: Any = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> DemoResult:
    """Downscale ``pair`` with ``model`` (ensemble + regression mean) and score it.

    Parameters
    ----------
    pair : DownscalingData
        Inputs and truth (e.g. :func:`open_demo_data`).
    model : CorrDiff or path
        Passed to ``ds.corrdiff.downscale``.
    members, steps, sampler, seed
        Ensemble size, sampler steps (None: the sampler's default), sampler settings (as
        ``downscale`` takes them: None, ``"heun"``, a mapping or a SamplerConfig) and base seed.
    out : path, optional
        Directory for ``ensemble.zarr`` and ``regression_mean.zarr``; without it the results
        are computed in memory.
    progress : bool
        Show a dask progress bar.
    """
    from dask.diagnostics import ProgressBar

    ds = pair.dataset
    try:  # downscale checks its settings and the model's grid before building anything
        ensemble = ds.corrdiff.downscale(
            model, members=members, steps=steps, sampler=sampler, seed=seed
        )
        mean = ds.corrdiff.downscale(model, output="mean")
    except ValueError as err:
        if isinstance(err, CorrDiffError):
            raise
        label = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        raise DemoError(f"cannot downscale the demo data with {label}: {err}") from err
    bar = ProgressBar(minimum=1.0, dt=0.5) if progress else None
    if bar is not None:
        bar.register()
    try:
        if out is not None:
            out = Path(out)
            ensemble = _write_zarr(ensemble, out / "ensemble.zarr")
            mean = _write_zarr(mean, out / "regression_mean.zarr")
        else:
            import dask

            ensemble, mean = dask.compute(ensemble, mean)
        names = tuple(ensemble.data_vars)
        truth = pair.fine[list(names)].compute()
        bilinear = bilinear_baseline(pair, names).compute()
    finally:
        if bar is not None:
            bar.unregister()
    stats = pair.stats
    std = {n: float(stats[n].sel(stat="std")) for n in names}
    scores = compute_scores(ensemble, mean, bilinear, truth, std=std)
    return DemoResult(ensemble, mean, bilinear, truth, scores)


def _write_json(data: Any, path: Path) -> None:
    write_bytes(path, json.dumps(data, indent=2).encode(), fsync=False)


# -- the command ------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    from corrdiff_xr.cli import bounded

    parser.add_argument("--out", required=True, type=Path,
                        help="output directory: new, empty, or an earlier demo output (with "
                        "--overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo output in --out (never anything else)")
    parser.add_argument("--members", type=bounded(int, minimum=1), default=8,
                        help="ensemble size (default 8)")
    parser.add_argument("--times", type=bounded(int, minimum=1, maximum=HELD_OUT_TIMES),
                        default=4, help="held-out hourly time steps to downscale (default 4, "
                        f"at most {HELD_OUT_TIMES})")
    parser.add_argument("--steps", type=bounded(int, minimum=1), default=DEMO_STEPS,
                        help=f"sampler steps (default {DEMO_STEPS})")
    parser.add_argument("--sigma-max", type=bounded(float, above=0), default=DEMO_SIGMA_MAX,
                        help=f"largest noise level of the sampler (default {DEMO_SIGMA_MAX:g})")
    parser.add_argument("--seed", type=bounded(int, minimum=0), default=0,
                        help="ensemble seed (default 0)")
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint to use instead of the shipped tiny model")
    parser.add_argument("--cache-dir", default=None,
                        help="data cache (default $CORRDIFF_XR_CACHE or ~/.cache/corrdiff_xr)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _checked_model(path: Path | None) -> Path:
    """The checkpoint to use, refused now if missing or not a corrdiff_xr checkpoint."""
    from corrdiff_xr.model import read_checkpoint_header

    model = path or shipped_model_path()
    if not model.is_file():
        raise InputNotFoundError(f"--model {model} does not exist (or is not a file)")
    read_checkpoint_header(model)  # CheckpointError for anything CorrDiff.save did not write
    return model


def run(args: argparse.Namespace) -> int:
    from corrdiff_xr import plot
    from corrdiff_xr._outputs import output_directory, writing
    from corrdiff_xr.data.catalog import cache_root

    start = time.perf_counter()
    model = _checked_model(args.model)
    out = args.out.expanduser()
    # --out is checked (and refused) before the slow first-time data build
    with writing(out, what="demo output"), output_directory(
        out, kind=KIND, names=DEMO_FILES, overwrite=args.overwrite, what="--out"
    ) as staged:
        with writing(cache_root(args.cache_dir), what="demo data cache"):
            pair = open_demo_data(cache_dir=args.cache_dir, times=args.times)
        print(f"downscaling {pair.dataset.sizes[TIME]} held-out time steps x {args.members} "
              f"members (Heun, {args.steps} steps from sigma {args.sigma_max:g}) with "
              f"{model.name}")
        result = evaluate(pair, model, members=args.members, steps=args.steps,
                          sampler={"sigma_max": args.sigma_max}, seed=args.seed, out=staged,
                          progress=not args.quiet)
        _write_json(result.scores, staged / "scores.json")
        if not args.no_plots:
            plot.save_report(result.ensemble, result.truth, staged, inputs=pair.coarse)
    print(format_table(result.scores))
    print(f"\nwrote {out}/ensemble.zarr, regression_mean.zarr, scores.json"
          f"{'' if args.no_plots else ', maps.png, spectra.png, rank_histogram.png'} "
          f"in {time.perf_counter() - start:.0f} s")
    return 0
