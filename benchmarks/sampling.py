"""Ensemble quality against cost, per solver and step count, on the shipped demo model.

The shipped model downscales the demo's held-out hours (whole domain, 64 x 64) with every
setting below, the same members, seed and times; each setting is scored against the truth:

* ``crps``: properscoring CRPS / std, averaged over the targets;
* ``spread_skill``: ensemble spread over RMSE of the ensemble mean (1 = calibrated);
* ``rank_flatness``: RMS of ``(M + 1) p_r - 1`` over the ranks r of the rank histogram
  (0 = flat, larger = under- or over-dispersed);
* ``small_scale_power``: mean power spectral density of the members over the truth's, over
  the upper half of the wavenumbers (1 = the right amount of fine-scale variance);
* ``nfe``: network calls per member (Heun: 2 N - 1 for N steps; Euler, DPM-Solver++: N);
* ``members_per_s``: members per second on this machine (regression mean included).

The baseline is the reference's setting (Heun, 18 steps, sigma_max 800). The chosen setting
is the cheapest whose CRPS is within 1 % of the baseline's and whose spread-skill is at least
as close to 1. ``churn`` and ``sigma_max`` sweeps of Heun at 12 steps show how calibration
moves. Written to ``--json PATH`` with the keys named in issue 11:
``members_per_s_speedup_equal_crps`` is the chosen setting's members per second over the
baseline's, both ours, measured here, times ``network_speedup_vs_reference`` (our sampler's
speed over PhysicsNeMo's on the same weights, read from ``results/vs_physicsnemo.json``, not
re-measured here); both factors are reported.

Usage::

    python benchmarks/sampling.py --json benchmarks/results/sampling.json [--members 8 --times 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

BASELINE = ("heun", 18, 800.0, 0.0)
#: (solver, steps, sigma_max, S_churn)
SETTINGS = [
    BASELINE,
    ("heun", 6, 800.0, 0.0),
    ("heun", 9, 800.0, 0.0),
    ("heun", 12, 800.0, 0.0),
    ("euler", 12, 800.0, 0.0),
    ("euler", 24, 800.0, 0.0),
    ("dpmpp_2m", 6, 800.0, 0.0),
    ("dpmpp_2m", 8, 800.0, 0.0),
    ("dpmpp_2m", 12, 800.0, 0.0),
    ("dpmpp_2m", 16, 800.0, 0.0),
    ("dpmpp_2m_sde", 8, 800.0, 0.0),
    ("dpmpp_2m_sde", 16, 800.0, 0.0),
    ("dpmpp_2m_sde", 24, 800.0, 0.0),
    ("dpmpp_2m", 10, 800.0, 0.0),
    # calibration sweeps: sigma_max, then churn (gamma = min(S_churn / N, sqrt(2) - 1), so
    # S_churn >= 0.41 N is the strongest churn there is)
    ("heun", 12, 80.0, 0.0),
    ("heun", 12, 20.0, 0.0),
    ("dpmpp_2m", 8, 80.0, 0.0),
    ("dpmpp_2m", 8, 20.0, 0.0),
    ("dpmpp_2m", 10, 80.0, 0.0),
    ("heun", 12, 80.0, 1.0),
    ("heun", 12, 80.0, 3.0),
]


def _score(ens, truth, names, std) -> dict[str, float]:
    out = {"crps": [], "spread_skill": [], "rank_flatness": [], "small_scale_power": []}
    members = ens.sizes["member"]
    for n in names:
        fc, tr = ens[[n]], truth[[n]]
        out["crps"].append(float(fc.corrdiff.crps(tr).to_array().mean()) / std[n])
        out["spread_skill"].append(float(fc.corrdiff.spread_skill(tr).to_array().mean()))
        hist = fc.corrdiff.rank_histogram(tr, normalize=True)[n].values
        out["rank_flatness"].append(float(np.sqrt(np.mean(((members + 1) * hist - 1) ** 2))))
        p_fc = fc.corrdiff.power_spectrum()[n].mean("member")
        p_tr = tr.corrdiff.power_spectrum()[n]
        half = p_tr.sizes[p_tr.dims[-1]] // 2
        out["small_scale_power"].append(
            float(p_fc.isel({p_fc.dims[-1]: slice(half, None)}).mean())
            / float(p_tr.isel({p_tr.dims[-1]: slice(half, None)}).mean())
        )
    return {k: float(np.mean(v)) for k, v in out.items()}


def _choose(rows: list[dict]) -> dict:
    base = rows[0]
    ok = [
        r for r in rows
        if r["crps"] <= 1.01 * base["crps"]
        and abs(r["spread_skill"] - 1) <= abs(base["spread_skill"] - 1) + 1e-12
    ]  # fmt: skip
    return min(ok, key=lambda r: (r["nfe"], r["crps"]))


def run(members: int, times: int) -> dict:
    import corrdiff_xr  # noqa: F401  (the accessor)
    from corrdiff_xr import demo
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.inference.calibrate import network_calls

    pair = demo.open_demo_data(times=times)
    truth = pair.fine.load()
    data = pair.dataset.load()
    names = list(pair.targets)
    std = {n: float(pair.stats[n].sel(stat="std")) for n in names}
    model = demo.shipped_model_path()
    rows = []
    for solver, steps, sigma_max, churn in SETTINGS:
        sampler = {"solver": solver, "sigma_max": sigma_max, "S_churn": churn}
        t0 = time.perf_counter()
        ens = data.corrdiff.downscale(
            model, members=members, seed=0, steps=steps, sampler=sampler
        ).compute(scheduler="sync")
        wall = time.perf_counter() - t0
        row = {"solver": solver, "steps": steps, "sigma_max": sigma_max, "S_churn": churn,
               "nfe": network_calls(SamplerConfig(solver=solver, num_steps=steps)), "members_per_s": members * times / wall,
               **_score(ens, truth, names, std)}  # fmt: skip
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return _summary(rows, members, times)


def _summary(rows: list[dict], members: int, times: int) -> dict:
    base, chosen = rows[0], _choose(rows)
    ref = Path(__file__).parent / "results" / "vs_physicsnemo.json"
    network = json.loads(ref.read_text()).get("sample_speedup") if ref.exists() else None
    ours = chosen["members_per_s"] / base["members_per_s"]
    calibrated = min(rows, key=lambda r: abs(r["spread_skill"] - 1))
    return {
        "members_per_s_speedup_equal_crps": ours * network if network else None,
        "speedup_vs_our_heun18": ours,
        "network_speedup_vs_reference": network,
        "nfe_ratio_baseline_vs_chosen": base["nfe"] / chosen["nfe"],
        "chosen_solver": chosen["solver"],
        "chosen_nfe": chosen["nfe"],
        "chosen": chosen,
        "crps_ratio_chosen_vs_baseline": chosen["crps"] / base["crps"],
        "spread_skill_baseline": base["spread_skill"],
        "spread_skill_chosen": chosen["spread_skill"],
        "spread_skill_calibrated": calibrated["spread_skill"],
        "calibrated_setting": calibrated,
        "members": members,
        "times": times,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--times", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    load = os.getloadavg()
    result = run(args.members, args.times)
    result["machine"] = {"load_avg_start": load, "load_avg_end": os.getloadavg(),
                         "cpus": os.cpu_count(), "python": platform.python_version()}  # fmt: skip
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows",)}, indent=2))


if __name__ == "__main__":
    main()
