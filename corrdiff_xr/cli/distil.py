"""``corrdiff-xr distil``: turn a residual diffusion checkpoint into a 1-, 2- or 4-call student.

``corrdiff-xr distil CHECKPOINT OUT --data SOURCE --calls 2`` solves the checkpoint's ODE on
``--trajectories`` training times of ``--data`` (``--time-range`` picks them; keep the hours
you score on out), trains the student (:mod:`corrdiff_xr.training.distil`) and writes it to
``OUT``, a new file: a normal checkpoint whose sampler defaults are the student's, for
``generate``, ``downscale`` and ``calibrate`` (which tunes its noise scale and intermediate
level). Its trajectories and checkpoints go to ``--run-dir`` (default ``OUT.run``); running
the same command again continues an interrupted run there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from corrdiff_xr.cli import KeyValues, bounded
from corrdiff_xr.cli._times import TimeRange, select_times
from corrdiff_xr.errors import CorrDiffError

__all__ = ["configure_parser", "run"]


class DistilCliError(CorrDiffError, ValueError):
    """Options that do not allow a distillation."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr distil``."""
    add = parser.add_argument
    add("checkpoint", help="the teacher: a residual diffusion checkpoint")
    add("out", help="the student checkpoint to write (a new file)")
    add("--data", required=True,
        help="training data: Zarr path/URL or catalog:NAME/ENTRY (targets not needed)")  # fmt: skip
    add("--param", nargs="*", default={}, action=KeyValues, metavar="KEY=VALUE",
        help="catalog user parameters of a catalog:NAME/ENTRY source")  # fmt: skip
    add("--time-range", nargs="+", action=TimeRange, metavar="TIME",
        help="training period START END [STEP] (ISO 8601, the data's calendar)")  # fmt: skip
    add("--calls", type=int, choices=(1, 2, 4), default=2,
        help="network calls per member of the student (default 2)")  # fmt: skip
    add("--trajectories", type=bounded(int, minimum=1), default=128,
        help="teacher samples to distil from (default 128)")  # fmt: skip
    add("--steps", type=bounded(int, minimum=0), default=1200,
        help="student updates (default 1200)")  # fmt: skip
    add("--batch-size", type=bounded(int, minimum=1), default=8, help="samples per update")
    add("--lr", type=bounded(float, above=0.0), default=2e-4, help="Adam learning rate")
    add("--teacher-steps", type=bounded(int, minimum=2), default=18,
        help="Heun steps of the teacher's ODE solve (default 18)")  # fmt: skip
    add("--sigma-max", type=bounded(float, above=0.0), default=800.0,
        help="highest noise level (default 800, the reference's)")  # fmt: skip
    add("--patch", type=bounded(int, minimum=1), help="train on random square patches")
    add("--seed", type=bounded(int, minimum=0), default=0, help="seed (default 0)")
    add("--run-dir", help="trajectories and checkpoints (default OUT.run); reused to resume")


def run(args: argparse.Namespace) -> int:
    """Distil, write ``args.out``; 0 when done."""
    from corrdiff_xr._lock import output_lock
    from corrdiff_xr._outputs import local_output, writing
    from corrdiff_xr.config import from_dict
    from corrdiff_xr.data import open_source
    from corrdiff_xr.training.distil import DistilConfig
    from corrdiff_xr.training.distil_run import distil

    out = local_output(args.out, option="OUT").absolute()
    if os.path.lexists(out) or out.resolve() == Path(args.checkpoint).resolve():
        raise DistilCliError(f"OUT {out} exists; write the student to a new file")
    settings = {"calls": args.calls, "trajectories": args.trajectories, "steps": args.steps,
                "batch_size": args.batch_size, "lr": args.lr,
                "teacher_steps": args.teacher_steps, "sigma_max": args.sigma_max,
                "seed": args.seed,
                "patch": None if args.patch is None else [args.patch, args.patch]}  # fmt: skip
    cfg = from_dict(DistilConfig, settings)
    pair = open_source(args.data, params=args.param, what="--data", params_what="--param")
    if args.time_range:
        where = select_times(pair.dataset["time"].values, None, args.time_range, DistilCliError)
        pair = pair.isel(time=where)
    with contextlib.ExitStack() as lock:  # one run at a time per student
        with writing(out, what="OUT"):  # a lock file that cannot be made: say why
            lock.enter_context(output_lock(out, what=f"OUT {out}"))
        result = distil(args.checkpoint, pair, out, config=cfg, run_dir=args.run_dir)
    summary = {"out": str(result.path), "calls": result.calls, "updates": result.updates,
               "samples_seen": result.samples_seen, "teacher_calls": result.teacher_calls,
               "cpu_seconds": round(result.cpu_seconds, 1), "loss": result.loss}  # fmt: skip
    print(json.dumps(summary))
    return 0
