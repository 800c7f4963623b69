"""The demo: the shipped tiny CorrDiff on held-out synthetic data, end to end.

The library behind ``corrdiff-xr demo --out DIR`` (:mod:`corrdiff_xr.cli.demo`), which needs
no download. It

1. opens the ``demo`` entry of the bundled demo catalog (the synthetic dataset, built and
   cached as Zarr on first use) and keeps the *held-out* days: the shipped model was trained
   on the first 20 days of that store (see ``benchmarks/train_shipped_model.py``) and its
   student distilled on the same days (``benchmarks/distil.py``);
2. downscales an ensemble and the regression mean lazily with ``ds.corrdiff.downscale`` and
   writes them to ``DIR/ensemble.zarr`` and ``DIR/regression_mean.zarr`` (atomically) under a
   dask progress bar. The model is the shipped *student* (:func:`shipped_student_path`: the
   shipped model distilled to one network call per member, its calibrated sampler settings
   stored in the checkpoint); the sampler is the model's own defaults
   (:func:`demo_sampler`), or :data:`DEMO_SAMPLER` for a model without them (the teacher,
   :func:`shipped_model_path`);
3. scores the ensemble (CRPS), the regression mean (MAE) and bilinear interpolation of the
   coarse input (MAE) against the truth, plus the ensemble's spread-skill ratio, and writes
   ``DIR/scores.json`` and a printed table;
4. draws ``DIR/maps.png``, ``DIR/spectra.png`` and ``DIR/rank_histogram.png``.

``scores.json`` holds four keys, ``crps``, ``mae_regression``, ``mae_bilinear`` and
``spread_skill``, each a mapping from target variable to its score (physical units; the
spread-skill ratio is dimensionless) plus ``"overall"``: the mean over variables of the score
divided by that variable's standard deviation in the dataset (for ``spread_skill``, the plain
mean of the ratios). CRPS is properscoring's estimator (the empirical ensemble's CRPS, which
for a small ensemble is higher than the "fair" estimate, so the comparison with MAE is
conservative); MAE is the mean absolute error over time, y and x.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from corrdiff_xr._atomic import write_bytes
from corrdiff_xr.dims import MEMBER
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model import shipped_model_path, shipped_student_path
from corrdiff_xr.scoring.baselines import bilinear_baseline

if TYPE_CHECKING:
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.inference.packages import ModelLike
    from corrdiff_xr.model import CorrDiff

__all__ = [
    "DEMO_FILES",
    "DEMO_SAMPLER",
    "DEMO_SIGMA_MAX",
    "DEMO_SOLVER",
    "DEMO_SOURCE",
    "DEMO_STEPS",
    "HELD_OUT_START",
    "SCORE_KEYS",
    "DemoError",
    "DemoResult",
    "bilinear_baseline",
    "compute_scores",
    "demo_sampler",
    "evaluate",
    "format_table",
    "open_demo_data",
    "shipped_model_path",
    "shipped_student_path",
]

#: hourly steps of the demo store the shipped model was built with (20 days + 3 held out)
DEMO_NT = 552
#: the demo data: the ``demo`` entry of the bundled demo catalog (with ``nt=DEMO_NT``)
DEMO_SOURCE = "catalog:demo/demo"
#: first held-out time: the shipped model never saw this day or later ones
HELD_OUT_START = "2020-01-21T00:00"
SCORE_KEYS = ("crps", "mae_regression", "mae_bilinear", "spread_skill")
#: the demo's sampler for a model without sampler defaults (the shipped teacher):
#: DPM-Solver++(2M), 7 steps (7 network calls per member) from sigma_max = 200, the cheapest
#: setting that benchmarks/sampling.py finds within 1 % of the reference's Heun-18 CRPS (35
#: calls) and at least as well calibrated, on held-out hours. The shipped student carries its
#: own (1 call; benchmarks/distil.py).
DEMO_SOLVER = "dpmpp_2m"
DEMO_STEPS = 7
DEMO_SIGMA_MAX = 200.0
DEMO_SAMPLER = {"solver": DEMO_SOLVER, "num_steps": DEMO_STEPS, "sigma_max": DEMO_SIGMA_MAX}
OVERALL = "overall"
#: held-out hourly steps (3 days)
HELD_OUT_TIMES = 72
#: what the demo writes into its output directory (the product kind is "demo")
DEMO_FILES = (
    "ensemble.zarr",
    "regression_mean.zarr",
    "scores.json",
    "maps.png",
    "spectra.png",
    "rank_histogram.png",
)
KIND = "demo"


class DemoError(CorrDiffError, ValueError):
    """The demo cannot run with the settings or model given."""


def open_demo_data(
    *, cache_dir: str | os.PathLike | None = None, times: int | None = None, seed: int = 0
) -> DownscalingData:
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
    from corrdiff_xr.data import open_source

    params = {"cache_dir": os.fspath(cache_dir or ""), "nt": DEMO_NT, "seed": seed}
    pair = open_source(DEMO_SOURCE, params=params)
    held = pair.sel(time=slice(HELD_OUT_START, None))
    if times is not None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        held = held.isel(time=slice(0, int(times)))
    return held


def demo_sampler(
    model: CorrDiff | str | os.PathLike[str],
    *,
    solver: str | None = None,
    steps: int | None = None,
    sigma_max: float | None = None,
) -> tuple[dict[str, Any], str]:
    """The demo's sampler settings for ``model`` and where they came from.

    The model's own sampler defaults (a calibrated checkpoint's ``sampler``), else
    :data:`DEMO_SAMPLER`; ``solver``, ``steps`` and ``sigma_max`` replace theirs unless None.
    Returns ``(settings, origin)``: every :class:`~corrdiff_xr.config.SamplerConfig` field
    (the mapping ``downscale`` takes) and ``"model defaults"``, ``"demo defaults"`` or the
    same with ``", overridden"`` (when a given value differs).

    Parameters
    ----------
    model : CorrDiff or path
        A loaded model or a checkpoint (only its header is read).
    """
    from corrdiff_xr.config import SamplerConfig, from_dict, to_dict
    from corrdiff_xr.model import read_checkpoint_header

    if isinstance(model, (str, os.PathLike)):
        own = read_checkpoint_header(model).get("sampler")
    else:
        own = None if model.sampler_config is None else to_dict(model.sampler_config)
    base = dict(own) if own else dict(DEMO_SAMPLER)
    given = {"solver": solver, "num_steps": steps, "sigma_max": sigma_max}
    given = {k: v for k, v in given.items() if v is not None and v != base.get(k)}
    settings = to_dict(from_dict(SamplerConfig, {**base, **given}, path="sampler"))
    origin = ("model defaults" if own else "demo defaults") + (", overridden" if given else "")
    return settings, origin


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

    names = [str(n) for n in ensemble.data_vars]
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
    from corrdiff_xr.data.write import write_dataset

    # replaces only an earlier demo store (see corrdiff_xr._outputs.check_output)
    write_dataset(ds, path, overwrite=True, kind=KIND)
    return xr.open_zarr(path)


def evaluate(
    pair: DownscalingData,
    model: ModelLike,
    *,
    members: int = 8,
    steps: int | None = None,
    sampler: str | dict[str, Any] | SamplerConfig | None = None,
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
