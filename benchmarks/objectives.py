"""Training objectives against each other: residual EDM, direct EDM, t-EDM, flow-x, flow-v,
each with a SongUNet and a DiT, tiny, at one budget, on the demo data.

Every run starts from the shipped tiny configs (``tiny_regression`` / ``tiny_diffusion``:
64 x 64 demo grid, batch 4, lr 2e-3 with a 100-sample warm-up, gradient clip 1) and changes
only what its row names (``key=value`` overrides, as on the command line):

* ``residual_edm``: CorrDiff, EDM on the target minus a regression mean;
* ``direct_edm``: EDM on the target itself (``edm.objective=direct``, no regression stage);
* ``t_edm``: residual EDM with Student-t noise (``edm.nu=5``);
* ``flow_x`` / ``flow_v``: rectified flow on the target, x- or v-prediction
  (``edm.objective=direct edm.flow=x|v``, logit-normal t with ``P_std=1``, no time-shift:
  the demo grid is small).

The backbones: the tiny configs' U-Net (``songunet``) and a DiT of about the same number of
parameters (:data:`BACKBONES`). The budget is ``--samples`` training samples for every
diffusion model (the same for all ten); the residual objectives also use a regression model
trained on as many samples, one per backbone, shared by residual EDM and t-EDM (its CPU time
is reported apart, ``regression_cpu_s``). Each model then downscales the first ``--times``
held-out hours (never seen in training) with ``--members`` members, the same seed and the
demo's sampler (DPM-Solver++(2M), 7 steps, sigma_max 200: it samples every objective), and is
scored as ``benchmarks/sampling.py`` scores solvers:

* ``crps_fair``: the fair CRPS over each target's std, averaged over targets (lower is better);
* ``spread_skill``: ensemble spread over the RMSE of its mean (1 = calibrated);
* ``small_scale_power``: the members' power spectral density over the truth's in the upper
  half of the wavenumbers (1 = the right amount of fine-scale variance);
* ``train_cpu_s``: CPU seconds of this process while the diffusion model trained (all
  threads; ``--threads`` intra-op threads, 1 by default).

The default budget (800 samples per model, 12 models, 8 members x 8 hours) keeps the whole
run near 15 minutes on two busy CPU cores; at such a budget the models are far from trained
(the shipped model saw 3200 samples per stage), so the table ranks how fast each objective
learns, not where it ends. The machine's load is recorded: other work shared the CPUs.

Usage::

    python benchmarks/objectives.py --json benchmarks/results/objectives.json
        [--work DIR] [--samples 800] [--members 8] [--times 8] [--threads 1]
        [--backbones songunet dit] [--objectives residual_edm flow_x ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_shipped_model import CONFIGS, materialise  # noqa: E402

#: overrides of ``tiny_diffusion`` per objective (``REGRESSION`` is filled in per backbone)
REGRESSION = "training.regression_checkpoint"
OBJECTIVES: dict[str, list[str]] = {
    "residual_edm": [],
    "direct_edm": ["edm.objective=direct", f"{REGRESSION}=null"],
    "t_edm": ["edm.nu=5.0"],
    "flow_x": ["edm.objective=direct", "edm.flow=x", "edm.P_std=1.0", f"{REGRESSION}=null"],
    "flow_v": ["edm.objective=direct", "edm.flow=v", "edm.P_std=1.0", f"{REGRESSION}=null"],
}
#: overrides of both tiny configs per backbone; the DiT is sized to the tiny U-Net's weights
BACKBONES: dict[str, list[str]] = {
    "songunet": [],
    "dit": [
        "network.arch=dit",
        "network.options={patch_size: 4, hidden_size: 64, depth: 4, num_heads: 4}",
    ],
}
#: the demo's sampler (corrdiff_xr.demo.DEMO_SAMPLER): every objective samples with it
SAMPLER = {"solver": "dpmpp_2m", "sigma_max": 200.0}
STEPS = 7


def _train(config: str, overrides: list[str]) -> tuple[Path, float, int]:
    """Train in this process: (model file, CPU seconds, trainable parameters)."""
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.training import load_run_config, train

    cfg = load_run_config(CONFIGS / f"{config}.yaml", overrides)
    print("+ train", config, " ".join(overrides), flush=True)
    start = time.process_time()
    result = train(cfg)
    cpu = time.process_time() - start
    if not result.completed:
        raise RuntimeError(f"{config} {overrides} stopped early at {result.nimg} samples")
    path = result.output_dir / "model.safetensors"
    model = CorrDiff.load(path)
    net = model.regression if cfg.task == "regression" else model.residual
    return path, cpu, sum(p.numel() for p in net.parameters())


def _run_overrides(work: Path, name: str, samples: int) -> list[str]:
    """What every run shares: the cached demo data, the budget, its own output folder."""
    return [
        f"data.catalog_params.cache_dir={work / 'cache'}",
        f"training.duration={samples}",
        f"training.checkpoint_every={samples}",  # one checkpoint, at the end
        f"training.log_every={samples}",
        "training.progress=false",
        f"training.output_dir={work / name}",
    ]


def _score_model(path: Path, pair, truth, members: int) -> dict:
    """Downscale the held-out hours with the demo's sampler and score the ensemble."""
    from sampling import _score

    from corrdiff_xr.inference.calibrate import target_std

    data = pair.dataset.load()
    t0 = time.perf_counter()
    ens = data.corrdiff.downscale(
        str(path), members=members, seed=0, steps=STEPS, sampler=SAMPLER
    ).compute(scheduler="sync")
    wall = time.perf_counter() - t0
    scores = _score(ens, truth, list(truth.data_vars), target_std(str(path)))
    return {**scores, "sample_wall_s": wall}


