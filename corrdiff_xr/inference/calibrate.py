"""Sampler calibration: the setting whose ensemble spread matches its error, at no loss of skill.

CorrDiff ensembles tend to be under-dispersed (the paper's own finding), and how much depends
on the sampler: the solver, the number of steps, ``sigma_max`` and churn all move the spread
(see ``benchmarks/sampling.py``). :func:`calibrate` downscales a validation period with each
candidate setting, the same members and seed, and scores it against the truth
(:func:`ensemble_scores`, each target's score over its std in the model's statistics, or for a
transformed target the truth's own std, in physical units (:func:`target_std`), then
averaged over the targets):

* ``crps_fair``: the fair CRPS (Ferro 2014), unbiased for the CRPS of the distribution the
  members are drawn from, and ``crps``, properscoring's estimator;
* ``spread_skill``: ensemble spread over the RMSE of the ensemble mean (1 = calibrated).

The baseline is the first candidate (by default the model's own sampler defaults, else the
reference's setting). Among the candidates whose fair CRPS is at most ``1 + tolerance`` times
the baseline's, the one with the spread-skill ratio closest to 1 is chosen (ties: fewer
network calls per member). Why the fair estimator: properscoring's subtracts the members'
mean pairwise distance over ``2 M^2`` instead of ``2 M (M - 1)``, so it rewards
under-dispersion: for a Gaussian truth, M members drawn with s times the right spread score
best at ``s = a / sqrt(1 - a^2)``, ``a = (1 - 1/M) / sqrt(2)`` (s = 0.63 for 4 members, 0.79
for 8), and a calibration judged by it would stop short of spread-skill 1. The fair CRPS is
best at s = 1 whatever M.

``corrdiff-xr calibrate`` records the choice in a copy of the checkpoint
(:attr:`corrdiff_xr.model.CorrDiff.sampler_config`), which ``downscale`` and ``generate``
then use whenever no sampler is given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_xr.config import SamplerConfig, from_dict, to_dict
from corrdiff_xr.dims import MEMBER, TIME

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.inference.packages import DataLike, ModelLike
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.scoring.metrics import Estimator

__all__ = [
    "CANDIDATES",
    "RULE_SCORE",
    "Calibration",
    "calibrate",
    "default_candidates",
    "ensemble_scores",
    "most_calibrated",
    "network_calls",
    "target_std",
]

#: the CRPS estimator the choice is made with (see the module docstring)
RULE_SCORE = "crps_fair"
#: row key of a candidate's bootstrap interval of (its fair CRPS - the baseline's) / baseline's
_DIFF = "crps_fair_diff"

#: default candidates after the baseline: cheap second-order solvers, and sigma_max / churn
#: variants that raise or lower the spread (each a partial SamplerConfig)
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"solver": "heun", "num_steps": 18, "sigma_max": 800.0},
    {"solver": "heun", "num_steps": 12, "sigma_max": 80.0},
    {"solver": "heun", "num_steps": 12, "sigma_max": 20.0},
    {"solver": "heun", "num_steps": 12, "sigma_max": 80.0, "S_churn": 1.0},
    {"solver": "heun", "num_steps": 14, "sigma_max": 800.0},
    {"solver": "heun", "num_steps": 15, "sigma_max": 800.0, "S_churn": 3.0},
    {"solver": "heun", "num_steps": 18, "sigma_max": 800.0, "S_churn": 10.0},
    {"solver": "dpmpp_2m", "num_steps": 8, "sigma_max": 800.0},
    {"solver": "dpmpp_2m", "num_steps": 10, "sigma_max": 800.0},
    {"solver": "dpmpp_2m", "num_steps": 12, "sigma_max": 800.0},
    {"solver": "dpmpp_2m", "num_steps": 8, "sigma_max": 80.0},
    {"solver": "dpmpp_2m_sde", "num_steps": 16, "sigma_max": 800.0},
)


#: a distilled student's candidates (:mod:`corrdiff_xr.training.distil`): its noise scale
#: ``S_noise`` and, with 2 or 4 calls, its intermediate level ``sigma_min``, at its own calls
DISTILLED_NOISE = (0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.7)
DISTILLED_INTERMEDIATE = (0.25, 0.5, 1.0, 2.0, 4.0)


def default_candidates(own: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The candidates after a model's own defaults ``own``: :data:`CANDIDATES`, or for a
    distilled student (``solver="distilled"``) its free settings at its own calls."""
    if not own or own.get("solver") != "distilled":
        return list(CANDIDATES)
    fixed = {k: own[k] for k in ("solver", "num_steps", "sigma_max", "rho") if k in own}
    hi = float(own.get("sigma_max", SamplerConfig().sigma_max))
    levels = [None] if fixed.get("num_steps", 1) == 1 else [v for v in DISTILLED_INTERMEDIATE
                                                            if v < hi]  # fmt: skip
    return [{**fixed, "S_noise": s} | ({} if v is None else {"sigma_min": v})
            for v in levels for s in DISTILLED_NOISE]  # fmt: skip


