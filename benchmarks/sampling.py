"""Ensemble quality against cost, per solver and step count, and PhysicsNeMo's sampler beside it.

A model downscales held-out data with every setting below, the same members, seed and times;
each setting is scored against the truth:

* ``crps_fair`` and ``crps``: the fair CRPS (Ferro 2014) and properscoring's, each over the
  target's std in the model's statistics, averaged over the targets
  (:func:`corrdiff_xr.inference.calibrate.ensemble_scores`); the rules below compare
  settings by the fair one, which is not biased towards under-dispersed ensembles;
* ``spread_skill``: ensemble spread over RMSE of the ensemble mean (1 = calibrated);
* ``rank_flatness``: RMS of ``(M + 1) p_r - 1`` over the ranks r of the rank histogram
  (0 = flat, larger = under- or over-dispersed); ``rank_histogram`` holds ``p_r``;
* ``small_scale_power``: mean power spectral density of the members over the truth's, over
  the upper half of the wavenumbers (1 = the right amount of fine-scale variance);
* ``nfe``: network calls per member (Heun: 2 N - 1 for N steps; Euler, DPM-Solver++: N);
* ``members_per_s``: members per second on this machine through ``downscale`` (regression
  mean, graph and decoding included).

Two models (``--model``):

* ``demo`` (default): the shipped model on the demo's held-out hours, whole domain 64 x 64.
  The *reference* runs beside it in the same process: PhysicsNeMo 2.2.2's
  ``deterministic_sampler`` (Heun, 18 steps, sigma_max 800: the paper's setting) on the same
  weights copied into its networks and from the same latents (``_reference_sampler.py``),
  timed and scored like ours, once one member per call (its ``generate``'s default
  ``seed_batch_size``) and once all members per call; the faster is the baseline.
  ``reference_max_abs_diff`` is its largest difference from our baseline members.
  ``confirmation`` re-scores the baseline, chosen and calibrated settings on the next
  ``--confirm`` held-out hours, which played no part in choosing them.
* ``uk``: the tiny configs trained on the UK 1.5 km sample (``train_uk_model.py``), sampled
  in 64 x 64 patches (the training patch) over its 204 x 184 domain at the held-out time.

With the demo model it also runs ``seams.py`` (the demo's sampler, 32 x 32 patches) and
lifts ``seam_gradient_ratio`` and ``patched_vs_whole_crps_ratio`` to the top level.

The baseline is the reference's setting (Heun, 18 steps, sigma_max 800). The chosen setting
is the cheapest whose CRPS is within 1 % of the baseline's and whose spread-skill is at least
as close to 1. ``members_per_s_speedup_equal_crps`` is its members per second over the
reference sampler's (demo: measured side by side; uk: over our own baseline, the reference
not being run there). The calibrated setting is what ``corrdiff-xr calibrate`` picks
(:func:`corrdiff_xr.inference.calibrate.most_calibrated`): spread-skill closest to 1 with CRPS
within 1 %. Churn and sigma_max sweeps show how calibration moves.

Usage::

    python benchmarks/sampling.py --json benchmarks/results/sampling.json [--members 8 --times 8]
    python benchmarks/sampling.py --model uk --model-path WORK/uk_tiny.safetensors \\
        --json benchmarks/results/sampling_uk.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_shipped_model import sha256  # noqa: E402

from corrdiff_xr.inference.calibrate import RULE_SCORE, ensemble_scores, target_std  # noqa: E402

BASELINE = ("heun", 18, 800.0, 0.0)
#: (solver, steps, sigma_max, S_churn[, S_noise])
SETTINGS = [
    BASELINE,
    ("heun", 6, 800.0, 0.0),
    ("heun", 9, 800.0, 0.0),
    ("heun", 12, 800.0, 0.0),
    ("euler", 12, 800.0, 0.0),
    ("euler", 24, 800.0, 0.0),
    ("dpmpp_2m", 6, 800.0, 0.0),
    ("dpmpp_2m", 7, 800.0, 0.0),
    ("dpmpp_2m", 8, 800.0, 0.0),
    ("dpmpp_2m", 9, 800.0, 0.0),
    ("dpmpp_2m", 10, 800.0, 0.0),
    ("dpmpp_2m", 12, 800.0, 0.0),
    ("dpmpp_2m", 16, 800.0, 0.0),
    ("dpmpp_2m_sde", 8, 800.0, 0.0),
    ("dpmpp_2m_sde", 12, 800.0, 0.0),
    ("dpmpp_2m_sde", 16, 800.0, 0.0),
    ("dpmpp_2m_sde", 24, 800.0, 0.0),
    # calibration sweeps: sigma_max, then churn (gamma = min(S_churn / N, sqrt(2) - 1), so
    # S_churn >= 0.41 N is the strongest churn there is)
    ("heun", 12, 80.0, 0.0),
    ("heun", 12, 20.0, 0.0),
    ("dpmpp_2m", 7, 200.0, 0.0),
    ("dpmpp_2m", 8, 400.0, 0.0),
    ("dpmpp_2m", 8, 200.0, 0.0),
    ("dpmpp_2m", 8, 80.0, 0.0),
    ("dpmpp_2m", 8, 20.0, 0.0),
    ("dpmpp_2m", 10, 80.0, 0.0),
    ("heun", 12, 80.0, 1.0),
    ("heun", 12, 80.0, 3.0),
    ("dpmpp_2m", 8, 800.0, 1.0),
]
#: the UK model's patched sampling is ~10x dearer per member: the informative subset
UK_SETTINGS = [
    BASELINE,
    ("heun", 12, 800.0, 0.0),
    ("heun", 12, 80.0, 0.0),
    ("euler", 12, 800.0, 0.0),
    ("dpmpp_2m", 6, 800.0, 0.0),
    ("dpmpp_2m", 8, 800.0, 0.0),
    ("dpmpp_2m", 9, 800.0, 0.0),
    ("dpmpp_2m", 10, 800.0, 0.0),
    ("dpmpp_2m", 12, 800.0, 0.0),
    ("dpmpp_2m", 8, 200.0, 0.0),
    ("dpmpp_2m", 8, 80.0, 0.0),
    ("dpmpp_2m_sde", 12, 800.0, 0.0),
    ("heun", 6, 800.0, 0.0),
    ("heun", 9, 800.0, 0.0),
    ("heun", 13, 800.0, 0.0),
    ("heun", 14, 800.0, 0.0),
    ("heun", 15, 800.0, 0.0),
    ("heun", 12, 80.0, 3.0),
    ("heun", 12, 80.0, 6.0),
    ("heun", 15, 800.0, 3.0),
    ("heun", 18, 800.0, 10.0),
    ("dpmpp_2m", 8, 800.0, 1.0),
    # churn noise inflated (EDM's S_noise > 1) at the strongest churn: spread bought with skill
    ("heun", 12, 80.0, 40.0, 1.25),
    ("heun", 12, 80.0, 40.0, 1.5),
]


def _score(ens, truth, names, std) -> dict:
    out = {"rank_flatness": [], "small_scale_power": []}
    hists = []
    members = ens.sizes["member"]
    for n in names:
        fc, tr = ens[[n]], truth[[n]]
        hist = fc.corrdiff.rank_histogram(tr, normalize=True)[n].values
        hists.append(hist)
        out["rank_flatness"].append(float(np.sqrt(np.mean(((members + 1) * hist - 1) ** 2))))
        p_fc = fc.corrdiff.power_spectrum()[n].mean("member")
        p_tr = tr.corrdiff.power_spectrum()[n]
        half = p_tr.sizes[p_tr.dims[-1]] // 2
        out["small_scale_power"].append(
            float(p_fc.isel({p_fc.dims[-1]: slice(half, None)}).mean())
            / float(p_tr.isel({p_tr.dims[-1]: slice(half, None)}).mean())
        )
    scores = ensemble_scores(ens, truth, std) | {k: float(np.mean(v)) for k, v in out.items()}
    scores["rank_histogram"] = [round(float(v), 4) for v in np.mean(hists, axis=0)]
    return scores


def _choose(rows: list[dict]) -> dict:
    base = rows[0]
    ok = [
        r for r in rows
        if r[RULE_SCORE] <= 1.01 * base[RULE_SCORE]
        and abs(r["spread_skill"] - 1) <= abs(base["spread_skill"] - 1) + 1e-12
    ]  # fmt: skip
    return min(ok, key=lambda r: (r["nfe"], r[RULE_SCORE]))


def _data(kind: str, times: int):
    """(held-out pair, downscale kwargs) of a model kind."""
    from corrdiff_xr import demo

    if kind == "demo":
        return demo.open_demo_data(times=times), {}
    from train_uk_model import HELD_OUT, PATCH, SOURCE

    from corrdiff_xr.data import open_source

    return open_source(SOURCE).sel(time=slice(HELD_OUT, None)), {"patch": PATCH}


def _truth(pair, model_path):
    """(truth, target names, the model's std per target) of a pair, for :func:`_score`."""
    return pair.fine.load(), list(pair.targets), target_std(model_path)


def _measure(data, truth, model_path, members, steps, sampler, **extra) -> tuple[dict, object]:
    """Downscale ``data`` with one setting: (members per second and scores, the ensemble)."""
    t0 = time.perf_counter()
    ens = data.corrdiff.downscale(
        model_path, members=members, seed=0, steps=steps, sampler=sampler, **extra
    ).compute(scheduler="sync")
    wall = time.perf_counter() - t0
    row = {"members_per_s": members * data.sizes["time"] / wall, **_score(ens, *truth)}
    return row, ens


def run(
    kind: str, model_path: str, members: int, times: int, *, quick: bool = False, confirm: int = 0
) -> dict:
    import corrdiff_xr  # noqa: F401  (the accessor)
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.inference.calibrate import network_calls

    pair, extra = _data(kind, times)
    truth = _truth(pair, model_path)
    data = pair.dataset.load()
    n_times = data.sizes["time"]
    rows = []
    settings = SETTINGS if kind == "demo" else UK_SETTINGS
    for solver, steps, sigma_max, churn, *more in settings[:3] if quick else settings:
        s_noise = more[0] if more else 1.0
        sampler = {"solver": solver, "sigma_max": sigma_max, "S_churn": churn, "S_noise": s_noise}
        scores, ens = _measure(data, truth, model_path, members, steps, sampler, **extra)
        calls = network_calls(SamplerConfig(solver=solver, num_steps=steps))
        row = {"solver": solver, "steps": steps, "sigma_max": sigma_max, "S_churn": churn,
               "S_noise": s_noise, "nfe": calls, "calls": calls, **scores}  # fmt: skip
        if not rows:
            baseline_ens = ens
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    reference = (
        _reference(model_path, pair, baseline_ens, truth, members) if kind == "demo" else None
    )
    result = _summary(rows, reference, members, n_times)
    if kind == "demo" and confirm:
        result["confirmation"] = _confirm(model_path, rows, members, times, confirm)
    if kind == "demo" and not quick:  # the seam keys of issue 11, with the demo's sampler
        import seams

        seam = seams.run(members, times, None)
        result["seam_gradient_ratio"] = seam["seam_gradient_ratio"]
        result["patched_vs_whole_crps_ratio"] = seam["patched_vs_whole_crps_ratio"]
        result["seams"] = seam
    return result


def _confirm(model_path, rows, members: int, skip: int, count: int) -> dict:
    """Baseline, chosen and calibrated settings again on the *next* ``count`` held-out hours.

    The choice above is made on the first ``skip`` hours, so its scores there are biased in
    its favour (the best of many noisy rows); these hours played no part in it.
    """
    from corrdiff_xr import demo
    from corrdiff_xr.inference.calibrate import most_calibrated

    pair = demo.open_demo_data(times=skip + count).isel(time=slice(skip, None))
    truth, data = _truth(pair, model_path), pair.dataset.load()

    picks = {
        "baseline": rows[0],
        "chosen": _choose(rows),
        "calibrated": rows[most_calibrated(rows)],
    }
    out = {"hours": [skip, skip + count]}
    for label, row in picks.items():
        sampler = {k: row[k] for k in ("solver", "sigma_max", "S_churn", "S_noise")}
        scores, _ = _measure(data, truth, model_path, members, row["steps"], sampler)
        out[label] = {"setting": sampler | {"steps": row["steps"]}, **scores}
        print(label, {k: v for k, v in out[label].items() if k != "rank_histogram"}, flush=True)
    for key, suffix in ((RULE_SCORE, ""), ("crps", "_properscoring")):
        out[f"crps_ratio_chosen_vs_baseline{suffix}"] = out["chosen"][key] / out["baseline"][key]
    return out


def _reference(model_path, pair, ours, truth, members) -> dict:
    """The reference's sampler at the baseline setting on the same weights, scored and timed."""
    from _reference_sampler import reference_ensemble

    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.model import CorrDiff

    model = CorrDiff.load(model_path).eval()
    sampler = SamplerConfig(solver=BASELINE[0], num_steps=BASELINE[1], sigma_max=BASELINE[2])
    first = pair.isel(time=slice(0, 1))
    walls = {}
    for batch in (1, members):  # its generate's default seed_batch_size, and all members at once
        reference_ensemble(
            model, first, members=batch, sampler=sampler, seed_batch=batch
        )  # warm-up
        ens, walls[batch] = reference_ensemble(
            model, pair, members=members, sampler=sampler, seed_batch=batch
        )
    diff = max(float(np.abs(ens[n].values - ours[n].transpose(*ens[n].dims).values).max())
               for n in truth[1])  # fmt: skip
    n = members * ens.sizes["time"]
    row = {"solver": "heun (PhysicsNeMo deterministic_sampler)", "steps": BASELINE[1],
           "sigma_max": BASELINE[2], "S_churn": 0.0, "nfe": 2 * BASELINE[1] - 1,
           "members_per_s": n / min(walls.values()),
           "members_per_s_seed_batch_1": n / walls[1],
           f"members_per_s_seed_batch_{members}": n / walls[members],
           "reference_max_abs_diff": diff, **_score(ens, *truth)}  # fmt: skip
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def _summary(rows: list[dict], reference: dict | None, members: int, times: int) -> dict:
    from corrdiff_xr.inference.calibrate import most_calibrated

    base, chosen = rows[0], _choose(rows)
    calibrated = rows[most_calibrated(rows)]
    against = reference or base
    return {
        "members_per_s_speedup_equal_crps": chosen["members_per_s"] / against["members_per_s"],
        "speedup_measured_against": "PhysicsNeMo deterministic_sampler, Heun 18, same weights"
        if reference
        else "our Heun 18 (the reference was not run on this model)",
        "speedup_vs_our_heun18": chosen["members_per_s"] / base["members_per_s"],
        "reference_vs_our_heun18_members_per_s": base["members_per_s"] / reference["members_per_s"]
        if reference
        else None,
        "nfe_ratio_baseline_vs_chosen": base["nfe"] / chosen["nfe"],
        "chosen_solver": chosen["solver"],
        "chosen_nfe": chosen["nfe"],
        "chosen": chosen,
        "crps_ratio_chosen_vs_baseline": chosen[RULE_SCORE] / base[RULE_SCORE],
        "crps_ratio_chosen_vs_baseline_properscoring": chosen["crps"] / base["crps"],
        "crps_ratio_chosen_vs_reference": chosen[RULE_SCORE] / reference[RULE_SCORE]
        if reference
        else None,
        "crps_ratios_use": f"{RULE_SCORE} (the fair CRPS); *_properscoring: properscoring's",
        "spread_skill_baseline": base["spread_skill"],
        "spread_skill_chosen": chosen["spread_skill"],
        "spread_skill_calibrated": calibrated["spread_skill"],
        "calibrated_setting": calibrated,
        "reference": reference,
        "members": members,
        "times": times,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", choices=["demo", "uk"], default="demo")
    parser.add_argument("--model-path", help="checkpoint (default: the shipped demo model)")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--times", type=int, default=8, help="held-out times (demo)")
    parser.add_argument("--quick", action="store_true", help="3 settings only (a smoke run)")
    parser.add_argument(
        "--confirm",
        type=int,
        default=24,
        help="later held-out hours to re-score the picks on (demo)",
    )
    args = parser.parse_args()
    import torch

    from corrdiff_xr.model import shipped_model_path

    if args.model == "uk" and not args.model_path:
        parser.error("--model uk needs --model-path (train it with benchmarks/train_uk_model.py)")
    torch.set_num_threads(1)
    load = os.getloadavg()
    path = args.model_path or str(shipped_model_path())
    result = run(args.model, path, args.members, args.times, quick=args.quick, confirm=args.confirm)
    result["model"] = {"kind": args.model, "file": os.path.basename(path), "sha256": sha256(path)}
    result["machine"] = {"load_avg_start": load, "load_avg_end": os.getloadavg(),
                         "cpus": os.cpu_count(), "python": platform.python_version()}  # fmt: skip
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows",)}, indent=2))


if __name__ == "__main__":
    main()
