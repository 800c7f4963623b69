"""``corrdiff-xr demo``: the shipped tiny CorrDiff student on held-out synthetic data (thin over
:mod:`corrdiff_xr.demo`, whose docstring describes the outputs).

``DIR`` is the demo's own: it is marked as a ``demo`` output (a marker file, and the Zarr
stores carry the global attribute ``corrdiff_xr_product = "demo"``). It may be new or empty;
running the demo again into an earlier demo output needs ``--overwrite``, as for every
command (an earlier run may have been a long one). Any other non-empty directory, or a demo
directory that also holds files the demo did not write, is refused with or without
``--overwrite``; all of that is checked before anything is computed. The outputs are built in
a hidden folder inside ``DIR`` (which therefore stays the same directory, e.g. the working
directory) and moved into place together when the run succeeds, so a failed or interrupted
run leaves the earlier output (or the empty directory) as it was.
"""

from __future__ import annotations

import argparse
import time
import typing
from pathlib import Path

from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.demo import (
    DEMO_FILES,
    HELD_OUT_TIMES,
    KIND,
    _write_json,
    demo_sampler,
    evaluate,
    format_table,
    open_demo_data,
)
from corrdiff_xr.dims import TIME
from corrdiff_xr.errors import InputNotFoundError
from corrdiff_xr.model import shipped_student_path

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from corrdiff_xr.cli import bounded

    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory: new, empty, or an earlier demo output (with --overwrite)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier demo output in --out (never anything else)",
    )
    parser.add_argument(
        "--members", type=bounded(int, minimum=1), default=8, help="ensemble size (default 8)"
    )
    parser.add_argument(
        "--times",
        type=bounded(int, minimum=1, maximum=HELD_OUT_TIMES),
        default=4,
        help=f"held-out hourly time steps to downscale (default 4, at most {HELD_OUT_TIMES})",
    )
    parser.add_argument(
        "--solver",
        choices=typing.get_args(typing.get_type_hints(SamplerConfig)["solver"]),
        default=None,
        help="sampler (default: the model's own, else dpmpp_2m; the shipped student's is "
        "'distilled')",
    )
    parser.add_argument(
        "--steps",
        type=bounded(int, minimum=1),
        default=None,
        help="sampler steps (default: the model's own, else 7; the shipped student's is 1)",
    )
    parser.add_argument(
        "--sigma-max",
        type=bounded(float, above=0),
        default=None,
        help="largest noise level of the sampler (default: the model's own, else 200)",
    )
    parser.add_argument(
        "--seed", type=bounded(int, minimum=0), default=0, help="ensemble seed (default 0)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint to use instead of the shipped student (e.g. the shipped teacher, "
        "corrdiff_xr/weights/tiny_demo.safetensors)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="data cache (default $CORRDIFF_XR_CACHE or ~/.cache/corrdiff_xr)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _checked_model(path: Path | None) -> Path:
    """The checkpoint to use, refused now if missing or not a corrdiff_xr checkpoint."""
    from corrdiff_xr.model import read_checkpoint_header

    model = path or shipped_student_path()
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
    sampler, origin = demo_sampler(
        model, solver=args.solver, steps=args.steps, sigma_max=args.sigma_max
    )
    steps = f"{sampler['num_steps']} step" + ("s" if sampler["num_steps"] > 1 else "")
    out = args.out.expanduser()
    # --out is checked (and refused) before the slow first-time data build
    with (
        writing(out, what="demo output"),
        output_directory(
            out, kind=KIND, names=DEMO_FILES, overwrite=args.overwrite, what="--out"
        ) as staged,
    ):
        with writing(cache_root(args.cache_dir), what="demo data cache"):
            pair = open_demo_data(cache_dir=args.cache_dir, times=args.times)
        print(
            f"downscaling {pair.dataset.sizes[TIME]} held-out time steps x {args.members} "
            f"members with {model.name} ({sampler['solver']}, {steps} from sigma "
            f"{sampler['sigma_max']:g}: {origin})"
        )
        result = evaluate(
            pair,
            model,
            members=args.members,
            sampler=sampler,
            seed=args.seed,
            out=staged,
            progress=not args.quiet,
        )
        _write_json(result.scores, staged / "scores.json")
        if not args.no_plots:
            plot.save_report(result.ensemble, result.truth, staged, inputs=pair.coarse)
    print(format_table(result.scores))
    print(
        f"\nwrote {out}/ensemble.zarr, regression_mean.zarr, scores.json"
        f"{'' if args.no_plots else ', maps.png, spectra.png, rank_histogram.png'} "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 0