def network_calls(cfg: SamplerConfig) -> int:
    """Denoiser calls per member: Heun ``2 N - 1`` (the last step is Euler), else ``N``."""
    from corrdiff_xr.sampling import SOLVERS

    return SOLVERS[cfg.solver].calls(cfg.num_steps)


def most_calibrated(
    rows: Sequence[Mapping[str, Any]], *, tolerance: float = 0.01, score: str = RULE_SCORE
) -> int:
    """Index of the row (``score``, ``spread_skill``, ``calls``) that :func:`calibrate` picks.

    Among the rows whose ``score`` (the fair CRPS by default) is at most ``1 + tolerance``
    times the first row's (the baseline's) and, when a row carries the bootstrap interval of
    its relative difference to the baseline (``crps_fair_diff``, see :func:`calibrate`),
    whose upper bound is at most ``tolerance``, the spread-skill ratio closest to 1; ties go
    to fewer network calls.
    """
    limit = (1 + tolerance) * rows[0][score]
    eligible = [
        i
        for i, r in enumerate(rows)
        if r[score] <= limit and r.get(_DIFF, (0.0, 0.0))[1] <= tolerance  # the interval's top
    ]
    return min(eligible, key=lambda i: (abs(rows[i]["spread_skill"] - 1), rows[i]["calls"]))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The scores of every candidate, the baseline and the chosen setting."""

    table: tuple[dict[str, Any], ...]
    baseline: SamplerConfig
    chosen: SamplerConfig

    def format(self) -> str:
        """The table as text, the chosen row marked: the averaged scores in units of each
        target's std (what the rule compares) with the interval of the fair CRPS relative to
        the baseline's, then each target's in its own units."""
        per = self.table[0].get("per_target", {})
        labels = [f"{n} {k} [{v['units']}]" for n, v in per.items() for k in ("crps_fair", "mae")]
        lines = [f"{'solver':<17} {'steps':>5} {'sigma_max':>9} {'churn':>5} {'S_noise':>7} "
                 f"{'sigma_min':>9} {'calls':>5} "
                 f"{'crps_fair/std':>13} {'vs baseline':>15} {'crps/std':>8} {'spread/skill':>12}"
                 + "".join(f" {label:>9}" for label in labels)]  # fmt: skip
        for row in self.table:
            s = row["sampler"]
            mark = "  <- chosen" if row["chosen"] else ""
            solver = s["solver"] + ("/bf16" if s.get("precision") == "bf16" else "")
            cells = [row["per_target"][n][k] for n in per for k in ("crps_fair", "mae")]
            lines.append(
                f"{solver:<17} {s['num_steps']:>5} {s['sigma_max']:>9g} {s['S_churn']:>5g} "
                f"{s['S_noise']:>7g} {s['sigma_min']:>9g} "
                f"{row['calls']:>5} {row['crps_fair']:>13.4f} {_percent(row.get(_DIFF)):>15} "
                f"{row['crps']:>8.4f} "
                f"{row['spread_skill']:>12.3f}"
                + "".join(f" {v:>{max(len(lb), 9)}.4g}" for v, lb in zip(cells, labels))
                + mark
            )
        return "\n".join(lines)


def _percent(bounds: Sequence[float] | None) -> str:
    """A relative interval as ``[-1.2, +0.4] %`` (blank without one)."""
    return "" if bounds is None else f"[{bounds[0] * 100:+.1f},{bounds[1] * 100:+.1f}]%"


def target_std(
    model: CorrDiff | str | os.PathLike[str], truth: xr.Dataset | None = None
) -> dict[str, float]:
    """Each target's scale in physical units, what :func:`ensemble_scores` divides its CRPS by.

    A target the model trains as it is takes its std in the model's normalisation statistics
    (a CorrDiff or checkpoint). A transformed target's statistics are of the transformed
    values (:mod:`corrdiff_xr.transforms`), not of the units its CRPS is in, so it takes the
    std of ``truth[name]`` (a Dataset of the targets, NaN skipped) when given, else half the
    physical width that the statistics' ``mean +- std`` decodes to.
    """
    from corrdiff_xr.inference.downscaling import model_header

    return _header_std(model_header(model), truth)


def _header_std(header: Mapping[str, Any], truth: xr.Dataset | None = None) -> dict[str, float]:
    from corrdiff_xr.inference.downscaling import _codec

    codec = _codec(header)
    out = {}
    for name in codec.out_channels:
        mean, std = (float(v) for v in codec.stats[name][:2])
        transform = codec.transforms.get(name)
        if transform is None:
            out[name] = std
            continue
        if truth is not None and name in truth.data_vars:
            out[name] = float(np.nanstd(np.asarray(truth[name].values, dtype=np.float64)))
        else:  # no truth: the decoded half-width of mean +- std, in physical units too
            ends = transform.inverse(np.array([mean - std, mean + std], dtype=np.float64))
            out[name] = float(ends[1] - ends[0]) / 2
        if not np.isfinite(out[name]) or out[name] <= 0:
            raise ValueError(
                f"target '{name}' has no spread to scale its CRPS by (std {out[name]:g}); "
                "calibrate on a period in which it varies"
            )
    return out


def ensemble_scores(ens: xr.Dataset, truth: xr.Dataset, std: Mapping[str, float]) -> dict[str, Any]:
    """``crps``, ``crps_fair`` and ``spread_skill`` of an ensemble, averaged over targets,
    ``per_target``: each target's fair CRPS and ensemble-mean MAE in its ``units``, and
    ``crps_fair_by_time``: the averaged fair CRPS at each time (None without a time dim).

    Each target's CRPS (properscoring's estimator, and the fair one) is divided by its
    ``std`` before averaging, so targets in different units weigh alike; the spread-skill
    ratio is averaged as it is (see :mod:`corrdiff_xr.scoring` for the definitions).
    """
    from corrdiff_xr.scoring import crps, mae, spread_skill

    out: dict[str, list[float]] = {"crps": [], "crps_fair": [], "spread_skill": []}
    per_target: dict[str, dict[str, float | str]] = {}
    by_time: list[np.ndarray] = []
    estimators: tuple[tuple[str, Estimator], ...] = (
        ("crps", "properscoring"),
        ("crps_fair", "fair"),
    )
    for n, scale in std.items():
        fc, tr = ens[[n]], truth[[n]]
        for key, estimator in estimators:
            value = float(crps(fc, tr, estimator=estimator).to_array().mean())
            out[key].append(value / scale)
        if TIME in fc.dims:  # per time, for the bootstrap interval of a difference
            space = [d for d in fc[n].dims if d not in (TIME, MEMBER)]
            by_time.append(crps(fc, tr, estimator="fair", dim=space)[n].values / scale)
        out["spread_skill"].append(float(spread_skill(fc, tr).to_array().mean()))
        per_target[n] = {  # in the target's own units, for the reader
            "crps_fair": out["crps_fair"][-1] * scale,
            "mae": float(mae(fc, tr).to_array().mean()),
            "units": str(truth[n].attrs.get("units", "?")),
        }
    mean_by_time = np.mean(by_time, axis=0).tolist() if by_time else None
    return {**{key: float(np.mean(values)) for key, values in out.items()},
            "per_target": per_target, "crps_fair_by_time": mean_by_time}  # fmt: skip


def calibrate(
    data: DataLike,
    model: ModelLike,
    *,
    candidates: Sequence[Mapping[str, Any] | SamplerConfig] | None = None,
    members: int = 8,
    seed: int = 0,
    tolerance: float = 0.01,
    confidence: float | None = 0.95,
    block_length: int | None = None,
    precision: str | None = None,
    **downscale_kwargs: Any,
) -> Calibration:
    """Score each candidate sampler on ``data``'s targets and choose (module docstring).

    Parameters
    ----------
    data : DownscalingData or xr.Dataset
        A validation period with targets (what :func:`~corrdiff_xr.inference.downscale` takes).
    model : CorrDiff, Package or path
        The model to calibrate (a package's data: ``Package.pair(coarse, truth=...)``).
    candidates
        Settings to compare, the first being the baseline; mappings are partial
        SamplerConfigs. None: the model's own defaults (or ``SamplerConfig()``), then
        :func:`default_candidates` (a distilled student's: its noise scale and level).
    members, seed
        Ensemble size and seed (the same for every candidate).
    tolerance
        How much worse than the baseline's fair CRPS a chosen setting may be (0.01: 1 %).
    confidence
        A candidate is eligible only if, at this confidence, its fair CRPS is at most
        ``tolerance`` worse than the baseline's: the upper bound of the two-sided block-bootstrap
        interval over time (:mod:`corrdiff_xr.scoring.bootstrap`, paired) of
        ``(candidate - baseline) / baseline`` must be at most ``tolerance`` (a non-inferiority
        test, one-sided at ``(1 + confidence) / 2``). Each row records the interval as
        ``crps_fair_diff``. None: the point estimates alone decide, as before.
    block_length
        Consecutive times resampled together (default: the cube root of the number of times,
        as ``corrdiff-xr score`` uses), so that persistent weather does not narrow the interval.
    precision : {"fp32", "bf16"}, optional
        The residual network's arithmetic for every candidate (``SamplerConfig.precision``),
        so that the choice is scored as it will run and is saved with it. None: the
        candidates' own, and for the default candidates the model's defaults' (fp32 if none).
    **downscale_kwargs
        Passed to downscale (``patch``, ``chunks``, ``device`` ...).
    """
    from corrdiff_xr.data import DownscalingData
    from corrdiff_xr.inference.downscaling import _codec, downscale, model_header
    from corrdiff_xr.inference.packages import resolve

    model, data, _ = resolve(model, data)  # a package: its model, the data on its grids
    if members < 2:
        raise ValueError(f"calibration needs an ensemble: members must be >= 2, got {members}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    header = model_header(model)  # read once: the targets, their std, the model's defaults
    names = list(_codec(header).out_channels)
    pair_ds = data.dataset if isinstance(data, DownscalingData) else data
    missing = [n for n in names if n not in pair_ds.data_vars]
    if missing:
        raise ValueError(f"calibration needs the targets {missing} in the data (the truth)")
    truth = pair_ds[names].load()
    std = _header_std(header, truth)  # a transformed target's: the truth's own, in its units
    own = header.get("sampler")
    given = [own or {}, *default_candidates(own)] if candidates is None else list(candidates)
    if precision is None and candidates is None:
        precision = (own or {}).get("precision")
    configs: list[SamplerConfig] = []
    for cand in given:
        cfg = cand if isinstance(cand, SamplerConfig) else from_dict(SamplerConfig, dict(cand))
        if precision is not None:  # checked by SamplerConfig, as a sampler field
            cfg = from_dict(SamplerConfig, {**to_dict(cfg), "precision": precision})
        if cfg not in configs:  # the model's defaults may be one of the candidates
            configs.append(cfg)
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        ens = downscale(data, model, members=members, seed=seed, sampler=cfg, **downscale_kwargs)
        scores = ensemble_scores(ens.compute(), truth, std)
        rows.append({"sampler": to_dict(cfg), "calls": network_calls(cfg), **scores,
                     "chosen": False})  # fmt: skip
    if confidence is not None:
        _attach_intervals(rows, confidence=confidence, block_length=block_length, seed=seed)
    best = most_calibrated(rows, tolerance=tolerance)
    rows[best]["chosen"] = True
    return Calibration(tuple(rows), configs[0], configs[best])


def _attach_intervals(
    rows: list[dict[str, Any]], *, confidence: float, block_length: int | None, seed: int
) -> None:
    """Each row's ``crps_fair_diff``: the interval of its mean fair CRPS minus the baseline's,
    over the baseline's, from a paired block bootstrap over the times."""
    import xarray as xr

    from corrdiff_xr.scoring.bootstrap import difference_interval

    base = rows[0].get("crps_fair_by_time")
    if not base:
        return  # no time dim: nothing to resample
    n = len(base)
    length = block_length or max(1, round(n ** (1 / 3)))
    b = xr.DataArray(np.asarray(base), dims=TIME)
    scale = float(np.nanmean(base))
    for row in rows:
        a = xr.DataArray(np.asarray(row["crps_fair_by_time"]), dims=TIME)
        bounds = difference_interval(
            a, b, block_length=length, confidence=confidence, seed=seed
        ).values
        row[_DIFF] = (float(bounds[0]) / scale, float(bounds[1]) / scale)