def run(args: argparse.Namespace) -> dict:
    import corrdiff_xr  # noqa: F401  (the accessor)
    from corrdiff_xr import demo

    work = args.work.resolve()
    materialise(work / "cache")
    pair = demo.open_demo_data(cache_dir=work / "cache", times=args.times)
    truth = pair.fine.load()
    rows, regressions = [], {}
    for backbone in args.backbones:
        net = BACKBONES[backbone]
        for objective in args.objectives:
            extra = list(OBJECTIVES[objective])
            residual = f"{REGRESSION}=null" not in extra
            if residual and backbone not in regressions:
                name = f"{backbone}/regression"
                regressions[backbone] = _train(
                    "tiny_regression", [*_run_overrides(work, name, args.samples), *net]
                )
            if residual:
                extra.append(f"{REGRESSION}={regressions[backbone][0]}")
            name = f"{backbone}/{objective}"
            path, cpu, params = _train(
                "tiny_diffusion", [*_run_overrides(work, name, args.samples), *net, *extra]
            )
            row = {
                "backbone": backbone,
                "objective": objective,
                "overrides": [*net, *OBJECTIVES[objective]],
                "parameters": params,
                "train_samples": args.samples,
                "train_cpu_s": cpu,
                "regression_cpu_s": regressions[backbone][1] if residual else 0.0,
                **_score_model(path, pair, truth, args.members),
            }
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("rank_histogram", "per_target")}
            print(json.dumps(shown), flush=True)
    return {
        "rows": rows,
        "regression_parameters": {k: v[2] for k, v in regressions.items()},
        "budget": {
            "train_samples_per_model": args.samples,
            "batch": 4,
            "members": args.members,
            "held_out_hours": args.times,
            "held_out_start": demo.HELD_OUT_START,
            "sampler": {**SAMPLER, "num_steps": STEPS},
            "threads": args.threads,
        },
        "scores": "crps_fair: fair CRPS / target std, mean over targets (lower is better); "
        "spread_skill: 1 = calibrated; small_scale_power: members' PSD over the truth's, "
        "upper half of the wavenumbers (1 = right fine-scale variance)",
    }


def _table(rows: list[dict]) -> str:
    head = f"{'backbone':<9}{'objective':<14}{'crps_fair':>10}{'spread':>8}{'ss_power':>9}"
    lines = [head + f"{'cpu_s':>8}"]
    for r in rows:
        lines.append(
            f"{r['backbone']:<9}{r['objective']:<14}{r['crps_fair']:>10.4f}"
            f"{r['spread_skill']:>8.3f}{r['small_scale_power']:>9.3f}{r['train_cpu_s']:>8.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="runs and data cache (default: a temp dir)")
    parser.add_argument("--samples", type=int, default=800, help="training samples per model")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--times", type=int, default=8, help="held-out hours scored")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument(
        "--objectives", nargs="+", choices=list(OBJECTIVES), default=list(OBJECTIVES)
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load, wall = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = args.work or Path(tmp)
        result = run(args)
    result["total_wall_s"] = time.perf_counter() - wall
    result["machine"] = {
        "load_avg_start": load,
        "load_avg_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "note": "ran on a 2-core machine shared with other jobs (see the load averages): "
        "CPU seconds are this process's own, wall times include waiting for the CPUs",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(_table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
